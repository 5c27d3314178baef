"""The folded norm's combination as two Triton kernels (``fuse_norm=True`` with
``combine="fused"``): the only full-width work of a basis conv, its batch norm and ReLU.

:mod:`.norm` folds batch norm into the combination, so the layer's output is
``relu(maps @ F^T + f)`` per pixel (``maps`` the ``m`` basis maps, ``F`` the ``[C_out, m]``
folded matrix, ``f`` its bias). In plain PyTorch that is a 1x1 conv that writes the
output and a ReLU that reads and writes it again; its backward a ReLU mask that reads the
gradient and the output and writes a masked gradient, which the 1x1 conv's backward then
reads twice (for the maps' gradient and the matrix's) and a sum a third time. Here:

* forward: one kernel, the product with bias and ReLU in its epilogue, the output
  written once (issue 13: "the full-width activation is written once");
* backward: one kernel reads the output gradient and the output once, applies the ReLU
  mask in registers, and gives the maps' gradient ``g F`` and, per block of rows, partial
  sums of the matrix's gradient ``g^T maps`` and the bias's ``sum g``, which a small
  reduction adds up (partials rather than atomics: the result does not depend on the
  order blocks finish, as the project's deterministic runs need; there the tile is fixed
  too, :func:`.triton_conv.autotuned_on_first_use`).

Tensors are ``[N, C, H, W]``; the kernels take per-image, per-channel and per-pixel
strides, so any layout whose ``H`` and ``W`` merge (contiguous or channels_last) pays no
copy and gets its layout back (others are copied to channels_last first). Products run in
the maps' dtype with float32 accumulation (TF32 for float32 where cuDNN's flag allows it,
as the 1x1 conv they replace), the bias and the partial sums in float32.
Column sums are products with a block of ones: ``tl.sum`` is one of Triton's jit-decorated
helpers, which the interpreter cannot call (see :mod:`.triton_conv`), and one code path is
then what the CPU tests check.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from .fused import warn_once
from .torch_ops import channels_last, relu_combine, relu_combine_backward
from .triton_conv import (autotuned_on_first_use, basis_block, dot_precision, interpreting,
                          launching, tl, triton, unsupported)


def _combine_kernel(maps_ptr, mat_ptr, bias_ptr, out_ptr, M, HW, m, C_out,
                    maps_sn, maps_sc, maps_sp, out_sn, out_sc, out_sp, mat_so, mat_sb,
                    RELU: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """One program: ``BLOCK_M`` pixels, all ``m`` maps in one tile, every output channel
    block by block. ``mat`` is the folded matrix ``[C_out, m]`` (strides ``mat_so``,
    ``mat_sb``: read as its transpose), ``bias`` ``[C_out]`` float32."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    image, pixel = (offs_m // HW).to(tl.int64), (offs_m % HW).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    basis_ok = offs_n < m
    maps = tl.load(maps_ptr + (image * maps_sn + pixel * maps_sp)[:, None] + offs_n[None, :] * maps_sc,
                   mask=row_ok[:, None] & basis_ok[None, :], other=0.0)
    out_rows = out_ptr + (image * out_sn + pixel * out_sp)[:, None]
    for c0 in range(0, C_out, BLOCK_C):
        oc = c0 + tl.arange(0, BLOCK_C)
        oc_ok = oc < C_out
        mat = tl.load(mat_ptr + offs_n[:, None] * mat_sb + oc[None, :] * mat_so,
                      mask=basis_ok[:, None] & oc_ok[None, :], other=0.0)
        out = tl.dot(maps, mat, input_precision=PRECISION)
        out += tl.load(bias_ptr + oc, mask=oc_ok, other=0.0)[None, :]
        if RELU:
            out = tl.maximum(out, 0.0)
        tl.store(out_rows + oc.to(tl.int64)[None, :] * out_sc, out.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & oc_ok[None, :])


