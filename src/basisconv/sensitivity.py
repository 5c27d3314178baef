"""The sensitivity table of a config, from the cache or estimated now, and what uses it:
the layers a run converts (``choose_layers``) and ``scripts/sensitivity.py``
(``run_sensitivity``: the table, the layers chosen from it, their record and wandb).

A layer's sensitivity is its accuracy drop (and loss increase) once that layer alone is
converted and fine-tuned, against the dense model fine-tuned the same way (the estimate,
our reading of the paper's layer-wise sensitivity analysis:
:mod:`basisconv.sensitivity_estimate`). The table is cached under a key made of everything
that changes it (model, basis, data, the estimate's budget, the training recipe, the
seed), and reused by later runs; a changed key computes a new table, and computing is
always logged (the key: :mod:`basisconv.sensitivity_key`; the cache, how a kept table is
found and checked: :mod:`basisconv.sensitivity_cache`; a table restored from its published
record instead: :mod:`basisconv.sensitivity_published`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
from pathlib import Path
from typing import Any, Iterator, TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf

from . import distributed, execution, progress
from .candidates import dense_totals
from .config import SEARCH_ONLY
from .data import data_read
from .errors import ConfigError, Stopped, WorkerFailed, memory_said
from .model_checks import check_against_the_model
from .network import architecture_digest
from .records import (RunRecord, folder_lock, publish, refuse_other_kind, write_bytes_atomic,
                      write_record)
from .same_run import refuse_other_settings
from .selection import chosen_or_dense, fixed_candidates, fixed_layers, pick_layers
from .selection_checks import ORDERED_POLICIES, SENSITIVITY_POLICIES
from .sensitivity_cache import (RECORD, TABLE, cache, check_estimate_record, code_note,
                                load_cached, table_csv, table_from_csv)
from .sensitivity_estimate import candidate_table, dense_model, estimate
from .sensitivity_key import cache_dir, cache_key
from .sensitivity_published import published_differs, restore_published, say_a_missing_record
from .time_budget import with_measured_time
from .tracking import Tracker

if TYPE_CHECKING:  # pandas (half a second) is imported where a table is made: a process
    import pandas as pd  # that makes none (most training runs) starts without it

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- table
@contextlib.contextmanager
def say_the_work_is_kept(cfg: DictConfig, what: str) -> Iterator[None]:
    """A stop of ``what`` (the estimate, the exhaustive search), a worker process's death,
    or memory that ran out (in a worker too), says that its finished fine-tunes are kept and
    the same command continues from them (a stop said only "stopped by SIGTERM", and a dead
    worker's line advised fewer workers: both read as all of it lost)."""
    def kept() -> str:  # (only when said: the key hashes a source checkpoint's bytes)
        folder = cache_dir(cfg)
        # a recompute that began cleared the old table and work: the same command (true)
        # would clear this one's work too, and start over
        command = ("the same command with sensitivity.recompute=false"
                   if str(folder) in RECOMPUTING else "the same command")
        return f"its finished work is kept in {folder}, and {command} continues from it"
    def out_of_memory() -> str:
        workers = cfg.sensitivity.workers
        fewer = f"or fewer sensitivity.workers (now {workers}); " if workers > 1 else ""
        return f"{fewer}{what} stopped; {kept()}"
    try:
        with memory_said(out_of_memory):
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


def sensitivity_table(cfg: DictConfig, *, recompute: bool | None = None
                      ) -> tuple[pd.DataFrame, dict]:
    """The sensitivity table of ``cfg``: from the cache when there is one for its key,
    otherwise estimated now (logged, and cached for the next run)."""
    recompute = cfg.sensitivity.recompute if recompute is None else recompute
    cached = _cached_before_the_lock(cfg, recompute)
    if cached is None:
        folder = cache_dir(cfg)
        with _estimate_lock(folder):
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
        with _estimate_lock(cache_dir(cfg)):
            return restore_published(cfg)
    return cached


def _estimate_lock(folder: Path) -> contextlib.AbstractContextManager:
    """The lock of a key's cache ``folder``: one estimate per key at a time (a second
    process waits, then reuses its table), and a published table restored there under it."""
    return folder_lock(folder, wait=True, what="sensitivity estimate",
                       key="sensitivity.cache_dir")


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
        with folder_lock(output_dir, what="sensitivity run"), execution.settings_restored():
            refuse_other_kind(output_dir, "sensitivity", "the sensitivity estimate")
            # (the same estimate with another selection there only chooses anew from it;
            # the search's own keys are unread here)
            refuse_other_settings(OmegaConf.to_container(cfg, resolve=True), output_dir,
                                  "sensitivity", "estimate",
                                  unread=("selection.",
                                          *(f"sensitivity.{key}" for key in SEARCH_ONLY)))
            # in the run's threads, which its record then names (else it names the process's
            # default, not the threads a time budget's layers were timed on)
            execution.use_threads(cfg.trainer)
            return _run_sensitivity(cfg, output_dir)


def _run_sensitivity(cfg: DictConfig, output_dir: Path) -> dict:
    # the folder data.root names, first: one that names none here (~nosuchuser/...) is
    # refused before anything is written (found in review: after the table, when cached)
    named = data_read(cfg.data)
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
    run.provenance["data"] = _data_this_run_read(record, named)
    write_record(output_dir, run)
    publish(run.as_dict(), cfg.publish, output_dir)
    tracker = Tracker(cfg.logger, config, output_dir, name=output_dir.name)
    failed = True  # (a stop while the table is sent: a wandb run without all of it)
    try:
        for row in table.sort_values("position").to_dict("records"):
            tracker.log({f"sensitivity/{k}": row[k] for k in
                         ("accuracy_drop", "loss_increase", "params_saved", "flops_saved")},
                        step=int(row["position"]))
        tracker.table("sensitivity/table", table)
        tracker.summary({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        failed = False
    finally:
        tracker.finish(failed=failed)
    return run.as_dict()


def _data_this_run_read(record: dict, named: dict[str, str]) -> dict[str, str]:
    """A sensitivity run's ``provenance.data``: its estimate's, when it made the estimate
    (the folder its probe read, :func:`~basisconv.data.data_read`); else, a cached table
    reused, it read no images, and it is ``named``, the folder its ``data.root`` named where
    it started alone (the estimate's own is in ``estimate_provenance``). A run again in its
    folder compares its own ``data.root`` with it (``same_run.refuse_other_settings``)."""
    made = (record.get("provenance") or {}).get("data")
    if not record["cache_hit"] and isinstance(made, dict):
        return made
    return named
