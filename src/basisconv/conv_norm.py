"""A basis layer, the batch norm after it and its ReLU as one computation, where a model
calls :func:`conv_norm_act` for the three: with ``fuse_norm=True`` on the layer the norm
folds into the combination, so the full-width activation is written once
(:mod:`basisconv.kernels.norm`; with ``combine="fused"`` the batch moments, the
combination, its ReLU and their backward are Triton kernels,
:mod:`basisconv.kernels.triton_moments` and :mod:`basisconv.kernels.triton_combine`; with
``combine="auto"`` each shape runs whichever of the fold's forms and the unfused modules
is fastest on the device, :mod:`basisconv.kernels.auto_norm`). Any other layer or norm runs
them one after another.

Apart from :mod:`basisconv.layers` because it is about modules, not a layer's storage:
which calls fold (the norm's type, the input's rank, the hooks that expect the modules one
after another) and how ``nn.BatchNorm2d`` applies itself (which statistics, the running
averages and their momentum), given to the fold's kernels. It reads a basis layer only
through the layer it is passed (``BasisConv2d.forward(x, norm=...)`` calls
:func:`fused_batch_norm`); :mod:`basisconv.layers` still exports :func:`conv_norm_act`,
the name the docs show.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import warn_caller
from .kernels import auto_conv_batch_norm, basis_conv_batch_norm


def conv_norm_act(conv: nn.Module, norm: nn.Module, x: torch.Tensor,
                  relu: bool = False) -> torch.Tensor:
    """``relu?(norm(conv(x)))``: one fused computation when ``conv`` is a basis layer with
    ``fuse_norm`` and ``norm`` a plain ``nn.BatchNorm2d`` (not a synchronized one), else
    the modules one after another. Models call this for every conv-norm(-ReLU) triple so
    that the choice is the layer's (see :mod:`basisconv.kernels.norm`). The fused call
    still goes through the conv module, so hooks registered ``with_kwargs=True`` (the cost
    model's) see it, with ``norm=`` and the normalized output. Hooks that expect the
    modules one after another (the norm's own, a plain forward hook on the conv, such as
    one moved from the dense conv by :func:`~basisconv.surgery.apply_basis`) are kept
    right: the modules then run one after another, said once. An unbatched input goes the
    same way (``nn.BatchNorm2d`` refuses it)."""
    if getattr(conv, "fuse_norm", False) and type(norm) is nn.BatchNorm2d and x.dim() == 4:
        if not _hooks_expect_the_modules(conv, norm):
            return conv(x, norm=norm, relu=relu)
        _say_once_fold_skipped(conv)
    out = norm(conv(x))
    return F.relu(out) if relu else out


def _hooks_expect_the_modules(conv: nn.Module, norm: nn.Module) -> bool:
    """Whether folding would change what hooks see: the norm's own hooks (forward or
    backward) would not run, a conv forward hook that does not take ``norm=`` (not
    registered with kwargs) would get the normalized output for the conv's, and a conv
    backward hook the gradient of that output."""
    # (each forward of a folded layer asks: no sets built for it)
    return bool(norm._forward_hooks or norm._forward_pre_hooks or norm._backward_hooks
                or norm._backward_pre_hooks or conv._backward_hooks or conv._backward_pre_hooks
                or any(key not in conv._forward_hooks_with_kwargs for key in conv._forward_hooks))


def _say_once_fold_skipped(conv: nn.Module) -> None:
    if not getattr(conv, "_said_fold_skipped", False):
        conv._said_fold_skipped = True
        warn_caller("a basis layer with fuse_norm=True runs unfused beside its norm: hooks "
                    "on the norm, or forward or backward hooks on the layer, expect the "
                    "modules one after another (register a conv forward hook "
                    "with_kwargs=True to keep the fold: it then sees norm= and the "
                    "normalized output)")


def fused_batch_norm(layer: nn.Module, norm: nn.BatchNorm2d, x: torch.Tensor,
                      relu: bool) -> torch.Tensor:
    """``norm`` applied the way ``nn.BatchNorm2d.forward`` applies it (which statistics,
    the running averages and their momentum), with the arithmetic folded into the layer's
    combination."""
    for name in ("running_mean", "weight"):  # refused as F.batch_norm refuses it unfused
        value = getattr(norm, name)  # (per-channel products broadcast a 1-channel norm)
        if value is not None and value.numel() != layer.out_channels:
            raise RuntimeError(f"{name} should contain {layer.out_channels} elements not "
                               f"{value.numel()}")
    batch_stats = norm.training or norm.running_mean is None
    momentum = norm.momentum
    # a norm whose tracking was switched off keeps its buffers unchanged (frozen statistics)
    tracking = norm.training and norm.track_running_stats
    if tracking and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        if momentum is None:  # a cumulative average, as nn.BatchNorm2d keeps it
            momentum = 1.0 / float(norm.num_batches_tracked)
    if momentum is None:  # (no batch counter to average by: batch norm's factor is 0 then)
        momentum = 0.0
    updating = batch_stats and tracking and norm.running_mean is not None
    forward = auto_conv_batch_norm if layer.combine == "auto" else functools.partial(
        basis_conv_batch_norm, fused=layer.combine == "fused")
    return forward(
        x, layer.basis_weight, layer.coefficient_matrix(), layer.output_index, layer.bias,
        layer.stride, layer.padding, layer.dilation, norm_weight=norm.weight, norm_bias=norm.bias,
        eps=norm.eps, running=None if batch_stats else (norm.running_mean, norm.running_var),
        relu=relu, update=(norm.running_mean, norm.running_var, momentum) if updating else None)
