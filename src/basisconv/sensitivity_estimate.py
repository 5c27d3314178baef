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
per layer (or per subset of layers).

Apart from :mod:`basisconv.sensitivity`, which calls it when no table is cached for the
key (under the key's lock, then caches what it returns) and chooses layers from the
table: the estimate alone is the part that trains, and it neither reads nor writes the
cache's table (its key and folder come from :mod:`basisconv.sensitivity_key`, where a
stopped estimate's finished fine-tunes are kept); nothing here calls back into
:mod:`basisconv.sensitivity`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from . import execution
from .candidates import dense_totals, layer_savings
from .network import build_dense
from .noise import drop_noise, reference_noise, spread_layers
from .probe import Probe
from .probe_pool import evaluate_many
from .records import provenance
from .selection import metric_drops
from .sensitivity_cache import COLUMNS
from .sensitivity_key import cache_dir, cache_key, key_fields

if TYPE_CHECKING:  # pandas (half a second) is imported where a table is made: a process
    import pandas as pd  # that makes none (most training runs) starts without it

log = logging.getLogger(__name__)


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
    or a basis too large for a layer, is a :class:`~basisconv.errors.ConfigError` here."""
    return layer_savings(dense_model(cfg) if dense is None else dense, cfg.basis,
                         list(cfg.sensitivity.layers), batch=cfg.trainer.batch_size)


def estimate(cfg: DictConfig) -> tuple[pd.DataFrame, dict]:
    """Estimate the sensitivity table of ``cfg`` (no cache; see
    :func:`~basisconv.sensitivity.sensitivity_table`)."""
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
            "provenance": {**provenance(), "data": probe.data_read}}
