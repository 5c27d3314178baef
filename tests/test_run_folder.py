"""What a run leaves in its folder and in wandb, and how that survives trouble: one wandb
run per job, also across a resume (with a stand-in wandb module, never the network), no
wandb failure that touches training, the provenance of every start, no half-written files
piling up."""

import hashlib
import json
import logging
import os
import re
import signal
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

import basisconv.config  # noqa: F401  (registers the schema)
from basisconv import signals
from basisconv.train import fit
from interruption import fit_stopped_before, sigterm_amid_torch_save

TINY = ["data=stripes", "data.synthetic_train=200", "data.synthetic_test=50", "model=resnet8",
        "model.width=0.25", "trainer.batch_size=50", "trainer.progress=false",
        "trainer.epochs=3", "logger=wandb", "name=tiny"]


def compose_tiny(repo, *overrides):
    with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
        return compose("train", overrides=[*TINY, *overrides])


class FakeRun:
    """What Training uses of a wandb run; records every call."""

    def __init__(self, wandb, kwargs):
        self.id = kwargs.get("id") or f"id{len(wandb.runs)}"
        self.dir = str(Path(kwargs["dir"]) / "wandb" / f"run-{self.id}" / "files")
        self.url = None
        # an online run resumed by id goes on after the last step the server holds
        held = wandb.server.get(self.id) if kwargs.get("resume") and kwargs["mode"] == "online" \
            else None
        self.step = 0 if held is None else held + 1
        self.wandb, self.kwargs = wandb, kwargs
        self.logged, self.dropped, self.finished, self.summary = [], [], [], {}
        self.open_row = {}  # as wandb: a row logged with step= and no commit stays open

    @property
    def settings(self):
        return SimpleNamespace(mode=self.kwargs["mode"])

    def log(self, metrics, step, commit=None):
        if self.wandb.log_error:
            raise self.wandb.log_error
        if step < max(self.logged, default=self.step):  # as wandb: dropped, with a warning
            self.dropped.append(step)
            return
        self.summary.update(self.open_row)  # a later step commits the open row
        self.open_row = {} if commit else dict(metrics)
        if commit:
            self.summary.update(metrics)
        self.logged.append(step)
        self.wandb.server[self.id] = step

    def finish(self, exit_code=0):
        self.summary.update(self.open_row)  # written out now, over the summary's keys
        self.open_row = {}
        self.finished.append(exit_code)


class RunWithoutSettings(FakeRun):
    """A run object of a wandb whose API differs from the one this code knows."""

    @property
    def settings(self):
        raise AttributeError("'Run' object has no attribute 'settings'")


@pytest.fixture
def fake_wandb(monkeypatch):
    wandb = types.ModuleType("wandb")
    wandb.runs, wandb.server, wandb.log_error, wandb.Run = [], {}, None, FakeRun
    wandb.init_error = None

    def init(**kwargs):
        if wandb.init_error:
            raise wandb.init_error
        wandb.runs.append(wandb.Run(wandb, kwargs))
        return wandb.runs[-1]

    wandb.init, wandb.Settings = init, SimpleNamespace
    wandb.run, wandb.login = None, lambda **kwargs: True  # (logged in)
    wandb.errors = SimpleNamespace(UsageError=type("UsageError", (Exception,), {}))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    return wandb


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_a_resumed_run_stays_one_wandb_run_with_every_epoch(tmp_path, repo, fake_wandb, mode):
    cfg = compose_tiny(repo, f"logger.mode={mode}")
    fit_stopped_before(3, cfg, tmp_path)
    record = fit(cfg, tmp_path)
    first, resumed = fake_wandb.runs
    assert first.finished == [1] and resumed.finished == [0]  # the stop marks it failed
    assert "resume" not in first.kwargs
    assert resumed.kwargs["id"] == first.id and resumed.kwargs["resume"] == "allow"
    # offline wandb cannot resume: the later folder gets the whole history; online, the
    # server has epochs 1 and 2 already
    assert resumed.logged == ([1, 2, 3] if mode == "offline" else [3])
    assert record["wandb"]["id"] == first.id
    assert json.loads((tmp_path / "run.json").read_text())["wandb"]["id"] == first.id
    # the resolved config, under the run folder's name, grouped by the experiment name
    assert resumed.kwargs["config"]["logger"]["group"] == "tiny"
    assert resumed.kwargs["name"] == tmp_path.name
    # found in review: the last epoch's row, left open, overwrote the final step times
    assert {k: resumed.summary[k] for k in record["final"]} == record["final"]


def test_a_wandb_failing_mid_run_is_one_warning_and_its_run_still_ends(tmp_path, repo,
                                                                      fake_wandb, caplog):
    fake_wandb.log_error = ConnectionError("wandb service went away")
    record = fit(compose_tiny(repo, "logger.mode=offline"), tmp_path)
    assert record["status"] == "complete" and len(record["epochs"]) == 3
    assert json.loads((tmp_path / "run.json").read_text())["final"] == record["final"]
    assert caplog.text.count("wandb log failed") == 1 and "ConnectionError" in caplog.text
    # not left open for the rest of the process; and marked failed, not finished: it lacks
    # epochs 2 and 3 and the final metrics (found by audit: it ended as a finished run)
    assert fake_wandb.runs[0].finished == [1]


@pytest.mark.parametrize("broken", ["not installed", "a timeout", "a run without settings"])
def test_a_wandb_that_cannot_start_is_one_warning(tmp_path, repo, fake_wandb, monkeypatch,
                                                   caplog, broken):
    if broken == "not installed":
        monkeypatch.setitem(sys.modules, "wandb", None)
    elif broken == "a timeout":
        fake_wandb.init_error = TimeoutError("no such host\nConsider increasing the "
                                             "init_timeout setting:\n  wandb.init(...)")
    else:
        fake_wandb.Run = RunWithoutSettings
    record = fit(compose_tiny(repo, "logger.mode=offline"), tmp_path)
    assert record["status"] == "complete" and record["wandb"] is None
    assert caplog.text.count("wandb could not start") == 1
    # on one line, however many lines the error's own text has (found in review: wandb's
    # timeout added two lines of advice about its Python API)
    warning, = [r.getMessage() for r in caplog.records if "could not start" in r.getMessage()]
    assert "\n" not in warning
    # and wandb's advice for its Python API is followed by this project's key (stop 72)
    assert ("logger.init_timeout_s=" in warning) == (broken == "a timeout")
    if broken == "a run without settings":
        assert fake_wandb.runs[0].finished == [1]


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_an_online_start_that_cannot_reach_wandb_names_offline_logging(tmp_path, repo,
                                                                       fake_wandb, caplog,
                                                                       mode):
    """Found in review: an online start against an unreachable host said "wandb could not
    start (CommError: <no message>)", wandb's words with nothing to do about it; online, the
    warning names logging offline and syncing later (offline it has nothing to add)."""
    fake_wandb.init_error = ConnectionError("")
    record = fit(compose_tiny(repo, f"logger.mode={mode}", "trainer.epochs=1"), tmp_path)
    assert record["status"] == "complete" and record["wandb"] is None
    warning, = [r.getMessage() for r in caplog.records if "could not start" in r.getMessage()]
    assert "\n" not in warning
    assert ("logger.mode=offline keeps wandb's run in the run's folder for `wandb sync` "
            "later" in warning) == (mode == "online")


def test_an_online_start_without_a_login_is_one_warning_not_wandbs_prompt(tmp_path, repo,
                                                                          fake_wandb, caplog):
    """wandb.login asked without its prompt: none found, wandb.init is not called (on a
    terminal it waited at its login prompt for ever)."""
    asked = []

    def login(*, prompt=True, verify=False):
        asked.append(prompt)
        return False

    fake_wandb.login = login
    record = fit(compose_tiny(repo, "logger.mode=online", "trainer.epochs=1"), tmp_path)
    assert record["status"] == "complete" and record["wandb"] is None
    assert asked == [False] and fake_wandb.runs == []
    warning, = [r.getMessage() for r in caplog.records if "could not start" in r.getMessage()]
    assert "no wandb login for logger.mode=online: run `wandb login`" in warning


@pytest.mark.parametrize("key", ["0123456789abcdef0123456789abcdef01234567", None])
def test_an_online_start_under_wandb_mode_offline_is_asked_for_its_login(tmp_path, monkeypatch,
                                                                         caplog, key):
    """Found in review: with wandb's own mode offline (WANDB_MODE=offline in a shell's
    profile, or `wandb offline`) and logger.mode=online given, the real wandb.login(prompt=
    False) answers False without looking, so a run with WANDB_API_KEY set was refused as
    "no wandb login ... set WANDB_API_KEY", though wandb.init(mode="online") goes online.
    Its login is asked as an online run's; with none, the start is still refused."""
    from omegaconf import OmegaConf

    from basisconv.tracking import Tracker

    wandb = pytest.importorskip("wandb")
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib.wbauth import authenticate

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no wandb settings of this host
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    if key:
        monkeypatch.setenv("WANDB_API_KEY", key)
    # wandb's process-wide settings and the login it keeps, put back after the test (silent:
    # a login found is not greeted with the user's name, which asks the server)
    setup = wandb_setup.singleton()
    monkeypatch.setattr(setup, "_settings",
                        setup.settings.model_copy(update={"api_key": None, "silent": True}))
    monkeypatch.setattr(authenticate, "_session_auth", None)
    setup.settings.mode = "offline"
    started = []

    def init(**kwargs):  # the start stops here: no network in a test
        started.append(kwargs["mode"])
        raise ConnectionError("stand-in for the server")

    monkeypatch.setattr(wandb, "init", init)
    logger_cfg = OmegaConf.create({"backend": "wandb", "mode": "online", "project": "p",
                                   "entity": None, "group": None, "tags": [],
                                   "init_timeout_s": 90.0, "finish_timeout_s": 300.0})
    Tracker(logger_cfg, {}, tmp_path, "run").finish()
    assert started == (["online"] if key else [])
    assert ("no wandb login" in caplog.text) == (key is None)
    assert setup.settings.mode == "offline"  # wandb's own mode kept


def test_an_online_start_without_a_login_on_a_terminal_trains(tmp_path, repo):
    """Found in review: with no wandb login, an online run started on a terminal (tmux,
    screen) stopped at wandb's login prompt ("Enter your choice:") and waited there for
    ever, past logger.init_timeout_s: a run left alone never trained. The real wandb, in a
    process whose terminal is a pseudo-terminal, is asked without the prompt."""
    import pty
    import subprocess
    import threading

    script = f"""
import logging
from hydra import compose, initialize_config_dir
import basisconv.config
from basisconv.tracking import Tracker
logging.basicConfig(filename={str(tmp_path / "log.txt")!r})
with initialize_config_dir(config_dir={str(repo / "configs")!r}, version_base="1.3"):
    cfg = compose("train", overrides=["logger=wandb", "logger.mode=online",
                                      "logger.init_timeout_s=5"])
tracker = Tracker(cfg.logger, {{}}, {str(tmp_path)!r}, name="no-login")
open({str(tmp_path / "started.txt")!r}, "w").write(str(tracker.working))
"""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC")}
    env.update({"HOME": str(tmp_path), "TERM": "xterm", "WANDB_MODE": "online",
                **{f"WANDB_{what}_DIR": str(tmp_path / what.lower())
                   for what in ("CONFIG", "CACHE", "DATA")}})
    main, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-c", script], stdin=terminal,
                               stdout=terminal, stderr=terminal, env=env, cwd=tmp_path)
    os.close(terminal)
    shown = []

    def drain():  # what the process writes to its terminal (it would block once full)
        try:
            while chunk := os.read(main, 4096):
                shown.append(chunk.decode(errors="replace"))
        except OSError:
            pass
    threading.Thread(target=drain, daemon=True).start()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"waited at wandb's prompt: {''.join(shown)[-300:]!r}")
    finally:
        os.close(main)
    assert (tmp_path / "started.txt").read_text() == "False"
    assert "no wandb login for logger.mode=online" in (tmp_path / "log.txt").read_text()


def test_a_resumed_run_keeps_where_its_earlier_epochs_ran(tmp_path, repo, monkeypatch, caplog):
    """A resumed record once named only the machine, commit and date of its last start."""
    from basisconv.records import origin

    cfg = compose_tiny(repo, "logger=none")
    here = origin.hardware
    monkeypatch.setattr(origin, "hardware", lambda: {**here(), "cpu": "Another CPU"})
    fit_stopped_before(2, cfg, tmp_path)
    started = json.loads((tmp_path / "run.json").read_text())["provenance"]
    monkeypatch.setattr(origin, "hardware", here)
    fit_stopped_before(3, cfg, tmp_path)
    record = fit(cfg, tmp_path)
    earlier = record["provenance"]["earlier"]
    assert len(earlier) == 2 and earlier[0]["date"] == started["date"]
    assert earlier[0]["hardware"]["cpu"] == "Another CPU" and "resumed_from_epoch" not in earlier[0]
    assert earlier[1]["resumed_from_epoch"] == 1 and record["provenance"]["resumed_from_epoch"] == 2
    assert not any("earlier" in start for start in earlier)  # one flat list, not nested
    assert record["provenance"]["hardware"]["cpu"] != "Another CPU"
    warnings = [r.message for r in caplog.records if "another commit or set-up" in r.message]
    assert len(warnings) == 1 and "after epoch 1" in warnings[0]  # the second start only
    assert "Another CPU" in warnings[0]


