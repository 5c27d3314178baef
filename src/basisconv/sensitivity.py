"""How much each convolution layer's accuracy suffers from becoming a basis convolution,
estimated fast (the paper's layer-wise sensitivity analysis; the procedure below is our
reading of it, see ``../shared/paper.md``).

The estimate, for a model, a basis size and a data config:

1. train the dense model briefly (``sensitivity.pretrain_epochs``), or load a trained
   dense checkpoint (``sensitivity.source_checkpoint``);
2. fine-tune a copy of it, still dense, for ``sensitivity.finetune_epochs`` with a short
   cosine schedule: the *reference*;
3. for every candidate layer: convert that one layer of a fresh copy to basis form
   (``BasisConv2d.from_conv``, fitted as ``basis.fit`` says: the conv's own filters and
   least squares by default), fine-tune it (all its parameters)
   exactly as the reference (same steps, same batches: common random numbers; they do not
   cancel the batch order's effect on a drop, whose own noise
   ``sensitivity.drop_noise_layers`` measures), and
   measure accuracy and loss on a held-out split of the *training* images (the test set
   is never used to choose layers).

A layer's sensitivity is its accuracy drop (and loss increase) against the reference
(the probe that does steps 1-3 is :mod:`basisconv.probe`).
Cost: one brief training plus one short fine-tune per layer, instead of a full training
per layer (or per subset of layers). The table is cached under a key made of everything
that changes it (model, basis, data, the budget above, the training recipe, the seed), and
reused by later runs; a changed key computes a new table, and computing is always logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any, Iterator, TYPE_CHECKING

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from . import distributed, loop, progress
from .candidates import dense_totals, layer_savings
from .checkpoint import refuse_other_settings
from .config import SEARCH_ONLY
from .data import expanded_root
from .errors import ConfigError, Stopped, WorkerFailed, WriteError, one_line
from .model_checks import check_against_the_model
from .network import architecture_digest, build_dense
from .probe import Probe, drop_noise, evaluate_many, reference_noise, spread_layers
from .records import (KIND_WORDS, RunRecord, commit_name, file_digest, folder_lock, git_commit,
                      of_type, provenance, publish, read_record, refuse_other_kind,
                      write_bytes_atomic, write_json_atomic, write_record)
from .selection import (ORDERED_POLICIES, SENSITIVITY_POLICIES, TABLE_FLOAT_FORMAT, chosen_or_dense,
                        fixed_candidates, fixed_layers, metric_drops, pick_layers)
from .time_budget import readable_key, with_measured_time
from .tracking import Tracker

if TYPE_CHECKING:  # pandas (half a second) is imported where a table is made: a process
    import pandas as pd  # that makes none (most training runs) starts without it

log = logging.getLogger(__name__)

TABLE = "sensitivity.csv"
RECORD = "sensitivity.json"
COLUMNS = ("layer", "position", "shape", "num_basis", "reconstruction_error",
           "converted_accuracy", "accuracy", "loss", "accuracy_drop", "loss_increase",
           "params_saved", "flops_saved", "forward_flops_saved", "seconds")


# ----------------------------------------------------------------------------- cache key
#: ``sensitivity.noise_repeats`` of every table cached before the setting joined the key
#: (the configs' default): tables made with it keep their keys.
UNKEYED_NOISE_REPEATS = 2


def key_fields(cfg: DictConfig) -> dict[str, Any]:
    """Everything that changes a sensitivity table (and nothing that does not, such as
    the root of md5-checked data, the logger or speed options).

    Why it differs from the two other caches' keys: one table is reused on any machine,
    so no hardware, device, threads or torch version, which the layer timings
    (:func:`basisconv.time_budget.key_fields`) are made of and the kept work
    (:func:`basisconv.progress.conditions`, a folder inside this key's) is kept under; no
    ``basis.share_coefficients`` (a probe converts one layer, which has none to share) nor
    ``basis.only_where_saves`` (the candidates are always the layers where a basis saves
    compute, :func:`~basisconv.candidates.layer_savings`).

    A setting (or a change of the code) that joined the key after tables were cached is
    added only where it applies, so that the other keys stay valid: the key is kept byte
    for byte, field order included."""
    estimate = _estimate_fields(cfg)  # (before the data's: the error it may raise comes first)
    return {
        "model": _picked(cfg.model, ["name", "width"]),
        "basis": _basis_fields(cfg),
        "data": _data_fields(cfg),
        "sensitivity": estimate,
        "trainer": _picked(cfg.trainer, ["batch_size", "lr", "momentum", "nesterov",
                                         "weight_decay", "schedule", "warmup_fraction",
                                         "label_smoothing", "amp"]),
        "seed": cfg.sensitivity.seed,
    }


def _picked(node: DictConfig, keys: list[str]) -> dict[str, Any]:
    """The resolved values of ``keys`` in ``node``, in that order."""
    values = OmegaConf.to_container(node, resolve=True)
    return {k: values[k] for k in keys}


def _basis_fields(cfg: DictConfig) -> dict[str, Any]:
    """The basis layers a probe converts to, and how it counts what they save."""
    basis = _picked(cfg.basis, ["size", "combine", "coefficient_rank"])
    if cfg.basis.get("fuse_norm"):  # only when on, so that earlier keys stay valid
        basis["fuse_norm"] = True
    if cfg.basis.get("fit", "pivots") != "pivots":  # how each layer is fitted (likewise)
        basis["fit"] = cfg.basis.fit
    if cfg.basis.get("frobenius_decay"):  # the fine-tunes' weight decay (likewise)
        basis["frobenius_decay"] = True
    if basis.get("fuse_norm") or basis["coefficient_rank"]:
        # the only layers with costs paid once per batch, whose savings per image are now
        # counted at the training batch: tables counted at one image are not reused
        basis["savings_per_image_at"] = "trainer.batch_size"
    return basis


def _estimate_fields(cfg: DictConfig) -> dict[str, Any]:
    """The estimate's own budget: the dense model it starts from, its fine-tunes, its
    noise yardsticks and the layers it probes."""
    estimate = _picked(cfg.sensitivity, ["pretrain_epochs", "source_checkpoint",
                                         "finetune_epochs", "finetune_lr", "val_size",
                                         "layers"])
    source = estimate["source_checkpoint"]
    if source and Path(source).is_file():
        estimate["source_checkpoint"] = _checkpoint_digest(source)
    # the noise yardstick's repeats, only when not the number earlier keys were made with
    if cfg.sensitivity.noise_repeats != UNKEYED_NOISE_REPEATS:
        estimate["noise_repeats"] = cfg.sensitivity.noise_repeats
    if cfg.sensitivity.get("drop_noise_layers"):  # (likewise: only when measured)
        estimate["drop_noise_layers"] = cfg.sensitivity.drop_noise_layers
    # the pretraining's schedule changed twice; tables made before are not reused, other
    # keys stay valid: under cosine it warms up since 2f730ef (it did not before), and
    # one-cycle without a warm-up anneals from lr since 0aab165 (one step in, before)
    pretrained_here = not estimate["source_checkpoint"] and estimate["pretrain_epochs"] > 0
    schedule, warmup = cfg.trainer.schedule, cfg.trainer.warmup_fraction
    if pretrained_here and schedule == "cosine" and warmup > 0:
        estimate["pretrain_warmup"] = True
    if pretrained_here and schedule == "onecycle" and warmup == 0:
        estimate["onecycle_from_lr"] = True
    return estimate


def _checkpoint_digest(source: str) -> str:
    """A source checkpoint as the key knows it: its weights, not its path (a run's
    checkpoint.pt changes at the same path with each epoch it trains, or a rerun there, and
    one file named two ways is one source)."""
    try:
        return f"sha256:{file_digest(source)}"
    except OSError as err:  # (a trace, from reproduce.sh's check of its OVERRIDES too)
        raise ConfigError(f"sensitivity.source_checkpoint={source} cannot be read "
                          f"({type(err).__name__}: {err.strerror or err}); point "
                          f"sensitivity.source_checkpoint at the checkpoint.pt of a "
                          f"trained dense run") from None


def _data_fields(cfg: DictConfig) -> dict[str, Any]:
    """The training images the estimate sees (its held-out split is made from them)."""
    data = _picked(cfg.data, ["name", "train_subset", "crop_padding", "flip", "synthetic_train",
                              "num_classes"])
    if cfg.data.name == "stripes":  # one draw makes train and test images: the test count
        data["synthetic_test"] = cfg.data.synthetic_test  # changes the training images too
    elif not cfg.data.verify_md5:  # not the published CIFAR-10 (your own data in its format):
        # known by its folder, as resuming knows it (checkpoint.same_data)
        data["root"] = str(expanded_root(cfg.data.root).resolve())
    return data


def cache_key(cfg: DictConfig) -> str:
    """A readable, stable key: ``<model>-w<width>-m<size>-<hash of key_fields>``."""
    return readable_key(cfg, key_fields(cfg))


def cache_dir(cfg: DictConfig) -> Path:
    return Path(cfg.sensitivity.cache_dir) / cache_key(cfg)


@contextlib.contextmanager
def say_the_work_is_kept(cfg: DictConfig, what: str) -> Iterator[None]:
    """A stop of ``what`` (the estimate, the exhaustive search), or a worker process's
    death, says that its finished fine-tunes are kept and the same command continues from
    them (a stop said only "stopped by SIGTERM", and a dead worker's line advised fewer
    workers: both read as all of it lost)."""
    def kept() -> str:  # (only when said: the key hashes a source checkpoint's bytes)
        folder = cache_dir(cfg)
        # a recompute that began cleared the old table and work: the same command (true)
        # would clear this one's work too, and start over
        command = ("the same command with sensitivity.recompute=false"
                   if str(folder) in RECOMPUTING else "the same command")
        return f"its finished work is kept in {folder}, and {command} continues from it"
    try:
        yield
    except KeyboardInterrupt as err:
        if isinstance(err, Stopped) and str(err):  # it says where it stopped
            raise
        raise Stopped(getattr(err, "signum", signal.SIGINT),
                      f"{what} stopped; {kept()}") from None
    except WorkerFailed as err:
        raise WorkerFailed(f"{err}; {kept()}") from None


#: The cache folders whose table this process began to estimate again
#: (``sensitivity.recompute=true``): their old table and kept work are gone.
RECOMPUTING: set[str] = set()


# ----------------------------------------------------------------------------- cache
#: The columns a cached table holds as numbers (one that holds text there is refused).
NUMERIC = tuple(c for c in COLUMNS if c not in ("layer", "shape"))


def table_csv(table: pd.DataFrame) -> bytes:
    """The bytes a table is cached (and written) as."""
    return table.to_csv(index=False, float_format=TABLE_FLOAT_FORMAT).encode()


def table_from_csv(data: bytes) -> pd.DataFrame:
    """The table that :func:`table_csv`'s bytes hold (its numbers as
    :data:`~basisconv.selection.TABLE_FLOAT_FORMAT` keeps them)."""
    import pandas as pd
    return pd.read_csv(io.BytesIO(data))


def cache(folder: Path, data: bytes, record: dict) -> None:
    """Keep a new estimate for the runs after this one. A cache that cannot be written (a
    full disk) is a warning, not the end of the run that paid for the estimate: this run
    uses its table, the next estimates it again (a half-written pair is removed, so it is
    not read as a corrupt cache)."""
    try:
        write_bytes_atomic(folder / TABLE, data)  # first: a record has its table
        write_json_atomic(folder / RECORD, record)
    except WriteError as err:
        for name in (RECORD, TABLE):
            (folder / name).unlink(missing_ok=True)
        log.warning("sensitivity: the estimate could not be cached (%s): this run uses it, "
                    "the next one with this key estimates it again", err)


#: The fields of an estimate's record (a cached table's, a published record's cache) that
#: its readers take (the run's summary, the search, the reuse line), each with the types
#: :func:`~basisconv.records.of_type` takes there (``None``: where an estimate writes a
#: null); :data:`ESTIMATE_FIELDS` are those every estimate's record holds.
RECORD_FIELDS = {"dense": (dict,), "pretrained": (dict,), "reference": (dict,),
                 "provenance": (dict,), "seconds": (float,), "config": (dict, None),
                 "noise": (dict, None), "drop_noise": (dict, None)}
ESTIMATE_FIELDS = ("dense", "pretrained", "reference", "provenance", "seconds")

#: What every refusal of a cached table names as its fix.
CACHE_FIX = "delete that folder or run with sensitivity.recompute=true"


def damaged_fields(record: dict, required: tuple[str, ...] = ()) -> list[str]:
    """The fields of an estimate's ``record`` that are missing (of ``required``) or of
    another type than its readers take (found in review: a hand-edited one ended them in a
    KeyError or AttributeError trace, the search after all its subsets)."""
    return [name for name in required if name not in record] + [
        name for name, kinds in RECORD_FIELDS.items()
        if name in record and not any(of_type(record[name], kind) for kind in kinds)]


def check_estimate_record(cfg: DictConfig, record: dict,
                          fields: tuple[str, ...] = ESTIMATE_FIELDS) -> None:
    """Refuse, with the fix, a reused table whose record is damaged in ``fields`` (which
    every estimate's holds) or in the type of another field its readers take."""
    damaged = damaged_fields(record, fields)
    if damaged:
        raise ConfigError(f"the cached sensitivity table's record {cache_dir(cfg) / RECORD} "
                          f"is damaged (its {', '.join(damaged)} missing or of another type); "
                          f"{CACHE_FIX}")


def load_cached(cfg: DictConfig) -> tuple[pd.DataFrame, dict] | None:
    """The cached table and its record, or ``None`` when there is none for this key.

    The record holds the table's row count and the sha256 of its CSV bytes; a table that
    does not match them (rows lost, a cell changed) is refused. A cache written before
    records held them (before commit 1b1da0d) loads, logged as unverified."""
    import pandas as pd
    folder = cache_dir(cfg)
    if not (folder / RECORD).exists():
        return None
    try:
        record = json.loads((folder / RECORD).read_text())
        data = (folder / TABLE).read_bytes()
        table = table_from_csv(data)
    except (OSError, ValueError) as err:
        if isinstance(err, FileNotFoundError) and not (folder / RECORD).exists():
            # removed while read (a recompute, record first, under the lock this reader
            # takes next): no table, the caller waits for the new one
            return None
        raise ConfigError(f"the cached sensitivity table in {folder} is unreadable "
                          f"({one_line(err)}); {CACHE_FIX}") from None
    missing = set(COLUMNS) - set(table.columns)
    if missing or not isinstance(record, dict) or record.get("key") != cache_key(cfg):
        raise ConfigError(f"the cached sensitivity table in {folder} is incomplete or was made "
                          f"for another key; {CACHE_FIX}")
    malformed = damaged_fields(record)  # (its readers check what they need present)
    if malformed:
        raise ConfigError(f"the cached sensitivity table's record {folder / RECORD} is damaged "
                          f"({', '.join(malformed)} of another type); {CACHE_FIX}")
    # a table cached before noise_repeats joined the key has this key whatever its repeats
    made = ((record.get("config") or {}).get("sensitivity") or {}).get("noise_repeats")
    if made is not None and made != cfg.sensitivity.noise_repeats:
        raise ConfigError(f"the cached sensitivity table in {folder} was made with "
                          f"sensitivity.noise_repeats={made}, not "
                          f"{cfg.sensitivity.noise_repeats} (before that setting joined the "
                          f"cache key); {CACHE_FIX}")
    # the key names the model, not its definition: a table of an edited model file (another
    # layer's channels, a renamed layer) would choose as if for the model it was made for
    made_of = record.get("architecture")  # (tables cached before it was recorded: unchecked)
    if made_of is not None and made_of != architecture_digest(cfg):
        raise ConfigError(f"the cached sensitivity table in {folder} was made for another "
                          f"definition of model {cfg.model.name} (its layers differ from the "
                          f"model built now: an edited model file?); {CACHE_FIX}")
    expected = record.get("table_sha256")
    if expected is None:
        log.warning("sensitivity: the cached table %s has no checksum (written by an older "
                    "basisconv); using it unverified", folder / TABLE)
    elif hashlib.sha256(data).hexdigest() != expected or len(table) != record.get("table_rows"):
        raise ConfigError(f"the cached sensitivity table {folder / TABLE} is damaged ({len(table)} "
                          f"rows, record says {record.get('table_rows')}; its sha256 does not "
                          f"match {RECORD}); {CACHE_FIX}")
    bad = [c for c in NUMERIC if not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        raise ConfigError(f"the cached sensitivity table {folder / TABLE} has non-numeric "
                          f"values in {', '.join(bad)}; {CACHE_FIX}")
    return table, record


def sensitivity_table(cfg: DictConfig, *, recompute: bool | None = None
                      ) -> tuple[pd.DataFrame, dict]:
    """The sensitivity table of ``cfg``: from the cache when there is one for its key,
    otherwise estimated now (logged, and cached for the next run)."""
    recompute = cfg.sensitivity.recompute if recompute is None else recompute
    cached = _cached_before_the_lock(cfg, recompute)
    if cached is None:
        folder = cache_dir(cfg)
        # One estimate per key at a time: a second process waits, then reuses its table.
        with folder_lock(folder, wait=True, what="sensitivity estimate",
                         key="sensitivity.cache_dir"):
            alone = distributed.world_size() == 1  # under torchrun nothing is estimated
            cached = None if recompute else (load_cached(cfg)
                                             or restore_published(cfg, estimating=alone))
            if cached is None and not alone:
                raise _no_table_under_torchrun(cfg, recompute)
            if cached is None:
                table, record = _estimate_and_cache(cfg, folder, recompute)
                return table, {**record, "cache_hit": False}
    table, record = cached
    say_a_missing_record(cfg, f"so the table cached in {cache_dir(cfg)} is used")
    log.info("sensitivity: reusing the cached table %s%s", cache_dir(cfg), code_note(record))
    return table, {**record, "cache_hit": True}


def _cached_before_the_lock(cfg: DictConfig, recompute: bool
                            ) -> tuple[pd.DataFrame, dict] | None:
    """The cached table and its record as read without the lock (``None``: none, or one
    that reads as damaged, for the read under the lock to decide), or the published one
    where it differs from the cached one (restored, under the lock)."""
    try:
        cached = None if recompute else load_cached(cfg)
    except ConfigError:
        # read outside the lock: another process may be replacing the pair under it (a
        # published table restored: table, then record), and the old record beside the new
        # table reads as damaged; the read under the lock says whether it is
        return None
    if cached is not None and published_differs(cfg, cached[1]):
        log.warning("sensitivity: the table cached in %s differs from the one published at "
                    "sensitivity.restore_from=%s for the same key (each machine estimated its "
                    "own); using the published one, which the protocol's pages and its other "
                    "runs use", cache_dir(cfg), cfg.sensitivity.restore_from)
        with folder_lock(cache_dir(cfg), wait=True, what="sensitivity estimate",
                         key="sensitivity.cache_dir"):
            return restore_published(cfg)
    return cached


def _no_table_under_torchrun(cfg: DictConfig, recompute: bool) -> ConfigError:
    """The error of a torchrun process that finds no table to reuse: it estimates none
    (each process would estimate its own), so the fix is one estimate first."""
    what = ("sensitivity.recompute=true cannot estimate the table again under torchrun"
            if recompute else
            f"no sensitivity table for key {cache_key(cfg)} in {cfg.sensitivity.cache_dir}"
            + (" nor at sensitivity.restore_from" if cfg.sensitivity.restore_from else ""))
    return ConfigError(f"{what}; estimate it first in one process (python "
                       f"scripts/sensitivity.py with the same overrides), then start the "
                       f"torchrun job" + (" without sensitivity.recompute" if recompute else ""))


def _estimate_and_cache(cfg: DictConfig, folder: Path, recompute: bool
                        ) -> tuple[pd.DataFrame, dict]:
    """Estimate the table now, under ``folder``'s lock, and cache it there: the table as
    the cache gives it back, and its record."""
    # refused before the line below says an estimate starts (a basis.size too large for
    # the candidates, a layer name the model lacks: a caller of this API may not have
    # validated its config), on the model shaped on the meta device (a twentieth of a
    # second; the candidate table takes seconds). The estimate reads no selection key:
    # its callers that do check them first (the exhaustive search reads none)
    check_against_the_model(cfg, estimate=True, reads_selection=False)
    log.warning("sensitivity: %s table for key %s; estimating it now",
                "recomputing the" if recompute else "no cached", cache_key(cfg))
    if recompute:  # estimate again: nothing an earlier estimate kept is reused, and the
        # table it replaces goes too (record first: never one without its table), so a
        # stopped recompute continues with recompute=false (which read the old table, and
        # never the new work; with true it cleared that work)
        for name in (RECORD, TABLE):
            (folder / name).unlink(missing_ok=True)
        progress.clear(folder)
        RECOMPUTING.add(str(folder))
    table, record = estimate(cfg)
    data = table_csv(table)
    record = {**record, "table_rows": len(table),
              "table_sha256": hashlib.sha256(data).hexdigest(),
              "architecture": architecture_digest(cfg)}
    cache(folder, data, record)
    # the table as the cache gives it (TABLE_FLOAT_FORMAT): a run that estimates it chooses
    # exactly as every later run that reads it (ties and orders included)
    return table_from_csv(data), record


def code_note(record: dict) -> str:
    """What a reused table's reader should know of the code that estimated it: the key
    holds every setting that shapes the table, but not the code (a key with the commit
    would set aside each published estimate at every commit), so a table estimated by other
    code is named as such, with how to estimate it again; "" when the code is this one or
    either is unknown."""
    made = ((record.get("provenance") or {}).get("git")) or {}
    now = git_commit()
    if not made.get("commit") or not now.get("commit") or (
            made.get("commit"), made.get("diff_sha256")) == (now["commit"], now.get("diff_sha256")):
        return ""
    if made["commit"] == now["commit"]:  # (else "abc1234-dirty (this code: abc1234-dirty)")
        differs = ("with other uncommitted changes than this code's"
                   if made.get("dirty") and now.get("dirty") else
                   "with uncommitted changes this code lacks" if made.get("dirty") else
                   "without this code's uncommitted changes")
        return (f", estimated at commit {commit_name(made)[:7]} {differs}; "
                f"sensitivity.recompute=true estimates it again with this code")
    return (f", estimated at commit {commit_name(made)} (this code: {commit_name(now)}); "
            f"sensitivity.recompute=true estimates it again with this code")


def published_differs(cfg: DictConfig, cached: dict) -> bool:
    """Whether the published record at ``sensitivity.restore_from`` holds another table of
    this key than the cache's record ``cached``: two machines of one protocol each
    estimated the table (the key does not name the machine or thread count, which change
    it), and after a merge one was published. Else each machine's runs keep choosing from
    its own, and one table row mixes layer sets chosen from two tables."""
    path = cfg.sensitivity.restore_from
    if not path or not Path(path).is_file():
        return False
    try:
        published = read_record(path).get("cache") or {}
    except (OSError, ValueError):
        return False  # restore_published, which reads it when needed, says what is wrong
    return (published.get("key") == cache_key(cfg) and cached.get("table_sha256") is not None
            and published.get("table_sha256") not in (None, cached["table_sha256"]))


#: The ``sensitivity.restore_from`` paths already reported missing in this process.
WARNED_MISSING: set[str] = set()


def say_a_missing_record(cfg: DictConfig, instead: str, why: str = "") -> None:
    """A ``sensitivity.restore_from`` that names no file, said once per path and process,
    with what is done ``instead`` (and ``why`` that is fine). A warning, not a refusal: a
    protocol's first machine names the record it publishes later. Said on a cache hit
    too, where the path is otherwise never read: a typo there went unseen (found in
    review)."""
    path = cfg.sensitivity.restore_from
    if not path or Path(path).is_file() or str(path) in WARNED_MISSING:
        return
    WARNED_MISSING.add(str(path))
    log.warning("sensitivity: no published record at sensitivity.restore_from=%s yet, %s "
                "(%sif you meant an existing record, check the path)", path, instead, why)


def restore_published(cfg: DictConfig, estimating: bool = True
                      ) -> tuple[pd.DataFrame, dict] | None:
    """Fill the empty cache from the published sensitivity record named by
    ``sensitivity.restore_from`` (``results/<profile>/runs/sensitivity.json``, written on
    another machine) when it was made for this key, and load it; ``None`` when there is no
    such record or it is for other settings. Called under the cache folder's lock.
    ``estimating``: whether a missing record means the table is estimated here (said once),
    or refused (under torchrun, whose refusal says it)."""
    import pandas as pd
    path = cfg.sensitivity.restore_from
    if not path:
        return None
    if not Path(path).is_file():
        if estimating:
            say_a_missing_record(cfg, "so the table is estimated here", "as on the first "
                                 "machine of a protocol, which publishes it there; ")
        return None
    fix = f"delete {path} (the table is then estimated again)"
    point = ("point sensitivity.restore_from at a published sensitivity record "
             "(<results>/runs/sensitivity.json, written by scripts/sensitivity.py publish=...)")
    try:
        published = read_record(path)
        cache = published.get("cache")
        if cache is not None and not isinstance(cache, dict):  # (an AttributeError trace)
            raise ValueError(f"its cache is a {type(cache).__name__}, not an object")
        table = pd.DataFrame(published["table"])[list(COLUMNS)] if cache else None
    except (OSError, ValueError, KeyError) as err:
        # not "delete" alone: the path may name another file (the run's own sensitivity.csv,
        # or the README)
        raise ConfigError(f"the published sensitivity record {path} is unreadable "
                          f"({one_line(err)}); {point}, or, if it is one that is "
                          f"damaged, {fix}") from None
    if published.get("kind") != "sensitivity":  # (a training run's run.json: said at INFO
        kind = published.get("kind")             # as "for other settings", found in review)
        raise ConfigError(f"sensitivity.restore_from={path} is the record of "
                          f"{KIND_WORDS.get(kind, kind)}, not a sensitivity estimate; {point}")
    if not cache or cache.get("key") != cache_key(cfg):
        log.info("sensitivity: %s is for other settings (key %s, not %s); not restoring it",
                 path, (cache or {}).get("key"), cache_key(cfg))
        return None
    data = table_csv(table)
    if hashlib.sha256(data).hexdigest() != cache.get("table_sha256"):
        raise ConfigError(f"the published sensitivity record {path} does not match its own "
                          f"checksum (edited or damaged); {fix}")
    # the cache's record is checked here, not once copied into the cache: the fix that the
    # cache's refusal names (delete that folder) restored the same record again
    malformed = damaged_fields(cache, ESTIMATE_FIELDS)
    if malformed:
        raise ConfigError(f"the published sensitivity record {path} is damaged (its cache's "
                          f"{', '.join(malformed)} missing or of another type); {fix}")
    folder = cache_dir(cfg)
    write_bytes_atomic(folder / TABLE, data)
    write_json_atomic(folder / RECORD, cache)
    log.info("sensitivity: cache %s restored from the published record %s", folder, path)
    return load_cached(cfg)


# ----------------------------------------------------------------------------- estimate
def dense_model(cfg: DictConfig) -> nn.Module:
    """A fresh dense model of ``cfg`` on the CPU, to count costs and find the candidates on,
    before anything is trained. Its init draws from the CPU generator, which is put back,
    so what comes after (a probe, a run's own init) draws as if it had not been built."""
    with torch.random.fork_rng(devices=[]):
        return build_dense(cfg)


def candidate_table(cfg: DictConfig, dense: nn.Module | None = None) -> pd.DataFrame:
    """The candidate table of ``cfg`` (:func:`layer_savings`, counted at the training
    batch): the layers of ``sensitivity.layers`` where a basis of ``basis.size`` saves
    compute, in ``dense`` (by default :func:`dense_model`). A layer name the model lacks,
    or a basis too large for a layer, is a :class:`ConfigError` here."""
    return layer_savings(dense_model(cfg) if dense is None else dense, cfg.basis,
                         list(cfg.sensitivity.layers), batch=cfg.trainer.batch_size)


def estimate(cfg: DictConfig) -> tuple[pd.DataFrame, dict]:
    """Estimate the sensitivity table of ``cfg`` (no cache; see :func:`sensitivity_table`)."""
    with loop.settings_restored():
        return _estimate(cfg)


def _estimate(cfg: DictConfig) -> tuple[pd.DataFrame, dict]:
    import pandas as pd
    started = time.perf_counter()
    # before the pretraining: a layer name the model lacks or a basis.size too large for a
    # layer is found in seconds, not after it
    candidates = candidate_table(cfg)
    probe = Probe(cfg, keep_in=cache_dir(cfg))  # a stopped estimate resumes from what it kept
    reference = probe.evaluate_layers([])
    log.info("sensitivity: dense after pretraining %.4f, reference after fine-tuning %.4f "
             "(held-out accuracy); %d candidate layers", probe.pretrained["accuracy"],
             reference["accuracy"], len(candidates))
    # one batch of independent fine-tunes: the reference's repeats with other batch
    # orders (the noise yardstick), each candidate layer, and a few layers again under
    # the repeats' orders (the drops' own noise, sensitivity.drop_noise_layers)
    repeats = [([], probe.seed + 1 + i) for i in range(cfg.sensitivity.noise_repeats)]
    candidate_rows = candidates.to_dict("records")
    noisy = spread_layers([row["layer"] for row in candidate_rows],
                          cfg.sensitivity.get("drop_noise_layers") or 0) if repeats else []
    jobs = (repeats + [([row["layer"]], None) for row in candidate_rows]
            + [([name], seed) for name in noisy for _, seed in repeats])
    results = evaluate_many(probe, jobs, cfg.sensitivity.workers)
    layers_end = len(repeats) + len(candidate_rows)
    repeated, again = results[:len(repeats)], results[layers_end:]
    layer_results = results[len(repeats):layers_end]
    noise = reference_noise(reference, repeated)
    by_layer = {row["layer"]: result for row, result in zip(candidate_rows, layer_results)}
    own_noise = drop_noise(reference, repeated, {
        name: [by_layer[name], *again[i * len(repeats):(i + 1) * len(repeats)]]
        for i, name in enumerate(noisy)})
    if own_noise:
        log.info("sensitivity: the drops' own noise (%d layers, %d batch orders): accuracy "
                 "std %.4f, against the reference's %.4f", len(noisy), own_noise["repeats"],
                 own_noise["accuracy_std"], noise["accuracy_std"])
    rows = []
    for row, result in zip(candidate_rows, layer_results):
        rows.append({**row, **result, **metric_drops(reference, result)})
        log.info("  %-18s drop %+.4f  loss %+.4f  (%.1f s)", row["layer"],
                 rows[-1]["accuracy_drop"], rows[-1]["loss_increase"], result["seconds"])
    table = pd.DataFrame(rows)[list(COLUMNS)]
    if probe.kept_pretraining or probe.kept_finetunes:
        log.info("sensitivity: resumed: %s and %d of %d fine-tunes were kept by an earlier "
                 "estimate or search of this key", "the pretraining" if probe.kept_pretraining
                 else "no pretraining", probe.kept_finetunes, 1 + len(results))
    record = {"key": cache_key(cfg), "key_fields": key_fields(cfg),
              "dense": dense_totals(probe.dense),
              "pretrained": {**probe.pretrained, "seconds": probe.pretrain_seconds},
              "reference": reference, "noise": noise, "drop_noise": own_noise,
              "validation_images": int(probe.split.val_labels.numel()),
              "training_images": int(probe.split.train_labels.numel()),
              # this process's time; work an earlier estimate or search kept is not in it
              "seconds": time.perf_counter() - started,
              "resumed": {"pretraining": probe.kept_pretraining,
                          "fine_tunes": probe.kept_finetunes},
              "config": OmegaConf.to_container(cfg, resolve=True),
              "provenance": provenance()}
    return table, record


# ----------------------------------------------------------------------------- uses
def choose_layers(cfg: DictConfig) -> list[str] | str | None:
    """The layers ``cfg.selection`` converts (:func:`choose_layers_and_table` without the
    table's name)."""
    return choose_layers_and_table(cfg)[0]


def choose_layers_and_table(cfg: DictConfig
                            ) -> tuple[list[str] | str | None, dict[str, Any]]:
    """The layers ``cfg.selection`` converts, resolved before any network is built: the
    fixed policies directly; the ordered ones from their candidate table (the cached or
    newly estimated sensitivity table, or the cost model's savings for the baselines).
    With them, which sensitivity table chose them (its cache key and checksum,
    ``sensitivity_key`` and ``sensitivity_table``; ``None`` for a policy that reads none),
    taken from the table used, so a run records it even when the table could not be cached;
    and under a time budget which layer times (``measured_time``: their cache key, device
    and times, as :func:`~basisconv.time_budget.with_measured_time` gives them; else None).

    It leaves torch's global random state as it found it (the models it builds to count
    costs, and an estimate, draw from it), so a run's initial weights depend on its seed
    alone, not on how its layers were chosen."""
    selection = cfg.selection
    made_from: dict[str, Any] = {"sensitivity_key": None, "sensitivity_table": None,
                                 "measured_time": None}
    if selection.policy not in ORDERED_POLICIES:
        return fixed_layers(selection), made_from
    dense = dense_model(cfg)
    with torch.random.fork_rng():  # an estimate draws from every generator it uses
        if selection.policy in SENSITIVITY_POLICIES:
            check_against_the_model(cfg)  # (a count that cannot be chosen: before an estimate)
            table, record = sensitivity_table(cfg)
            made_from.update(sensitivity_key=cache_key(cfg),
                             sensitivity_table=record.get("table_sha256"))
        else:
            table = candidate_table(cfg, dense)
        table, totals = with_measured_time(cfg, table, dense_totals(dense))
        made_from["measured_time"] = table.attrs.get("measured_time")
        chosen = pick_layers(selection, table, totals)
    return chosen_or_dense(selection, chosen), made_from


def run_sensitivity(cfg: DictConfig, output_dir: str | Path) -> dict:
    """``scripts/sensitivity.py``: the (cached or new) sensitivity table of ``cfg`` and the
    layers ``cfg.selection`` chooses from it; writes ``sensitivity.csv`` and the run record
    (``run.json``, kind ``sensitivity``: summary and table) to ``output_dir``, and logs the
    same to wandb. Returns the record (``basisconv.analysis.sensitivity`` draws it)."""
    distributed.refuse_torchrun("the sensitivity estimate (scripts/sensitivity.py)")
    output_dir = Path(output_dir)
    with say_the_work_is_kept(cfg, "the sensitivity estimate"):
        with folder_lock(output_dir, what="sensitivity run"), loop.settings_restored():
            refuse_other_kind(output_dir, "sensitivity", "the sensitivity estimate")
            # (the same estimate with another selection there only chooses anew from it;
            # the search's own keys are unread here)
            refuse_other_settings(OmegaConf.to_container(cfg, resolve=True), output_dir,
                                  "sensitivity", "estimate",
                                  unread=("selection.",
                                          *(f"sensitivity.{key}" for key in SEARCH_ONLY)))
            # in the run's threads, which its record then names (else it names the process's
            # default, not the threads a time budget's layers were timed on)
            loop.use_threads(cfg.trainer)
            return _run_sensitivity(cfg, output_dir)


def _run_sensitivity(cfg: DictConfig, output_dir: Path) -> dict:
    check_against_the_model(cfg, estimate=True)  # (the choice it marks: before an estimate)
    table, record = sensitivity_table(cfg)
    check_estimate_record(cfg, record)
    timed, dense = with_measured_time(cfg, table, record["dense"])
    if cfg.selection.policy in ORDERED_POLICIES:
        chosen = pick_layers(cfg.selection, timed, dense)
    else:  # none, all or list: the candidates they convert (all of them, for all)
        chosen = fixed_candidates(cfg.selection, dense_model(cfg), table)
    write_bytes_atomic(output_dir / TABLE, table_csv(table))
    config = OmegaConf.to_container(cfg, resolve=True)
    picked = table[table["layer"].isin(chosen)]
    summary = {"key": record["key"], "cache_dir": str(cache_dir(cfg)),
               "cache_hit": record["cache_hit"], "estimate_seconds": record["seconds"],
               "resumed": record.get("resumed"),  # what of the estimate an earlier one did
               "reference": record["reference"], "pretrained": record["pretrained"],
               "noise": record.get("noise"), "drop_noise": record.get("drop_noise"),
               "dense": record["dense"], "policy": cfg.selection.policy, "chosen": chosen,
               "params_saved": int(picked["params_saved"].sum()),
               "flops_saved": int(picked["flops_saved"].sum())}
    if "time" in dense:  # measured for this choice; the cached table stays as estimated
        summary["measured_time"] = timed.attrs["measured_time"]
    run = RunRecord("sensitivity", config, status="complete", results={
        "estimate_provenance": record["provenance"], "sensitivity": summary,
        "table": table.to_dict("records"),
        # the cache's own record: a published copy of this run refills another machine's cache
        "cache": {k: v for k, v in record.items() if k != "cache_hit"}})
    write_record(output_dir, run)
    publish(run.as_dict(), cfg.publish, output_dir)
    tracker = Tracker(cfg.logger, config, output_dir, name=output_dir.name)
    try:
        for row in table.sort_values("position").to_dict("records"):
            tracker.log({f"sensitivity/{k}": row[k] for k in
                         ("accuracy_drop", "loss_increase", "params_saved", "flops_saved")},
                        step=int(row["position"]))
        tracker.table("sensitivity/table", table)
        tracker.summary({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
    finally:
        tracker.finish()
    return run.as_dict()
