"""The basis maps' batch moments in one pass (``fuse_norm=True`` with ``combine="fused"``).

The folded norm (:mod:`.norm`) needs the mean and covariance of the ``m`` basis maps over
the batch. In standard ops (:func:`.torch_ops.basis_moments`) that is a float32 copy of
the bf16 maps, a mean, a centred copy and a Gram product: five passes over an ``m``-wide
tensor, most in float32, about three times the bytes of the full-width output the
combination writes at basis 1/4. Here one kernel reads the maps once:

* each program takes a run of rows and sums ``x - s`` and ``(x - s)(x - s)^T`` in
  float32, with ``s`` the mean of 64 rows spread evenly over the batch (the
  shifted-data algorithm: ``s`` lies close to the mean, so the sums do not cancel as raw
  sums of ``x x^T`` would when the mean is large; a single pixel as the shift was a
  review's finding: one outlier 150 standard deviations out cost the variance 3 digits,
  as every row then carried its distance squared);
* one shift for all programs, so their sums simply add: one reduction, and the mean and
  covariance follow in a few operations on ``m x m`` values (:func:`moments`), or inside
  the fold's kernel (:mod:`.triton_fold`), which needs no other launch.

The whole ``m x m`` sum sits in one program's registers, so the kernel takes bases up to
:data:`MAX_WIDTH`; wider ones (ResNet's last stages, few pixels) keep the standard ops,
where cuBLAS's Gram product is fast. Column sums are products with a block of ones, as
in :mod:`.triton_combine`. Products are exact float32 (``"ieee"``): these are statistics.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from .torch_ops import basis_moments
from .triton_combine import cannot_run, kernel_strides, launching, sums_dtype
from .triton_conv import autotuned_on_first_use, interpreting, tl, triton

#: The widest basis the kernel takes (its ``m x m`` sum is one program's accumulator).
MAX_WIDTH = 64


def _shift_kernel(maps_ptr, shift_ptr, M, HW, m, sn, sc, sp, SAMPLE: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """One program: the mean ``[m]`` (float32) of ``SAMPLE`` rows spread over the ``M``
    rows of the maps, the shift of :func:`_moments_kernel`: one in each of ``SAMPLE``
    equal runs, at a place within it that varies from run to run (a multiplicative hash),
    so that a batch of 64 images does not sample the same corner pixel of each."""
    i = tl.arange(0, SAMPLE).to(tl.int64)
    run = M // SAMPLE
    rows = tl.where(run > 0, i * run + (i * 40503) % tl.maximum(run, 1), (i * M) // SAMPLE)
    k = tl.arange(0, BLOCK_N)
    x = tl.load(maps_ptr + ((rows // HW) * sn + (rows % HW) * sp)[:, None] + k[None, :] * sc,
                mask=(i >= 0)[:, None] & (k < m)[None, :], other=0.0).to(tl.float32)
    total = tl.dot(tl.trans(x), tl.full((SAMPLE, 16), 1.0, tl.float32), input_precision="ieee")
    column = tl.arange(0, 16)
    tl.store(shift_ptr + k[:, None] + 0 * column[None, :], total / SAMPLE,
             mask=(k < m)[:, None] & (column[None, :] == 0))


def _moments_kernel(maps_ptr, shift_ptr, part_ptr, M, HW, m, sn, sc, sp, row_blocks,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program: ``row_blocks`` blocks of ``BLOCK_M`` rows; writes the sum of
    ``x - shift`` ``[m]`` and of their outer products ``[m, m]`` into its row of ``part``
    (``[programs, m + m*m]``)."""
    pid = tl.program_id(0)
    first = pid.to(tl.int64) * row_blocks * BLOCK_M
    offs_r = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    basis_ok = offs_n < m
    # the shift, loaded into every row of a tile (a broadcast by addresses)
    shift = tl.load(shift_ptr + offs_n[None, :] + 0 * offs_r[:, None],
                    mask=basis_ok[None, :] & (offs_r[:, None] >= 0), other=0.0)
    ones = tl.full((BLOCK_M, 16), 1.0, tl.float32)
    sums = tl.full((BLOCK_N, 16), 0.0, tl.float32)
    gram = tl.full((BLOCK_N, BLOCK_N), 0.0, tl.float32)
    for block in range(0, row_blocks):
        rows = first + block * BLOCK_M + offs_r
        row_ok = rows < M
        x = tl.load(maps_ptr + ((rows // HW) * sn + (rows % HW) * sp)[:, None]
                    + offs_n[None, :] * sc, mask=row_ok[:, None] & basis_ok[None, :],
                    other=0.0).to(tl.float32)
        centred = tl.where(row_ok[:, None], x - shift, 0.0)
        centred_t = tl.trans(centred)
        gram = tl.dot(centred_t, centred, gram, input_precision="ieee")
        sums = tl.dot(centred_t, ones, sums, input_precision="ieee")
    part = part_ptr + pid.to(tl.int64) * (m + m * m)
    tl.store(part + m + offs_n[:, None] * m + offs_n[None, :], gram,
             mask=basis_ok[:, None] & basis_ok[None, :])
    column = tl.arange(0, 16)
    tl.store(part + offs_n[:, None] + 0 * column[None, :], sums,
             mask=basis_ok[:, None] & (column[None, :] == 0))


def _configs(interpret: bool, tune: bool) -> list:
    """One config: the work is a few products per row block; the rows per block and the
    programs are chosen by :func:`moments` (they set the partial sums' size). Eight warps
    and two stages: compiled for sm_90, 40-106 registers a thread and no spills at basis
    widths 16-64, where four warps with Triton's default three stages spilled 2-12 kB
    from width 32 (``scripts/kernel_resources.py --kernels combination``)."""
    return [triton.Config({}, num_warps=1) if interpret
            else triton.Config({}, num_warps=8, num_stages=2)]


#: Rows per block on a GPU (16 under the interpreter: several blocks even in small tests).
ROWS_PER_BLOCK = 64


def _rows_per_block() -> int:
    return 16 if interpreting() else ROWS_PER_BLOCK


#: Rows whose mean is the moments' shift (spread evenly over the batch).
SHIFT_SAMPLE = 64


def moment_sums(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The shift (the mean of :data:`SHIFT_SAMPLE` rows spread over the batch, ``[m]``
    float32) and the sums over batch and pixels of ``x - shift`` and of its outer
    products, float32, in one vector ``[m + m*m]`` (the kernel's per-program sums added by
    one reduction), for ``maps`` ``[N, m, H, W]`` (``m <= MAX_WIDTH``, at least one
    pixel)."""
    maps, (sn, sc, sp) = kernel_strides(maps)
    n, m, h, w = maps.shape
    rows, block = n * h * w, _rows_per_block()
    blocks = triton.cdiv(rows, block)
    # enough programs to fill a GPU, each with rows enough that their partial sums
    # (``m x m`` each) stay below the maps' own size
    programs = max(1, min(blocks, rows // (2 * m)))
    row_blocks = triton.cdiv(blocks, programs)
    programs = triton.cdiv(blocks, row_blocks)
    part = maps.new_empty((programs, m + m * m), dtype=torch.float32)
    shift = maps.new_empty(m, dtype=torch.float32)
    block_n = max(16, triton.next_power_of_2(m))
    with launching(maps):
        autotuned_on_first_use(_shift_kernel, _configs, ["m"])[(1,)](
            maps, shift, rows, h * w, m, sn, sc, sp, SAMPLE=SHIFT_SAMPLE, BLOCK_N=block_n)
        autotuned_on_first_use(_moments_kernel, _configs, ["m"])[(programs,)](
            maps, shift, part, rows, h * w, m, sn, sc, sp, row_blocks, BLOCK_M=block,
            BLOCK_N=block_n)
    return shift, part.sum(0)


def moments(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[m]`` and biased covariance ``[m, m]`` of ``maps`` ``[N, m, H, W]`` over
    batch and pixels, in float32, through the kernel (``m <= MAX_WIDTH``, at least one
    pixel): from :func:`moment_sums`, the mean's offset from the shift ``mu = s / n`` and
    ``cov = S / n - mu mu^T`` (small terms: the shift is a sample mean, close to the
    mean, so nothing large cancels)."""
    shift, sums = moment_sums(maps)
    m, rows = maps.shape[1], maps.numel() // maps.shape[1]
    offset = sums[:m] / rows
    return shift + offset, sums[m:].view(m, m) / rows - offset[:, None] * offset


def cannot_take(maps: torch.Tensor) -> bool:
    """Whether the kernel cannot take ``maps``: a basis too wide for it (by design, not
    said), or what keeps every kernel of the fold from running (said once)."""
    return maps.shape[1] > MAX_WIDTH or maps.numel() == 0 or cannot_run(maps)


@torch.library.custom_op("basisconv::basis_moments", mutates_args=(),
                         schema="(Tensor maps) -> (Tensor, Tensor)")
def fused_basis_moments(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`moments` as an op (``torch.compile`` keeps it in its graph), or the standard
    ops' moments where the kernel cannot run. Not differentiable (the fold's backward
    differentiates the moments itself)."""
    if cannot_take(maps):
        return basis_moments(maps)  # (float32, float64 for float64 maps)
    return moments(maps)


@fused_basis_moments.register_fake
def _moments_shapes(maps):
    m = maps.shape[1]
    return (maps.new_empty((m,), dtype=sums_dtype(maps)),
            maps.new_empty((m, m), dtype=sums_dtype(maps)))


@register_flop_formula(torch.ops.basisconv.basis_moments)
def _moments_flops(maps_shape, *args, **kwargs) -> int:
    """As ``FlopCounterMode`` counts the standard ops' Gram product: ``2*M*m*m``."""
    n, m, h, w = maps_shape
    return 2 * n * h * w * m * m