def test_a_resume_with_another_number_of_processes_is_a_warning(caplog):
    """Found in review: a run started under torchrun with 2 processes and resumed in one
    said nothing, though its epoch times then mix the two set-ups."""
    from basisconv.resume_point import keep_earlier_provenance

    saved = {"git": {"commit": "abc"}, "hardware": {"cpu": "X", "processes": 2}}
    now = {"git": {"commit": "abc"}, "hardware": {"cpu": "X"}}
    with caplog.at_level("WARNING"):
        keep_earlier_provenance(now, saved, 1)
    assert "another commit or set-up" in caplog.text and "processes 2 -> 1" in caplog.text
    assert now["earlier"][0]["hardware"]["processes"] == 2


def test_a_resume_with_another_thread_count_is_a_warning(caplog):
    """Found in review: a run resumed at 2 threads after 1 (reproduce.sh continued with
    another JOBS) said nothing, though on a CPU its results then differ, to rounding."""
    from basisconv.resume_point import keep_earlier_provenance

    saved = {"git": {"commit": "abc"}, "hardware": {"cpu": "X", "torch_threads": 1}}
    now = {"git": {"commit": "abc"}, "hardware": {"cpu": "X", "torch_threads": 2}}
    with caplog.at_level("WARNING"):
        keep_earlier_provenance(now, saved, 1)
    assert "torch threads 1 -> 2" in caplog.text and "changes the results to rounding" in \
        caplog.text
    caplog.clear()
    keep_earlier_provenance({**now, "hardware": {"cpu": "X", "torch_threads": 1}}, saved, 1)
    assert "another commit or set-up" not in caplog.text


def test_a_resume_with_other_tf32_flags_in_float32_on_a_gpu_is_a_warning(caplog):
    """Found in review: a float32 run on a GPU resumed with TF32 turned on (or off) said
    nothing, though its epoch times (and rounding) then mix two set-ups. Said only where
    the flags change what runs (float32 on the GPU), and not against a start from before
    the flags were kept."""
    from basisconv.resume_point import keep_earlier_provenance

    gpu = {"cpu": "X", "gpu": "NVIDIA H100", "cuda_matmul_allow_tf32": False,
           "cudnn_allow_tf32": True, "float32_matmul_precision": "highest"}
    saved = {"git": {"commit": "abc"}, "hardware": gpu}
    now = {"git": {"commit": "abc"},
           "hardware": {**gpu, "cuda_matmul_allow_tf32": True,
                        "float32_matmul_precision": "high"}}
    with caplog.at_level("WARNING"):
        keep_earlier_provenance(dict(now), saved, 1, device="cuda", amp="none")
    assert "another commit or set-up" in caplog.text
    assert "cuda_matmul_allow_tf32=False" in caplog.text and "=high" in caplog.text
    for device, amp, then in (("cuda", "bf16", saved), ("cpu", "none", saved),
                              ("cuda", "none", {**saved, "hardware": {"cpu": "X",
                                                                      "gpu": "NVIDIA H100"}})):
        caplog.clear()
        with caplog.at_level("WARNING"):
            keep_earlier_provenance(dict(now), then, 1, device=device, amp=amp)
        assert "another commit or set-up" not in caplog.text, (device, amp)


def test_a_resume_after_editing_the_code_on_the_same_commit_is_a_warning(caplog):
    """Found in review: a run resumed on its commit with other uncommitted changes (the code
    edited between the starts) said nothing, though its epochs then ran two versions."""
    from basisconv.resume_point import keep_earlier_provenance

    def start(git):
        return {"git": {"commit": "abc1234def", **git}, "hardware": {"cpu": "X"}}

    clean, edited = {"dirty": False}, {"dirty": True, "diff_sha256": "9f3e0c1a" + "0" * 56}
    other_edit = {"dirty": True, "diff_sha256": "77aa0000" + "0" * 56}
    for then, now, said in [(clean, edited, "commit abc1234 -> abc1234-dirty"),
                            (edited, other_edit, "abc1234-dirty (9f3e0c1a) -> abc1234-dirty "
                                                 "(77aa0000)"),
                            (edited, edited, None), (clean, clean, None),
                            # (a record from before the hash was kept: dirty both times)
                            ({"dirty": True}, edited, None)]:
        caplog.clear()
        with caplog.at_level("WARNING"):
            keep_earlier_provenance(start(now), start(then), 1)
        assert (said in caplog.text) if said else "another commit" not in caplog.text


def test_a_write_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path):
    """An exception while writing (a full disk, an unpicklable object) must not replace
    the previous record, nor leave its half-written temporary beside it."""
    from basisconv.errors import WriteError
    from basisconv.records import leftover_temporaries, write_atomic, write_text_atomic

    path = write_text_atomic(tmp_path / "run.json", "previous")

    def fail(f):
        f.write(b"half")
        raise OSError("No space left on device")

    # one line naming the file and the fix (it was the bare OSError of a temporary file)
    with pytest.raises(WriteError, match=rf"could not write {path} \(No space left on "
                                         rf"device\); free space") as err:
        write_atomic(path, fail)
    assert isinstance(err.value, OSError) and err.value.filename == str(path)
    assert path.read_text() == "previous"
    assert leftover_temporaries(path) == [] and [p.name for p in tmp_path.iterdir()] == ["run.json"]
    with pytest.raises(WriteError, match=r"could not write .*run.json \(.*\); free space"):
        write_text_atomic(path / "run.json", "a file where a folder should be")


def test_a_checkpoint_the_disk_cannot_hold_is_one_line_and_the_previous_one_stays(tmp_path):
    """torch.save's zip writer reports a refused write (a full disk, a file-size limit) as
    a RuntimeError ("unexpected pos ...") whose context is the OSError: save_checkpoint
    makes it the WriteError that names the file (a run turns it into its SaveError line),
    and the previous checkpoint stays verified. Runs the real torch.save under a file-size
    limit (the tests of a full disk replace save_checkpoint itself; this unwrapping ran in
    no test before the coverage review)."""
    import resource
    import signal

    from basisconv.checkpoint import load_checkpoint, save_checkpoint
    from basisconv.errors import WriteError
    from basisconv.records import leftover_temporaries

    path = tmp_path / "checkpoint.pt"
    small = {key: {"w": torch.zeros(4)} for key in ("config", "record", "model", "optimizer",
                                                  "scheduler", "batches")}
    save_checkpoint(path, small)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, limits[1]))
        with pytest.raises(WriteError, match=rf"^could not write {path} \(File too large\); "
                                             rf"free space") as err:
            save_checkpoint(path, {**small, "model": {"w": torch.zeros(1 << 16)}})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert isinstance(err.value, OSError) and err.value.filename == str(path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(4))
    assert leftover_temporaries(path) == []


class _Killed(BaseException):
    """Stands for the kill of a process (not an Exception: nothing may catch it)."""


def test_records_are_standard_json_with_null_for_an_undefined_number(tmp_path):
    """A NaN (a search's rank correlation when its subsets all tie) is written ``null``:
    strict readers (jq, JavaScript) refuse Python's bare ``NaN``."""
    from basisconv.records import write_json_atomic

    def refuse(constant):
        raise ValueError(f"not standard JSON: {constant}")

    path = write_json_atomic(tmp_path / "run.json", {"a": [float("nan"), 1.5, (float("inf"),)],
                                                     "b": {"c": -float("inf"), "d": "NaN"}})
    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "a": [None, 1.5, [None]], "b": {"c": None, "d": "NaN"}}
    # NumPy scalars (pandas hands them out) and 0-d tensors are values, not their text
    import numpy as np
    import torch

    path = write_json_atomic(tmp_path / "run.json", {
        "a": [np.float32(0.5), np.float32("nan")], "b": np.int64(3), "c": np.bool_(True),
        "d": torch.tensor(float("inf")), "e": torch.tensor(2)})
    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "a": [0.5, None], "b": 3, "c": True, "d": None, "e": 2}


def test_a_checkpoint_save_cut_off_anywhere_leaves_the_previous_one_verified(tmp_path,
                                                                           monkeypatch):
    """A run killed while it writes its next checkpoint (inside torch.save, while writing
    the .sha256, or between the .sha256's rename and the checkpoint's: twice in a row)
    must leave the previous checkpoint in place, and loadable against its .sha256."""
    from basisconv import checkpoint
    from basisconv.records import leftover_temporaries

    path = tmp_path / "checkpoint.pt"

    def state(epoch):
        return {key: epoch for key in checkpoint.RUN_STATE}

    checkpoint.save_checkpoint(path, state(1))
    real_save, real_replace = torch.save, os.replace

    def save_half(obj, f):  # f: the file object, or a path (a save that is not atomic)
        if isinstance(f, (str, Path)):
            Path(f).write_bytes(b"half")
        else:
            f.write(b"half")
        raise _Killed

    def sum_killed(*args):
        raise _Killed

    def replace_killed_for_the_checkpoint(src, dst):
        if Path(dst) == path:
            raise _Killed
        return real_replace(src, dst)

    cut_offs = [(torch, "save", save_half), (checkpoint, "write_text_atomic", sum_killed),
                (os, "replace", replace_killed_for_the_checkpoint),
                (os, "replace", replace_killed_for_the_checkpoint)]
    for epoch, (where, name, cut_off) in enumerate(cut_offs, 2):
        with monkeypatch.context() as patch:
            patch.setattr(where, name, cut_off)
            with pytest.raises(_Killed):
                checkpoint.save_checkpoint(path, state(epoch))
        assert checkpoint.load_checkpoint(path) == state(1), name
        assert leftover_temporaries(path) == []
    assert torch.save is real_save
    checkpoint.save_checkpoint(path, state(6))
    assert checkpoint.load_checkpoint(path) == state(6)


def test_a_checkpoint_copied_without_its_sha256_is_said_as_such(tmp_path, caplog):
    """Found in review: a checkpoint.pt copied over another run's, without its own
    .sha256, was "damaged (its sha256 does not match checkpoint.pt.sha256)", the copy's
    cause unsaid (the other run's .sha256 stays); one copied alone into a new folder was
    said to be written by "an older basisconv"."""
    import shutil

    from basisconv import checkpoint
    from basisconv.errors import ConfigError

    mine, theirs, alone = (tmp_path / name / "checkpoint.pt" for name in ("a", "b", "c"))
    for folder in (mine, theirs, alone):
        folder.parent.mkdir()
    checkpoint.save_checkpoint(mine, {key: 1 for key in checkpoint.RUN_STATE})
    checkpoint.save_checkpoint(theirs, {key: 2 for key in checkpoint.RUN_STATE})
    shutil.copy(theirs, alone)
    with caplog.at_level(logging.INFO, logger="basisconv"):
        assert checkpoint.load_checkpoint(alone) == {key: 2 for key in checkpoint.RUN_STATE}
    assert "has no checkpoint.pt.sha256 beside it (an older basisconv wrote it, or it was " \
           "copied without it); loaded it unverified" in caplog.text
    shutil.copy(theirs, mine)  # mine's .sha256 stays
    with pytest.raises(ConfigError, match=rf"^checkpoint {mine} does not match its checksum "
                                          r"file checkpoint.pt.sha256: it is damaged, or was "
                                          r"copied here without its own checkpoint.pt.sha256 "
                                          r"\(copy the two together\); delete it"):
        checkpoint.load_checkpoint(mine)


def test_a_pickle_or_a_zip_torch_did_not_write_is_said_as_such(tmp_path):
    """Found in review: a plain pickle was torch's "Invalid magic number; corrupt file?" or
    "Unsupported operand 149", a zip of other files "[enforce fail at inline_container.cc:180]
    . file in archive is not in a subdirectory"; torch's own files, zip or legacy, still
    load."""
    import pickle
    import warnings
    import zipfile

    from basisconv.checkpoint import load_checkpoint
    from basisconv.errors import ConfigError

    fix = "point k at the checkpoint.pt of a trained dense run"
    for protocol in (2, 5):
        path = tmp_path / f"pickle{protocol}.pt"
        path.write_bytes(pickle.dumps({"model": {}}, protocol=protocol))
        with warnings.catch_warnings(), pytest.raises(ConfigError) as err:
            warnings.simplefilter("ignore")  # (torch's, on protocol 5)
            load_checkpoint(path, source_key="k")
        assert str(err.value) == (f"k={path} is not a checkpoint.pt (it cannot be read as "
                                  f"one: it is a Python pickle (pickle.dump's), not a file "
                                  f"torch.save writes); {fix}")
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights.npy", b"")
    with pytest.raises(ConfigError, match=re.escape(
            "(it cannot be read as one: it is a zip archive that torch.save did not write: it "
            "holds weights.npy and no data.pkl); point k at")):
        load_checkpoint(path, source_key="k")
    for legacy in (False, True):
        path = tmp_path / f"torch{legacy}.pt"
        torch.save({"model": {}}, path, _use_new_zipfile_serialization=not legacy)
        assert load_checkpoint(path, source_key="k") == {"model": {}}


