"""The fold's kernels for wide bases (``m`` over :data:`.triton_fold.ONE_PROGRAM_WIDTH`, up
to :data:`.triton_moments.MAX_WIDTH`): the same computation as :mod:`.triton_fold`'s, spread
over programs.

Why: :mod:`.triton_fold`'s kernels hold the ``m x m`` covariance in one program's
registers, so bases over 64 (a ResNet-18's last stage at 1/4, its last two at 1/2) kept the
standard ops: about 24 operations forward and 35 backward a layer, each a launch of a few
microseconds on a GPU with almost nothing in it, on the layers whose full-width work is
smallest (4x4 and 8x8 maps). Here the covariance is read in ``BLOCK_K x BLOCK_K`` tiles
and the work is split:

* forward (:func:`fold`, one launch): a program per block of ``BLOCK_R`` output channels
  builds their rows of the combination chunk by chunk, their mean and variance
  (``a mean_b``, ``diag(a cov_b a^T)`` from the tiles), the folded rows and bias and the
  running averages, as the one-program kernel does for all rows; the maps' mean and
  covariance are written out tile by tile, the tiles shared among the programs;
* backward (:func:`fold_backward`, two launches): a program per block of output channels
  gives their coefficients', conv bias's and norm weight's gradients, and two vectors
  over the output channels (the gradient of each one's variance, and of its mean less
  twice that times ``a mean_b``); then a program per tile of the ``m x m`` matrix
  through which the moments pass their gradient to the maps sums over all channels:
  ``S = 2 a^T diag(d var) a / n`` and, in the first column of tiles, the bias
  ``a^T (d mean - 2 d var (a mean_b)) / n``, which is
  :func:`.torch_ops.norm_fold_backward`'s ``a^T d mean / n - S mean_b`` (``S`` is
  symmetric, ``S mean_b = 2 a^T (d var (a mean_b)) / n``): no partial sums, no third
  launch.

As in :mod:`.triton_fold`, a value per channel is a tile whose columns repeat it, column
sums are products with a block of ones, and products are exact float32 (``"ieee"``).
"""

from __future__ import annotations

import torch

from .triton_conv import autotuned_on_first_use, tl, triton
from .triton_moments import tile_width


