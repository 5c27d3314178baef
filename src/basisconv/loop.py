"""The training loop's pieces, shared by every producer that trains or times a model
(a training run, the sensitivity probe, the benchmarks): device, seed and precision
set-up, the optimizer and its per-step schedule, one training epoch with forward and
backward timed separately, and evaluation.

Nothing here knows about runs, records or basis layers: ``train_one_epoch`` takes hooks
(``before_step``, ``extra_loss``) for the basis-specific parts. Speed options
(``channels_last``, bf16/fp16 autocast) change how fast the same computation runs, never
what is trained, so baseline and basis models stay comparable; fp16 steps scale their loss
(:func:`grad_scaler`), without which small gradients would be lost.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from . import distributed, graphs
from .data import TensorBatches
from .errors import ConfigError, TrainingDiverged

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


DEVICE_NAMES = "auto, cpu, cuda, cuda:N (N: the GPU's index)"


def device_problem(name: str, setting: str = "trainer.device={}", *, here: bool = True,
                   auto: bool = True) -> str | None:
    """What is wrong with the device ``name`` (one line; ``setting`` shows how it was given,
    ``trainer.device={}`` or ``--device {}``), or None. Valid: auto (CUDA when there is
    one; unless ``auto`` is False), cpu, cuda and cuda:N as torch writes N; with ``here``,
    also one this torch sees (a config is checked without it: whether the machine has
    CUDA is the run's question)."""
    given = setting.format(name)
    valid = r"cpu|cuda(:(0|[1-9][0-9]*))?" + ("|auto" if auto else "")
    if re.fullmatch(valid, str(name), re.ASCII) is None:  # (torch refuses cuda:01)
        names = DEVICE_NAMES if auto else DEVICE_NAMES.removeprefix("auto, ")
        return f"{given}: no such device; choose one of {names}"
    if not here or not name.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return (f"{given}: no CUDA device is available to this torch; use "
                f"{setting.format('cpu')}{' or auto' if auto else ''}")
    index, count = torch.device(name).index, torch.cuda.device_count()
    if index is not None and index >= count:
        # (torch's own "invalid device ordinal" would come from deep inside the set-up)
        return f"{given}: this torch sees {count} GPU(s), cuda:0..cuda:{count - 1}"
    return None


def graphed_fp16_problem(graphs: str, amp: str, fix: str) -> str:
    """Why CUDA graphs and fp16 autocast are refused together (``graphs`` and ``amp`` as the
    user gave them, ``fix`` what to do): a graphed step does not scale the loss, and fp16
    needs it (bf16 does not)."""
    return (f"{graphs} replays one fixed step without loss scaling, which {amp} needs (small "
            f"fp16 gradients would flush to zero); {fix}")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    problem = device_problem(name)
    if problem:
        raise ConfigError(problem)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


#: The environment variable that fixes cuBLAS's workspace, as its determinism needs.
CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed torch's generators; with ``deterministic`` also force deterministic kernels
    (slower on GPU; on CPU the default kernels already are)."""
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS is deterministic only with a fixed workspace; read when cuBLAS starts, so
        # set it before the first matmul (a value the user chose is kept).
        os.environ.setdefault(CUBLAS_WORKSPACE, ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    # cudnn.benchmark picks the fastest kernel per shape: worth it for fixed CIFAR shapes,
    # but its choice may vary between runs, so it is off in deterministic mode.
    torch.backends.cudnn.benchmark = not deterministic


@contextlib.contextmanager
def settings_restored() -> Iterator[None]:
    """Run a producer (a training run, a sensitivity estimate, a search) without leaving its
    process-wide torch settings behind: a notebook, a test or a sweep that calls it next
    keeps its own thread count, deterministic/cudnn flags, ``CUBLAS_WORKSPACE_CONFIG`` and
    torch.compile's limits (the global RNG, seeded on purpose, is not restored).

    A stop or error in flight is never replaced by one from the restoring: a Ctrl-C during
    torch's first lazy ``import torch._inductor.config`` (which
    ``use_deterministic_algorithms`` makes) leaves sympy half-imported, so the restoring
    call failed with an ``AttributeError`` trace instead of the stop's one line."""
    cudnn = torch.backends.cudnn
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), cudnn.deterministic,
             cudnn.benchmark)
    workspace = os.environ.get(CUBLAS_WORKSPACE)  # (else it stays set)

    def restore() -> None:
        threads, deterministic, warn_only, cudnn.deterministic, cudnn.benchmark = saved
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        if workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE, None)
        else:
            os.environ[CUBLAS_WORKSPACE] = workspace
        _restore_compile_limits()

    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # the stop or error in flight is what to report
            restore()
        raise
    restore()


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout of activations and weights: ``channels_last`` (NHWC) or contiguous NCHW."""
    return torch.channels_last if channels_last else torch.contiguous_format


@dataclass
class Runtime:
    """Where and how a model runs: device, memory format and autocast dtype."""

    device: torch.device
    memory_format: torch.memory_format
    amp_dtype: torch.dtype | None

    def batches(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                augment: DictConfig | None = None, seed: int = 0) -> TensorBatches:
        """Batches in this runtime's memory format: training batches (shuffled by
        ``seed``, cropped and flipped as the ``data`` config ``augment`` says) when
        ``augment`` is given, else evaluation batches in order."""
        if augment is None:
            return TensorBatches(images, labels, batch_size, train=False,
                                 memory_format=self.memory_format)
        return TensorBatches(images, labels, batch_size, train=True, seed=seed,
                             crop_padding=augment.crop_padding, flip=augment.flip,
                             memory_format=self.memory_format)


def use_threads(trainer: DictConfig) -> None:
    """torch's CPU threads as ``trainer.threads`` says (null, the default: torch's own, left alone)."""
    if trainer.threads:
        torch.set_num_threads(trainer.threads)


def setup(trainer: DictConfig, seed: int, *, join_process_group: bool = False) -> Runtime:
    """The one set-up of a training process: torch threads (``trainer.threads``), the
    device (``trainer.device``; with ``join_process_group`` the ``torchrun`` process group
    is joined and the device becomes this rank's GPU), seeds and deterministic flags, the
    memory format and the autocast dtype."""
    use_threads(trainer)
    device = resolve_device(trainer.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # streams and events of cuda:N runs then live there
    if join_process_group:
        device = distributed.setup(device)
    seed_everything(seed, trainer.deterministic)
    if trainer.amp == "fp16" and device.type == "cpu":
        log.warning("trainer.amp=fp16 on CPU: most CPUs have no fp16 arithmetic, so its "
                    "convolutions run tens of times slower than fp32; use trainer.amp=bf16 "
                    "or none there")
    return Runtime(device, memory_format(trainer.channels_last), AMP_DTYPES[trainer.amp])


def build_optimizer(model: nn.Module, trainer: DictConfig) -> torch.optim.SGD:
    """SGD as ``trainer`` says. On CUDA it is the fused implementation: a small CIFAR
    model's step is bound by kernel launches, and the fused update is one launch for all
    parameters instead of several per tensor. Elsewhere it is torch's default, so CPU
    runs compute exactly what they computed before."""
    on_cuda = all(p.is_cuda for p in model.parameters())
    return torch.optim.SGD(model.parameters(), lr=trainer.lr, momentum=trainer.momentum,
                           nesterov=trainer.nesterov and trainer.momentum > 0,
                           weight_decay=trainer.weight_decay, fused=True if on_cuda else None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping the implementation
    :func:`build_optimizer` chose for this device: loading replaces every group's settings,
    ``fused`` among them, so a run resumed on a CPU from a CUDA checkpoint would step with
    the fused CPU kernel, and one resumed on a GPU from a CPU checkpoint with the unfused
    one. ``ValueError`` for a state of other parameters: torch checks only their number
    per group, and a momentum of another shape failed in the first step after."""
    chosen = [{k: group[k] for k in ("fused", "foreach") if k in group}
              for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, chosen):
        group.update(own)
    params = [param for group in optimizer.param_groups for param in group["params"]]
    for index, param in enumerate(params):
        for key, value in optimizer.state.get(param, {}).items():
            if torch.is_tensor(value) and value.dim() and value.shape != param.shape:
                raise ValueError(f"the saved {key} of parameter {index} has shape "
                                 f"{list(value.shape)}, the parameter {list(param.shape)}")


def grad_scaler(amp_dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler an optimizer's steps need: under fp16 autocast the backward pass of
    each fp16 op yields fp16 gradients, and those below fp16's range (6e-8; late in
    training, when the loss is small, most of them) flush to zero, so their updates are
    lost. Dynamic loss scaling keeps them (steps whose scaled gradients overflow are
    skipped and the scale halves). bf16 has float32's range: its scaler is disabled, a
    no-op, as it is without autocast."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def use_cuda_graphs(trainer: DictConfig, device: torch.device) -> bool:
    """Whether steps replay as CUDA graphs: ``trainer.cuda_graphs`` on a CUDA device, in
    a single process (elsewhere the setting is ignored, so one config serves CPU and GPU
    machines)."""
    graphed = trainer.cuda_graphs and device.type == "cuda" and not distributed.is_distributed()
    if trainer.cuda_graphs and not graphed:
        log.info("trainer.cuda_graphs applies to single-process CUDA runs; running eagerly")
    return graphed


def compiled(model: nn.Module, trainer: DictConfig) -> nn.Module:
    """``model`` under ``torch.compile`` when ``trainer.compile``, in ``trainer.compile_mode``
    (``reduce-overhead`` replays CUDA graphs: one launch per step's forward and backward)."""
    if not trainer.compile:
        return model
    raise_compile_limits()
    mode = trainer.compile_mode
    return torch.compile(model, mode=None if mode == "default" else mode)


#: torch.compile's limits of compiled graphs per function (dynamo's ``recompile_limit``,
#: 8 by default) raised to while a producer compiles, and the values they had before
#: (``None``: not raised), which :func:`settings_restored` puts back.
COMPILE_LIMITS = {"recompile_limit": 1024, "accumulated_recompile_limit": 4096}
_limits_before: dict | None = None


def raise_compile_limits() -> None:
    """Raise torch.compile's limits to :data:`COMPILE_LIMITS`. Why: the graphs of every
    model compiled in one process count against one limit per ``forward`` (each run
    compiles 2: training and evaluation), so from a sweep's 5th job on, or the speed
    benchmark's 5th compiled model, torch ran the model uncompiled with one warning, while
    records said compiled."""
    import torch._dynamo

    global _limits_before
    config = torch._dynamo.config
    if _limits_before is None:
        _limits_before = {key: getattr(config, key) for key in COMPILE_LIMITS}
    for key, value in COMPILE_LIMITS.items():
        setattr(config, key, max(getattr(config, key), value))


def _restore_compile_limits() -> None:
    global _limits_before
    if _limits_before is not None:
        import torch._dynamo

        for key, value in _limits_before.items():
            setattr(torch._dynamo.config, key, value)
        _limits_before = None


#: The learning-rate schedules :func:`build_scheduler` makes (``trainer.schedule``).
SCHEDULES = ("onecycle", "cosine", "constant")
#: One-cycle warms up from lr / 10 and anneals to lr / 1000.
ONECYCLE_START_DIVISOR, ONECYCLE_END_DIVISOR = 10.0, 1000.0


def build_scheduler(optimizer: torch.optim.Optimizer, trainer: DictConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: ``onecycle`` (warm up to ``lr`` then anneal) or ``cosine``
    (linear warm-up for ``warmup_fraction`` of all steps, then cosine to zero) or
    ``constant``."""
    total = trainer.epochs * steps_per_epoch
    if trainer.schedule == "onecycle":
        warmup = trainer.warmup_fraction
        if total == 1 or warmup == 0:
            # no warm-up: the anneal from lr itself (torch's OneCycleLR started one step into
            # it, and ran a run of one step at its end, lr / 1000)
            return torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1.0, end_factor=1 / ONECYCLE_END_DIVISOR,
                total_iters=max(total - 1, 1))
        # torch ends the warm-up at step warmup * total - 1: at 0 it divided by zero, below
        # 0 it skipped the warm-up (a 4-step smoke run started at 0.098 of lr 0.1); a
        # warm-up of at most one step is one step at lr / 10, then the anneal (nudged past
        # one step: in floats 1/49*49 < 1)
        if 0 < warmup * total <= 1:
            warmup = 1 / total
            while warmup * total <= 1:
                warmup = math.nextafter(warmup, 1.0)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=trainer.lr, total_steps=total, pct_start=warmup,
            anneal_strategy="linear", div_factor=ONECYCLE_START_DIVISOR,
            final_div_factor=ONECYCLE_END_DIVISOR / ONECYCLE_START_DIVISOR,
            cycle_momentum=False)
    if trainer.schedule == "cosine":
        warmup = min(total - 1, int(round(trainer.warmup_fraction * total)))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup)
        if warmup == 0:
            return cosine
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], [warmup])
    if trainer.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ConfigError(f"trainer.schedule={trainer.schedule!r}; choose one of "
                      f"{', '.join(SCHEDULES)}")


def scheduler_state_fits(scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict) -> bool:
    """Whether a checkpoint's schedule ``state`` is of ``scheduler``'s rule: one-cycle
    without a warm-up (or over one step) is a LinearLR since 0aab165, which takes an older
    OneCycleLR's state without a word and then follows neither rule."""
    return "total_steps" not in state or isinstance(
        scheduler, torch.optim.lr_scheduler.OneCycleLR)


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
    time then includes the optimizer update). ``scaler`` (:func:`grad_scaler`, made with
    the optimizer and kept with it, so its scale carries over between epochs) scales the
    loss; fp16 autocast needs one."""
    if graphed and before_step is not None:
        raise ValueError("a graphed training step cannot run a before_step hook")
    if amp_dtype == torch.float16 and not (scaler is not None and scaler.is_enabled()):
        raise ValueError("fp16 autocast needs a loss scaler (loop.grad_scaler): without one "
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
    lr = optimizer.param_groups[0]["lr"]
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