@pytest.mark.parametrize("kept", [2, 6, 8])
def test_a_legacy_torch_file_cut_off_in_its_first_bytes_is_not_called_a_pickle(tmp_path, kept):
    """Found in review: torch's legacy format cut off before its pickled magic number was
    whole (a copy that stopped at once) was "a Python pickle (pickle.dump's)", as if the
    wrong file; it is torch's, cut off, as it was said before."""
    from basisconv.checkpoint import load_checkpoint
    from basisconv.errors import ConfigError

    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}}, path, _use_new_zipfile_serialization=False)  # (protocol 2)
    path.write_bytes(path.read_bytes()[:kept])
    with pytest.raises(ConfigError) as err:
        load_checkpoint(path, source_key="k")
    assert "Python pickle" not in str(err.value)
    assert f"it ends early, cut off at {kept} bytes" in str(err.value)


def test_files_left_half_written_by_killed_runs_do_not_pile_up(tmp_path, repo):
    """Each SIGKILL while a checkpoint was being written once left its temporary file (as
    big as a checkpoint) in the run folder for good."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    # one process per file, each SIGKILLed mid-write: forked from one that imported the
    # writer once (an import of torch takes seconds)
    killed_writers = (
        "import os, sys; from basisconv.records import write_atomic\n"
        "for path in sys.argv[1:]:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        write_atomic(path, lambda f: (f.write(b'half'), f.flush(), "
        "os.kill(os.getpid(), 9)))\n"
        "        os._exit(0)\n"
        "    assert os.waitpid(pid, 0)[1] == 9, path\n")
    names = ("checkpoint.pt", "checkpoint.pt.sha256", "run.json")
    subprocess.run([sys.executable, "-c", killed_writers, *(str(tmp_path / n) for n in names)],
                   env=env, check=True)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 3 and all(name.endswith(".tmp") for name in left)
    other = tmp_path / ".notes.txt.tmp"  # not a file a run writes
    other.write_text("mine")
    fit(compose_tiny(repo, "logger=none", "trainer.epochs=1"), tmp_path)
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == [other.name]


def test_a_record_names_the_gpu_the_process_computes_on(monkeypatch):
    """On a machine with several GPUs the record names the current device's (cuda:1 here),
    and how many there are, not always the first one's."""
    from basisconv import records

    names = {0: "NVIDIA A100-SXM4-80GB", 1: "NVIDIA H100 80GB HBM3"}
    for name, value in (("is_available", lambda: True), ("current_device", lambda: 1),
                        ("device_count", lambda: 2), ("get_device_name", names.get)):
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91900)
    hardware = records.hardware()
    assert (hardware["gpu"], hardware["gpu_count"]) == (names[1], 2)
    assert records.device_name(hardware) == "h100"


def test_a_record_says_whether_float32_matmuls_and_convs_ran_in_tf32(monkeypatch):
    """Found in review: a CUDA fp32 speed record did not say whether TF32 was on, which
    decides its speed (and rounding) on an Ampere or later GPU. The flags exist on a CPU
    too, so every record says them (set here on the CPU, and restored)."""
    from basisconv import records

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    # (matmul.allow_tf32 follows the precision; monkeypatch cannot restore it: torch's
    # cuBLAS flags object has no attributes of its own)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        hardware = records.provenance("x")["hardware"]
    finally:
        torch.set_float32_matmul_precision(before)
    assert hardware["cuda_matmul_allow_tf32"] is True and hardware["cudnn_allow_tf32"] is False
    assert hardware["float32_matmul_precision"] == "high"


def test_the_commit_is_read_without_writing_the_repositorys_index(tmp_path):
    """Found when a test's killed run left ``.git/index.lock`` in this checkout: ``git
    status`` rewrote the index (under that lock) whenever a file's times had changed, so a
    run killed meanwhile left the lock behind, and the user's next commit failed on it."""
    import subprocess

    from basisconv import records

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "m.py").write_text("0\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    index = tmp_path / ".git" / "index"
    written = index.read_bytes()
    os.utime(tmp_path / "src" / "pkg" / "m.py", (1, 1))  # times changed, not the content
    os.utime(index, (2, 2))
    for _ in range(2):  # clean, then edited: the diff is read too
        records.git_commit(tmp_path / "src" / "pkg")
        assert index.read_bytes() == written and index.stat().st_mtime == 2
        (tmp_path / "src" / "pkg" / "m.py").write_text("1\n")


def test_the_commit_is_read_by_a_git_older_than_its_read_only_option(tmp_path, monkeypatch):
    """Found in review: ``git --no-optional-locks`` (git 2.15+) is refused by older gits
    ("Unknown option", as CentOS 7's 1.8.3 still installed on clusters does), and every
    record said commit None; git's ``GIT_OPTIONAL_LOCKS=0``, which older gits ignore,
    keeps the read from writing the index as well (the test above)."""
    import shlex
    import shutil
    import subprocess

    from basisconv import records

    real = shutil.which("git")
    old = tmp_path / "old-git"
    old.mkdir()
    (old / "git").write_text(
        "#!/bin/sh\n"  # (git 2.14 and older: the option unknown, usage, status 129)
        'case "$1" in --no-optional-locks) echo "Unknown option: $1" >&2; exit 129;; esac\n'
        f'exec {shlex.quote(real)} "$@"\n')
    (old / "git").chmod(0o755)
    repository = tmp_path / "repository"
    (repository / "src").mkdir(parents=True)
    (repository / "src" / "m.py").write_text("0\n")
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "start"]):
        subprocess.run([real, "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=repository, check=True, capture_output=True)
    head = subprocess.run([real, "rev-parse", "HEAD"], cwd=repository, check=True,
                          capture_output=True, text=True).stdout.strip()
    monkeypatch.setenv("PATH", f"{old}{os.pathsep}{os.environ['PATH']}")
    assert records.git_commit(repository / "src") == {"commit": head, "dirty": False}


def test_the_tests_repositories_commit_whatever_the_users_git_config_signs(tmp_path,
                                                                           monkeypatch):
    """The tests commit in repositories of their own (this file, test_analysis.py,
    test_readme.py, test_results_provenance.py): a user's ``commit.gpgsign=true`` made each
    fail at its commit (found in review); the conftest turns signing off for them."""
    import subprocess

    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[commit]\n\tgpgsign = true\n[gpg]\n\tprogram = false\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "start"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)


def test_dirty_means_the_code_differs_not_the_results_a_protocol_writes(tmp_path):
    """A protocol publishes records and tables into the tracked ``results/`` while later
    runs start: those runs must not say ``dirty`` for it; an edited config or module must."""
    import subprocess

    from basisconv import records

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)

    for name in ("results/quick/index.json", "configs/trainer.yaml", "src/pkg/m.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("0\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    package = tmp_path / "src" / "pkg"  # where records looks from: the package's folder
    (tmp_path / "results" / "quick" / "index.json").write_text("1\n")
    (tmp_path / "results" / "new.csv").write_text("untracked\n")
    assert records.git_commit(package)["dirty"] is False
    assert "diff_sha256" not in records.git_commit(package)
    for name in ("configs/trainer.yaml", "src/pkg/m.py"):
        (tmp_path / name).write_text("1\n")
        assert records.git_commit(package)["dirty"] is True
        git("checkout", "--", name)
    assert records.git_commit(package)["dirty"] is False
    # found in review: a new file (a config, a module not yet added) was not dirty
    (tmp_path / "configs" / "mine.yaml").write_text("lr: 0.5\n")
    assert records.git_commit(package)["dirty"] is True
    (tmp_path / ".gitignore").write_text("outputs/\n")
    git("add", ".gitignore")
    git("commit", "-qm", "ignore")
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "log.txt").write_text("ignored\n")
    (tmp_path / "configs" / "mine.yaml").unlink()
    assert records.git_commit(package)["dirty"] is False
    # found in review: a run folder inside the checkout (RESULTS_DIR=myres OUTPUTS=myout,
    # not ignored) made every later record dirty, each with a hash of its own
    for name in ("myres/quick/runs/baseline/seed0.json", "myout/quick/logs/a.log"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    assert records.git_commit(package)["dirty"] is False
    (tmp_path / "tool.py").write_text("x = 1\n")  # new code at the top counts
    assert records.git_commit(package)["dirty"] is True
    (tmp_path / "tool.py").unlink()
    # a dirty tree's diff hash is that of the commit it would become (results/ aside), so a
    # record can be matched to it; another change, another hash; new files are in it, and
    # the repository's own index is left as it was
    (tmp_path / "src" / "pkg" / "m.py").write_text("2\n")
    (tmp_path / "src" / "pkg" / "new.py").write_text("x = 1\n")
    dirty = records.git_commit(package)
    staged = subprocess.run(["git", "ls-files", "--stage"], cwd=tmp_path, check=True,
                            capture_output=True, text=True).stdout
    assert "new.py" not in staged  # not even intent-to-add
    git("add", "src/pkg/new.py")
    git("commit", "-qam", "next")
    diff = subprocess.run(["git", "diff", "HEAD~1", "HEAD", "--binary", "--", ".",
                           ":(exclude)results"], cwd=tmp_path, check=True,
                          capture_output=True).stdout
    assert dirty["diff_sha256"] == hashlib.sha256(diff).hexdigest()
    (tmp_path / "src" / "pkg" / "m.py").write_text("3\n")
    assert records.git_commit(package)["diff_sha256"] != dirty["diff_sha256"]


def test_a_copy_the_repository_around_it_does_not_track_records_no_commit(tmp_path):
    """Found in review: a copy of the code inside another project's work tree (or installed
    into a .venv inside a checkout) was recorded as that repository's commit, clean."""
    import subprocess

    from basisconv import records

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "notes.txt").write_text("hi\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    package = tmp_path / "basisconv-copy" / "src" / "pkg"
    package.mkdir(parents=True)
    (package / "m.py").write_text("0\n")
    assert records.git_commit(package) == {"commit": None, "dirty": None}
    git("add", ".")
    git("commit", "-qm", "track it")  # tracked there: that repository's commit is its code's
    assert records.git_commit(package)["dirty"] is False


def test_a_change_written_in_the_index_clock_tick_is_in_the_diff_hash(tmp_path):
    """Found by CI: a file changed within the file system's clock tick of the index write
    (same size, same mtime as the index entry) is told apart only by git's racy-entry check,
    which compares against the index file's own mtime. The diff ran on a copy of the index
    with a new mtime, so git trusted the stale stat and left the change out of
    ``diff_sha256``. The tick is made certain here by setting the times by hand."""
    import subprocess

    from basisconv import records

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=tmp_path, check=True, capture_output=True).stdout

    module = tmp_path / "src" / "pkg" / "m.py"
    module.parent.mkdir(parents=True)
    module.write_text("0\n")
    git("init", "-q")
    git("config", "core.trustctime", "false")  # the ctime of a same-tick write matches too
    git("add", ".")
    git("commit", "-qm", "start")
    tick = module.stat().st_mtime_ns - 10**11  # a past tick, so the index copy is later
    os.utime(module, ns=(tick, tick))
    git("update-index", "--refresh")  # the index entry now holds that tick
    index = tmp_path / ".git" / "index"
    module.write_text("1\n")  # same size; written in the tick of the index itself:
    (tmp_path / "src" / "pkg" / "new.py").write_text("x = 1\n")  # (a new file: the copy)
    for path in (module, index):
        os.utime(path, ns=(tick, tick))
    dirty = records.git_commit(module.parent)
    git("add", ".")
    git("commit", "-qm", "next")
    diff = git("diff", "HEAD~1", "HEAD", "--binary", "--", ".", ":(exclude)results")
    assert b"+1" in diff
    assert dirty["diff_sha256"] == hashlib.sha256(diff).hexdigest()


def test_a_record_without_a_given_command_names_the_command_line(monkeypatch):
    """A training run's, sensitivity estimate's or search's record names the command that
    made it, as a reader would type it again (it was null)."""
    from basisconv import records

    monkeypatch.setattr(sys, "argv", ["scripts/train.py", "seed=1", "name=a b"])
    assert records.provenance()["command"] == "python scripts/train.py seed=1 'name=a b'"
    assert records.provenance("make smoke")["command"] == "make smoke"


@pytest.mark.parametrize("earlier", ["complete", "interrupted"])
def test_a_run_that_keeps_no_checkpoint_is_not_undone_by_an_earlier_ones(tmp_path, repo,
                                                                         earlier):
    """Found by audit: a run with trainer.checkpoint=false left an earlier run's
    checkpoint.pt in its folder, and the next start resumed from that: a run started over
    (trainer.resume=false) had its finished run.json rewritten with the earlier record, and
    a run resumed without checkpoints was trained again from where the checkpoint stopped."""
    from unittest import mock

    from basisconv import loop

    cfg = compose_tiny(repo, "logger=none")
    if earlier == "complete":
        fit(cfg, tmp_path)
        again = ["trainer.resume=false", "trainer.threads=1"]  # starts over, recorded
    else:
        fit_stopped_before(3, cfg, tmp_path)  # its checkpoint is of epoch 2
        again = ["trainer.threads=1"]
    finished = fit(compose_tiny(repo, "logger=none", "trainer.checkpoint=false", *again),
                   tmp_path)
    assert finished["status"] == "complete"
    with mock.patch.object(loop, "run_epoch", side_effect=AssertionError("trained again")):
        record = fit(cfg, tmp_path)
    assert record["config"]["trainer"]["threads"] == 1 and record["final"] == finished["final"]
    assert json.loads((tmp_path / "run.json").read_text())["config"]["trainer"]["threads"] == 1
    assert not (tmp_path / "checkpoint.pt").exists()  # nor taken as this run's weights


