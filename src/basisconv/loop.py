"""The training loop's epochs, shared by every producer that trains or times a model (a
training run, the sensitivity probe, the benchmarks): one training epoch with forward and
backward timed separately, evaluation, and one epoch of both as a run records it. The
device and process set-up live in :mod:`basisconv.execution`, the optimizer, loss scaler
and schedule in :mod:`basisconv.optim`: the epochs take what those make as arguments.

Nothing here knows about runs, records or basis layers: ``train_one_epoch`` takes hooks
(``before_step``, ``extra_loss``) for the basis-specific parts. Speed options
(``channels_last``, bf16/fp16 autocast) change how fast the same computation runs, never
what is trained, so baseline and basis models stay comparable; fp16 steps scale their loss
(:func:`basisconv.optim.grad_scaler`), without which small gradients would be lost.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from . import distributed, graphs
from .data import TensorBatches
from .errors import ConfigError, TrainingDiverged

log = logging.getLogger(__name__)


def graphed_fp16_problem(graphs: str, amp: str, fix: str) -> str:
    """Why CUDA graphs and fp16 autocast are refused together (``graphs`` and ``amp`` as the
    user gave them, ``fix`` what to do): a graphed step does not scale the loss, and fp16
    needs it (bf16 does not)."""
    return (f"{graphs} replays one fixed step without loss scaling, which {amp} needs (small "
            f"fp16 gradients would flush to zero); {fix}")


class StepTimer:
    """Forward and backward time per step, measured separately: the median over the
    epoch's steps, so that a first step that compiles (``trainer.compile``), autotunes
    or captures CUDA graphs, seconds where a step takes milliseconds, does not count: in
    an epoch of 3 steps or more (of 5 or more where two are slow, ``trainer.cuda_graphs``'
    eager step and its capture). In a 1-step epoch the median is that step, in a 2-step
    one their mean, the slow step counted in full or by half (a tiny test run's epoch).

    On CUDA it records events between the phases and reads them once per epoch, so the
    measurement adds no synchronization to the step; on CPU it reads the clock.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple] = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def add(self, start, forward_done, backward_done) -> None:
        self.marks.append((start, forward_done, backward_done))

    def medians(self) -> tuple[float, float]:
        if not self.marks:
            return 0.0, 0.0
        if self.cuda:
            torch.cuda.synchronize()
            spans = [(a.elapsed_time(b) / 1e3, b.elapsed_time(c) / 1e3) for a, b, c in self.marks]
        else:
            spans = [(b - a, c - b) for a, b, c in self.marks]
        return (statistics.median(f for f, _ in spans),
                statistics.median(b for _, b in spans))


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    seconds: float
    forward_seconds: float = 0.0   # median per step (forward + loss)
    backward_seconds: float = 0.0  # median per step (loss.backward())


def train_one_epoch(model: nn.Module, batches: TensorBatches, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, *, amp_dtype=None,
                    label_smoothing: float = 0.0, progress: str | None = None,
                    before_step: Callable[[], Any] | None = None,
                    extra_loss: Callable[[], torch.Tensor] | None = None,
                    graphed: bool = False,
                    scaler: torch.amp.GradScaler | None = None) -> EpochStats:
    """One pass over ``batches``. ``before_step`` runs before each step (e.g. the
    coefficient skip-training schedule); ``extra_loss`` is added to the loss (e.g. an L1
    penalty on the coefficients); the reported loss is the cross-entropy without it (with
    ``label_smoothing`` the smoothed one that is trained; :func:`evaluate` reports the plain
    cross-entropy).
    ``graphed`` replays the step as CUDA graphs (:mod:`basisconv.graphs`; its backward
    time then includes the optimizer update). ``scaler``
    (:func:`basisconv.optim.grad_scaler`, made with the optimizer and kept with it, so its
    scale carries over between epochs) scales the loss; fp16 autocast needs one."""
    if graphed and before_step is not None:
        raise ValueError("a graphed training step cannot run a before_step hook")
    if amp_dtype == torch.float16 and not (scaler is not None and scaler.is_enabled()):
        raise ValueError("fp16 autocast needs a loss scaler (optim.grad_scaler): without one "
                         "small gradients flush to zero")
    if graphed and scaler is not None and scaler.is_enabled():
        raise ValueError(graphed_fp16_problem("graphed=True", "fp16 autocast (an enabled scaler)",
                                              "train eagerly, or in bf16"))
    model.train()
    device = batches.images.device
    timer = StepTimer(device)
    # Sums stay on the device: a .item() per step would synchronize a GPU every step.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)

    def forward(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None,
                            cache_enabled=not graphed):
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
            objective = loss if extra_loss is None else loss + extra_loss()
        loss_sum.add_(loss.detach() * labels.numel())
        correct.add_((logits.argmax(1) == labels).sum())
        return objective

    graph = graphs.GraphedTrainStep(forward, optimizer, device) if graphed else None
    seen = 0
    start = time.perf_counter()
    for images, labels in tqdm(batches, desc=progress, leave=False,
                               disable=None if progress else True):
        if before_step is not None:
            before_step()
        if graph is not None:
            timer.add(*graph(images, labels, timer.mark))
        else:
            step_start = timer.mark()
            objective = forward(images, labels)
            forward_done = timer.mark()
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                objective.backward()
                timer.add(step_start, forward_done, timer.mark())
                optimizer.step()
            else:  # (a disabled scaler passes the loss and the step through)
                scaler.scale(objective).backward()
                timer.add(step_start, forward_done, timer.mark())
                scaler.step(optimizer)
                scaler.update()
        scheduler.step()
        seen += labels.numel()
    totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.to(loss_sum.dtype),
                                                     torch.tensor(float(seen), device=device)]))
    # one read back (on a GPU each .item() is a synchronization of its own)
    loss_total, hits, seen = totals.tolist()
    if graph is not None:  # (after the sync above) free the graph pool the grads live in
        optimizer.zero_grad(set_to_none=True)
    loss_value = loss_total / seen
    check_finite(loss_value, "training loss")
    return EpochStats(loss_value, hits / seen, time.perf_counter() - start, *timer.medians())


