"""Training and evaluation steps replayed as CUDA graphs (``trainer.cuda_graphs``).

Why: a CIFAR ResNet-18 step is bound by kernel launches on a GPU, not by arithmetic (as
issue 14 reports from an H200; ``make gpu-check`` times an eager and a graphed epoch). A
captured step is one launch per phase. ``torch.compile(mode="reduce-overhead")`` graphs
the forward and backward only, after compiling; this captures the eager step itself (the
same kernels, so the same arithmetic as an eager CUDA run), with the optimizer update and
the epoch's metric sums inside, and costs no compilation.

How (PyTorch's whole-network capture recipe, docs "CUDA Graphs"):

- The step's inputs are copied into static buffers before each replay.
- Training is two graphs sharing one memory pool, replayed in the order captured: the
  forward with the loss and metric sums, then the backward with the optimizer update. The
  split lets the records keep forward and backward times apart, as eager runs report them.
- The optimizer reads its learning rate from a device tensor the graph captured, filled
  from the scheduler's value before each replay (float32, as the fused kernel reads it;
  an eager fused step rounds the float to float32 in the kernel too). The scheduler, the
  optimizer's ``param_groups`` and checkpoints keep plain floats, so resume works as
  before. Its other settings (momentum, weight decay, ...) are numbers in the captured
  kernel: a change after capture is refused, not silently ignored.
- The first call runs eagerly, on the capture stream: it is a real training step (the
  epoch's first batch), and it creates what capture must not (momentum buffers, cuDNN's
  algorithm choice, Triton autotuning, ``combine="auto"`` timings). The second call
  captures and replays, the rest replay: a graphed epoch trains on the same batches as an
  eager one.
- Evaluation pads the last partial batch to the fixed size and masks the padding out of
  the sums: every batch replays one graph. That needs rows that do not affect each other
  in eval mode, as batch norms with running statistics give (``rows_independent_in_eval``).
  A compiled model is evaluated so too, without capture: one shape, no recompilation.
- New graphs are captured each epoch, so a model changed between epochs (the dense
  warm-up's conversion, a resumed optimizer) is captured afresh; a capture costs about one
  step.

Not graphable, and refused by the config check: a training step that changes which
parameters train between steps (``basis.coefficient_update_every``), and
``torch.compile`` modes that capture graphs themselves. Under ``torchrun`` the step runs
eagerly (DDP's communication hooks are not captured here).

Off CUDA the same code runs with every capture replaced by calling the function again on
the static buffers (``capture=False``), so the buffer, learning-rate and padding logic is
tested without a GPU; a training run off CUDA never asks for it.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch

from .kernels import graph_trials


class _Replay:
    """One captured call: a CUDA graph, or (``capture=False``) the call itself again."""

    def __init__(self, fn: Callable[[], object], *, capture: bool,
                 stream: torch.cuda.Stream | None, pool=None):
        self.fn = fn
        self.graph, self.output = None, None
        if capture:  # records the kernels without running them
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool, stream=stream):
                self.output = fn()

    def pool(self):
        return self.graph.pool() if self.graph is not None else None

    def replay(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.output = self.fn()


@contextlib.contextmanager
def _on(stream: torch.cuda.Stream | None) -> Iterator[None]:
    """Run on ``stream`` (the capture stream), ordered after and before the current one."""
    if stream is None:
        yield
        return
    current = torch.cuda.current_stream(stream.device)  # (that device's, not device 0's)
    stream.wait_stream(current)
    try:
        with torch.cuda.stream(stream):
            yield
    finally:
        current.wait_stream(stream)


@functools.lru_cache(maxsize=None)
def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for every eager first step and capture: what a stream
    sets up lazily (cuBLAS's workspace for it) is then set up once, outside any capture."""
    return torch.cuda.Stream(device)


