"""``combine="auto"`` for a basis layer with its batch norm folded in (``fuse_norm=True``):
each conv-norm(-ReLU) call runs the fastest of its forms on the device, measured there on
first use of a shape, as :mod:`.auto` chooses a plain basis conv's form.

Why: folding the norm into the combination (:mod:`.norm`) saves batch norm's full-width
passes but adds the basis maps' ``m x m`` moments and the fold; which weighs more depends
on the shape, the device and the precision. On the 2-core CPU the folded triple took
0.83-1.08x the unfused one's training time per ResNet-18 layer at basis 1/4 and 1.00-1.12x
at 1/2 (``docs/speed.md``): the large early layers gain, the small late ones with wide
bases lose. So each shape is timed once in its candidate forms and the fastest kept (the
fold where it is within :data:`FOLD_MARGIN`: it keeps less for the backward):

* ``"folded"``: the norm folded in, in standard ops (:func:`.norm.basis_conv_batch_norm`);
* ``"folded-fused"``: the same through the Triton kernels (``combine="fused"``'s), where
  they run compiled (CUDA; under the interpreter timing would only time the interpreter);
* ``"unfused"``: the basis conv in its own ``auto`` form (:func:`.auto.auto_forward`), then
  batch norm and the ReLU, as a model without ``fuse_norm`` runs them.

All compute the same function (other rounding) and update the running averages alike. A
shape measured before runs its choice while ``torch.compile`` traces or a CUDA graph is
captured (nothing is timed then); one never measured there, a traced call or a symbolic
size (``torch.jit.trace``, ``torch.export``), and an empty batch run ``"folded"``. The
cost model counts the fold whatever is chosen, as it counts a plain ``auto`` layer as
stacked: ``measure_flops`` counts what runs.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..errors import error_head
from . import auto, triton_conv
from .fused import (compute_dtype, conv_pairs, is_triton_error, numeric_padding,
                    warn_once)
from .norm import basis_conv_batch_norm
from .torch_ops import combination_rows


def unfused_conv_batch_norm(x: torch.Tensor, basis_weight: torch.Tensor,
                            coefficients: torch.Tensor, output_index: torch.Tensor,
                            conv_bias: torch.Tensor | None, stride, padding, dilation, *,
                            norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None,
                            eps: float, running: tuple[torch.Tensor, torch.Tensor] | None,
                            relu: bool, update: tuple | None = None) -> torch.Tensor:
    """:func:`.norm.basis_conv_batch_norm`'s function (same arguments) as the modules
    compute it one after another: the basis conv (its ``auto`` form), ``F.batch_norm``
    (batch statistics, moving ``update``'s running averages, or the ``running`` ones),
    the ReLU."""
    out = auto.auto_forward(x, basis_weight, combination_rows(coefficients, output_index),
                            conv_bias, stride, padding, dilation)
    if running is not None:
        out = F.batch_norm(out, *running, norm_weight, norm_bias, False, 0.0, eps)
    else:
        running_mean, running_var, momentum = update or (None, None, 0.0)
        out = F.batch_norm(out, running_mean, running_var, norm_weight, norm_bias, True,
                           momentum, eps)
    return F.relu(out) if relu else out


#: A form other than the fold is chosen only where it is faster by more than this (a
#: fraction): the unfused modules keep more for the backward (on the 2-core CPU a
#: ResNet-18 at 1/4 kept 0.83 of the dense model's activations with the fastest form per
#: shape, 0.61 with the fold everywhere, for the same step time: a run at ``5f1284c``),
#: and a difference this small is within the timing's noise there (the interquartile
#: range of a layer's timed rounds, 1-17 % of its median, about 3 % in the middle:
#: ``results/cpu-fuse-norm-auto``, where with this margin it kept 0.73).
FOLD_MARGIN = 0.03

FORMS = {"folded": basis_conv_batch_norm,
         "folded-fused": functools.partial(basis_conv_batch_norm, fused=True),
         "unfused": unfused_conv_batch_norm}


def candidates(x: torch.Tensor, basis_weight: torch.Tensor, stride, padding,
               dilation) -> list[str]:
    """The forms worth timing here: the kernels only where they would run compiled on the
    basis maps (else ``"folded-fused"`` runs the standard ops, which would be timed and
    chosen under the kernels' name). The maps come from ``F.conv2d`` whatever the form, so
    any padding it takes will do; the kernels need CUDA (not the interpreter: timing it
    would time NumPy), a dtype and basis width they take, and int32 row indices."""
    forms = ["folded", "unfused"]
    if triton_conv.interpreting():
        return forms
    pad = numeric_padding(padding, basis_weight.shape[2:], dilation)
    # (a padding torch's conv takes that is not numeric: "same", at stride 1, keeps the size)
    h_out, w_out = x.shape[2:] if pad is None else triton_conv.output_size(
        x.shape[2:], basis_weight.shape[2:], stride, pad, dilation)
    if triton_conv.unsupported(x, compute_dtype(x), basis_weight.shape[0],
                               out_pixels=x.shape[0] * h_out * w_out) is None:
        forms.append("folded-fused")
    return forms


def _unless_it_fails_to_compile(trial):
    """``trial`` of the kernels' form, except that where a kernel fails to compile for the
    shape (Triton's own error: out of shared memory or registers on this GPU) it counts
    as never fastest and is not tried again in these rounds, said once, rather than
    ending the step: the other forms run without it."""
    failed = []

    def run() -> float:
        if failed:
            return math.inf
        try:
            return trial()
        except Exception as err:  # noqa: BLE001 - only Triton's own errors are caught
            if not is_triton_error(err):
                raise
            failed.append(err)
            warn_once(f"combine='auto' with fuse_norm: the folded norm's Triton kernels "
                      f"failed to compile for a shape on this device ({error_head(err)}); it runs "
                      f"the fold in standard ops or the unfused modules")
            return math.inf

    return run


def _call(form: str, args: tuple, options: dict) -> tuple:
    """``form`` as a function of the tensors a trial gives fresh copies of, and those
    tensors, from :func:`auto_conv_batch_norm`'s ``args`` and keyword ``options``; the
    running averages it moves are copies of the caller's."""
    x, basis_weight, coefficients, output_index, conv_bias, *conv = args
    update = options["update"]
    fixed = {**options, "update": update and (update[0].clone(), update[1].clone(), update[2])}
    del fixed["norm_weight"], fixed["norm_bias"]

    def call(x, basis_weight, coefficients, conv_bias, norm_weight, norm_bias):
        return FORMS[form](x, basis_weight, coefficients, output_index, conv_bias, *conv,
                           norm_weight=norm_weight, norm_bias=norm_bias, **fixed)

    return call, (x, basis_weight, coefficients, conv_bias, options["norm_weight"],
                  options["norm_bias"])


def _time(form: str, args: tuple, options: dict, backward: bool) -> float:
    """:func:`.auto.time_call` of ``form`` (:func:`_call`): one eager call's seconds."""
    return auto.time_call(*_call(form, args, options), backward)


def _timed(args: tuple, options: dict, backward: bool) -> dict[str, float]:
    """Seconds per call of each candidate form (:func:`.auto.interleaved`), ``math.inf``
    for the kernels' form where they failed to compile (:func:`.auto.choose` leaves it
    out)."""
    x, basis_weight, _, _, _, stride, padding, dilation = args
    auto.refuse_wrong_input(x, basis_weight, stride, padding, dilation)
    trials = {f: auto.trial(functools.partial(_time, f, args, options, backward),
                            *_call(f, args, options), backward)
              for f in candidates(x, basis_weight, stride, padding, dilation)}
    if "folded-fused" in trials:
        trials["folded-fused"] = _unless_it_fails_to_compile(trials["folded-fused"])
    return auto.interleaved(trials)


def auto_conv_batch_norm(x: torch.Tensor, basis_weight: torch.Tensor,
                         coefficients: torch.Tensor, output_index: torch.Tensor,
                         conv_bias: torch.Tensor | None, stride, padding, dilation, *,
                         norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None,
                         eps: float, running: tuple[torch.Tensor, torch.Tensor] | None,
                         relu: bool, update: tuple | None = None) -> torch.Tensor:
    """:func:`.norm.basis_conv_batch_norm` (same arguments) in the form fastest for this
    call's shape on this device (see the module docstring). ``stride``, ``padding`` and
    ``dilation`` as ``F.conv2d`` takes them (:func:`.fused.conv_pairs`: an int
    ``stride=2``, which the fold's forms take, ended in "'int' object is not iterable" in
    the shape's key; found in review)."""
    stride, padding, dilation = conv_pairs(stride, padding, dilation)
    args = (x, basis_weight, coefficients, output_index, conv_bias, stride, padding, dilation)
    options = dict(norm_weight=norm_weight, norm_bias=norm_bias, eps=eps, running=running,
                   relu=relu, update=update)
    form = None
    if auto.measurable(x) and x.shape[0]:  # (an empty batch: the fold's own handling)
        backward = auto.needs_backward(x, basis_weight, coefficients, conv_bias, norm_weight,
                                       norm_bias)
        norm = {"statistics": "batch" if running is None else "running",
                "updates_running": update is not None, "weight": norm_weight is not None,
                "bias": norm_bias is not None, "relu": relu}
        key = auto.shape_key(x, basis_weight, output_index.shape[0], conv_bias is not None,
                             stride, padding, dilation, backward, extra={"norm": norm})
        form = auto.choose(key, x, lambda: _timed(args, options, backward), prefer="folded",
                           margin=FOLD_MARGIN)
    return FORMS[form or "folded"](*args, **options)
