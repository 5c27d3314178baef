"""``combine="auto"``: every layer shape runs the form that is fastest on the device it
meets, measured there on first use, as ``torch.backends.cudnn.benchmark`` picks a conv
algorithm per shape.

Why: whether a basis convolution beats the dense conv depends on the shape, the device and
the precision. On a 2-core CPU the 3-channel stem and the 1x1 shortcuts are 1.8-2.1x slower
in basis form than dense (results/layer-speed-cpu-fp32.csv), while the 3x3 layers with 64+
channels win; on a GPU the balance is different again. So each shape is timed once in its
candidate forms (``stacked``; ``dense``, the materialized weight in one dense conv; and
``fused``, the Triton kernel, where it can run) for what the call needs (forward, plus
backward when gradients flow), and the fastest is kept for the process. All compute the
same function; only the rounding differs.

What it costs: a choice depends on timings, so two runs may choose differently, and then
their numbers differ in the last bits; for runs that must repeat exactly, name a form.
While ``torch.compile`` traces or a CUDA graph is captured nothing is timed: a shape
measured before runs its choice, a new one the stacked form (a folded norm's: the fold).
So a compiled training run times its layers first (``basisconv.network.choose_forms_now``).

A layer with its batch norm folded in (``fuse_norm``) chooses among the fold's forms and
the unfused modules the same way, through this module's lookup and timing
(:mod:`.auto_norm`). Where a run replays CUDA graphs, its trials are timed as graph
replays (:mod:`.graph_trials`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import statistics
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import error_head
from . import triton_conv
from .fused import (compute_dtype, conv_pairs, failed_to_compile, fused_forward,
                    numeric_padding)
from .graph_trials import GraphTrial, call_once, detached, timed_as_replays
from .torch_ops import dense_forward, stacked_forward

log = logging.getLogger(__name__)

FORMS = {"stacked": stacked_forward, "dense": dense_forward, "fused": fused_forward}


class ShapeKey(NamedTuple):
    """What a choice is made by (:func:`shape_key` says why each part), read by name;
    :func:`described` writes each field under its name. A tuple, so a dict's key."""

    device: str
    dtype: torch.dtype
    input: tuple
    channels_last: bool
    basis_weight: tuple
    out_channels: int
    bias: bool
    stride: tuple
    padding: str
    dilation: tuple
    threads: int | None
    backward: bool
    input_gradient: bool
    graph_replays: bool
    #: ``((name, ((field, value), ...)), ...)``: :func:`shape_key`'s ``extra``
    extras: tuple


#: the chosen form by shape key
_CHOICES: dict[ShapeKey, str] = {}
#: the times behind each choice, seconds per call by form (for logs and benchmarks)
TIMINGS: dict[ShapeKey, dict[str, float]] = {}
REPEATS = 3
#: the shapes looked up since :func:`start_run` (a record lists these, not every shape the
#: process has timed: else a sweep's later jobs list the earlier jobs' shapes)
_LOOKED_UP: set[ShapeKey] = set()


def choices() -> dict[ShapeKey, str]:
    """The forms chosen so far in this process, by shape key."""
    return dict(_CHOICES)


def start_run() -> None:
    """A run starts: :func:`described` lists the shapes it looks up from now on (the
    choices stay: a shape timed by an earlier run in the process is not timed again)."""
    _LOOKED_UP.clear()


def described(this_run: bool = False) -> list[dict]:
    """The choices made so far, for a record: per shape (every part of the key it was
    chosen by, so that two choices never read alike) the form and the times behind it;
    ``this_run``: only the shapes looked up since :func:`start_run`. A choice made by more
    than the conv (:func:`shape_key`'s ``extra``: a folded norm's, :mod:`.auto_norm`)
    names that part too."""
    return [{**_key_fields(key), "form": form,
             "ms_per_call": {f: round(1e3 * t, 4) for f, t in TIMINGS.get(key, {}).items()}}
            for key, form in _CHOICES.items() if not this_run or key in _LOOKED_UP]


def _key_fields(key: ShapeKey) -> dict:
    """``key``'s fields by name as a record writes them (a tuple as a list, the dtype
    without ``torch.``), each of its extras under its own name."""
    fields = {name: list(value) if isinstance(value, tuple) else value
              for name, value in key._asdict().items() if name != "extras"}
    return {**fields, "dtype": str(key.dtype).removeprefix("torch."),
            **{name: dict(items) for name, items in key.extras}}


