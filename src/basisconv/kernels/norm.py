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
(with ``combine="fused"``, sums shifted by a sample of the maps: :mod:`.triton_moments`),
because statistics in bf16, or raw sums that cancel, would lose the precision batch norm
keeps. In eval mode the running statistics fold in the same way and autograd
differentiates the 1x1 conv.

Limit: ``var_y = a^T Cov_b a`` in float32 has an absolute error of about float32 rounding
times ``|a|^2 |Cov_b|``, so a channel that nearly cancels (nearly collinear basis maps
combined with opposite signs, ``var_y`` far below ``|a|^2 |Cov_b|``) gets a poor variance,
which batch norm, measuring ``y`` itself, would not. Moments in float64 would remove it at
the price of a float64 copy of every basis output per step; see ``docs/speed.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import triton_combine, triton_fold, triton_moments
from .torch_ops import (coefficient_fold, coefficient_fold_backward, combination_rows, fold,
                        moments_backward, relu_combine, relu_combine_backward, update_running,
                        without_autocast)


class BatchNormedCombination(torch.autograd.Function):
    """``relu?(BN(a @ maps + c))`` with the batch's statistics, from the basis maps.

    Forward: the moments, the folded matrix (tiny), one 1x1 conv, the ReLU in place.
    Backward, with ``g`` the output gradient through the ReLU mask:

    * the 1x1 conv's own backward (``aten.convolution_backward``: oneDNN or cuDNN) gives
      the maps' gradient along the linear path and the folded matrix's; the folded bias's
      is ``g`` summed;
    * those flow back through the fold (tensors of ``C_out`` or ``m x m`` entries,
      :func:`.torch_ops.norm_fold_backward`) to ``a``, the norm's parameters and the
      moments;
    * the moments' gradients reach the maps in one more ``m -> m`` 1x1 conv, added to the
      linear path's (:func:`.torch_ops.moments_backward`).

    So the full-width tensors are read once each (``g``, the output for the mask), and
    nothing of batch norm's own backward runs. With ``kernel`` (``combine="fused"``) the
    moments, the fold, the combination and their backward are :mod:`.triton_moments`',
    :mod:`.triton_fold`'s and :mod:`.triton_combine`'s kernels (the moments' 1x1 conv and
    the add one pass). Saved: the maps, the output where a ReLU needs its mask, and
    tensors of ``C_out`` or ``m x m`` entries. A backward that is itself differentiated (``create_graph=True``) is autograd's, of the
    forward recomputed (:func:`_differentiable_backward`)."""

    @staticmethod
    def forward(ctx, maps, coefficients, output_index, conv_bias, norm_weight, norm_bias, eps,
                relu, kernel, running_mean, running_var, momentum):
        out, (mean_b, cov_b, folded, _, mean, var) = _batch_normed(
            maps, coefficients, output_index, conv_bias, norm_weight, norm_bias, eps, relu,
            kernel, running_mean, running_var, momentum)
        # the output only for the ReLU's mask: without one, it may be changed in place later
        ctx.save_for_backward(maps, out if relu else None, coefficients, output_index,
                              conv_bias, norm_weight, norm_bias, mean_b, cov_b, mean, var,
                              folded)
        ctx.eps, ctx.relu, ctx.kernel = eps, relu, kernel
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: this gradient is differentiated too
            return _differentiable_backward(ctx, grad_out)
        (maps, out, coefficients, output_index, conv_bias, norm_weight, norm_bias, mean_b,
         cov_b, mean, var, folded) = ctx.saved_tensors
        maps_grad = ctx.needs_input_grad[0]
        with without_autocast(maps.device.type):
            backward = (triton_combine.folded_combine_backward if ctx.kernel
                        else relu_combine_backward)
            grad_maps, grad_folded, grad_folded_bias = backward(grad_out, out, maps, folded,
                                                                ctx.relu, maps_grad)
            grad_folded_bias = grad_folded_bias.to(mean.dtype)
            grads = (grad_folded.to(mean.dtype), grad_folded_bias, coefficients, output_index,
                     mean_b, cov_b, mean, var, conv_bias, norm_weight, ctx.eps)
            grad_coefficients, grad_conv_bias, grad_weight, sym, shift = (
                triton_fold.folded_norm_backward(*grads, maps, maps_grad) if ctx.kernel
                else coefficient_fold_backward(*grads, maps.numel() // maps.shape[1],
                                               maps_grad))
            if maps_grad:  # the moments' part: d rows += rows S + shift, an m -> m 1x1 conv
                add_moments_grad = (triton_moments.moments_backward if ctx.kernel
                                    else moments_backward)
                grad_maps = add_moments_grad(grad_maps, maps, sym, shift)
            else:
                grad_maps = None
        return (grad_maps, grad_coefficients, None,
                grad_conv_bias if ctx.needs_input_grad[3] else None,
                grad_weight if ctx.needs_input_grad[4] else None,
                grad_folded_bias if ctx.needs_input_grad[5] else None, *(None,) * 6)


