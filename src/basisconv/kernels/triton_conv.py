"""The fused basis-convolution forward as one Triton kernel (``combine="fused"``).

An implicit-GEMM convolution over a channels_last (NHWC) input: GEMM rows are the output
pixels (``M = N*H_out*W_out``), columns the ``m`` basis filters, the reduction runs over
``K = kh*kw*C_in`` without ever materializing the im2col matrix. The whole ``m`` sits in
one tile (``BLOCK_N``, :func:`basis_block`, at most :data:`MAX_BASIS`), so the epilogue can
multiply the finished ``[BLOCK_M, m]`` basis tile by the ``[m, C_out]`` combination
(identity rows for the basis channels and the coefficients, in output order), block by block
of output channels, and write every output channel, bias added, straight into one
channels_last output: the basis maps never make a round trip through memory, and there is
no 1x1 conv and no concatenation. Optionally the kernel also writes the basis maps (the
backward needs them; :mod:`.fused` says why they are saved, not recomputed).

Both products use ``tl.dot`` with float32 accumulation. Float32 inputs use ``"ieee"``
products unless ``torch.backends.cudnn.allow_tf32`` is on (it is by default), in which case
they use TF32, as ``F.conv2d`` on the same GPU would; the interpreter always uses ``"ieee"``.
Under bf16 autocast the basis maps are rounded to bf16 before the second product, as the
stacked form's 1x1 conv would see them.

Triton is optional: without it :data:`triton` is ``None`` and :func:`unsupported` says so,
so the layer falls back to the plain PyTorch forms. ``TRITON_INTERPRET=1`` runs the kernel
on CPU through Triton's interpreter (how the tests check it without a GPU). Triton reads that
flag when ``triton.jit`` decorates a function, so the kernel is decorated on first use,
once per interpreter setting, not at import.
"""

from __future__ import annotations

import contextlib
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the package works without triton; the layer then falls back
    triton = None
    tl = None

#: The largest basis size the single-tile design takes (a ``[BLOCK_M, 256]`` float32
#: accumulator already fills a GPU's registers); larger ones use the PyTorch form.
MAX_BASIS = 256