def _wide_fold_kernel(sums_ptr, shift_ptr, coef_ptr, index_ptr, conv_bias_ptr, weight_ptr,
                      bias_ptr, mean_b_ptr, cov_ptr, folded_ptr, folded_bias_ptr, mean_ptr,
                      var_ptr, running_mean_ptr, running_var_ptr, count, eps, momentum, C_out,
                      m, coef_sr, coef_sk, tiles, tile_rounds, HAS_CONV_BIAS: tl.constexpr,
                      HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, UPDATE: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """:func:`.triton_fold._fold_kernel` for ``BLOCK_R`` output channels a program, the
    ``m x m`` tiles ``BLOCK_K`` a side (``tiles`` a side); each program also writes
    ``tile_rounds`` of the covariance's tiles (tile ``pid + round * programs``)."""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    c = tl.arange(0, BLOCK_K)
    first = c[None, :] == 0
    for step in range(0, tile_rounds):  # the maps' mean and covariance out
        t = pid + step * programs
        k = (t // tiles) * BLOCK_K + c
        j = (t % tiles) * BLOCK_K + c
        ok = (k < m)[:, None] & (j < m)[None, :] & (t < tiles * tiles)
        offset_k = tl.load(sums_ptr + k[:, None] + 0 * j[None, :], mask=ok, other=0.0) / count
        offset_j = tl.load(sums_ptr + j[None, :] + 0 * k[:, None], mask=ok, other=0.0) / count
        tl.store(cov_ptr + k[:, None] * m + j[None, :],
                 tl.load(sums_ptr + m + k[:, None] * m + j[None, :], mask=ok, other=0.0) / count
                 - offset_k * offset_j, mask=ok)
        tl.store(mean_b_ptr + k[:, None] + 0 * j[None, :],
                 tl.load(shift_ptr + k[:, None] + 0 * j[None, :], mask=ok, other=0.0) + offset_k,
                 mask=ok & first & (t % tiles == 0))
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < C_out
    across = r[:, None] + 0 * c[None, :]  # (r, j) -> r
    across_ok = r_ok[:, None] & (c[None, :] >= 0)
    index = tl.load(index_ptr + r, mask=r_ok, other=0)
    coef_row = tl.where(r_ok, index - m, -1)  # -1: a basis output (a row of the identity)
    ones = tl.full((BLOCK_K, BLOCK_K), 1.0, tl.float32)
    mean = tl.full((BLOCK_R, BLOCK_K), 0.0, tl.float32)
    var = tl.full((BLOCK_R, BLOCK_K), 0.0, tl.float32)
    for tile_j in range(0, tiles):
        j = tile_j * BLOCK_K + c
        row_ok = r_ok[:, None] & (j < m)[None, :]
        a_j = tl.load(coef_ptr + coef_row[:, None] * coef_sr + j[None, :] * coef_sk,
                      mask=row_ok & (coef_row >= 0)[:, None], other=0.0)
        a_j = tl.where(row_ok & (j[None, :] == index[:, None]), 1.0, a_j)
        down_ok = (j < m)[:, None] & (c[None, :] >= 0)
        mean_b = (tl.load(shift_ptr + j[:, None] + 0 * c[None, :], mask=down_ok, other=0.0)
                  + tl.load(sums_ptr + j[:, None] + 0 * c[None, :], mask=down_ok, other=0.0)
                  / count)  # (j, l) -> mean_b[j]
        mean = tl.dot(a_j, mean_b, mean, input_precision="ieee")
        a_cov = tl.full((BLOCK_R, BLOCK_K), 0.0, tl.float32)  # (a cov_b)[:, j]
        offset_j = tl.load(sums_ptr + j[None, :] + 0 * c[:, None], mask=(j < m)[None, :],
                           other=0.0) / count
        for tile_k in range(0, tiles):
            k = tile_k * BLOCK_K + c
            row_ok = r_ok[:, None] & (k < m)[None, :]
            a_k = tl.load(coef_ptr + coef_row[:, None] * coef_sr + k[None, :] * coef_sk,
                          mask=row_ok & (coef_row >= 0)[:, None], other=0.0)
            a_k = tl.where(row_ok & (k[None, :] == index[:, None]), 1.0, a_k)
            ok = (k < m)[:, None] & (j < m)[None, :]
            offset_k = tl.load(sums_ptr + k[:, None] + 0 * j[None, :], mask=ok, other=0.0) / count
            cov = (tl.load(sums_ptr + m + k[:, None] * m + j[None, :], mask=ok, other=0.0) / count
                   - offset_k * offset_j)
            a_cov = tl.dot(a_k, cov, a_cov, input_precision="ieee")
        var = tl.dot(a_cov * a_j, ones, var, input_precision="ieee")
    var = tl.maximum(var, 0.0)
    rstd = 1.0 / tl.sqrt(tl.where(across_ok, var, 1.0) + eps)
    scale = rstd
    if HAS_WEIGHT:
        scale = rstd * tl.load(weight_ptr + across, mask=across_ok, other=0.0)
    folded_bias = -scale * mean  # beta + scale (c - mean): c cancels from the mean
    if HAS_CONV_BIAS:
        mean += tl.load(conv_bias_ptr + across, mask=across_ok, other=0.0)
    if HAS_BIAS:
        folded_bias += tl.load(bias_ptr + across, mask=across_ok, other=0.0)
    for tile_k in range(0, tiles):
        k = tile_k * BLOCK_K + c
        row_ok = r_ok[:, None] & (k < m)[None, :]
        a_k = tl.load(coef_ptr + coef_row[:, None] * coef_sr + k[None, :] * coef_sk,
                      mask=row_ok & (coef_row >= 0)[:, None], other=0.0)
        a_k = tl.where(row_ok & (k[None, :] == index[:, None]), 1.0, a_k)
        tl.store(folded_ptr + r[:, None] * m + k[None, :],
                 (scale * a_k).to(folded_ptr.dtype.element_ty), mask=row_ok)
    stored = across_ok & first
    tl.store(folded_bias_ptr + across, folded_bias, mask=stored)
    tl.store(mean_ptr + across, mean, mask=stored)
    tl.store(var_ptr + across, var, mask=stored)
    if UPDATE:  # (as batch norm: (1 - momentum) running + momentum batch)
        running = tl.load(running_mean_ptr + across, mask=stored, other=0.0).to(tl.float32)
        tl.store(running_mean_ptr + across, ((1.0 - momentum) * running + momentum * mean).to(
            running_mean_ptr.dtype.element_ty), mask=stored)
        running = tl.load(running_var_ptr + across, mask=stored, other=0.0).to(tl.float32)
        unbiased = var * (count / tl.maximum(count - 1.0, 1.0))  # (as update_running)
        tl.store(running_var_ptr + across, ((1.0 - momentum) * running
                                            + momentum * unbiased).to(
            running_var_ptr.dtype.element_ty), mask=stored)


def _wide_fold_backward_kernel(grad_folded_ptr, grad_folded_bias_ptr, coef_ptr, index_ptr,
                               mean_b_ptr, cov_ptr, mean_ptr, var_ptr, conv_bias_ptr,
                               weight_ptr, grad_coef_ptr, grad_conv_bias_ptr, grad_weight_ptr,
                               grad_var_ptr, grad_centre_ptr, count, eps, C_out, m, g_sr,
                               g_sk, coef_sr, coef_sk, tiles, HAS_CONV_BIAS: tl.constexpr,
                               HAS_WEIGHT: tl.constexpr, MOMENTS_GRAD: tl.constexpr,
                               BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """:func:`.triton_fold._fold_backward_kernel` for ``BLOCK_R`` output channels a
    program, but for the moments' part: with ``MOMENTS_GRAD`` it writes each channel's
    ``d var`` and ``d mean - 2 d var (a mean_b)`` (``[C_out]`` each), which
    :func:`_moments_grad_kernel` sums over the channels."""
    pid = tl.program_id(0)
    c = tl.arange(0, BLOCK_K)
    first = c[None, :] == 0
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < C_out
    across = r[:, None] + 0 * c[None, :]
    across_ok = r_ok[:, None] & (c[None, :] >= 0)
    index = tl.load(index_ptr + r, mask=r_ok, other=0)
    coef_row = tl.where(r_ok, index - m, -1)
    ones = tl.full((BLOCK_K, BLOCK_K), 1.0, tl.float32)
    grad_folded_bias = tl.load(grad_folded_bias_ptr + across, mask=across_ok, other=0.0)
    # (rows past C_out read a variance of 1: with eps = 0 a 0 gave an infinite rstd)
    rstd = 1.0 / tl.sqrt(tl.load(var_ptr + across, mask=across_ok, other=1.0) + eps)
    shifted = -tl.load(mean_ptr + across, mask=across_ok, other=0.0)
    if HAS_CONV_BIAS:
        shifted += tl.load(conv_bias_ptr + across, mask=across_ok, other=0.0)
    grad_scale = grad_folded_bias * shifted
    a_mean = tl.full((BLOCK_R, BLOCK_K), 0.0, tl.float32)  # a mean_b, per channel
    for tile_k in range(0, tiles):
        k = tile_k * BLOCK_K + c
        row_ok = r_ok[:, None] & (k < m)[None, :]
        a_k = tl.load(coef_ptr + coef_row[:, None] * coef_sr + k[None, :] * coef_sk,
                      mask=row_ok & (coef_row >= 0)[:, None], other=0.0)
        a_k = tl.where(row_ok & (k[None, :] == index[:, None]), 1.0, a_k)
        grad_folded = tl.load(grad_folded_ptr + r[:, None] * g_sr + k[None, :] * g_sk,
                              mask=row_ok, other=0.0)
        grad_scale = tl.dot(grad_folded * a_k, ones, grad_scale, input_precision="ieee")
        mean_b = tl.load(mean_b_ptr + k[:, None] + 0 * c[None, :],
                         mask=(k < m)[:, None] & (c[None, :] >= 0), other=0.0)
        a_mean = tl.dot(a_k, mean_b, a_mean, input_precision="ieee")
    scale = rstd
    grad_rstd = grad_scale
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + across, mask=across_ok, other=0.0)
        scale = rstd * weight
        grad_rstd = grad_scale * weight
        tl.store(grad_weight_ptr + across, grad_scale * rstd, mask=across_ok & first)
    grad_mean = -grad_folded_bias * scale
    grad_var = -0.5 * grad_rstd * rstd * rstd * rstd
    if HAS_CONV_BIAS:
        tl.store(grad_conv_bias_ptr + across, grad_folded_bias * scale + grad_mean,
                 mask=across_ok & first)
    if MOMENTS_GRAD:
        tl.store(grad_var_ptr + across, grad_var, mask=across_ok & first)
        tl.store(grad_centre_ptr + across, grad_mean - 2.0 * grad_var * a_mean,
                 mask=across_ok & first)
    for tile_k in range(0, tiles):  # the coefficients' gradient, chunk by chunk
        k = tile_k * BLOCK_K + c
        a_cov = tl.full((BLOCK_R, BLOCK_K), 0.0, tl.float32)  # (a cov_b)[:, k]
        for tile_j in range(0, tiles):
            j = tile_j * BLOCK_K + c
            row_ok = r_ok[:, None] & (j < m)[None, :]
            a_j = tl.load(coef_ptr + coef_row[:, None] * coef_sr + j[None, :] * coef_sk,
                          mask=row_ok & (coef_row >= 0)[:, None], other=0.0)
            a_j = tl.where(row_ok & (j[None, :] == index[:, None]), 1.0, a_j)
            cov = tl.load(cov_ptr + j[:, None] * m + k[None, :],
                          mask=(j < m)[:, None] & (k < m)[None, :], other=0.0)
            a_cov = tl.dot(a_j, cov, a_cov, input_precision="ieee")
        row_ok = r_ok[:, None] & (k < m)[None, :]
        grad_folded = tl.load(grad_folded_ptr + r[:, None] * g_sr + k[None, :] * g_sk,
                              mask=row_ok, other=0.0)
        mean_b = tl.load(mean_b_ptr + k[None, :] + 0 * r[:, None], mask=row_ok, other=0.0)
        tl.store(grad_coef_ptr + coef_row[:, None] * m + k[None, :],
                 scale * grad_folded + grad_mean * mean_b + 2.0 * grad_var * a_cov,
                 mask=row_ok & (coef_row >= 0)[:, None])


def _moments_grad_kernel(coef_ptr, index_ptr, grad_var_ptr, grad_centre_ptr, sym_ptr,
                         shift_ptr, count, C_out, m, coef_sr, coef_sk, tiles,
                         BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """One program per ``BLOCK_K x BLOCK_K`` tile (row-major) of ``S = 2 a^T diag(d var) a
    / count``, over all output channels, ``BLOCK_R`` at a time; the first column's tiles
    also their rows of the bias ``a^T (d mean - 2 d var (a mean_b)) / count``."""
    t = tl.program_id(0)
    c = tl.arange(0, BLOCK_K)
    k = (t // tiles) * BLOCK_K + c
    j = (t % tiles) * BLOCK_K + c
    sym = tl.full((BLOCK_K, BLOCK_K), 0.0, tl.float32)
    shift = tl.full((BLOCK_K, BLOCK_K), 0.0, tl.float32)  # (k, l) -> the bias at k
    for r0 in range(0, C_out, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_ok = r < C_out
        across = r[:, None] + 0 * c[None, :]
        across_ok = r_ok[:, None] & (c[None, :] >= 0)
        index = tl.load(index_ptr + r, mask=r_ok, other=0)
        coef_row = tl.where(r_ok, index - m, -1)
        row_ok = r_ok[:, None] & (k < m)[None, :]
        a_k = tl.load(coef_ptr + coef_row[:, None] * coef_sr + k[None, :] * coef_sk,
                      mask=row_ok & (coef_row >= 0)[:, None], other=0.0)
        a_k = tl.where(row_ok & (k[None, :] == index[:, None]), 1.0, a_k)
        row_ok = r_ok[:, None] & (j < m)[None, :]
        a_j = tl.load(coef_ptr + coef_row[:, None] * coef_sr + j[None, :] * coef_sk,
                      mask=row_ok & (coef_row >= 0)[:, None], other=0.0)
        a_j = tl.where(row_ok & (j[None, :] == index[:, None]), 1.0, a_j)
        a_k_t = tl.trans(a_k)
        grad_var = tl.load(grad_var_ptr + across, mask=across_ok, other=0.0)
        sym = tl.dot(a_k_t, grad_var * a_j, sym, input_precision="ieee")
        shift = tl.dot(a_k_t, tl.load(grad_centre_ptr + across, mask=across_ok, other=0.0),
                       shift, input_precision="ieee")
    ok = (k < m)[:, None] & (j < m)[None, :]
    tl.store(sym_ptr + k[:, None] * m + j[None, :], 2.0 * sym / count, mask=ok)
    tl.store(shift_ptr + k[:, None] + 0 * c[None, :], shift / count,
             mask=ok & (c[None, :] == 0) & (t % tiles == 0))


#: Output channels a program (forward and backward), and a step of the moments' sum over them.
ROWS = 16


def _configs(interpret: bool, tune: bool) -> list:
    """One config: small products per program, nothing to pipeline. Eight warps: compiled
    for sm_90 (``scripts/kernel_resources.py --kernels combination``), no spills at
    widths 128 and 256 (226-242 registers a thread), where four spilled 720-872 bytes and
    sixteen 240-252."""
    return [triton.Config({}, num_warps=1) if interpret
            else triton.Config({}, num_warps=8, num_stages=1)]


def fold(args: tuple, flags: dict, c_out: int, m: int) -> None:
    """:func:`_wide_fold_kernel` launched with the arguments of
    :func:`.triton_fold.fold`'s kernel (``flags`` its ``HAS_*`` and ``UPDATE``)."""
    tile = tile_width(m)
    tiles, programs = triton.cdiv(m, tile), triton.cdiv(c_out, ROWS)
    kernel = autotuned_on_first_use(_wide_fold_kernel, _configs, ["C_out", "m"])
    kernel[(programs,)](*args, tiles, triton.cdiv(tiles * tiles, programs), **flags,
                        BLOCK_R=ROWS, BLOCK_K=tile)


def fold_backward(head: tuple, tail: tuple, flags: dict, sym: torch.Tensor,
                  shift: torch.Tensor) -> None:
    """:func:`_wide_fold_backward_kernel` launched with the arguments of
    :func:`.triton_fold.fold_backward`'s kernel (``head`` those before its ``sym`` and
    ``shift``, ``tail`` those after, ``flags`` its ``HAS_*`` and ``MOMENTS_GRAD``), then,
    with ``MOMENTS_GRAD``, :func:`_moments_grad_kernel` into ``sym`` and ``shift``."""
    coefficients, output_index = head[2], head[3]
    count, _, c_out, m = tail[:4]
    coefficient_strides = tail[-2:]  # (the kernel's last two arguments)
    tile = tile_width(m)
    tiles = triton.cdiv(m, tile)
    moments_grad = flags["MOMENTS_GRAD"]
    grad_var, grad_centre = (coefficients.new_empty(c_out if moments_grad else 0)
                             for _ in range(2))
    kernel = autotuned_on_first_use(_wide_fold_backward_kernel, _configs, ["C_out", "m"])
    kernel[(triton.cdiv(c_out, ROWS),)](*head, grad_var, grad_centre, *tail, tiles, **flags,
                                        BLOCK_R=ROWS, BLOCK_K=tile)
    if moments_grad:
        kernel = autotuned_on_first_use(_moments_grad_kernel, _configs, ["C_out", "m"])
        kernel[(tiles * tiles,)](coefficients, output_index, grad_var, grad_centre, sym,
                                 shift, count, c_out, m, *coefficient_strides, tiles,
                                 BLOCK_R=ROWS, BLOCK_K=tile)
