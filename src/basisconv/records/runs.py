"""The run record: one type for every producer (training run, sensitivity estimate,
exhaustive search, benchmark), its one writer and readers, and publishing a finished
record where a protocol collects them. What the analysis needs of each kind, and its
checks, are in :mod:`.schema`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, DatasetError, PublishError, one_line
from .files import restore_hint, write_json_atomic
from .origin import provenance


RECORD = "run.json"
#: What produced a record (a GPU machine check: scripts/gpu_check.py), as a refusal
#: names it.
KIND_WORDS = {"training": "a training run", "sensitivity": "a sensitivity estimate",
              "exhaustive_search": "an exhaustive search", "benchmark": "a benchmark",
              "gpu_check": "a GPU machine check"}
KINDS = tuple(KIND_WORDS)
#: The status of a training run whose loss became NaN or infinite: its record keeps the
#: epochs before the diverged one and, in ``diverged``, what diverged at which learning
#: rate, so that the analysis names it (a divergence in the first epoch left no record,
#: and a sweep's diverged job vanished from the tables without a word).
DIVERGED_STATUS = "diverged"


def precision_name(amp: str) -> str:
    """``trainer.amp`` as records and file names show it: ``fp32``, ``bf16``, ``fp16`` (here,
    beside the records, so that reading them back loads no torch)."""
    return "fp32" if amp == "none" else amp


def amp_of_precision(precision: str | None) -> str | None:
    """:func:`precision_name`'s inverse: the ``trainer.amp`` a record's ``precision`` says."""
    return "none" if precision == "fp32" else precision


@dataclass
class RunRecord:
    """The record of one producer's run: what it was (``kind``, the resolved ``config``),
    where it came from (``provenance``), whether it finished (``status``: ``running``,
    also once stopped, ``complete``, or :data:`DIVERGED_STATUS`), and what it found
    (``results``: kind-specific fields, written at the top level beside the others, e.g. a
    training run's ``model``, ``epochs`` and ``final``)."""

    kind: str
    config: dict
    provenance: dict = field(default_factory=provenance)
    status: str = "running"
    results: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"record kind {self.kind!r}; one of {', '.join(KINDS)}")

    def as_dict(self) -> dict[str, Any]:
        """The record as its file holds it: ``results`` at the top level, beside ``kind``,
        ``status``, ``config`` and ``provenance`` (where the analysis reads them)."""
        return {"kind": self.kind, "status": self.status, "config": self.config,
                "provenance": self.provenance, **self.results}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        """Read a record back; one written before records had a ``kind`` (before commit
        ``04946d5``) is a training run, the only producer that wrote none."""
        rest = {k: v for k, v in data.items()
                if k not in ("kind", "status", "config", "provenance")}
        return cls(data.get("kind") or "training", data.get("config") or {},
                   data.get("provenance") or {}, data.get("status", "running"), rest)