@contextlib.contextmanager
def not_the_runs():
    """Inside, the shapes looked up are not listed as the run's (:func:`described` with
    ``this_run``), while the choices made stay: a measurement's calls (a folded norm's
    unfused trial looking up the conv's own choice; a time budget timing every candidate
    layer, of which the run may convert one) are not what the run ran."""
    looked_up = set(_LOOKED_UP)
    try:
        yield
    finally:
        _LOOKED_UP.intersection_update(looked_up)


def forget() -> None:
    """Drop every choice (the next call of each shape measures again)."""
    _CHOICES.clear()
    TIMINGS.clear()
    _LOOKED_UP.clear()


def _measuring_is_possible(x: torch.Tensor) -> bool:
    if x.device.type not in ("cpu", "cuda") or torch.compiler.is_compiling():
        return False  # e.g. the meta tensors of the cost model's dry runs
    return not (x.is_cuda and torch.cuda.is_current_stream_capturing())


def candidates(x: torch.Tensor, basis_weight: torch.Tensor, stride, padding, dilation,
               outputs: int) -> list[str]:
    """The forms worth timing here: the fused kernel only where it runs compiled (under
    the interpreter it would only time the interpreter) and on this call's geometry (a
    one-sided ``"same"`` padding, too many output pixels or a kernel that already failed
    to compile for the shape of ``outputs`` channels make ``fused`` run the stacked form,
    which would then be timed, chosen and recorded under the kernel's name)."""
    forms = ["stacked", "dense"]
    pad = numeric_padding(padding, basis_weight.shape[2:], dilation)
    if pad is None or triton_conv.interpreting() or failed_to_compile(
            x, basis_weight, outputs, stride, padding, dilation):
        return forms
    h_out, w_out = triton_conv.output_size(x.shape[2:], basis_weight.shape[2:], stride, pad,
                                           dilation)
    if triton_conv.unsupported(x, compute_dtype(x), basis_weight.shape[0],
                               out_pixels=x.shape[0] * h_out * w_out) is None:
        forms.append("fused")
    return forms


def time_call(call, leaves: tuple, backward: bool) -> float:
    """Seconds of one call of ``call(*leaves)``, with its output's backward where
    ``backward``, on :func:`detached` copies of ``leaves`` (the first one a tensor)."""
    leaves = detached(leaves)
    cuda = leaves[0].is_cuda
    if cuda:
        torch.cuda.synchronize(leaves[0].device)
    start = time.perf_counter()
    call_once(call, leaves, backward)
    if cuda:
        torch.cuda.synchronize(leaves[0].device)
    return time.perf_counter() - start


def round_order(names: list, round_: int) -> list:
    """The order in which round ``round_`` runs the timed ``names``: as given, reversed
    every other round. Why: the first call of a round may pay for the state the round
    starts in (caches, clocks, the allocator); alternating spreads that over every name
    instead of charging it to the first one every round. The one rule for every
    interleaved timing (:func:`interleaved`, :class:`basisconv.timing.Timer`)."""
    return list(names) if round_ % 2 == 0 else list(names)[::-1]


def interleaved(trials: dict) -> dict[str, float]:
    """Seconds per call by form: the median of ``REPEATS`` rounds in which every form's
    trial (``trials[form]()``: one call's seconds) runs once in turn (in
    :func:`round_order`), after one untimed round. Why: a form's first call on a shape
    picks cuDNN's algorithm, autotunes Triton or allocates, and the next ones may still
    pay for memory the process has not touched before (on the 2-core CPU the first form
    timed in a fresh process took 1.4x its later calls); in turns, such drift falls on
    every form alike rather than on the one timed first. A form whose trial raises (a
    CUDA out-of-memory in its trial, which the layer's real call may not meet) is timed
    ``math.inf``, so not chosen, with a warning: it ended the layer's forward (found in
    review). Where every form fails, the caller's call of its default says why."""
    spans: dict[str, list[float]] = {form: [] for form in trials}
    failed: set[str] = set()
    for round_ in range(REPEATS + 1):
        for form in round_order(list(trials), round_):
            if form in failed:
                continue
            try:
                seconds = trials[form]()
            except Exception as err:  # noqa: BLE001 - any failure: the form is not chosen
                failed.add(form)
                log.warning("combine=auto: the %s form's trial failed (%s); it is not "
                            "chosen for this shape", form, error_head(err))
                continue
            if round_:
                spans[form].append(seconds)
    return {form: math.inf if form in failed else statistics.median(times)
            for form, times in spans.items()}