@contextlib.contextmanager
def _tensor_lr(optimizer: torch.optim.Optimizer, rates: list[torch.Tensor]) -> Iterator[None]:
    """The optimizer reads the device learning rates (what a graph captures); its
    ``param_groups`` keep their floats outside."""
    groups = optimizer.param_groups
    saved = [g["lr"] for g in groups]
    for group, lr in zip(groups, rates):
        group["lr"] = lr
    try:
        yield
    finally:
        for group, lr in zip(groups, saved):
            group["lr"] = lr


#: what a captured optimizer step reads as plain numbers, so keeps as it was at capture
FROZEN_SETTINGS = ("momentum", "dampening", "weight_decay", "nesterov", "maximize")


def _frozen(optimizer: torch.optim.Optimizer) -> list[tuple]:
    return [tuple(group.get(k) for k in FROZEN_SETTINGS) for group in optimizer.param_groups]


def _backward_and_update(objective: torch.Tensor, optimizer: torch.optim.Optimizer,
                         rates: list[torch.Tensor]) -> None:
    objective.backward()
    with _tensor_lr(optimizer, rates):
        optimizer.step()


def _static_like(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Buffers of the same shape, dtype, device and layout (channels_last stays so)."""
    return tuple(torch.empty_like(t) for t in tensors)


class GraphedTrainStep:
    """A training step (``forward(images, labels) -> objective``, then backward and
    ``optimizer.step()``) run eagerly once, then captured and replayed.

    ``forward`` must keep its own running sums in tensors it updates in place (the metric
    sums of the epoch); its output is the objective to differentiate.
    """

    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 optimizer: torch.optim.Optimizer, device: torch.device, *,
                 capture: bool | None = None):
        self.forward, self.optimizer = forward, optimizer
        self.capture = device.type == "cuda" if capture is None else capture
        self.stream = _capture_stream(device) if self.capture else None
        self.lr = [torch.tensor(float(g["lr"]), device=device, dtype=torch.float32)
                   for g in optimizer.param_groups]
        self.inputs: tuple[torch.Tensor, ...] | None = None
        self.phases: tuple[_Replay, _Replay] | None = None
        self.settings: list[tuple] = []

    def _load_lr(self) -> None:
        """The scheduler's learning rates into the device tensors (outside any capture:
        a fill inside one would replay the value it had then)."""
        for group, lr in zip(self.optimizer.param_groups, self.lr):
            lr.fill_(float(group["lr"]))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 mark: Callable[[], object] = lambda: None) -> tuple:
        """One step on this batch; returns ``mark()`` taken before, between and after
        the two phases (the step timer's marks)."""
        self._load_lr()
        if self.inputs is None:  # the first step: eager, on the capture stream
            # (where combine="auto" layers choose: timed as the replays they will run)
            with _on(self.stream), graph_trials.graph_replays(self.capture):
                start = mark()
                self.optimizer.zero_grad(set_to_none=True)
                objective = self.forward(images, labels)
                between = mark()
                _backward_and_update(objective, self.optimizer, self.lr)
                end = mark()
            self.inputs = _static_like((images, labels))
            return start, between, end
        for static, batch in zip(self.inputs, (images, labels)):
            static.copy_(batch)
        if self.phases is None:  # the second step: capture (grads live in the graph pool)
            self.settings = _frozen(self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)
            # (the captured calls name what they use, not self: no reference cycle keeps
            # an epoch's graphs and their memory alive after it)
            run_forward, inputs, optimizer, rates = self.forward, self.inputs, self.optimizer, self.lr
            with _on(self.stream):
                forward = _Replay(lambda: run_forward(*inputs), capture=self.capture,
                                  stream=self.stream)
                backward = _Replay(lambda: _backward_and_update(forward.output, optimizer, rates),
                                   capture=self.capture, stream=self.stream, pool=forward.pool())
            self.phases = (forward, backward)
        if _frozen(self.optimizer) != self.settings:
            raise RuntimeError(f"the optimizer's {', '.join(FROZEN_SETTINGS)} changed after "
                               f"its step was captured, which replays the captured values; "
                               f"keep them fixed or train without trainer.cuda_graphs")
        forward, backward = self.phases  # (capturing ran nothing: every step replays)
        if not self.capture:  # as the captured backward does: write the grads, not add
            self.optimizer.zero_grad(set_to_none=True)
        start = mark()
        forward.replay()
        between = mark()
        backward.replay()
        return start, between, mark()


class GraphedEvalStep:
    """An evaluation forward (``forward(images, labels, count)``, which adds the first
    ``count`` rows' loss and correct predictions to its sums) on batches of one fixed
    size: a shorter last batch is padded with the previous batch's rows, masked out by
    ``count``."""

    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object],
                 device: torch.device, *, capture: bool | None = None):
        self.forward = forward
        self.capture = device.type == "cuda" if capture is None else capture
        self.stream = _capture_stream(device) if self.capture else None
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.inputs: tuple[torch.Tensor, ...] | None = None
        self.graph: _Replay | None = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        rows = labels.shape[0]
        if self.inputs is None:
            self.inputs = _static_like((images, labels))
        static_images, static_labels = self.inputs
        if rows > static_labels.shape[0]:
            raise ValueError(f"an evaluation batch of {rows} rows after one of "
                             f"{static_labels.shape[0]}: the first batch must be the largest")
        static_images[:rows].copy_(images)
        static_labels[:rows].copy_(labels)
        self.count.fill_(rows)
        if self.graph is None:
            run_forward, inputs, count = self.forward, self.inputs, self.count
            with _on(self.stream), graph_trials.graph_replays(self.capture):
                run_forward(*inputs, count)  # the eager first batch
                self.graph = _Replay(lambda: run_forward(*inputs, count),
                                     capture=self.capture, stream=self.stream)
            return
        self.graph.replay()


