"""The range rules of a run's config, group by group: each value of ``trainer``, ``data``,
``sensitivity`` and ``basis`` on its own (and the seeds), then the rules that relate groups
(held-out images and batch size against the training images, the basis' start against the
epochs, the step settings that cannot train together); and the small helpers every such
rule is written with (:func:`check`, :func:`check_choice`, :func:`check_seconds`).
Apart from :mod:`basisconv.config_checks`, which runs them in order in
:func:`~basisconv.config_checks.validate` beside the checks of the config's keys, paths and
names, as these read values only: none builds a model (:mod:`basisconv.model_checks`) or
calls back into the order they are run in.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .cifar10 import TEST_IMAGES, TRAIN_IMAGES
from .config import AMP, BASIS_INIT, COMPILE_MODES, GRAPHING_COMPILE_MODES
from .counts import count_of, count_or_fraction_problem, is_int
from .data import IMAGE_SHAPE, training_images
from .errors import ConfigError, warn_once
from .execution import device_problem
from .fitting import FIT_MODES
from .layer_options import check_basis_size
from .layers import COMBINE_MODES
from .loop import graphed_fp16_problem
from .optim import SCHEDULES
from .selection_checks import SENSITIVITY_POLICIES, check_selection

log = logging.getLogger(__name__)


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_choice(value: Any, choices: tuple, key: str) -> None:
    check(value in choices, f"{key}={value!r}; choose one of {', '.join(choices)}")


def check_seconds(value: Any, key: str, zero_means: str | None = None) -> None:
    """A finite number of seconds: > 0, or >= 0 where 0 has a meaning (``zero_means``)."""
    least = "> 0" if zero_means is None else f">= 0 (0: {zero_means})"
    check((0 < value if zero_means is None else 0 <= value) and value < math.inf,
          f"{key} must be a number of seconds {least}, got {value}")


def _check_subset(value: Any, key: str,
                  use: str = "null (all), a count (int >= 1) or a fraction in (0, 1]") -> None:
    problem = None if value is None else count_or_fraction_problem(value)
    if problem:
        raise ConfigError(f"{key}={value!r} {problem}; use {use}")


def validate_basis(cfg: DictConfig) -> None:
    """The keys of the basis method, group by group (the first problem found is the one
    told): which layers convert (``selection``), the estimate that ranks them
    (``sensitivity``), and the basis they take (``basis``)."""
    check_selection(cfg.selection, every_key=True)
    _check_sensitivity(cfg.sensitivity)
    _check_basis(cfg)


def _check_sensitivity(s: DictConfig) -> None:
    """``sensitivity.*``: the estimate's schedule, held-out images, noise repeats and the
    exhaustive search's size."""
    check(s.pretrain_epochs >= 0, f"sensitivity.pretrain_epochs must be >= 0, got {s.pretrain_epochs}")
    check(s.finetune_epochs >= 0, f"sensitivity.finetune_epochs must be >= 0, got {s.finetune_epochs}")
    check(0 < s.finetune_lr < math.inf,
          f"sensitivity.finetune_lr must be a finite number > 0, got {s.finetune_lr}")
    # null ("all", as for data.train_subset) holds every training image out, leaving none
    # to fine-tune on: it passed here and was a TypeError trace once the estimate began
    held_out = "a count (int >= 1) or a fraction in (0, 1) of the training images"
    check(s.val_size is not None,
          f"sensitivity.val_size=null would hold out every training image; give {held_out}")
    _check_subset(s.val_size, "sensitivity.val_size", held_out)  # (not null, as it said)
    # a fraction of 1.0 holds every image out too: it passed here, though the range said
    # (0, 1), and was refused only as the estimate split its data (a sweep's job, not its check)
    check(is_int(s.val_size) or s.val_size < 1,
          f"sensitivity.val_size={s.val_size} would hold out every training image; give "
          f"{held_out}")
    check(bool(s.layers), "sensitivity.layers is empty; use [all] or layer names/patterns")
    check(s.noise_repeats >= 0, f"sensitivity.noise_repeats must be >= 0, got {s.noise_repeats}")
    check(s.drop_noise_layers >= 0,
          f"sensitivity.drop_noise_layers must be >= 0, got {s.drop_noise_layers}")
    check(not s.drop_noise_layers or s.noise_repeats >= 1,
          f"sensitivity.drop_noise_layers={s.drop_noise_layers} fine-tunes layers again under "
          f"the noise repeats' batch orders, and sensitivity.noise_repeats=0 gives none; set "
          f"noise_repeats >= 1 (2 or more for a spread worth reading)")
    check(s.workers >= 1, f"sensitivity.workers must be >= 1, got {s.workers}")
    check(s.search_subset_size >= 1,
          f"sensitivity.search_subset_size must be >= 1, got {s.search_subset_size}")
    # here, not in the exhaustive search, which read 0 as a limit every subset count
    # exceeds, only once the run had counted the model's candidate layers (and the sweep
    # check and scripts/train.py, which do not search, took it)
    check(s.search_max_subsets >= 1, f"sensitivity.search_max_subsets must be >= 1 (the "
                                     f"most subsets the exhaustive search may train), got "
                                     f"{s.search_max_subsets}")


