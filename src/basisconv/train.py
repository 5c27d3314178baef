"""The training loop: SGD with momentum and weight decay under a one-cycle or cosine
schedule, on CIFAR-10 held as tensors on the training device.

``fit(cfg, output_dir)`` takes the composed Hydra config (see ``configs/``), trains, and
keeps ``output_dir/run.json`` (the run record) and ``checkpoint.pt`` up to date after
every epoch; re-running it on the same directory resumes. Speed options
(``channels_last``, bf16/fp16 autocast, ``torch.compile``) change how fast the same
computation runs, never what is trained, so baseline and basis models stay comparable.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from . import distributed
from .checkpoint import CHECKPOINT, check_same_run, load_checkpoint, save_checkpoint
from .config import validate
from .data import CIFAR10, TensorBatches, load_cifar10, stratified_subset, synthetic_stripes
from .errors import ConfigError
from .network import (build_network, coefficient_penalty, converts_later, describe,
                      rebind_optimizer, to_basis)
from .records import provenance, write_json_atomic
from .surgery import CoefficientSkipSchedule
from .tracking import Tracker

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but no CUDA device is available; "
                          f"use trainer.device=cpu or auto")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed torch's generators; with ``deterministic`` also force deterministic kernels
    (slower on GPU; on CPU the default kernels already are)."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    # cudnn.benchmark picks the fastest kernel per shape: worth it for fixed CIFAR shapes,
    # but its choice may vary between runs, so it is off in deterministic mode.
    torch.backends.cudnn.benchmark = not deterministic


def build_optimizer(model: nn.Module, trainer: DictConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=trainer.lr, momentum=trainer.momentum,
                           nesterov=trainer.nesterov and trainer.momentum > 0,
                           weight_decay=trainer.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, trainer: DictConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: ``onecycle`` (warm up to ``lr`` then anneal) or ``cosine``
    (linear warm-up for ``warmup_epochs``, then cosine to zero) or ``constant``."""
    total = trainer.epochs * steps_per_epoch
    if trainer.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=trainer.lr, total_steps=total, pct_start=trainer.warmup_fraction,
            anneal_strategy="linear", div_factor=10.0, final_div_factor=100.0,
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
    raise ConfigError(f"trainer.schedule={trainer.schedule!r}; choose onecycle, cosine or constant")


class StepTimer:
    """Mean forward and backward time per step, measured separately.

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

    def means(self) -> tuple[float, float]:
        if not self.marks:
            return 0.0, 0.0
        if self.cuda:
            torch.cuda.synchronize()
            spans = [(a.elapsed_time(b) / 1e3, b.elapsed_time(c) / 1e3) for a, b, c in self.marks]
        else:
            spans = [(b - a, c - b) for a, b, c in self.marks]
        n = len(spans)
        return sum(f for f, _ in spans) / n, sum(b for _, b in spans) / n


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    seconds: float
    forward_seconds: float = 0.0   # mean per step (forward + loss)
    backward_seconds: float = 0.0  # mean per step (loss.backward())


def train_one_epoch(model: nn.Module, batches: TensorBatches, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, *, amp_dtype=None,
                    label_smoothing: float = 0.0, progress: str | None = None,
                    before_step: Callable[[], Any] | None = None,
                    extra_loss: Callable[[], torch.Tensor] | None = None) -> EpochStats:
    """One pass over ``batches``. ``before_step`` runs before each step (e.g. the
    coefficient skip-training schedule); ``extra_loss`` is added to the loss (e.g. an L1
    penalty on the coefficients); the reported loss is the cross-entropy alone."""
    model.train()
    device = batches.images.device
    timer = StepTimer(device)
    # Sums stay on the device: a .item() per step would synchronize a GPU every step.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    for images, labels in tqdm(batches, desc=progress, leave=False,
                               disable=None if progress else True):
        if before_step is not None:
            before_step()
        step_start = timer.mark()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
            objective = loss if extra_loss is None else loss + extra_loss()
        forward_done = timer.mark()
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        timer.add(step_start, forward_done, timer.mark())
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * labels.numel()
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.numel()
    totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.to(loss_sum.dtype),
                                                     torch.tensor(float(seen), device=device)]))
    loss_sum, correct, seen = totals[0], totals[1], totals[2].item()
    loss_value = loss_sum.item() / seen
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"training loss became {loss_value}; lower trainer.lr "
                                 f"or check the data")
    return EpochStats(loss_value, correct.item() / seen, time.perf_counter() - start,
                      *timer.means())


@torch.no_grad()
def evaluate(model: nn.Module, batches: TensorBatches, *, amp_dtype=None) -> EpochStats:
    model.eval()
    device = batches.images.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    start = time.perf_counter()
    for images, labels in batches:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.to(loss_sum.dtype)]))
    n = batches.labels.numel()
    return EpochStats(totals[0].item() / n, totals[1].item() / n, time.perf_counter() - start)


def prepare_data(data_cfg: DictConfig, seed: int) -> CIFAR10:
    """Load the dataset and apply the stratified ``train_subset`` / ``test_subset``."""
    if data_cfg.name == "stripes":
        data = synthetic_stripes(data_cfg.synthetic_train, data_cfg.synthetic_test, seed)
    else:
        data = load_cifar10(data_cfg.root, verify_md5=data_cfg.verify_md5,
                            download=data_cfg.download)
    if data_cfg.train_subset is not None:
        keep = stratified_subset(data.train_labels, data_cfg.train_subset, seed)
        data.train_images, data.train_labels = data.train_images[keep], data.train_labels[keep]
    if data_cfg.test_subset is not None:
        keep = stratified_subset(data.test_labels, data_cfg.test_subset, seed)
        data.test_images, data.test_labels = data.test_images[keep], data.test_labels[keep]
    return data


@dataclass
class RunState:
    """What the run record holds; written to ``run.json`` after every epoch."""

    config: dict
    provenance: dict
    model: dict
    status: str = "running"
    epochs: list[dict] = field(default_factory=list)
    final: dict | None = None
    wandb: dict | None = None

    def write(self, output_dir: Path) -> None:
        write_json_atomic(output_dir / "run.json", self.__dict__)


def fit(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Train as ``cfg`` says, keeping ``output_dir/run.json`` and ``checkpoint.pt`` current
    after every epoch. Resumes from the checkpoint there when ``trainer.resume``; a run
    whose record is already complete is not trained again. Returns the run record."""
    validate(cfg)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    checkpoint = None
    if cfg.trainer.resume and (output_dir / CHECKPOINT).exists():
        checkpoint = load_checkpoint(output_dir / CHECKPOINT)
        check_same_run(checkpoint["config"], config, output_dir / CHECKPOINT)
        if checkpoint["record"]["status"] == "complete":
            log.info("run in %s is already complete; not training again", output_dir)
            return checkpoint["record"]
    return Training(cfg, config, output_dir, checkpoint).run()


