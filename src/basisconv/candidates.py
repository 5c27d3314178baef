"""The candidate table: for each layer a basis of the configured size could convert,
what converting it alone saves by the cost model (parameters, training and forward FLOPs),
which the ordered policies of :mod:`basisconv.selection` choose from; and the dense
model's totals a budget is a share of (:func:`dense_totals`).

Counted by formula on a converted copy of the model (:func:`convert_candidates`), which
is never trained, so a table costs no training and the policies stay pure functions of
it. Every name here is also exported by :mod:`basisconv.selection`, where the table was
first defined.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Iterable, TYPE_CHECKING

import numpy as np
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from .cost import count_parameters, model_cost
from .errors import ConfigError, warn_caller
from .layer_names import select_layers
from .surgery import CONFIG_KEYS, apply_basis, basis_report
from .tied_parameters import stored_parameter

if TYPE_CHECKING:  # pandas (half a second) is imported where a table is made: a process
    import pandas as pd  # that makes none (most training runs) starts without it

# The shape costs are counted at when none is given: one CIFAR image, the pipeline's data
IMAGE = (1, 3, 32, 32)


def convert_candidates(model: nn.Module, basis: DictConfig, layers: str | Iterable[str],
                       keys: dict[str, str] | None = None, *,
                       inplace: bool = False) -> nn.Module:
    """A copy of ``model`` with ``layers`` in basis form as :func:`layer_savings` counts
    them (from scratch, only where a basis saves): a basis size or coefficient rank that no
    candidate can take is refused here as the table refuses it (``basisconv.model_checks``
    does so on the meta device, before a sweep's first job). ``keys`` as for that
    function. ``inplace``: ``model`` itself converted, for a caller that built it for this
    and reads it no more (the config checks' meta model: its copy was a third of their
    time on ResNet-110)."""
    return apply_basis(model, layers, basis.size, inplace=inplace, convert=False,
                       only_where_saves=True, combine=basis.combine,
                       coefficient_rank=basis.coefficient_rank,
                       fuse_norm=bool(basis.get("fuse_norm")),
                       keys={**CONFIG_KEYS, "layers": "sensitivity.layers", **(keys or {})})


#: The ``basis`` keys :func:`layer_savings` reads (``fuse_norm`` too, False where absent).
SAVINGS_BASIS_KEYS = ("size", "combine", "coefficient_rank")


def savings_basis(basis: DictConfig | Mapping) -> DictConfig:
    """``basis`` (the ``basis`` config, or a mapping with its keys) as a config that has
    :data:`SAVINGS_BASIS_KEYS`; one error naming those it lacks, as
    :func:`~basisconv.selection.pick_layers` names a selection's (a user's empty config was
    OmegaConf's three-line missing-key error, a plain dict an AttributeError)."""
    example = "{'size': 0.5, 'combine': 'stacked', 'coefficient_rank': None}"
    if not isinstance(basis, Mapping):
        raise ConfigError(f"layer_savings: basis is the basis config or a mapping of its "
                          f"keys, e.g. {example}; got {basis!r}")
    lacking = [key for key in SAVINGS_BASIS_KEYS if key not in basis]  # (??? is not in)
    if lacking:
        raise ConfigError(f"layer_savings: basis has no {', '.join(lacking)}; give each key "
                          f"it reads, as configs/basis/ sets them, e.g. {example}")
    if isinstance(basis, DictConfig):
        return basis
    return OmegaConf.create({key: python_number(value) for key, value in basis.items()})


def layer_savings(model: nn.Module, basis: DictConfig | Mapping,
                  layers: str | Iterable[str] = "all",
                  input_shape: tuple[int, ...] = IMAGE, *, batch: int = 1,
                  keys: dict[str, str] | None = None) -> pd.DataFrame:
    """The candidate table: per candidate layer (among ``layers``, in model order), what
    converting it alone saves, by the cost model, per input of ``input_shape``
    (``(1, C, H, W)``): parameters, training FLOPs (forward + backward) and forward FLOPs.
    Candidates are the layers where a basis of this size saves forward multiply-adds per
    output pixel (``only_where_saves``, :func:`~basisconv.cost_formulas.saves_compute`: near full
    rank with few output pixels, the once-a-batch terms below can make a candidate's
    ``forward_flops_saved`` slightly negative, which the table then says); converting
    several layers saves the sum (layer costs are independent), except the parameters of
    convs that share one weight (warned: each row says what converting it alone saves). A
    first layer can still cost more to train (its input needs no gradient, its basis maps
    do): its ``flops_saved`` is then negative, and the budget rule passes it over.

    ``batch`` is the training batch: costs are counted at ``batch`` inputs and divided by
    it. Almost every FLOP scales with the batch, so this changes nothing for them; the few
    that are paid once per batch, a layer's statistics with its norm folded in
    (``basis.fuse_norm``) and a low-rank coefficient product, are shared by its inputs, as
    they are in training (counted at one input they would overstate the basis cost).

    ``basis``: the ``basis`` config, or a mapping with its keys (:func:`savings_basis`).
    ``keys``: what errors call ``num_basis``, ``coefficient_rank`` and ``layers``; by
    default the config's (``basis.size``, ..., ``sensitivity.layers``).
    A conv the forward does not call at ``input_shape`` (a head used in training only)
    saves nothing measurable and is left out, with a warning."""
    import pandas as pd
    basis = savings_basis(basis)
    keys = {**CONFIG_KEYS, "layers": "sensitivity.layers", **(keys or {})}
    names = list(select_layers(model, layers, key=keys["layers"]))
    shape = (input_shape[0] * batch, *input_shape[1:])
    dense = model_cost(model, shape).by_layer()
    for name in names:  # (left out before converting: a forward may read such a conv's
        if name not in dense:  # weight, F.conv2d(x, conv.weight), which a basis has not)
            warn_caller(f"layer {name!r} is not called by the model's forward at input "
                        f"shape {tuple(shape)}: left out of the candidates")
    called = [name for name in names if name in dense]
    rows = []

    def convert(layers: list[str]) -> nn.Module:
        return convert_candidates(model, basis, layers, keys)
    if called:
        converted = convert(called)
        basis_costs = model_cost(converted, shape).by_layer()
        tied = _sharing_their_weight(model, called)
        dense_params = count_parameters(model) if tied else None
        for row in basis_report(converted):
            name = row["name"]
            before, after = dense[name], basis_costs[name]
            rows.append({"layer": name, "position": names.index(name),
                         "shape": f"{row['in_channels']}->{row['out_channels']} "
                                  f"k{_kernel(*row['kernel_size'])}",
                         "num_basis": row["num_basis"],
                         "params_saved": (dense_params - _count_alone(convert, name)
                                          if name in tied else before.params - after.params),
                         "flops_saved": round((before.total_flops - after.total_flops) / batch),
                         "forward_flops_saved":
                             round((before.forward_flops - after.forward_flops) / batch)})
    check_some_candidate(len(rows), basis.size, keys["num_basis"])
    return pd.DataFrame(rows)


def check_some_candidate(found: int, size, key: str = CONFIG_KEYS["num_basis"]) -> None:
    """One :class:`ConfigError` when ``found`` (the candidates) is 0: no selected layer saves
    compute at basis size ``size`` (given as ``key``). :func:`layer_savings` checks its table,
    and ``basisconv.model_checks`` the model shaped on the meta device: a size every layer
    takes but none saves at (``basis.size=1.0``) was refused only as the candidate table was
    made, after a sweep's jobs before it had trained."""
    if not found:
        raise ConfigError(f"no candidate layer: at {key}={size} no selected layer the forward "
                          f"calls saves compute; choose a smaller {key}")


def _sharing_their_weight(model: nn.Module, names: list[str]) -> list[str]:
    """The named convs whose weight another module holds too (weight tying,
    ``b.weight = a.weight``; one conv under two names is one module, not tied)."""
    holders: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            holders[id(p)] = holders.get(id(p), 0) + 1
    tied = [name for name in names
            if holders.get(id(stored_parameter(model.get_submodule(name), "weight")), 0) > 1]
    if tied:
        warn_caller(f"layers {tied} share their weight with other modules: their "
                    f"params_saved is what converting each alone saves (the shared weight "
                    f"stays, so it adds parameters); converting all that share one weight "
                    f"saves it once, which the sum of their rows does not say")
    return tied


def _count_alone(convert, name: str) -> int:
    """The parameters of the whole model with ``name`` alone converted: a tied conv's own
    count holds the weight it shares, which stays with the others."""
    with warnings.catch_warnings():  # (that they no longer share it: said above)
        warnings.simplefilter("ignore")
        return count_parameters(convert([name]))


def _kernel(kh: int, kw: int) -> str:
    """``3`` for a square kernel (the cached tables' form), ``3x1`` for another."""
    return f"{kh}" if kh == kw else f"{kh}x{kw}"


def dense_totals(model: nn.Module, input_shape: tuple[int, ...] = IMAGE) -> dict[str, int]:
    """Per-image parameters and training FLOPs of the dense model (the budget's 100 %)."""
    cost = model_cost(model, input_shape)
    return {"params": cost.params, "flops": cost.total_flops,
            "forward_flops": cost.forward_flops}


def python_number(value):
    """``value``, a numpy number made a Python one (which OmegaConf takes); else as it is.
    A user's mapping often holds numbers read from a table (``table.accuracy_drop.median()``):
    a ``basis`` here, a ``selection`` in :mod:`basisconv.selection`, a scan's basis size."""
    return value.item() if isinstance(value, np.generic) else value
