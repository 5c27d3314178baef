"""Parameters and FLOPs of convolutions, basis convolutions and linear layers, by formula
(the cost model): one layer at given shapes (:func:`conv2d_cost`,
:func:`basis_conv2d_cost`, :func:`linear_cost`; :func:`layer_cost` reads them off a module),
the multiply-adds per output pixel and whether a basis layer saves compute
(:func:`saves_compute`), and what a cost holds (:class:`LayerCost`, :class:`ModelCost`).

Apart from :mod:`basisconv.cost`, which counts a whole model (a dry run of its copy on the
meta device, a real step under ``FlopCounterMode``, its parameters): nothing here runs or
copies a model, and nothing here calls back into it; choosing layers and basis sizes
(``surgery``, ``basis_sizes``) and the figures need only these formulas.

Conventions (those of ``torch.utils.flop_counter.FlopCounterMode``, so that the two agree
exactly on a model): a multiply-add is 2 FLOPs; only convolutions and matrix products are
counted, not batch norm, activations, additions, pooling or bias additions. For a layer
with output ``H' x W'`` at batch ``B``, ``K = C_in*kh*kw`` and ``m`` basis filters:

* dense conv: forward ``2*B*H'*W'*C_out*K``; the gradient w.r.t. the input and the one
  w.r.t. the weight each cost the same as the forward;
* basis conv: the basis conv ``2*B*H'*W'*m*K`` plus the combination, a 1x1 conv of
  ``2*B*H'*W'*C_out*m`` (stacked, the default forward) or ``2*B*H'*W'*(C_out - m)*m``
  (split, the minimal count); each of the two again costs its forward once for the
  activation gradient and once for the weight gradient; with low-rank coefficients
  (rank ``r``) the product of the factors adds ``2*(C_out - m)*r*m`` forward and the same
  twice in backward (no ``B*H'*W'`` factor);
* linear: ``2*B*in*out`` forward, the same for each gradient;
* a basis conv with its batch norm folded in (``fuse_norm``, :mod:`basisconv.kernels.norm`):
  the combination is always the stacked 1x1 conv, with the folded matrix; with batch
  statistics the forward adds the basis maps' Gram matrix ``2*B*H'*W'*m*m`` and
  ``2*C_out*m*m`` for ``A Cov_b``, the activation gradient adds as much again (an ``m -> m``
  1x1 conv and ``A^T diag(.) A``), and the folded matrix's gradient is computed whenever
  anything of the layer needs a gradient (the statistics need it), with ``A Cov_b`` again
  (``2*C_out*m*m``: the backward recomputes it rather than keep it); with running
  statistics it is computed only when the coefficients or the norm's weight train, except
  with ``combine="fused"``, whose combination op's backward computes it whenever anything
  of the layer needs a gradient.

Backward is stated as two parts: ``grad_input`` (activation gradients: for a basis layer
the combination's gradient w.r.t. the basis maps and the basis conv's gradient w.r.t. the
layer input) and ``grad_weight`` (parameter gradients). A part is counted only when
autograd computes it: the network's input image needs no gradient, so the stem conv has no
grad-input FLOPs, and frozen parameters (e.g. coefficients on a skipped step of
:class:`basisconv.surgery.CoefficientSkipSchedule`) have no weight-gradient FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from math import prod
from typing import Sequence

import torch.nn as nn
from torch.nn.modules.utils import _pair

from .errors import ConfigError
from .layer_options import resolve_num_basis
from .layers import COMBINE_MODES, BasisConv2d, layer_shape


class _FlopSums:
    """The sums every cost reports, from its forward and two backward FLOP counts."""

    @property
    def backward_flops(self) -> int:
        return self.grad_input_flops + self.grad_weight_flops

    @property
    def total_flops(self) -> int:
        return self.forward_flops + self.backward_flops


@dataclass(frozen=True)
class LayerCost(_FlopSums):
    """Parameters and FLOPs of one layer call at one input shape."""

    name: str
    kind: str  # "conv", "basis_conv" or "linear"
    shape: str  # e.g. "64->64 k3x3 m16 out 32x32"
    params: int
    forward_flops: int
    grad_input_flops: int
    grad_weight_flops: int

    @property
    def forward_macs(self) -> int:
        return self.forward_flops // 2


@dataclass
class ModelCost(_FlopSums):
    """Per-layer costs and totals of a model at one input shape."""

    input_shape: tuple[int, ...]
    params: int  # every entry, frozen too (BN, biases; shared tensors once, pruned ones not)
    layers: list[LayerCost] = field(default_factory=list)

    @property
    def forward_flops(self) -> int:
        return sum(c.forward_flops for c in self.layers)

    @property
    def grad_input_flops(self) -> int:
        return sum(c.grad_input_flops for c in self.layers)

    @property
    def grad_weight_flops(self) -> int:
        return sum(c.grad_weight_flops for c in self.layers)

    def by_layer(self) -> dict[str, LayerCost]:
        """One cost per layer name, in model order: a module called more than once (reused
        in ``forward``) gets its calls' FLOPs summed and its parameters once."""
        merged: dict[str, LayerCost] = {}
        for cost in self.layers:
            seen = merged.get(cost.name)
            merged[cost.name] = cost if seen is None else replace(
                seen, forward_flops=seen.forward_flops + cost.forward_flops,
                grad_input_flops=seen.grad_input_flops + cost.grad_input_flops,
                grad_weight_flops=seen.grad_weight_flops + cost.grad_weight_flops)
        return merged

    def totals(self) -> dict[str, int]:
        """The model totals, as stored in the golden file."""
        return {"params": self.params, "forward_flops": self.forward_flops,
                "grad_input_flops": self.grad_input_flops,
                "grad_weight_flops": self.grad_weight_flops}