def check_held_out(cfg: DictConfig, estimate: bool) -> None:
    """``sensitivity.val_size`` against the training images ``data.*`` gives, where the
    config tells their number (:func:`~basisconv.data.training_images`), in a run that
    estimates (``estimate``, or a sensitivity policy): it must leave one batch of
    ``trainer.batch_size`` to pretrain and fine-tune on, where the estimate trains at all.
    Refused only as the estimate split its data (the default 5000 of ``data=stripes``'
    1000), a sweep's jobs before it had trained. A run that estimates nothing reads neither."""
    known = training_images(cfg.data)
    if not (estimate or cfg.selection.policy in SENSITIVITY_POLICIES) or known is None:
        return
    (n, said), size = known, cfg.sensitivity.val_size
    if n < 1:
        return  # (the data's own refusal names it)
    held = count_of(n, size)
    check(1 <= held <= n - 1,
          f"sensitivity.val_size={size} would hold out {held} of the {n} training images "
          f"({said}), and the estimate holds out 1..{n - 1} (one at least left to fine-tune "
          f"on); give a count in that range or a fraction, or keep more training images")
    # one batch only where the estimate trains (a dense model pretrained here, or a
    # fine-tune): with neither (sensitivity.finetune_epochs=0 on a source checkpoint, or
    # pretrain_epochs=0 too) it makes no training batch, and such a split ran
    s, batch = cfg.sensitivity, cfg.trainer.batch_size
    trains = s.finetune_epochs > 0 or (s.pretrain_epochs > 0 and not s.source_checkpoint)
    check(not trains or n - held >= batch,
          f"sensitivity.val_size={size} leaves {n - held} of the {n} training images ({said}) "
          f"to pretrain and fine-tune on, less than one batch of trainer.batch_size={batch}; "
          f"lower one of them, or keep more training images")


def _check_basis(cfg: DictConfig) -> None:
    """``basis.*``: its size (and the warnings a valid size or form may still need), where the
    layers start (:func:`_check_basis_start`), and how the coefficients combine and train.
    Rules that relate groups read ``selection.policy`` (a dense run, ``selection=none``,
    starts no basis layers) and ``trainer``, whose own values
    :func:`~basisconv.config_checks.validate` checked first."""
    b = cfg.basis
    try:
        check_basis_size(b.size, "basis.size")
    except TypeError as err:
        raise ConfigError(str(err)) from None
    if b.size == 1 and not isinstance(b.size, float) and cfg.selection.policy != "none":
        # an easy slip: the command line reads 1 as an int, a count
        warn_once(log, "basis.size=1 is a count: one basis filter in each converted layer; "
                       "for all of a layer's filters (full rank) give basis.size=1.0")
    if b.combine == "auto" and cfg.trainer.deterministic and cfg.selection.policy != "none":
        # (the choice is the fastest form measured in this process: another run, or this
        # one resumed, may choose another, whose rounding differs)
        warn_once(log, "basis.combine=auto chooses each layer's form by timing it, so this "
                       "deterministic run may not repeat exactly (a resumed run may choose "
                       "differently); name a form (basis.combine=stacked) for runs that must")
    _check_basis_start(cfg)
    check(b.coefficient_update_every >= 1,
          f"basis.coefficient_update_every must be >= 1, got {b.coefficient_update_every}")
    check_choice(b.combine, COMBINE_MODES, "basis.combine")
    check(b.coefficient_rank is None or b.coefficient_rank >= 1,
          f"basis.coefficient_rank must be null or >= 1, got {b.coefficient_rank}")
    check(0 <= b.coefficient_l1 < math.inf,
          f"basis.coefficient_l1 must be a finite number >= 0, got {b.coefficient_l1}")


