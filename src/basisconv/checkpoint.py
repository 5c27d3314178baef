"""Per-epoch checkpoints, written atomically, the resume rule, and the lock that keeps
a second process out of a run folder.

A checkpoint holds everything the next epoch depends on (model, optimizer, schedule, the
batch generator's state, the history so far), so a run resumed from it ends with the
same final metrics as one that was never interrupted (on CPU with deterministic
settings; on GPU up to kernel nondeterminism).
"""

from __future__ import annotations

import errno
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .cifar10 import expanded_root
from .errors import ConfigError, error_line, one_line
from .records import RECORD, file_digest, read_record, write_atomic, write_text_atomic
from .signals import stops_held

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
#: What a run's checkpoint holds (``run_saves.RunSaves.save``), all of which resuming reads.
RUN_STATE = ("config", "record", "model", "optimizer", "scheduler", "batches")
#: What newer runs save besides: a checkpoint from before them resumes without it.
LATER_STATE = ("scaler",)
#: Keys that may differ between an interrupted run and its resumption: they change how a
#: run executes or where it keeps things, not what it computes (to rounding), so
#: ``scripts/reproduce.sh`` lets them change between invocations and the analysis takes
#: runs that differ only in them as repeats. Every ``logger.*`` key is one of them too
#: (:func:`changes_only_execution`).
RESUMABLE_CHANGES = {"trainer.resume", "trainer.progress", "trainer.threads", "trainer.device",
                     "trainer.compile", "trainer.compile_mode", "trainer.cuda_graphs",
                     "trainer.checkpoint", "trainer.checkpoint_every_s", "publish",
                     "data.download", "data.verify_md5",
                     "sensitivity.restore_from", "sensitivity.workers",
                     "sensitivity.cache_dir", "sensitivity.recompute"}


#: Keys added after run records were first published (``70ccc68``), with the value a run
#: written without them ran as (what the code did before the key existed). A record or
#: checkpoint that lacks one is read as having this value (:func:`flat_config`), so that a
#: newer run that sets another value is a different configuration, not a repeat of the old
#: one; ``tests/test_configs.py`` keeps this list whole (values of the defaults' types: 0
#: and 0.0 are two values to a resume and the analysis). Add every new key here.
ADDED_KEYS = {"basis.fuse_norm": False, "basis.fit": "pivots", "trainer.cuda_graphs": False,
              "trainer.checkpoint_every_s": 0.0, "sensitivity.workers": 1,
              "sensitivity.drop_noise_layers": 0, "basis.frobenius_decay": False,
              "logger.init_timeout_s": 90.0, "logger.finish_timeout_s": 300.0}


def changes_only_execution(key: str) -> bool:
    """Whether a (flattened) config key may differ between an interrupted run and its
    resumption: one of :data:`RESUMABLE_CHANGES`, or any ``logger.*`` key."""
    return key in RESUMABLE_CHANGES or key.startswith("logger.")


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
    """A checkpoint, verified against its ``.sha256`` when it has one. ``source_key``: the
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


#: How a file torch.save wrote begins: a zip archive, or its legacy format's pickle (protocol
#: 2 and above; protocols 0 and 1 begin with torch's magic number as text).
TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80", b"L119547037146038801333356")
#: torch's magic number as its legacy format pickles it first (a long, opcode LONG1), near
#: the start whatever the protocol: a pickle without it is no file torch.save wrote.
TORCH_PICKLED_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


def unreadable_reason(path: Path, err: Exception) -> str:
    """Why ``torch.load`` could not read the file at ``path``, for a message. An empty or
    cut-off file (a copy that stopped part-way, loaded without a .sha256 to catch it) is
    said as such: torch reports it as ``EOFError`` with no text, as ``OSError: [Errno 22]
    Invalid argument``, which reads as a fault of the disk, or as a zip archive without
    its central directory (which a zip keeps at its end). A file torch.save never wrote
    (a text, a web page a download saved, a Git LFS pointer never pulled) is said by its
    first bytes: torch's words for it ("KeyError: 101") say nothing of the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        size = head = None
    if size == 0:
        return "it is empty"
    foreign = head is not None and foreign_format(path, head)
    if foreign:
        return foreign
    if isinstance(err, pickle.UnpicklingError):
        return unpickling_reason(err)
    if size is not None and (isinstance(err, EOFError)
                             or (isinstance(err, OSError) and err.errno == errno.EINVAL)
                             or "failed finding central directory" in str(err)):
        return f"it ends early, cut off at {size} bytes"
    return error_line(err)


def foreign_format(path: Path, head: bytes) -> str | None:
    """What a file torch.save never wrote is, by its first bytes ``head``, or None: a plain
    pickle (``pickle.dump``'s) or a zip archive of other files was said in torch's words,
    "Invalid magic number; corrupt file?", "Unsupported operand 149", "[enforce fail at
    inline_container.cc:180] . file in archive is not in a subdirectory" (found in
    review)."""
    if head.startswith(b"\x80") and not _begins_with_torch_magic(head):
        return "it is a Python pickle (pickle.dump's), not a file torch.save writes"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile):  # cut off: said as such by the caller
            return None
        if not any(name.endswith("/data.pkl") for name in names):
            held = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            return (f"it is a zip archive that torch.save did not write: it holds "
                    f"{held or 'no file'} and no data.pkl")
        return None
    if not head.startswith(TORCH_FILE_STARTS):
        return f"it is not a file torch.save writes: it begins {head!r}"
    return None


