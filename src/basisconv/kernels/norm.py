"""A basis convolution, the batch norm after it and its ReLU as one computation: the
full-width activation is written once.

Why: a basis layer saves multiply-adds in the conv, but the batch norm and the ReLU after
it still read and write all ``C_out`` channels, once for the statistics, once to
normalize, once for the ReLU, and as often again in the backward. On a GPU these passes
are memory-bound and cost about as much as the conv they follow, so they cap what the
basis can save (issue 13). They need not run at full width:

* the combined outputs are ``y = A b + c`` (``A`` the ``[C_out, m]`` combination matrix,
  ``b`` the ``m`` basis maps, ``c`` the conv's bias), so their batch statistics follow from
  the ``m x m`` moments of the basis maps: ``mean_y = A mean_b + c`` and
  ``var_y = diag(A Cov_b A^T)``;
* normalizing is then a per-channel scale ``s = gamma / sqrt(var_y + eps)`` and shift,
  which fold into the combination: ``BN(y) = (s A) b + (beta - s (A mean_b))``;
* so the output is one GEMM of the basis maps with the folded matrix (a 1x1 conv), its
  bias added and the ReLU applied in place: the only full-width tensor of the forward,
  and the backward reads it once for the ReLU mask.

With batch statistics the backward is written out (:class:`BatchNormedCombination`): it
differentiates through the moments as batch norm's own backward does through its
statistics, so the gradients are batch norm's (checked in float64 against the unfused
layers in ``tests/test_norm_fusion.py``), and ``torch.compile`` can trace it. The moments
are taken in float32 (float64 for float64 maps) with autocast off, from centred maps
(with ``combine="fused"``, shifted sums merged exactly: :mod:`.triton_moments`), because
statistics in bf16, or raw sums that cancel, would lose the precision batch norm keeps. In eval mode the
running statistics fold in the same way and autograd differentiates the 1x1 conv.

Limit: ``var_y = a^T Cov_b a`` in float32 has an absolute error of about float32 rounding
times ``|a|^2 |Cov_b|``, so a channel that nearly cancels (nearly collinear basis maps
combined with opposite signs, ``var_y`` far below ``|a|^2 |Cov_b|``) gets a poor variance,
which batch norm, measuring ``y`` itself, would not. Moments in float64 would remove it at
the price of a float64 copy of every basis output per step; see ``docs/speed.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import triton_combine, triton_moments
from .torch_ops import basis_moments, relu_combine, relu_combine_backward, without_autocast


class BatchStatistics(NamedTuple):
    """Per-channel statistics of the combined outputs over the batch (detached), for the
    caller's running averages: the mean and the biased variance, and the element count."""

    mean: torch.Tensor
    var: torch.Tensor
    count: int


