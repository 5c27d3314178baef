"""How a module is timed fairly, for the speed benchmarks and for layer selection by
measured time (:func:`layer_time_savings`, ``selection.budget_metric=time``).

Candidates (a dense conv and its basis forms, or whole models) are timed in interleaved
rounds, the order reversed every other round, after untimed warm-up rounds, and medians are
reported: load from other processes then hits every candidate alike. On CUDA every timed
call is synchronized before and after, so a time runs from the call's first launch to the
end of its work: what an eager training step pays. For a layer whose GPU work is shorter
than launching its kernels (on an H200 at batch 128, every ResNet-18 layer's dense forward
took 0.08-0.17 ms eagerly, whatever its FLOPs: results/gpu-h200/layer-speed-cuda-bf16-
quick.csv) that is the launch time, and a form with fewer kernels
wins; ``Runner(graphs=True)`` times replays of each call captured as a CUDA graph
(:class:`basisconv.graphs.GraphedCall`), which launch once: the GPU's work.
"""

from __future__ import annotations

import contextlib
import ctypes
import statistics
import time
from typing import Callable, TYPE_CHECKING

import torch
import torch.nn as nn

from .graphs import GraphedCall
from .kernels.auto import round_order
from .conv_norm import conv_norm_act
from .execution import AMP_DTYPES, memory_format, raise_compile_limits
from .network import choose_forms_now

if TYPE_CHECKING:  # pandas (half a second) is imported where a table is made: a process
    import pandas as pd  # that makes none (most training runs) starts without it


#: What :func:`tune_cpu_allocator` set in this process (empty before): glibc's tuning is not
#: undone (``mallopt``'s trim threshold turns off its dynamic mmap threshold for good), so a
#: later benchmark of the default allocator in this process would run tuned.
ALLOCATOR_TUNED: set[str] = set()


def tune_cpu_allocator() -> str:
    """Keep freed memory in the heap instead of returning it to the OS.

    glibc serves blocks above 32 MiB (a ResNet-18 activation at batch 128) with mmap and
    unmaps them on free, so every step pays page faults to get zeroed pages back, where
    reused heap memory costs none. That penalty
    falls on the output writes of every layer, and weighs more on the cheaper basis model.
    This is the glibc form of PyTorch's CPU tuning advice (use jemalloc/tcmalloc); it
    applies to both models alike (measured on one VM on 2026-11-25: dense step 2.27 -> 1.99 s,
    basis 1/4 1.05 -> 0.78 s; results/model-speed-cpu-fp32-defaultmalloc.csv against that
    day's model-speed-cpu-fp32.csv, ``git show 1d5c1df:results/model-speed-cpu-fp32.csv``:
    the one now in results/ is of another VM, 2026-12-03, whose dense step took 2.63 s)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        if libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**30) == 1:
            tuned = "glibc, mmap disabled, trim threshold 1 GiB (mallopt)"
            ALLOCATOR_TUNED.add(tuned)
            return tuned
    except OSError:
        pass
    return "default"


def relative_spread(times: list[float]) -> float:
    """The interquartile range of ``times`` over their median (0 for a single time): how
    far a median can be trusted, as ``torch.utils.benchmark`` reports it."""
    if len(times) < 2:
        return 0.0
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return (q3 - q1) / median if median > 0 else 0.0


class Timer:
    """Interleaved timing of named candidates; medians in milliseconds, and in ``spread``
    each candidate's :func:`relative_spread` of the last :meth:`run`."""

    def __init__(self, device: str | torch.device):
        device = torch.device(device)
        # the timed device's queue, not the current device's (a cuda:1 run from cuda:0)
        self.sync = ((lambda: torch.cuda.synchronize(device)) if device.type == "cuda"
                     else (lambda: None))
        self.spread: dict[str, float] = {}

    def run(self, candidates: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, float]:
        times: dict[str, list[float]] = {k: [] for k in candidates}
        names = list(candidates)
        for round_ in range(warmup + repeats):
            for name in round_order(names, round_):
                self.sync()
                start = time.perf_counter()
                candidates[name]()
                self.sync()
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - start)
        self.spread = {k: relative_spread(v) for k, v in times.items()}
        return {k: statistics.median(v) * 1e3 for k, v in times.items()}


