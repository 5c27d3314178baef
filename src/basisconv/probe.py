"""The probe every sensitivity estimate and exhaustive search shares: a class-balanced
held-out split of the *training* images (the test set is never used to choose layers),
a briefly trained dense model, and one fine-tune recipe. ``Probe.evaluate_layers(names)``
converts those layers of a copy of the dense model, fine-tunes it and measures it on the
held-out images. Many fine-tunes in worker processes at once are
:mod:`basisconv.probe_pool`'s; the spread of their results over batch orders,
:mod:`basisconv.noise`'s.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from . import execution, loop, optim
from .checkpoint import load_source_weights
from .data import TensorBatches, data_read, prepare_data, stratified_subset
from .errors import TrainingDiverged
from .network import build_dense
from .penalties import basis_penalty
from .progress import PROBE_BASIS, Progress
from .records import is_measurement
from .surgery import CONFIG_KEYS, apply_basis, basis_report

log = logging.getLogger(__name__)


@dataclass
class Split:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor


def holdout_split(images: torch.Tensor, labels: torch.Tensor, val_size: int | float,
                  seed: int) -> Split:
    """A class-balanced held-out part of the training images to measure drops on."""
    # one training image at least is left to fine-tune on, and a refusal's range says so
    # (else it says n images, and n is then refused for leaving none)
    val = stratified_subset(labels, val_size, seed + 1, key="sensitivity.val_size", leave=1)
    keep = torch.ones(labels.numel(), dtype=torch.bool, device=labels.device)
    keep[val] = False
    return Split(images[keep], labels[keep], images[val], labels[val])


@contextlib.contextmanager
def diverging(what: str, lr_key: str, lr: float, note: str = ""):
    """A loss that becomes NaN or infinite in the block is :class:`TrainingDiverged` naming
    the training (``what``) and its learning rate (``lr_key``)."""
    try:
        yield
    except TrainingDiverged as err:
        raise TrainingDiverged(f"sensitivity: {what} diverged (its {err.quantity} became "
                               f"{err.value} with {lr_key}={lr}); lower {lr_key}{note}",
                               err.quantity, err.value, lr_key) from None


class Probe:
    """What every estimate shares: the data split, the briefly trained dense model, and
    the fine-tune recipe. ``evaluate_layers(names)`` converts those layers of a copy of the
    dense model, fine-tunes and measures it (one layer for the sensitivity table, several
    for the exhaustive search)."""

    def __init__(self, cfg: DictConfig, dense_state: dict | None = None,
                 keep_in: str | Path | None = None):
        """``dense_state``: the briefly trained dense model's weights, from another
        process's probe (a worker of :func:`~basisconv.probe_pool.evaluate_many`), instead
        of pretraining. ``keep_in``: a folder (the table's cache folder) where the
        pretrained dense model and every finished fine-tune are kept, and found again by
        a later probe of the same settings (:mod:`basisconv.progress`): a stopped
        estimate resumes there."""
        self.cfg = cfg
        self.seed = cfg.sensitivity.seed
        self.runtime = execution.setup(cfg.trainer, self.seed)
        self.device, self.memory_format = self.runtime.device, self.runtime.memory_format
        self.graphed = execution.use_cuda_graphs(cfg.trainer, self.device)
        data = prepare_data(cfg.data, self.seed)
        # what it read, for the provenance of the records made from it (the estimate's,
        # the search's): a relative data.root names a folder only from where it started
        self.data_read = data_read(cfg.data, data)
        self.split = holdout_split(data.train_images, data.train_labels,
                                   cfg.sensitivity.val_size, self.seed)
        for name in ("train_images", "train_labels", "val_images", "val_labels"):
            setattr(self.split, name, getattr(self.split, name).to(self.device))
        self.dense = build_dense(cfg)
        self.dense.to(self.device, memory_format=self.memory_format)
        self.progress = None if keep_in is None else Progress(keep_in, cfg, self.device)
        self.kept_pretraining, self.kept_finetunes = False, 0  # found kept, not redone
        self.pretrain_seconds = self._dense_weights(dense_state)
        if self.progress is not None:
            self.progress.start_from(self.dense)
        with diverging("the dense pretraining", "trainer.lr", cfg.trainer.lr):
            self.pretrained = self.measure(self.dense)

    def _dense_weights(self, dense_state: dict | None) -> float:
        """Give the dense model its weights, from the first that has them: ``dense_state``
        (a worker's), ``sensitivity.source_checkpoint``, or a pretraining (this probe's,
        or the one an earlier probe kept). Returns the pretraining's seconds (a load's,
        for the first two)."""
        start = time.perf_counter()
        if dense_state is not None:
            self.dense.load_state_dict(dense_state)
        elif self.cfg.sensitivity.source_checkpoint:
            self._load_source_checkpoint(self.cfg.sensitivity.source_checkpoint)
        else:
            return self._pretrain_or_take_kept()
        return time.perf_counter() - start

    def _load_source_checkpoint(self, source: str) -> None:
        """The dense weights of a trained run's checkpoint, said with what they have seen."""
        load_source_weights(self.dense, source, "sensitivity.source_checkpoint")
        log.info("sensitivity: dense weights from %s", source)
        # the split keeps them out of this probe's training only: a baseline trained on the
        # training images (a training run's checkpoint) has seen them
        log.warning("sensitivity: the dense weights of %s were trained elsewhere, most "
                    "likely on the %d held-out training images too; the drops are "
                    "measured on images they may have memorised (pretrain here, "
                    "sensitivity.source_checkpoint=null, to hold them out)",
                    source, self.split.val_labels.numel())

    def _pretrain_or_take_kept(self) -> float:
        """Pretrain the dense model briefly (``sensitivity.pretrain_epochs``, the trainer's
        recipe, warm-up included), and keep it for a later probe; or take the one an
        earlier probe of the same settings kept (``kept_pretraining``: a stopped estimate
        does not pretrain again). Returns the pretraining's seconds, also when an earlier
        probe did it."""
        start = time.perf_counter()
        kept = self.progress.dense(self.dense) if self.progress else None
        if kept is not None:
            state, seconds = kept
            self.dense.load_state_dict(state)
            self.kept_pretraining = True
            log.info("sensitivity: the dense model pretrained before, kept in %s",
                     self.progress.root)
            return seconds
        trainer = self.cfg.trainer
        with diverging("the dense pretraining", "trainer.lr", trainer.lr):
            self.train(self.dense, self.cfg.sensitivity.pretrain_epochs, trainer.lr,
                       trainer.schedule, trainer.warmup_fraction)
        seconds = time.perf_counter() - start
        if self.progress is not None:
            self.progress.keep_dense(self.dense, seconds)
        return seconds

    def batches(self, train: bool, seed: int | None = None) -> TensorBatches:
        s, trainer = self.split, self.cfg.trainer
        if train:
            return self.runtime.batches(s.train_images, s.train_labels, trainer.batch_size,
                                        augment=self.cfg.data,
                                        seed=self.seed if seed is None else seed)
        return self.runtime.batches(s.val_images, s.val_labels, trainer.eval_batch_size)

    def train(self, model: nn.Module, epochs: int, lr: float, schedule: str,
              warmup_fraction: float, batch_seed: int | None = None) -> None:
        """``trainer``'s recipe with these epochs, peak lr and schedule: the pretraining
        keeps the trainer's own warm-up, a fine-tune (a short cosine) has none."""
        if epochs == 0:
            return
        recipe = OmegaConf.merge(self.cfg.trainer, {
            "epochs": epochs, "lr": lr, "schedule": schedule, "warmup_fraction": warmup_fraction})
        batches = self.batches(train=True, seed=batch_seed)
        optimizer = optim.build_optimizer(model, recipe)
        scheduler = optim.build_scheduler(optimizer, recipe, len(batches))
        scaler = optim.grad_scaler(self.runtime.amp_dtype, self.device)
        # a fine-tune decays a converted layer's weight as training would (frobenius_decay;
        # its L1 penalty is a training run's choice, not the estimate's)
        penalty = basis_penalty(model, recipe.weight_decay,
                                frobenius_decay=self.cfg.basis.get("frobenius_decay", False))
        for _ in range(epochs):
            loop.train_one_epoch(model, batches, optimizer, scheduler, scaler=scaler,
                                 amp_dtype=self.runtime.amp_dtype, extra_loss=penalty,
                                 label_smoothing=recipe.label_smoothing, graphed=self.graphed)

    def measure(self, model: nn.Module) -> dict[str, float]:
        stats = loop.evaluate(model, self.batches(train=False), amp_dtype=self.runtime.amp_dtype,
                              graphed=self.graphed)
        loop.check_finite(stats.loss, "held-out loss")  # a NaN is never put in a table
        return {"accuracy": stats.accuracy, "loss": stats.loss}

    def converted(self, names: list[str]) -> nn.Module:
        """A copy of the dense model with ``names`` converted as ``cfg.basis`` says, and as
        a training run converts them: several same-shaped layers of a subset share one
        coefficient matrix under ``basis.share_coefficients`` (one layer has none to share)."""
        torch.manual_seed(self.seed)
        model = copy.deepcopy(self.dense)
        if names:  # the options kept work is found under (progress.PROBE_BASIS)
            options = {key: self.cfg.basis.get(key) for key in PROBE_BASIS if key != "size"}
            options["fit"] = options.get("fit") or "pivots"
            apply_basis(model, names, self.cfg.basis.size, inplace=True, convert=True,
                        keys=CONFIG_KEYS, **options)
            model.to(self.device, memory_format=self.memory_format)
        return model

    def kept(self, names: list[str], batch_seed: int | None = None) -> dict[str, Any] | None:
        """The result of this fine-tune that an earlier probe of the same settings kept
        (counted in ``kept_finetunes``), or ``None``."""
        result = None if self.progress is None else self.progress.result(names, batch_seed)
        lacking = [] if result is None else [
            key for key in RESULT_FIELDS if not is_measurement(result.get(key))]
        if lacking:  # a damaged kept file of the right job ended the table in a KeyError
            log.warning("sensitivity: the kept result of %s lacks %s (damaged); computing "
                        "it again", names or "the dense reference", ", ".join(lacking))
            result = None
        self.kept_finetunes += result is not None
        return result

    def evaluate_layers(self, names: list[str], batch_seed: int | None = None) -> dict[str, Any]:
        """Convert ``names`` (none: the dense reference), fine-tune, measure. Every call
        fine-tunes on the same batches unless ``batch_seed`` asks for another order. A
        result kept by an earlier probe of the same settings is returned as it was."""
        kept = self.kept(names, batch_seed)
        if kept is not None:
            return kept
        return self.keep(names, batch_seed, self.evaluate_anew(names, batch_seed))

    def keep(self, names: list[str], batch_seed: int | None, result: dict[str, Any]
             ) -> dict[str, Any]:
        """Keep a finished fine-tune's ``result`` for a later probe (if this one keeps)."""
        if self.progress is not None:
            self.progress.keep(names, batch_seed, result)
        return result

    def evaluate_anew(self, names: list[str], batch_seed: int | None) -> dict[str, Any]:
        """:meth:`evaluate_layers` without looking for a kept result or keeping this one:
        for a caller that looks and keeps itself (:mod:`basisconv.probe_pool`, which
        looks them all up before it starts a worker)."""
        start = time.perf_counter()
        model = self.converted(names)
        errors = [row["reconstruction_error"] for row in basis_report(model)]
        converted = self.measure(model)
        sens = self.cfg.sensitivity
        with diverging("a fine-tune", "sensitivity.finetune_lr", sens.finetune_lr,
                       f" (the dense model it starts from has held-out accuracy "
                       f"{self.pretrained['accuracy']:.3f}; if that is chance, lower trainer.lr, "
                       f"which pretrained it)"):
            self.train(model, sens.finetune_epochs, sens.finetune_lr, "cosine", 0.0, batch_seed)
            after = self.measure(model)
        return {"reconstruction_error": max(errors) if errors else 0.0,
                "converted_accuracy": converted["accuracy"], **after,
                "seconds": time.perf_counter() - start}


#: What a fine-tune's result holds (:meth:`Probe.evaluate_anew`), each a measurement: a
#: kept result without one is computed again.
RESULT_FIELDS = ("reconstruction_error", "converted_accuracy", "accuracy", "loss", "seconds")