def _normalizer(mean: torch.Tensor, var: torch.Tensor, conv_bias: torch.Tensor | None,
                norm_weight: torch.Tensor | None, eps: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch norm's per-channel ``rstd = 1/sqrt(var + eps)``, ``scale = gamma rstd`` and the
    ``offset = c - mean`` it scales (the conv bias enters as batch norm sees it: with batch
    statistics ``mean`` includes it, so it cancels, its gradient exactly zero as in the
    unfused layers)."""
    rstd = torch.rsqrt(var + eps)
    scale = rstd if norm_weight is None else rstd * norm_weight
    return rstd, scale, (-mean if conv_bias is None else conv_bias - mean)


def fold(a: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
         conv_bias: torch.Tensor | None, norm_weight: torch.Tensor | None,
         norm_bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The combination ``a`` and its bias with batch norm folded in, given the mean and
    variance of the combined outputs: ``BN(a b + c) = (s a) b + (beta + s (c - mean))``."""
    _, scale, offset = _normalizer(mean, var, conv_bias, norm_weight, eps)
    return scale[:, None] * a, (scale * offset if norm_bias is None else norm_bias + scale * offset)


def output_moments(a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor,
                   conv_bias: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and biased variance of the combined outputs ``a b + c`` from the basis maps'
    moments, ``a mean_b + c`` and ``diag(a cov_b a^T)``, and ``a cov_b`` (the backward's)."""
    mean = a @ mean_b if conv_bias is None else a @ mean_b + conv_bias
    a_cov = a @ cov_b
    return mean, (a_cov * a).sum(1).clamp_min(0), a_cov


class BatchNormedCombination(torch.autograd.Function):
    """``relu?(BN(a @ maps + c))`` with the batch's statistics, from the basis maps.

    Forward: the moments, the folded matrix (tiny), one 1x1 conv, the ReLU in place.
    Backward, with ``g`` the output gradient through the ReLU mask:

    * the 1x1 conv's own backward (``aten.convolution_backward``: oneDNN or cuDNN) gives
      the maps' gradient along the linear path and the folded matrix's; the folded bias's
      is ``g`` summed;
    * those flow back through :func:`fold` and :func:`output_moments` (tensors of ``C_out``
      or ``m x m`` entries, :func:`_fold_backward`) to ``a``, the norm's parameters and the
      moments;
    * the moments' gradients ``G`` (of ``cov_b``) and ``d mean_b`` reach the maps in one
      more ``m -> m`` 1x1 conv: ``d rows += (rows - mean_b) S + d mean_b / n``, with
      ``S = (G + G^T) / n`` and ``n`` the pixels in the batch.

    So the full-width tensors are read once each (``g``, the output for the mask), and
    nothing of batch norm's own backward runs. Saved: the maps, and the output where a
    ReLU needs its mask. A backward that is itself differentiated (``create_graph=True``)
    is autograd's, of the forward recomputed (:func:`_differentiable_backward`)."""

    @staticmethod
    def forward(ctx, maps, a, conv_bias, norm_weight, norm_bias, eps, relu, kernel):
        out, mean_b, a_cov, mean, var = _batch_normed(maps, a, conv_bias, norm_weight,
                                                      norm_bias, eps, relu, kernel)
        # the output only for the ReLU's mask: without one, it may be changed in place later
        ctx.save_for_backward(maps, out if relu else None, a, conv_bias, norm_weight, norm_bias,
                              mean_b, a_cov, mean, var)
        ctx.eps, ctx.relu, ctx.kernel = eps, relu, kernel
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        if torch.is_grad_enabled():  # create_graph=True: this gradient is differentiated too
            return _differentiable_backward(ctx, grad_out)
        (maps, out, a, conv_bias, norm_weight, norm_bias, mean_b, a_cov, mean,
         var) = ctx.saved_tensors
        count, maps_grad = maps.numel() // maps.shape[1], ctx.needs_input_grad[0]
        with without_autocast(maps.device.type):
            normalizer = _normalizer(mean, var, conv_bias, norm_weight, ctx.eps)
            folded = normalizer[1][:, None] * a
            grad_maps, grad_folded, grad_folded_bias = (
                triton_combine.folded_combine_backward(grad_out, out, maps, folded, ctx.relu)
                if ctx.kernel else relu_combine_backward(grad_out, out, maps, folded, ctx.relu,
                                                         maps_grad))
            small = _fold_backward(grad_folded.to(a.dtype),
                                   grad_folded_bias.to(a.dtype), a, mean_b, a_cov, normalizer,
                                   conv_bias, norm_weight, maps_grad)
            grad_a, grad_conv_bias, grad_weight, grad_bias, grad_mean_b, grad_cov_b = small
            if maps_grad:  # d rows += (rows - mean_b) S + d mean_b / n, an m -> m 1x1 conv
                sym = (grad_cov_b + grad_cov_b.T) / count
                shift = grad_mean_b / count - sym @ mean_b
                grad_maps = grad_maps + F.conv2d(maps, sym.to(maps.dtype)[:, :, None, None],
                                                 shift.to(maps.dtype))
        return (grad_maps, grad_a, grad_conv_bias if ctx.needs_input_grad[2] else None,
                grad_weight if ctx.needs_input_grad[3] else None,
                grad_bias if ctx.needs_input_grad[4] else None, None, None, None)


def _batch_normed(maps, a, conv_bias, norm_weight, norm_bias, eps: float, relu: bool,
                  kernel: bool = False):
    """:class:`BatchNormedCombination`'s forward in plain operations: the output, and the
    moments its backward keeps (``mean_b``, ``a cov_b``, the outputs' mean and variance)."""
    with without_autocast(maps.device.type):
        moments = triton_moments.fused_basis_moments if kernel else basis_moments
        mean_b, cov_b = (t.to(a.dtype) for t in moments(maps))
        mean, var, a_cov = output_moments(a, mean_b, cov_b, conv_bias)
        folded, folded_bias = fold(a, mean, var, conv_bias, norm_weight, norm_bias, eps)
        return _combine(maps, folded, folded_bias, relu, kernel), mean_b, a_cov, mean, var


def _differentiable_backward(ctx, grad_out) -> tuple:
    """The backward when its result is differentiated again (``create_graph=True``: a
    gradient penalty, a Hessian-vector product): the forward recomputed in plain operations
    and differentiated by autograd, so the gradient has a graph of its own. The written-out
    backward has none, and a second-order gradient through it came out wrong or ``None``."""
    maps, _, a, conv_bias, norm_weight, norm_bias, *_ = ctx.saved_tensors
    inputs = (maps, a, conv_bias, norm_weight, norm_bias)
    wanted = [i for i, t in enumerate(inputs) if ctx.needs_input_grad[i] and t is not None]
    grads = [None] * 8
    if wanted:
        out = _batch_normed(*inputs, ctx.eps, ctx.relu)[0]
        found = torch.autograd.grad(out, [inputs[i] for i in wanted], grad_out,
                                    create_graph=True, allow_unused=True)
        for i, grad in zip(wanted, found):
            grads[i] = grad if grad is not None else torch.zeros_like(inputs[i])
    return tuple(grads)


def _fold_backward(grad_folded, grad_folded_bias, a, mean_b, a_cov, normalizer, conv_bias,
                   norm_weight, moments_grad: bool):
    """The gradients of :func:`fold` after :func:`output_moments`, by hand (autograd
    inside a backward would keep ``torch.compile`` from tracing it): for ``a``, the conv
    bias (zero: it cancels), the norm's weight and bias, and (``moments_grad``) the basis
    moments. ``normalizer``: what :func:`_normalizer` gave the forward."""
    rstd, scale, offset = normalizer
    grad_scale = (grad_folded * a).sum(1) + grad_folded_bias * offset
    grad_mean = -grad_folded_bias * scale
    grad_rstd = grad_scale if norm_weight is None else grad_scale * norm_weight
    grad_var = -0.5 * grad_rstd * rstd ** 3
    grad_a = (scale[:, None] * grad_folded + grad_mean[:, None] * mean_b[None, :]
              + 2 * grad_var[:, None] * a_cov)
    grad_conv_bias = None if conv_bias is None else grad_folded_bias * scale + grad_mean
    grad_weight = None if norm_weight is None else grad_scale * rstd
    if not moments_grad:
        return grad_a, grad_conv_bias, grad_weight, grad_folded_bias, None, None
    return (grad_a, grad_conv_bias, grad_weight, grad_folded_bias, a.T @ grad_mean,
            a.T @ (grad_var[:, None] * a))


def basis_conv_batch_norm(x: torch.Tensor, basis_weight: torch.Tensor,
                          combination: torch.Tensor, conv_bias: torch.Tensor | None,
                          stride, padding, dilation, *, norm_weight: torch.Tensor | None,
                          norm_bias: torch.Tensor | None, eps: float,
                          running: tuple[torch.Tensor, torch.Tensor] | None, relu: bool,
                          fused: bool = False
                          ) -> tuple[torch.Tensor, BatchStatistics | None]:
    """``relu?(batch_norm(conv(x)))`` for a basis conv (``combination`` ``[C_out, m]``, rows
    in output order) without the full-width intermediates.

    ``running``: ``(mean, var)`` to normalize with (eval mode), or ``None`` to use the
    batch's statistics (training), which are then returned for the running averages.
    Batches of fewer than two values per channel are taken as batch norm takes them: one
    value is refused (its variance is zero), and an empty batch, which has no statistics,
    is "normalized" with mean 0 and variance 1 and returns none (its moments would be NaN,
    and so would the running averages and the gradients of ``a`` and the norm's weight).

    ``fused`` (the layer's ``combine="fused"``): the batch moments, the combination, its
    ReLU and their backward run as :mod:`.triton_moments`' and :mod:`.triton_combine`'s
    kernels where they can (else in standard ops, said once).
    """
    maps = F.conv2d(x, basis_weight, None, stride, padding, dilation)
    # (not on the cost model's shape-only dry run, nor in an ONNX export, which has no
    # such op: the same function in standard ops there)
    kernel = fused and maps.device.type != "meta" and not torch.onnx.is_in_onnx_export()
    a = combination if combination.dtype == torch.float64 else combination.float()
    count = maps.numel() // maps.shape[1]
    if running is None and count == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"size {torch.Size((maps.shape[0], a.shape[0], *maps.shape[2:]))}")
    if running is None and count > 1:
        out, mean, var = BatchNormedCombination.apply(maps, a, conv_bias, norm_weight,
                                                      norm_bias, eps, relu, kernel)
        return out, BatchStatistics(mean, var, count)
    if running is None:  # an empty batch (see above)
        running = (torch.zeros_like(a[:, 0]), torch.ones_like(a[:, 0]))
    with without_autocast(x.device.type):
        mean, var = (t.to(a.dtype) for t in running)
        folded, folded_bias = fold(a, mean, var, conv_bias, norm_weight, norm_bias, eps)
    return _combine(maps, folded, folded_bias, relu, kernel), None


def _combine(maps: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor,
             relu: bool, kernel: bool = False) -> torch.Tensor:
    """``relu?(matrix @ maps + bias)`` per pixel: :mod:`.triton_combine`'s kernel with
    ``kernel``, else a 1x1 conv and a ReLU."""
    if kernel:
        return triton_combine.folded_combine(maps, matrix, bias, relu)
    return relu_combine(maps, matrix, bias, relu)