def _begins_with_torch_magic(pickled: bytes) -> bool:
    """Whether a pickle's first value is torch's magic number, or could be: a legacy torch
    file cut off before its magic is whole (a copy that stopped at once) is torch's, cut
    off, not a plain pickle. The bytes after the protocol opcode (``\\x80`` and its number)
    and protocol 4's frame (``\\x95`` and an 8-byte length) are compared with the magic
    as far as they go."""
    body = pickled[2:]
    if body[:1] == b"\x95":
        body = body[9:]
    kept = min(len(body), len(TORCH_PICKLED_MAGIC))
    return body[:kept] == TORCH_PICKLED_MAGIC[:kept]


def unpickling_reason(err: pickle.UnpicklingError) -> str:
    """The line of torch's refusal to unpickle that says why (its text is a page long and
    advises ``weights_only=False``, which would run whatever the file holds)."""
    text = str(err)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return (f"it holds a Python object ({found.group(1)}) besides tensors and plain "
                f"values, which could run code as it is read")
    detail = re.search(r"WeightsUnpickler error:(.+?)(?:Check the documentation|$)", text, re.S)
    return f"UnpicklingError: {one_line(detail.group(1) if detail else text)}"


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flat_config(config: dict) -> dict[str, Any]:
    """A run's config flattened (``trainer.lr``), with the :data:`ADDED_KEYS` an older
    basisconv did not write filled in with the value it ran as."""
    return {**ADDED_KEYS, **flatten(config)}


def check_same_run(saved_config: dict, config: dict, path: Path,
                   fix: str = "use a new output directory, or trainer.resume=false to start "
                              "over", unread: tuple[str, ...] = ()) -> None:
    """Refuse to resume a checkpoint written under a different configuration (or, with
    another ``fix``, to replace a record ``path`` of one: :func:`refuse_other_settings`).

    A key an older basisconv did not write counts as the value it ran as
    (:data:`ADDED_KEYS`); other keys that only one side has (removed, or written by a newer
    version) are logged, not refused, so a reproduce started before an upgrade can go on.
    ``unread``: flattened keys, or prefixes ending in ``.``, that may differ too (the run
    does not read them)."""
    old, new = flat_config(saved_config), flat_config(config)
    one_sided = sorted(old.keys() ^ new.keys())
    if one_sided:
        log.warning("%s: config keys %s exist on one side only (another basisconv version); "
                    "resuming anyway", path, ", ".join(one_sided))
    # 1 and 1.0 differ too: basis.size and the subsets read an int as a count, a float
    # as a fraction (and Python calls them equal)
    changed = sorted(k for k in old.keys() & new.keys()
                     if (old[k] != new[k] or type(old[k]) is not type(new[k]))
                     and not changes_only_execution(k) and not k.startswith(unread))
    if "data.root" in changed and same_data(old, new):
        log.info("%s: data.root %s -> %s holds the same data; resuming", path,
                 old["data.root"], new["data.root"])
        changed.remove("data.root")
    if changed:
        raise ConfigError(
            f"{path} was written by a different config (differs in {', '.join(changed)}); "
            f"{fix}")


def refuse_other_settings(config: dict, folder: Path, kind: str, what: str,
                          unread: tuple[str, ...] = ()) -> None:
    """A :class:`ConfigError` when ``folder`` holds the record of a ``kind`` run (an
    estimate's, a search's) made with other settings, naming the keys that differ: ``what``
    (e.g. "search") wrote its files and record over that one's silently, and one stopped
    there left the old results beside the new one's config and log. The same run again
    there is taken, as a training run is resumed: keys that change only how it runs
    (``sensitivity.workers``) may differ, and the ``unread`` ones (as
    :func:`check_same_run`), and ``name``, which here only labels the folder and the
    logger's group (no analysis reads it, as it reads a training run's experiment): the
    search's default changed from ``<model>-sensitivity`` to ``<model>-search`` (1f17dc5),
    and ``scripts/reproduce.sh`` rerunning a search in its folder made before was refused
    as "differs in name" (found in review). A missing or unreadable record is left to the
    run."""
    try:
        found = read_record(folder / RECORD)
    except (OSError, ValueError):
        return  # none, or unreadable: the run writes its own
    if found.get("kind") == kind and isinstance(found.get("config"), dict):
        check_same_run(found["config"], config, folder / RECORD, unread=("name", *unread),
                       fix=f"give this {what} a folder of its own (hydra.run.dir=..., or none "
                           f"for the default), or delete that folder")


def same_data(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two flattened configs whose ``data.root`` differs read the same data: the
    data is what was verified, not how its path was written. So the root may change when
    both check the published md5 sums (the files are then the genuine CIFAR-10 wherever
    they lie), when the data is generated (the root is not read), or when both paths
    resolve to the same folder."""
    if old.get("data.name") == new.get("data.name") == "stripes":
        return True
    if old.get("data.verify_md5") and new.get("data.verify_md5"):
        return True
    root = [expanded_root(str(c["data.root"])).resolve() for c in (old, new)]
    return root[0] == root[1]


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
