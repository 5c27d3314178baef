"""What converted layers share: a model's tied convs (``b.weight = a.weight``) kept tied
in basis form, a warning where a conversion unties them, and ``share_coefficients``'s one
coefficient matrix for same-shaped layers (fitted jointly, and a warning where a layer is
shaped as a basis layer of an earlier call).

Kept apart from the surgery that replaces layers (:func:`basisconv.surgery.apply_basis`):
which parameters are one tensor is a rule of its own, read from the convs and the basis
layers alone, and :mod:`basisconv.candidates` reads a weight's tying
(:func:`stored_parameter`) without converting anything.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn

from .errors import warn_caller
from .fitting import fit_coefficients, relative_error
from .layers import BasisConv2d, basis_layers


def stored_parameter(conv: nn.Conv2d, name: str) -> nn.Parameter | None:
    """The parameter ``conv`` stores as ``name``; none where a parametrization
    (``parametrizations.weight_norm``, ``spectral_norm``) computes it afresh at each read:
    a tensor made for one read says nothing of tying, and once freed its id is another's."""
    return conv._parameters.get(name)


def warn_of_untied_weights(model: nn.Module, targets: dict[str, nn.Conv2d]) -> None:
    """Warn where a converted conv's weight (or bias) is also a module's that stays as it is
    (weight tying, ``b.weight = a.weight``): from now on the two train apart."""
    converted = {}
    for name, conv in targets.items():
        for kind in ("weight", "bias"):
            tensor = stored_parameter(conv, kind)
            if tensor is not None:
                converted[id(tensor)] = (name, kind)
    for name, module in model.named_modules():
        if name in targets:
            continue
        shared = defaultdict(list)  # converted layer -> what this module shares with it
        for p in module.parameters(recurse=False):
            if id(p) in converted:
                owner, kind = converted[id(p)]
                shared[owner].append(kind)
        for owner, kinds in shared.items():
            warn_caller(f"layer {name!r} shares its {' and '.join(kinds)} with {owner!r}, "
                        f"which is converted: the two no longer share it; convert both to "
                        f"keep them tied")


def tie_shared_weights(convs: dict[str, nn.Conv2d], layers: dict[str, BasisConv2d]) -> None:
    """Convs that shared one weight tensor (weight tying, ``b.weight = a.weight``) get one set
    of basis filters and coefficients (and one bias where they shared it): converted from
    one weight they are equal, and tied they stay equal in training, as the convs did."""
    first_of: dict[int, BasisConv2d] = {}
    bias_of: dict[int, nn.Parameter] = {}
    for name, layer in layers.items():
        conv = convs[name]
        weight, bias = stored_parameter(conv, "weight"), stored_parameter(conv, "bias")
        first = layer if weight is None else first_of.setdefault(id(weight), layer)
        if first is not layer:
            layer.basis_weight = first.basis_weight
            for attr in ("coefficients", "coefficients_left", "coefficients_right"):
                if hasattr(first, attr):
                    setattr(layer, attr, getattr(first, attr))
            layer.output_index = first.output_index
        if bias is not None:
            layer.bias = bias_of.setdefault(id(bias), layer.bias)


def _coefficient_shape(layer: BasisConv2d) -> tuple:
    """What layers share one coefficient matrix by (``share_coefficients``)."""
    return layer.out_channels, layer.num_basis, layer.coefficient_rank


def share_coefficients_by_shape(layers: dict[str, BasisConv2d],
                        sources: dict[str, nn.Conv2d] | None) -> None:
    """Tie the coefficient parameters of same-shaped layers to the first one's; refit them
    jointly to the source convs' weights when given."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, layer in layers.items():
        groups[_coefficient_shape(layer)].append(name)
    for names in groups.values():
        if len(names) < 2:
            continue
        first = layers[names[0]]
        # the shared matrix trains if any of its layers' coefficients did
        trainable = any(layers[n].coefficient_parameters()[0].requires_grad for n in names)
        for p in first.coefficient_parameters():
            p.requires_grad_(trainable)
        for name in names[1:]:
            if first.coefficient_rank is None:
                layers[name].coefficients = first.coefficients
            else:
                layers[name].coefficients_left = first.coefficients_left
                layers[name].coefficients_right = first.coefficients_right
        if sources is None:
            continue
        basis, rest = [], []
        for name in names:
            layer, weight = layers[name], sources[name].weight.detach()
            stored = torch.argsort(layer.output_index)  # conv channel of each stored channel
            basis.append(layer.basis_weight.detach().reshape(layer.num_basis, -1))
            rest.append(weight.reshape(weight.shape[0], -1)[stored[layer.num_basis:]])
        first.set_coefficients(*fit_coefficients(torch.cat(basis, 1), torch.cat(rest, 1),
                                                 first.coefficient_rank))
        for name in names:
            layers[name].reconstruction_error = relative_error(layers[name].dense_weight(),
                                                               sources[name].weight)


def warn_of_earlier_groups(model: nn.Module, layers: dict[str, BasisConv2d]) -> None:
    """Warn where a layer converted with ``share_coefficients`` has the coefficient shape of
    a basis layer the model had before the call: the two do not share (a call ties its own
    layers), which a model rebuilt one layer a call and then loaded hid, as both load the
    same values and then train apart."""
    new = {id(layer) for layer in layers.values()}
    earlier: dict[tuple, str] = {}
    for name, layer in basis_layers(model).items():
        if id(layer) not in new:
            earlier.setdefault(_coefficient_shape(layer), name)
    apart = [f"{name!r} (the coefficient shape of {earlier[shape]!r})"
             for name, layer in layers.items() if (shape := _coefficient_shape(layer)) in earlier]
    if apart:
        more = f" and {len(apart) - 3} more" if len(apart) > 3 else ""
        warn_caller(f"apply_basis: share_coefficients ties the layers converted in one call, "
                    f"not these to the same-shaped basis layers the model had before it: "
                    f"{', '.join(apart[:3])}{more}; convert the layers that share in one call")
