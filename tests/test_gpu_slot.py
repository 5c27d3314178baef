"""``scripts/gpu_slot.sh``, a GPU slot's call as one command, on the CPU: stand-ins for
the GPU machine's ``python3`` (hydra, pip, ``gpu_check.py``) and for ``gpu_speed.sh`` show
what it installs, what it runs under which budget, and what the call gets back in ``$OUT``
while the command runs, after it, and when the call is killed mid-archive."""

import os
import re
import shutil
import signal
import subprocess
import tarfile
import time

import pytest
from test_environment import FAKE_GPU_PY, GPU_SPEED_STEPS

#: ``gpu_speed.sh`` as the slot sees it: what it was given, a record, then (with RELEASE
#: named) a wait until the test creates that file; it exits INNER_STATUS.
STAND_IN_SPEED = """#!/usr/bin/env bash
echo "mode=$* BUDGET=${BUDGET:-} PY=$PY PYTHONPATH=$PYTHONPATH WANDB_MODE=$WANDB_MODE" \\
  > "$OUT_DIR/given.txt"
echo "first step done"
if [ -n "${RELEASE:-}" ]; then until [ -e "$RELEASE" ]; do sleep 0.1; done; fi
echo "last step done"
exit "${INNER_STATUS:-0}"
"""

#: The GPU machine's python3 as the slot sees it: hydra imports when HYDRA is set or once
#: pip has put it into the site folder (PYTHONPATH's first entry); pip fails when PIP_FAILS
#: says so; gpu_check.py does what the stand-in gpu_speed.sh does, into its --out-dir.
STAND_IN_PYTHON = """#!/usr/bin/env bash
if [ "$*" = "-c import hydra" ]; then
  [ -n "${{HYDRA:-}}" ] || [ -d "${{PYTHONPATH%%:*}}/hydra" ]; exit
fi
if [ "$1 $2" = "-m pip" ]; then
  echo "$*" >> {pip}
  if [ -n "${{PIP_FAILS:-}}" ]; then echo "ERROR: $PIP_FAILS" >&2; exit 1; fi
  while [ "$1" != --target ]; do shift; done
  mkdir -p "$2/hydra"; exit 0
fi
if [ "$1" = scripts/gpu_check.py ]; then
  shift
  echo "check $*" >> {checks}
  for ((i = 1; i < $#; i++)); do j=$((i + 1)); [ "${{!i}}" = --out-dir ] && OUT_DIR=${{!j}}; done
  OUT_DIR=$OUT_DIR BUDGET= exec bash scripts/gpu_speed.sh "$@"
fi
exit 3
"""


