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
(:mod:`.auto_norm`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import statistics
import time

import torch
import torch.nn.functional as F

from . import triton_conv
from .fused import (compute_dtype, conv_pairs, failed_to_compile, fused_forward,
                    numeric_padding)
from .torch_ops import dense_forward, stacked_forward

log = logging.getLogger(__name__)

FORMS = {"stacked": stacked_forward, "dense": dense_forward, "fused": fused_forward}
#: (device, dtype, shapes, conv arguments, CPU threads, whether gradients flow and whether
#: into the input[, what else a caller chose by, as :func:`shape_key`'s ``extra``]) -> the
#: chosen form
_CHOICES: dict[tuple, str] = {}
#: Where a :func:`shape_key`'s ``extra`` parts start (the parts before are read by position)
_EXTRAS_FROM = 13
#: the times behind each choice, seconds per call by form (for logs and benchmarks)
TIMINGS: dict[tuple, dict[str, float]] = {}
REPEATS = 3
#: the shapes looked up since :func:`start_run` (a record lists these, not every shape the
#: process has timed: else a sweep's later jobs list the earlier jobs' shapes)
_LOOKED_UP: set[tuple] = set()
#: Whether CUDA trials are timed as graph replays (:func:`graph_replays`).
_GRAPH_REPLAYS = False
#: Replays a graphed trial's call times at once (one synchronization for them all).
REPLAYS = 10


def choices() -> dict[tuple, str]:
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
    return [{"device": key[0], "dtype": str(key[1]).removeprefix("torch."),
             "input": list(key[2]), "channels_last": key[3], "basis_weight": list(key[4]),
             "out_channels": key[5], "bias": key[6], "stride": list(key[7]),
             "padding": key[8], "dilation": list(key[9]), "threads": key[10],
             "backward": key[11], "input_gradient": key[12],
             **{name: dict(items) for name, items in key[_EXTRAS_FROM:]},
             "form": form,
             "ms_per_call": {f: round(1e3 * t, 4) for f, t in TIMINGS.get(key, {}).items()}}
            for key, form in _CHOICES.items() if not this_run or key in _LOOKED_UP]


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


def _detached(leaves: tuple) -> list:
    """Detached copies of the tensors among ``leaves`` (None kept), each requiring a
    gradient where its original does: a trial's graph never reaches the caller's."""
    return [t.detach().requires_grad_(t.requires_grad) if t is not None else None
            for t in leaves]


def _call_once(call, leaves: list, backward: bool) -> None:
    """``call(*leaves)``, then its output's backward where ``backward``, the leaves'
    gradients set to None first (inside a capture, the graph's backward writes them)."""
    for leaf in leaves:
        if leaf is not None:
            leaf.grad = None
    out = call(*leaves)
    if backward:
        out.backward(torch.ones_like(out))


def time_call(call, leaves: tuple, backward: bool) -> float:
    """Seconds of one call of ``call(*leaves)``, with its output's backward where
    ``backward``, on :func:`_detached` copies of ``leaves`` (the first one a tensor)."""
    leaves = _detached(leaves)
    cuda = leaves[0].is_cuda
    if cuda:
        torch.cuda.synchronize(leaves[0].device)
    start = time.perf_counter()
    _call_once(call, leaves, backward)
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
                            "chosen for this shape", form, _quoted(err))
                continue
            if round_:
                spans[form].append(seconds)
    return {form: math.inf if form in failed else statistics.median(times)
            for form, times in spans.items()}


def _quoted(err: BaseException) -> str:
    """A failed trial's error as its warning quotes it: the type and the first line, cut
    at 200 characters (a compiler's or CUDA's text may run to pages)."""
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


@contextlib.contextmanager
def graph_replays(on: bool = True):
    """Inside, trials on CUDA are timed as CUDA graph replays (:class:`GraphTrial`), as a
    run that replays its steps as graphs (``trainer.cuda_graphs``) will run them: timed
    eagerly, every kernel launch counts (a few microseconds each), and a form of many small
    launches (the fold in standard ops: about 70 a layer) is judged slower than it runs
    in the graph, where launches cost nothing. The graphed steps' eager first calls, where
    their layers choose, run inside."""
    global _GRAPH_REPLAYS
    before, _GRAPH_REPLAYS = _GRAPH_REPLAYS, on
    try:
        yield
    finally:
        _GRAPH_REPLAYS = before


