"""Model surgery: replace a model's chosen convolutions by basis convolutions, in place or
on a copy, with a per-layer report of what a conversion did.

Names are the model's own module names (``conv1``, ``layer1.0.conv1``,
``layer2.0.shortcut.0``), so a layer list from a sensitivity scan or a config carries over
unchanged. The functions run in the order of a conversion: :func:`apply_basis` and its
checks, the warnings about what a conversion cannot keep, the replacement itself (fitted
or fresh); then :func:`basis_report`.

Elsewhere: a trained basis model's layers made plain convs again
(:func:`~basisconv.dense_form.to_dense`), the layers found by name
(:mod:`basisconv.layer_names`: ``conv_layers``, ``select_layers``), each layer's basis size
and which convert (:mod:`basisconv.basis_sizes`), what the conversion and ``to_dense``
share (the model's check, the layers whose weights torch computes named, a submodule set
by name: :mod:`basisconv.model_edits`), how a replaced conv's hooks move to its basis layer
(:mod:`basisconv.hook_transfer`), what converted layers share (tied convs kept tied, and
``share_coefficients``: :mod:`basisconv.tied_parameters`), and the skip-training schedule
of the coefficients, with the dense warm-up that comes before it
(:class:`~basisconv.skip_training.CoefficientSkipSchedule`). ``conv_layers`` and
``CoefficientSkipSchedule`` are still exported from here: the README and docs import them
from this module.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

import torch.nn as nn

from .basis_sizes import check_max_error_use, check_sizes_per_layer, sized_targets
from .cost_formulas import saves_compute
from .errors import ConfigError, warn_caller
from .hook_transfer import take_over_hooks
from .layer_names import conv_layers  # noqa: F401 (the README imports it from here)
from .layer_names import conv_names, select_layers, select_sized_layers
from .layer_options import check_coefficient_rank, check_flag
from .layers import BasisConv2d, basis_layers
from .model_copy import copy_model
from .model_edits import check_model, constrained_named, set_submodule
from .skip_training import CoefficientSkipSchedule  # noqa: F401 (exported from here too)
from .source_conv import (check_finite_weight, check_not_inference_mode,
                          parametrizations_in_eval, refresh_computed_weight)
from .tied_parameters import (share_coefficients_by_shape, tie_shared_weights,
                              warn_of_earlier_groups, warn_of_untied_weights)

#: What the configs call :func:`apply_basis`'s arguments (``basis.*``), for the errors their
#: values cause; a caller adds the config list its ``layers`` came from.
CONFIG_KEYS = {"num_basis": "basis.size", "coefficient_rank": "basis.coefficient_rank",
               "only_where_saves": "basis.only_where_saves"}


def apply_basis(model: nn.Module,
                layers: str | Iterable[str] | Mapping[str, int | float] = "all",
                num_basis: int | float | None = None, *, max_error: float | None = None,
                inplace: bool = False, convert: bool = True, only_where_saves: bool = False,
                share_coefficients: bool = False, combine: str = "stacked",
                coefficient_rank: int | None = None, fuse_norm: bool = False,
                fit: str = "pivots", keys: Mapping[str, str] | None = None) -> nn.Module:
    """Replace the named convolutions by :class:`BasisConv2d` layers; returns the model
    (``model`` itself when ``inplace``, else a converted deep copy). Build the optimizer
    (and its scheduler) from the returned model: an optimizer of the model before holds
    none of the basis layers' parameters, nor, for a copy, any of the returned model's,
    and it trains them silently not at all.

    Args:
        layers: ``"all"``, a name, or a list of names and fnmatch patterns; or a mapping
            of such names and patterns to each one's size (as ``num_basis`` takes it:
            ``{"layer1.0.conv1": 16, "layer2.*": 0.25}``, or ``basis_report``'s rows as
            ``{row["name"]: row["num_basis"]}``), then given without ``num_basis`` or
            ``max_error``. Every size is checked before any layer is converted.
        num_basis: an int count, or a float in ``(0, 1]`` resolved per layer as a fraction
            of its ``out_channels`` (rounded half up, at least 1); 0.5 when neither it nor
            ``max_error`` is given.
        max_error: instead of ``num_basis``, each layer's size by its trained filters: the
            smallest basis whose relative weight error is at most this (as
            ``BasisConv2d.from_conv`` takes it; with ``convert`` only, as it needs the
            trained weights). Layers whose filters are nearly independent get most of
            theirs, and with ``only_where_saves`` stay dense.
        convert: ``True`` fits each basis layer to the conv's current weights
            (``BasisConv2d.from_conv``: use it on a trained model or after a dense warm-up;
            exact at full rank); ``False`` gives fresh from-scratch layers. There is no
            "auto": whether weights are "trained" cannot be told from the weights. A
            fresh layer's effective filters start at the scale of the conv's weight
            (see :func:`_fresh_layer`).
        only_where_saves: replace a layer only where the basis form does fewer
            multiply-adds (Composer's rule; with ``fuse_norm`` in the stacked form such a
            layer runs in); otherwise such layers are converted with a warning, as asked.
            Where it leaves every selected layer dense, a warning says the model returned
            has no basis layer.
        share_coefficients: layers with the same coefficient shape ``(C_out - m, m)`` (and
            rank) share one coefficient matrix (our reading of the paper's option to shrink
            the coefficients); with ``convert`` it is fitted jointly to all of them.
        combine, coefficient_rank, fuse_norm: passed to :class:`BasisConv2d`.
        fit: with ``convert``, how the basis is fitted (``BasisConv2d.from_conv``:
            ``"pivots"``, the conv's own filters; ``"svd"``, its best rank-``m`` weight).
        keys: what errors call an argument (``num_basis``, ``coefficient_rank``,
            ``only_where_saves``, another flag) or ``layers`` when their values come from
            elsewhere: a config's keys (:data:`CONFIG_KEYS`, and the list the layers came
            from), so a message names what the user set (a mapping's entry as
            ``selection.layers['layer2.*']``).

    A replaced conv's forward and backward hooks move to its basis layer (see
    :func:`~basisconv.hook_transfer.take_over_hooks`), whose output is the conv's.
    """
    check_model(model, "apply_basis", "convert")
    check_not_inference_mode("apply_basis")
    if isinstance(model, nn.Conv2d):  # it converts the convs inside a model, by name
        raise ConfigError("apply_basis got a single conv; convert it with "
                          "BasisConv2d.from_conv(conv, num_basis), or make a fresh layer with "
                          "BasisConv2d(in_channels, out_channels, kernel_size, num_basis, ...)")
    if isinstance(model, BasisConv2d):  # (it said "the model has no Conv2d layers")
        raise ConfigError("apply_basis got a single basis layer, already in basis form; to "
                          "change its basis size, BasisConv2d.from_conv(layer.to_conv(), "
                          "num_basis)")
    keys = {"num_basis": "num_basis", "coefficient_rank": "coefficient_rank",
            "only_where_saves": "only_where_saves", **(keys or {})}
    flags = {"inplace": inplace, "convert": convert, "only_where_saves": only_where_saves,
             "share_coefficients": share_coefficients, "fuse_norm": fuse_norm}
    for name, value in flags.items():  # (convert="no" would convert: it is truthy)
        check_flag(keys.get(name, name), value)
    if isinstance(layers, Mapping):  # each layer's size given with its name
        check_sizes_per_layer(layers, num_basis, max_error, key=keys.get("layers"))
        targets, num_basis = select_sized_layers(model, layers, key=keys.get("layers"))
    else:
        if max_error is not None:
            check_max_error_use(max_error, num_basis, convert)
        elif num_basis is None:
            num_basis = 0.5
        targets = select_layers(model, layers, key=keys.get("layers"))
    for conv in targets.values():  # each weight read below is the one a forward computes
        refresh_computed_weight(conv)
    with parametrizations_in_eval(targets.values()):  # (max_error reads the user's model)
        targets, sizes = sized_targets(targets, num_basis, max_error, only_where_saves,
                                       combine, fuse_norm, coefficient_rank, fit, keys)
    for name, conv in targets.items():  # of the layers converted (a skipped head has none)
        check_coefficient_rank(coefficient_rank, conv.out_channels, sizes[name], where=name,
                               key=keys["coefficient_rank"])
    _warn_of_costly_ranks(targets, sizes, coefficient_rank, keys["coefficient_rank"])
    warn_of_untied_weights(model, targets)
    _warn_of_dropped_constraints(targets)
    if not inplace:
        model = copy_model(model, "apply_basis: the model cannot be copied",
                           "convert it with inplace=True, which needs no copy")
        modules = dict(model.named_modules())
        targets = {name: modules[name] for name in targets}
    with parametrizations_in_eval(targets.values()):  # (a weight read several times)
        replaced = _replace(model, targets, sizes, convert, combine=combine,
                            coefficient_rank=coefficient_rank, fuse_norm=fuse_norm, fit=fit)
        if share_coefficients:
            share_coefficients_by_shape(replaced, targets if convert else None)
            warn_of_earlier_groups(model, replaced)
    return model


def _warn_of_costly_ranks(targets: dict[str, nn.Conv2d], sizes: dict[str, int],
                          rank: int | None, key: str) -> None:
    """A rank-``r`` coefficient matrix is two factors of ``r * C_out`` entries in all: from
    ``r >= (C_out - m) * m / C_out`` on, no fewer than the full matrix it restricts. One
    warning per layer shape, so that the many conversions of a sensitivity estimate or a
    search repeat the same few (Python shows a warning once per place and text)."""
    if rank is None:
        return
    for c_out, m in sorted({(conv.out_channels, sizes[name]) for name, conv in targets.items()}):
        full = (c_out - m) * m
        if rank * c_out < full:
            continue
        saving = -(-full // c_out) - 1  # the largest rank below full / C_out
        advice = (f"ranks up to {saving} save parameters there" if saving >= 1 else
                  "no rank saves parameters there")
        warn_caller(f"{key}={rank}: in layers with C_out={c_out} and m={m} its two factors "
                    f"hold {rank * c_out} coefficients, no fewer than the full matrix's "
                    f"{full}; {advice}, null keeps the full matrix")


def _warn_of_dropped_constraints(targets: dict[str, nn.Conv2d]) -> None:
    """Warn, once for all layers, where a converted conv's weight is computed by a
    parametrization or pruning: its basis layer starts from the weight computed now, but
    trains its factors as they are, so the constraint (a pruning mask's zeros, a spectral
    norm's bound, a weight norm's direction and scale) holds no longer, silently."""
    listed = constrained_named(targets)
    if not listed:
        return
    warn_caller(f"apply_basis: the weights of {listed} are computed by a "
                f"parametrization or pruning that their basis layers do not keep: each starts "
                f"from the weight computed now (fitted to it, or from scratch at its scale), "
                f"and its basis filters and coefficients then train unconstrained; register "
                f"the constraint on the basis layers' parameters if training needs it")


def _replace(model: nn.Module, targets: dict[str, nn.Conv2d], sizes: dict[str, int],
             convert: bool, fit: str, **options) -> dict[str, BasisConv2d]:
    """Each conv of ``targets`` replaced in ``model`` by its basis layer (fitted to it, or
    fresh), under every name it has; its hooks and training mode carried over."""
    aliases: dict[str, list[str]] = defaultdict(list)
    for alias, first in conv_names(model).items():
        aliases[first].append(alias)
    for name, conv in targets.items():  # all before any is replaced (inplace=True)
        check_finite_weight(conv, name, fitting=convert)
    replaced: dict[str, BasisConv2d] = {}
    for name, conv in targets.items():
        if convert:
            layer = BasisConv2d.from_conv(conv, sizes[name], fit=fit, **options)
        else:
            layer = _fresh_layer(conv, sizes[name], **options)
        layer.train(conv.training)
        take_over_hooks(conv, layer, name)
        for alias in aliases[name]:  # a tied conv stays one module, in basis form
            set_submodule(model, alias, layer)
        replaced[name] = layer
    tie_shared_weights(targets, replaced)
    return replaced


def _fresh_layer(conv: nn.Conv2d, m: int, **options) -> BasisConv2d:
    """A from-scratch basis layer for ``conv`` whose effective filters start at the scale
    of the conv's own weight (its root mean square), not at :class:`BasisConv2d`'s default
    fan-in scale. Why: the model's init convention (the ResNets here scale by fan-out, as
    torchvision's do; fan-in's std is 2.3x theirs at ResNet-20's stem, 4.6x at
    ResNet-18's) carries over to its basis layers, and with it the effective learning
    rate, which under a batch norm the weights' scale sets; a basis row and a dense row
    of the protocol then differ only in the basis form. It trains as the conv did.
    Built unset and initialized once, so the random stream is the one a default init
    would draw."""
    layer = BasisConv2d.unset_like(conv, m, **options)
    weight = conv.weight.detach()
    if not weight.is_meta:  # (a dry conversion's layer has no values to draw: its init on
        # meta, slow through torch's reference ops, was most of a config check's time)
        layer.reset_parameters(filter_std=float(weight.double().square().mean().sqrt()))
    # (a frozen conv's fresh layer was trainable: the savings table then counted its
    # weight gradients as a cost of converting it)
    layer.train_as(conv)
    return layer


def basis_report(model: nn.Module) -> list[dict]:
    """One row per basis layer: name, shape, basis size, whether it saves compute, the weight
    reconstruction error of its conversion (``None`` for a from-scratch layer) and which
    layer's coefficients it shares (``None`` if its own)."""
    rows, owners = [], {}
    for name, layer in basis_layers(model).items():
        key = id(layer.coefficient_parameters()[0])
        owners.setdefault(key, name)
        rows.append({
            "name": name,
            "in_channels": layer.in_channels,
            "out_channels": layer.out_channels,
            "kernel_size": list(layer.kernel_size),
            "num_basis": layer.num_basis,
            "fraction": layer.num_basis / layer.out_channels,
            "saves_compute": saves_compute(layer, layer.num_basis, layer.combine,
                                           fused_norm=layer.fuse_norm),
            "reconstruction_error": layer.reconstruction_error,
            "shares_coefficients_of": None if owners[key] == name else owners[key],
        })
    return rows


__all__ = ["CoefficientSkipSchedule", "apply_basis", "basis_report", "conv_layers"]
