"""``combine="fused"``: the Triton forward of :mod:`.triton_conv` behind an autograd
Function, and the dispatch that falls back to :func:`.torch_ops.stacked_forward`.

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

import warnings

import torch
from torch.autograd.function import once_differentiable

from . import triton_conv
from .torch_ops import stacked_forward

#: Reasons already warned about (once per process each, not once per forward).
_WARNED: set[str] = set()
#: Shapes whose kernel failed to compile on their device, with why (not tried again).
_FAILED: dict[tuple, str] = {}


class FusedBasisConv(torch.autograd.Function):
    """``F.conv2d(x, combination @ basis_weight, bias)`` through the fused Triton kernel."""

    @staticmethod
    def forward(ctx, x, basis_weight, combination, bias, stride, padding, dilation):
        out, basis = triton_conv.basis_conv(x, basis_weight, combination, bias, stride, padding,
                                            dilation, store_basis=ctx.needs_input_grad[2])
        ctx.save_for_backward(x, basis_weight, combination, basis)
        ctx.conv = (stride, padding, dilation)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, basis_weight, combination, basis = ctx.saved_tensors
        stride, padding, dilation = ctx.conv
        n, c_out, h_out, w_out = grad_out.shape
        rows = grad_out.permute(0, 2, 3, 1).reshape(-1, c_out)  # a view if channels_last
        grad_x = grad_weight = grad_comb = grad_bias = None
        need_x, need_weight, need_comb, need_bias = ctx.needs_input_grad[:4]
        if need_x or need_weight:
            g_basis = (rows @ combination).view(n, h_out, w_out, -1).permute(0, 3, 1, 2)
            grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
                g_basis, x, basis_weight, None, list(stride), list(padding), list(dilation),
                False, [0, 0], 1, [need_x, need_weight, False])
        if need_comb:
            grad_comb = rows.t() @ basis
        if need_bias:
            grad_bias = rows.sum(0)
        return grad_x, grad_weight, grad_comb, grad_bias, None, None, None


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """Autocast's dtype on ``x``'s device where it is on, else None. (A device without
    autocast, such as ``meta`` in the cost model's dry runs, has none.)"""
    try:
        if torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
    except RuntimeError:
        pass
    return None


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a conv of ``x`` computes in: autocast's where it is on, else ``x``'s."""
    return autocast_dtype(x) or x.dtype


def numeric_padding(padding, kernel_size, dilation) -> tuple[int, int] | None:
    """``padding`` as two ints; ``"same"`` only when it pads both sides equally (None
    otherwise: PyTorch pads the extra row or column on one side, the kernel cannot)."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        return None if any(t % 2 for t in totals) else tuple(t // 2 for t in totals)
    return tuple(int(p) for p in padding)


def fused_forward(x: torch.Tensor, basis_weight: torch.Tensor, combination: torch.Tensor,
                  bias: torch.Tensor | None, stride, padding, dilation) -> torch.Tensor:
    """The fused kernel where it can run, else :func:`stacked_forward` (the same result)
    with a one-time warning naming what was missing.

    Under autocast every input is cast to the autocast dtype first, as ``F.conv2d`` would
    cast them (``tl.dot`` takes one dtype: inside a network ``x`` is already bf16 while the
    parameters are float32); the casts are ordinary autograd ops, so gradients reach the
    float32 params.
    """
    if x.device.type == "meta":  # a shape-only dry run (the cost model): nothing to warn of
        return stacked_forward(x, basis_weight, combination, bias, stride, padding, dilation)
    autocast = autocast_dtype(x)
    dtype = autocast or x.dtype
    pad = numeric_padding(padding, basis_weight.shape[2:], dilation)
    shape = (x.device.type, dtype, tuple(x.shape), tuple(basis_weight.shape),
             combination.shape[0], tuple(stride), pad, tuple(dilation))
    reason = ("symmetric padding (padding='same' with an even dilation*(kernel-1))"
              if pad is None else triton_conv.unsupported(x, dtype, basis_weight.shape[0])
              or _FAILED.get(shape))
    if reason is not None:
        _warn_once(f"combine='fused' needs {reason}; running the stacked PyTorch form "
                   f"instead (same result, no fused kernel)")
        return stacked_forward(x, basis_weight, combination, bias, stride, padding, dilation)
    if autocast is not None:
        x, basis_weight, combination = (t.to(dtype) for t in (x, basis_weight, combination))
        bias = bias.to(dtype) if bias is not None else None
    try:
        return FusedBasisConv.apply(x, basis_weight, combination, bias, tuple(stride), pad,
                                    tuple(dilation))
    except Exception as err:  # noqa: BLE001 - only Triton's own errors are caught
        if not type(err).__module__.startswith("triton"):
            raise
        # A kernel that does not compile for this shape on this GPU (e.g. out of shared
        # memory or registers for every tile): the shape runs the stacked form from now on,
        # said once, and the check that the kernel ran (tests/test_kernels.py) still fails.
        _FAILED[shape] = (f"a kernel that compiles for input {list(x.shape)} on this device "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:200]})")
        return fused_forward(x, basis_weight, combination, bias, stride, padding, dilation)


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=4)
