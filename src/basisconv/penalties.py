"""The training penalties over a model's basis layers, the terms a training loop adds to
its loss: :func:`frobenius_decay_correction` (plain weight decay on a layer's factors
made decay on the weight it computes, ``basis.frobenius_decay``; with
:func:`squared_norm_of_product`, the cheaper of two forms of each layer's ``||A B||^2``)
and :func:`coefficient_l1` (sparse coefficients, ``basis.coefficient_l1``).

Kept apart from :mod:`basisconv.layers`: that module says what a basis layer stores and
computes; these are what training asks of the layers, read through their parameters
(:func:`basis_penalty` is the term they add to the loss). Nothing in the layer
calls them. They were defined in ``basisconv.layers`` first, which cannot export them
now: it would import this module, which imports it (``basis_layers``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .errors import ConfigError
from .kernels import without_autocast
from .layers import basis_layers


def frobenius_decay_correction(model: nn.Module) -> torch.Tensor:
    """What turns plain weight decay on a basis layer's factors into decay on the weight it
    computes: ``weight_decay / 2`` times this, added to the loss, makes SGD's decay of the
    basis filters ``B`` and the coefficients ``A`` (each ``weight_decay * p``) the gradient
    of ``weight_decay / 2 * ||W||^2``, ``W = P [B; A B]`` (the dense conv's decay, on its
    weight): ``||W||^2`` less the squares SGD already decays. Plain decay on the factors
    penalizes ``||B||^2 + ||A||^2``, another regularizer than the dense model's (Khodak et
    al., ICLR 2021, "Frobenius decay" of factorized layers). Each weight (tied layers) and
    each parameter (shared coefficients) counts once; outside autocast, in the parameters'
    dtype."""
    layers = list(basis_layers(model).values())
    if not layers:
        raise ConfigError("frobenius_decay_correction: the model has no BasisConv2d layers; "
                          "convert some with basisconv.surgery.apply_basis first")
    total = layers[0].basis_weight.new_zeros(())
    weights: set[tuple[int, ...]] = set()
    decayed: dict[int, nn.Parameter] = {}
    with without_autocast(layers[0].basis_weight.device.type):
        for layer in layers:
            factors = [layer.basis_weight, *layer.coefficient_parameters()]
            decayed.update((id(p), p) for p in factors)
            if tuple(map(id, factors)) in weights:
                continue
            weights.add(tuple(map(id, factors)))
            basis = layer.basis_weight.flatten(1)
            total = (total + basis.square().sum()
                     + squared_norm_of_product(layer.coefficient_matrix(), basis))
        return total - sum(p.square().sum() for p in decayed.values())


def product_norm_macs(rows: int, num_basis: int, columns: int) -> tuple[int, int]:
    """Multiply-adds of ``||A B||^2`` for ``A`` of ``rows x num_basis`` and ``B`` of
    ``num_basis x columns``: as the product ``A B``, and as ``<A^T A, B B^T>`` (the two
    Gram matrices). The backward of either costs twice its forward."""
    return rows * num_basis * columns, num_basis * num_basis * (rows + columns)


def squared_norm_of_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a @ b||^2`` (Frobenius), by the cheaper of two equal forms: ``<a^T a, b b^T>``
    never builds the ``(C_out - m) x C_in k^2`` product, and costs ``m^2 (C_out - m + C_in
    k^2)`` multiply-adds against the product's ``(C_out - m) m C_in k^2``: about 2.8x
    fewer for a 256-channel 3x3 layer at basis 1/4, about as many at 1/2, 3x more at 3/4
    (then the product is taken). Its value can lose relative precision where ``a b`` is
    far smaller than ``a`` and ``b``; its gradients (``2 a (b b^T)``, ``2 (a^T a) b``)
    do not, and they are what training uses."""
    product, gram = product_norm_macs(a.shape[0], a.shape[1], b.shape[1])
    if gram < product:
        return (a.T @ a * (b @ b.T)).sum()
    return (a @ b).square().sum()


def coefficient_l1(model: nn.Module) -> torch.Tensor:
    """Sum of absolute coefficients over the model's basis layers (shared matrices once):
    add ``weight * coefficient_l1(model)`` to the loss for sparse coefficients."""
    seen: set[int] = set()
    total = None
    for layer in basis_layers(model).values():
        key = id(layer.coefficient_parameters()[0])
        if key in seen:
            continue
        seen.add(key)
        term = layer.coefficient_matrix().abs().sum()
        total = term if total is None else total + term
    if total is None:
        raise ConfigError("coefficient_l1: the model has no BasisConv2d layers; convert some "
                         "with basisconv.surgery.apply_basis first")
    return total


#: :func:`coefficient_l1` under another name for :func:`basis_penalty`, whose keyword of
#: that name (the penalty's weight, ``basis.coefficient_l1``) hides the function there.
_coefficient_l1_sum = coefficient_l1


def basis_penalty(model: nn.Module, weight_decay: float, *, coefficient_l1: float = 0.0,
                  frobenius_decay: bool = False):
    """What a model with basis layers adds to its loss, or ``None``: the L1 penalty on the
    coefficient matrices (``basis.coefficient_l1``) and, with ``basis.frobenius_decay``,
    the correction that makes the optimizer's ``weight_decay`` decay each basis layer's
    computed weight rather than its two factors (:func:`frobenius_decay_correction`)."""
    frobenius = weight_decay if frobenius_decay else 0.0
    if coefficient_l1 <= 0 and frobenius <= 0 or not basis_layers(model):
        return None  # (a probe's dense reference has no basis layer)

    def penalty() -> torch.Tensor:
        terms = [coefficient_l1 * _coefficient_l1_sum(model)] if coefficient_l1 > 0 else []
        terms += [frobenius / 2 * frobenius_decay_correction(model)] if frobenius > 0 else []
        return sum(terms[1:], terms[0])
    return penalty


__all__ = ["basis_penalty", "coefficient_l1", "frobenius_decay_correction", "product_norm_macs",
           "squared_norm_of_product"]
