"""The basis convolution's forward forms in plain PyTorch ops (autograd gives the
backward); ``scripts/benchmark_layers.py`` measures which is faster where.

* ``stacked_forward``: the basis conv to ``m`` maps, then one 1x1 conv with the
  ``[C_out, m]`` matrix that stacks the identity (for the basis outputs) and the
  coefficients, rows already in output order. It writes the output once, in order, with
  the bias fused, at ``m*m`` more multiply-adds per pixel than the minimal count.
* ``split_forward``: exactly the minimal count: a 1x1 conv to the ``C_out - m`` combined
  maps only, then concatenate and reorder (two more copies of the output).
* ``dense_forward``: the materialized weight and one dense conv (no compute saved; for
  the shapes where the dense conv is faster than any basis form).

And the folded norm's pieces (:mod:`.norm`), which :mod:`.triton_moments`',
:mod:`.triton_fold`'s and :mod:`.triton_combine`'s kernels replace where they run: the
basis maps' batch moments (``basis_moments``), the fold of batch norm into the
combination from them and its backward (``norm_fold``, ``norm_fold_backward``), and the
combination with its ReLU, forward and backward (``relu_combine``,
``relu_combine_backward``), and the moments' part of the maps' gradient
(``moments_backward``).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F


def stacked_forward(x: torch.Tensor, basis_weight: torch.Tensor, combination: torch.Tensor,
                    bias: torch.Tensor | None, stride, padding, dilation) -> torch.Tensor:
    """``combination`` is ``[C_out, m]``, rows in output order."""
    basis_maps = F.conv2d(x, basis_weight, None, stride, padding, dilation)
    return F.conv2d(basis_maps, combination[:, :, None, None], bias)


def split_forward(x: torch.Tensor, basis_weight: torch.Tensor, coefficients: torch.Tensor,
                  output_index: torch.Tensor, bias: torch.Tensor | None, stride, padding,
                  dilation) -> torch.Tensor:
    """``coefficients`` is ``[C_out - m, m]``; output channel ``j`` is stored channel
    ``output_index[j]`` of ``[basis maps, combined maps]``."""
    if not coefficients.shape[0] and coefficients.requires_grad and torch.is_grad_enabled():
        # no combined outputs (num_basis == out_channels): the empty coefficients still go
        # through the graph, as in every other form, so that they get a gradient (of no
        # entries; a low-rank factor's zeros). Left out, it was None, and DDP refused the
        # next step ("Expected to have finished reduction in the prior iteration"). Tied to
        # the small basis weight, not the maps: an empty sum is exactly 0.
        basis_weight = basis_weight + coefficients.sum().to(basis_weight.dtype)
    if torch.compiler.is_compiling() and not channels_last(x):
        # torch 2.13's Inductor miscompiles the reorder below in NCHW: the first compiled
        # backward of ResNet-8 or -20 with split layers aborted the process (heap
        # corruption, found in review); compiled, the stacked form's one 1x1 conv runs
        # instead (the same outputs, m*m more multiply-adds a pixel)
        return stacked_forward(x, basis_weight, combination_rows(coefficients, output_index),
                               bias, stride, padding, dilation)
    basis_maps = F.conv2d(x, basis_weight, None, stride, padding, dilation)
    if coefficients.shape[0]:
        combined = F.conv2d(basis_maps, coefficients[:, :, None, None])
        out = _select_channels(torch.cat([basis_maps, combined], 1), output_index)
    else:
        out = _select_channels(basis_maps, output_index)
    if bias is not None:  # in the output's dtype, as F.conv2d adds it under autocast
        out = out + bias.to(out.dtype)[:, None, None]
    return out


def _select_channels(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``maps[:, index]`` in the memory format of ``maps``: ``index_select`` writes NCHW,
    so a channels_last model would get NCHW activations after every split layer (each
    next op then converts or runs in the slower layout). The layout is read as the conv
    reads it (:func:`channels_last`): maps of one pixel from a channels_last input (a
    1x1 conv on pooled features) are contiguous in both layouts, and were given NCHW
    strides where the dense conv gives channels_last ones (found in review)."""
    if channels_last(maps):
        return maps.permute(0, 2, 3, 1).index_select(3, index).permute(0, 3, 1, 2)
    return maps.index_select(1, index)


