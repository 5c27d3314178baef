"""Where a start of a training run in its folder begins, and what it keeps of the starts
before it: the checkpoint to resume from (``trainer.resume``), or the record of a run
already complete, which is not trained again (its ``run.json`` rewritten from its
checkpoint where the two differ); the files a run killed while writing left half
written; and, for a resumed run, where its earlier epochs ran (``provenance.earlier``).

:mod:`basisconv.train` calls these as a run starts (:mod:`basisconv.training`, the
earlier starts' provenance as it restores the run); the rule of which checkpoint a config
may resume is :func:`~basisconv.same_run.check_same_run`'s, and how a message tells the
user to go on is :mod:`basisconv.resuming`'s.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .checkpoint import CHECKPOINT, load_checkpoint
from .errors import ConfigError
from .records import (RECORD, TF32_FLAGS, RunRecord, commit_name, hardware_name, json_text,
                      leftover_temporaries, missing_fields, read_record, timing_hardware,
                      write_record)
from .same_run import check_same_run, recorded_root

log = logging.getLogger(__name__)


def resume_point(cfg: DictConfig, config: dict, output_dir: Path, *, holds_lock: bool = True
                 ) -> tuple[dict | None, dict[str, Any] | None]:
    """Where this start of the run in ``output_dir`` begins, as ``(checkpoint, record)``:
    the checkpoint to resume from (``trainer.resume``; another config's is refused), and
    the record of a run already complete, by its checkpoint or by its ``run.json`` alone,
    which is not trained again; ``(None, None)`` for a fresh start.

    ``holds_lock``: this process holds the folder's lock (under ``torchrun`` rank 0 alone),
    so it repairs a complete run's record; another rank reads the same files, so it finds
    the same start (all ranks skip training, or all train), and writes nothing."""
    checkpoint = record = None
    if cfg.trainer.resume and (output_dir / CHECKPOINT).exists():
        checkpoint = load_checkpoint(output_dir / CHECKPOINT, resuming=True,
                                     finished=says_complete(output_dir / RECORD))
        check_same_run(checkpoint["config"], config, output_dir / CHECKPOINT,
                       saved_root=recorded_root(checkpoint["record"]))
        if checkpoint["record"]["status"] == "complete":
            log.info("run in %s is already complete; not training again", output_dir)
            if holds_lock:
                repair_record(output_dir, checkpoint["record"])
            record = checkpoint["record"]
    elif cfg.trainer.resume:
        record = finished_record(output_dir, config)
    return checkpoint, record


def finished_record(output_dir: Path, config: dict) -> dict[str, Any] | None:
    """The complete record of a run in ``output_dir`` that kept no checkpoint
    (``trainer.checkpoint=false``, or one deleted to save disk), if there is one: such a
    run is finished too, and training it again would overwrite its result with the first
    new epoch. A record of another config is refused as a checkpoint of one is."""
    path = output_dir / RECORD
    try:
        saved = read_record(path)
    except FileNotFoundError:  # none: a fresh start
        return None
    except (OSError, ValueError) as err:  # unreadable: nothing finished to keep, but the
        # file the new run replaces is said (a complete one cut off by a copy is lost)
        log.warning("%s could not be read (%s) and there is no %s to rebuild it from: "
                    "training the run again", path, type(err).__name__, CHECKPOINT)
        return None
    if saved.get("status") != "complete":
        return None
    # a record that says complete but lacks what a finished run's holds (damaged, hand-
    # edited: {"status": "complete"} alone) was taken as finished, or ended in a trace
    # from check_same_run (a config that is no object); there is no checkpoint to rebuild
    # it from, and training again would overwrite it: the user decides
    lacking = missing_fields(saved)
    if lacking:
        raise ConfigError(f"{path} says the run is complete but is damaged (it lacks "
                          f"{', '.join(lacking[:5])}{', ...' if len(lacking) > 5 else ''}) "
                          f"and there is no {CHECKPOINT} to rebuild it from; delete it to "
                          f"train the run again, or use a new output directory")
    check_same_run(saved["config"], config, path, saved_root=recorded_root(saved))
    log.info("run in %s is already complete (its run.json; no checkpoint); not training "
             "again", output_dir)
    return saved


def says_complete(path: Path) -> bool:
    """Whether the run record at ``path`` is there, readable and complete."""
    try:
        return read_record(path).get("status") == "complete"
    except (OSError, ValueError):  # (read_record's two: a JSON list too is a ValueError)
        return False


def remove_leftovers(output_dir: Path) -> None:
    """Delete what earlier runs in this folder, killed while writing their checkpoint or
    record, left half written (the lock is held, so no writer is in flight): a preempted
    job killed many times would otherwise pile up checkpoint-sized files."""
    for path in (output_dir / CHECKPOINT, output_dir / RECORD):
        for leftover in leftover_temporaries(path):
            leftover.unlink(missing_ok=True)
            log.info("removed %s, left half written by a run killed while writing it", leftover)


def keep_earlier_provenance(provenance: dict, saved: dict, done: int, *,
                            device: str | None = None, amp: str = "none") -> None:
    """A resumed run's provenance is where its later epochs ran; where the earlier ones ran
    (start date, commit, machine) is kept under ``earlier``, one entry per earlier start, and
    a resume on another commit, machine, number of torchrun processes or TF32 flags (where
    they change what runs on ``device`` at ``amp``: :func:`.records.timing_hardware`) is a
    warning: the record's epoch times and the timing tables then mix two set-ups."""
    provenance["earlier"] = [*saved.get("earlier", []),
                             {k: v for k, v in saved.items() if k != "earlier"}]
    then_git, now_git = saved.get("git") or {}, provenance["git"]
    # (uncommitted changes count: a resume on the same commit after editing the code ran
    # other code, unsaid; compared by their hash where both starts recorded one)
    both_hashed = bool(then_git.get("diff_sha256") and now_git.get("diff_sha256"))
    changes = [f"{what} {then} -> {now}" for what, then, now in (
        ("commit", code_name(then_git, both_hashed), code_name(now_git, both_hashed)),
        ("hardware", hardware_name(saved.get("hardware", {})),
         hardware_name(provenance["hardware"])),
        ("processes", saved.get("hardware", {}).get("processes", 1),
         provenance["hardware"].get("processes", 1)),
        # (a resume at another thread count, e.g. reproduce.sh continued with another JOBS,
        # is said as well: on a CPU it changes results too, to rounding)
        ("torch threads", saved.get("hardware", {}).get("torch_threads"),
         provenance["hardware"].get("torch_threads")),
        # ("" where they change nothing that runs, or a start did not keep them: skipped)
        ("TF32 flags", tf32_said(saved.get("hardware", {}), device, amp),
         tf32_said(provenance["hardware"], device, amp))) if then and now != then]
    if changes:
        threads = any(change.startswith("torch threads") for change in changes)
        log.warning("resuming after epoch %d on another commit or set-up than the run "
                    "started on (%s); its record keeps both (provenance.earlier), but its "
                    "epoch times mix them%s: for timing results start over "
                    "(trainer.resume=false)", done, "; ".join(changes),
                    ", and on a CPU another thread count changes the results to rounding"
                    if threads else "")


def tf32_said(hardware: dict, device: str | None, amp: str) -> str:
    """A start's TF32 flags as a resume's warning names them (``cudnn_allow_tf32=True,
    ...``), "" where they change nothing that runs or the start did not keep them."""
    fields = timing_hardware(hardware, device, amp)
    return ", ".join(f"{k}={fields[k]}" for k in TF32_FLAGS if k in fields)


def code_name(git: dict, hashed: bool) -> str:
    """The code a start ran, as a resume's warning names it: its commit, ``-dirty`` after it
    for uncommitted changes, and with ``hashed`` their hash (``abc1234-dirty (9f3e0c1a)``)."""
    name = commit_name(git)
    return f"{name} ({git['diff_sha256'][:8]})" if name and hashed else name


def repair_record(output_dir: Path, saved: dict[str, Any]) -> None:
    """A complete run's ``run.json`` must say what its checkpoint says: one that is missing,
    unreadable or different (lost, damaged, or half-copied) is rewritten from the record
    the checkpoint holds, so the run does not silently drop out of the tables."""
    path = output_dir / RECORD
    try:
        expected = json.loads(json_text(RunRecord.from_dict(saved).as_dict()))
        if read_record(path) == expected:
            return
        problem = "differs from the checkpoint's"
    except (OSError, ValueError) as err:
        problem = f"is missing or unreadable ({type(err).__name__})"
    write_record(output_dir, RunRecord.from_dict(saved))
    log.warning("%s %s; rewrote it from the complete run's checkpoint", path, problem)