@pytest.mark.parametrize("killed_in", ["save_checkpoint", "write_record"])
def test_a_run_killed_saving_its_last_epoch_says_complete_only_with_its_checkpoint(
        tmp_path, repo, monkeypatch, killed_in):
    """Found by audit: the record was written before the checkpoint, so a run killed (or
    out of disk) between the two in its last epoch left a run.json saying complete beside
    the previous epoch's checkpoint, and the next start trained that epoch again (on GPU
    to other numbers), although a complete run is never trained again."""
    from unittest import mock

    from basisconv import loop, run_saves

    cfg = compose_tiny(repo, "logger=none")
    real = getattr(run_saves, killed_in)

    def killed_at_the_end(path, state):
        record = state.as_dict() if killed_in == "write_record" else state["record"]
        if record["status"] == "complete":
            raise _Killed
        return real(path, state)

    with monkeypatch.context() as patch:
        patch.setattr(run_saves, killed_in, killed_at_the_end)
        with pytest.raises(_Killed):
            fit(cfg, tmp_path)
    left = json.loads((tmp_path / "run.json").read_text())
    if killed_in == "save_checkpoint":  # nothing of epoch 3 was kept: it trains again
        assert left["status"] == "running" and len(left["epochs"]) == 2
        assert fit(cfg, tmp_path)["status"] == "complete"
    else:  # the checkpoint is complete: the record is rebuilt from it, nothing trains
        with mock.patch.object(loop, "run_epoch", side_effect=AssertionError("trained again")):
            record = fit(cfg, tmp_path)
        assert record["status"] == "complete" and len(record["epochs"]) == 3
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("record, complete", [({"status": "complete"}, True),
                                               ({"status": "running"}, False),
                                               ({"kind": "training"}, False),
                                               ({"status": "completed"}, False), ([], False)])
def test_only_a_record_that_says_complete_makes_its_run_complete(tmp_path, record, complete):
    """Found in a mutation round: which advice a damaged checkpoint gets (delete it, the run
    stays finished; or start over) rests on run.json saying "complete"; a record without
    a status, or with another word (hand-edited), says nothing finished, as a missing one."""
    from basisconv.resume_point import says_complete

    path = tmp_path / "run.json"
    assert not says_complete(path)
    path.write_text(json.dumps(record))
    assert says_complete(path) is complete


@pytest.mark.parametrize("text, said", [('{"status": "compl', True), ("[]", True),
                                         (None, False)])
def test_an_unreadable_record_without_a_checkpoint_is_said_as_the_run_trains_again(
        tmp_path, caplog, text, said):
    """Found in review: a run folder whose run.json is cut off or not a record, and that
    has no checkpoint, is trained again (nothing to rebuild the record from), which
    replaced the file silently; it is said in the run's log, naming the file. A folder with
    no run.json is a fresh start, said nothing."""
    from basisconv.resume_point import finished_record

    if text is not None:
        (tmp_path / "run.json").write_text(text)
    with caplog.at_level(logging.WARNING, logger="basisconv.resume_point"):
        assert finished_record(tmp_path, {}) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == said
    if said:
        assert warnings[0].startswith(f"{tmp_path / 'run.json'} could not be read (")
        assert warnings[0].endswith("and there is no checkpoint.pt to rebuild it from: "
                                    "training the run again")


def test_a_complete_runs_record_that_says_what_its_checkpoint_says_is_left_alone(tmp_path,
                                                                                  caplog):
    """Found by a mutation test (the record rewritten and warned about at every start of a
    complete run failed no test): repair_record rewrites only a missing, unreadable or
    different run.json; one that matches is neither written nor said."""
    from basisconv.records import RunRecord, write_record
    from basisconv.resume_point import repair_record

    saved = RunRecord.from_dict({"status": "complete", "config": {"seed": 0},
                                 "epochs": [{"epoch": 1}]}).as_dict()
    path = write_record(tmp_path, RunRecord.from_dict(saved))
    before = path.stat().st_mtime_ns, path.stat().st_ino
    with caplog.at_level(logging.WARNING, logger="basisconv.resume_point"):
        repair_record(tmp_path, saved)
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before and not caplog.records
    path.write_text("{")
    with caplog.at_level(logging.WARNING, logger="basisconv.resume_point"):
        repair_record(tmp_path, saved)
    assert json.loads(path.read_text()) == saved and "rewrote it" in caplog.text


def test_a_run_stopped_while_writing_its_record_names_the_checkpoint_it_saved(tmp_path, repo,
                                                                              monkeypatch):
    """The checkpoint is saved before the record: Ctrl-C while the record is written comes
    after the checkpoint of that epoch, which the stop message names."""
    from basisconv import run_saves
    from basisconv.errors import Stopped

    real = run_saves.write_record

    def stopped_at_epoch_2(path, record):
        if len(record.results["epochs"]) == 2:
            raise KeyboardInterrupt
        return real(path, record)

    monkeypatch.setattr(run_saves, "write_record", stopped_at_epoch_2)
    with pytest.raises(Stopped, match=r"stopped after epoch 2 of 3 \(checkpoint saved\)"):
        fit(compose_tiny(repo, "logger=none"), tmp_path)
    assert len(torch.load(tmp_path / "checkpoint.pt", weights_only=False)["record"]["epochs"]) == 2


def test_a_run_stopped_writing_its_last_record_says_it_is_complete(tmp_path, repo, monkeypatch):
    """Found in review: a stop after the last epoch's checkpoint, as its run.json was
    written, said "stopped after epoch 3 of 3 (checkpoint saved); ... to resume it" of a
    run whose checkpoint is complete: the same command trains nothing, it writes run.json
    from the checkpoint (and publishes it)."""
    from unittest import mock

    from basisconv import loop, run_saves
    from basisconv.errors import Stopped

    real = run_saves.write_record

    def stopped_at_the_end(path, record):
        if record.status == "complete":
            raise KeyboardInterrupt
        return real(path, record)

    cfg = compose_tiny(repo, "logger=none")
    with monkeypatch.context() as patch:
        patch.setattr(run_saves, "write_record", stopped_at_the_end)
        with pytest.raises(Stopped) as err:
            fit(cfg, tmp_path)
    assert str(err.value) == (
        f"the run in {tmp_path} is complete (checkpoint.pt), but was stopped before its "
        f"run.json was written; run the same command again with hydra.run.dir={tmp_path} "
        f"to write it, training nothing")
    with mock.patch.object(loop, "run_epoch", side_effect=AssertionError("trained again")):
        assert fit(cfg, tmp_path)["status"] == "complete"
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("written", [False, True], ids=["before_its_record", "after_it"])
def test_a_run_stopped_at_its_last_record_names_what_is_left_to_publish(tmp_path, repo,
                                                                        monkeypatch, written):
    """Found by a mutation round: the stop after the last checkpoint was tested only without
    ``publish`` and before run.json was written. Stopped before it, the message names the
    file the same command publishes to; stopped once run.json says complete (the stop lands
    as its write returns), it says that record's words, not "before its run.json was
    written", and names what is left: publishing it."""
    from basisconv import run_saves
    from basisconv.errors import Stopped

    real = run_saves.write_record

    def stopped_at_the_end(path, record):
        if record.status == "complete":
            if written:
                real(path, record)
            raise KeyboardInterrupt
        return real(path, record)

    published = tmp_path / "published.json"
    run = tmp_path / "run"
    cfg = compose_tiny(repo, "logger=none", "trainer.epochs=1", f"publish={published}")
    with monkeypatch.context() as patch:
        patch.setattr(run_saves, "write_record", stopped_at_the_end)
        with pytest.raises(Stopped) as err:
            fit(cfg, run)
    again = f"run the same command again with hydra.run.dir={run} to"
    assert str(err.value) == (
        f"the run in {run} is complete (run.json); it was stopped as it finished; {again} "
        f"publish it to {published}" if written else
        f"the run in {run} is complete (checkpoint.pt), but was stopped before its run.json "
        f"was written; {again} write it and publish it to {published}, training nothing")
    assert not published.exists()
    assert fit(cfg, run)["status"] == "complete" and published.exists()


def test_checkpoints_every_so_many_seconds_and_after_the_last_epoch(tmp_path, repo, monkeypatch):
    """``trainer.checkpoint_every_s``: a GPU epoch of seconds need not write a checkpoint
    each time. A stop between checkpoints says which epoch the checkpoint holds, and the
    same command trains the later epochs again, to the uninterrupted run's result."""
    from basisconv import loop, run_saves
    from basisconv.errors import Stopped

    saves = []
    real_save = run_saves.save_checkpoint
    monkeypatch.setattr(run_saves, "save_checkpoint",
                        lambda path, state: saves.append(len(state["record"]["epochs"]))
                        or real_save(path, state))
    every = compose_tiny(repo, "logger=none", "trainer.epochs=4")
    reference = fit(every, tmp_path / "every")
    assert saves == [1, 2, 3, 4]

    saves.clear()
    clock = iter(range(0, 1000, 10))  # each read of the clock 10 s after the one before
    monkeypatch.setattr(run_saves, "monotonic", lambda: next(clock))  # (its reads only)
    cfg = compose_tiny(repo, "logger=none", "trainer.epochs=4", "trainer.checkpoint_every_s=15")
    run_epoch = loop.run_epoch
    stop_at = [4]

    def stopped(number, *args, **kwargs):
        if number == stop_at[0]:
            raise KeyboardInterrupt
        return run_epoch(number, *args, **kwargs)

    monkeypatch.setattr(loop, "run_epoch", stopped)
    with pytest.raises(Stopped, match=r"stopped after epoch 3 of 4; its checkpoint, written at "
                                      r"most every trainer.checkpoint_every_s=15 s, is of epoch 2"):
        fit(cfg, tmp_path / "sparse")
    assert saves == [2]  # 20 s after the start; epochs 1 and 3 came 10 s after the one before
    record = json.loads((tmp_path / "sparse" / "run.json").read_text())
    assert record["status"] == "running" and len(record["epochs"]) == 3  # the record: each epoch
    stop_at[0] = None
    resumed = fit(cfg, tmp_path / "sparse")
    assert saves == [2, 4] and resumed["provenance"]["resumed_from_epoch"] == 2
    assert resumed["final"]["test_accuracy"] == reference["final"]["test_accuracy"]
    assert resumed["final"]["train_loss"] == reference["final"]["train_loss"]


def test_a_run_started_with_resume_false_is_told_the_command_that_resumes_it(tmp_path, repo,
                                                                            monkeypatch):
    """Found in review: its stop said the same command with its folder resumes it, and that
    command (``trainer.resume=false`` still) trained it over from epoch 1."""
    from basisconv import loop
    from basisconv.errors import Stopped

    run_epoch = loop.run_epoch

    def stopped(number, *args, **kwargs):
        if number == 2:
            raise KeyboardInterrupt
        return run_epoch(number, *args, **kwargs)

    overrides = ["logger=none", "trainer.epochs=2", "trainer.resume=false"]
    monkeypatch.setattr(loop, "run_epoch", stopped)
    with pytest.raises(Stopped, match=r"stopped after epoch 1 of 2 .* run the same command again "
                                      r"with hydra.run.dir=\S+ trainer.resume=true to resume it"):
        fit(compose_tiny(repo, *overrides), tmp_path)
    monkeypatch.setattr(loop, "run_epoch", run_epoch)
    resumed = fit(compose_tiny(repo, *overrides[:-1], "trainer.resume=true"), tmp_path)
    assert resumed["provenance"]["resumed_from_epoch"] == 1


def stop_message(repo, folder):
    """What a 3-epoch run in ``folder`` says as it stops (a stop the test arranges)."""
    from basisconv.errors import Stopped

    with pytest.raises(Stopped) as err:
        fit(compose_tiny(repo, "logger=none", "trainer.epochs=3"), folder)
    return str(err.value)


def test_a_stop_while_a_checkpoint_is_written_says_so(tmp_path, repo, monkeypatch):
    """Found in review: a stop during the write of epoch 2's checkpoint (every epoch has
    one) said the checkpoint was "written at most every trainer.checkpoint_every_s=0 s"."""
    from basisconv import run_saves

    real_save = run_saves.save_checkpoint

    def stopped_at_epoch_2(path, state):
        if len(state["record"]["epochs"]) == 2:
            raise KeyboardInterrupt
        return real_save(path, state)

    monkeypatch.setattr(run_saves, "save_checkpoint", stopped_at_epoch_2)
    assert stop_message(repo, tmp_path).endswith(
        f"the run in {tmp_path} stopped while saving epoch 2 of 3; its checkpoint is of epoch "
        f"1; run the same command again with hydra.run.dir={tmp_path} to resume it")


