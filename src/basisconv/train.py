"""The training loop: SGD with momentum and weight decay under a one-cycle or cosine
schedule, on CIFAR-10 held as tensors on the training device.

``fit(cfg)`` takes the composed Hydra config (see ``configs/``) and returns the per-epoch
history. Speed options (``channels_last``, bf16/fp16 autocast, ``torch.compile``) change
how fast the same computation runs, never what is trained, so baseline and basis models
stay comparable.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from .data import CIFAR10, TensorBatches, load_cifar10, stratified_subset
from .errors import ConfigError
from .models import build_model

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


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    seconds: float


def train_one_epoch(model: nn.Module, batches: TensorBatches, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, *, amp_dtype=None,
                    label_smoothing: float = 0.0, progress: str | None = None) -> EpochStats:
    model.train()
    device = batches.images.device
    # Sums stay on the device: a .item() per step would synchronize a GPU every step.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    for images, labels in tqdm(batches, desc=progress, leave=False, disable=None if progress else True):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * labels.numel()
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.numel()
    loss_value = loss_sum.item() / seen
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"training loss became {loss_value}; lower trainer.lr "
                                 f"or check the data")
    return EpochStats(loss_value, correct.item() / seen, time.perf_counter() - start)


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
    n = batches.labels.numel()
    return EpochStats(loss_sum.item() / n, correct.item() / n, time.perf_counter() - start)


def prepare_data(data_cfg: DictConfig, seed: int) -> CIFAR10:
    """Load CIFAR-10 and apply the stratified ``train_subset`` / ``test_subset``."""
    data = load_cifar10(data_cfg.root, verify_md5=data_cfg.verify_md5,
                        download=data_cfg.download)
    if data_cfg.train_subset is not None:
        keep = stratified_subset(data.train_labels, data_cfg.train_subset, seed)
        data.train_images, data.train_labels = data.train_images[keep], data.train_labels[keep]
    if data_cfg.test_subset is not None:
        keep = stratified_subset(data.test_labels, data_cfg.test_subset, seed)
        data.test_images, data.test_labels = data.test_images[keep], data.test_labels[keep]
    return data


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fit(cfg: DictConfig) -> list[dict[str, Any]]:
    """Train ``cfg.model`` on ``cfg.data`` as ``cfg.trainer`` says; return one dict of
    metrics per epoch (also logged as a compact table)."""
    trainer = cfg.trainer
    if trainer.epochs < 1:
        raise ConfigError(f"trainer.epochs must be >= 1, got {trainer.epochs}")
    if trainer.amp not in AMP_DTYPES:
        raise ConfigError(f"trainer.amp={trainer.amp!r}; choose one of {list(AMP_DTYPES)}")
    if trainer.threads:
        torch.set_num_threads(trainer.threads)
    device = resolve_device(trainer.device)
    seed_everything(cfg.seed, trainer.deterministic)
    memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format

    data = prepare_data(cfg.data, cfg.seed).to(device)
    model = build_model(cfg.model.name, num_classes=cfg.data.num_classes, width=cfg.model.width)
    model = model.to(device=device, memory_format=memory_format)
    log.info("model %s (width %s): %s parameters; data %s: %d train / %d test images; "
             "device %s", cfg.model.name, cfg.model.width, f"{count_parameters(model):,}",
             data.source, data.train_labels.numel(), data.test_labels.numel(), device)

    train_batches = TensorBatches(data.train_images, data.train_labels, trainer.batch_size,
                                  train=True, seed=cfg.seed, crop_padding=cfg.data.crop_padding,
                                  flip=cfg.data.flip, memory_format=memory_format)
    test_batches = TensorBatches(data.test_images, data.test_labels, trainer.eval_batch_size,
                                 train=False, memory_format=memory_format)
    optimizer = build_optimizer(model, trainer)
    scheduler = build_scheduler(optimizer, trainer, len(train_batches))
    step_model = torch.compile(model) if trainer.compile else model
    amp_dtype = AMP_DTYPES[trainer.amp]

    history = []
    log.info("%5s %10s %9s %9s %8s %9s %8s", "epoch", "train_loss", "train_acc",
             "test_loss", "test_acc", "lr", "time_s")
    for epoch in range(1, trainer.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        progress = f"epoch {epoch}/{trainer.epochs}" if trainer.progress else None
        train = train_one_epoch(step_model, train_batches, optimizer, scheduler,
                                amp_dtype=amp_dtype, label_smoothing=trainer.label_smoothing,
                                progress=progress)
        test = evaluate(step_model, test_batches, amp_dtype=amp_dtype)
        row = {"epoch": epoch, "train_loss": train.loss, "train_accuracy": train.accuracy,
               "test_loss": test.loss, "test_accuracy": test.accuracy, "lr": lr,
               "epoch_seconds": train.seconds, "eval_seconds": test.seconds}
        history.append(row)
        log.info("%5d %10.4f %9.4f %9.4f %8.4f %9.5f %8.1f", epoch, train.loss, train.accuracy,
                 test.loss, test.accuracy, lr, train.seconds)
    return history