class Training:
    """One run's state: the model (and its DDP/compiled wrapper), optimizer, schedule,
    batches, run record and tracker; built from the config, or restored from a checkpoint."""

    def __init__(self, cfg: DictConfig, config: dict, output_dir: Path,
                 checkpoint: dict | None):
        self.cfg, self.output_dir, trainer = cfg, output_dir, cfg.trainer
        if trainer.threads:
            torch.set_num_threads(trainer.threads)
        self.device = distributed.setup(resolve_device(trainer.device))
        if trainer.batch_size % distributed.world_size():
            raise ConfigError(f"trainer.batch_size={trainer.batch_size} (the global batch) must "
                              f"be divisible by the {distributed.world_size()} processes")
        self.main_process = distributed.is_main_process()
        if not self.main_process:
            logging.getLogger("basisconv").setLevel(logging.WARNING)
        seed_everything(cfg.seed, trainer.deterministic)
        self.memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format
        self.amp_dtype = AMP_DTYPES[trainer.amp]

        # Dense warm-up: the model turns into basis form at the end of epoch
        # `dense_warmup_epochs`, before that epoch's checkpoint, which so already holds it.
        done = len(checkpoint["record"]["epochs"]) if checkpoint else 0
        self.pending_conversion = converts_later(cfg) and done < cfg.basis.dense_warmup_epochs
        self.model = build_network(cfg, basis_now=not self.pending_conversion)
        self.model.to(device=self.device, memory_format=self.memory_format)
        data = prepare_data(cfg.data, cfg.seed).to(self.device)
        self.train_batches = TensorBatches(
            data.train_images, data.train_labels, trainer.batch_size, train=True, seed=cfg.seed,
            crop_padding=cfg.data.crop_padding, flip=cfg.data.flip,
            memory_format=self.memory_format)
        self.test_batches = TensorBatches(data.test_images, data.test_labels,
                                          trainer.eval_batch_size, train=False,
                                          memory_format=self.memory_format)
        self.optimizer = build_optimizer(self.model, trainer)
        self.scheduler = build_scheduler(self.optimizer, trainer, len(self.train_batches))
        self.record = RunState(config=config, provenance=provenance(), model=describe(self.model))
        if checkpoint is not None:
            self.restore(checkpoint)
        log.info("model %s (width %s): %s parameters, %d basis layers; data %s: %d train / "
                 "%d test images; device %s", cfg.model.name, cfg.model.width,
                 f"{self.record.model['parameters']:,}", len(self.record.model["basis_layers"]),
                 data.source, data.train_labels.numel(), data.test_labels.numel(), self.device)
        self.wrap()
        logger_cfg = cfg.logger if self.main_process else OmegaConf.create({"backend": "none"})
        self.tracker = Tracker(logger_cfg, config, output_dir, name=output_dir.name)
        self.record.wandb = self.tracker.info

    def restore(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.train_batches.load_state_dict(checkpoint["batches"])
        self.record.epochs = checkpoint["record"]["epochs"]
        self.record.provenance["resumed_from_epoch"] = len(self.record.epochs)
        log.info("resuming %s after epoch %d", self.output_dir, len(self.record.epochs))

    def wrap(self) -> None:
        """The module the steps run: DDP and ``torch.compile`` around the model."""
        step_model = distributed.wrap(self.model, self.device)
        self.step_model = torch.compile(step_model) if self.cfg.trainer.compile else step_model
        skip_every = self.cfg.basis.coefficient_update_every
        has_basis = bool(self.record.model["basis_layers"])
        self.skip_schedule = (CoefficientSkipSchedule(self.model, skip_every)
                              if has_basis and skip_every > 1 else None)
        self.penalty = coefficient_penalty(self.model, self.cfg.basis.coefficient_l1) \
            if has_basis else None

    def convert(self) -> None:
        """End of the dense warm-up: fit the basis layers to the trained dense weights."""
        to_basis(self.model, self.cfg, convert=True)
        self.model.to(device=self.device, memory_format=self.memory_format)
        rebind_optimizer(self.optimizer, self.model)
        self.record.model = describe(self.model)
        self.pending_conversion = False
        self.wrap()
        log.info("dense warm-up done: %d layers converted to basis form, %s parameters",
                 len(self.record.model["basis_layers"]), f"{self.record.model['parameters']:,}")

    def before_step(self) -> None:
        self.skip_schedule(self.scheduler.last_epoch)

    def run(self) -> dict[str, Any]:
        trainer, record = self.cfg.trainer, self.record
        # What scripts/analyze.py source=wandb needs to rebuild the run record.
        hardware = record.provenance["hardware"]
        self.tracker.summary({
            **{f"model/{k}": v for k, v in record.model.items() if isinstance(v, (int, float))},
            "model/basis_layer_names": " ".join(record.model["basis_layers"]),
            "provenance/commit": record.provenance["git"]["commit"],
            "provenance/date": record.provenance["date"],
            "provenance/cpu": hardware.get("cpu"), "provenance/gpu": hardware.get("gpu")})
        failed = True
        try:
            log.info("%5s %10s %9s %9s %8s %9s %8s", "epoch", "train_loss", "train_acc",
                     "test_loss", "test_acc", "lr", "time_s")
            for epoch in range(len(record.epochs) + 1, trainer.epochs + 1):
                row = run_epoch(epoch, self.step_model, self.train_batches, self.test_batches,
                                self.optimizer, self.scheduler, trainer, self.amp_dtype,
                                before_step=self.before_step if self.skip_schedule else None,
                                extra_loss=self.penalty)
                record.epochs.append(row)
                self.tracker.log(row, step=epoch)
                if self.pending_conversion and epoch == self.cfg.basis.dense_warmup_epochs:
                    self.convert()
                if epoch == trainer.epochs:
                    record.status = "complete"
                    record.final = final_metrics(record.epochs)
                    self.tracker.summary(record.final)
                if self.main_process:
                    self.save()
            failed = False
        finally:
            self.tracker.finish(failed=failed)
            # Free DDP's reducer before its process group goes: DDP sits in reference
            # cycles, so dropping the name alone leaves it to a later (too late) collection.
            self.step_model = None
            gc.collect()
            distributed.teardown()
        return record.__dict__

    def save(self) -> None:
        self.record.write(self.output_dir)
        if self.cfg.trainer.checkpoint:
            save_checkpoint(self.output_dir / CHECKPOINT, {
                "config": self.record.config, "record": self.record.__dict__,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "batches": self.train_batches.state_dict()})


def run_epoch(epoch: int, model: nn.Module, train_batches: TensorBatches,
              test_batches: TensorBatches, optimizer, scheduler, trainer: DictConfig,
              amp_dtype, **hooks) -> dict[str, Any]:
    lr = optimizer.param_groups[0]["lr"]
    progress = f"epoch {epoch}/{trainer.epochs}" if trainer.progress else None
    train = train_one_epoch(model, train_batches, optimizer, scheduler, amp_dtype=amp_dtype,
                            label_smoothing=trainer.label_smoothing, progress=progress, **hooks)
    test = evaluate(model, test_batches, amp_dtype=amp_dtype)
    log.info("%5d %10.4f %9.4f %9.4f %8.4f %9.5f %8.1f", epoch, train.loss, train.accuracy,
             test.loss, test.accuracy, lr, train.seconds)
    return {"epoch": epoch, "train_loss": train.loss, "train_accuracy": train.accuracy,
            "test_loss": test.loss, "test_accuracy": test.accuracy, "lr": lr,
            "epoch_seconds": train.seconds, "eval_seconds": test.seconds,
            "forward_seconds_per_step": train.forward_seconds,
            "backward_seconds_per_step": train.backward_seconds}


def final_metrics(epochs: list[dict]) -> dict[str, Any]:
    last = epochs[-1]
    return {"test_accuracy": last["test_accuracy"], "test_loss": last["test_loss"],
            "train_loss": last["train_loss"], "best_test_accuracy":
            max(e["test_accuracy"] for e in epochs),
            "train_seconds": sum(e["epoch_seconds"] for e in epochs),
            "mean_epoch_seconds": sum(e["epoch_seconds"] for e in epochs) / len(epochs),
            "forward_seconds_per_step": sum(e["forward_seconds_per_step"] for e in epochs)
            / len(epochs),
            "backward_seconds_per_step": sum(e["backward_seconds_per_step"] for e in epochs)
            / len(epochs)}
