"""Per-epoch checkpoints, written atomically with their ``.sha256`` and loaded verified
against it (one without it, against its zip archive's CRC-32s), and a trained dense run's
checkpoint loaded as the weights a conversion starts from. Whether a checkpoint's config
is the same run is :mod:`basisconv.same_run`'s rule; why a file will not load,
:mod:`basisconv.unreadable_checkpoint`'s words.

A checkpoint holds everything the next epoch depends on (model, optimizer, schedule, the
batch generator's state, the history so far), so a run resumed from it ends with the
same final metrics as one that was never interrupted (on CPU with deterministic
settings; on GPU up to kernel nondeterminism).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import ConfigError
from .records import file_digest, write_atomic, write_text_atomic
from .signals import stops_held
from .unreadable_checkpoint import unreadable_reason

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
#: What a run's checkpoint holds (``run_saves.RunSaves.save``), all of which resuming reads.
RUN_STATE = ("config", "record", "model", "optimizer", "scheduler", "batches")
#: What newer runs save besides: a checkpoint from before them resumes without it.
LATER_STATE = ("scaler",)


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` atomically: a kill mid-write leaves the previous checkpoint intact.

    Its sha256 goes to ``<name>.sha256`` beside it, written (atomically) after the new
    file is on disk and before it replaces the old one; the sidecar also keeps the older
    files' sums, so a kill between the two renames leaves a pair that still verifies."""
    path = Path(path)

    def record_sum(tmp: Path) -> None:
        # the new sum, then the older ones (a kill in this window, twice in a row, still
        # leaves a checkpoint whose sum is listed)
        try:
            older = stored_sums(path)[:2]
        except ValueError:  # a damaged sidecar: the new one replaces it
            older = []
        sums = [file_digest(tmp), *older]
        write_text_atomic(checksum_path(path), "\n".join(sums) + "\n")

    def save(f) -> None:
        try:
            torch.save(state, f)
        except RuntimeError as err:  # torch's zip writer reports a refused write (a full
            if isinstance(err.__context__, OSError):  # disk, a file-size limit) as this,
                raise err.__context__ from None  # the OSError as its context
            raise

    with stops_held():  # a stop raised inside torch.save became torch's RuntimeError
        write_atomic(path, save, before_replace=record_sum)


def stored_sums(path: Path) -> list[str]:
    """The sums a checkpoint may have (the newest first); none for one written before
    checkpoints had them. ``ValueError`` (the reason) when the sidecar cannot be read or
    holds anything but sha256 sums: that is the sidecar's damage, not the checkpoint's."""
    try:
        sums = checksum_path(path).read_text().split()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"it cannot be read: {type(err).__name__}") from None
    if not sums or not all(len(s) == 64 and set(s) <= set("0123456789abcdef") for s in sums):
        raise ValueError("it holds no sha256 sums")
    return sums