def dense_forward(x: torch.Tensor, basis_weight: torch.Tensor, combination: torch.Tensor,
                  bias: torch.Tensor | None, stride, padding, dilation) -> torch.Tensor:
    """The layer's weight materialized (``combination @ basis_weight``, a tiny matmul per
    call) and one dense conv: the basis layer's parameters at the dense conv's speed, for
    the shapes where no basis form beats the dense conv on the device (``combine="auto"``
    picks it there). The weight is laid out as the basis filters are: where the weight
    decides the conv's layout (an NCHW or one-channel input), an NCHW one gave NCHW outputs
    in a channels_last model, where the conv replaced gives channels_last ones."""
    weight = materialized_weight(basis_weight, combination)
    if channels_last(basis_weight):
        # (.to, not .contiguous: with one input channel that keeps NCHW strides)
        weight = weight.to(memory_format=torch.channels_last)
    return F.conv2d(x, weight, bias, stride, padding, dilation)


def materialized_weight(basis_weight: torch.Tensor, combination: torch.Tensor) -> torch.Tensor:
    """The dense ``[C_out, C_in, kh, kw]`` weight a basis conv computes with:
    ``combination`` (``[C_out, m]``) times the ``m`` flattened basis filters."""
    flat = combination @ basis_weight.reshape(basis_weight.shape[0], -1)
    return flat.reshape(combination.shape[0], *basis_weight.shape[1:])


def combination_rows(coefficients: torch.Tensor, output_index: torch.Tensor) -> torch.Tensor:
    """The ``[C_out, m]`` matrix mapping basis maps to outputs, rows in output order:
    output channel ``j`` is row ``output_index[j]`` of ``[identity (m x m); coefficients
    (C_out - m x m)]``."""
    basis_rows = torch.eye(coefficients.shape[1], dtype=coefficients.dtype,
                           device=coefficients.device)
    # autocast's cat refuses 16-bit inputs of the other 16-bit dtype (bf16 parameters under
    # fp16 autocast), where the dense conv runs; the ops that use the matrix cast it
    with without_autocast(basis_rows.device.type):
        stacked = torch.cat([basis_rows, coefficients])
    return stacked.index_select(0, output_index)


def coefficients_grad(grad_rows: torch.Tensor, output_index: torch.Tensor,
                      m: int) -> torch.Tensor:
    """The coefficients' gradient from that of :func:`combination_rows`'s result (the
    index is a permutation: coefficient row ``i`` is output channel ``j`` with
    ``output_index[j] = m + i``)."""
    return grad_rows.index_select(0, torch.argsort(output_index)[m:])


def without_autocast(device_type: str):
    """Autocast off (a no-op on devices without autocast, e.g. the cost model's meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


def _autocast_on(device_type: str) -> bool:
    return (torch.amp.is_autocast_available(device_type)
            and torch.is_autocast_enabled(device_type))


def relu_combine(maps: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor,
                 relu: bool) -> torch.Tensor:
    """``relu?(matrix @ maps + bias)`` per pixel as a 1x1 conv (a GEMM over the channels
    that keeps the layout of ``maps``; on CPU oneDNN's 1x1 conv ran this 2-4x faster than
    ``addmm`` on the NHWC rows), the ReLU in place on the conv's own result."""
    if not _autocast_on(maps.device.type):
        matrix, bias = matrix.to(maps.dtype), bias.to(maps.dtype)
    out = F.conv2d(maps, matrix[:, :, None, None], bias)
    return out.relu_() if relu else out