def trial(eager, call, leaves: tuple, backward: bool):
    """A form's trial for :func:`interleaved`: ``eager`` (a zero-argument eager trial, one
    call's seconds), or where :func:`.graph_trials.timed_as_replays` (on CUDA inside
    :func:`.graph_trials.graph_replays`) a :class:`.graph_trials.GraphTrial` of
    ``call(*leaves)``."""
    if timed_as_replays(leaves[0]):
        return GraphTrial(call, leaves, backward)
    return eager


def refuse_wrong_input(x: torch.Tensor, basis_weight: torch.Tensor, stride, padding,
                       dilation) -> None:
    """Torch's own error for an input the basis conv cannot take (a channel count its
    filters do not take, or neither 3-D nor 4-D): the one ``combine="stacked"`` and
    ``"split"`` give, naming the expected and given channels or dimensions, raised before
    a shape's trials, once per shape. Else every form's trial failed on it, each said as a
    warning, before the default form's call raised it, or a 2-D input ended in "not enough
    values to unpack" (found in review). The per-call path, which ``torch.compile``
    traces, checks nothing more."""
    if x.dim() not in (3, 4) or x.shape[-3] != basis_weight.shape[1]:
        F.conv2d(x, basis_weight, None, stride, padding, dilation)  # raises torch's error


def _form_call(form: str, args: tuple):
    """``form`` as a function of :func:`auto_forward`'s first four ``args`` (the tensors)."""
    return lambda *leaves: FORMS[form](*leaves, *args[4:])


def _time(form: str, args: tuple, backward: bool) -> float:
    """:func:`time_call` of ``form`` on ``args`` (:func:`auto_forward`'s): one call."""
    return time_call(_form_call(form, args), args[:4], backward)


def _cpu_threads() -> int:
    """``torch.get_num_threads()``, a constant of a ``torch.compile`` trace: dynamo cannot
    trace the call (a non-tensor torch op), and broke a compiled CPU model's graph at every
    basis layer's lookup of its choice (found in review)."""
    return torch.get_num_threads()


# torch.compiler.assume_constant_result(_cpu_threads), written as the mark it sets: the
# call imports torch._dynamo, which took half of `import basisconv.layers` (1-2 s at every
# start of a script, a run or a test's subprocess, most of which never compile);
# tests/test_auto_form.py's one-graph test fails if a torch release reads another mark
_cpu_threads._dynamo_marked_constant = True


def shape_key(x: torch.Tensor, basis_weight: torch.Tensor, out_channels: int, bias: bool,
              stride, padding, dilation, backward: bool,
              extra: dict | None = None) -> ShapeKey:
    """What a choice is made by (:class:`ShapeKey`): the device, the compute dtype, the
    input's shape and layout, the basis, the outputs, the bias, the conv's geometry, on the
    CPU its thread count (None elsewhere: which form is fastest changes with it, and a
    sweep over ``trainer.threads`` runs in one process), whether gradients flow, whether
    into the input too (its gradient is a conv of the full ``out_channels`` in the dense
    form, of the basis in the stacked one: a backward timed on images without it ranks the
    forms otherwise), whether the trials are timed as CUDA graph replays
    (:func:`.graph_trials.timed_as_replays`: a form of many small launches ranks otherwise,
    and a sweep over ``trainer.cuda_graphs`` runs in one process), and ``extra``,
    ``{name: {field: value}}`` of what else a caller chooses by (a folded norm's
    settings)."""
    threads = _cpu_threads() if x.device.type == "cpu" else None
    return ShapeKey(
        str(x.device), compute_dtype(x), tuple(x.shape),
        x.is_contiguous(memory_format=torch.channels_last), tuple(basis_weight.shape),
        out_channels, bias, tuple(stride), str(padding), tuple(dilation), threads, backward,
        backward and x.requires_grad, timed_as_replays(x),
        tuple((name, tuple(fields.items())) for name, fields in (extra or {}).items()))


