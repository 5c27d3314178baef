"""How much each convolution layer's accuracy suffers from becoming a basis convolution,
estimated fast (the paper's layer-wise sensitivity analysis; the procedure below is our
reading of it, see ``../shared/paper.md``).

The estimate, for a model, a basis size and a data config:

1. train the dense model briefly (``sensitivity.pretrain_epochs``), or load a trained
   dense checkpoint (``sensitivity.source_checkpoint``);
2. fine-tune a copy of it, still dense, for ``sensitivity.finetune_epochs`` with a short
   cosine schedule: the *reference*;
3. for every candidate layer: convert that one layer of a fresh copy to basis form
   (``BasisConv2d.from_conv``, least-squares fit), fine-tune it exactly as the reference
   (same steps, same batches: common random numbers, so the batch order adds no noise to
   the comparison), and measure accuracy and loss on a held-out split of the *training*
   images (the test set is never used to choose layers).

A layer's sensitivity is its accuracy drop (and loss increase) against the reference.
Cost: one brief training plus one short fine-tune per layer, instead of a full training
per layer (or per subset of layers). The table is cached under a key made of everything
that changes it (model, basis, data, the budget above, the training recipe, the seed), and
reused by later runs; a changed key computes a new table, and computing is always logged.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from . import distributed
from .cost import model_cost
from .data import TensorBatches, stratified_subset
from .errors import ConfigError
from .models import build_model
from .checkpoint import load_source_weights
from .records import provenance, write_json_atomic, write_text_atomic
from .surgery import apply_basis, basis_report, select_layers

log = logging.getLogger(__name__)

TABLE = "sensitivity.csv"
RECORD = "sensitivity.json"
COLUMNS = ("layer", "position", "shape", "num_basis", "reconstruction_error",
           "converted_accuracy", "accuracy", "loss", "accuracy_drop", "loss_increase",
           "params_saved", "flops_saved", "forward_flops_saved", "seconds")


# ----------------------------------------------------------------------------- savings
def layer_savings(model: nn.Module, basis: DictConfig,
                  layers: str | Iterable[str] = "all") -> pd.DataFrame:
    """Per candidate layer (among ``layers``, in model order): what converting it alone
    saves, by the cost model, per image: parameters, training FLOPs (forward + backward)
    and forward FLOPs. Candidates are the layers where a basis of this size saves compute;
    converting several layers saves the sum (layer costs are independent)."""
    names = list(select_layers(model, layers))
    dense = {c.name: c for c in model_cost(model).layers}
    converted = apply_basis(model, names, basis.size, inplace=False, convert=False,
                            only_where_saves=True, combine=basis.combine,
                            coefficient_rank=basis.coefficient_rank)
    basis_costs = {c.name: c for c in model_cost(converted).layers}
    rows = []
    for row in basis_report(converted):
        name = row["name"]
        before, after = dense[name], basis_costs[name]
        rows.append({"layer": name, "position": names.index(name),
                     "shape": f"{row['in_channels']}->{row['out_channels']} "
                              f"k{row['kernel_size'][0]}",
                     "num_basis": row["num_basis"],
                     "params_saved": before.params - after.params,
                     "flops_saved": before.total_flops - after.total_flops,
                     "forward_flops_saved": before.forward_flops - after.forward_flops})
    if not rows:
        raise ConfigError(f"no candidate layer: at basis.size={basis.size} no selected layer "
                          f"saves compute; choose a smaller basis.size")
    return pd.DataFrame(rows)


def dense_totals(model: nn.Module) -> dict[str, int]:
    """Per-image parameters and training FLOPs of the dense model (the budget's 100 %)."""
    cost = model_cost(model)
    return {"params": cost.params, "flops": cost.total_flops,
            "forward_flops": cost.forward_flops}


# ----------------------------------------------------------------------------- cache key
def key_fields(cfg: DictConfig) -> dict[str, Any]:
    """Everything that changes a sensitivity table (and nothing that does not, such as
    the data root, the logger or speed options)."""
    def pick(node: DictConfig, keys: list[str]) -> dict[str, Any]:
        values = OmegaConf.to_container(node, resolve=True)
        return {k: values[k] for k in keys}

    return {
        "model": pick(cfg.model, ["name", "width"]),
        "basis": pick(cfg.basis, ["size", "combine", "coefficient_rank"]),
        "data": pick(cfg.data, ["name", "train_subset", "crop_padding", "flip",
                                "synthetic_train", "num_classes"]),
        "sensitivity": pick(cfg.sensitivity, ["pretrain_epochs", "source_checkpoint",
                                              "finetune_epochs", "finetune_lr", "val_size",
                                              "layers"]),
        "trainer": pick(cfg.trainer, ["batch_size", "lr", "momentum", "nesterov",
                                      "weight_decay", "schedule", "warmup_fraction",
                                      "label_smoothing", "amp"]),
        "seed": cfg.sensitivity.seed,
    }


def cache_key(cfg: DictConfig) -> str:
    """A readable, stable key: ``<model>-w<width>-m<size>-<hash of key_fields>``."""
    fields = key_fields(cfg)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.model.name}-w{cfg.model.width:g}-m{cfg.basis.size:g}-{digest}"


