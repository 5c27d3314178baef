"""``combine="fused"``: the Triton forward of :mod:`.triton_conv` as one PyTorch custom op,
``basisconv::fused_basis_conv``, with a hand-written backward.

Why a custom op (``torch.library.custom_op``) rather than a plain autograd Function:
``torch.compile`` treats the op as one opaque node, with a fake (shape-only) twin for
tracing, so a compiled network keeps one graph; tracing into the kernel's launcher instead
broke the graph several times per layer (Triton's knobs are read through C calls that
Dynamo cannot follow). The same op runs under CUDA graphs and in eager mode.

The op computes where it can through the kernel, else through the stacked PyTorch form
(:func:`.torch_ops.stacked_forward`'s two convs), with a one-time warning naming what was
missing: no triton, a tensor the kernel does not take, or a shape whose kernel does not
compile on this GPU. Both paths return the same two tensors, so one backward serves them.

Backward, given ``grad_out`` (``G``, ``[M, C_out]`` channels_last rows, ``M`` output pixels):

* ``g_basis = G @ combination`` (``[M, m]``), then the input and basis-weight gradients are
  the ordinary conv gradients of ``g_basis`` (``aten.convolution_backward``: cuDNN on GPU);
* ``grad combination = G^T @ basis_maps`` (``[C_out, m]``); it flows on, through autograd, to
  the layer's real parameters (coefficients, low-rank factors, mask, output order);
* ``grad bias = G`` summed over pixels.

The basis maps are saved by the forward kernel (an extra ``M*m`` write, ``m/C_out`` of the
output's) rather than recomputed: recomputing them is a second basis conv, most of the
forward's work, while saving costs exactly the memory the stacked form keeps for its 1x1
conv's backward anyway. They are written only when the combination needs a gradient.
Folding ``G @ combination`` into the gradient convs' prologue is not done (yet): one more
``[M, m]`` tensor goes through memory.
"""

from __future__ import annotations

import numbers
import operator
import os
import sys

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from ..errors import error_head, warn_caller
from . import triton_conv
from .torch_ops import channels_last, stacked_forward

#: Reasons already warned about (once per process each, not once per forward).
_WARNED: set[str] = set()
#: Shapes whose kernel failed to compile on their device, with why (not tried again).
_FAILED: dict[tuple, str] = {}


# The schema written out, not inferred from the annotations: this module's annotations are
# strings (``from __future__ import annotations``), which older torch cannot infer from.
@torch.library.custom_op(
    "basisconv::fused_basis_conv", mutates_args=(),
    schema="(Tensor x, Tensor basis_weight, Tensor combination, Tensor? bias, int[] stride, "
           "int[] padding, int[] dilation, bool store_basis) -> (Tensor, Tensor)")