def test_a_stop_just_after_the_checkpoints_rename_names_that_checkpoint(tmp_path, repo,
                                                                         monkeypatch):
    """Found in a flaky-test audit: a signal's handler runs when the rename's C call returns,
    before the run notes the checkpoint it saved; the message said epoch 2's checkpoint "is
    of epoch 1" while checkpoint.pt held epoch 2 (and a test that stops a run once its
    checkpoint exists could fail so). The file on disk says which epoch it holds."""
    from basisconv.errors import Stopped

    real_replace = os.replace

    def stopped_after_epoch_2s_rename(source, target):
        real_replace(source, target)
        if Path(target).name == "checkpoint.pt" and len(torch.load(
                target, weights_only=False)["record"]["epochs"]) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", stopped_after_epoch_2s_rename)
    assert stop_message(repo, tmp_path).endswith(
        f"the run in {tmp_path} stopped after epoch 2 of 3 (checkpoint saved); run the same "
        f"command again with hydra.run.dir={tmp_path} to resume it")
    # an earlier run's checkpoint of as many epochs, not yet replaced by a start over, is
    # not this one's (its rows differ, in their times at least)
    from basisconv import run_saves

    monkeypatch.setattr(os, "replace", real_replace)
    once = compose_tiny(repo, "logger=none", "trainer.epochs=1")
    fit(once, tmp_path / "over")

    def stopped_before_the_rename(path, state):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_saves, "save_checkpoint", stopped_before_the_rename)
    once.trainer.resume = False
    with pytest.raises(Stopped, match="stopped while saving epoch 1 of 1; its checkpoint was "
                                      "not written yet"):
        fit(once, tmp_path / "over")


def test_a_stop_as_a_run_starts_or_once_it_is_complete_says_how_to_go_on(tmp_path, repo,
                                                                          monkeypatch):
    """Found by a stop-injection audit: a stop while the run checked its config, took its
    folder's lock or read its checkpoint, or once complete while it published its record,
    said only "stopped by SIGTERM" (not that the checkpoint is kept, nor how to go on)."""
    from basisconv import resume_point, train
    from basisconv.errors import Stopped

    cfg = compose_tiny(repo, "logger=none", "trainer.epochs=2",
                       f"publish={tmp_path / 'published.json'}")

    def stop(*args, **kwargs):
        raise KeyboardInterrupt
    run = tmp_path / "run"
    for step, said in [
            ("validate", f"^the run in {run} stopped as it started, before training; the "
                         f"same command starts it over$"),
            ("load_checkpoint", f"stopped as it started, before training; its checkpoint is "
                                f"kept: run the same command again with hydra.run.dir={run} "
                                f"to resume it$"),
            ("publish", f"^the run in {run} is complete \\(run.json\\); run the same command "
                        f"again with hydra.run.dir={run} to publish it to ")]:
        if step == "load_checkpoint":
            fit_stopped_before(2, cfg, run)  # its checkpoint of epoch 1 kept
        monkeypatch.setattr(resume_point if step == "load_checkpoint" else train, step, stop)
        with pytest.raises(Stopped, match=said):
            fit(cfg, run)
        monkeypatch.undo()
    fit(cfg, run)  # (complete: publishes it, trains nothing)
    assert (tmp_path / "published.json").exists()


def test_fit_checks_its_config_unless_its_caller_just_did(tmp_path, repo, monkeypatch):
    """scripts/train.py checks the config before its warnings, which only read it, and
    passes validated=True: fit then does not check the same config a second time; any
    other caller's config is checked."""
    from basisconv import train

    checked = []
    monkeypatch.setattr(train, "validate", checked.append)

    def past_the_check(path):
        raise LookupError("past the check")
    monkeypatch.setattr(train, "make_folder", past_the_check)
    cfg = compose_tiny(repo, "logger=none")
    for validated in (False, True):
        with pytest.raises(LookupError, match="past the check"):
            fit(cfg, tmp_path, validated=validated)
    assert checked == [cfg]
    script = (repo / "scripts" / "train.py").read_text()
    assert script.count("validate(cfg)") == 1 and "validated=True)" in script


def test_a_second_stop_as_a_stopped_run_is_torn_down_still_says_where_it_stopped(
        tmp_path, repo, monkeypatch):
    """Seen under torchrun in a loaded test run: its SIGTERM, after another rank's death,
    landed as the stopped run's process group was torn down and replaced the stop in
    flight with a bare one; it is said as the run's stop (where, how to resume)."""
    from basisconv import distributed, loop
    from basisconv.errors import Stopped

    run_epoch, teardown = loop.run_epoch, distributed.teardown

    def stopped_in_epoch_2(number, *args, **kwargs):
        if number == 2:
            raise KeyboardInterrupt
        return run_epoch(number, *args, **kwargs)

    def stopped_again(together=True):
        teardown(together=together)
        raise Stopped(signal.SIGTERM)  # bare, as raise_stopped makes it
    monkeypatch.setattr(loop, "run_epoch", stopped_in_epoch_2)
    monkeypatch.setattr(distributed, "teardown", stopped_again)
    assert stop_message(repo, tmp_path).endswith(
        f"the run in {tmp_path} stopped after epoch 1 of 3 (checkpoint saved); run the same "
        f"command again with hydra.run.dir={tmp_path} to resume it")


def test_a_sigterm_amid_a_checkpoints_write_is_a_stop_after_it(tmp_path, repo, monkeypatch,
                                                                stop_handlers):
    """Found by a flaky protocol test: a SIGTERM that came while torch.save wrote a
    checkpoint raised the stop inside torch's zip writer, whose exit then failed, and
    torch's ``RuntimeError: unexpected pos`` replaced the stop (a trace, exit status 1). It
    is held until the checkpoint is written, then stops the run there."""
    from basisconv.checkpoint import load_checkpoint

    sigterm_amid_torch_save(monkeypatch, lambda state: isinstance(state, dict) and len(
        state.get("record", {}).get("epochs", ())) == 2)
    with signals.sigterm_stops():  # as the entry points set it
        message = stop_message(repo, tmp_path)
    assert message.endswith(
        f"the run in {tmp_path} stopped after epoch 2 of 3 (checkpoint saved); run the same "
        f"command again with hydra.run.dir={tmp_path} to resume it"), message
    assert len(load_checkpoint(tmp_path / "checkpoint.pt")["record"]["epochs"]) == 2


@pytest.mark.parametrize("resuming", [False, True])
@pytest.mark.parametrize("by", ["ctrl-c", "sigterm"])
def test_a_stop_before_the_first_epoch_says_how_to_go_on(tmp_path, repo, monkeypatch, resuming,
                                                          by):
    """Found in review: a stop while the run chose its layers (the sensitivity estimate,
    minutes) was the bare line "stopped by SIGTERM". SIGTERM's handler raises a Stopped of
    its own, without a message (found in a second review: it was passed on as it was)."""
    import signal

    from basisconv import training
    from basisconv.checkpoint import load_checkpoint, save_checkpoint
    from basisconv.errors import Stopped

    cfg = compose_tiny(repo, "logger=none", "trainer.epochs=2")
    if resuming:  # a run with the checkpoint of epoch 1, started again
        fit(compose_tiny(repo, "logger=none", "trainer.epochs=2"), tmp_path)
        (tmp_path / "run.json").unlink()
        checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
        checkpoint["record"]["epochs"] = checkpoint["record"]["epochs"][:1]
        checkpoint["record"]["status"] = "running"
        save_checkpoint(tmp_path / "checkpoint.pt", checkpoint)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt if by == "ctrl-c" else Stopped(signal.SIGTERM)

    monkeypatch.setattr(training, "layers_to_convert", interrupted)
    with pytest.raises(Stopped) as err:
        fit(cfg, tmp_path)
    assert err.value.signum == (signal.SIGINT if by == "ctrl-c" else signal.SIGTERM)
    if resuming:
        assert str(err.value) == (
            f"the run in {tmp_path} stopped while resuming, before epoch 2; its checkpoint of "
            f"epoch 1 is kept: run the same command again with hydra.run.dir={tmp_path} to "
            f"resume it")
    else:
        assert str(err.value) == (f"the run in {tmp_path} stopped before its first epoch "
                                  f"(choosing its layers, reading its data or starting "
                                  f"wandb); the same command starts it over")


def test_a_stop_once_the_run_is_built_before_it_runs_says_it_trained_nothing(tmp_path, repo,
                                                                            monkeypatch):
    """Found in review: a stop landing after the run was built (``start_training`` had
    returned) and before ``Training.run`` noted its checkpoint was an AttributeError
    traceback (``saved_epochs``, set in ``run``), not the line that says how to go on."""
    from basisconv import training
    from basisconv.errors import Stopped

    def stopped_as_it_begins(self):  # a signal's handler, run at its first bytecode
        raise KeyboardInterrupt

    monkeypatch.setattr(training.Training, "run", stopped_as_it_begins)
    with pytest.raises(Stopped) as err:
        fit(compose_tiny(repo, "logger=none", "trainer.epochs=2"), tmp_path)
    assert str(err.value) == (f"the run in {tmp_path} stopped before its first epoch "
                              f"(choosing its layers, reading its data or starting "
                              f"wandb); the same command starts it over")

@pytest.mark.parametrize("trouble", ["stop as built", "error as built", "stop before run"])
def test_trouble_between_the_build_and_its_epochs_leaves_no_wandb_run_open(tmp_path, repo,
                                                                          fake_wandb,
                                                                          monkeypatch, trouble):
    """Found in review: wandb started in ``Training.__init__``, outside the ``try`` of
    ``Training.run`` whose ``finally`` ends it, so a stop or an error landing in between
    (the build's last steps, or after ``start_training`` returned) left the wandb run open,
    to be ended as finished by the next job's ``wandb.init`` or a notebook's exit (and,
    under torchrun, the process group joined). Any wandb run started ends marked failed."""
    from basisconv import training
    from basisconv.errors import Stopped

    def interrupted(*args, **kwargs):  # a signal's handler, run at its first bytecode
        if trouble == "error as built":
            raise OSError("No space left on device")
        raise KeyboardInterrupt

    if trouble == "stop before run":
        monkeypatch.setattr(training.Training, "run", interrupted)
    else:  # the build's last step
        monkeypatch.setattr(training, "RunSaves", interrupted)
    cfg = compose_tiny(repo, "logger.mode=offline", "trainer.epochs=2")
    with pytest.raises(OSError if trouble == "error as built" else Stopped) as err:
        fit(cfg, tmp_path)
    assert [run.finished for run in fake_wandb.runs] in ([], [[1]])  # none open
    if trouble != "error as built":
        assert str(err.value) == (f"the run in {tmp_path} stopped before its first epoch "
                                  f"(choosing its layers, reading its data or starting "
                                  f"wandb); the same command starts it over")



@pytest.mark.parametrize("trouble", ["stop", "error"])
@pytest.mark.parametrize("where", ["as the group is joined", "at the build's last step"])
def test_a_run_stopped_or_failing_as_it_is_built_leaves_the_process_group(tmp_path, repo,
                                                                          monkeypatch, trouble,
                                                                          where):
    """Found in review: ``Training.run`` leaves torchrun's process group whatever happens,
    but a stop or an error while the run was built, after ``Training.__init__`` had joined
    the group (its checks of the processes, the layers, the data, a checkpoint that does not
    fit), left it joined: under NCCL each rank then warned at exit, after the run's one line,
    that ``destroy_process_group()`` was not called, and a caller of ``fit`` in-process kept
    the group. Here the rank joins a gloo group of one process, as torchrun's rank 0 would."""
    import torch.distributed as dist

    from basisconv import distributed, training
    from basisconv.errors import Stopped

    join, joined = dist.init_process_group, []

    def join_alone(backend, **kwargs):  # (torchrun's environment names two processes)
        joined.append(backend)
        join(backend, rank=0, world_size=1, init_method=f"file://{tmp_path / 'store'}")

    def interrupted(*args, **kwargs):  # a signal's handler, run at its first bytecode
        if trouble == "error":
            raise OSError("No space left on device")
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed, "launched_processes", lambda: 2)
    monkeypatch.setattr(dist, "init_process_group", join_alone)
    monkeypatch.setattr(training, "check_processes" if where == "as the group is joined"
                        else "RunSaves", interrupted)
    try:
        with pytest.raises(OSError if trouble == "error" else Stopped):
            fit(compose_tiny(repo, "logger=none"), tmp_path / "run")
        assert joined == ["gloo"] and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("by", ["ctrl-c", "sigterm"])