def counted_combine(combine: str, fused_norm) -> str:
    """The combination form a layer's compute is counted in: a layer that runs with its
    batch norm folded in (``fuse_norm``) combines stacked, as one 1x1 conv with the norm
    in it, whatever ``combine`` says."""
    return "stacked" if fused_norm else combine


def basis_macs_per_pixel(in_channels: int, out_channels: int, kernel_size, num_basis: int,
                         combine: str = "stacked") -> tuple[int, int]:
    """Multiply-adds per output pixel of a basis conv's two stages: the basis conv
    (``m*K`` with ``K = C_in*kh*kw``) and the combination (``C_out*m`` stacked or fused,
    or the minimal ``(C_out - m)*m`` split; the paper's own formulas are not known to us)."""
    if combine not in COMBINE_MODES:  # (a typo was counted as the split form, silently)
        raise ConfigError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    kh, kw = _pair(kernel_size)
    # "auto" is counted as the stacked form, the basis algorithm it runs where it wins
    combined = out_channels if combine in ("stacked", "fused", "auto") else out_channels - num_basis
    return num_basis * in_channels * kh * kw, combined * num_basis


def forward_macs_per_pixel(in_channels: int, out_channels: int, kernel_size, num_basis: int | None,
                           combine: str = "stacked", fused_norm: bool = False) -> int:
    """Multiply-adds per output pixel of a dense conv (``num_basis=None``: ``C_out*K``) or
    a basis conv (both stages, :func:`basis_macs_per_pixel`). ``fused_norm``: the layer
    runs with its batch norm folded in, stacked, and in training also computes the
    ``m x m`` moments of its basis maps, ``m*m`` more per pixel (:func:`basis_conv2d_cost`)."""
    if num_basis is None:
        kh, kw = _pair(kernel_size)
        return out_channels * in_channels * kh * kw
    stages = basis_macs_per_pixel(in_channels, out_channels, kernel_size, num_basis,
                                  counted_combine(combine, fused_norm))
    return sum(stages) + (num_basis * num_basis if fused_norm else 0)