def relu_combine_backward(grad_out: torch.Tensor, out: torch.Tensor | None,
                          maps: torch.Tensor, matrix: torch.Tensor, relu: bool,
                          maps_grad: bool = True
                          ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """:func:`relu_combine`'s gradients for the maps (None unless ``maps_grad``), the
    matrix and the bias, given the output gradient and (for the ReLU's mask) the output."""
    g = torch.ops.aten.threshold_backward(grad_out, out, 0) if relu else grad_out
    grad_maps, grad_matrix, _ = torch.ops.aten.convolution_backward(
        g, maps, matrix.to(maps.dtype)[:, :, None, None], None, [1, 1], [0, 0], [1, 1], False,
        [0, 0], 1, [maps_grad, True, False])
    # the bias gradient as a plain reduction: convolution_backward's own took 5.5 ms of a
    # 64-channel 32x32 batch of 128 in channels_last on CPU, the sum 0.6 ms
    return grad_maps, grad_matrix[:, :, 0, 0], g.sum((0, 2, 3))


def moments_backward(grad_maps: torch.Tensor, maps: torch.Tensor, sym: torch.Tensor,
                     shift: torch.Tensor) -> torch.Tensor:
    """The maps' gradient ``grad_maps`` with the part that reaches them through their batch
    moments added: ``sym`` ``[m, m]`` and ``shift`` ``[m]`` (:func:`norm_fold_backward`'s)
    act on every pixel's row of maps as an ``m -> m`` 1x1 conv, in the maps' dtype."""
    return grad_maps + F.conv2d(maps, sym.to(maps.dtype)[:, :, None, None],
                                shift.to(maps.dtype))


def basis_moments(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[m]`` and biased covariance ``[m, m]`` of the basis maps over batch and
    pixels, in float32 at least and without autocast, from centred maps (statistics in
    bf16, or raw sums that cancel, would lose the precision batch norm keeps)."""
    with without_autocast(maps.device.type):
        rows = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])  # a view in NHWC
        if rows.dtype not in (torch.float32, torch.float64):
            rows = rows.float()
        mean = rows.mean(0)
        centred = rows - mean
        return mean, centred.T @ centred / rows.shape[0]


def normalizer(mean: torch.Tensor, var: torch.Tensor, conv_bias: torch.Tensor | None,
               norm_weight: torch.Tensor | None, eps: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch norm's per-channel ``rstd = 1/sqrt(var + eps)``, ``scale = gamma rstd`` and the
    ``offset = c - mean`` it scales (the conv bias enters as batch norm sees it: with batch
    statistics ``mean`` includes it, so it cancels, its gradient exactly zero as in the
    unfused layers)."""
    rstd = torch.rsqrt(var + eps)
    scale = rstd if norm_weight is None else rstd * norm_weight
    return rstd, scale, (-mean if conv_bias is None else conv_bias - mean)


def fold(a: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
         conv_bias: torch.Tensor | None, norm_weight: torch.Tensor | None,
         norm_bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The combination ``a`` and its bias with batch norm folded in, given the mean and
    variance of the combined outputs: ``BN(a b + c) = (s a) b + (beta + s (c - mean))``."""
    _, scale, offset = normalizer(mean, var, conv_bias, norm_weight, eps)
    return scale[:, None] * a, (scale * offset if norm_bias is None else norm_bias + scale * offset)


def output_moments(a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor,
                   conv_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of the combined outputs ``a b + c`` from the basis maps'
    moments: ``a mean_b + c`` and ``diag(a cov_b a^T)``."""
    mean = a @ mean_b if conv_bias is None else a @ mean_b + conv_bias
    return mean, ((a @ cov_b) * a).sum(1).clamp_min(0)


def norm_fold(maps: torch.Tensor, a: torch.Tensor, conv_bias: torch.Tensor | None,
              norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None, eps: float
              ) -> tuple[torch.Tensor, ...]:
    """Batch norm with the batch's statistics folded into the combination ``a``
    (``[C_out, m]``): the basis maps' mean and covariance, the folded matrix and bias,
    and the combined outputs' mean and biased variance (for the running averages), in
    ``a``'s dtype."""
    mean_b, cov_b = (t.to(a.dtype) for t in basis_moments(maps))
    mean, var = output_moments(a, mean_b, cov_b, conv_bias)
    return (mean_b, cov_b, *fold(a, mean, var, conv_bias, norm_weight, norm_bias, eps), mean,
            var)


def norm_fold_backward(grad_folded: torch.Tensor, grad_folded_bias: torch.Tensor,
                       a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor,
                       mean: torch.Tensor, var: torch.Tensor, conv_bias: torch.Tensor | None,
                       norm_weight: torch.Tensor | None, eps: float, count: int,
                       moments_grad: bool) -> tuple:
    """The gradients of :func:`norm_fold` by hand (autograd inside a backward would keep
    ``torch.compile`` from tracing it), from those of the folded matrix and bias: for
    ``a``, the conv bias (zero: it cancels) and the norm's weight (None where they are),
    and (``moments_grad``) what the moments pass on to the ``count`` rows of the maps,
    ``d rows += (rows - mean_b) S + d mean_b / count`` as an ``m -> m`` 1x1 conv's matrix
    ``S = (G + G^T) / count`` (``G`` the gradient of ``cov_b``) and bias
    ``d mean_b / count - S mean_b``. The norm's bias gets ``grad_folded_bias`` itself."""
    rstd, scale, offset = normalizer(mean, var, conv_bias, norm_weight, eps)
    grad_scale = (grad_folded * a).sum(1) + grad_folded_bias * offset
    grad_mean = -grad_folded_bias * scale
    grad_rstd = grad_scale if norm_weight is None else grad_scale * norm_weight
    grad_var = -0.5 * grad_rstd * rstd ** 3
    grad_a = (scale[:, None] * grad_folded + grad_mean[:, None] * mean_b[None, :]
              + 2 * grad_var[:, None] * (a @ cov_b))
    grad_conv_bias = None if conv_bias is None else grad_folded_bias * scale + grad_mean
    grad_weight = None if norm_weight is None else grad_scale * rstd
    if not moments_grad:
        return grad_a, grad_conv_bias, grad_weight, None, None
    grad_cov = a.T @ (grad_var[:, None] * a)
    sym = (grad_cov + grad_cov.T) / count
    return grad_a, grad_conv_bias, grad_weight, sym, (a.T @ grad_mean) / count - sym @ mean_b


def update_running(running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor,
                   var: torch.Tensor, count: int, momentum: float) -> None:
    """Batch norm's running averages, in place, from a batch's mean and biased variance
    over ``count`` values: the variance enters unbiased, as ``nn.BatchNorm2d`` keeps it."""
    # (batch norm's own formula; lerp_ took a traced momentum worse, and so did add_'s
    # alpha: torch.compile specialized on its value, so a cumulative average's momentum,
    # new every step, compiled the layer again every step; a product it keeps symbolic)
    with torch.no_grad():
        unbiased = var * (count / max(count - 1, 1))
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype) * momentum)
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype) * momentum)


