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
(the probe that does steps 1-3 is :mod:`basisconv.probe`, its workers
:mod:`basisconv.probe_pool`, the noise's statistics :mod:`basisconv.noise`).
Cost: one brief training plus one short fine-tune per layer, instead of a full training
per layer (or per subset of layers). The table is cached under a key made of everything
that changes it (model, basis, data, the budget above, the training recipe, the seed), and
reused by later runs; a changed key computes a new table, and computing is always logged
(the key and the cache, how a kept table is found and checked:
:mod:`basisconv.sensitivity_cache`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TYPE_CHECKING

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from . import distributed, execution, progress
from .candidates import dense_totals, layer_savings
from .checkpoint import refuse_other_settings
from .config import SEARCH_ONLY
from .errors import ConfigError, Stopped, WorkerFailed, memory_said
from .model_checks import check_against_the_model
from .network import architecture_digest, build_dense
from .noise import drop_noise, reference_noise, spread_layers
from .probe import Probe
from .probe_pool import evaluate_many
from .records import (RunRecord, folder_lock, provenance, publish, refuse_other_kind,
                      write_bytes_atomic, write_record)
from .selection import (chosen_or_dense, fixed_candidates, fixed_layers, metric_drops,
                        pick_layers)
from .selection_checks import ORDERED_POLICIES, SENSITIVITY_POLICIES
from .sensitivity_cache import (COLUMNS, RECORD, TABLE, cache, cache_dir, cache_key,
                                check_estimate_record, code_note, key_fields, load_cached,
                                published_differs, restore_published, say_a_missing_record,
                                table_csv, table_from_csv)
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
    with execution.settings_restored():
        return _estimate(cfg)


def _estimate(cfg: DictConfig) -> tuple[pd.DataFrame, dict]:
    """The steps of the module's docstring: the candidates, the probe (its dense model
    pretrained, or loaded), the dense reference, then one batch of fine-tunes
    (:class:`FineTunePlan`) whose results make the table and the record's noise."""
    started = time.perf_counter()
    # before the pretraining: a layer name the model lacks or a basis.size too large for a
    # layer is found in seconds, not after it
    candidates = candidate_table(cfg)
    probe = Probe(cfg, keep_in=cache_dir(cfg))  # a stopped estimate resumes from what it kept
    reference = probe.evaluate_layers([])
    log.info("sensitivity: dense after pretraining %.4f, reference after fine-tuning %.4f "
             "(held-out accuracy); %d candidate layers", probe.pretrained["accuracy"],
             reference["accuracy"], len(candidates))
    plan = FineTunePlan.of(cfg, probe.seed, candidates["layer"].tolist())
    fine_tunes = plan.run(probe, cfg.sensitivity.workers)
    noise = reference_noise(reference, fine_tunes.repeats)
    own_noise = drop_noise(reference, fine_tunes.repeats, fine_tunes.noise_layers)
    if own_noise:
        log.info("sensitivity: the drops' own noise (%d layers, %d batch orders): accuracy "
                 "std %.4f, against the reference's %.4f", len(plan.noise_layers),
                 own_noise["repeats"], own_noise["accuracy_std"], noise["accuracy_std"])
    table = _drops_table(candidates, fine_tunes.layers, reference)
    if probe.kept_pretraining or probe.kept_finetunes:
        log.info("sensitivity: resumed: %s and %d of %d fine-tunes were kept by an earlier "
                 "estimate or search of this key", "the pretraining" if probe.kept_pretraining
                 else "no pretraining", probe.kept_finetunes, 1 + len(plan.jobs()))
    return table, _estimate_record(cfg, probe, reference, noise, own_noise, started)


@dataclass(frozen=True)
class FineTunePlan:
    """The estimate's one batch of independent fine-tunes after the reference's, each a
    job ``(layers converted, batch seed)`` (``None``: the reference's batch order), run in
    the order of :meth:`jobs`: the dense reference again under each other batch order (the
    noise yardstick), each candidate layer under the reference's order (the table), and a
    few layers again under each of the other orders (the drops' own noise,
    ``sensitivity.drop_noise_layers``). Each job's batch seed decides its numbers, and a
    stopped estimate finds its kept result by the job."""

    repeat_seeds: list[int]  # the batch orders of the reference's repeats
    layers: list[str]        # the candidate layers, in model order
    noise_layers: list[str]  # the layers fine-tuned again under each repeat's order

    @classmethod
    def of(cls, cfg: DictConfig, seed: int, layers: list[str]) -> FineTunePlan:
        """The plan for ``layers`` of a probe of ``seed``: ``sensitivity.noise_repeats``
        orders after the probe's own, and the drop-noise layers spread over ``layers`` by
        position (:func:`spread_layers`), measured only where there are repeats."""
        repeat_seeds = [seed + 1 + i for i in range(cfg.sensitivity.noise_repeats)]
        noise_layers = (spread_layers(layers, cfg.sensitivity.get("drop_noise_layers") or 0)
                        if repeat_seeds else [])
        return cls(repeat_seeds, layers, noise_layers)

    def jobs(self) -> list[tuple[list[str], int | None]]:
        """The fine-tunes, in the order they run (and are kept)."""
        return ([([], seed) for seed in self.repeat_seeds]
                + [([name], None) for name in self.layers]
                + [([name], seed) for name in self.noise_layers for seed in self.repeat_seeds])

    def run(self, probe: Probe, workers: int) -> FineTuneResults:
        """Every job's result (:func:`evaluate_many`, in ``workers`` processes), sorted by
        what the job is for."""
        jobs = self.jobs()
        results = {(tuple(names), seed): result for (names, seed), result
                   in zip(jobs, evaluate_many(probe, jobs, workers), strict=True)}
        layers = {name: results[(name,), None] for name in self.layers}
        return FineTuneResults(
            repeats=[results[(), seed] for seed in self.repeat_seeds], layers=layers,
            noise_layers={name: [layers[name], *(results[(name,), seed]
                                                 for seed in self.repeat_seeds)]
                          for name in self.noise_layers})


@dataclass(frozen=True)
class FineTuneResults:
    """A :class:`FineTunePlan`'s results (each :meth:`Probe.evaluate_layers`'s dict)."""

    repeats: list[dict]  # the dense reference under each repeat's order
    layers: dict[str, dict]  # each candidate layer under the reference's order
    #: each drop-noise layer's fine-tunes: under the reference's order (its table one),
    #: then under each repeat's order, as :func:`drop_noise` pairs them
    noise_layers: dict[str, list[dict]]


def _drops_table(candidates: pd.DataFrame, results: dict[str, dict], reference: dict
                 ) -> pd.DataFrame:
    """The sensitivity table: each candidate's row (what converting it saves), its
    fine-tune's ``results`` and their drops against the ``reference``; each layer logged."""
    import pandas as pd
    rows = []
    for candidate in candidates.to_dict("records"):
        result = results[candidate["layer"]]
        rows.append({**candidate, **result, **metric_drops(reference, result)})
        log.info("  %-18s drop %+.4f  loss %+.4f  (%.1f s)", candidate["layer"],
                 rows[-1]["accuracy_drop"], rows[-1]["loss_increase"], result["seconds"])
    return pd.DataFrame(rows)[list(COLUMNS)]


def _estimate_record(cfg: DictConfig, probe: Probe, reference: dict, noise: dict | None,
                     own_noise: dict | None, started: float) -> dict:
    """What the cache keeps beside the table (the fields its readers take:
    :data:`~basisconv.sensitivity_cache.RECORD_FIELDS`)."""
    return {"key": cache_key(cfg), "key_fields": key_fields(cfg),
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