def needs_backward(*tensors: torch.Tensor | None) -> bool:
    """Whether a call on ``tensors`` is timed with its backward: gradients are enabled and
    one of them requires one (gradient mode alone does not: a frozen layer on an input
    without a gradient has nothing to differentiate)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def measurable(x: torch.Tensor) -> bool:
    """Whether a call on ``x`` can be looked up or timed: not traced, sizes not symbolic
    (``torch.export``, ``torch.compile`` with a dynamic batch)."""
    return not torch.jit.is_tracing() and all(isinstance(size, int) for size in x.shape)


def choose(key: ShapeKey, x: torch.Tensor, time_forms, prefer: str | None = None,
           margin: float = 0.0) -> str | None:
    """The form chosen for ``key``: looked up, or measured now where measuring is possible
    (``time_forms()``: seconds per call by form, ``math.inf`` for a form whose trial
    failed, with the random state forked so the trials leave it alone): the fastest, or
    ``prefer`` where it is within ``margin`` (a fraction) of the fastest; None where
    neither (the caller runs its default)."""
    form = _CHOICES.get(key)
    if form is None and _measuring_is_possible(x):
        # the trials leave no trace: not in the random state, nor in the caller's saved-tensor
        # hooks (inside activation checkpointing the trials' saved tensors went into the
        # checkpoint's frame, and its recomputation, which times nothing, then differed),
        # nor in a record: a choice looked up inside a trial (the conv's own, in a folded
        # norm's unfused trial) is listed only where a real call looks it up
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t), \
                not_the_runs():
            times = time_forms()
        # a form whose trial failed (math.inf: a kernel that did not compile, a graph not
        # captured) is left out; where every one failed, the first candidate, untimed
        finite = {f: t for f, t in times.items() if math.isfinite(t)}
        form = min(finite, key=finite.get) if finite else next(iter(times))
        if prefer in finite and finite[prefer] <= (1 + margin) * finite[form]:
            form = prefer
        _CHOICES[key] = form
        TIMINGS[key] = finite
        log.info("combine=auto: %s for input %s, basis %s -> %d outputs%s (%s; ms per call: %s)",
                 form, list(key.input), list(key.basis_weight), key.out_channels,
                 "".join(f", {name} {dict(items)}" for name, items in key.extras),
                 ("forward" if not key.backward else "forward+backward" + (
                     ", the input's gradient too" if key.input_gradient else ""))
                 + (", as graph replays" if key.graph_replays else ""),
                 ", ".join(f"{f} {1e3 * t:.2f}" for f, t in times.items()))
    if form is not None and not torch.compiler.is_compiling():
        _LOOKED_UP.add(key)
    return form


def auto_forward(x: torch.Tensor, basis_weight: torch.Tensor, combination: torch.Tensor,
                 bias: torch.Tensor | None, stride, padding, dilation) -> torch.Tensor:
    """The fastest form for this call's shape on this device (see the module docstring)."""
    stride, padding, dilation = conv_pairs(stride, padding, dilation)
    form = None
    # traced, or a symbolic size: no measured choice to look up nor a call to time; the
    # stacked form, as for any shape not measured while compiling
    if measurable(x):
        backward = needs_backward(x, basis_weight, combination, bias)
        key = shape_key(x, basis_weight, combination.shape[0], bias is not None, stride,
                        padding, dilation, backward)
        args = (x, basis_weight, combination, bias, stride, padding, dilation)

        def time_forms() -> dict[str, float]:
            refuse_wrong_input(x, basis_weight, stride, padding, dilation)
            times = interleaved({
                f: trial(functools.partial(_time, f, args, backward), _form_call(f, args),
                         args[:4], backward)
                for f in candidates(x, basis_weight, stride, padding, dilation,
                                    combination.shape[0])})
            if "fused" in times and failed_to_compile(x, basis_weight, combination.shape[0],
                                                      stride, padding, dilation):
                del times["fused"]  # its kernel failed as it was timed: that was the stacked form
            return times

        form = choose(key, x, time_forms)
    return FORMS[form or "stacked"](x, basis_weight, combination, bias, stride, padding,
                                    dilation)