def write_record(path: str | os.PathLike, record: RunRecord) -> Path:
    """The one writer of records: ``path`` is a run folder (the record goes to its
    ``run.json``) or a ``.json`` file (a benchmark's sidecar); written atomically. A folder
    is a folder whatever its name: one named ``*.json`` (``hydra.run.dir=outputs/v2.json``,
    a sweep job's folder named by its overrides) had the record written over it, and the
    run stopped after its first epoch, unable to save, each time it was started."""
    path = Path(path)
    if path.suffix != ".json" or path.is_dir():
        path = path / RECORD
    return write_json_atomic(path, record.as_dict())


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """A record as a plain dict with its ``kind`` always set (see ``RunRecord.from_dict``);
    ``OSError`` or ``ValueError`` when the file cannot be read or parsed."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return RunRecord.from_dict(data).as_dict()


def read_benchmark_record(path: str | os.PathLike) -> dict[str, Any]:
    """A benchmark's record read back (by the speed report, by ``benchmark_layers.py
    --redraw``); one that cannot be read (cut off, not a JSON object) is a
    :class:`DatasetError` in one line naming the file and what to do."""
    try:
        return read_record(path)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path} is not a readable benchmark record ({one_line(err)}); "
                           f"{restore_hint(path)}, or measure it again or move it out of the "
                           f"folder") from None


def recorded_table(record: dict[str, Any], path: Path) -> Path:
    """The table (CSV) that the benchmark record read from ``path`` names, beside it. A
    JSON file of another kind under a record's name names none (no ``file``, or one that is
    no name): a :class:`DatasetError` saying so, for the speed report and ``--redraw``
    alike (read as a record whose table "None" was missing, it was told to copy that table
    over or measure it again)."""
    if not isinstance(record.get("file"), str):
        raise DatasetError(f"{path} names no table (no 'file'): it is no record of "
                           f"scripts/benchmark_layers.py; move it out of the folder")
    return path.parent / record["file"]


def is_recorded_table(record: dict[str, Any], table: bytes) -> bool:
    """Whether ``table`` (a benchmark's CSV, its bytes) is the one ``record`` was written
    with: the record's ``file_sha256`` ties the two, as a run stopped between writing them
    (or one file replaced) leaves a table beside another's record. Records from before
    they named the sha256 match any table (they are read as they are)."""
    return record.get("file_sha256") in (None, hashlib.sha256(table).hexdigest())


def refuse_other_kind(folder: str | os.PathLike, kind: str, what: str) -> None:
    """A :class:`ConfigError` when ``folder``'s record (``run.json``) is
    another producer's than ``kind``, which ``what`` (this run, e.g. "the sensitivity
    estimate") would overwrite: ``scripts/sensitivity.py hydra.run.dir=<a training run's
    folder>`` replaced that run's record, the one the analysis reads, silently. An
    unreadable or missing record is left to the run (it writes its own)."""
    try:
        found = read_record(Path(folder) / RECORD)["kind"]
    except (OSError, ValueError):
        return
    if found != kind:
        raise ConfigError(f"{folder} holds the record ({RECORD}) of "
                          f"{KIND_WORDS.get(found, found)}, which {what} would overwrite; give "
                          f"it a folder of its own (hydra.run.dir=..., or none for the default)")


def unwritable_folder(folder: str) -> str | None:
    """Why files cannot be written in ``folder`` (made when missing), or ``None`` when they
    can: its nearest existing ancestor is a file, or not writable. Nothing is created: the
    system's answer (``os.access``) already refuses a read-only file system, for root too,
    and a write tried here (an empty file, made and removed) would pass a full disk as
    this does; that is said by the write itself (:class:`~basisconv.errors.WriteError`).
    A relative ``folder`` is taken from the working folder (walked up as given, a first
    part that does not exist led to ``""``, which never exists: it never returned)."""
    folder = os.path.abspath(folder)
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable"
    return None


def publish(record: dict[str, Any], path: str | os.PathLike | None,
            kept_in: str | os.PathLike) -> dict[str, Any]:
    """Also write a *complete* record to ``path`` (a ``.json`` file; nothing when ``None``)
    and return it. ``scripts/reproduce.sh`` publishes every finished run into the tracked
    ``results/<profile>/runs/``, so records accumulate across machines: the tables are
    built from them anywhere, and a protocol cut off on one machine goes on on the next
    without redoing what is there. Checkpoints are never published.

    ``kept_in`` is the run folder that already holds the record: a write that fails at the
    end of a long run (a full disk, a folder removed meanwhile; the folder was checked
    writable at the start) says where the result is, in one line, not with a trace."""
    if path is not None and record.get("status") == "complete":
        try:
            write_record(Path(path), RunRecord.from_dict(record))
        except OSError as err:
            kept = Path(kept_in) / RECORD
            raise PublishError(f"the run finished, but its record could not be published to "
                               f"{path} ({err.strerror or err}); it is kept in {kept}: once "
                               f"that is fixed, copy it to {path}") from err
    return record