def fused_basis_conv(x: torch.Tensor, basis_weight: torch.Tensor, combination: torch.Tensor,
                     bias: torch.Tensor | None, stride: list[int], padding: list[int],
                     dilation: list[int], store_basis: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.conv2d(x, combination @ basis_weight, bias)`` as a channels_last output, and the
    basis maps as ``[M, m]`` rows (empty unless ``store_basis``): the kernel's, or the
    stacked form's where the kernel cannot run (said once)."""
    triton_conv.check_input(x, basis_weight, combination, bias, stride, padding,
                            dilation)
    shape = _shape_key(x, x.dtype, basis_weight, combination.shape[0], stride, padding,
                       dilation)
    h_out, w_out = triton_conv.output_size(x.shape[2:], basis_weight.shape[2:], stride,
                                           padding, dilation)
    reason = (triton_conv.unsupported(x, x.dtype, basis_weight.shape[0],
                                      out_pixels=x.shape[0] * h_out * w_out)
              or _FAILED.get(shape))
    if reason is None:
        try:
            out, basis = triton_conv.basis_conv(x, basis_weight, combination, bias, stride,
                                                padding, dilation, store_basis=store_basis)
            return out, basis if basis is not None else x.new_empty(0)
        except Exception as err:  # noqa: BLE001 - only Triton's own errors are caught
            if not is_triton_error(err):
                raise
            # A kernel that does not compile for this shape on this GPU (e.g. out of shared
            # memory or registers for every tile): the shape runs the stacked form from now
            # on, said once, and the tests' check that the kernel ran still fails.
            reason = _FAILED[shape] = (
                f"a kernel that compiles for input {list(x.shape)} on this device "
                f"({error_head(err)})")
    warn_once(f"combine='fused' needs {reason}; running the stacked PyTorch form instead "
               f"(same result, no fused kernel)")
    basis_maps = F.conv2d(x, basis_weight, None, stride, padding, dilation)
    out = F.conv2d(basis_maps, combination[:, :, None, None], bias)
    rows = (basis_maps.permute(0, 2, 3, 1).reshape(-1, basis_maps.shape[1]).contiguous()
            if store_basis else x.new_empty(0))
    # the kernel's layout exactly (the fake twin's strides), whatever layout the convs chose
    return torch.empty_like(out, memory_format=torch.channels_last).copy_(out), rows


@fused_basis_conv.register_fake
def _fused_basis_conv_shapes(x, basis_weight, combination, bias, stride, padding, dilation,
                             store_basis):
    n, _, h, w = x.shape
    m, _, kh, kw = basis_weight.shape
    h_out, w_out = triton_conv.output_size((h, w), (kh, kw), stride, padding, dilation)
    out = torch.empty((n, combination.shape[0], h_out, w_out), dtype=x.dtype,
                      device=x.device, memory_format=torch.channels_last)
    return out, x.new_empty((n * h_out * w_out, m) if store_basis else (0,))


def _save_for_backward(ctx, inputs, output):
    x, basis_weight, combination, _, stride, padding, dilation, store_basis = inputs
    ctx.save_for_backward(x, basis_weight, combination, output[1])
    ctx.conv = (stride, padding, dilation)
    ctx.stored_basis = store_basis
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_out, _grad_basis):
    x, basis_weight, combination, basis = ctx.saved_tensors
    stride, padding, dilation = ctx.conv
    n, c_out, h_out, w_out = grad_out.shape
    rows = grad_out.permute(0, 2, 3, 1).reshape(-1, c_out)  # a view if channels_last
    grad_x = grad_weight = grad_comb = grad_bias = None
    need_x, need_weight, need_comb, need_bias = ctx.needs_input_grad[:4]
    if need_x or need_weight:
        g_basis = (rows @ combination).view(n, h_out, w_out, combination.shape[1])
        g_basis = g_basis.permute(0, 3, 1, 2)  # the size, not -1: a batch may be empty
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            g_basis, x, basis_weight, None, list(stride), list(padding), list(dilation),
            False, [0, 0], 1, [need_x, need_weight, False])
    if need_comb:
        # computed again where no basis maps were kept, and for a differentiable backward
        # (create_graph=True): the saved maps are an output marked non-differentiable, so
        # through them grad_comb's dependence on x and basis_weight would be lost
        if not ctx.stored_basis or torch.is_grad_enabled():
            maps = F.conv2d(x, basis_weight, None, stride, padding, dilation)
            basis = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])
        grad_comb = rows.t() @ basis
    if need_bias:
        grad_bias = rows.sum(0)
    return grad_x, grad_weight, grad_comb, grad_bias, None, None, None, None


fused_basis_conv.register_autograd(_backward, setup_context=_save_for_backward)


@register_flop_formula(torch.ops.basisconv.fused_basis_conv)
def _fused_basis_conv_flops(x_shape, weight_shape, combination_shape, *args, out_shape,
                            **kwargs) -> int:
    """What ``FlopCounterMode`` counts for the op (it cannot look inside a kernel): the
    stacked form's two convs, ``2*M*(K*m + m*C_out)``, as :mod:`basisconv.cost_formulas` counts a
    fused layer. (Its backward is plain aten ops, counted as they run.)"""
    n, c_out, h_out, w_out = out_shape[0]
    m, c_in, kh, kw = weight_shape
    return 2 * n * h_out * w_out * m * (c_in * kh * kw + c_out)


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """Autocast's dtype on ``x``'s device where it is on, else None. (A device without
    autocast, such as ``meta`` in the cost model's dry runs, has none.)"""
    try:
        if torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
    except RuntimeError:
        pass
    return None