def stand_in_slot(repo, tmp_path, *args, wheels=True, python_text=None, speed=STAND_IN_SPEED,
                  **env):
    """``scripts/gpu_slot.sh args`` copied into ``tmp_path`` (its ``wheels/`` and
    ``gpu_speed.sh``, ``speed``, there), with a stand-in python (``python_text``, by default
    STAND_IN_PYTHON); returns the process, started, in a session of its own (the tests stop
    what is left of it)."""
    scripts = tmp_path / "scripts"
    scripts.mkdir(parents=True)
    shutil.copy(repo / "scripts" / "gpu_slot.sh", scripts / "gpu_slot.sh")
    (scripts / "gpu_speed.sh").write_text(speed)
    if wheels:
        (tmp_path / "wheels").mkdir()
        (tmp_path / "wheels" / "hydra_core-1.3.2-py3-none-any.whl").write_text("")
    python = tmp_path / "python"
    python.write_text(python_text or STAND_IN_PYTHON.format(pip=tmp_path / "pip.txt",
                                                            checks=tmp_path / "checks.txt"))
    python.chmod(0o755)
    defaults = {"PY": str(python), "OUT": str(tmp_path / "out"), "SITE": str(tmp_path / "site"),
                "SLOT_DIR": str(tmp_path / "slot"), "TAR_EVERY": "1"}
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("OUT", "WANDB_MODE", "PYTHONPATH")}
    environment.update({**defaults, **env})
    environment = {key: value for key, value in environment.items() if value is not None}
    return subprocess.Popen(["bash", str(scripts / "gpu_slot.sh"), *args], env=environment,
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


@pytest.fixture
def stopped():
    """Started slots, their whole session stopped after the test (a stand-in left waiting)."""
    started = []
    yield started
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.communicate()


def archived(path) -> dict[str, str]:
    """The text files of a slot's archive, by their path inside it."""
    with tarfile.open(path) as archive:
        return {member.name: archive.extractfile(member).read().decode()
                for member in archive.getmembers() if member.isfile()}


def wait_for(condition, what):
    """Waits for ``condition()`` up to 60 s (a deadline for a stuck script, not a timing)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within 60 s"
        time.sleep(0.1)


def test_the_slots_help_is_its_header_and_needs_no_out(repo, tmp_path):
    result = subprocess.run(["bash", str(repo / "scripts" / "gpu_slot.sh"), "--help"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "OUT"})
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("A GPU slot's call as one command")
    assert all(word in result.stdout for word in ("SLOT_S", "MARGIN_S", "SITE", "TAR_EVERY"))
    assert not any(line.startswith(("#", "set -")) for line in lines)


@pytest.mark.parametrize("args, refusal", [
    (["kernels"], "gpu-slot: OUT is not set: name the folder whose files the call returns "
                  "(a device call sets it)"),
    (["kernel"], "gpu-slot: give quick, full, kernels (gpu_speed.sh's modes) or check, not "
                 "'kernel' (--help: what it runs)"),
    (["check", "--budget-s", "100"], "gpu-slot: check sets --budget-s, --out-dir and "
     "--work-dir itself (from SLOT_S and SLOT_DIR); leave out --budget-s"),
], ids=["no-out", "unknown-mode", "own-budget"])
def test_a_slot_it_cannot_run_is_refused_in_one_line_before_anything_runs(
        repo, tmp_path, stopped, args, refusal):
    slot = stand_in_slot(repo, tmp_path, *args, HYDRA="1", OUT=None)
    stopped.append(slot)
    out, err = slot.communicate(timeout=60)
    assert (slot.returncode, out, err.splitlines()) == (2, "", [refusal])
    assert not (tmp_path / "slot").exists() and not (tmp_path / "pip.txt").exists()


def test_without_hydra_the_slot_installs_the_carried_wheels_or_says_to_carry_them(
        repo, tmp_path, stopped):
    bare = tmp_path / "bare"
    bare.mkdir()
    slot = stand_in_slot(repo, bare, "kernels", wheels=False)
    stopped.append(slot)
    out, err = slot.communicate(timeout=60)
    assert (slot.returncode, err.splitlines()) == (2, [
        f"gpu-slot: hydra does not import under {bare / 'python'} and wheels/ holds no wheels: "
        "run make gpu-wheels where there is network, and carry wheels/ (git ignores it)"])
    assert not (bare / "slot" / "speed-kernels" / "given.txt").exists()

    broken = tmp_path / "broken"
    broken.mkdir()
    slot = stand_in_slot(repo, broken, "kernels", PIP_FAILS="bad wheel")
    stopped.append(slot)
    out, err = slot.communicate(timeout=60)
    assert (slot.returncode, err.splitlines()) == (2, [
        f"gpu-slot: installing wheels/ into {broken / 'site'} left hydra not importable under "
        f"{broken / 'python'} (ERROR: bad wheel); remake them with make gpu-wheels and carry "
        "wheels/"])
    assert not (broken / "slot" / "speed-kernels" / "given.txt").exists()

    carried = tmp_path / "carried"
    carried.mkdir()
    slot = stand_in_slot(repo, carried, "kernels")
    stopped.append(slot)
    out, err = slot.communicate(timeout=60)
    assert slot.returncode == 0, out + err
    site = carried / "site"
    assert (carried / "pip.txt").read_text().split() == [
        "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(site),
        "wheels/hydra_core-1.3.2-py3-none-any.whl"]
    given = (carried / "slot" / "speed-kernels" / "given.txt").read_text()
    # absolute: the tests start runs in folders of their own (docs/gpu.md, step 1)
    assert f" PYTHONPATH={site}:{carried / 'src'} WANDB_MODE=disabled" in given
    again = stand_in_slot(repo, carried / "again", "kernels", SITE=str(site))
    stopped.append(again)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0 and not (carried / "again" / "pip.txt").exists(), out + err


@pytest.mark.parametrize("mode", ["kernels", "check"])
def test_the_command_runs_under_the_slots_limit_less_its_margin_and_time_spent(
        repo, tmp_path, stopped, mode):
    args = ["check", "--parts", "tests"] if mode == "check" else [mode]
    slot = stand_in_slot(repo, tmp_path, *args, SLOT_S="0200", MARGIN_S="50")
    stopped.append(slot)
    out, err = slot.communicate(timeout=60)
    assert slot.returncode == 0, out + err
    said = re.search(r"under a (\d+) s budget \(SLOT_S 200 less MARGIN_S 50 less (\d+) s "
                     r"spent\)", out)
    budget = 200 - 50 - int(said[2])  # spent: the install's, here about none
    assert int(said[1]) == budget
    name = "check" if mode == "check" else "speed-kernels"
    folder = tmp_path / "slot" / name
    if mode == "check":
        assert (tmp_path / "checks.txt").read_text().split() == [
            "check", "--parts", "tests", "--budget-s", str(budget), "--out-dir", str(folder),
            "--work-dir", str(folder / "work")]
    else:
        assert (folder / "given.txt").read_text().startswith(f"mode=kernels BUDGET={budget} ")


def test_the_archive_holds_the_commands_output_while_it_runs_and_after(repo, tmp_path, stopped):
    release = tmp_path / "release"
    slot = stand_in_slot(repo, tmp_path, "kernels", RELEASE=str(release), INNER_STATUS="3",
                         HYDRA="1")
    stopped.append(slot)
    archive = tmp_path / "out" / "speed-kernels.tgz"

    def running_archived():
        files = archive.exists() and archived(archive)
        return bool(files) and "speed-kernels/given.txt" in files and (
            files["speed-kernels.log"] == "first step done\n")

    wait_for(running_archived, "archive of the running command")
    assert slot.poll() is None
    release.touch()
    out, err = slot.communicate(timeout=60)
    assert slot.returncode == 3, out + err  # the command's status
    files = archived(archive)
    assert files["speed-kernels.log"] == "first step done\nlast step done\n"
    assert files["speed-kernels/given.txt"].startswith("mode=kernels ")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["speed-kernels.tgz"]
    lines = out.splitlines()
    assert lines[-3:-1] == ["first step done", "last step done"]  # the log's tail
    assert re.fullmatch(rf"gpu-slot: speed-kernels exited 3 after \d+ s; its folder and log "
                        rf"are in {re.escape(str(archive))}", lines[-1])


def test_a_call_killed_mid_archive_keeps_the_previous_archive(repo, tmp_path, stopped):
    """The device machine kills a call at its limit, maybe while the slot is archiving: a
    stand-in tar writes the first archive, then half of the second, and kills the slot
    there. What the call returns is the first archive, whole."""
    tar = tmp_path / "bin" / "tar"
    tar.parent.mkdir()
    count = tmp_path / "tars"
    tar.write_text(f"#!/usr/bin/env bash\nn=$(( $(cat {count} 2>/dev/null || echo 0) + 1 ))\n"
                   f"echo $n > {count}\n"
                   # the first archive once the command has said something
                   f"log={tmp_path / 'slot' / 'speed-kernels.log'}\n"
                   "until grep -q first \"$log\" 2>/dev/null; do sleep 0.1; done\n"
                   f"if [ $n -eq 1 ]; then exec {shutil.which('tar')} \"$@\"; fi\n"
                   "echo half > \"$2\"  # czf <file> ...\nkill -KILL $PPID\n")
    tar.chmod(0o755)
    slot = stand_in_slot(repo, tmp_path, "kernels", RELEASE=str(tmp_path / "release"),
                         HYDRA="1", PATH=f"{tar.parent}{os.pathsep}{os.environ['PATH']}")
    stopped.append(slot)
    out, err = slot.communicate(timeout=60)
    assert slot.returncode == -signal.SIGKILL and count.read_text() == "2\n", out + err
    files = archived(tmp_path / "out" / "speed-kernels.tgz")
    assert files["speed-kernels.log"] == "first step done\n"
    assert files["speed-kernels/given.txt"].startswith("mode=kernels ")


def test_a_speed_slot_archives_what_gpu_speed_sh_itself_makes(repo, tmp_path, stopped):
    """The slot with the real ``gpu_speed.sh`` (and test_environment's stand-in python: CUDA
    there, each step a ``sleep 0``): it takes the slot's budget and folder, and its records,
    step logs and closing line come back in the archive."""
    python_text = FAKE_GPU_PY.format(probe="echo h200; exit 0", calls=tmp_path / "calls.txt")
    slot = stand_in_slot(repo, tmp_path, "quick", python_text=python_text,
                         speed=(repo / "scripts" / "gpu_speed.sh").read_text())
    stopped.append(slot)
    out, err = slot.communicate(timeout=120)
    assert slot.returncode == 0, out + err
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls[0].endswith(" -c import hydra")  # the stand-in imports everything
    assert sum("scripts/benchmark_" in call for call in calls) == GPU_SPEED_STEPS
    files = archived(tmp_path / "out" / "speed-quick.tgz")
    steps = [name for name in files if name.startswith("speed-quick/logs/")]
    assert len(steps) == GPU_SPEED_STEPS
    closing = f"gpu-speed: every step done; files in {tmp_path / 'slot' / 'speed-quick'}"
    assert files["speed-quick.log"].splitlines()[-1] == closing  # the slot's folder
    assert out.splitlines()[-2] == closing  # the log's tail, before the slot's own line


def test_a_slot_stopped_with_sigterm_stops_its_command_and_archives_once_more(
        repo, tmp_path, stopped):
    """A call ended with SIGTERM (before a kill): the command is passed the signal (both
    scripts stop their running step on it), and what it left is archived."""
    slot = stand_in_slot(repo, tmp_path, "kernels", RELEASE=str(tmp_path / "release"),
                         HYDRA="1", TAR_EVERY="600")
    stopped.append(slot)
    log = tmp_path / "slot" / "speed-kernels.log"
    wait_for(lambda: log.exists() and log.read_text() == "first step done\n", "first step")
    slot.send_signal(signal.SIGTERM)  # the slot alone, not its session
    out, err = slot.communicate(timeout=60)
    assert slot.returncode == 128 + signal.SIGTERM, out + err  # the command's status
    files = archived(tmp_path / "out" / "speed-kernels.tgz")  # none before: TAR_EVERY=600
    assert files["speed-kernels.log"] == "first step done\n"
