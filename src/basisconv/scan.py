"""The per-layer sensitivity scan for any model, with the user's own data and training:
the estimate of :mod:`basisconv.sensitivity_estimate` (convert one layer, fine-tune as the
dense reference, measure the drop) without its configs, CIFAR data or training loop.

``evaluate(model)`` and ``finetune(model)`` are the user's (their DataLoaders, loss,
optimizer, devices); the scan only converts, copies and seeds. Each fine-tune starts from
the same global seed, so a loader that shuffles with torch's global generator gives every
candidate the reference's batches (common random numbers, as in the pipeline's estimate),
and the caller's random state (CPU and the model's CUDA devices) is restored afterwards.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable, Iterable

import pandas as pd
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from .candidates import IMAGE, layer_savings, python_number
from .counts import is_number
from .errors import ConfigError, TrainingDiverged
from .model_copy import modes_kept
from .selection import DROPS, metric_drops, table_number
from .source_conv import check_fit
from .surgery import apply_basis, basis_report


def layer_sensitivity(model: nn.Module, num_basis: int | float,
                      evaluate: Callable[[nn.Module], float | dict],
                      finetune: Callable[[nn.Module], None] | None = None, *,
                      layers: str | Iterable[str] = "all",
                      input_shape: tuple[int, ...] = IMAGE, combine: str = "stacked",
                      coefficient_rank: int | None = None, seed: int = 0,
                      fit: str = "pivots") -> pd.DataFrame:
    """One row per candidate layer (one where a basis of ``num_basis`` saves forward
    compute, :func:`~basisconv.candidates.layer_savings`): that layer alone converted
    (``from_conv``) in a copy of ``model``, fine-tuned by
    ``finetune`` (if given) and measured by ``evaluate``, against the dense copy treated
    the same way. ``model`` itself is left as it is.

    ``evaluate`` returns the accuracy (a float) or a dict with ``"accuracy"`` and/or
    ``"loss"``; it should set the model's mode (``model.eval()``) itself. The table has the
    columns of the pipeline's sensitivity table for what was reported (``accuracy_drop``,
    ``loss_increase``, ``converted_accuracy`` before the fine-tune, ...) and what each
    layer saves per input of ``input_shape`` (``(1, C, H, W)``), so
    :func:`basisconv.selection.pick_layers` can choose from it, with
    ``selection.dense_totals(model, input_shape)`` as the budget's 100 %. ``fit``: how
    each layer is converted (``from_conv``'s ``fit``): scan as you will convert.
    """
    # else arguments in another order fail deep in pandas or in a call
    if callable(num_basis) or not callable(evaluate) or not callable(finetune or evaluate):
        raise ConfigError(f"layer_sensitivity(model, num_basis, evaluate, finetune=None, ...): "
                          f"num_basis is a count or a fraction and evaluate, finetune functions "
                          f"of the model; got num_basis={num_basis!r}, evaluate={evaluate!r}, "
                          f"finetune={finetune!r}")
    check_fit(fit)
    # the fresh layers of the cost count and of each conversion draw from it too
    with torch.random.fork_rng(devices=_cuda_devices(model)):
        return _scan(model, num_basis, evaluate, finetune, layers, tuple(input_shape), combine,
                     coefficient_rank, seed, fit)


def _scan(model, num_basis, evaluate, finetune, layers, input_shape, combine, coefficient_rank,
          seed, fit) -> pd.DataFrame:
    basis = OmegaConf.create({"size": python_number(num_basis), "combine": combine,
                              "coefficient_rank": python_number(coefficient_rank)})
    # errors name this function's arguments, not a config's keys
    candidates = layer_savings(model, basis, layers, input_shape, keys={
        "num_basis": "num_basis", "coefficient_rank": "coefficient_rank", "layers": "layers"})

    def run(names: list[str]) -> dict:
        start = time.perf_counter()
        trial = copy.deepcopy(model)
        row = {}
        if names:
            apply_basis(trial, names, num_basis, inplace=True, combine=combine,
                        coefficient_rank=coefficient_rank, fit=fit)
            report = {r["name"]: r for r in basis_report(trial)}
            row["reconstruction_error"] = report[names[0]]["reconstruction_error"]
            # measured before its fine-tune, which the reference is not: the fine-tune then
            # starts in the modes the model was given in, as the reference's does (not in
            # evaluate's eval mode: a finetune without model.train() froze its batch norms)
            with modes_kept(trial):
                row.update({f"converted_{k}": v
                            for k, v in _metrics(evaluate(trial), names).items()})
        if finetune is not None:
            torch.manual_seed(seed)
            finetune(trial)
        return {**row, **_metrics(evaluate(trial), names), "seconds": time.perf_counter() - start}

    reference = run([])
    rows = []
    for candidate in candidates.to_dict("records"):
        result = run([candidate["layer"]])
        # kept as the pipeline's table keeps them (table_number): equal drops tie
        drops = {column: table_number(drop)
                 for column, drop in metric_drops(reference, result).items()}
        rows.append({**candidate, **result, **drops})
    table = pd.DataFrame(rows)
    table.attrs["reference"] = reference
    return table


def _metrics(value, converted: list[str]) -> dict[str, float]:
    """``evaluate``'s answer as a dict of floats with ``"accuracy"`` and/or ``"loss"``
    (other numbers it reports are kept as columns too); a NaN or infinite one is refused,
    as the pipeline refuses a diverged fine-tune (it would rank the layer anywhere)."""
    if _is_number(value):
        metrics = {"accuracy": float(value)}
    elif (isinstance(value, dict) and set(value) & set(DROPS)
          and all(map(_is_number, value.values()))):
        metrics = {str(k): float(v) for k, v in value.items()}
    else:
        raise ConfigError(f"layer_sensitivity: evaluate(model) must return the accuracy (a "
                          f"float) or a dict of floats with 'accuracy' and/or 'loss', got "
                          f"{value!r}")
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        model = f"the model with {converted[0]!r} converted" if converted else "the dense model"
        raise TrainingDiverged(f"layer_sensitivity: evaluate(model) gave {bad} for {model}: "
                               f"a fine-tune that diverged (lower its learning rate), or an "
                               f"evaluate that divides by zero", *next(iter(bad.items())))
    return metrics


def _is_number(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.dtype.is_complex
    return is_number(value)


def _cuda_devices(model: nn.Module) -> list[int]:
    """The CUDA devices the model lives on, whose random state ``fork_rng`` restores."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


__all__ = ["layer_sensitivity"]
