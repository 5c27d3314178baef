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

The ``m x m`` sum sits in one program's registers up to :data:`MAX_TILE`; wider bases
(ResNet's last stages: few pixels, so few programs along the rows) are split into tiles,
a program per tile and run of rows, up to :data:`MAX_WIDTH`. Column sums are products
with a block of ones, as in :mod:`.triton_combine`. Products are exact float32
(``"ieee"``): these are statistics.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from . import torch_ops
from .torch_ops import basis_moments
from .triton_combine import cannot_run, kernel_strides, output_strides, strided_as, sums_dtype
from .triton_conv import (autotuned_on_first_use, basis_block, dot_precision, interpreting,
                          launching, tl, triton)

#: The widest basis the kernels take (as :mod:`.triton_combine`'s; the moments' ``m x m``
#: sum in tiles of up to :data:`MAX_TILE`, a program each).
MAX_WIDTH = 256


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


def _moments_kernel(maps_ptr, shift_ptr, part_ptr, M, HW, m, sn, sc, sp, row_blocks, tiles,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILED: tl.constexpr):
    """One program: ``row_blocks`` blocks of ``BLOCK_M`` rows and one ``BLOCK_N x
    BLOCK_N`` tile (``program_id(1)``, row-major over the tiles) of the sum of the outer
    products of ``x - shift``, written into its row of ``part`` (``[programs, m + m*m]``);
    the tiles of the first column also write the sum of ``x - shift`` over their rows of
    the tile. ``tiles``: tiles a side; ``TILED``: more than one (else the tile's two
    column blocks are one)."""
    pid = tl.program_id(0)
    tile_i, tile_j = tl.program_id(1) // tiles, tl.program_id(1) % tiles
    first = pid.to(tl.int64) * row_blocks * BLOCK_M
    offs_r = tl.arange(0, BLOCK_M)
    offs_i = tile_i * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tile_j * BLOCK_N + tl.arange(0, BLOCK_N)
    i_ok, j_ok = offs_i < m, offs_j < m
    # the shift, loaded into every row of a tile (a broadcast by addresses)
    shift_i = tl.load(shift_ptr + offs_i[None, :] + 0 * offs_r[:, None],
                      mask=i_ok[None, :] & (offs_r[:, None] >= 0), other=0.0)
    shift_j = tl.load(shift_ptr + offs_j[None, :] + 0 * offs_r[:, None],
                      mask=j_ok[None, :] & (offs_r[:, None] >= 0), other=0.0)
    ones = tl.full((BLOCK_M, 16), 1.0, tl.float32)
    sums = tl.full((BLOCK_N, 16), 0.0, tl.float32)
    gram = tl.full((BLOCK_N, BLOCK_N), 0.0, tl.float32)
    for block in range(0, row_blocks):
        rows = first + block * BLOCK_M + offs_r
        row_ok = rows < M
        row_at = ((rows // HW) * sn + (rows % HW) * sp)[:, None]
        x = tl.load(maps_ptr + row_at + offs_i[None, :] * sc, mask=row_ok[:, None] & i_ok[None, :],
                    other=0.0).to(tl.float32)
        centred = tl.where(row_ok[:, None], x - shift_i, 0.0)
        centred_j = centred
        if TILED:
            x = tl.load(maps_ptr + row_at + offs_j[None, :] * sc,
                        mask=row_ok[:, None] & j_ok[None, :], other=0.0).to(tl.float32)
            centred_j = tl.where(row_ok[:, None], x - shift_j, 0.0)
        centred_t = tl.trans(centred)
        gram = tl.dot(centred_t, centred_j, gram, input_precision="ieee")
        sums = tl.dot(centred_t, ones, sums, input_precision="ieee")
    part = part_ptr + pid.to(tl.int64) * (m + m * m)
    tl.store(part + m + offs_i[:, None] * m + offs_j[None, :], gram,
             mask=i_ok[:, None] & j_ok[None, :])
    column = tl.arange(0, 16)
    tl.store(part + offs_i[:, None] + 0 * column[None, :], sums,
             mask=i_ok[:, None] & (column[None, :] == 0) & (tile_j == 0))


def _moments_backward_kernel(grad_ptr, maps_ptr, sym_ptr, shift_ptr, out_ptr, M, HW, m,
                             col_blocks, g_sn, g_sc, g_sp, maps_sn, maps_sc, maps_sp, out_sn,
                             out_sc, out_sp, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """One program: ``BLOCK_M`` pixels and ``BLOCK_J`` of the maps' channels:
    ``out = grad + conv1x1(maps, sym) + shift`` (``sym`` ``[m, m]`` read as a conv's
    weight, ``[out, in]``; ``sym`` and ``shift`` float32), the products over ``m`` in
    blocks of ``BLOCK_K``, accumulated in float32 with the gradient. Programs in order
    of (row block, channel block), the channel blocks of a row block next to each other
    (they read the same maps' rows: from L2 after the first)."""
    pid = tl.program_id(0)
    offs_m = (pid // col_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    image, pixel = (offs_m // HW).to(tl.int64), (offs_m % HW).to(tl.int64)
    cols = (pid % col_blocks) * BLOCK_J + tl.arange(0, BLOCK_J)
    col_ok = cols < m
    maps_rows = maps_ptr + (image * maps_sn + pixel * maps_sp)[:, None]
    total = tl.full((BLOCK_M, BLOCK_J), 0.0, tl.float32)
    for k0 in range(0, m, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < m
        x = tl.load(maps_rows + k[None, :] * maps_sc, mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        weight = tl.load(sym_ptr + cols[None, :] * m + k[:, None],
                         mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        total = tl.dot(x, weight.to(x.dtype), total, input_precision=PRECISION)
    tile_ok = row_ok[:, None] & col_ok[None, :]
    total += tl.load(shift_ptr + cols, mask=col_ok, other=0.0)[None, :]
    total += tl.load(grad_ptr + (image * g_sn + pixel * g_sp)[:, None] + cols[None, :] * g_sc,
                     mask=tile_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + (image * out_sn + pixel * out_sp)[:, None] + cols[None, :] * out_sc,
             total.to(out_ptr.dtype.element_ty), mask=tile_ok)


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
    tile = tile_width(m)
    tiles = triton.cdiv(m, tile)
    with launching(maps):
        autotuned_on_first_use(_shift_kernel, _configs, ["m"])[(1,)](
            maps, shift, rows, h * w, m, sn, sc, sp, SAMPLE=SHIFT_SAMPLE,
            BLOCK_N=basis_block(m))
        autotuned_on_first_use(_moments_kernel, _configs, ["m"])[(programs, tiles * tiles)](
            maps, shift, part, rows, h * w, m, sn, sc, sp, row_blocks, tiles, BLOCK_M=block,
            BLOCK_N=tile, TILED=tiles > 1)
    return shift, part.sum(0)


#: The widest tile of the ``m x m`` sums (one program's accumulator; wider bases are
#: split into tiles, each a program of its own).
MAX_TILE = 64


def tile_width(m: int) -> int:
    """The side of the moments' tiles for a basis of ``m``: the basis itself up to
    :data:`MAX_TILE` (one tile), 32 under the interpreter (so that the tests' small bases
    run the tiled form too)."""
    return min(32 if interpreting() else MAX_TILE, basis_block(m))


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


def _backward_configs(interpret: bool, tune: bool) -> list:
    """Rows per program: 16 under the interpreter (several programs in small tests); on a
    GPU 64 or 128 (a GEMM of ``K = m`` with the gradient added: memory-bound), 64 without
    autotuning. Compiled for sm_90 none spills, in bf16, TF32 or exact float32; 128 rows
    on four warps spilled 68 bytes in exact float32 (a review's finding), so not tried."""
    if interpret:
        return [triton.Config({"BLOCK_M": 16}, num_warps=1)]
    tiles = [(64, 4, 2), (128, 8, 2)]
    return [triton.Config({"BLOCK_M": rows}, num_warps=w, num_stages=s)
            for rows, w, s in (tiles if tune else tiles[:1])]


def add_moments_grad(grad_maps: torch.Tensor, maps: torch.Tensor, sym: torch.Tensor,
                     shift: torch.Tensor) -> torch.Tensor:
    """:func:`.torch_ops.moments_backward` in one pass (``m <= MAX_WIDTH``): it reads the
    gradient once and the maps once (up to 64 channels; wider, a row of maps once per 64
    output channels, the reads after the first from L2) and writes the sum once, where
    the 1x1 conv and the add wrote the conv's result and read it back (two launches, five
    passes over an ``m``-wide tensor, three roundings to bf16 rather than one). The
    result has ``grad_maps``' layout."""
    out = torch.empty_like(grad_maps)
    grad_maps, g_strides = kernel_strides(grad_maps)
    maps, maps_strides = kernel_strides(maps)
    work, work_strides = output_strides(out)
    n, m, h, w = maps.shape
    rows = n * h * w
    if rows:
        block = min(64, basis_block(m))
        columns = triton.cdiv(m, block)
        kernel = autotuned_on_first_use(_moments_backward_kernel, _backward_configs, ["M", "m"])
        with launching(maps):
            kernel[lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]) * columns,)](
                grad_maps, maps, sym.float().contiguous(), shift.float().contiguous(), work,
                rows, h * w, m, columns, *g_strides, *maps_strides, *work_strides,
                PRECISION=dot_precision(maps.dtype), BLOCK_J=block, BLOCK_K=block)
    if work is not out:
        out.copy_(work)
    return out


@torch.library.custom_op("basisconv::moments_backward", mutates_args=(),
                         schema="(Tensor grad_maps, Tensor maps, Tensor sym, Tensor shift) "
                                "-> Tensor")
def moments_backward(grad_maps: torch.Tensor, maps: torch.Tensor, sym: torch.Tensor,
                     shift: torch.Tensor) -> torch.Tensor:
    """:func:`add_moments_grad` as an op, or the standard ops where the kernels cannot
    run (the same basis widths as :mod:`.triton_combine`'s). Not differentiable (the
    fold's written-out backward calls it)."""
    _check_moments_backward(grad_maps, maps, sym, shift)
    if cannot_run(maps):
        return strided_as(torch_ops.moments_backward(grad_maps, maps, sym, shift),
                          torch.empty_like(grad_maps))
    return add_moments_grad(grad_maps, maps, sym, shift)


@moments_backward.register_fake
def _moments_backward_shape(grad_maps, maps, sym, shift):
    _check_moments_backward(grad_maps, maps, sym, shift)
    return torch.empty_like(grad_maps)


def _check_moments_backward(grad_maps, maps, sym, shift) -> None:
    """The op's inputs agree (the kernel takes its sizes from ``maps``: a gradient of
    another shape would be read and written out of bounds, a wider ``sym`` read in part);
    a review's finding, for a caller of the op other than the layer."""
    m = maps.shape[1] if maps.dim() == 4 else None
    if (maps.dim() != 4 or grad_maps.shape != maps.shape or grad_maps.dtype != maps.dtype
            or sym.shape != (m, m) or shift.shape != (m,)):
        raise ValueError(
            f"moments_backward needs grad_maps of the maps' shape and dtype, sym [m, m] and "
            f"shift [m] for maps [N, m, H, W]; got grad_maps {tuple(grad_maps.shape)} "
            f"{grad_maps.dtype}, maps {tuple(maps.shape)} {maps.dtype}, sym "
            f"{tuple(sym.shape)}, shift {tuple(shift.shape)}")


@register_flop_formula(torch.ops.basisconv.moments_backward)
def _moments_backward_flops(grad_shape, maps_shape, *args, **kwargs) -> int:
    """As ``FlopCounterMode`` counts the 1x1 conv it replaces: ``2*M*m*m``."""
    return _moments_flops(maps_shape)


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
