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
measured before runs its choice, a new one the stacked form. So a compiled training run
times its layers first (``basisconv.network.choose_forms_now``).
"""

from __future__ import annotations

import logging
import statistics
import time

import torch

from . import triton_conv
from .fused import compute_dtype, failed_to_compile, fused_forward, numeric_padding
from .torch_ops import dense_forward, stacked_forward

log = logging.getLogger(__name__)

FORMS = {"stacked": stacked_forward, "dense": dense_forward, "fused": fused_forward}
#: (device, dtype, shapes, conv arguments, whether gradients flow) -> the chosen form
_CHOICES: dict[tuple, str] = {}
#: the times behind each choice, seconds per call by form (for logs and benchmarks)
TIMINGS: dict[tuple, dict[str, float]] = {}
REPEATS = 3
#: the shapes looked up since :func:`start_run` (a record lists these, not every shape the
#: process has timed: else a sweep's later jobs list the earlier jobs' shapes)
_LOOKED_UP: set[tuple] = set()


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
    ``this_run``: only the shapes looked up since :func:`start_run`."""
    return [{"device": key[0], "dtype": str(key[1]).removeprefix("torch."),
             "input": list(key[2]), "channels_last": key[3], "basis_weight": list(key[4]),
             "out_channels": key[5], "bias": key[6], "stride": list(key[7]),
             "padding": key[8], "dilation": list(key[9]), "backward": key[10], "form": form,
             "ms_per_call": {f: round(1e3 * t, 4) for f, t in TIMINGS.get(key, {}).items()}}
            for key, form in _CHOICES.items() if not this_run or key in _LOOKED_UP]


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


def _time(form: str, args: tuple, backward: bool) -> float:
    """Median seconds of ``REPEATS`` calls of ``form`` (after one untimed), on detached
    copies of the inputs, so nothing reaches the caller's graph or its random state."""
    x, *rest = args[:4]
    leaves = [t.detach().requires_grad_(t.requires_grad) if t is not None else None
              for t in (x, *rest)]
    cuda = x.is_cuda
    spans = []
    for i in range(REPEATS + 1):
        if cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        out = FORMS[form](*leaves, *args[4:])
        if backward:
            out.backward(torch.ones_like(out))
        if cuda:
            torch.cuda.synchronize(x.device)
        if i:
            spans.append(time.perf_counter() - start)
        for leaf in leaves:
            if leaf is not None:
                leaf.grad = None
    return statistics.median(spans)


def auto_forward(x: torch.Tensor, basis_weight: torch.Tensor, combination: torch.Tensor,
                 bias: torch.Tensor | None, stride, padding, dilation) -> torch.Tensor:
    """The fastest form for this call's shape on this device (see the module docstring)."""
    if torch.jit.is_tracing() or not all(isinstance(size, int) for size in x.shape):
        # traced, or a symbolic size (torch.export or torch.compile with a dynamic batch):
        # no measured choice to look up nor a call to time; the stacked form, as for any
        # shape not measured while compiling
        return stacked_forward(x, basis_weight, combination, bias, stride, padding, dilation)
    backward = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, basis_weight, combination, bias))
    key = (str(x.device), compute_dtype(x), tuple(x.shape),
           x.is_contiguous(memory_format=torch.channels_last), tuple(basis_weight.shape),
           combination.shape[0], bias is not None, tuple(stride), str(padding),
           tuple(dilation), backward)
    form = _CHOICES.get(key)
    if form is None and _measuring_is_possible(x):
        args = (x, basis_weight, combination, bias, stride, padding, dilation)
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            times = {f: _time(f, args, backward) for f in
                     candidates(x, basis_weight, stride, padding, dilation, combination.shape[0])}
        if "fused" in times and failed_to_compile(x, basis_weight, combination.shape[0], stride,
                                                  padding, dilation):
            del times["fused"]  # its kernel failed as it was timed: that was the stacked form
        form = _CHOICES[key] = min(times, key=times.get)
        TIMINGS[key] = times
        log.info("combine=auto: %s for input %s, basis %s -> %d outputs (%s; ms per call: %s)",
                 form, list(x.shape), list(basis_weight.shape), combination.shape[0],
                 "forward+backward" if backward else "forward",
                 ", ".join(f"{f} {1e3 * t:.2f}" for f, t in times.items()))
    if form is not None and not torch.compiler.is_compiling():
        _LOOKED_UP.add(key)
    return FORMS[form or "stacked"](x, basis_weight, combination, bias, stride, padding,
                                    dilation)
