"""The folded norm's small work as one kernel each way (``fuse_norm=True`` with
``combine="fused"``): from the basis maps' sums to the folded matrix, and back.

Between the moments and the combination, :mod:`.norm`'s fold computes on tensors of
``C_out`` or ``m x m`` entries: the combination's rows, the maps' mean and covariance,
the outputs' mean and variance (``a mean_b + c``, ``diag(a cov_b a^T)``), batch norm's
scale and shift, the folded matrix and bias, the running averages; and in the backward
the same in reverse (:func:`.torch_ops.norm_fold_backward`). In standard ops that is
about 20 operations forward and 30 backward per layer, and merging the moments'
per-program sums about 18 more, each a kernel launch of a few microseconds on a GPU with
almost no work in it: over the seventeen folded layers of a ResNet-18, of the order of
the dense model's whole graphed step (3.6 ms on an H200; an estimate from launch counts,
not a measurement). Here each direction is one launch of one program:

* forward (:func:`fold`): from the moments' sums (:func:`.triton_moments.moment_sums`: a
  common shift, so the programs' sums add up in one reduction) to the maps' mean and
  covariance, then, block by block of output channels, the combination's rows (from the
  coefficients and the output order), the outputs' statistics, the scale, the folded
  matrix (in the maps' dtype, as the combination reads it) and bias, and the norm's
  running averages, moved in place;
* backward (:func:`fold_backward`): the gradients of the coefficients, the conv bias and
  the norm's weight, and the ``m -> m`` matrix and bias through which the moments pass
  their gradient on to the maps (summed over the output channels in the program's loop).

A value per channel is held as a tile whose columns repeat it (a product with a
broadcast vector or a block of ones, as in :mod:`.triton_combine`: ``tl.sum`` is one of
Triton's jit helpers, which the interpreter cannot call), so every step is a tile
operation and one code path serves the interpreter and the GPU. Products are exact
float32 (``"ieee"``): these are statistics. The ``m x m`` tile is one program's, so
bases up to :data:`ONE_PROGRAM_WIDTH`; wider ones, up to
:data:`.triton_moments.MAX_WIDTH`, run the same computation tiled over programs
(:mod:`.triton_fold_wide`), beyond it the standard ops.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from . import triton_fold_wide, triton_moments
from .torch_ops import coefficient_fold, coefficient_fold_backward, update_running
from .triton_conv import (autotuned_on_first_use, basis_block, interpreting, launching, tl,
                          triton)


def _fold_kernel(sums_ptr, shift_ptr, coef_ptr, index_ptr, conv_bias_ptr, weight_ptr,
                 bias_ptr, mean_b_ptr, cov_ptr, folded_ptr, folded_bias_ptr, mean_ptr, var_ptr,
                 running_mean_ptr, running_var_ptr, count, eps, momentum, C_out, m, coef_sr,
                 coef_sk, HAS_CONV_BIAS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                 HAS_BIAS: tl.constexpr, UPDATE: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """One program. ``sums`` ``[m + m*m]``: the sums of ``x - shift`` and of its outer
    products over ``count`` rows; the coefficients ``[C_out - m, m]`` and the output
    index ``[C_out]`` of the combination. Writes the maps' mean
    ``[m]`` and covariance ``[m, m]``, the folded matrix ``[C_out, m]`` (contiguous, its
    own dtype), the folded bias and the outputs' mean and variance ``[C_out]``; with
    ``UPDATE``, moves the norm's running averages towards them by ``momentum`` (the
    variance unbiased), in place."""
    k = tl.arange(0, BLOCK_N)
    k_ok = k < m
    square_ok = k_ok[:, None] & k_ok[None, :]
    down = k[:, None] + 0 * k[None, :]  # (k, j) -> k: a vector repeated in every column
    down_ok = k_ok[:, None] & (k[None, :] >= 0)
    first = k[None, :] == 0  # where a repeated tile is stored from
    offset = tl.load(sums_ptr + down, mask=down_ok, other=0.0) / count
    mean_b = tl.load(shift_ptr + down, mask=down_ok, other=0.0) + offset
    cov = (tl.load(sums_ptr + m + k[:, None] * m + k[None, :], mask=square_ok, other=0.0) / count
           - offset * tl.trans(offset))
    tl.store(mean_b_ptr + down, mean_b, mask=down_ok & first)
    tl.store(cov_ptr + k[:, None] * m + k[None, :], cov, mask=square_ok)
    ones = tl.full((BLOCK_N, BLOCK_N), 1.0, tl.float32)
    for r0 in range(0, C_out, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        across = r[:, None] + 0 * k[None, :]  # (r, j) -> r
        across_ok = (r < C_out)[:, None] & (k[None, :] >= 0)
        tile_ok = (r < C_out)[:, None] & k_ok[None, :]
        # the combination's rows: output channel r is row index[r] of [identity;
        # coefficients] (:func:`.torch_ops.combination_rows`), built here, not by three
        # launches forward and four backward; coef_row -1 for a basis output
        index = tl.load(index_ptr + r, mask=r < C_out, other=0)
        coef_row = tl.where(r < C_out, index - m, -1)
        a = tl.load(coef_ptr + coef_row[:, None] * coef_sr + k[None, :] * coef_sk,
                    mask=tile_ok & (coef_row >= 0)[:, None], other=0.0)
        a = tl.where(tile_ok & (k[None, :] == index[:, None]), 1.0, a)
        mean = tl.dot(a, mean_b, input_precision="ieee")
        var = tl.maximum(tl.dot(tl.dot(a, cov, input_precision="ieee") * a, ones,
                                input_precision="ieee"), 0.0)
        rstd = 1.0 / tl.sqrt(tl.where(across_ok, var, 1.0) + eps)  # (as in the backward)
        scale = rstd
        if HAS_WEIGHT:
            scale = rstd * tl.load(weight_ptr + across, mask=across_ok, other=0.0)
        folded_bias = -scale * mean  # beta + scale (c - mean): c cancels from the mean
        if HAS_CONV_BIAS:
            mean += tl.load(conv_bias_ptr + across, mask=across_ok, other=0.0)
        if HAS_BIAS:
            folded_bias += tl.load(bias_ptr + across, mask=across_ok, other=0.0)
        tl.store(folded_ptr + r[:, None] * m + k[None, :],
                 (scale * a).to(folded_ptr.dtype.element_ty), mask=tile_ok)
        tl.store(folded_bias_ptr + across, folded_bias, mask=across_ok & first)
        tl.store(mean_ptr + across, mean, mask=across_ok & first)
        tl.store(var_ptr + across, var, mask=across_ok & first)
        if UPDATE:  # (as batch norm: (1 - momentum) running + momentum batch)
            stored = across_ok & first
            running = tl.load(running_mean_ptr + across, mask=stored, other=0.0).to(tl.float32)
            tl.store(running_mean_ptr + across, ((1.0 - momentum) * running + momentum * mean).to(
                running_mean_ptr.dtype.element_ty), mask=stored)
            running = tl.load(running_var_ptr + across, mask=stored, other=0.0).to(tl.float32)
            unbiased = var * (count / tl.maximum(count - 1.0, 1.0))  # (as update_running)
            tl.store(running_var_ptr + across, ((1.0 - momentum) * running
                                                + momentum * unbiased).to(
                running_var_ptr.dtype.element_ty), mask=stored)


def _fold_backward_kernel(grad_folded_ptr, grad_folded_bias_ptr, coef_ptr, index_ptr,
                          mean_b_ptr, cov_ptr, mean_ptr, var_ptr, conv_bias_ptr, weight_ptr,
                          grad_coef_ptr, grad_conv_bias_ptr, grad_weight_ptr, sym_ptr,
                          shift_ptr, count, eps, C_out, m, g_sr, g_sk, coef_sr, coef_sk,
                          HAS_CONV_BIAS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                          MOMENTS_GRAD: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    """One program: :func:`.torch_ops.norm_fold_backward` over blocks of output channels,
    the moments' part summed over them in the loop. Writes the gradients of the
    coefficients ``[C_out - m, m]`` (contiguous: each combined row's gradient to its
    coefficient row), the conv bias and the norm's weight ``[C_out]``, and the moments'
    matrix ``[m, m]`` and bias ``[m]``."""
    k = tl.arange(0, BLOCK_N)
    k_ok = k < m
    square_ok = k_ok[:, None] & k_ok[None, :]
    first = k[None, :] == 0
    cov = tl.load(cov_ptr + k[:, None] * m + k[None, :], mask=square_ok, other=0.0)
    ones = tl.full((BLOCK_N, BLOCK_N), 1.0, tl.float32)
    grad_cov = tl.full((BLOCK_N, BLOCK_N), 0.0, tl.float32)
    grad_mean_b = tl.full((BLOCK_N, BLOCK_N), 0.0, tl.float32)  # (k, j) -> its value at k
    for r0 in range(0, C_out, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        across = r[:, None] + 0 * k[None, :]
        across_ok = (r < C_out)[:, None] & (k[None, :] >= 0)
        tile_ok = (r < C_out)[:, None] & k_ok[None, :]
        # the combination's rows: output channel r is row index[r] of [identity;
        # coefficients] (:func:`.torch_ops.combination_rows`), built here, not by three
        # launches forward and four backward; coef_row -1 for a basis output
        index = tl.load(index_ptr + r, mask=r < C_out, other=0)
        coef_row = tl.where(r < C_out, index - m, -1)
        a = tl.load(coef_ptr + coef_row[:, None] * coef_sr + k[None, :] * coef_sk,
                    mask=tile_ok & (coef_row >= 0)[:, None], other=0.0)
        a = tl.where(tile_ok & (k[None, :] == index[:, None]), 1.0, a)
        grad_folded = tl.load(grad_folded_ptr + r[:, None] * g_sr + k[None, :] * g_sk,
                              mask=tile_ok, other=0.0)
        grad_folded_bias = tl.load(grad_folded_bias_ptr + across, mask=across_ok, other=0.0)
        # (rows past C_out read a variance of 1: with eps = 0 a 0 there gave an infinite
        # rstd, and its 0 * inf = NaN reached the moments' sums through the products)
        rstd = 1.0 / tl.sqrt(tl.load(var_ptr + across, mask=across_ok, other=1.0) + eps)
        shifted = -tl.load(mean_ptr + across, mask=across_ok, other=0.0)
        if HAS_CONV_BIAS:
            shifted += tl.load(conv_bias_ptr + across, mask=across_ok, other=0.0)
        scale = rstd
        grad_scale = (tl.dot(grad_folded * a, ones, input_precision="ieee")
                      + grad_folded_bias * shifted)
        grad_rstd = grad_scale
        if HAS_WEIGHT:
            weight = tl.load(weight_ptr + across, mask=across_ok, other=0.0)
            scale = rstd * weight
            grad_rstd = grad_scale * weight
            tl.store(grad_weight_ptr + across, grad_scale * rstd, mask=across_ok & first)
        grad_mean = -grad_folded_bias * scale
        grad_var = -0.5 * grad_rstd * rstd * rstd * rstd
        mean_b = tl.load(mean_b_ptr + k[None, :] + 0 * r[:, None], mask=tile_ok, other=0.0)
        grad_a = (scale * grad_folded + grad_mean * mean_b
                  + 2.0 * grad_var * tl.dot(a, cov, input_precision="ieee"))
        tl.store(grad_coef_ptr + coef_row[:, None] * m + k[None, :], grad_a,
                 mask=tile_ok & (coef_row >= 0)[:, None])
        if HAS_CONV_BIAS:
            tl.store(grad_conv_bias_ptr + across, grad_folded_bias * scale + grad_mean,
                     mask=across_ok & first)
        if MOMENTS_GRAD:
            a_t = tl.trans(a)
            grad_mean_b = tl.dot(a_t, grad_mean, grad_mean_b, input_precision="ieee")
            grad_cov = tl.dot(a_t, grad_var * a, grad_cov, input_precision="ieee")
    if MOMENTS_GRAD:
        down = k[:, None] + 0 * k[None, :]
        down_ok = k_ok[:, None] & (k[None, :] >= 0)
        sym = (grad_cov + tl.trans(grad_cov)) / count
        mean_b = tl.load(mean_b_ptr + down, mask=down_ok, other=0.0)
        tl.store(sym_ptr + k[:, None] * m + k[None, :], sym, mask=square_ok)
        tl.store(shift_ptr + down, grad_mean_b / count - tl.dot(sym, mean_b,
                                                                input_precision="ieee"),
                 mask=down_ok & first)


def _configs(interpret: bool, tune: bool) -> list:
    """One config: one program, a few small products per block of output channels. Eight
    warps, one stage (nothing to pipeline) and :func:`rows_per_block`: compiled for sm_90
    (``scripts/kernel_resources.py --kernels combination``), no spills at basis widths
    16-64 but the backward's at 64 (about 330 bytes beside its three ``m x m`` blocks;
    one program's, so they stay in L1), where four warps, pipelining, or 32 channels a
    block at width 64 spilled 200-17,000 bytes, and sixteen warps (128 registers a
    thread) about as much."""
    return [triton.Config({}, num_warps=1) if interpret
            else triton.Config({}, num_warps=8, num_stages=1)]


#: The widest basis the one-program kernels take (their ``m x m`` blocks are one
#: program's registers); wider ones, up to :data:`.triton_moments.MAX_WIDTH`, run
#: :mod:`.triton_fold_wide`'s.
ONE_PROGRAM_WIDTH = 64


def rows_per_block(m: int) -> int:
    """Output channels per block of the loop: 32, 16 for bases wider than 32 (fewer
    registers beside the ``m x m`` blocks; ``_configs``), 16 under the interpreter
    (several blocks even in small tests)."""
    return 16 if interpreting() or m > 32 else 32


def _optional(t: torch.Tensor | None, stand_in: torch.Tensor) -> torch.Tensor:
    """A tensor for a pointer the kernel does not read (its ``HAS_*`` flag off)."""
    return stand_in if t is None else t.float().contiguous()


def fold(maps: torch.Tensor, coefficients: torch.Tensor, output_index: torch.Tensor,
         conv_bias: torch.Tensor | None, norm_weight: torch.Tensor | None,
         norm_bias: torch.Tensor | None, eps: float,
         running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
         momentum: float = 0.0) -> tuple[torch.Tensor, ...]:
    """:func:`.torch_ops.norm_fold` of the combination ``combination_rows(coefficients,
    output_index)`` through the moments' kernel and this module's, or
    :mod:`.triton_fold_wide`'s above ``ONE_PROGRAM_WIDTH`` (``m`` at most
    ``MAX_WIDTH``, at least one pixel, float32 coefficients); the folded matrix in the
    maps' dtype. Given running averages (contiguous), updates them as
    :func:`.torch_ops.update_running` does."""
    shift, sums = triton_moments.moment_sums(maps)
    c_out, m = output_index.shape[0], maps.shape[1]
    output_index = output_index.contiguous()  # (the kernels read these without strides)
    stats = (coefficients.new_empty(m), coefficients.new_empty((m, m)),
             maps.new_empty((c_out, m)), *(coefficients.new_empty(c_out) for _ in range(3)))
    args = (sums, shift, coefficients, output_index,
            *(_optional(t, coefficients) for t in (conv_bias, norm_weight, norm_bias)),
            *stats, *(coefficients if t is None else t for t in (running_mean, running_var)),
            float(maps.numel() // m), eps, momentum, c_out, m, *_strides(coefficients))
    flags = dict(HAS_CONV_BIAS=conv_bias is not None, HAS_WEIGHT=norm_weight is not None,
                 HAS_BIAS=norm_bias is not None, UPDATE=running_mean is not None)
    with launching(maps):
        if m > ONE_PROGRAM_WIDTH:
            triton_fold_wide.fold(args, flags, c_out, m)
        else:
            autotuned_on_first_use(_fold_kernel, _configs, ["C_out", "m"])[(1,)](
                *args, **flags, BLOCK_R=rows_per_block(m), BLOCK_N=basis_block(m))
    return stats


def fold_backward(grad_folded: torch.Tensor, grad_folded_bias: torch.Tensor,
                  coefficients: torch.Tensor, output_index: torch.Tensor,
                  mean_b: torch.Tensor, cov_b: torch.Tensor, mean: torch.Tensor,
                  var: torch.Tensor, conv_bias: torch.Tensor | None,
                  norm_weight: torch.Tensor | None, eps: float, count: int,
                  moments_grad: bool) -> tuple[torch.Tensor, ...]:
    """:func:`.torch_ops.norm_fold_backward` through this module's kernel, the gradient
    of the coefficients for that of the combination, empty tensors where that gives None."""
    c_out, m = output_index.shape[0], mean_b.shape[0]
    # (the kernel reads these without strides: no copy for the layer's own)
    output_index, mean_b, cov_b, mean, var = (t.contiguous() for t in (output_index, mean_b,
                                                                      cov_b, mean, var))
    grad_coefficients = torch.empty_like(coefficients, memory_format=torch.contiguous_format)
    grad_conv_bias, grad_weight = (mean.new_empty(c_out if t is not None else 0)
                                   for t in (conv_bias, norm_weight))
    sym, shift = ((mean.new_empty((m, m)), mean.new_empty(m)) if moments_grad
                  else (mean.new_empty(0), mean.new_empty(0)))
    head = (grad_folded, grad_folded_bias.contiguous(), coefficients, output_index, mean_b,
            cov_b, mean, var, _optional(conv_bias, mean), _optional(norm_weight, mean),
            grad_coefficients, grad_conv_bias, grad_weight)
    tail = (float(count), eps, c_out, m, *_strides(grad_folded), *_strides(coefficients))
    flags = dict(HAS_CONV_BIAS=conv_bias is not None, HAS_WEIGHT=norm_weight is not None,
                 MOMENTS_GRAD=moments_grad)
    with launching(mean):
        if m > ONE_PROGRAM_WIDTH:
            triton_fold_wide.fold_backward(head, tail, flags, sym, shift)
        else:
            autotuned_on_first_use(_fold_backward_kernel, _configs, ["C_out", "m"])[(1,)](
                *head, sym, shift, *tail, **flags, BLOCK_R=rows_per_block(m),
                BLOCK_N=basis_block(m))
    return grad_coefficients, grad_conv_bias, grad_weight, sym, shift


def _strides(t: torch.Tensor) -> tuple[int, int]:
    """A matrix's strides (an empty one's as a contiguous one's: it is never read)."""
    return t.stride() if t.numel() else (t.shape[1], 1)