def cache_dir(cfg: DictConfig) -> Path:
    return Path(cfg.sensitivity.cache_dir) / cache_key(cfg)


def load_cached(cfg: DictConfig) -> tuple[pd.DataFrame, dict] | None:
    """The cached table and its record, or ``None`` when there is none for this key."""
    folder = cache_dir(cfg)
    if not (folder / RECORD).exists():
        return None
    try:
        record = json.loads((folder / RECORD).read_text())
        table = pd.read_csv(folder / TABLE)
    except (OSError, ValueError) as err:
        raise ConfigError(f"the cached sensitivity table in {folder} is unreadable ({err}); "
                          f"delete that folder or run with sensitivity.recompute=true") from None
    missing = set(COLUMNS) - set(table.columns)
    if missing or record.get("key") != cache_key(cfg):
        raise ConfigError(f"the cached sensitivity table in {folder} is incomplete or was made "
                          f"for another key; delete that folder or run with "
                          f"sensitivity.recompute=true")
    return table, record


def sensitivity_table(cfg: DictConfig, *, recompute: bool | None = None
                      ) -> tuple[pd.DataFrame, dict]:
    """The sensitivity table of ``cfg``: from the cache when there is one for its key,
    otherwise estimated now (logged, and cached for the next run)."""
    recompute = cfg.sensitivity.recompute if recompute is None else recompute
    cached = None if recompute else load_cached(cfg)
    if cached is not None:
        log.info("sensitivity: reusing the cached table %s", cache_dir(cfg))
        table, record = cached
        return table, {**record, "cache_hit": True}
    if distributed.world_size() > 1:
        raise ConfigError(f"no sensitivity table for key {cache_key(cfg)} in "
                          f"{cfg.sensitivity.cache_dir}; estimate it first in one process "
                          f"(python scripts/sensitivity.py with the same overrides), then "
                          f"start the torchrun job")
    log.warning("sensitivity: %s table for key %s; estimating it now",
                "recomputing the" if recompute else "no cached", cache_key(cfg))
    table, record = estimate(cfg)
    folder = cache_dir(cfg)
    write_text_atomic(folder / TABLE, table.to_csv(index=False, float_format="%.6g"))
    write_json_atomic(folder / RECORD, record)
    return table, {**record, "cache_hit": False}


# ----------------------------------------------------------------------------- estimate
@dataclass
class Split:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor


def holdout_split(images: torch.Tensor, labels: torch.Tensor, val_size: int | float,
                  seed: int) -> Split:
    """A class-balanced held-out part of the training images to measure drops on."""
    val = stratified_subset(labels, val_size, seed + 1)
    keep = torch.ones(labels.numel(), dtype=torch.bool)
    keep[val] = False
    if not keep.any():
        raise ConfigError(f"sensitivity.val_size={val_size} leaves no training images")
    return Split(images[keep], labels[keep], images[val], labels[val])


