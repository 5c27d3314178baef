"""A trained basis model's layers made plain convs again (:func:`to_dense`, the inverse of
:func:`~basisconv.surgery.apply_basis`), for tools that need a conv's ``weight``: each conv
keeps its layer's mode, hooks, what trains and what is tied.

Apart from :mod:`basisconv.surgery` because it goes the other way and shares with it only
what :mod:`basisconv.model_edits` holds (the model's check, the layers whose tensors
torch computes named, a submodule set by name): neither module imports the other.
"""

from __future__ import annotations

import torch.nn as nn

from .errors import ConfigError, warn_caller
from .hook_transfer import hand_back_hooks
from .layer_options import check_flag
from .layers import BasisConv2d, basis_layers
from .model_copy import copy_model
from .model_edits import check_model, constrained_named, set_submodule
from .skip_training import frozen_by_schedule
from .source_conv import parametrizations_in_eval, refresh_computed_weight, trains


def to_dense(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Every :class:`BasisConv2d` of ``model`` replaced by its equivalent ``nn.Conv2d``
    (:meth:`BasisConv2d.to_conv`: same function, other rounding): a trained basis model as
    plain convs, for tools that need them (``torch.jit.script``, quantization, a forward
    that reads ``conv.weight``); the model itself when ``inplace``, else a converted deep
    copy. Each conv keeps its layer's train/eval mode, ``requires_grad`` (its weight trains
    while the basis filters or the coefficients do) and forward and backward hooks, and the
    replaced layer warns if the model still calls it; a layer registered under two names
    becomes one conv under both, and layers that share their basis filters and coefficients
    (tied convs converted by :func:`~basisconv.surgery.apply_basis`) share one weight (and
    one bias where they share it). A layer whose tensors torch computes (pruning or a
    parametrization of ``basis_weight``) gives the weight computed now, as a forward would
    compute it; the pruning or parametrization stays with the replaced layer, said in one
    warning."""
    check_flag("inplace", inplace)
    check_model(model, "to_dense", "make dense")
    if isinstance(model, BasisConv2d):
        raise ConfigError("to_dense got a single basis layer; use its to_conv()")
    if not inplace:
        model = copy_model(model, "to_dense: the model cannot be copied",
                           "make it dense with inplace=True, which needs no copy")
    found = basis_layers(model)
    for layer in found.values():  # (a pruned basis left as the last forward computed it)
        refresh_computed_weight(layer)
    _warn_of_constraints_left_behind(found)
    dense: dict[int, nn.Conv2d] = {}
    weights: dict[tuple, nn.Parameter] = {}
    biases: dict[int, nn.Parameter] = {}
    with parametrizations_in_eval(found.values()):  # (read as apply_basis reads a conv's)
        for name, layer in list(model.named_modules(remove_duplicate=False)):
            if not isinstance(layer, BasisConv2d):
                continue
            if id(layer) not in dense:
                conv = dense[id(layer)] = layer.to_conv().train(layer.training)
                conv.weight.requires_grad_(_dense_weight_trains(layer))
                conv.weight = weights.setdefault(_weight_key(layer), conv.weight)
                if layer.bias is not None:
                    conv.bias.requires_grad_(trains(layer, "bias"))
                    conv.bias = biases.setdefault(id(layer.bias), conv.bias)
                hand_back_hooks(layer, conv, name)
            set_submodule(model, name, dense[id(layer)])
    return model


def _warn_of_constraints_left_behind(layers: dict[str, BasisConv2d]) -> None:
    """Warn, once for all layers, where pruning or a parametrization computes a basis
    layer's tensors: its dense conv starts from the weight they compute now, and trains
    unconstrained (the zeros of a pruned basis fill in), as
    :func:`~basisconv.surgery.apply_basis` warns of a conv's."""
    listed = constrained_named(layers)
    if listed:
        warn_caller(f"to_dense: the tensors of basis layers {listed} are computed by "
                    f"pruning or a parametrization that their dense convs do not keep: each "
                    f"starts from the weight computed now and trains unconstrained; register "
                    f"the constraint on the convs' weights if training needs it")


def _dense_weight_trains(layer: BasisConv2d) -> bool:
    """Whether ``layer``'s dense weight trains: while any of its parts does (the basis
    filters or the coefficients), as :func:`~basisconv.surgery.apply_basis` gives a conv
    whose weight two parameters compute a trainable layer while either trains; coefficients
    a :class:`~basisconv.skip_training.CoefficientSkipSchedule` froze for its skipped step
    count as trainable. (Read
    from the basis filters alone, a layer whose coefficients alone fine-tune became a frozen
    conv.)"""
    # (by trains: a pruned basis's computed tensor, remade under no_grad, requires none)
    return (any(trains(layer, name) for name in ["basis_weight", *layer.coefficient_names()])
            or frozen_by_schedule(layer))


def _weight_key(layer: BasisConv2d) -> tuple:
    """What a layer's dense weight is made of: layers that share all of it (convs tied
    before :func:`~basisconv.surgery.apply_basis`, which keeps them sharing one set) get
    one dense weight from :func:`to_dense`, so that they stay tied there too."""
    parts = (layer.basis_weight, *layer.coefficient_parameters(), layer.output_index,
             layer.coefficient_mask)
    return tuple(None if t is None else id(t) for t in parts)


__all__ = ["to_dense"]