def check_finite(value: float, quantity: str) -> None:
    """Raise :class:`TrainingDiverged` when ``value`` (a loss already read back once per
    epoch: checking it adds no host synchronization) is NaN or infinite."""
    if not math.isfinite(value):
        raise TrainingDiverged(f"{quantity} became {value}; lower trainer.lr or check the data",
                               quantity, value)


# no_grad, not inference_mode: what a model makes or keeps during evaluation (a lazy
# layer's first weights, a tensor a forward caches) would be an inference tensor, which the
# next training step cannot save for backward ("Inference tensors cannot be saved"), and
# inference_mode saves little where the step is the model's convolutions
@torch.no_grad()
def evaluate(model: nn.Module, batches: TensorBatches, *, amp_dtype=None,
             graphed: bool = False, padded: bool = False) -> EpochStats:
    """Loss and accuracy over ``batches``. ``graphed`` replays one CUDA graph per batch;
    it and ``padded`` (for a compiled model: one shape, so no recompilation for the last
    batch) pad the last partial batch (:class:`basisconv.graphs.GraphedEvalStep`)."""
    model.eval()
    device = batches.images.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)

    def forward(images: torch.Tensor, labels: torch.Tensor,
                count: torch.Tensor | None = None) -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None,
                            cache_enabled=not graphed):
            logits = model(images)
        hits = logits.argmax(1) == labels
        if count is None:
            loss_sum.add_(F.cross_entropy(logits.float(), labels, reduction="sum"))
        else:  # rows from ``count`` on are padding
            valid = torch.arange(labels.shape[0], device=device) < count
            losses = F.cross_entropy(logits.float(), labels, reduction="none")
            loss_sum.add_(torch.where(valid, losses, 0.0).sum())
            hits &= valid
        correct.add_(hits.sum())

    if (graphed or padded) and not graphs.rows_independent_in_eval(model):
        if graphed:
            raise ConfigError("this model normalizes with batch statistics in eval mode, so "
                              "its evaluation cannot replay padded batches; set "
                              "trainer.cuda_graphs=false")
        padded = False  # a compiled model then sees the last batch's shape too
    step = (graphs.GraphedEvalStep(forward, device, capture=graphed and device.type == "cuda")
            if graphed or padded else forward)
    start = time.perf_counter()
    for images, labels in batches:
        step(images, labels)
    totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.to(loss_sum.dtype)]))
    loss_total, hits = totals.tolist()  # (one read back, as in training)
    n = batches.labels.numel()
    return EpochStats(loss_total / n, hits / n, time.perf_counter() - start)


def run_epoch(epoch: int, model: nn.Module, train_batches: TensorBatches,
              test_batches: TensorBatches, optimizer, scheduler, trainer: DictConfig,
              amp_dtype, graphed: bool = False, scaler: torch.amp.GradScaler | None = None,
              **hooks) -> dict[str, Any]:
    lr = optimizer.param_groups[0]["lr"]  # the epoch's first step's (the schedule is per step)
    progress = f"epoch {epoch}/{trainer.epochs}" if trainer.progress else None
    train = train_one_epoch(model, train_batches, optimizer, scheduler, amp_dtype=amp_dtype,
                            label_smoothing=trainer.label_smoothing, progress=progress,
                            graphed=graphed, scaler=scaler, **hooks)
    test = evaluate(model, test_batches, amp_dtype=amp_dtype, graphed=graphed,
                    padded=trainer.compile)
    log.info("%5d %10.4f %9.4f %9.4f %8.4f %9.5f %8.1f", epoch, train.loss, train.accuracy,
             test.loss, test.accuracy, lr, train.seconds)
    check_finite(test.loss, "test loss")  # a NaN metric is never recorded
    return {"epoch": epoch, "train_loss": train.loss, "train_accuracy": train.accuracy,
            "test_loss": test.loss, "test_accuracy": test.accuracy, "lr": lr,
            "epoch_seconds": train.seconds, "eval_seconds": test.seconds,
            "forward_seconds_per_step": train.forward_seconds,
            "backward_seconds_per_step": train.backward_seconds}