def test_a_stop_while_wandb_finishes_a_complete_run_says_it_is_complete(tmp_path, repo,
                                                                       fake_wandb, monkeypatch,
                                                                       by):
    """Found in review: a stop while wandb finished (uploads, up to finish_timeout_s, when
    a user presses Ctrl-C at what looks like a hang) was the bare "stopped by SIGTERM",
    though the run was complete, and its record was not published."""
    import signal

    from basisconv.errors import Stopped

    def stopped(self, exit_code=0):
        raise KeyboardInterrupt if by == "ctrl-c" else Stopped(signal.SIGTERM)

    finish = FakeRun.finish
    monkeypatch.setattr(FakeRun, "finish", stopped)
    published = tmp_path / "published.json"
    cfg = compose_tiny(repo, "trainer.epochs=1", "logger.mode=offline", f"publish={published}")
    with pytest.raises(Stopped) as err:
        fit(cfg, tmp_path / "run")
    assert err.value.signum == (signal.SIGINT if by == "ctrl-c" else signal.SIGTERM)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "complete"
    assert str(err.value).startswith(f"the run in {tmp_path / 'run'} is complete (run.json)")
    assert str(err.value).endswith(f"run the same command again with hydra.run.dir="
                                   f"{tmp_path / 'run'} to publish it to {published}")
    monkeypatch.setattr(FakeRun, "finish", finish)  # again: already complete, published
    fit(cfg, tmp_path / "run")
    assert json.loads(published.read_text())["status"] == "complete"


def test_a_second_stop_while_wandb_finishes_a_failed_run_keeps_the_first_error(
        tmp_path, repo, fake_wandb, monkeypatch):
    """Found in review of the fix above: a Ctrl-C while wandb finished a diverged run (its
    uploads look like a hang) replaced the divergence, its epoch and advice, with a bare
    "stopped by SIGTERM"."""
    import signal

    from basisconv import loop
    from basisconv.errors import Stopped, TrainingDiverged

    def stopped(self, exit_code=0):
        raise Stopped(signal.SIGTERM)

    def diverging(epoch, *args, **kwargs):
        if epoch == 2:
            raise TrainingDiverged("the training loss became nan", "training loss")
        return run_epoch(epoch, *args, **kwargs)

    run_epoch = loop.run_epoch
    monkeypatch.setattr(FakeRun, "finish", stopped)
    monkeypatch.setattr(loop, "run_epoch", diverging)
    with pytest.raises(TrainingDiverged, match="training diverged in epoch 2 of 3"):
        fit(compose_tiny(repo, "logger.mode=offline"), tmp_path)


def test_a_diverged_runs_wandb_summary_says_what_diverged_before_it_ends_failed(
        tmp_path, repo, fake_wandb, monkeypatch):
    """Its wandb run ended failed (exit code 1), as a crashed one does, so source=wandb
    analysis named it "(failed)", and one diverged in its first epoch (no test_accuracy)
    not at all; the summary now says what diverged, as ``run.json`` does."""
    from basisconv import loop
    from basisconv.errors import TrainingDiverged

    def diverging(epoch, *args, **kwargs):
        raise TrainingDiverged("the training loss became nan", "training loss")

    monkeypatch.setattr(loop, "run_epoch", diverging)
    with pytest.raises(TrainingDiverged, match="training diverged in epoch 1 of 3"):
        fit(compose_tiny(repo, "logger.mode=offline", "trainer.lr=0.5"), tmp_path)
    (run,) = fake_wandb.runs
    assert run.summary["diverged"] == "the training loss became nan with trainer.lr=0.5"
    assert run.finished == [1]


def test_a_resumed_diverged_run_that_then_stops_is_not_named_diverged_by_wandb(
        tmp_path, repo, fake_wandb, monkeypatch):
    """Found in review: wandb keeps a resumed run's summary, so a diverged run resumed from
    its checkpoint (the same command, or another device) that got past the diverged epoch
    and was then stopped kept the earlier start's ``diverged``, and source=wandb analysis
    named it diverged in an epoch it had trained; its run.json said it was stopped."""
    from basisconv import loop
    from basisconv.analysis.record_sources import wandb_diverged_entry
    from basisconv.errors import TrainingDiverged

    run_epoch = loop.run_epoch

    def diverging(epoch, *args, **kwargs):
        if epoch == 2:
            raise TrainingDiverged("the training loss became nan", "training loss")
        return run_epoch(epoch, *args, **kwargs)

    cfg = compose_tiny(repo, "logger.mode=online")
    with monkeypatch.context() as patched:
        patched.setattr(loop, "run_epoch", diverging)
        with pytest.raises(TrainingDiverged, match="training diverged in epoch 2 of 3"):
            fit(cfg, tmp_path)
    fit_stopped_before(3, cfg, tmp_path)  # resumed, past epoch 2, then stopped
    first, resumed = fake_wandb.runs
    assert resumed.kwargs["id"] == first.id and resumed.finished == [1]  # failed
    summary = {**first.summary, **resumed.summary}  # (one wandb run, as the server holds it)
    run = SimpleNamespace(state="failed", config={"trainer": {"epochs": 3}}, url="run")
    assert wandb_diverged_entry(run, summary) is None


@pytest.mark.parametrize("lands", ["before its stop is made", "while its stop is said",
                                   "before the collective fails"])
def test_a_sigterm_after_a_peers_failure_keeps_what_the_stop_says(tmp_path, repo, monkeypatch,
                                                                   lands):
    """Seen once in CI (2026-12-03, the torchrun test of a dying rank): rank 0 said a bare
    "stopped by SIGTERM". torchrun's SIGTERM, sent once the other rank died, landed while
    rank 0 turned the failed collective into its stop (reading its checkpoint back to say
    where the run stopped); its handler's Stopped, without a message, replaced that stop,
    and the entry point looked for the collective's failure once the process group was
    gone, which it no longer counted as another process's."""
    from basisconv import distributed, exits, loop, signals, training

    gone = RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:5313: "
                        "Connection reset by peer. This is typically caused by a remote worker")
    run_epoch, sent = loop.run_epoch, []

    def peer_left(number, *args, **kwargs):
        if number == 2 and lands == "before the collective fails":  # (a slow disk, say)
            monkeypatch.setattr(distributed, "world_size", lambda: 2)  # one of two ranks
            os.kill(os.getpid(), signal.SIGTERM)
        if number == 2:
            raise gone
        return run_epoch(number, *args, **kwargs)

    def sigterm_first(real):
        def call(*args, **kwargs):
            if not sent:  # torchrun's SIGTERM, as the real one can land here
                sent.append(signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(loop, "run_epoch", peer_left)
    if lands == "before its stop is made":  # the first look at the failure
        monkeypatch.setattr(distributed, "peer_failure", sigterm_first(distributed.peer_failure))
    elif lands == "while its stop is said":
        monkeypatch.setattr(training.Training, "stop_message",
                            sigterm_first(training.Training.stop_message))
    stop = stop_of_a_rank(repo, tmp_path, signal.SIGTERM, signals.raise_stopped)
    assert stop.signum == signal.SIGTERM
    where = stopped_after_epoch_1(tmp_path / "run")
    # what the entry point says after "stopped by SIGTERM: "
    if lands == "before the collective fails":  # which may never come: said as a possibility
        assert exits.stop_reason(stop) == (
            f"{where}; under torchrun a SIGTERM may also follow the failure of another process "
            f"of the job, which torchrun's summary names")
    else:
        assert sent and exits.stop_reason(stop) == (
            f"another process of this torchrun job failed (Read error [127.0.0.1]:5313: "
            f"Connection reset by peer); {where}")


def stop_of_a_rank(repo, tmp_path, signum, handler):
    """The ``Stopped`` a tiny run ends with as one rank of a torchrun job (a gloo process
    group of one process), with ``handler`` for ``signum`` as the entry point or Python sets
    it; the group and the handler put back after it."""
    import torch.distributed as dist

    from basisconv.errors import Stopped

    dist.init_process_group("gloo", rank=0, world_size=1,
                            init_method=f"file://{tmp_path / 'store'}")
    previous = signal.signal(signum, handler)
    try:
        with pytest.raises(Stopped) as err:
            fit(compose_tiny(repo, "logger=none"), tmp_path / "run")
    finally:
        signal.signal(signum, previous)
        if dist.is_initialized():
            dist.destroy_process_group()
    return err.value


def stopped_after_epoch_1(folder) -> str:
    """Where a stopped 3-epoch run stopped, as its stop says it."""
    return (f"the run in {folder} stopped after epoch 1 of 3 (checkpoint saved); run the same "
            f"command again with hydra.run.dir={folder} to resume it")


def test_a_ctrl_c_under_torchrun_is_not_said_as_another_processs_failure(tmp_path, repo,
                                                                        monkeypatch):
    """Found in the torchrun review: a Ctrl-C reaches every process (the terminal's, and
    torchrun passes its SIGINT on); a rank that took it first left, so rank 0's collective
    failed as its own SIGINT waited, and rank 0 said "stopped by SIGTERM: another process of
    this torchrun job failed (Connection closed by peer)" (2 Ctrl-C of 6 on CIFAR-10,
    2 gloo processes). torchrun stops its processes with SIGTERM after a failure, never
    with SIGINT, so a SIGINT is the user's stop, and the peer left for it."""
    from basisconv import distributed, exits, loop

    gone = RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:5313: "
                        "Connection closed by peer. This is typically caused by a remote worker")
    run_epoch, look, sent = loop.run_epoch, distributed.peer_failure, []

    def peer_left(number, *args, **kwargs):
        if number == 2:  # the other rank left for its own SIGINT
            monkeypatch.setattr(distributed, "world_size", lambda: 2)  # one of two ranks
            raise gone
        return run_epoch(number, *args, **kwargs)

    def sigint_waited(err):  # this rank's, raised at the first call after the collective
        if not sent:
            sent.append(signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return look(err)

    monkeypatch.setattr(loop, "run_epoch", peer_left)
    monkeypatch.setattr(distributed, "peer_failure", sigint_waited)
    stop = stop_of_a_rank(repo, tmp_path, signal.SIGINT, signal.default_int_handler)
    assert stop.signum == signal.SIGINT
    assert exits.stop_reason(stop) == stopped_after_epoch_1(tmp_path / "run")


def test_stops_come_back_once_a_stops_message_is_made():
    """What lets torchrun's SIGTERM (or a second Ctrl-C) go while a stop is made: the
    signal is dropped, not held for later, and the handlers are the same after it."""
    import signal

    from basisconv import signals
    from basisconv.errors import Stopped

    previous = signal.signal(signal.SIGTERM, signals.raise_stopped)
    interrupt = signal.getsignal(signal.SIGINT)
    try:
        with signals.stops_let_go():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # (a handler runs at the next bytecode it can; none does)
        assert signal.getsignal(signal.SIGTERM) is signals.raise_stopped
        assert signal.getsignal(signal.SIGINT) is interrupt
        with pytest.raises(Stopped):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_online_run_resumed_between_checkpoints_sends_wandb_only_steps_it_lacks(
        tmp_path, repo, fake_wandb, monkeypatch, caplog):
    """Stopped after epoch 3 with the checkpoint of epoch 2, the run trains epoch 3 again;
    online wandb holds epoch 3 already and would drop it (it refuses a step below its last):
    it is not sent, and the log says once where its retrained values are."""
    from basisconv import loop, run_saves
    from basisconv.errors import Stopped

    clock = iter(range(0, 1000, 10))  # each read of the clock 10 s after the one before
    monkeypatch.setattr(run_saves, "monotonic", lambda: next(clock))
    cfg = compose_tiny(repo, "logger.mode=online", "trainer.epochs=4",
                       "trainer.checkpoint_every_s=15")
    run_epoch, stop_at = loop.run_epoch, [4]

    def stopped(number, *args, **kwargs):
        if number == stop_at[0]:
            raise KeyboardInterrupt
        return run_epoch(number, *args, **kwargs)

    monkeypatch.setattr(loop, "run_epoch", stopped)
    with pytest.raises(Stopped, match="its checkpoint, .* is of epoch 2"):
        fit(cfg, tmp_path)
    stop_at[0] = None
    with caplog.at_level(logging.INFO, logger="basisconv.tracking"):
        fit(cfg, tmp_path)
    first, resumed = fake_wandb.runs
    assert first.logged == [1, 2, 3] and resumed.logged == [4] and resumed.dropped == []
    held = [r.getMessage() for r in caplog.records if "already holds" in r.getMessage()]
    assert held == ["wandb already holds epochs up to 3 of this run, logged before it "
                    "stopped, and keeps them; epoch 3 as trained again is in run.json"]


@pytest.mark.parametrize("value", ["-1", "inf"])
def test_a_bad_checkpoint_interval_is_named(repo, value):
    from basisconv.config_checks import validate
    from basisconv.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.checkpoint_every_s must be a number of "
                                          "seconds >= 0"):
        validate(compose_tiny(repo, f"trainer.checkpoint_every_s={value}"))


def test_a_start_without_wandb_keeps_the_wandb_run_for_the_next_start(tmp_path, repo,
                                                                      fake_wandb):
    """Found by audit: a resumed start whose wandb could not start (or with logger=none)
    wrote wandb: null to the record, so the next start began a second wandb run for the
    same job, beside the first one's partial history."""
    cfg = compose_tiny(repo, "logger.mode=online")
    fit_stopped_before(2, cfg, tmp_path)
    working_init = fake_wandb.init
    fake_wandb.init = lambda **kwargs: (_ for _ in ()).throw(ConnectionError("no network"))
    fit_stopped_before(3, cfg, tmp_path)
    fake_wandb.init = working_init
    record = fit(cfg, tmp_path)
    first, resumed = fake_wandb.runs
    assert resumed.kwargs.get("id") == first.id and resumed.kwargs["resume"] == "allow"
    assert resumed.logged == [2, 3]  # the server has epoch 1; epoch 2 ran without wandb
    assert record["wandb"]["id"] == first.id