def _basis_conv_kernel(
        x_ptr, w_ptr, comb_ptr, bias_ptr, out_ptr, basis_ptr,
        M, C_in, H, W, H_out, W_out, C_out, m,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr,
        STORE_BASIS: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        BLOCK_C: tl.constexpr):
    """One program: ``BLOCK_M`` output pixels, all ``m`` basis maps, all ``C_out`` outputs.

    Layouts (all contiguous): ``x`` ``[N, H, W, C_in]``; ``w`` ``[KH, KW, C_in, m]`` so the
    reduction index ``(r, s, c)`` walks memory in the order the NHWC input is read; ``comb``
    ``[m, C_out]``; ``out`` ``[M, C_out]``; ``basis`` ``[M, m]``.
    """
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    ow = offs_m % W_out
    oh = (offs_m // W_out) % H_out
    # int64 between images, so a batch may hold more than 2**31 elements (within one image
    # offsets are int32, fewer registers: ``unsupported`` refuses larger images)
    image = (offs_m // (W_out * H_out)).to(tl.int64)
    x_image = x_ptr + image * H * W * C_in  # [BLOCK_M] pointers to each row's image
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    offs_n = tl.arange(0, BLOCK_N)
    basis_ok = offs_n < m
    offs_k = tl.arange(0, BLOCK_K)

    # tl.full, not tl.zeros: only builtins here. Triton's standard-library helpers
    # (tl.zeros and tl.cdiv among them) are jit functions decorated when triton is imported, so the
    # interpreter cannot call them unless TRITON_INTERPRET was set before that import.
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    # One loop over the whole reduction, tap by tap ((r, s)) and channel block by block
    # within a tap, rather than a loop per tap: Triton software-pipelines one loop, and
    # a loop per tap has only C_in / BLOCK_K steps (one or two in ResNet's early stages),
    # so no load overlapped a product, and the nine unrolled loops kept more registers
    # live (ptxas on sm_90: e.g. 148 -> 64 registers for a 32x64 tile at m = 64, bf16).
    c_blocks = (C_in + BLOCK_K - 1) // BLOCK_K  # (tl.cdiv is a helper, as above)
    for step in range(0, KH * KW * c_blocks):
        tap = step // c_blocks
        c = (step - tap * c_blocks) * BLOCK_K + offs_k
        r = tap // KW
        ih = ih0 + r * dil_h
        iw = iw0 + (tap - r * KW) * dil_w
        # out-of-image taps read zeros: the zero padding, never stored
        pixel_ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        c_ok = c < C_in
        a = tl.load(x_image[:, None] + ((ih * W + iw) * C_in)[:, None] + c[None, :],
                    mask=pixel_ok[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(w_ptr + (tap * C_in + c)[:, None] * m + offs_n[None, :],
                    mask=c_ok[:, None] & basis_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    rows = offs_m.to(tl.int64)
    if STORE_BASIS:
        tl.store(basis_ptr + rows[:, None] * m + offs_n[None, :],
                 acc.to(basis_ptr.dtype.element_ty), mask=row_ok[:, None] & basis_ok[None, :])
    # The second product runs in the input dtype, as the stacked form's 1x1 conv would
    # (basis maps rounded to bf16 under autocast, kept float32 otherwise).
    basis = acc.to(comb_ptr.dtype.element_ty)
    for c0 in range(0, C_out, BLOCK_C):
        oc = c0 + tl.arange(0, BLOCK_C)
        oc_ok = oc < C_out
        comb = tl.load(comb_ptr + offs_n[:, None] * C_out + oc[None, :],
                       mask=basis_ok[:, None] & oc_ok[None, :], other=0.0)
        out = tl.dot(basis, comb, input_precision=PRECISION)
        if HAS_BIAS:
            out += tl.load(bias_ptr + oc, mask=oc_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rows[:, None] * C_out + oc[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & oc_ok[None, :])


#: A tile that compiles for every basis size up to :data:`MAX_BASIS` (the no-autotune one).
_SAFE_TILE = (64, 32, 64, 4, 3)
_GPU_TILES = [(128, 32, 64, 4, 3), (128, 64, 64, 8, 3), _SAFE_TILE, (64, 64, 128, 4, 3),
              (128, 32, 128, 8, 2), (32, 64, 64, 4, 4)]


def _tile_configs(interpret: bool, tune: bool = True) -> list:
    """A small autotuning space on GPU (``BLOCK_M, BLOCK_K, BLOCK_C, warps, stages``); one
    tile with ``BASISCONV_AUTOTUNE=0`` (the GPU tests: each tuning compiles six kernels);
    one small config under the interpreter, where autotuning would only time the
    interpreter, and small tiles exercise the masks and block loops of small test shapes."""
    if interpret:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_K": 16, "BLOCK_C": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_C": bc}, num_warps=w, num_stages=st)
            for bm, bk, bc, w, st in (_GPU_TILES if tune else [_SAFE_TILE])]


#: The most float32 accumulator elements a thread may hold (``BLOCK_M * BLOCK_N`` over the
#: block's ``32 * warps`` threads). The one tile above it, 128 rows by 4 warps at a 256-wide
#: basis, is the one tile whose accumulator alone spills registers: 2176 bytes of spill
#: stores in bf16 (ptxas for sm_90: ``scripts/kernel_resources.py``,
#: ``results/kernel-resources-sm90.csv``); 128-row tiles of 8 warps hold half as much each.
MAX_ACCUMULATOR_PER_THREAD = 128


def _prune_configs(configs, named_args, **kwargs):
    """Drop the tiles whose threads would each hold more of the ``[BLOCK_M, BLOCK_N]``
    accumulator than :data:`MAX_ACCUMULATOR_PER_THREAD` (only at a 256-wide basis)."""
    width = kwargs.get("BLOCK_N", named_args.get("BLOCK_N", 0))
    kept = [c for c in configs
            if c.kwargs["BLOCK_M"] * width <= MAX_ACCUMULATOR_PER_THREAD * 32 * c.num_warps]
    return kept or configs


_KERNELS: dict[tuple, object] = {}


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``),
    read as ``triton.jit`` reads it, at the moment of asking."""
    if triton is None:
        return False
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4; a GPU machine's may be older
    if knobs is None:
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")
    return bool(knobs.runtime.interpret)


#: Autotuning times each tile for this long (ms; Triton's defaults: 25 and 100). A layer's
#: kernel takes tens of microseconds, so that is still hundreds of runs per tile, and the
#: tuning of a ResNet's dozens of shapes and widths costs seconds, not a minute, of a
#: short GPU slot.
AUTOTUNE_WARMUP_MS, AUTOTUNE_REP_MS = 5, 25


def _autotune_options() -> dict:
    """Shorter timing per tile, and each shape's result kept on disk (Triton's cache
    folder, keyed by the GPU's architecture, the kernel's source and the tiles) where this
    Triton can: every training run and benchmark is its own process, and otherwise each
    one times every tile of every layer shape again."""
    import functools
    import inspect

    import triton.testing

    parameters = inspect.signature(triton.autotune).parameters
    if "do_bench" in parameters:
        options = {"do_bench": functools.partial(
            triton.testing.do_bench, warmup=AUTOTUNE_WARMUP_MS, rep=AUTOTUNE_REP_MS)}
    else:  # triton < 3.2 (torch < 2.6): no do_bench, the times are arguments themselves
        options = {"warmup": AUTOTUNE_WARMUP_MS, "rep": AUTOTUNE_REP_MS}
    if "cache_results" in parameters:
        options["cache_results"] = True
    return options


def autotuned_on_first_use(kernel, configs, key: list[str], prune=None):
    """``kernel`` decorated (jit and autotune) for the current interpreter and autotuning
    settings, on first use, once per setting; ``configs(interpret, tune)`` gives its tiles
    (one, the first, without autotuning: ``BASISCONV_AUTOTUNE=0`` or deterministic mode).
    (Triton reads the interpreter flag as ``triton.jit`` decorates a function, so a kernel
    decorated at import would ignore a flag set after it.)"""
    interpret = interpreting()
    # not in deterministic mode (trainer.deterministic): the tile is chosen by timing, and
    # the tile sets the order in which a product's blocks are added, so a run could differ
    # from the next in its last bits (as cuDNN's benchmark mode, off there too)
    tune = (not interpret and os.environ.get("BASISCONV_AUTOTUNE", "1") != "0"
            and not torch.are_deterministic_algorithms_enabled())
    if (kernel, interpret, tune) not in _KERNELS:
        pruning = {"prune_configs_by": {"early_config_prune": prune}} if prune else {}
        _KERNELS[kernel, interpret, tune] = triton.autotune(
            configs=configs(interpret, tune), key=key, **pruning, **_autotune_options(),
        )(triton.jit(kernel))
    return _KERNELS[kernel, interpret, tune]


def _kernel():
    """The decorated basis-conv kernel."""
    return autotuned_on_first_use(_basis_conv_kernel, _tile_configs,
                                  ["M", "C_in", "C_out", "m", "KH", "KW", "STORE_BASIS"],
                                  _prune_configs)


def unsupported(x: torch.Tensor, dtype: torch.dtype, num_basis: int,
                out_pixels: int = 0) -> str | None:
    """Why :func:`basis_conv` cannot run on ``x`` computed in ``dtype``, or None if it can.

    It needs triton, a CUDA tensor (or the interpreter, which takes float32 only: it runs
    on NumPy, which has no bfloat16), a dtype that ``tl.dot`` takes on every GPU, a
    basis that fits one tile, and int32 offsets within one image and for the output
    pixels (``out_pixels``, ``N * H_out * W_out``, where the caller knows it).
    """
    if triton is None:
        return "triton, which does not import here"
    if interpreting():
        if dtype != torch.float32:
            return f"float32 under TRITON_INTERPRET (got {dtype})"
    elif not x.is_cuda:
        return f"a CUDA tensor (got a {x.device.type} tensor; TRITON_INTERPRET=1 runs it on CPU)"
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"float32, float16 or bfloat16 (got {dtype})"
    if num_basis > MAX_BASIS:
        return f"num_basis <= {MAX_BASIS} (one tile; got {num_basis})"
    if x.dim() == 4 and x.shape[1:].numel() >= 2**31:  # (not x[0]: a batch may be empty)
        return (f"an image of under 2**31 elements (offsets within one are int32; "
                f"got {x.shape[1:].numel()})")
    # a row index, ``program_id * BLOCK_M + i``, is int32: the last program's rows must not
    # pass 2**31 - 1 (they would wrap to negative offsets, which the row mask lets through)
    limit = 2**31 - max(tile[0] for tile in _GPU_TILES)
    if out_pixels > limit:
        return f"at most {limit} output pixels (row indices are int32; got {out_pixels})"
    return None


def check_input(x: torch.Tensor, basis_weight: torch.Tensor, combination: torch.Tensor,
                bias: torch.Tensor | None, stride, padding, dilation) -> None:
    """Raise what ``F.conv2d`` raises for an input it refuses (with its words, so every
    form says the same): the kernel takes ``x``'s channel count as the reduction's, so a
    wrong one would read past the basis weight, and an input smaller than the dilated
    kernel would give an empty output or a negative size; a combination or bias of
    another size would be read past its end (or in part). A tensor of another dtype or
    device would fail in the kernel, which the caller would take for a shape whose kernel
    does not compile (and run that shape's stacked form from then on). A stride or
    dilation below 1 or a negative padding (a direct caller's: a layer checks its own)
    gave a division by zero, an output of every tap at one pixel, or a cropped output
    (found in review)."""
    if any(s < 1 for s in stride):
        raise RuntimeError("non-positive stride is not supported")
    if any(d < 1 for d in dilation):
        raise RuntimeError(f"dilation should be greater than zero, but got {list(dilation)}")
    if any(p < 0 for p in padding):
        raise RuntimeError("negative padding is not supported")
    for name, t in (("weight", basis_weight), ("combination", combination), ("bias", bias)):
        if t is not None and (t.dtype, t.device) != (x.dtype, x.device):
            raise RuntimeError(f"Input type ({x.dtype}, {x.device}) and {name} type "
                               f"({t.dtype}, {t.device}) should be the same")
    m = basis_weight.shape[0]
    if combination.dim() != 2 or combination.shape[1] != m:
        raise RuntimeError(f"Expected a combination of size [C_out, {m}] for {m} basis "
                           f"filters, but got {list(combination.shape)}")
    if bias is not None and tuple(bias.shape) != (combination.shape[0],):
        raise RuntimeError(f"Given weight of size [{combination.shape[0]}, ...], expected "
                           f"bias to be 1-dimensional with {combination.shape[0]} elements, "
                           f"but got bias of size {list(bias.shape)} instead")
    if x.dim() != 4:
        raise RuntimeError(f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got "
                           f"input of size: {list(x.shape)}")
    if x.shape[1] != basis_weight.shape[1]:
        raise RuntimeError(f"Given groups=1, weight of size {list(basis_weight.shape)}, "
                           f"expected input{list(x.shape)} to have {basis_weight.shape[1]} "
                           f"channels, but got {x.shape[1]} channels instead")
    padded = [n + 2 * p for n, p in zip(x.shape[2:], padding)]
    extent = [d * (k - 1) + 1 for k, d in zip(basis_weight.shape[2:], dilation)]
    if any(e > n for e, n in zip(extent, padded)):
        raise RuntimeError(f"Calculated padded input size per channel: ({padded[0]} x "
                           f"{padded[1]}). Kernel size: ({extent[0]} x {extent[1]}). Kernel "
                           f"size can't be greater than actual input size")


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s precision for inputs of ``dtype``, as a conv in PyTorch computes:
    ``"ieee"`` only for float32 without TF32 (cuDNN's flag, on by default; the
    interpreter has none); half-precision inputs get Triton's default for them (``"tf32"``,
    which does not touch 16-bit operands), as every bf16 Triton GEMM does."""
    return ("ieee" if dtype == torch.float32
            and (interpreting() or not torch.backends.cudnn.allow_tf32) else "tf32")


def basis_block(m: int) -> int:
    """The kernels' tile side for a basis of ``m`` maps: ``m`` rounded up to a power of two
    (``tl.arange``'s sizes), at least 16 (``tl.dot``'s smallest operand side); the masks
    leave the padding out. The one rule for every kernel that holds the basis in a tile."""
    return max(16, triton.next_power_of_2(m))


def launching(t: torch.Tensor):
    """The CUDA device of ``t`` made current while a kernel launches: Triton launches (and
    autotunes) on the current device and its stream, not on the tensors' device, so without
    it a layer on cuda:1 launched on cuda:0."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def output_size(size, kernel_size, stride, padding, dilation) -> tuple[int, int]:
    """``(H_out, W_out)`` of a conv with numeric padding, as ``F.conv2d`` computes it."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(size, kernel_size, stride, padding, dilation))


def basis_conv(x: torch.Tensor, basis_weight: torch.Tensor, combination: torch.Tensor,
               bias: torch.Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int], store_basis: bool = False):
    """``F.conv2d(x, combination @ basis_weight, bias, ...)`` in one kernel, plus the basis
    maps ``[N*H_out*W_out, m]`` (channels_last rows) when ``store_basis``, else ``None``.

    ``x`` ``[N, C_in, H, W]`` (channels_last avoids a copy), ``basis_weight``
    ``[m, C_in, kh, kw]``, ``combination`` ``[C_out, m]`` rows in output order, ``bias``
    ``[C_out]`` or None; all of one dtype. The output is ``[N, C_out, H_out, W_out]`` in
    channels_last memory.
    """
    n, c_in, h, w = x.shape
    m, _, kh, kw = basis_weight.shape
    c_out = combination.shape[0]
    h_out, w_out = output_size((h, w), (kh, kw), stride, padding, dilation)
    rows = n * h_out * w_out
    x = x.contiguous(memory_format=torch.channels_last)
    weight = basis_weight.permute(2, 3, 1, 0).contiguous()  # [kh, kw, C_in, m]: tiny copy
    comb = combination.t().contiguous()  # [m, C_out]
    out = torch.empty((n, c_out, h_out, w_out), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    basis = torch.empty((rows, m), dtype=x.dtype, device=x.device) if store_basis else None
    if rows == 0:
        return out, basis
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]),)  # noqa: E731
    with launching(x):
        _kernel()[grid](
            x, weight, comb, bias.contiguous() if bias is not None else comb, out,
            basis if basis is not None else out,
            rows, c_in, h, w, h_out, w_out, c_out, m,
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
            KH=kh, KW=kw, HAS_BIAS=bias is not None, STORE_BASIS=store_basis,
            PRECISION=dot_precision(x.dtype),
            BLOCK_N=basis_block(m))
    return out, basis