def damaged_member(path: Path) -> str | None:
    """What is damaged in the zip archive torch.save wrote at ``path``: a member whose bytes
    do not match the CRC-32 the archive records for them, or whose header is damaged; None
    when all are sound, or when it is no zip archive whole enough to check (the loader says
    why). torch's reader checks neither, so a checkpoint without its ``.sha256`` loaded a
    flipped bit into its weights unsaid (found in review). It reads the file once: 0.06 s
    for ResNet-18's 45 MB, against 0.1 s to load it (2 CPU cores)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception:  # noqa: BLE001 - a folder, the legacy format, a cut-off file, a zip
        return None  # torch.save did not write: the loader refuses each in its own words
    return bad and f"its member {bad} fails the archive's CRC-32 or header check"


def saved_epoch_rows(path: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of the record in the checkpoint at ``path`` (none when there is
    no readable one). Its tensors are mapped, not read: a stop message asks this of a
    checkpoint just written."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return list(state["record"]["epochs"])
    except Exception:  # noqa: BLE001 - no readable checkpoint: none saved
        return []


def load_checkpoint(path: Path, source_key: str | None = None, *,
                    finished: bool = False, resuming: bool = False) -> dict[str, Any]:
    """A checkpoint, verified against its ``.sha256`` when it has one, else against its zip
    archive's CRC-32s (:func:`damaged_member`). ``source_key``: the
    config entry that named it as weights to start from (e.g. ``basis.source_checkpoint``),
    for whose errors the fix is another file, not deleting this one; otherwise it is the
    run folder's own checkpoint, which the run resumes from. ``finished``: that run's
    ``run.json`` says it is complete, so deleting the checkpoint keeps it finished, and
    ``trainer.resume=false`` would train it again. ``resuming``: a run reads it to go on,
    so its config and run record must be of the shapes a run saves."""
    path = Path(path)
    if source_key is None and finished:
        what, fix = f"checkpoint {path}", ("delete it (and its .sha256): the run is complete "
                                           "(its run.json), and is not trained again without it")
    elif source_key is None:
        what, fix = f"checkpoint {path}", ("delete it (and its .sha256) to start over, or set "
                                           "trainer.resume=false")
    else:
        what = f"{source_key}={path}"
        fix = f"point {source_key} at the checkpoint.pt of a trained dense run"
    try:
        sums = stored_sums(path)
    except ValueError as err:
        # (deleting both does not start a complete run over: its run.json keeps it finished)
        other = ("or delete both (the run is complete: its run.json keeps it so)" if finished
                 else "or delete both to start over" if source_key is None else f"or {fix}")
        raise ConfigError(f"{checksum_path(path)}, the sha256 of {what}, is damaged ({err}); "
                          f"delete {checksum_path(path).name} to load {path.name} unverified, "
                          f"{other}") from None
    try:
        digest = file_digest(path) if sums else None
    except OSError as err:  # a folder, or a file it may not read, under that name
        raise ConfigError(f"{what} cannot be read ({type(err).__name__}: {err.strerror}); "
                          f"{fix}") from None
    if sums and digest not in sums:  # (a copy over another run's keeps that run's sums)
        name = checksum_path(path).name
        raise ConfigError(f"{what} does not match its checksum file {name}: it is damaged, "
                          f"or was copied here without its own {name} (copy the two "
                          f"together); {fix}")
    damage = None if sums else damaged_member(path)
    if damage:
        raise ConfigError(f"{what} is damaged ({damage}; it has no {checksum_path(path).name} "
                          f"beside it to be verified by); {fix}")
    try:
        # tensors and plain values only: a checkpoint needs no pickled objects, and a file
        # named as the weights to start from may be someone else's (one holding a crafted
        # object would run its code here)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means an unusable file
        reason = unreadable_reason(path, err)
        if source_key is not None:
            raise ConfigError(f"{what} is not a checkpoint.pt (it cannot be read as one: "
                              f"{reason}); {fix}") from None
        raise ConfigError(f"{what} cannot be read ({reason}); {fix}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{what} holds a {type(state).__name__}, not a checkpoint; {fix}")
    lacking = [key for key in RUN_STATE if key not in state]
    if source_key is None and lacking:  # e.g. a bare state_dict saved under this name
        raise ConfigError(f"{what} is not a basisconv run's checkpoint (it lacks "
                          f"{', '.join(lacking)}); {fix}")
    if resuming and not resumable_shape(state):
        # (a config or record of another shape ended the resume in a trace from inside it)
        raise ConfigError(f"{what} is not a basisconv run's checkpoint (its config or run "
                          f"record is not what a run saves); {fix}")
    if not sums:
        log.info("%s has no %s beside it (an older basisconv wrote it, or it was copied "
                 "without it); loaded it unverified", path, checksum_path(path).name)
    return state


def resumable_shape(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's config and run record are of the shapes a run saves, which
    resuming reads: objects both, the record's ``status`` a text, its ``provenance`` an
    object and its ``epochs`` a list of rows (every run record has had all three)."""
    record = state["record"]
    return (isinstance(state["config"], dict) and isinstance(record, dict)
            and isinstance(record.get("status"), str)
            and isinstance(record.get("provenance"), dict)
            and isinstance(record.get("epochs"), list)
            and all(isinstance(row, dict) for row in record["epochs"]))


def check_source_file(path: str, key: str) -> None:
    """A :class:`ConfigError` unless ``path`` (the value of ``key``) is a file: a run reads it
    as it starts, and a sweep asks it of every job before the first runs
    (:func:`basisconv.sweep_checks.check_source_checkpoints`)."""
    if Path(path).is_dir():
        inside = Path(path) / CHECKPOINT
        raise ConfigError(f"{key}={path} is a directory; name its {CHECKPOINT}"
                          f"{f' ({key}={inside})' if inside.is_file() else ''}")
    if not Path(path).is_file():
        raise ConfigError(f"{key}={path} does not exist; give the "
                          f"checkpoint.pt of a trained baseline run")


def load_source_weights(model: nn.Module, path: str, key: str = "basis.source_checkpoint") -> None:
    """Load a trained dense model (a run's ``checkpoint.pt``) to convert from; ``key`` is
    the config entry that named it, for the error messages."""
    check_source_file(path, key)
    state = load_checkpoint(Path(path), source_key=key)
    try:
        model.load_state_dict(state["model"] if "model" in state else state)
    except RuntimeError as err:
        # torch's first line only says loading failed; the next names the first mismatch
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 else lines[0] if lines else type(err).__name__
        first = first if len(first) <= 160 else first[:157] + "..."
        holds, converted = what_it_holds(state)
        # (a converted model's weights: torch's error names only the keys, conv1.weight
        # missing and conv1.basis_weight unexpected)
        dense = (" (a converted model's dense weights are to_dense(model).state_dict())"
                 if converted else "")
        raise ConfigError(f"{key}={path} does not fit model "
                          f"{type(model).__name__} ({first}){holds}; it must be "
                          f"a dense checkpoint of the same model and width{dense}") from None


def what_it_holds(state: dict) -> tuple[str, bool]:
    """``"; it holds model=<name> width=<w>"`` (and its basis layers, if converted) as the
    run record inside a checkpoint says: torch's key mismatch alone does not tell which
    run the file came from; for a checkpoint without a record (a bare state dict), its
    basis layers as its keys say. With it, whether the weights are a converted model's."""
    weights = state.get("model", state)
    keyed = (sum(str(k).endswith(".basis_weight") for k in weights)
             if isinstance(weights, dict) else 0)
    try:
        record = state["record"]
        model = record["config"]["model"]
        holds = f"; it holds model={model['name']} width={model['width']}"
        converted = len((record.get("model") or {}).get("basis_layers") or [])
    except (KeyError, TypeError, AttributeError):
        return (f"; it holds {keyed} basis layers" if keyed else ""), bool(keyed)
    return holds + (f" with {converted} basis layers" if converted else ""), bool(converted)
