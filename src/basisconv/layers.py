"""The basis convolution: a ``Conv2d`` whose ``C_out`` filters are ``m`` trained *basis*
filters plus ``C_out - m`` linear combinations of them (Alekseev et al. 2024, as public
summaries describe it; see ``../shared/paper.md``).

Storage and forward are kept apart, in the spirit of tensorly-torch:

* stored (this module): ``basis_weight`` ``[m, C_in, kh, kw]``, ``coefficients``
  ``[C_out - m, m]`` (or two low-rank factors), an optional ``bias`` ``[C_out]``, and
  ``output_index``, a buffer that says which stored channel each output channel is, so
  that a layer converted from a trained conv keeps that conv's output order and is a
  drop-in replacement;
* forward (:mod:`basisconv.kernels`): ``combine="stacked"`` (the default) runs the basis
  conv, then one 1x1 conv with the identity and the coefficients stacked, writing the
  output once, in order, with the bias fused, at ``m*m`` more multiply-adds per pixel than
  the minimal ``m*(C_out - m)`` (the cost model counts it); ``combine="split"``
  does exactly the minimal count at the price of two more copies of the output. Which is
  faster was measured with ``scripts/benchmark_layers.py``; see ``docs/basis-convolutions.md``,
  "Cost model". ``combine="fused"`` computes the stacked form's result in one Triton
  kernel on CUDA (the basis maps never go through memory, no 1x1 conv); without CUDA or
  triton it runs the stacked form, with a one-time warning (on an H200 it is slower than
  dense: ``docs/speed.md``). ``combine="auto"`` times the forms per shape on the device
  and keeps the fastest, the dense conv of the materialized weight among them
  (:mod:`basisconv.kernels.auto`).

A basis layer built with ``fuse_norm=True`` and followed by a batch norm (and a ReLU)
computes the three as one when a model calls :func:`conv_norm_act` for them: the norm
folds into the combination, so the full-width activation is written once. Which calls
fold, and how the norm's statistics are applied to the fold, is
:mod:`basisconv.conv_norm`'s, whose :func:`conv_norm_act` this module still exports.

Rebuilding the dense weight and running one dense conv would save parameters but not time;
that is what :meth:`BasisConv2d.to_conv` is for (export and checking), not the forward.

What :meth:`BasisConv2d.from_conv` reads from the trained conv (whether it converts, the
weight torch's hooks compute for it, whether it trains, a basis size by error bound) is
:mod:`basisconv.source_conv`'s, whose names this module still exports. What the layer's
arguments may be (the basis size, the geometry, the coefficient rank) is
:mod:`basisconv.layer_options`', asked apart from any layer too. The training penalties
over a model's basis layers (``frobenius_decay_correction``, ``coefficient_l1``) are
:mod:`basisconv.penalties`'.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from torch.nn.utils import skip_init

from .conv_norm import conv_norm_act, fused_batch_norm
from .counts import is_int, is_number
from .errors import ConfigError, warn_caller
from .fitting import basis_filters, best_rank_weight, fit_coefficients, relative_error
from .kernels import (COMBINE_MODES, auto_forward, channels_last, combination_rows, fused_forward,
                      materialized_weight, split_forward, stacked_forward, without_autocast)
from .layer_options import check_coefficient_rank, check_flag, check_geometry, resolve_num_basis
from .source_conv import (basis_size_for_error, check_convertible, check_finite_weight,
                          check_fit, check_not_inference_mode, check_plain_options,
                          parametrizations_in_eval, refresh_computed_weight, trains)


class NoWeightError(AttributeError):
    """A basis layer's ``weight`` read: it stores none. An ``AttributeError``, so that code
    that asks (``hasattr(m, "weight")``, ``getattr(m, "weight", None)``: init loops,
    torch's utilities) still takes the layer as weightless; its message says what to do."""


class BasisConv2d(nn.Module):
    """A 2-D convolution with ``num_basis`` trained filters and ``out_channels - num_basis``
    outputs that are trained linear combinations of the basis outputs.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias: as
            ``nn.Conv2d`` (``groups=1`` and zero padding only).
        num_basis: an int count, or a float in ``(0, 1]``, a fraction of ``out_channels``.
        combine: ``"stacked"`` (default, one 1x1 conv writes the output in order),
            ``"split"`` (the minimal multiply-add count), ``"fused"`` (one Triton
            kernel on CUDA, the stacked form elsewhere) or ``"auto"`` (per shape, the
            fastest form measured on the device); see the module docstring.
        coefficient_rank: store the coefficient matrix as a product of two factors of this
            rank (fewer parameters; the product is formed once per forward, a tiny matmul).
        fuse_norm: compute this layer, the batch norm after it and its ReLU as one where
            the model calls :func:`conv_norm_act` (the combination is then one GEMM with
            the norm folded in: with ``combine="fused"`` a Triton kernel with the ReLU in
            its epilogue, one for its backward and one for the batch moments; with
            ``"auto"`` per shape the fastest of that, the fold in standard ops and the
            modules unfused, measured on the device; ``"split"`` does not apply). Same
            function, other rounding.
        groups, padding_mode: ``nn.Conv2d``'s, taken so that the layer is built as a conv
            would be; only ``1`` and ``"zeros"`` (anything else is one error).

    Initialization from scratch (why): the basis filters are Kaiming-normal with
    ``fan_in = C_in*kh*kw`` and ReLU's gain (torch's own conv init also scales by fan-in,
    with a smaller gain), so a basis output has the variance a Kaiming-initialized dense
    output would have. The coefficients are ``N(0, 1/m)``: a
    combined output is a sum of ``m`` roughly uncorrelated basis outputs, so its variance
    matches a basis output's too, and no channel starts out dead or dominant. Low-rank
    factors are ``N(0, 1/r)`` and ``N(0, 1/m)``, which gives the same product variance. The
    bias starts at zero. So every entry of the effective weight (:meth:`to_conv`) has the
    basis filters' variance; ``reset_parameters(filter_std=s)`` sets it to ``s**2``, which
    :func:`~basisconv.surgery.apply_basis` does to start at the scale of the conv replaced.

    Channel order: the stored channels are ``[basis 0..m-1, combined 0..C_out-m-1]``;
    output channel ``j`` is stored channel ``output_index[j]``. A layer built from scratch
    has the identity order (basis first); :meth:`from_conv` keeps the source conv's order.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, num_basis: int | float,
                 stride=1, padding=0, dilation=1, bias: bool = True, *,
                 combine: str = "stacked", coefficient_rank: int | None = None,
                 fuse_norm: bool = False, groups: int = 1, padding_mode: str = "zeros",
                 device=None, dtype=None):
        super().__init__()
        # (nn.Conv2d's keywords, so a layer built as one would a conv says what it lacks)
        check_plain_options(groups, padding_mode, "BasisConv2d", "use an nn.Conv2d for it")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if combine not in COMBINE_MODES:
            raise ConfigError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
        m = resolve_num_basis(num_basis, out_channels)
        self.in_channels, self.out_channels, self.num_basis = int(in_channels), int(out_channels), m
        self.kernel_size, self.stride, self.padding, self.dilation = check_geometry(
            kernel_size, stride, padding, dilation)
        self.combine = combine
        self.fuse_norm = check_flag("fuse_norm", fuse_norm)
        bias = check_flag("bias", bias)
        if self.fuse_norm and combine == "split":
            warn_caller("fuse_norm=True: where a batch norm follows the layer (conv_norm_act) "
                        "the combination runs as one 1x1 conv with the norm folded in (or "
                        "as Triton kernels with combine='fused'; the faster of these and "
                        "the unfused modules with combine='auto'), so combine='split' "
                        "applies only to layers without one")
        n_combined = out_channels - m
        coefficient_rank = check_coefficient_rank(coefficient_rank, out_channels, m)
        self.coefficient_rank = coefficient_rank
        factory = {"device": device, "dtype": dtype}
        self.basis_weight = nn.Parameter(torch.empty(m, in_channels, *self.kernel_size, **factory))
        if coefficient_rank is None:
            self.coefficients = nn.Parameter(torch.empty(n_combined, m, **factory))
        else:
            self.coefficients_left = nn.Parameter(torch.empty(n_combined, coefficient_rank,
                                                              **factory))
            self.coefficients_right = nn.Parameter(torch.empty(coefficient_rank, m, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.register_buffer("output_index", torch.arange(out_channels, device=device))
        # Top-k pruning mask (see prune_coefficients); None means dense coefficients.
        self.register_buffer("coefficient_mask", None)
        #: Relative Frobenius error of the dense weight, set by from_conv (None otherwise).
        self.reconstruction_error: float | None = None
        self.reset_parameters()

    # ----------------------------------------------------------------- construction
    def reset_parameters(self, filter_std: float | None = None) -> None:
        """From-scratch init; the class docstring says why these scales. ``filter_std``
        is the basis filters' std (default: Kaiming fan-in, ``sqrt(2 / (C_in*kh*kw))``);
        the effective weight's entries then have that std too, as the coefficients keep
        it. The channel order is reset to the identity too: after ``to_empty()`` (a model
        built on the ``meta`` device, then given memory) the buffer holds whatever the
        memory held."""
        if filter_std is not None:  # (True was taken as a std of 1; "1" failed in math)
            number = is_number(filter_std) or isinstance(filter_std, torch.Tensor)
            if not (number and math.isfinite(filter_std) and filter_std >= 0):
                raise ConfigError(f"filter_std must be a finite number >= 0, got {filter_std!r}")
        if self.basis_weight.is_meta:  # shaped only (the config checks): no values to draw
            # or copy, and torch's meta normal_ loaded torch._dynamo, a second of every start
            return
        with torch.no_grad():
            self.output_index.copy_(torch.arange(self.out_channels))
        if filter_std is None:
            nn.init.kaiming_normal_(self.basis_weight, mode="fan_in", nonlinearity="relu")
        else:
            nn.init.normal_(self.basis_weight, 0.0, filter_std)
        m = self.num_basis
        if self.coefficient_rank is None:
            nn.init.normal_(self.coefficients, 0.0, 1.0 / math.sqrt(m))
        else:
            nn.init.normal_(self.coefficients_left, 0.0, 1.0 / math.sqrt(self.coefficient_rank))
            nn.init.normal_(self.coefficients_right, 0.0, 1.0 / math.sqrt(m))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, num_basis: int | float | None = None, *,
                  max_error: float | None = None, combine: str = "stacked",
                  coefficient_rank: int | None = None, fuse_norm: bool = False,
                  fit: str = "pivots") -> "BasisConv2d":
        """Convert a (trained) ``nn.Conv2d`` into a basis layer with the same outputs.

        ``fit="pivots"`` (default): the basis filters are the conv's own filters, picked by
        :func:`~basisconv.fitting.select_basis`, and the coefficients the least-squares fit
        of the other filters: the smallest weight error *for those basis filters*, not the
        smallest a basis layer of this size can have (typically 1.1-1.3x the Eckart-Young bound).
        ``fit="svd"``: the layer computes the best rank-``m`` approximation of the weight
        (truncated SVD, the smallest Frobenius error any basis layer of size ``m`` has):
        its basis filters are that approximation's rows at the pivots, so they are the
        conv's own filters projected onto the top ``m`` right singular vectors; with
        ``coefficient_rank`` no layer is that weight, and the closer of this fit and the
        default's is kept (the SVD's basis alone was the farther for about a third of the
        convs a review tried). (The paper gives no rule that we know of.) At
        ``num_basis == out_channels`` either reproduces the conv exactly. Give either
        ``num_basis`` or ``max_error`` (the smallest basis whose relative weight error is
        at most that, an energy criterion like BasisConv's; with ``coefficient_rank``, the
        error of the rank-limited coefficients).
        The achieved error is stored in ``reconstruction_error``; the fit is judged in
        float64, so in a 16-bit layer, whose coefficients are rounded when stored, it may
        exceed ``max_error`` by about that dtype's rounding (bf16: 2**-8 relative). The new
        parameters train as the conv's did (``requires_grad`` of its weight and bias).
        """
        check_convertible(conv)
        check_fit(fit)
        check_not_inference_mode("from_conv")
        # (a parametrized weight as in eval: it is read several times, and a spectral
        # norm's changed at each read in a training model; parametrizations_in_eval)
        with parametrizations_in_eval([conv]):
            return cls._fitted(conv, num_basis, max_error, combine, coefficient_rank,
                               fuse_norm, fit)

    @classmethod
    def _fitted(cls, conv: nn.Conv2d, num_basis, max_error, combine: str,
                coefficient_rank: int | None, fuse_norm: bool, fit: str) -> "BasisConv2d":
        """:meth:`from_conv`'s layer, its arguments checked and the weight read as in eval."""
        refresh_computed_weight(conv)
        check_finite_weight(conv)
        c_out = conv.out_channels
        if (num_basis is None) == (max_error is None):
            raise ConfigError("from_conv needs exactly one of num_basis (a count or fraction) "
                             "and max_error (a relative weight error in [0, 1))")
        if max_error is not None:
            m = basis_size_for_error(conv, max_error, coefficient_rank, fit)
        else:
            m = resolve_num_basis(num_basis, c_out)
        weight = conv.weight.detach()
        flat = weight.reshape(c_out, -1)
        # the rows the basis is taken from: the conv's own, or its best rank-m weight's
        target = flat if fit == "pivots" else best_rank_weight(flat, m)
        picked = basis_filters(target, m)
        unpicked = torch.ones(c_out, dtype=torch.bool, device=picked.device)
        unpicked[picked] = False
        rest = torch.nonzero(unpicked).flatten()  # the other filters, in conv order
        # (unset: every value is set below; the from-scratch init drew from the global
        # generator only to be overwritten, so converting a model changed every later draw
        # of the user's seeded code)
        layer = cls.unset_like(conv, m, combine=combine, coefficient_rank=coefficient_rank,
                               fuse_norm=fuse_norm)
        basis = target[picked]
        factors = fit_coefficients(basis, flat[rest], coefficient_rank)
        stored = torch.cat([picked, rest])  # stored channel s is conv channel stored[s]
        with torch.no_grad():
            layer.basis_weight.copy_(basis.reshape(m, *weight.shape[1:]))
            layer.set_coefficients(*factors)
            layer.output_index.copy_(torch.argsort(stored))
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.detach())
        layer.train_as(conv)
        layer.reconstruction_error = relative_error(layer.dense_weight(), weight)
        if fit == "svd" and coefficient_rank is not None:
            # rank-limited coefficients make no layer the best rank-m weight, and the SVD's
            # basis is then not always the closer start: keep whichever fit is closer
            default = cls.from_conv(conv, m, combine=combine, coefficient_rank=coefficient_rank,
                                    fuse_norm=fuse_norm)
            if default.reconstruction_error < layer.reconstruction_error:
                return default
        return layer

    @classmethod
    def shaped_like(cls, conv: nn.Conv2d, num_basis: int, *, device=None,
                    **options) -> "BasisConv2d":
        """A from-scratch layer with ``conv``'s geometry (channels, kernel, stride,
        padding, dilation, bias), dtype and memory format and ``num_basis`` basis filters,
        on ``device`` (default: the conv's); ``options`` as for the constructor. Why the
        memory format: NCHW basis filters in a channels_last model were copied to its
        layout each step (and their gradient back), and gave an NCHW input NCHW outputs
        where the conv's channels_last weight gave channels_last ones."""
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, num_basis,
                    stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                    bias=conv.bias is not None, dtype=conv.weight.dtype,
                    device=conv.weight.device if device is None else device, **options)
        if channels_last(conv.weight):  # (the basis filters: the other tensors are 1-D, 2-D)
            layer.to(memory_format=torch.channels_last)
        return layer

    @classmethod
    def unset_like(cls, conv: nn.Conv2d, num_basis: int, **options) -> "BasisConv2d":
        """:meth:`shaped_like`, on the conv's device, with its values unset and nothing
        drawn from a random generator (built on the ``meta`` device, then given memory),
        for a caller that sets every value next."""
        layer = cls.shaped_like(conv, num_basis, device="meta", **options)
        if conv.weight.is_meta:  # (already where it belongs: a dry conversion's layer, whose
            return layer  # to_empty, meta to meta, was a fifth of a config check's conversion)
        return layer.to_empty(device=conv.weight.device)

    def train_as(self, conv: nn.Conv2d) -> None:
        """The parameters train as ``conv``'s did (``requires_grad`` of its weight and
        bias): a frozen conv (a fine-tuning recipe's fixed backbone) stays frozen in basis
        form, fitted or fresh, and the cost of a step counts what it computes."""
        for p in [self.basis_weight, *self.coefficient_parameters()]:
            p.requires_grad_(trains(conv, "weight"))
        if conv.bias is not None:
            self.bias.requires_grad_(trains(conv, "bias"))

    def set_coefficients(self, *factors: torch.Tensor) -> None:
        """Copy a fitted matrix (or its two low-rank factors) into the parameters."""
        with torch.no_grad():
            if self.coefficient_rank is None:
                self.coefficients.copy_(factors[0])
            else:
                self.coefficients_left.copy_(factors[0])
                self.coefficients_right.copy_(factors[1])

    # ----------------------------------------------------------------- views of the weights
    def coefficient_names(self) -> list[str]:
        """The names of the trainable tensors that make up the coefficient matrix."""
        if self.coefficient_rank is None:
            return ["coefficients"]
        return ["coefficients_left", "coefficients_right"]

    def coefficient_parameters(self) -> list[nn.Parameter]:
        """The trainable tensors that make up the coefficient matrix."""
        return [getattr(self, name) for name in self.coefficient_names()]

    def coefficient_matrix(self) -> torch.Tensor:
        """The effective ``[C_out - m, m]`` coefficient matrix (low-rank product, pruning
        mask applied)."""
        if self.coefficient_rank is None:
            matrix = self.coefficients
        else:
            matrix = self.coefficients_left @ self.coefficients_right
        if self.coefficient_mask is not None:
            matrix = matrix * self.coefficient_mask
        return matrix

    def combination_matrix(self) -> torch.Tensor:
        """The ``[C_out, m]`` matrix mapping basis maps to outputs, rows in output order."""
        return combination_rows(self.coefficient_matrix(), self.output_index)

    @property
    def basis_channels(self) -> torch.Tensor:
        """Output channels that are basis outputs, in basis order."""
        return torch.argsort(self.output_index)[: self.num_basis]

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense ``[C_out, C_in, kh, kw]`` weight, in the parameters' dtype
        even inside an autocast region (else under bf16 autocast a full-rank conversion's
        error and its export are rounded to bf16, 1.8e-3 instead of 0)."""
        with without_autocast(self.basis_weight.device.type):
            return materialized_weight(self.basis_weight, self.combination_matrix())

    def to_conv(self) -> nn.Conv2d:
        """The equivalent dense ``nn.Conv2d`` (for export and checking); the global random
        stream is left as it was."""
        # (without torch's init, whose draws from the global generator, overwritten at once,
        # changed every later draw of a seeded run that exports mid-training)
        conv = skip_init(nn.Conv2d, self.in_channels, self.out_channels, self.kernel_size,
                         self.stride, self.padding, self.dilation, bias=self.bias is not None,
                         device=self.basis_weight.device, dtype=self.basis_weight.dtype)
        if channels_last(self.basis_weight):  # (in the layer's layout, as shaped_like keeps
            conv.to(memory_format=torch.channels_last)  # the conv's)
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    # ----------------------------------------------------------------- coefficient shrinking
    def prune_coefficients(self, keep_per_row: int) -> None:
        """Keep the ``keep_per_row`` largest-magnitude coefficients of each combined output
        and zero the rest through a fixed mask (one of our options for the paper's "methods to
        shrink the coefficient matrix", whose details are not known to us); pair it with
        :func:`~basisconv.penalties.coefficient_l1` during training to push small ones to
        zero."""
        if self.coefficient_rank is not None:
            raise ConfigError("prune_coefficients needs a full coefficient matrix; this layer "
                             f"stores it at rank {self.coefficient_rank}")
        m = self.num_basis
        if not is_int(keep_per_row) or not 1 <= keep_per_row <= m:
            raise ConfigError(f"keep_per_row must be an int in 1..{m} (num_basis), got "
                              f"{keep_per_row!r}")
        with torch.no_grad():
            magnitude = self.coefficient_matrix().abs()
            top = magnitude.topk(int(keep_per_row), dim=1).indices
            mask = torch.zeros_like(magnitude).scatter_(1, top, 1.0)
        self.coefficient_mask = mask

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A pruned layer's mask is a buffer that a fresh layer does not have yet: create it
        # so that a pruned checkpoint loads into an unpruned model of the same shape.
        key = prefix + "coefficient_mask"
        if key in state_dict and self.coefficient_mask is None:
            self.coefficient_mask = torch.empty_like(state_dict[key], dtype=self.basis_weight.dtype,
                                                     device=self.basis_weight.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        # a dense model's checkpoint (saved before converting): with strict=False it left
        # the layer as it was without a word, and strict's error named only the keys. (Not
        # an error of its own: torch calls this with strict=True either way.) One message
        # for every layer, so that the warning filter shows it once a load.
        if prefix + "weight" in state_dict and prefix + "basis_weight" not in state_dict:
            warn_caller("load_state_dict: a dense conv's weight does not load into a "
                        "BasisConv2d, which keeps its own; load the checkpoint into the dense "
                        "model, then convert it (apply_basis or from_conv fits the basis to "
                        "the loaded weights)")

    def __getattr__(self, name: str):
        # (nn.Module's lookup of parameters, buffers and submodules; its failure for a
        # missing weight is told what to read instead. Not a `weight` property: one that
        # raises AttributeError falls back to this lookup, whose bare message wins. Called
        # directly, not by super(): each forward reads its parameters through it)
        try:
            return nn.Module.__getattr__(self, name)
        except AttributeError as err:
            if name != "weight":
                raise
            raise NoWeightError(
                f"{err}: it is a basis convolution (basis_weight and coefficients), converted "
                f"from a conv; its equivalent dense weight is its .dense_weight(), computed at "
                f"each call (writing to it changes nothing); a forward or init that needs "
                f"conv.weight should leave this conv out of apply_basis's layers",
                name=name, obj=self) from None

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every module before compiling; its own error was
        # "Unknown type name 'nn.BatchNorm2d'" (and, scripted again, "Can't redefine method")
        raise ConfigError("torch.jit.script cannot compile a BasisConv2d; use torch.export "
                          "or torch.jit.trace, or script basisconv.dense_form.to_dense(model), "
                          "the model with plain convs")

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, norm: nn.BatchNorm2d | None = None,
                relu: bool = False) -> torch.Tensor:
        """The layer's output; with ``norm`` (what :func:`conv_norm_act` passes for a
        ``fuse_norm`` layer) ``relu?(norm(output))`` in one computation."""
        if x.dim() == 3:
            # an unbatched [C, H, W] input, as nn.Conv2d takes it: the split and fused forms
            # index channels as dim 1, so each form gets a batch of one
            return self.forward(x[None], norm, relu)[0]
        if norm is not None:
            return fused_batch_norm(self, norm, x, relu)
        conv = (self.stride, self.padding, self.dilation)
        if self.combine == "stacked":
            return stacked_forward(x, self.basis_weight, self.combination_matrix(), self.bias,
                                   *conv)
        if self.combine in ("fused", "auto"):
            forward = fused_forward if self.combine == "fused" else auto_forward
            return forward(x, self.basis_weight, self.combination_matrix(), self.bias, *conv)
        return split_forward(x, self.basis_weight, self.coefficient_matrix(), self.output_index,
                             self.bias, *conv)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"num_basis={self.num_basis}, stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        s += f", combine={self.combine!r}"
        if self.fuse_norm:
            s += ", fuse_norm=True"
        if self.coefficient_rank is not None:
            s += f", coefficient_rank={self.coefficient_rank}"
        if self.coefficient_mask is not None:  # (a mask of no rows: a layer of basis only)
            mask = self.coefficient_mask
            s += f", keep_per_row={int(mask[0].sum()) if mask.numel() else 0}"
        return s


def basis_layers(model: nn.Module) -> dict[str, BasisConv2d]:
    """The model's basis layers by module name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BasisConv2d)}


def layer_shape(layer: nn.Module) -> tuple[int, int, tuple[int, int]]:
    """``(in_channels, out_channels, kernel_size)`` of a conv or basis layer."""
    return layer.in_channels, layer.out_channels, tuple(layer.kernel_size)


__all__: Sequence[str] = (
    "BasisConv2d", "COMBINE_MODES", "NoWeightError", "basis_layers", "check_convertible",
    "conv_norm_act",
)