@pytest.mark.parametrize("failing", ["save_checkpoint", "write_record"])
def test_a_run_that_cannot_save_says_so_in_one_line_and_resumes(tmp_path, repo, monkeypatch,
                                                                 failing):
    """A full disk at epoch 2 was an OSError traceback that did not say what was kept. It
    is one line naming the file, the reason, the checkpoint kept and the override that
    resumes; the same command then goes on from there."""
    import errno

    from basisconv import run_saves
    from basisconv.errors import SaveError

    cfg = compose_tiny(repo, "logger=none")
    real = getattr(run_saves, failing)

    def full_at_epoch_2(path, state):
        record = state["record"] if failing == "save_checkpoint" else state.as_dict()
        if len(record["epochs"]) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, state)

    with monkeypatch.context() as patch:
        patch.setattr(run_saves, failing, full_at_epoch_2)
        with pytest.raises(SaveError) as err:
            fit(cfg, tmp_path)
    kept = 1 if failing == "save_checkpoint" else 2  # the checkpoint is written first
    where = tmp_path / "checkpoint.pt" if failing == "save_checkpoint" else tmp_path
    assert str(err.value) == (
        f"the run in {tmp_path} could not save epoch 2 ({where}: No space left on "
        f"device); once that is fixed (free space, or make the folder writable), its "
        f"checkpoint of epoch {kept} is kept: run the same command again with "
        f"hydra.run.dir={tmp_path} to resume it")
    record = fit(cfg, tmp_path)
    assert record["status"] == "complete" and len(record["epochs"]) == 3


def test_a_wandb_service_that_dies_is_one_warning_and_no_exit_traceback(tmp_path, repo,
                                                                        fake_wandb, caplog):
    """wandb's service process gone (killed, OOM): log() and finish() both raise, and
    wandb's own atexit hook printed a ConnectionResetError traceback after the run."""
    fake_wandb.log_error = ConnectionResetError("Connection lost")
    torn_down = []
    fake_wandb.teardown = lambda exit_code=None: torn_down.append(exit_code)

    def finish(self, exit_code=0):
        raise ConnectionResetError("Connection lost")

    fake_wandb.Run = type("DeadRun", (FakeRun,), {"finish": finish})
    record = fit(compose_tiny(repo, "logger.mode=offline"), tmp_path)
    assert record["status"] == "complete"
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "wandb" in r.message]
    assert len(warnings) == 1, [r.message for r in warnings]
    assert torn_down  # the dead service dropped now, not by wandb's atexit hook


class FullDisk:
    """A log file's stream on a full disk: every write fails."""

    def write(self, text):
        raise OSError(28, "No space left on device")

    flush = write


def test_wandb_logging_to_a_full_disk_prints_no_tracebacks(tmp_path, repo, fake_wandb, capfd):
    """wandb logs its start and finish to debug.log in its folder, inside the run's: on a
    full disk each record printed Python's "--- Logging error ---" and a traceback (16,000
    lines before the run's one line that it could not save, found in review)."""
    own_log, level = logging.getLogger("wandb"), logging.getLogger("wandb").level
    handler = logging.StreamHandler(FullDisk())
    own_log.addHandler(handler)
    own_log.setLevel(logging.DEBUG)  # (as wandb sets it)
    fake_wandb.init_kwargs = fake_wandb.init

    def init(**kwargs):
        own_log.info("Logging user logs to debug.log")
        return fake_wandb.init_kwargs(**kwargs)

    def finish(self, exit_code=0):
        own_log.info("got exitcode: %d", exit_code)
        FakeRun.finish(self, exit_code)

    fake_wandb.init, fake_wandb.Run = init, type("Run", (FakeRun,), {"finish": finish})
    raising = logging.raiseExceptions
    try:
        record = fit(compose_tiny(repo, "logger.mode=offline"), tmp_path)
    finally:
        own_log.removeHandler(handler)
        own_log.setLevel(level)
    assert record["status"] == "complete" and fake_wandb.runs[0].finished == [0]
    assert "Logging error" not in capfd.readouterr().err
    assert logging.raiseExceptions is raising  # put back: the package's own logs unchanged


def test_a_run_folder_named_like_a_json_file_keeps_its_record_inside(tmp_path, repo):
    """Found in review: the record of a run in a folder named ``*.json`` was written over
    the folder itself ('Is a directory'), so the run stopped after every first epoch."""
    folder = tmp_path / "v2.json"
    record = fit(compose_tiny(repo, "logger=none", "trainer.epochs=1"), folder)
    assert record["status"] == "complete"
    assert json.loads((folder / "run.json").read_text())["final"] == record["final"]


def test_a_sweep_jobs_command_keeps_the_flags_that_choose_its_configs():
    from basisconv.records.origin import _hydra_flags

    assert _hydra_flags(["-m", "--config-dir", "/x", "-cn", "config", "experiment=tiny",
                         "seed=0,1", "--config-path=/y", "--multirun"]) == \
        ["--config-dir", "/x", "-cn", "config", "--config-path=/y"]


# What the stop-signal helpers put back and leave alone (found by a mutation test of
# basisconv.signals: no test failed when they did not)
@pytest.fixture
def stop_handlers():
    """The stop signals' handlers put back after a test that sets them."""
    saved = {s: signal.getsignal(s) for s in signals.STOPS}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_sigterm_stops_puts_back_the_handler_it_replaced(stop_handlers):
    def mine(signum, frame):
        pass
    signal.signal(signal.SIGTERM, mine)
    with signals.sigterm_stops():
        assert signal.getsignal(signal.SIGTERM) is signals.raise_stopped
    assert signal.getsignal(signal.SIGTERM) is mine


def test_stops_at_default_sets_both_stops_to_their_default_action(stop_handlers):
    for s in signals.STOPS:
        signal.signal(s, signals.raise_stopped)
    signals.stops_at_default()
    assert all(signal.getsignal(s) == signal.SIG_DFL for s in signals.STOPS)


def test_signals_blocked_puts_back_the_threads_mask():
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with signals.signals_blocked({signal.SIGUSR1}):
        assert signal.SIGUSR1 in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


def test_signals_blocked_leaves_a_signal_blocked_before_it_blocked():
    """The mask before is put back, not the signals unblocked: one a caller held blocked
    stays so (found by a mutation test of basisconv.signals)."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        with signals.signals_blocked({signal.SIGUSR1, signal.SIGUSR2}):
            pass
        assert signal.SIGUSR1 in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert signal.SIGUSR2 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def test_stops_held_puts_the_handlers_back_before_the_held_stop_raises(stop_handlers):
    """A held stop that raises as the block ends leaves the handlers as they were, not
    the block's holder (found by a mutation test: handled first, a SIGTERM after it was
    held for ever)."""
    from basisconv.errors import Stopped

    signal.signal(signal.SIGTERM, signals.raise_stopped)
    with pytest.raises(Stopped):
        with signals.stops_held():
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signals.raise_stopped


def test_one_stop_lets_a_second_stop_go_while_the_first_is_on_its_way(stop_handlers):
    """The stops that come while the first one's handler raises are let go (found by a
    mutation test of basisconv.signals: with the handlers changed after it, not before,
    a second Ctrl-C raised again in the middle of the first stop's handling)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raised_again = []
    with signals.one_stop():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # (ended by the KeyboardInterrupt)
        except KeyboardInterrupt:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
            except KeyboardInterrupt:
                raised_again.append(True)
    assert raised_again == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("manager", ["stops_let_go", "one_stop", "stops_held"])
def test_the_stop_helpers_change_nothing_in_another_thread(manager, stop_handlers):
    """Python sets handlers in the main thread alone (``signal.signal`` raises
    ValueError in another): entered from a thread, each helper is a no-op."""
    import threading

    signal.signal(signal.SIGTERM, signals.raise_stopped)
    failed = []

    def enter():
        try:
            with getattr(signals, manager)():
                pass
        except Exception as err:  # (a thread's exception would be lost)
            failed.append(err)
    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert failed == []
    assert signal.getsignal(signal.SIGTERM) is signals.raise_stopped


def test_a_default_or_ignored_disposition_is_let_go_by_stops_let_go_and_left_by_one_stop(
        stop_handlers):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # fit() called from a notebook
    with signals.stops_let_go():
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # started in the background, or by nohup
    with signals.one_stop():
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_a_stop_as_the_entry_point_puts_its_handler_back_is_said_in_one_line(
        monkeypatch, capsys, stop_handlers):
    """Found by a stop-injection audit: a SIGTERM whose handler ran as ``sigterm_stops``
    put the handler before it back (the task done) raised its stop outside the entry
    point's handling: a trace ending in ``basisconv.errors.Stopped``, and exit -2."""
    import contextlib

    from basisconv import cli
    from basisconv.errors import Stopped

    @contextlib.contextmanager
    def stopped_on_the_way_out():
        yield
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(cli, "sigterm_stops", stopped_on_the_way_out)
    monkeypatch.delenv("BASISCONV_DEBUG", raising=False)
    try:
        cli.exit_on_user_error(lambda: None)()
    except BaseException as err:  # (a Stopped let through would end pytest's session)
        end = err
    assert isinstance(end, SystemExit) and end.code == 143, repr(end)
    assert capsys.readouterr().err == "stopped by SIGTERM\n"


def test_stops_held_handles_the_first_stop_once_as_the_block_ends(stop_handlers):
    """What came in the block is handled after it (once, the first of them), its handlers
    are put back, and a default or ignored disposition is left as it is."""
    seen = []

    def mine(signum, frame):
        seen.append(signum)
    for s in signals.STOPS:
        signal.signal(s, mine)
    with signals.stops_held():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert seen == []
    assert seen == [signal.SIGTERM]
    assert all(signal.getsignal(s) is mine for s in signals.STOPS)
    with signals.stops_held():
        pass
    assert seen == [signal.SIGTERM]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # started by nohup
    with signals.stops_held():
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_a_folders_lock_file_names_only_its_present_holder(tmp_path):
    """Found by mutation (the lock file written over without being emptied first passed
    every test): the lock file names whoever holds the folder now, which a refused second
    run quotes; a longer line an earlier holder left (a longer pid or host name) is not
    left trailing after it."""
    from basisconv.records import folder_lock

    (tmp_path / "run.lock").write_text("pid 4194304 on host a-much-longer-host-name-than-this-"
                                       "one since 2020-01-01T00:00:00\nand a second line\n")
    with folder_lock(tmp_path) as path:
        said = path.read_text()
    assert said.startswith(f"pid {os.getpid()} on host ") and said.count("\n") == 1, said
    assert "longer" not in said and "second" not in said


def test_a_folder_in_use_names_its_holder_and_the_key_that_gives_another(tmp_path):
    """Found by mutation (the refusal without its fix, "or give this one another <key>",
    passed every test): a second holder of a folder is told who holds it and which config
    key picks another folder (the caller's: a layer-timing cache's is not hydra.run.dir)."""
    from basisconv.errors import ConfigError
    from basisconv.records import folder_lock

    with folder_lock(tmp_path, what="layer timing", key="sensitivity.cache_dir"):
        with pytest.raises(ConfigError, match=rf"^{tmp_path} is in use by another layer timing "
                                              rf"\(pid {os.getpid()} on host .+\); wait for it "
                                              rf"to finish, or give this one another "
                                              rf"sensitivity\.cache_dir$"):
            with folder_lock(tmp_path, what="layer timing", key="sensitivity.cache_dir"):
                pass


@pytest.mark.parametrize("code", ["ENOLCK", "ENOSYS", "EOPNOTSUPP"])
def test_a_folder_on_a_file_system_without_locks_is_one_line_naming_the_key(tmp_path,
                                                                           monkeypatch, code):
    """Found in review: a folder on a file system that refuses ``flock`` (NFS without its
    lock daemon: ENOLCK; Lustre mounted without ``-o flock``, some FUSE mounts: ENOSYS or
    EOPNOTSUPP) ended every run there in an ``OSError`` trace from the lock; it is one
    line naming the folder, why, and the config key that puts the folder elsewhere."""
    import errno
    import fcntl

    from basisconv.errors import ConfigError, FolderInUse
    from basisconv.records import folder_lock

    number = getattr(errno, code)

    def refused(fd, operation):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(fcntl, "flock", refused)
    with pytest.raises(ConfigError, match=rf"^cannot lock the run's folder {tmp_path} "
                                          rf"\({os.strerror(number)}\): its file system "
                                          rf"does not support file locks; point "
                                          rf"hydra\.run\.dir at a folder on one that "
                                          rf"does") as err:
        with folder_lock(tmp_path):
            pass
    assert not isinstance(err.value, FolderInUse) and "\n" not in str(err.value)


