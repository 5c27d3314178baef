"""What a training step updates the model with: the SGD optimizer (its state loaded from a
checkpoint without losing this device's implementation), the fp16 loss scaler kept with
it, and the per-step learning-rate schedule (the rules ``trainer.schedule`` names, and
whether a checkpoint's schedule state is of the same rule).

Apart from the epochs (:mod:`basisconv.loop`), which take the optimizer, scaler and
schedule as arguments: a run builds and resumes them once, and the config checks read
:data:`SCHEDULES`; nothing here needs the device set-up (:mod:`basisconv.execution`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from omegaconf import DictConfig

from .errors import ConfigError


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


def load_scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict) -> None:
    """``scheduler.load_state_dict(state)``, refusing (``ValueError``) a state that does not
    say where the schedule is: torch's loading only updates the scheduler's attributes, so
    an empty or partial state (edited by hand) restarted the schedule at its first step
    unsaid (found in review). The rest of it, the config rebuilds the same."""
    parts = [state, *(state.get("_schedulers") or [])] if isinstance(state, dict) else []
    if any(isinstance(part, dict) and "last_epoch" not in part for part in parts):
        raise ValueError("the schedule's state does not say which step it is at (it lacks "
                         "last_epoch)")
    scheduler.load_state_dict(state)


def scheduler_state_fits(scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict) -> bool:
    """Whether a checkpoint's schedule ``state`` is of ``scheduler``'s rule: one-cycle
    without a warm-up (or over one step) is a LinearLR since 0aab165, which takes an older
    OneCycleLR's state without a word and then follows neither rule. (A state that is no
    object is left to loading it, which refuses it.)"""
    return not isinstance(state, dict) or "total_steps" not in state or isinstance(
        scheduler, torch.optim.lr_scheduler.OneCycleLR)