class GraphTrial:
    """One form's trial as CUDA graph replays, for :func:`interleaved`: its first call (the
    untimed round) runs the call twice eagerly on a side stream (cuDNN's algorithm,
    autotuning, allocations), captures it, forward and backward, into a graph and replays
    it once (the first launch uploads the graph); each later call replays it
    :data:`REPLAYS` times and gives the seconds per replay. A form that cannot be captured
    counts as never fastest (``math.inf``, said in the log): a graphed run could not
    capture it either."""

    def __init__(self, call, leaves: tuple, backward: bool):
        self.call, self.backward = call, backward
        self.leaves = _detached(leaves)
        self.device = self.leaves[0].device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False

    def _run(self) -> None:
        _call_once(self.call, self.leaves, self.backward)

    def __call__(self) -> float:
        if self.failed:
            return math.inf
        if self.graph is None:
            start = time.perf_counter()
            self._capture()
            return time.perf_counter() - start
        torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for _ in range(REPLAYS):
            self.graph.replay()
        torch.cuda.synchronize(self.device)
        return (time.perf_counter() - start) / REPLAYS

    def _capture(self) -> None:
        stream, current = _trial_stream(self.device), torch.cuda.current_stream(self.device)
        stream.wait_stream(current)
        pool, graph = torch.cuda.graph_pool_handle(), torch.cuda.CUDAGraph()
        try:
            # (the caller's stream comes back even where the graph's own exit raises)
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._run()
                try:
                    # thread-local: another thread's CUDA calls (NCCL's watchdog) do not
                    # invalidate the capture, as Inductor captures
                    with torch.cuda.graph(graph, pool=pool, stream=stream,
                                          capture_error_mode="thread_local"):
                        self._run()
                except Exception:
                    _end_failed_capture(self.device, pool)
                    raise
                graph.replay()
            self.graph = graph
        except Exception as err:  # noqa: BLE001 - any failure: the form is not chosen
            self.failed = True
            log.warning("combine=auto: a form could not be captured as a CUDA graph (%s); "
                        "it is not chosen for this shape", _quoted(err))
        finally:
            current.wait_stream(stream)


@functools.lru_cache(maxsize=None)
def _trial_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for every trial's warm-up and capture (what a stream sets
    up lazily, cuBLAS's workspace for it, is then set up outside any capture)."""
    return torch.cuda.Stream(device)


def _end_failed_capture(device: torch.device, pool) -> None:
    """After a capture that CUDA invalidated, ``CUDAGraph.capture_end`` raises before it
    tells PyTorch's allocator that the capture ended, which then keeps it registered and
    its pool alive (a later ``empty_cache`` fails an internal assert): tell it here, and
    release the pool. Where the capture did end (the error came after), the first call
    fails and the graph's own reset releases the pool. Best effort: private bindings."""
    end = getattr(torch._C, "_cuda_endAllocateToPool", None)
    release = getattr(torch._C, "_cuda_releasePool", None)
    if end is None or release is None:
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        end(index, pool)
    except RuntimeError:
        return
    release(index, pool)


def trial(eager, call, leaves: tuple, backward: bool):
    """A form's trial for :func:`interleaved`: ``eager`` (a zero-argument eager trial, one
    call's seconds), or on CUDA inside :func:`graph_replays` a :class:`GraphTrial` of
    ``call(*leaves)``."""
    if _GRAPH_REPLAYS and leaves[0].is_cuda:
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
              stride, padding, dilation, backward: bool, extra: dict | None = None) -> tuple:
    """What a choice is made by (:func:`described` names each part): the device, the
    compute dtype, the input's shape and layout, the basis, the outputs, the bias, the
    conv's geometry, on the CPU its thread count (None elsewhere: which form is fastest
    changes with it, and a sweep over ``trainer.threads`` runs in one process), whether
    gradients flow, whether into the input too (its gradient is a conv of the full
    ``out_channels`` in the dense form, of the basis in the stacked one: a backward
    timed on images without it ranks the forms otherwise), and ``extra``,
    ``{name: {field: value}}`` of what else a caller chooses by (a folded norm's
    settings)."""
    threads = _cpu_threads() if x.device.type == "cpu" else None
    return (str(x.device), compute_dtype(x), tuple(x.shape),
            x.is_contiguous(memory_format=torch.channels_last), tuple(basis_weight.shape),
            out_channels, bias, tuple(stride), str(padding), tuple(dilation), threads, backward,
            backward and x.requires_grad,
            *((name, tuple(fields.items())) for name, fields in (extra or {}).items()))


def needs_backward(*tensors: torch.Tensor | None) -> bool:
    """Whether a call on ``tensors`` is timed with its backward: gradients are enabled and
    one of them requires one (gradient mode alone does not: a frozen layer on an input
    without a gradient has nothing to differentiate)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def measurable(x: torch.Tensor) -> bool:
    """Whether a call on ``x`` can be looked up or timed: not traced, sizes not symbolic
    (``torch.export``, ``torch.compile`` with a dynamic batch)."""
    return not torch.jit.is_tracing() and all(isinstance(size, int) for size in x.shape)


def choose(key: tuple, x: torch.Tensor, time_forms, prefer: str | None = None,
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
                 form, list(key[2]), list(key[4]), key[5],
                 "".join(f", {name} {dict(items)}" for name, items in key[_EXTRAS_FROM:]),
                 "forward" if not key[11] else "forward+backward" + (
                     ", the input's gradient too" if key[12] else ""),
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