class Runner:
    """How a module is run: device, memory format, autocast (``amp``: a key of
    :data:`basisconv.execution.AMP_DTYPES`), optional torch.compile. It builds the timed calls:
    an inference forward, and a training forward plus backward."""

    def __init__(self, device: str | torch.device, *, channels_last: bool = True,
                 amp: str = "none", compile: bool = False, graphs: bool = False):
        self.device = torch.device(device)
        self.memory_format = memory_format(channels_last)
        self.amp = AMP_DTYPES[amp]
        self.compile = compile
        self.graphs = graphs  # each timed call a CUDA graph replay (GraphedCall)

    def prepare(self, module: nn.Module, input_shape: tuple[int, ...] | None = None, *,
                input_requires_grad: bool = False) -> nn.Module:
        """``module`` on the device and layout, compiled if asked; before compiling, its
        ``combine="auto"`` layers time their forms at ``input_shape`` (training and
        inference; the training input needing a gradient where ``input_requires_grad``,
        as the timed step's will), since nothing is timed while torch.compile traces:
        else a compiled auto layer would run, and be timed as, the stacked form."""
        module = module.to(self.device, memory_format=self.memory_format)
        if not self.compile:
            return module
        if input_shape is not None:
            choose_forms_now(module, [input_shape, input_shape], device=self.device,
                             memory_format=self.memory_format, amp_dtype=self.amp,
                             input_requires_grad=input_requires_grad)
        raise_compile_limits()  # every module timed compiled is (see there)
        return torch.compile(module)

    def input(self, *shape: int, requires_grad: bool = False) -> torch.Tensor:
        x = torch.randn(*shape, device=self.device).to(memory_format=self.memory_format)
        return x.requires_grad_(requires_grad)

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        # a graph captures the cast weights, which autocast's cache would keep from the
        # capture instead of casting them in every replay (PyTorch's CUDA graphs notes)
        return torch.autocast(self.device.type, dtype=self.amp, cache_enabled=not self.graphs)

    def _timed(self, run: Callable[[], None]) -> Callable[[], None]:
        return GraphedCall(run, self.device) if self.graphs else run

    def forward(self, module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
        """An inference forward (``torch.no_grad``; BN mode as the module is set)."""
        def run():
            with torch.no_grad(), self.autocast():
                module(x)
        return self._timed(run)

    def training_step(self, module: nn.Module, x: torch.Tensor,
                      backward: Callable[[torch.Tensor], None]) -> Callable[[], None]:
        """A training forward plus ``backward(output)`` with fresh gradients, as in a
        training step (the optimizer step is not part of it)."""
        params = [p for p in module.parameters()]

        def run():
            for p in params:
                p.grad = None
            x.grad = None
            with self.autocast():
                out = module(x)
            backward(out)
        return self._timed(run)


def output_gradient(grad: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """Backward from a fixed output gradient, cast once per output dtype (autocast), so
    that no extra elementwise op is timed with the layer."""
    cast: dict[torch.dtype, torch.Tensor] = {}

    def backward(out: torch.Tensor) -> None:
        if out.dtype not in cast:
            cast[out.dtype] = grad.to(out.dtype)
        out.backward(cast[out.dtype])
    return backward


class ConvNormAct(nn.Module):
    """A conv, its norm and ReLU as the model runs them (:func:`conv_norm_act`): what a
    layer with ``fuse_norm`` is timed as, against the dense conv, norm and ReLU, since its
    fold replaces all three."""

    def __init__(self, conv: nn.Module, norm: nn.Module, relu: bool):
        super().__init__()
        self.conv, self.norm, self.relu = conv, norm, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_norm_act(self.conv, self.norm, x, self.relu)


def folded_norms(basis_model: nn.Module, names: list[str], x: torch.Tensor
                 ) -> dict[str, tuple[str, bool]]:
    """Of ``names``, the layers that fold their norm in (``fuse_norm``) when the model
    runs on ``x``: the norm's module name and whether a ReLU follows, by layer."""
    module_names = {id(m): n for n, m in basis_model.named_modules()}
    folded: dict[str, tuple[str, bool]] = {}

    def remember(name: str):
        def hook(module, args, kwargs) -> None:  # forward(x, norm=None, relu=False)
            norm = kwargs.get("norm", args[1] if len(args) > 1 else None)
            relu = kwargs.get("relu", args[2] if len(args) > 2 else False)
            if norm is not None:
                folded[name] = module_names[id(norm)], bool(relu)
        return hook
    hooks = [basis_model.get_submodule(name).register_forward_pre_hook(
        remember(name), with_kwargs=True) for name in names]
    try:
        with torch.no_grad():
            basis_model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return folded


def layer_time_savings(model: nn.Module, basis_model: nn.Module, names: list[str],
                       runner: Runner, batch: int, image: tuple[int, ...], *,
                       repeats: int = 9, warmup: int = 2) -> tuple[pd.DataFrame, float]:
    """What converting each layer of ``names`` saves in measured time: one training
    forward+backward of the dense conv (in ``model``) and of its basis form (the same name
    in ``basis_model``) on the input that layer sees at ``batch`` images of shape
    ``image``, timed as the benchmarks time (interleaved rounds, medians), on ``runner``'s
    device, layout and precision. Returns one row per layer (``dense_ms``, ``basis_ms``,
    ``seconds_saved``: negative where the basis form is slower) and the dense model's own
    training forward+backward in seconds (the budget's 100 %). A layer that folds its
    norm in (``basis.fuse_norm``) is timed with its norm and ReLU, against the dense conv's
    (:class:`ConvNormAct`): the fold replaces those three."""
    import pandas as pd
    model, basis_model = runner.prepare(model), runner.prepare(basis_model)
    inputs: dict[str, tuple[tuple[int, ...], bool]] = {}
    x = runner.input(batch, *image, requires_grad=False)

    def remember(name: str):
        def hook(module, args) -> None:  # the shape, and whether a gradient flows back
            inputs[name] = tuple(args[0].shape), args[0] is not x  # (none into the images)
        return hook
    hooks = [model.get_submodule(name).register_forward_pre_hook(remember(name))
             for name in names]
    with torch.no_grad():
        logits = model(x)
    for hook in hooks:
        hook.remove()
    folded = folded_norms(basis_model, names, x)
    timer, rows = Timer(runner.device), []
    for name in names:
        dense, converted = model.get_submodule(name), basis_model.get_submodule(name)
        if name in folded:
            norm, relu = folded[name]
            dense = ConvNormAct(dense, model.get_submodule(norm), relu)
            converted = ConvNormAct(converted, basis_model.get_submodule(norm), relu)
        shape, needs_grad = inputs[name]
        layer_input = runner.input(*shape, requires_grad=needs_grad)
        with torch.no_grad():
            grad = torch.ones_like(dense(layer_input))
        ms = timer.run({form: runner.training_step(module, layer_input, output_gradient(grad))
                        for form, module in (("dense", dense), ("basis", converted))},
                       repeats, warmup)
        rows.append({"layer": name, "dense_ms": ms["dense"], "basis_ms": ms["basis"],
                     "seconds_saved": (ms["dense"] - ms["basis"]) / 1e3})
    step = timer.run({"model": runner.training_step(
        model, x, output_gradient(torch.ones_like(logits)))}, repeats, warmup)["model"]
    return pd.DataFrame(rows), step / 1e3