def saves_compute(conv_or_shape, num_basis: int | float, combine: str = "stacked",
                  fused_norm: bool = False) -> bool:
    """Whether a basis layer of this size does fewer multiply-adds than the dense conv.

    ``conv_or_shape`` is an ``nn.Conv2d`` or a tuple ``(in_channels, out_channels,
    kernel_size)``. With the minimal count (``combine="split"``) the per-pixel saving is
    ``(C_out - m)*(K - m)``, positive only when ``m < min(C_out, K)``: the 3-channel stem
    (``K = 27``) and 1x1 shortcuts gain little or nothing. The default stacked combination
    needs ``m*(K + C_out) < C_out*K``, slightly stricter. Parameters are saved exactly when
    ``m < min(C_out, K)``.

    ``fused_norm``: the layer runs with its batch norm folded in (``fuse_norm``); its
    moments (:func:`forward_macs_per_pixel`) alone can undo the saving near full rank.
    The rule is per output pixel: what a layer pays once a batch (a folded norm's statistics
    of the combined channels, ``2*C_out*m*m``; a low-rank coefficient product) is left out,
    as a layer is converted before any batch size is known, so near full rank a layer with
    few output pixels (ResNet-18's last stage at size 0.82 with ``fuse_norm``) can be
    converted and cost a little more (``layer_savings``' ``forward_flops_saved`` says so).
    This is the forward's count. In a training step every layer's backward saves as its
    forward does, except a first layer, whose input needs no gradient: there the basis
    form still pays the combination's input gradient, so the stem can cost more to train
    than it saves in the forward (the candidate table's ``flops_saved`` says so).
    """
    if isinstance(conv_or_shape, (nn.Conv2d, BasisConv2d)):
        c_in, c_out, k = layer_shape(conv_or_shape)
    else:
        c_in, c_out, k = conv_or_shape
    m = resolve_num_basis(num_basis, c_out)
    return (forward_macs_per_pixel(c_in, c_out, k, m, combine, fused_norm)
            < forward_macs_per_pixel(c_in, c_out, k, None))