def _autocast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``t`` as autocast passes it to a conv: in ``dtype`` (autocast's, None where it is
    off), except a float64 tensor, which autocast leaves alone."""
    return t if dtype is None or t.dtype == torch.float64 else t.to(dtype)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a conv of ``x`` computes in: autocast's where it is on (and ``x`` is not
    float64, which it leaves alone), else ``x``'s."""
    return _autocast(x, autocast_dtype(x)).dtype


def _shape_key(x: torch.Tensor, dtype: torch.dtype, basis_weight: torch.Tensor, outputs: int,
               stride, padding, dilation) -> tuple:
    """What a kernel's compile failure is remembered by (:data:`_FAILED`)."""
    return (x.device.type, dtype, tuple(x.shape), tuple(basis_weight.shape), outputs,
            tuple(stride), tuple(padding), tuple(dilation))


def failed_to_compile(x: torch.Tensor, basis_weight: torch.Tensor, outputs: int, stride,
                      padding, dilation) -> bool:
    """Whether the kernel already failed to compile for this call's shape, so that
    :func:`fused_forward` runs the stacked form there (``combine="auto"`` then neither
    times nor records that as ``fused``)."""
    pad = numeric_padding(padding, basis_weight.shape[2:], dilation)
    return pad is not None and _shape_key(x, compute_dtype(x), basis_weight, outputs, stride,
                                          pad, dilation) in _FAILED