def _cannot_run(maps: torch.Tensor, coefficients: torch.Tensor) -> bool:
    """Where the moments' kernel cannot run (a basis too wide, silently, or said once), or
    the coefficients are not float32 (a float64 layer's, which the moments refuse too)."""
    return triton_moments.cannot_take(maps) or coefficients.dtype != torch.float32


# As ops with shape-only twins, as :mod:`.triton_combine`'s (``torch.compile`` keeps them
# in its graph); where the kernels cannot run, the standard ops (:mod:`.torch_ops`).
@torch.library.custom_op(
    "basisconv::folded_norm", mutates_args=("running_mean", "running_var"),
    schema="(Tensor maps, Tensor coefficients, Tensor output_index, Tensor? conv_bias, "
           "Tensor? norm_weight, Tensor? norm_bias, float eps, Tensor(a!)? running_mean=None, "
           "Tensor(b!)? running_var=None, float momentum=0.0) "
           "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
def folded_norm(maps: torch.Tensor, coefficients: torch.Tensor, output_index: torch.Tensor,
                conv_bias: torch.Tensor | None, norm_weight: torch.Tensor | None,
                norm_bias: torch.Tensor | None, eps: float,
                running_mean: torch.Tensor | None = None,
                running_var: torch.Tensor | None = None, momentum: float = 0.0
                ) -> tuple[torch.Tensor, ...]:
    """:func:`fold` as an op: the maps' mean and covariance, the folded matrix (the maps'
    dtype) and bias, the outputs' mean and variance; the running averages, where given,
    updated in place. Not differentiable (:class:`.norm.BatchNormedCombination` calls
    :func:`folded_norm_backward`)."""
    _check_fold(maps, coefficients, output_index, conv_bias, norm_weight, norm_bias,
                running_mean, running_var)
    args = (maps, coefficients, output_index, conv_bias, norm_weight, norm_bias, eps)
    if not (_cannot_run(maps, coefficients) or running_mean is not None and not (
            running_mean.is_contiguous() and running_var.is_contiguous())):
        return fold(*args, running_mean, running_var, momentum)
    mean_b, cov_b, folded, folded_bias, mean, var = coefficient_fold(*args)
    if running_mean is not None:
        update_running(running_mean, running_var, mean, var, maps.numel() // maps.shape[1],
                       momentum)
    return mean_b, cov_b, folded.to(maps.dtype), folded_bias, mean, var


@folded_norm.register_fake
def _folded_norm_shapes(maps, coefficients, output_index, conv_bias, norm_weight, norm_bias,
                        eps, running_mean=None, running_var=None, momentum=0.0):
    _check_fold(maps, coefficients, output_index, conv_bias, norm_weight, norm_bias,
                running_mean, running_var)
    c_out, m = output_index.shape[0], maps.shape[1]
    return (coefficients.new_empty(m), coefficients.new_empty((m, m)),
            maps.new_empty((c_out, m)), *(coefficients.new_empty(c_out) for _ in range(3)))


def _check_fold(maps, coefficients, output_index, *per_channel) -> None:
    """The op's inputs agree: the kernels take ``m`` from the maps and ``C_out`` from the
    output index, so coefficients of another shape, or a bias, weight or running average
    of another length, were read (or written) in part or out of bounds, where the
    standard ops refuse them (a review's finding, as :mod:`.triton_moments`'
    ``moments_backward``)."""
    c_out = output_index.shape[0] if output_index.dim() == 1 else None
    m = maps.shape[1] if maps.dim() == 4 else None
    if (c_out is None or m is None or tuple(coefficients.shape) != (c_out - m, m)
            or any(t is not None and tuple(t.shape) != (c_out,) for t in per_channel)):
        raise ValueError(
            f"folded_norm needs maps [N, m, H, W], coefficients [C_out - m, m], an output "
            f"index [C_out] and per-channel tensors [C_out]; got maps {tuple(maps.shape)}, "
            f"coefficients {tuple(coefficients.shape)}, output index "
            f"{tuple(output_index.shape)}, per-channel "
            f"{[tuple(t.shape) for t in per_channel if t is not None]}")


@torch.library.custom_op(
    "basisconv::folded_norm_backward", mutates_args=(),
    schema="(Tensor grad_folded, Tensor grad_folded_bias, Tensor coefficients, "
           "Tensor output_index, Tensor mean_b, Tensor cov_b, Tensor mean, Tensor var, "
           "Tensor? conv_bias, Tensor? norm_weight, float eps, Tensor maps, "
           "bool moments_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
def _folded_norm_backward(grad_folded, grad_folded_bias, coefficients, output_index, mean_b,
                          cov_b, mean, var, conv_bias, norm_weight, eps, maps, moments_grad):
    args = (grad_folded, grad_folded_bias, coefficients, output_index, mean_b, cov_b, mean,
            var, conv_bias, norm_weight, eps, maps.numel() // maps.shape[1], moments_grad)
    if _cannot_run(maps, coefficients):
        return tuple(mean.new_empty(0) if t is None else t
                     for t in coefficient_fold_backward(*args))
    return fold_backward(*args)


@_folded_norm_backward.register_fake
def _folded_norm_backward_shapes(grad_folded, grad_folded_bias, coefficients, output_index,
                                 mean_b, cov_b, mean, var, conv_bias, norm_weight, eps, maps,
                                 moments_grad):
    c_out, m = output_index.shape[0], mean_b.shape[0]
    return (torch.empty_like(coefficients, memory_format=torch.contiguous_format),
            *(mean.new_empty(c_out if t is not None else 0) for t in (conv_bias, norm_weight)),
            *((mean.new_empty((m, m)), mean.new_empty(m)) if moments_grad
              else (mean.new_empty(0), mean.new_empty(0))))


def folded_norm_backward(grad_folded, grad_folded_bias, coefficients, output_index, mean_b,
                         cov_b, mean, var, conv_bias, norm_weight, eps, maps,
                         moments_grad: bool) -> tuple:
    """:func:`.torch_ops.coefficient_fold_backward`'s gradients (None where it gives
    None) through the backward op; ``maps`` (their count of rows, and whether the kernels
    run)."""
    grads = _folded_norm_backward(grad_folded, grad_folded_bias, coefficients, output_index,
                                  mean_b, cov_b, mean, var, conv_bias, norm_weight, eps, maps,
                                  moments_grad)
    present = (True, conv_bias is not None, norm_weight is not None, moments_grad, moments_grad)
    return tuple(g if keep else None for g, keep in zip(grads, present))


# What ``FlopCounterMode`` counts for the standard ops the kernels replace (it counts
# products of matrices, not sums or products with vectors).
@register_flop_formula(torch.ops.basisconv.folded_norm)
def _folded_norm_flops(maps_shape, coefficients_shape, index_shape, *args, **kwargs) -> int:
    """The moments' Gram product ``2*M*m*m`` and ``a cov_b``, ``2*C_out*m*m``."""
    n, m, h, w = maps_shape
    return 2 * n * h * w * m * m + 2 * index_shape[0] * m * m


@register_flop_formula(torch.ops.basisconv.folded_norm_backward)
def _folded_norm_backward_flops(grad_shape, *args, moments_grad=None, **kwargs) -> int:
    """``a cov_b`` again, and ``a^T diag(d var) a`` where the moments pass a gradient on."""
    if moments_grad is None:  # (positional: the schema's last argument)
        moments_grad = args[-1]
    c_out, m = grad_shape
    return 2 * c_out * m * m * (2 if moments_grad else 1)