class GraphedCall:
    """A call without arguments (a timed layer's forward, or its forward and backward)
    replayed as one CUDA graph, for the speed benchmark: timed eagerly, a small layer's
    time on a GPU is that of launching its kernels, not of their work. The first call runs
    eagerly on the capture stream (cuDNN's choice, Triton's autotuning, an auto layer's
    timings: what capture must not do), then captures and launches the graph once (its
    first launch uploads it to the GPU, a one-time cost: paid in this untimed first call,
    as ``kernels.graph_trials.GraphTrial`` pays it, not in the first timed one), so on CUDA
    it runs ``fn``'s work twice; every later call replays. Off CUDA (``capture=False``)
    every call is the call itself.

    ``fn`` must read only tensors that stay where they are (a fixed input, the module's
    parameters) and may set gradients to None first: in a capture they are allocated in the
    graph's pool, and each replay writes them there again (the whole-network recipe)."""

    def __init__(self, fn: Callable[[], object], device: torch.device, *,
                 capture: bool | None = None):
        self.fn = fn
        self.capture = device.type == "cuda" if capture is None else capture
        self.stream = _capture_stream(device) if self.capture else None
        self.graph: _Replay | None = None

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        with _on(self.stream):
            with graph_trials.graph_replays(self.capture):
                self.fn()
            self.graph = _Replay(self.fn, capture=self.capture, stream=self.stream)
        if self.capture:
            self.graph.replay()  # the upload (see above)


def rows_independent_in_eval(model: torch.nn.Module) -> bool:
    """Whether ``model`` in eval mode computes each row of a batch alone, so that padding
    rows cannot change the real rows' outputs: no norm layer normalizes with batch
    statistics in eval (a batch norm without running statistics does; an instance norm,
    which shares their base class, normalizes each row by its own, with or without)."""
    return not any(isinstance(m, torch.nn.modules.batchnorm._NormBase)
                   and not isinstance(m, torch.nn.modules.instancenorm._InstanceNorm)
                   and m.running_mean is None for m in model.modules())