def numeric_padding(padding, kernel_size, dilation) -> tuple[int, int] | None:
    """``padding`` as two ints; ``"same"`` only when it pads both sides equally (None
    otherwise: PyTorch pads the extra row or column on one side, the kernel cannot)."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        return None if any(t % 2 for t in totals) else tuple(t // 2 for t in totals)
    return tuple(int(p) for p in padding)


def conv_pairs(stride, padding, dilation) -> tuple:
    """``stride``, ``padding`` and ``dilation`` as pairs, from what ``F.conv2d`` takes (an
    int, a one-element sequence or a pair each; ``padding`` also ``"same"`` or ``"valid"``,
    kept as it is): a layer passes pairs, a direct caller of the forms may pass
    ``stride=2`` (which ended in "'int' object is not iterable" here, where the stacked
    form took it), or numpy's ``np.int64(2)`` (a size computed with numpy, which
    ``F.conv2d`` takes as an int). Called at every eager forward: a pair passes through as
    it is. A bool or a float is refused, as ``F.conv2d`` refuses it (``operator.index``
    took ``stride=True`` as a stride of 1, silently), and so is a sequence of another
    length (the kernel read the first two of ``stride=(2, 2, 2)`` on CUDA, silently), and a
    padding string but these two (``"full"`` ended in "invalid literal for int()")."""
    if isinstance(padding, str) and padding not in ("same", "valid"):
        raise ValueError(f"padding={padding!r}: give 'same', 'valid', an int or a pair of "
                         f"ints, as F.conv2d takes them")
    return (_as_pair(stride, "stride"),
            padding if isinstance(padding, str) else _as_pair(padding, "padding"),
            _as_pair(dilation, "dilation"))


def _as_pair(value, name: str) -> tuple:
    if type(value) is tuple and len(value) == 2 and type(value[0]) is type(value[1]) is int:
        return value  # (a layer's: nothing to do)
    values = (value,) if isinstance(value, numbers.Integral) else value
    try:  # Python's ints: numpy's wrote "(np.int64(1), np.int64(1))" into auto's key (str
        # of the padding), which then timed the pairs' shape again under another key
        pair = tuple(map(operator.index, values))
    except TypeError:  # (a float, a string, None, a tensor)
        pair = ()
    # (operator.index takes a bool as an int; the kernel reads two: a third was dropped)
    if len(pair) not in (1, 2) or any(isinstance(v, bool) for v in values):
        raise TypeError(f"{name}={value!r}: give an int or a pair of ints, as F.conv2d "
                        f"takes them")
    return pair * 2 if len(pair) == 1 else pair


def fused_forward(x: torch.Tensor, basis_weight: torch.Tensor, combination: torch.Tensor,
                  bias: torch.Tensor | None, stride, padding, dilation) -> torch.Tensor:
    """The layer's output through :func:`fused_basis_conv`, in the memory format a conv
    of ``x`` gives.

    Under autocast every input is cast to the autocast dtype first, as ``F.conv2d`` would
    cast them (``tl.dot`` takes one dtype: inside a network ``x`` is already bf16 while the
    parameters are float32), float64 ones excepted, as there; the casts are ordinary
    autograd ops, so gradients reach the float32 params. The basis maps are kept only when
    the combination needs a gradient.
    """
    stride, padding, dilation = conv_pairs(stride, padding, dilation)
    # as F.conv2d refuses it (found in review: the kernel computed an output, its padding
    # that of stride 1)
    if padding == "same" and any(s != 1 for s in stride):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
    # a shape-only dry run (the cost model): nothing to warn of; an ONNX export: ONNX has no
    # basisconv::fused_basis_conv, so the stacked form's standard convs (same function)
    if x.device.type == "meta" or torch.onnx.is_in_onnx_export():
        return stacked_forward(x, basis_weight, combination, bias, stride, padding, dilation)
    pad = numeric_padding(padding, basis_weight.shape[2:], dilation)
    if pad is None:
        warn_once("combine='fused' needs symmetric padding (padding='same' with an even "
                   "dilation*(kernel-1)); running the stacked PyTorch form instead (same "
                   "result, no fused kernel)")
        return stacked_forward(x, basis_weight, combination, bias, stride, padding, dilation)
    dtype = autocast_dtype(x)
    x, basis_weight, combination = (_autocast(t, dtype) for t in (x, basis_weight, combination))
    bias = _autocast(bias, dtype) if bias is not None else None
    # (not while torch.jit.trace records: it checks its trace under no_grad, where this
    # differs; a backward without the stored maps recomputes them)
    store_basis = (torch.is_grad_enabled() and combination.requires_grad
                   and not torch.jit.is_tracing())
    out, _ = fused_basis_conv(x, basis_weight, combination, bias, list(stride), list(pad),
                              list(dilation), store_basis)
    if channels_last(x) or channels_last(basis_weight):
        return out
    # a copy also where the output is contiguous in both layouts (one channel or one pixel),
    # which .contiguous() returns as it is: its channels_last strides made the next conv of
    # an NCHW model run, and write, channels_last (found in review)
    return out.clone(memory_format=torch.contiguous_format) if channels_last(out) else out


def is_triton_error(err: BaseException) -> bool:
    """Whether ``err`` is Triton's own (a kernel that does not compile for a shape on this
    device: out of shared memory or registers), the one kind of failure a kernel's caller
    survives by running without it; any other error is a bug and goes up."""
    return type(err).__module__.startswith("triton")


def warn_once(message: str) -> None:
    """Warn once per process, at the user's line that ran the layer
    (:func:`~basisconv.errors.warn_caller`: from inside the op, a fixed ``stacklevel`` named
    torch's custom-op machinery), outside the code ``torch.compile`` generated too, which
    calls the op in a compiled model."""
    if message in _WARNED:
        return
    _WARNED.add(message)
    warn_caller(message, also_skip=_generated_code)


def _generated_code(filename: str) -> bool:
    """Whether ``filename`` is code torch.compile wrote: an FX graph module's (the
    ``aot_eager`` backend's) or Inductor's output, in its cache folder."""
    if filename.startswith("<eval_with_key>"):
        return True
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # (Inductor sets it when it compiles)
    if folder is None:  # Inductor's default, without its cache_dir()'s side effects
        inductor = sys.modules.get("torch._inductor.runtime.cache_dir_utils")
        default = getattr(inductor, "default_cache_dir", None)
        folder = default() if default is not None else None
    return bool(folder) and filename.startswith(os.path.join(os.path.abspath(folder), ""))