def _check_basis_start(cfg: DictConfig) -> None:
    """Where the basis layers start: ``basis.init`` and ``fit``, and the trained dense
    weights a converted start is fitted to (``source_checkpoint``, or a dense warm-up of
    ``dense_warmup_epochs``, which must leave basis epochs in ``trainer.epochs``)."""
    b = cfg.basis
    check_choice(b.init, BASIS_INIT, "basis.init")
    check_choice(b.get("fit", "pivots"), FIT_MODES, "basis.fit")
    check(b.source_checkpoint is None or b.init == "convert",
          "basis.source_checkpoint is set but basis.init=scratch; use basis.init=convert")
    check(b.dense_warmup_epochs >= 0,
          f"basis.dense_warmup_epochs must be >= 0, got {b.dense_warmup_epochs}")
    # convert fits basis layers to trained dense weights; with none given it would fit them
    # to the random initialization and train on, silently a different method from scratch
    check(b.init != "convert" or b.source_checkpoint is not None or b.dense_warmup_epochs > 0
          or cfg.selection.policy == "none",
          "basis.init=convert fits the basis layers to trained dense weights, but none are "
          "given: set basis.source_checkpoint=<a dense run>/checkpoint.pt, or "
          "basis.dense_warmup_epochs>0 (basis=warmup), or use basis=scratch")
    # the warm-up's end fits the layers to the warmed-up weights whatever init says, so a
    # scratch record of it would be a second label for one method
    check(b.dense_warmup_epochs == 0 or b.init == "convert" or cfg.selection.policy == "none",
          f"basis.dense_warmup_epochs={b.dense_warmup_epochs} fits the basis layers to the "
          f"warmed-up dense weights, but basis.init=scratch; use basis=warmup (basis.init="
          f"convert), or basis.dense_warmup_epochs=0")
    check(b.dense_warmup_epochs < cfg.trainer.epochs or cfg.selection.policy == "none",
          f"basis.dense_warmup_epochs={b.dense_warmup_epochs} leaves no basis epochs in "
          f"trainer.epochs={cfg.trainer.epochs}")


#: The longest ``trainer.collective_timeout_s`` taken: a year (a ``timedelta`` of 1e15 s
#: overflows, and no wait of a year is meant).
MAX_COLLECTIVE_TIMEOUT_S = 365 * 24 * 3600


def validate_trainer(cfg: DictConfig) -> None:
    """``trainer.*``, each value on its own (the rules that relate it to other groups read
    it after this: :func:`_check_basis_start`, :func:`check_step_settings`)."""
    t = cfg.trainer
    check(t.epochs >= 1, f"trainer.epochs must be >= 1, got {t.epochs}")
    check(t.batch_size >= 1, f"trainer.batch_size must be >= 1, got {t.batch_size}")
    check(t.eval_batch_size >= 1, f"trainer.eval_batch_size must be >= 1, got {t.eval_batch_size}")
    check(0 < t.lr < math.inf, f"trainer.lr must be a finite number > 0, got {t.lr}")
    check(0 <= t.momentum < 1, f"trainer.momentum must be in [0, 1), got {t.momentum}")
    check(0 <= t.weight_decay < math.inf,
          f"trainer.weight_decay must be a finite number >= 0, got {t.weight_decay}")
    check(0 <= t.warmup_fraction < 1,
          f"trainer.warmup_fraction must be in [0, 1), got {t.warmup_fraction}")
    check(0 <= t.label_smoothing < 1,
          f"trainer.label_smoothing must be in [0, 1), got {t.label_smoothing}")
    check_choice(t.schedule, SCHEDULES, "trainer.schedule")
    check_choice(t.amp, AMP, "trainer.amp")
    check_choice(t.compile_mode, COMPILE_MODES, "trainer.compile_mode")
    device = device_problem(t.device, here=False)
    check(device is None, device)
    check(t.threads is None or t.threads >= 1, f"trainer.threads must be >= 1, got {t.threads}")
    # torch.set_num_threads takes a C int: a larger count was an overflow trace in the set-up
    check(t.threads is None or t.threads < 2**31,
          f"trainer.threads={t.threads} is more than torch takes (an int < 2**31)")
    check_seconds(t.checkpoint_every_s, "trainer.checkpoint_every_s", "after every epoch")
    check_seconds(t.collective_timeout_s, "trainer.collective_timeout_s")
    # (found in review: 1e15 passed, and torch's timedelta of it overflowed in a trace)
    check(t.collective_timeout_s <= MAX_COLLECTIVE_TIMEOUT_S,
          f"trainer.collective_timeout_s={t.collective_timeout_s:g} is more than a process "
          f"group takes; give at most {MAX_COLLECTIVE_TIMEOUT_S:g} s (a year)")