class Probe:
    """What every estimate shares: the data split, the briefly trained dense model, and
    the fine-tune recipe. ``evaluate_layers(names)`` converts those layers of a copy of the
    dense model, fine-tunes and measures it (one layer for the sensitivity table, several
    for the exhaustive search)."""

    def __init__(self, cfg: DictConfig):
        # Imported here: train.py builds networks through selection.py, which needs this module.
        from .train import prepare_data, resolve_device, seed_everything

        self.cfg, trainer = cfg, cfg.trainer
        self.seed = cfg.sensitivity.seed
        if trainer.threads:
            torch.set_num_threads(trainer.threads)
        seed_everything(self.seed, trainer.deterministic)
        self.device = resolve_device(trainer.device)
        self.memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format
        data = prepare_data(cfg.data, self.seed)
        self.split = holdout_split(data.train_images, data.train_labels,
                                   cfg.sensitivity.val_size, self.seed)
        for name in ("train_images", "train_labels", "val_images", "val_labels"):
            setattr(self.split, name, getattr(self.split, name).to(self.device))
        self.dense = build_model(cfg.model.name, num_classes=cfg.data.num_classes,
                                 width=cfg.model.width)
        self.dense.to(self.device, memory_format=self.memory_format)
        start = time.perf_counter()
        if cfg.sensitivity.source_checkpoint:
            load_source_weights(self.dense, cfg.sensitivity.source_checkpoint,
                                "sensitivity.source_checkpoint")
            log.info("sensitivity: dense weights from %s", cfg.sensitivity.source_checkpoint)
        else:
            self.train(self.dense, cfg.sensitivity.pretrain_epochs, trainer.lr, trainer.schedule)
        self.pretrain_seconds = time.perf_counter() - start
        self.pretrained = self.measure(self.dense)

    def batches(self, train: bool, seed: int | None = None) -> TensorBatches:
        s, data = self.split, self.cfg.data
        if train:
            return TensorBatches(s.train_images, s.train_labels, self.cfg.trainer.batch_size,
                                 train=True, seed=self.seed if seed is None else seed,
                                 crop_padding=data.crop_padding,
                                 flip=data.flip, memory_format=self.memory_format)
        return TensorBatches(s.val_images, s.val_labels, self.cfg.trainer.eval_batch_size,
                             train=False, memory_format=self.memory_format)

    def train(self, model: nn.Module, epochs: int, lr: float, schedule: str,
              batch_seed: int | None = None) -> None:
        from .train import AMP_DTYPES, build_optimizer, build_scheduler, train_one_epoch

        if epochs == 0:
            return
        recipe = OmegaConf.merge(self.cfg.trainer, {"epochs": epochs, "lr": lr,
                                                    "schedule": schedule})
        if schedule == "cosine":
            recipe.warmup_fraction = 0.0
        batches = self.batches(train=True, seed=batch_seed)
        optimizer = build_optimizer(model, recipe)
        scheduler = build_scheduler(optimizer, recipe, len(batches))
        for _ in range(epochs):
            train_one_epoch(model, batches, optimizer, scheduler,
                            amp_dtype=AMP_DTYPES[recipe.amp],
                            label_smoothing=recipe.label_smoothing)

    def measure(self, model: nn.Module) -> dict[str, float]:
        from .train import AMP_DTYPES, evaluate

        stats = evaluate(model, self.batches(train=False),
                         amp_dtype=AMP_DTYPES[self.cfg.trainer.amp])
        return {"accuracy": stats.accuracy, "loss": stats.loss}

    def evaluate_layers(self, names: list[str], batch_seed: int | None = None) -> dict[str, Any]:
        """Convert ``names`` (none: the dense reference), fine-tune, measure. Every call
        fine-tunes on the same batches unless ``batch_seed`` asks for another order."""
        start = time.perf_counter()
        torch.manual_seed(self.seed)
        model = copy.deepcopy(self.dense)
        errors: list[float] = []
        if names:
            basis = self.cfg.basis
            apply_basis(model, names, basis.size, inplace=True, convert=True,
                        combine=basis.combine, coefficient_rank=basis.coefficient_rank)
            model.to(self.device, memory_format=self.memory_format)
            errors = [row["reconstruction_error"] for row in basis_report(model)]
        converted = self.measure(model)
        sens = self.cfg.sensitivity
        self.train(model, sens.finetune_epochs, sens.finetune_lr, "cosine", batch_seed)
        after = self.measure(model)
        return {"reconstruction_error": max(errors) if errors else 0.0,
                "converted_accuracy": converted["accuracy"], **after,
                "seconds": time.perf_counter() - start}


def reference_noise(probe: Probe, reference: dict, repeats: int) -> dict[str, Any] | None:
    """A yardstick for the drops: the spread of the dense reference over ``repeats`` more
    fine-tunes with other batch orders (the drops themselves share one batch order, so
    their noise is smaller; a drop well inside this spread says little)."""
    if repeats < 1:
        return None
    runs = [reference] + [probe.evaluate_layers([], batch_seed=probe.seed + 1 + i)
                          for i in range(repeats)]
    accuracy = pd.Series([r["accuracy"] for r in runs])
    loss = pd.Series([r["loss"] for r in runs])
    return {"repeats": len(runs), "accuracy_std": float(accuracy.std(ddof=1)),
            "loss_std": float(loss.std(ddof=1)), "accuracies": accuracy.tolist()}


def estimate(cfg: DictConfig) -> tuple[pd.DataFrame, dict]:
    """Estimate the sensitivity table of ``cfg`` (no cache; see :func:`sensitivity_table`)."""
    started = time.perf_counter()
    probe = Probe(cfg)
    candidates = layer_savings(probe.dense, cfg.basis, list(cfg.sensitivity.layers))
    reference = probe.evaluate_layers([])
    noise = reference_noise(probe, reference, cfg.sensitivity.noise_repeats)
    log.info("sensitivity: dense after pretraining %.4f, reference after fine-tuning %.4f "
             "(held-out accuracy); %d candidate layers", probe.pretrained["accuracy"],
             reference["accuracy"], len(candidates))
    rows = []
    for row in candidates.to_dict("records"):
        result = probe.evaluate_layers([row["layer"]])
        rows.append({**row, **result,
                     "accuracy_drop": reference["accuracy"] - result["accuracy"],
                     "loss_increase": result["loss"] - reference["loss"]})
        log.info("  %-18s drop %+.4f  loss %+.4f  (%.1f s)", row["layer"],
                 rows[-1]["accuracy_drop"], rows[-1]["loss_increase"], result["seconds"])
    table = pd.DataFrame(rows)[list(COLUMNS)]
    record = {"key": cache_key(cfg), "key_fields": key_fields(cfg),
              "dense": dense_totals(probe.dense),
              "pretrained": {**probe.pretrained, "seconds": probe.pretrain_seconds},
              "reference": reference, "noise": noise,
              "validation_images": int(probe.split.val_labels.numel()),
              "training_images": int(probe.split.train_labels.numel()),
              "seconds": time.perf_counter() - started,
              "config": OmegaConf.to_container(cfg, resolve=True),
              "provenance": provenance()}
    return table, record