def test_a_start_refused_for_want_of_locks_leaves_no_folder_of_its_own(tmp_path, repo):
    """Found in review: a start refused because its folder's file system has no locks left
    the run folder Hydra had made for it, as other refused starts do not: the removal of
    that folder took the folder's lock first, and was refused the same way. Where no
    process can lock, none can hold the folder, so the removal goes on without the lock."""
    import errno
    import subprocess

    start = ("import errno, fcntl, os, runpy, sys\n"
             "def refused(fd, operation):\n"
             "    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))\n"
             "fcntl.flock = refused\n"
             "sys.argv = sys.argv[1:]\n"
             "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    run = tmp_path / "runs" / "run"
    done = subprocess.run([sys.executable, "-c", start, str(repo / "scripts" / "train.py"),
                           "profile=smoke", "logger=none", f"hydra.run.dir={run}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"error: cannot lock the run's folder {run} "
                           f"({os.strerror(errno.ENOLCK)}): its file system does not support "
                           f"file locks; point hydra.run.dir at a folder on one that does "
                           f"(a local disk, or a mount with locks on)\n")
    assert not run.exists()  # a run that never was leaves no folder


def test_a_stop_as_the_temporary_file_is_made_leaves_none_and_the_umask_as_it_was(
        tmp_path, monkeypatch):
    """Found by a stop-injection audit: a stop right after mkstemp (while the umask was
    read by setting it to 0 and back, or the file's mode set) left the temporary file and
    its descriptor behind, and could leave the process with umask 0; the analysis and the
    sensitivity estimate's kept work never remove such files."""
    from basisconv.records import files, write_atomic

    before = os.umask(0o027)
    try:
        assert files.process_umask() == 0o027
        write_atomic(tmp_path / "kept.json", lambda f: f.write(b"{}"))
        assert (tmp_path / "kept.json").stat().st_mode & 0o777 == 0o640
        open_fds = len(os.listdir("/proc/self/fd"))

        def stopped(*args):
            raise KeyboardInterrupt
        monkeypatch.setattr(files.os, "chmod", stopped)
        with pytest.raises(KeyboardInterrupt):
            write_atomic(tmp_path / "run.json", lambda f: f.write(b"{}"))
        monkeypatch.undo()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json"]
        assert len(os.listdir("/proc/self/fd")) == open_fds
        assert files.process_umask() == 0o027
    finally:
        os.umask(before)


def test_the_temporary_of_a_write_in_flight_is_hidden_and_what_leftover_temporaries_finds(
        tmp_path):
    """A writer killed mid-write leaves its temporary file; ``leftover_temporaries`` must
    find exactly the files ``write_atomic`` writes (a name it does not match is never
    cleaned up, and the checks above that glob ``.*.tmp`` would not see it either), and
    they are hidden, so a run folder's listing and the analysis's readers pass them by."""
    from basisconv.records import leftover_temporaries, write_atomic

    path = tmp_path / "run.json"
    during = []

    def write(f):
        f.write(b"{}")
        during.append(([p for p in tmp_path.iterdir() if p != path],
                       leftover_temporaries(path)))

    write_atomic(path, write)
    (temporary,), found = during[0]
    assert temporary.name.startswith(".run.json.") and temporary.name.endswith(".tmp")
    assert found == [temporary]
    assert leftover_temporaries(path) == [] and path.read_text() == "{}"


def test_an_atomic_write_flushes_the_file_then_its_folder_so_the_rename_survives_a_power_cut(
        tmp_path, monkeypatch):
    """The file's own ``fsync`` keeps its bytes, not its new name: without a flush of the
    folder after the rename, a power cut (not a kill) could leave the previous checkpoint
    or record under the name."""
    import stat

    from basisconv.records import files, write_text_atomic

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(
        (stat.S_ISDIR(os.fstat(fd).st_mode), os.path.exists(tmp_path / "run.json")))
        or real_fsync(fd))
    write_text_atomic(tmp_path / "run.json", "{}")
    # the temporary file before the rename, then the folder after it
    assert synced == [(False, False), (True, True)]


def test_an_atomic_write_where_the_folder_cannot_be_flushed_still_writes_the_file(
        tmp_path, monkeypatch):
    """Some network and FUSE mounts refuse to flush a folder (``EINVAL``): the rename has
    happened, so the write succeeds, and no descriptor is left open."""
    import errno

    from basisconv.records import files, write_text_atomic

    real_fsync = os.fsync

    def refuse_folders(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)
    monkeypatch.setattr(files.os, "fsync", refuse_folders)
    open_fds = len(os.listdir("/proc/self/fd"))
    write_text_atomic(tmp_path / "run.json", '{"a": 1}')
    assert (tmp_path / "run.json").read_text() == '{"a": 1}'
    assert len(os.listdir("/proc/self/fd")) == open_fds


def test_a_resumed_online_run_sends_every_epoch_of_its_history_wandb_lacks(tmp_path, fake_wandb):
    """A start that ran without wandb (it could not connect) leaves the online wandb run
    behind the checkpoint: resumed, the epochs it lacks, from the first after its last
    step, are sent from the record's history, and those it holds are not (found by a
    mutation test: the first missing epoch left out failed no test)."""
    from omegaconf import OmegaConf

    from basisconv.tracking import Tracker

    fake_wandb.server["abc"] = 2  # wandb holds epochs 1 and 2; the checkpoint 1 to 4
    logger_cfg = OmegaConf.create({"backend": "wandb", "mode": "online", "project": "p",
                                   "entity": None, "group": None, "tags": [],
                                   "init_timeout_s": 90.0, "finish_timeout_s": 300.0})
    history = [{"epoch": epoch, "test_accuracy": 0.1 * epoch} for epoch in range(1, 5)]
    tracker = Tracker(logger_cfg, {}, tmp_path, "run", resume={"id": "abc"}, history=history)
    run, = fake_wandb.runs
    assert run.logged == [3, 4] and run.dropped == []
    tracker.finish()


def test_a_stopped_runs_wandb_run_ends_failed_and_a_complete_ones_finished(tmp_path, repo,
                                                                          fake_wandb,
                                                                          monkeypatch):
    """A run stopped mid-way ends its wandb run with exit code 1 (failed: it lacks the later
    epochs and the final metrics, and ``source=wandb`` analysis reads only finished runs);
    the resumed run that completes it ends with 0 (found by a mutation test: a stopped run
    whose wandb calls all worked ended its wandb run as finished, and no test failed)."""

    cfg = compose_tiny(repo, "logger.mode=offline")
    fit_stopped_before(2, cfg, tmp_path)
    assert fit(cfg, tmp_path)["status"] == "complete"
    stopped, completed = fake_wandb.runs
    assert stopped.finished == [1] and completed.finished == [0]


@pytest.mark.parametrize("when", ["as its history is sent again", "as its summary is sent"])
def test_a_stop_while_wandb_is_sent_the_start_still_ends_its_wandb_run(tmp_path, repo,
                                                                     fake_wandb, when):
    """Found in review: a stop (Ctrl-C, SIGTERM) while a start sent wandb the earlier epochs
    of a resumed offline run, or the model's summary before the first epoch, left the wandb
    run open: it was not in the ``finally`` that ends it, and lingered past the run (in a
    notebook, or the next job of a multirun, which wandb then ended as finished); and a
    stop while the summary was sent raised an AttributeError in place of the stop's line."""
    from basisconv.errors import Stopped

    cfg = compose_tiny(repo, "logger.mode=offline")
    if when == "as its history is sent again":
        fit_stopped_before(2, cfg, tmp_path)  # (its own wandb run: ended, failed)
        sending = "log"
    else:
        sending = "summary"

    class Stop(FakeRun):
        def log(self, metrics, step, commit=None):
            if sending == "log":
                raise KeyboardInterrupt
            super().log(metrics, step, commit)

    class StoppingSummary(dict):
        def update(self, values):
            if not self:  # the first update, once
                self["stopped"] = True
                raise KeyboardInterrupt
            super().update(values)

    def run(wandb, kwargs):
        made = Stop(wandb, kwargs)
        if sending == "summary":
            made.summary = StoppingSummary()
        return made

    fake_wandb.Run = run
    with pytest.raises(Stopped) as err:  # said in one line (not an AttributeError)
        fit(cfg, tmp_path)
    # before this start's first epoch, as a stop in wandb.init is (found in a later review:
    # one as the summary was sent said "stopped during epoch 1 ..., before its first
    # checkpoint", with no epoch begun)
    if when == "as its summary is sent":
        assert str(err.value).startswith(f"the run in {tmp_path} stopped before its first "
                                         f"epoch (")
    else:
        assert str(err.value).startswith(f"the run in {tmp_path} stopped while resuming, "
                                         f"before epoch 2; its checkpoint of epoch 1 is kept")
    assert fake_wandb.runs[-1].finished == [1]  # ended, and marked failed


@pytest.mark.parametrize("stop, opened", [(KeyboardInterrupt, False), ("sigterm", True)],
                         ids=["ctrl-c before wandb opened its run", "sigterm after"])
def test_a_stop_inside_wandb_init_is_said_as_any_stop_and_ends_the_run_it_opened(
        tmp_path, repo, fake_wandb, stop, opened):
    """Found in review: a stop (Ctrl-C, SIGTERM) late in ``wandb.init``, once wandb had made
    its new run the current one (``wandb.run``) but before init returned it, left that run
    open: the tracker never held it to end it, and the next ``wandb.init`` in the process (a
    notebook's next run, with reinit="finish_previous") ended it as finished. Either stop is
    said in one line, as any stop before the first epoch, with its signal (exit 130, 143)."""
    from basisconv.errors import Stopped

    cfg = compose_tiny(repo, "logger.mode=offline")

    def init(**kwargs):
        if opened:  # as wandb's init stopped after it set its global run
            fake_wandb.run = FakeRun(fake_wandb, kwargs)
            fake_wandb.runs.append(fake_wandb.run)
        raise Stopped(signal.SIGTERM) if stop == "sigterm" else stop()

    fake_wandb.init = init
    with pytest.raises(Stopped) as err:
        fit(cfg, tmp_path)
    assert err.value.signum == (signal.SIGTERM if stop == "sigterm" else signal.SIGINT)
    assert str(err.value).startswith(f"the run in {tmp_path} stopped before its first epoch")
    assert [run.finished for run in fake_wandb.runs] == ([[1]] if opened else [])
    assert not (tmp_path / "run.json").exists()  # no record claims a start it did not make


def test_a_resume_from_a_record_older_than_a_set_up_field_compares_what_it_can(caplog):
    """A record from before a field was kept: no thread count is no change to warn of
    ("torch threads None -> 2"), and no process count is the one process it then meant,
    so a resume under torchrun is still said."""
    from basisconv.resume_point import keep_earlier_provenance

    saved = {"git": {"commit": "abc"}, "hardware": {"cpu": "X"}}
    with caplog.at_level("WARNING"):
        keep_earlier_provenance({"git": {"commit": "abc"},
                                 "hardware": {"cpu": "X", "torch_threads": 2}}, saved, 1)
    assert "another commit or set-up" not in caplog.text
    with caplog.at_level("WARNING"):
        keep_earlier_provenance({"git": {"commit": "abc"},
                                 "hardware": {"cpu": "X", "processes": 2}}, saved, 1)
    assert "processes 1 -> 2" in caplog.text


def test_epochs_an_online_run_holds_are_said_held_once_however_many_are_trained_again(
        tmp_path, fake_wandb, caplog):
    """Found by a mutation test (the said-once flag dropped failed no test: the test
    above trains one held epoch again): a resume that trains several epochs wandb already
    holds says so in one line, not once per epoch, and sends none of them."""
    import logging

    from omegaconf import OmegaConf

    from basisconv.tracking import Tracker

    fake_wandb.server["abc"] = 3  # wandb holds epochs 1 to 3; the checkpoint only epoch 1
    logger_cfg = OmegaConf.create({"backend": "wandb", "mode": "online", "project": "p",
                                   "entity": None, "group": None, "tags": [],
                                   "init_timeout_s": 90.0, "finish_timeout_s": 300.0})
    tracker = Tracker(logger_cfg, {}, tmp_path, "run", resume={"id": "abc"})
    with caplog.at_level(logging.INFO, logger="basisconv.tracking"):
        for epoch in (2, 3, 4):
            tracker.log({"test_accuracy": 0.5}, step=epoch)
    run, = fake_wandb.runs
    assert run.logged == [4] and run.dropped == []
    held = [r.getMessage() for r in caplog.records if "already holds" in r.getMessage()]
    assert held == ["wandb already holds epochs up to 3 of this run, logged before it "
                    "stopped, and keeps them; epochs 2-3 as trained again are in run.json"]
    tracker.finish()


def test_a_wandb_run_already_open_is_not_asked_for_a_login(fake_wandb):
    """Found by a mutation test (the open-run case dropped failed no test): with a wandb run
    already open in the process (a notebook's), wandb is not asked whether it has
    credentials (``wandb.login(prompt=False)`` may say no for one it holds): init decides."""
    from basisconv.tracking import _logged_in

    fake_wandb.login = lambda prompt=True, verify=True: False  # (a wandb that asks so)
    assert not _logged_in(fake_wandb)
    fake_wandb.run = object()
    assert _logged_in(fake_wandb)