def _combine_backward_kernel(grad_ptr, out_ptr, maps_ptr, mat_ptr, grad_maps_ptr,
                             part_mat_ptr, part_bias_ptr, M, HW, m, C_out,
                             g_sn, g_sc, g_sp, out_sn, out_sc, out_sp,
                             maps_sn, maps_sc, maps_sp, gm_sn, gm_sc, gm_sp,
                             RELU: tl.constexpr, MAPS_GRAD: tl.constexpr,
                             PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """One program: ``BLOCK_M`` pixels. ``mat`` is the folded matrix ``[C_out, m]``;
    ``part_mat`` ``[programs, C_out, m]`` and
    ``part_bias`` ``[programs, C_out]`` (float32) take this program's partial sums."""
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    image, pixel = (offs_m // HW).to(tl.int64), (offs_m % HW).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    basis_ok = offs_n < m
    maps_at = (image * maps_sn + pixel * maps_sp)[:, None] + offs_n[None, :] * maps_sc
    maps_ok = row_ok[:, None] & basis_ok[None, :]
    maps = tl.load(maps_ptr + maps_at, mask=maps_ok, other=0.0)
    ones = tl.full((BLOCK_M, 16), 1.0, maps.dtype)  # column sums as a product (see above)
    one_column = tl.arange(0, 16) == 0
    grad_maps = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    g_rows = grad_ptr + (image * g_sn + pixel * g_sp)[:, None]
    out_rows = out_ptr + (image * out_sn + pixel * out_sp)[:, None]
    part_mat = part_mat_ptr + pid.to(tl.int64) * C_out * m
    part_bias = part_bias_ptr + pid.to(tl.int64) * C_out
    for c0 in range(0, C_out, BLOCK_C):
        oc = c0 + tl.arange(0, BLOCK_C)
        oc_ok = oc < C_out
        tile_ok = row_ok[:, None] & oc_ok[None, :]
        wide_oc = oc.to(tl.int64)  # (NCHW: C_out*H*W may pass 2**31; the maps' m*H*W not)
        g = tl.load(g_rows + wide_oc[None, :] * g_sc, mask=tile_ok, other=0.0)
        if RELU:  # the ReLU's mask, from the output it wrote
            out = tl.load(out_rows + wide_oc[None, :] * out_sc, mask=tile_ok, other=0.0)
            g = tl.where(out > 0, g, 0.0).to(maps.dtype)
        mat = tl.load(mat_ptr + oc[:, None] * m + offs_n[None, :],
                      mask=oc_ok[:, None] & basis_ok[None, :], other=0.0)
        if MAPS_GRAD:
            grad_maps = tl.dot(g, mat, grad_maps, input_precision=PRECISION)
        g_t = tl.trans(g)
        tl.store(part_mat + oc[:, None] * m + offs_n[None, :],
                 tl.dot(g_t, maps, input_precision=PRECISION),
                 mask=oc_ok[:, None] & basis_ok[None, :])
        tl.store(part_bias + oc[:, None] + 0 * one_column[None, :],
                 tl.dot(g_t, ones, input_precision=PRECISION),
                 mask=oc_ok[:, None] & one_column[None, :])
    if MAPS_GRAD:
        tl.store(grad_maps_ptr + (image * gm_sn + pixel * gm_sp)[:, None]
                 + offs_n[None, :] * gm_sc, grad_maps.to(grad_maps_ptr.dtype.element_ty),
                 mask=maps_ok)


#: Output-channel blocks, warps and stages the GPU autotunes over (the rows per program
#: are :func:`_rows_per_program`'s, fixed, so the backward's partial sums have one size),
#: the first also the one tile without autotuning. In bf16 on sm_90 (``ptxas -v``:
#: ``results/kernel-resources-sm90-combination.csv``) the forward's never spill registers,
#: the backward's first at no basis width (it holds three products, so eight warps first)
#: and two others by up to 32 bytes at one width each.
_GPU_TILES = [(64, 4, 2), (128, 4, 2), (32, 4, 2), (128, 8, 2)]
_GPU_BACKWARD_TILES = [(64, 8, 2), (32, 8, 2), (64, 4, 2), (128, 8, 2)]


def _tile_configs(interpret: bool, tune: bool, tiles: list = _GPU_TILES) -> list:
    """Small blocks under the interpreter (they exercise the masks and block loops of the
    tests' small shapes); the GPU's small space, or its first tile without autotuning."""
    if interpret:
        return [triton.Config({"BLOCK_C": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_C": c}, num_warps=w, num_stages=s)
            for c, w, s in (tiles if tune else tiles[:1])]


def _backward_tile_configs(interpret: bool, tune: bool) -> list:
    return _tile_configs(interpret, tune, _GPU_BACKWARD_TILES)


def _rows_per_program(m: int) -> int:
    """Pixels per program: as many as keep the ``[rows, m]`` float32 accumulator within
    64 values a thread of four warps (fewer programs, fewer partial sums), 16 under the
    interpreter (several programs even in small tests)."""
    if interpreting():
        return 16
    return 128 if m <= 32 else 64 if m <= 128 else 32


def kernel_strides(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``t`` and its (image, channel, pixel) strides, copied to channels_last first when its
    ``H`` and ``W`` do not merge into one pixel index."""
    n, c, h, w = t.shape
    if h > 1 and w > 1 and t.stride(2) != w * t.stride(3):
        t = t.contiguous(memory_format=torch.channels_last)
    return t, (t.stride(0), t.stride(1), t.stride(3) if w > 1 else t.stride(2))


def output_strides(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """:func:`kernel_strides` for a tensor the kernel only writes: a new channels_last one
    where ``t``'s pixels do not merge (not a copy of its unwritten contents), which the
    caller copies into ``t`` after."""
    n, c, h, w = t.shape
    if h > 1 and w > 1 and t.stride(2) != w * t.stride(3):
        return kernel_strides(torch.empty_like(t, memory_format=torch.channels_last))
    return kernel_strides(t)


def combine(maps: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor,
            relu: bool) -> torch.Tensor:
    """``relu?(conv1x1(maps, matrix) + bias)``: ``maps`` ``[N, m, H, W]``, ``matrix``
    ``[C_out, m]`` (cast to the maps' dtype), ``bias`` ``[C_out]`` (added in float32). The
    output has the layout a 1x1 conv of ``maps`` gives."""
    out = torch.empty((maps.shape[0], matrix.shape[0], *maps.shape[2:]), dtype=maps.dtype,
                      device=maps.device, memory_format=_layout(maps))
    maps, maps_strides = kernel_strides(maps)
    n, m, h, w = maps.shape
    rows = n * h * w
    if rows == 0:
        return out
    block_m = _rows_per_program(m)
    kernel = autotuned_on_first_use(_combine_kernel, _tile_configs, ["M", "m", "C_out", "RELU"])
    matrix = matrix.to(maps.dtype)  # (the fold's kernel gives it in that dtype already)
    with launching(maps):
        kernel[(triton.cdiv(rows, block_m),)](
            maps, matrix, bias.float().contiguous(), out, rows, h * w, m, out.shape[1],
            *maps_strides, *kernel_strides(out)[1], *matrix.stride(), RELU=relu,
            PRECISION=dot_precision(maps.dtype), BLOCK_M=block_m,
            BLOCK_N=basis_block(m))
    return out


def combine_backward(grad_out: torch.Tensor, out: torch.Tensor | None, maps: torch.Tensor,
                     matrix: torch.Tensor, relu: bool, maps_grad: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of :func:`combine` for the maps (their dtype, the layout
    ``empty_like`` gives them; an empty tensor unless ``maps_grad``), the matrix and the
    bias (float32), given the output gradient and, for the ReLU's mask, the output."""
    grad_maps = _maps_grad_shape(maps, maps_grad)
    maps, maps_strides = kernel_strides(maps)
    # itself, unless its pixels do not merge (the maps' strides, unused, where none is made)
    work, work_strides = output_strides(grad_maps) if maps_grad else (grad_maps, maps_strides)
    n, m, h, w = maps.shape
    c_out = matrix.shape[0]
    grad_out, g_strides = kernel_strides(grad_out.to(maps.dtype))
    out, out_strides = kernel_strides(out) if relu else (grad_out, g_strides)
    rows = n * h * w
    block_m = _rows_per_program(m)
    programs = triton.cdiv(rows, block_m)
    part_mat = maps.new_empty((programs, c_out, m), dtype=torch.float32)
    part_bias = maps.new_empty((programs, c_out), dtype=torch.float32)
    if rows:
        kernel = autotuned_on_first_use(_combine_backward_kernel, _backward_tile_configs,
                                        ["M", "m", "C_out", "RELU", "MAPS_GRAD"])
        with launching(maps):
            kernel[(programs,)](
                grad_out, out, maps, matrix.to(maps.dtype).contiguous(), work, part_mat,
                part_bias, rows, h * w, m, c_out, *g_strides, *out_strides, *maps_strides,
                *work_strides, RELU=relu, MAPS_GRAD=maps_grad,
                PRECISION=dot_precision(maps.dtype), BLOCK_M=block_m,
                BLOCK_N=basis_block(m))
    if work is not grad_maps:
        grad_maps.copy_(work)
    return grad_maps, part_mat.sum(0), part_bias.sum(0)


def _maps_grad_shape(maps: torch.Tensor, maps_grad: bool) -> torch.Tensor:
    """The maps' gradient as the ops give it: ``empty_like`` the maps, or empty (none
    computed)."""
    return torch.empty_like(maps) if maps_grad else maps.new_empty(0)


def _layout(t: torch.Tensor) -> torch.memory_format:
    """The memory format a 1x1 conv of ``t`` gives."""
    return torch.channels_last if channels_last(t) else torch.contiguous_format


def cannot_run(maps: torch.Tensor) -> bool:
    """Whether the folded norm's kernels cannot run on ``maps`` (said once, with why: one
    line for all of them)."""
    reason = unsupported(maps, maps.dtype, maps.shape[1],
                         out_pixels=maps.numel() // max(maps.shape[1], 1))
    if reason is not None:
        warn_once(f"combine='fused' with fuse_norm=True needs {reason}; running the folded "
                  f"norm in standard ops instead (same result, no Triton kernels)")
    return reason is not None


def sums_dtype(maps: torch.Tensor) -> torch.dtype:
    """The dtype of sums over the maps' pixels: float32, float64 for float64 maps (the
    standard ops keep that precision where the kernels cannot run)."""
    return torch.float64 if maps.dtype == torch.float64 else torch.float32


def strided_as(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides and dtype of ``like`` (what the shape-only twins promise)."""
    return t if t.stride() == like.stride() and t.dtype == like.dtype else like.copy_(t)


# The kernels as PyTorch custom ops with shape-only twins, as :mod:`.fused` wraps its
# kernel: ``torch.compile`` keeps them in its graph rather than tracing Triton's launcher
# (or the check of whether the kernels can run, which asks Triton). Where they cannot run,
# the ops compute the same in standard ops (:mod:`.torch_ops`).
@torch.library.custom_op("basisconv::folded_combine", mutates_args=(),
                         schema="(Tensor maps, Tensor matrix, Tensor bias, bool relu) -> Tensor")
def folded_combine(maps: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor,
                   relu: bool) -> torch.Tensor:
    """:func:`combine` as an op; differentiable (an eval-mode norm's fold is trained
    through it; the batch-statistics fold calls the backward op itself)."""
    _check_combination(maps, matrix, bias)
    if cannot_run(maps):
        return strided_as(relu_combine(maps, matrix, bias, relu), _folded_combine_shape(
            maps, matrix, bias, relu))
    return combine(maps, matrix, bias, relu)


@folded_combine.register_fake
def _folded_combine_shape(maps, matrix, bias, relu):
    _check_combination(maps, matrix, bias)
    return torch.empty((maps.shape[0], matrix.shape[0], *maps.shape[2:]), dtype=maps.dtype,
                       device=maps.device, memory_format=_layout(maps))


@torch.library.custom_op(
    "basisconv::folded_combine_backward", mutates_args=(),
    schema="(Tensor grad_out, Tensor? out, Tensor maps, Tensor matrix, bool relu, "
           "bool maps_grad=True) -> (Tensor, Tensor, Tensor)")
def folded_combine_backward(grad_out: torch.Tensor, out: torch.Tensor | None,
                            maps: torch.Tensor, matrix: torch.Tensor, relu: bool,
                            maps_grad: bool = True
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`combine_backward` as an op (the maps' gradient empty unless ``maps_grad``:
    a frozen basis on an input without gradient needs none)."""
    _check_combination(maps, matrix, grad_out=grad_out, out=out)
    if cannot_run(maps):
        grads = relu_combine_backward(grad_out, out, maps, matrix, relu, maps_grad)
        return (strided_as(grads[0], _maps_grad_shape(maps, True)) if maps_grad
                else _maps_grad_shape(maps, False),
                *(grad.to(sums_dtype(maps)) for grad in grads[1:]))
    return combine_backward(grad_out, out, maps, matrix, relu, maps_grad)


@folded_combine_backward.register_fake
def _folded_combine_backward_shapes(grad_out, out, maps, matrix, relu, maps_grad=True):
    _check_combination(maps, matrix, grad_out=grad_out, out=out)
    c_out, m = matrix.shape
    return (_maps_grad_shape(maps, maps_grad),
            maps.new_empty((c_out, m), dtype=sums_dtype(maps)),
            maps.new_empty((c_out,), dtype=sums_dtype(maps)))


def _check_combination(maps, matrix, bias=None, grad_out=None, out=None) -> None:
    """The ops' inputs agree: the kernels take ``m`` from the maps and ``C_out`` from the
    matrix, so a matrix of another width, a bias of another length or an output gradient
    (or output) of another shape was read in part or out of bounds, where the standard ops
    refuse them (a review's finding, as :mod:`.triton_moments`' ``moments_backward``)."""
    outputs = matrix.shape[0] if matrix.dim() == 2 else None
    image = (maps.shape[0], outputs, *maps.shape[2:]) if maps.dim() == 4 else None
    if (image is None or outputs is None or matrix.shape[1] != maps.shape[1]
            or bias is not None and tuple(bias.shape) != (outputs,)
            or any(t is not None and tuple(t.shape) != image for t in (grad_out, out))):
        raise ValueError(
            f"folded_combine needs maps [N, m, H, W], a matrix [C_out, m], a bias [C_out] "
            f"and an output (gradient) [N, C_out, H, W]; got maps {tuple(maps.shape)}, "
            f"matrix {tuple(matrix.shape)}"
            + "".join(f", {name} {tuple(t.shape)}" for name, t in
                      (("bias", bias), ("grad_out", grad_out), ("out", out)) if t is not None))


def _save_for_backward(ctx, inputs, output):
    maps, matrix, bias, relu = inputs
    ctx.save_for_backward(maps, matrix, output if relu else None)
    ctx.relu, ctx.bias_dtype = relu, bias.dtype


def _backward(ctx, grad_out):
    maps, matrix, out = ctx.saved_tensors
    # a backward that is itself differentiated (create_graph=True, a gradient penalty):
    # standard ops, which autograd differentiates; the backward op has no gradient
    backward = relu_combine_backward if torch.is_grad_enabled() else folded_combine_backward
    maps_grad = ctx.needs_input_grad[0]
    grad_maps, grad_matrix, grad_bias = backward(grad_out, out, maps, matrix, ctx.relu,
                                                 maps_grad)
    return (grad_maps if maps_grad else None, grad_matrix.to(matrix.dtype),
            grad_bias.to(ctx.bias_dtype), None)


folded_combine.register_autograd(_backward, setup_context=_save_for_backward)


@register_flop_formula(torch.ops.basisconv.folded_combine)
def _folded_combine_flops(maps_shape, matrix_shape, *args, **kwargs) -> int:
    """What ``FlopCounterMode`` counts for the 1x1 conv the kernel replaces: ``2*M*m*C_out``."""
    n, m, h, w = maps_shape
    return 2 * n * h * w * m * matrix_shape[0]


@register_flop_formula(torch.ops.basisconv.folded_combine_backward)
def _folded_combine_backward_flops(grad_shape, out_shape_, maps_shape, matrix_shape, relu=None,
                                   maps_grad=True, **kwargs) -> int:
    """The 1x1 conv's backward for the maps (where asked) and the matrix, as counted for
    it (the sum for the bias is not counted, as ``FlopCounterMode`` counts no sum)."""
    return (2 if maps_grad else 1) * _folded_combine_flops(maps_shape, matrix_shape)