def check_data(cfg: DictConfig) -> None:
    """``data.*``'s sizes: the subsets, the generated images of ``data=stripes`` and the
    crop's padding, so that a sweep's check refuses what each job would refuse as it
    reads its data."""
    _check_subset(cfg.data.train_subset, "data.train_subset")
    _check_subset(cfg.data.test_subset, "data.test_subset")
    if cfg.data.name == "stripes":
        for key in ("synthetic_train", "synthetic_test"):
            check(cfg.data[key] >= 1, f"data.{key} must be >= 1 with data=stripes (the number "
                                      f"of generated images), got {cfg.data[key]}")
        for subset, key in (("train_subset", "synthetic_train"),
                            ("test_subset", "synthetic_test")):
            size, n = cfg.data[subset], cfg.data[key]
            check(not is_int(size) or size <= n,
                  f"data.{subset}={size} must select between 1 and {n} images (data.{key}="
                  f"{n} are generated): lower it, or raise data.{key}")
    elif cfg.data.verify_md5:  # the genuine CIFAR-10, whose md5 sums vouch for its sizes
        for subset, split, n in (("train_subset", "training", TRAIN_IMAGES),
                                 ("test_subset", "test", TEST_IMAGES)):
            size = cfg.data[subset]
            check(not is_int(size) or size <= n,
                  f"data.{subset}={size} must select between 1 and {n} images (CIFAR-10's "
                  f"{split} set has {n}): lower it, or give a fraction in (0, 1]")
    # from a padding of the image's side on, a random crop can hold padding only (and a huge
    # one is an overflow trace from torch's pad in the first training step)
    side = IMAGE_SHAPE[-1]
    check(0 <= cfg.data.crop_padding < side,
          f"data.crop_padding must be in 0..{side - 1} (less than the image's {side} pixels), "
          f"got {cfg.data.crop_padding}")


def check_training_batch(cfg: DictConfig, estimate: bool) -> None:
    """``trainer.batch_size`` against the training images, where the config tells their
    number (:func:`~basisconv.data.training_images`): training drops the last partial
    batch, so a larger batch gives no step, refused only as the loop started (in a sweep,
    after the jobs before it had trained). Own data's size is the files' to tell. Not in
    an estimate (``estimate``), whose batch :func:`check_held_out` checks where it trains:
    one that trains nothing (``finetune_epochs=0``, no pretraining here) ran with any
    batch."""
    known = training_images(cfg.data)
    if known is None or estimate:
        return
    (n, said), batch = known, cfg.trainer.batch_size
    check(batch <= n, f"trainer.batch_size={batch} is larger than the {n} training images "
                      f"({said}); lower trainer.batch_size, or keep more training images")


def check_seeds(cfg: DictConfig) -> None:
    """torch.manual_seed takes a 64-bit seed: a larger one is an OverflowError trace, and
    so is one near 2**64, from which the estimate derives seed + 1, seed + 2, ..."""
    for key in ("seed", "sensitivity.seed", "selection.seed"):
        value = OmegaConf.select(cfg, key)
        check(value is None or -2**63 <= value < 2**63,
              f"{key}={value} does not fit in 64 bits; use a seed in [0, 2**63)")


def check_step_settings(cfg: DictConfig) -> None:
    """``trainer`` and ``basis`` settings that are each valid but cannot make one training
    step together (CUDA graphs, ``torch.compile``, the split form, skipped coefficient
    updates, fp16)."""
    t = cfg.trainer
    check(not (t.cuda_graphs and t.compile and t.compile_mode in GRAPHING_COMPILE_MODES),
          f"trainer.cuda_graphs=true captures the step itself; with trainer.compile=true use "
          f"trainer.compile_mode=default or max-autotune-no-cudagraphs, not {t.compile_mode}")
    # torch 2.13's Inductor miscompiles the split form's reorder (index_select) in NCHW (the
    # first compiled backward corrupted the heap, no error line), so compiled there the layer
    # runs the stacked form (kernels.split_forward): a run asking for split would not be one
    check(not (t.compile and cfg.basis.combine == "split" and not t.channels_last
               and cfg.selection.policy != "none"),
          "basis.combine=split with trainer.compile=true in NCHW (trainer.channels_last=false) "
          "runs the stacked form (torch's compiled backward of the split form crashes there); "
          "use trainer.channels_last=true (the default) or basis.combine=stacked")
    check(not (t.cuda_graphs and cfg.basis.coefficient_update_every > 1),
          f"trainer.cuda_graphs=true replays one fixed step, but "
          f"basis.coefficient_update_every={cfg.basis.coefficient_update_every} changes which "
          f"parameters train between steps; set one of them back (false, or 1)")
    check(not (t.cuda_graphs and t.amp == "fp16"),
          graphed_fp16_problem("trainer.cuda_graphs=true", "trainer.amp=fp16",
                               "use trainer.amp=bf16, or trainer.cuda_graphs=false"))