def _batch_normed(maps, coefficients, output_index, conv_bias, norm_weight, norm_bias,
                  eps: float, relu: bool, kernel: bool = False, running_mean=None,
                  running_var=None, momentum: float = 0.0):
    """:class:`BatchNormedCombination`'s forward: the output, and what
    :func:`.torch_ops.norm_fold` gives (the moments, the folded matrix and bias, the
    outputs' mean and variance), in plain operations or (``kernel``) the kernels; the
    running averages, where given, updated in place (by the fold's kernel there)."""
    with without_autocast(maps.device.type):
        args = (maps, coefficients, output_index, conv_bias, norm_weight, norm_bias, eps)
        # (not while torch.compile traces: it fuses the standard ops' update itself, and a
        # cumulative average's momentum can be a traced symbol there, which the kernel's
        # float argument refuses)
        in_kernel = (kernel and running_mean is not None
                     and not torch.compiler.is_compiling())
        if kernel:
            stats = triton_fold.folded_norm(*args, *((running_mean, running_var, momentum)
                                                     if in_kernel else ()))
        else:
            stats = coefficient_fold(*args)
        if running_mean is not None and not in_kernel:
            update_running(running_mean, running_var, stats[4], stats[5],
                           maps.numel() // maps.shape[1], momentum)
        return _combine(maps, stats[2], stats[3], relu, kernel), stats


def _differentiable_backward(ctx, grad_out) -> tuple:
    """The backward when its result is differentiated again (``create_graph=True``: a
    gradient penalty, a Hessian-vector product): the forward recomputed in plain operations
    and differentiated by autograd, so the gradient has a graph of its own. The written-out
    backward has none, and a second-order gradient through it came out wrong or ``None``."""
    maps, _, coefficients, output_index, conv_bias, norm_weight, norm_bias, *_ = ctx.saved_tensors
    inputs = (maps, coefficients, output_index, conv_bias, norm_weight, norm_bias)
    wanted = [i for i, t in enumerate(inputs) if ctx.needs_input_grad[i] and t is not None]
    grads = [None] * 12
    if wanted:
        out = _batch_normed(*inputs, ctx.eps, ctx.relu)[0]
        found = torch.autograd.grad(out, [inputs[i] for i in wanted], grad_out,
                                    create_graph=True, allow_unused=True)
        for i, grad in zip(wanted, found):
            grads[i] = grad if grad is not None else torch.zeros_like(inputs[i])
    return tuple(grads)


def basis_conv_batch_norm(x: torch.Tensor, basis_weight: torch.Tensor,
                          coefficients: torch.Tensor, output_index: torch.Tensor,
                          conv_bias: torch.Tensor | None, stride, padding, dilation, *,
                          norm_weight: torch.Tensor | None,
                          norm_bias: torch.Tensor | None, eps: float,
                          running: tuple[torch.Tensor, torch.Tensor] | None, relu: bool,
                          fused: bool = False,
                          update: tuple[torch.Tensor, torch.Tensor, float] | None = None
                          ) -> torch.Tensor:
    """``relu?(batch_norm(conv(x)))`` for a basis conv (``coefficients`` ``[C_out - m, m]``,
    output channel ``j`` stored channel ``output_index[j]`` of ``[basis, combined]``:
    :func:`.torch_ops.combination_rows`) without the full-width intermediates.

    ``running``: ``(mean, var)`` to normalize with (eval mode), or ``None`` to use the
    batch's statistics (training); then ``update``, ``(running_mean, running_var,
    momentum)``, moves those running averages towards the batch's in place
    (:func:`.torch_ops.update_running`). Batches of fewer than two values per channel are
    taken as batch norm takes them: one value is refused (its variance is zero), and an
    empty batch, which has no statistics, is "normalized" with mean 0 and variance 1 and
    updates nothing (its moments would be NaN, and so would the running averages and the
    gradients of ``a`` and the norm's weight).

    ``fused`` (the layer's ``combine="fused"``): the batch moments, the fold, the
    combination, its ReLU and their backward run as :mod:`.triton_moments`',
    :mod:`.triton_fold`'s and :mod:`.triton_combine`'s kernels where they can (else in
    standard ops, said once).
    """
    maps = F.conv2d(x, basis_weight, None, stride, padding, dilation)
    # (not on the cost model's shape-only dry run, nor in an ONNX export, which has no
    # such op: the same function in standard ops there)
    kernel = fused and maps.device.type != "meta" and not torch.onnx.is_in_onnx_export()
    if coefficients.dtype != torch.float64:
        coefficients = coefficients.float()
    count = maps.numel() // maps.shape[1]
    if running is None and count == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"size {torch.Size((maps.shape[0], len(output_index), *maps.shape[2:]))}")
    if running is None and count > 1:
        return BatchNormedCombination.apply(maps, coefficients, output_index, conv_bias,
                                            norm_weight, norm_bias, eps, relu, kernel,
                                            *(update or (None, None, 0.0)))
    a = combination_rows(coefficients, output_index)
    if running is None:  # an empty batch (see above)
        running = (torch.zeros_like(a[:, 0]), torch.ones_like(a[:, 0]))
    with without_autocast(x.device.type):
        mean, var = (t.to(a.dtype) for t in running)
        folded, folded_bias = fold(a, mean, var, conv_bias, norm_weight, norm_bias, eps)
    return _combine(maps, folded, folded_bias, relu, kernel)


def _combine(maps: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor,
             relu: bool, kernel: bool = False) -> torch.Tensor:
    """``relu?(matrix @ maps + bias)`` per pixel: :mod:`.triton_combine`'s kernel with
    ``kernel``, else a 1x1 conv and a ReLU."""
    if kernel:
        return triton_combine.folded_combine(maps, matrix, bias, relu)
    return relu_combine(maps, matrix, bias, relu)