def conv2d_cost(in_channels: int, out_channels: int, kernel_size, output_size, *, batch: int = 1,
                groups: int = 1, bias: bool = False, input_grad: bool = True,
                weight_grad: bool = True, name: str = "") -> LayerCost:
    """A dense ``nn.Conv2d``; ``output_size`` is ``(H', W')``."""
    kh, kw = _pair(kernel_size)
    h, w = _pair(output_size)
    forward = 2 * batch * h * w * out_channels * (in_channels // groups) * kh * kw
    params = out_channels * (in_channels // groups) * kh * kw + (out_channels if bias else 0)
    return LayerCost(name, "conv", f"{in_channels}->{out_channels} k{kh}x{kw} out {h}x{w}",
                     params, forward, forward if input_grad else 0, forward if weight_grad else 0)


def basis_conv2d_cost(in_channels: int, out_channels: int, kernel_size, num_basis: int,
                      output_size, *, batch: int = 1, bias: bool = False, combine: str = "stacked",
                      coefficient_rank: int | None = None, active_coefficients: int | None = None,
                      input_grad: bool = True, basis_grad: bool = True,
                      coefficient_grad: bool = True, factor_grads: int = 2,
                      fused_norm: str | None = None, norm_grad: bool = False,
                      bias_grad: bool = False, name: str = "") -> LayerCost:
    """A :class:`BasisConv2d` as its forward runs it (see the module docstring).

    ``active_coefficients`` is the number of unpruned coefficients (parameters only; the
    pruned matrix is still applied densely). ``factor_grads``: with ``coefficient_rank``,
    how many of the two factors train (each costs its own product in backward).
    ``fused_norm``: ``"batch"`` or ``"running"`` when the layer ran with its batch norm
    folded in, normalizing with those statistics; ``norm_grad``: the norm's weight trains,
    ``bias_grad``: the layer's or the norm's bias does (they decide whether the folded
    matrix gets a gradient).
    """
    kh, kw = _pair(kernel_size)
    h, w = _pair(output_size)
    m, n_comb = num_basis, out_channels - num_basis
    pixels = batch * h * w
    basis_px, combination_px = basis_macs_per_pixel(
        in_channels, out_channels, kernel_size, m, counted_combine(combine, fused_norm))
    basis, combination = 2 * pixels * basis_px, 2 * pixels * combination_px
    factor_product = 2 * n_comb * coefficient_rank * m if coefficient_rank else 0
    if counted_combine(combine, fused_norm) == "split" and not n_comb and coefficient_grad:
        # no combined outputs: the split form ties the empty coefficients to the basis
        # weight (kernels.torch_ops.split_forward), whose gradient is then computed
        basis_grad = True
    maps_grad = input_grad or basis_grad  # the basis maps need a gradient
    moments = 2 * (pixels + out_channels) * m * m if fused_norm == "batch" else 0
    if fused_norm == "batch" or (fused_norm == "running" and combine == "fused"):
        # the statistics' backward takes the folded matrix's gradient, and so does the
        # fused combination's backward op (kernels.triton_combine) whenever it runs
        combination_grad = maps_grad or coefficient_grad or norm_grad or bias_grad
    else:  # a bias (folded or not) does not scale the matrix
        combination_grad = coefficient_grad or (norm_grad and fused_norm == "running")
    grad_input = (combination + moments if maps_grad else 0) + (basis if input_grad else 0)
    # (the fold's backward recomputes ``A Cov_b``, whatever it then computes)
    fold_grad = 2 * out_channels * m * m if fused_norm == "batch" and combination_grad else 0
    grad_weight = ((basis if basis_grad else 0) + (combination if combination_grad else 0)
                   + fold_grad + (factor_grads * factor_product if coefficient_grad else 0))
    if coefficient_rank:
        coefficients = coefficient_rank * (n_comb + m)
    else:
        coefficients = n_comb * m if active_coefficients is None else active_coefficients
    params = m * in_channels * kh * kw + coefficients + (out_channels if bias else 0)
    shape = f"{in_channels}->{out_channels} k{kh}x{kw} m{m} out {h}x{w}"
    if coefficient_rank:
        shape += f" r{coefficient_rank}"
    return LayerCost(name, "basis_conv", shape, params,
                     basis + combination + factor_product + moments, grad_input, grad_weight)


def linear_cost(in_features: int, out_features: int, *, batch: int = 1, bias: bool = True,
                input_grad: bool = True, weight_grad: bool = True, name: str = "") -> LayerCost:
    forward = 2 * batch * in_features * out_features
    return LayerCost(name, "linear", f"{in_features}->{out_features}",
                     in_features * out_features + (out_features if bias else 0), forward,
                     forward if input_grad else 0, forward if weight_grad else 0)


def layer_cost(module: nn.Module, input_shape: Sequence[int], output_shape: Sequence[int], *,
               input_grad: bool, name: str = "", active_coefficients: int | None = None,
               norm: nn.Module | None = None) -> LayerCost:
    """Cost of one call of a ``Conv2d``, ``BasisConv2d`` or ``Linear`` at these shapes;
    whether parameter gradients are computed is read from their ``requires_grad``.
    ``active_coefficients`` overrides the count read from a pruned layer's mask; ``norm``
    is the batch norm a basis layer ran with, folded in (``conv_norm_act``)."""
    # a conv also takes an unbatched [C, H, W] input (a model that runs it image by image):
    # one image, not C of them
    images = input_shape[0] if len(input_shape) == 4 else 1
    if isinstance(module, BasisConv2d):
        mask = module.coefficient_mask
        if mask is not None and active_coefficients is None:
            active_coefficients = int((mask != 0).sum())
        factor_grads = sum(p.requires_grad for p in module.coefficient_parameters())
        biases = [b for b in (module.bias, getattr(norm, "bias", None)) if b is not None]
        return basis_conv2d_cost(
            module.in_channels, module.out_channels, module.kernel_size, module.num_basis,
            tuple(output_shape[-2:]), batch=images, bias=module.bias is not None,
            combine=module.combine, coefficient_rank=module.coefficient_rank,
            active_coefficients=active_coefficients,
            input_grad=input_grad, basis_grad=module.basis_weight.requires_grad,
            coefficient_grad=factor_grads > 0, factor_grads=factor_grads,
            fused_norm=None if norm is None else (
                "batch" if norm.training or norm.running_mean is None else "running"),
            norm_grad=getattr(norm, "weight", None) is not None and norm.weight.requires_grad,
            bias_grad=any(b.requires_grad for b in biases), name=name)
    if isinstance(module, nn.Conv2d):
        return conv2d_cost(module.in_channels, module.out_channels, module.kernel_size,
                           tuple(output_shape[-2:]), batch=images, groups=module.groups,
                           bias=module.bias is not None, input_grad=input_grad,
                           weight_grad=module.weight.requires_grad, name=name)
    if isinstance(module, nn.Linear):
        return linear_cost(module.in_features, module.out_features, batch=prod(input_shape[:-1]),
                           bias=module.bias is not None, input_grad=input_grad,
                           weight_grad=module.weight.requires_grad, name=name)
    raise TypeError(f"layer_cost: no formula for {type(module).__name__} (layer {name!r}); "
                    f"supported are Conv2d, BasisConv2d and Linear")


__all__ = ["LayerCost", "ModelCost", "basis_conv2d_cost", "conv2d_cost", "layer_cost",
           "linear_cost"]