def coefficient_fold(maps: torch.Tensor, coefficients: torch.Tensor,
                     output_index: torch.Tensor, conv_bias: torch.Tensor | None,
                     norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None,
                     eps: float) -> tuple[torch.Tensor, ...]:
    """:func:`norm_fold` of the layer's combination, given as its coefficients and output
    order (:func:`combination_rows`), as :mod:`.triton_fold`'s kernels take it."""
    return norm_fold(maps, combination_rows(coefficients, output_index), conv_bias,
                     norm_weight, norm_bias, eps)


def coefficient_fold_backward(grad_folded, grad_folded_bias, coefficients, output_index,
                              mean_b, cov_b, mean, var, conv_bias, norm_weight, eps: float,
                              count: int, moments_grad: bool) -> tuple:
    """:func:`norm_fold_backward` for :func:`coefficient_fold`: the coefficients' gradient
    for the combination's (None where that gives None)."""
    a = combination_rows(coefficients, output_index)
    grad_a, *rest = norm_fold_backward(grad_folded, grad_folded_bias, a, mean_b, cov_b, mean,
                                       var, conv_bias, norm_weight, eps, count, moments_grad)
    return coefficients_grad(grad_a, output_index, a.shape[1]), *rest


def channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` is laid out channels_last as PyTorch's conv reads layouts: with either
    such an input or weight a conv writes channels_last, else a contiguous output. The
    fused op always writes channels_last and the split form's channel selection NCHW, so
    each gives an NCHW model its layout back by this, as from the conv the layer replaced
    (its ``out.view(B, -1)`` works). A tensor contiguous in both layouts
    (one channel, or one pixel) is told apart by its strides, as the conv tells it apart
    (``suggest_memory_format``): a one-channel input or basis map made channels_last
    (strides ``(HW, 1, W, 1)``) is channels_last, its NCHW twin (``(HW, HW, W, 1)``) is
    not. (Found in review: both were taken for NCHW, so a channels_last model
    got an NCHW activation after a one-channel input or a one-map folded norm.) A view
    contiguous in neither layout is judged by its strides too, as the conv judges it: a
    channel slice or a crop of a channels_last tensor (``x[:, :c]``) is channels_last
    (found in review: it was taken for NCHW, so the fused layer's output, and the folded
    combination op's on such maps, were NCHW where the conv's were channels_last)."""
    return t.dim() == 4 and _strides_like_channels_last(t)


def _strides_like_channels_last(t: torch.Tensor) -> bool:
    """c10's ``is_channels_last_strides_2d`` for a 4-d tensor: the strides grow in the
    order C, W, H, N (a dimension of size 1 may share its neighbour's), with NCHW taken
    where that order is ambiguous (an ``N x 1 x 1 x 1`` tensor) or the channels repeat (a
    channel stride of 0)."""
    if t.stride(1) == 0:
        return False
    least = 0
    for d in (1, 3, 2, 0):
        if t.shape[d] == 0 or t.stride(d) < least:
            return False
        if d == 0 and least == t.stride(1):
            return False
        least = t.stride(d) * max(t.shape[d], 1)
    return True
