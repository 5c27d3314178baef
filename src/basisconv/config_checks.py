"""The checks of a run's config: what its schema (:mod:`basisconv.config`) cannot say.

:func:`validate` refuses keys added with ``+`` that the schema lacks (nothing reads them)
and checks ranges and names (model, basis size, layer names) with one clear line each,
before anything runs (in a sweep, every job's before the first starts). Here the values'
ranges and names, group by group, and :func:`validate`, which runs every check in order;
the keys themselves are found in :mod:`basisconv.config_keys`, and the rules that need the
model judge it shaped on the meta device in :mod:`basisconv.model_checks`.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf, read_write

from .cifar10 import TEST_IMAGES, TRAIN_IMAGES
from .config import (AMP, BASIS_INIT, COMPILE_MODES, DATASETS, GRAPHING_COMPILE_MODES,
                     LOGGER_BACKENDS, LOGGER_MODE_ALIASES, LOGGER_MODES, AnalysisConfig,
                     TrainConfig)
from .config_keys import missing_values, resolve_all, unknown_keys
from .counts import count_of, count_or_fraction_problem, is_int
from .data import IMAGE_SHAPE, NUM_CLASSES, training_images
from .errors import ConfigError, warn_once
from .fitting import FIT_MODES
from .layer_options import check_basis_size
from .layers import COMBINE_MODES
from .loop import SCHEDULES, device_problem, graphed_fp16_problem
from .model_checks import check_against_the_model, check_search_size
from .models import list_models, parameter_count
from .records import unwritable_folder
from .selection import SENSITIVITY_POLICIES, check_selection

log = logging.getLogger(__name__)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choice(value: Any, choices: tuple, key: str) -> None:
    _check(value in choices, f"{key}={value!r}; choose one of {', '.join(choices)}")


def _check_seconds(value: Any, key: str, zero_means: str | None = None) -> None:
    """A finite number of seconds: > 0, or >= 0 where 0 has a meaning (``zero_means``)."""
    least = "> 0" if zero_means is None else f">= 0 (0: {zero_means})"
    _check((0 < value if zero_means is None else 0 <= value) and value < math.inf,
           f"{key} must be a number of seconds {least}, got {value}")


def machine_memory() -> int | None:
    """This machine's physical memory in bytes; None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # (no sysconf on Windows)
        return None


def _check_model_size(cfg: DictConfig) -> None:
    """A ``model.width`` this machine can build the model at. The model is built in CPU
    memory first, so float32 weights (4 bytes a parameter) beyond the machine's memory
    were torch's "can't allocate memory" trace (1e6), and channel counts beyond torch's
    64-bit sizes an overflow trace (1e18, 1e30), where the run built it. Counted on the
    meta device (:func:`~basisconv.models.parameter_count`) for widths above 1 only: at
    most 1, no layer is wider than the published model's."""
    name, width = cfg.model.name, cfg.model.width
    if width <= 1:
        return
    try:
        count = parameter_count(name, cfg.data.num_classes, width)
    except Exception:  # noqa: BLE001 - a model that cannot be shaped on the meta device
        return  # at all (one that reads files as it is built) is not judged here
    _check(count is not None, f"model.width={width} gives {name} channel counts beyond "
                              f"torch's 64-bit tensor sizes; use a smaller width (1.0 is "
                              f"the published model)")
    memory = machine_memory()
    if memory is not None and 4 * count > memory:
        raise ConfigError(f"model.width={width} gives {name} {count:,} parameters, whose "
                          f"float32 weights alone take {4 * count / 2**30:,.2f} GiB, more than "
                          f"this machine's {memory / 2**30:,.2f} GiB of memory; use a smaller "
                          f"width (1.0 is the published model)")


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
    _check(s.pretrain_epochs >= 0, f"sensitivity.pretrain_epochs must be >= 0, got {s.pretrain_epochs}")
    _check(s.finetune_epochs >= 0, f"sensitivity.finetune_epochs must be >= 0, got {s.finetune_epochs}")
    _check(0 < s.finetune_lr < math.inf,
           f"sensitivity.finetune_lr must be a finite number > 0, got {s.finetune_lr}")
    # null ("all", as for data.train_subset) holds every training image out, leaving none
    # to fine-tune on: it passed here and was a TypeError trace once the estimate began
    held_out = "a count (int >= 1) or a fraction in (0, 1) of the training images"
    _check(s.val_size is not None,
           f"sensitivity.val_size=null would hold out every training image; give {held_out}")
    _check_subset(s.val_size, "sensitivity.val_size", held_out)  # (not null, as it said)
    # a fraction of 1.0 holds every image out too: it passed here, though the range said
    # (0, 1), and was refused only as the estimate split its data (a sweep's job, not its check)
    _check(is_int(s.val_size) or s.val_size < 1,
           f"sensitivity.val_size={s.val_size} would hold out every training image; give "
           f"{held_out}")
    _check(bool(s.layers), "sensitivity.layers is empty; use [all] or layer names/patterns")
    _check(s.noise_repeats >= 0, f"sensitivity.noise_repeats must be >= 0, got {s.noise_repeats}")
    _check(s.drop_noise_layers >= 0,
           f"sensitivity.drop_noise_layers must be >= 0, got {s.drop_noise_layers}")
    _check(not s.drop_noise_layers or s.noise_repeats >= 1,
           f"sensitivity.drop_noise_layers={s.drop_noise_layers} fine-tunes layers again under "
           f"the noise repeats' batch orders, and sensitivity.noise_repeats=0 gives none; set "
           f"noise_repeats >= 1 (2 or more for a spread worth reading)")
    _check(s.workers >= 1, f"sensitivity.workers must be >= 1, got {s.workers}")
    _check(s.search_subset_size >= 1,
           f"sensitivity.search_subset_size must be >= 1, got {s.search_subset_size}")
    # here, not in the exhaustive search, which read 0 as a limit every subset count
    # exceeds, only once the run had counted the model's candidate layers (and the sweep
    # check and scripts/train.py, which do not search, took it)
    _check(s.search_max_subsets >= 1, f"sensitivity.search_max_subsets must be >= 1 (the "
                                      f"most subsets the exhaustive search may train), got "
                                      f"{s.search_max_subsets}")


def _check_held_out(cfg: DictConfig, estimate: bool) -> None:
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
    _check(1 <= held <= n - 1,
           f"sensitivity.val_size={size} would hold out {held} of the {n} training images "
           f"({said}), and the estimate holds out 1..{n - 1} (one at least left to fine-tune "
           f"on); give a count in that range or a fraction, or keep more training images")
    # one batch only where the estimate trains (a dense model pretrained here, or a
    # fine-tune): with neither (sensitivity.finetune_epochs=0 on a source checkpoint, or
    # pretrain_epochs=0 too) it makes no training batch, and such a split ran
    s, batch = cfg.sensitivity, cfg.trainer.batch_size
    trains = s.finetune_epochs > 0 or (s.pretrain_epochs > 0 and not s.source_checkpoint)
    _check(not trains or n - held >= batch,
           f"sensitivity.val_size={size} leaves {n - held} of the {n} training images ({said}) "
           f"to pretrain and fine-tune on, less than one batch of trainer.batch_size={batch}; "
           f"lower one of them, or keep more training images")


def _check_basis(cfg: DictConfig) -> None:
    """``basis.*``: its size (and the warnings a valid size or form may still need), where the
    layers start (:func:`_check_basis_start`), and how the coefficients combine and train.
    Rules that relate groups read ``selection.policy`` (a dense run, ``selection=none``,
    starts no basis layers) and ``trainer``, whose own values :func:`validate` checked
    first."""
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
    _check(b.coefficient_update_every >= 1,
           f"basis.coefficient_update_every must be >= 1, got {b.coefficient_update_every}")
    _check_choice(b.combine, COMBINE_MODES, "basis.combine")
    _check(b.coefficient_rank is None or b.coefficient_rank >= 1,
           f"basis.coefficient_rank must be null or >= 1, got {b.coefficient_rank}")
    _check(0 <= b.coefficient_l1 < math.inf,
           f"basis.coefficient_l1 must be a finite number >= 0, got {b.coefficient_l1}")


def _check_basis_start(cfg: DictConfig) -> None:
    """Where the basis layers start: ``basis.init`` and ``fit``, and the trained dense
    weights a converted start is fitted to (``source_checkpoint``, or a dense warm-up of
    ``dense_warmup_epochs``, which must leave basis epochs in ``trainer.epochs``)."""
    b = cfg.basis
    _check_choice(b.init, BASIS_INIT, "basis.init")
    _check_choice(b.get("fit", "pivots"), FIT_MODES, "basis.fit")
    _check(b.source_checkpoint is None or b.init == "convert",
           "basis.source_checkpoint is set but basis.init=scratch; use basis.init=convert")
    _check(b.dense_warmup_epochs >= 0,
           f"basis.dense_warmup_epochs must be >= 0, got {b.dense_warmup_epochs}")
    # convert fits basis layers to trained dense weights; with none given it would fit them
    # to the random initialization and train on, silently a different method from scratch
    _check(b.init != "convert" or b.source_checkpoint is not None or b.dense_warmup_epochs > 0
           or cfg.selection.policy == "none",
           "basis.init=convert fits the basis layers to trained dense weights, but none are "
           "given: set basis.source_checkpoint=<a dense run>/checkpoint.pt, or "
           "basis.dense_warmup_epochs>0 (basis=warmup), or use basis=scratch")
    # the warm-up's end fits the layers to the warmed-up weights whatever init says, so a
    # scratch record of it would be a second label for one method
    _check(b.dense_warmup_epochs == 0 or b.init == "convert" or cfg.selection.policy == "none",
           f"basis.dense_warmup_epochs={b.dense_warmup_epochs} fits the basis layers to the "
           f"warmed-up dense weights, but basis.init=scratch; use basis=warmup (basis.init="
           f"convert), or basis.dense_warmup_epochs=0")
    _check(b.dense_warmup_epochs < cfg.trainer.epochs or cfg.selection.policy == "none",
           f"basis.dense_warmup_epochs={b.dense_warmup_epochs} leaves no basis epochs in "
           f"trainer.epochs={cfg.trainer.epochs}")


def validate_trainer(cfg: DictConfig) -> None:
    """``trainer.*``, each value on its own (the rules that relate it to other groups read
    it after this: :func:`_check_basis_start`, :func:`_check_step_settings`)."""
    t = cfg.trainer
    _check(t.epochs >= 1, f"trainer.epochs must be >= 1, got {t.epochs}")
    _check(t.batch_size >= 1, f"trainer.batch_size must be >= 1, got {t.batch_size}")
    _check(t.eval_batch_size >= 1, f"trainer.eval_batch_size must be >= 1, got {t.eval_batch_size}")
    _check(0 < t.lr < math.inf, f"trainer.lr must be a finite number > 0, got {t.lr}")
    _check(0 <= t.momentum < 1, f"trainer.momentum must be in [0, 1), got {t.momentum}")
    _check(0 <= t.weight_decay < math.inf,
           f"trainer.weight_decay must be a finite number >= 0, got {t.weight_decay}")
    _check(0 <= t.warmup_fraction < 1,
           f"trainer.warmup_fraction must be in [0, 1), got {t.warmup_fraction}")
    _check(0 <= t.label_smoothing < 1,
           f"trainer.label_smoothing must be in [0, 1), got {t.label_smoothing}")
    _check_choice(t.schedule, SCHEDULES, "trainer.schedule")
    _check_choice(t.amp, AMP, "trainer.amp")
    _check_choice(t.compile_mode, COMPILE_MODES, "trainer.compile_mode")
    device = device_problem(t.device, here=False)
    _check(device is None, device)
    _check(t.threads is None or t.threads >= 1, f"trainer.threads must be >= 1, got {t.threads}")
    # torch.set_num_threads takes a C int: a larger count was an overflow trace in the set-up
    _check(t.threads is None or t.threads < 2**31,
           f"trainer.threads={t.threads} is more than torch takes (an int < 2**31)")
    _check_seconds(t.checkpoint_every_s, "trainer.checkpoint_every_s", "after every epoch")


def _check_known(cfg: DictConfig, schema_class: type) -> None:
    unknown = unknown_keys(cfg, schema_class)
    what = "is not a config key" if len(unknown) == 1 else "are not config keys"
    _check(not unknown, f"{', '.join(unknown)} {what}; nothing reads a key added with +, so "
                        f"remove it")


def _check_on_the_schema(cfg: DictConfig) -> None:
    """A run's config is built on its schema (``train_schema``, :class:`TrainConfig`), which
    checks every key's name and type as Hydra composes it. A config of the user's given
    with ``--config-dir D --config-name X`` whose defaults list leaves the schema out went
    unchecked: ``seed: abc`` was a ``TypeError`` traceback from a range check here, and an
    unknown key was said to be "added with +" (found in the stop-85 review)."""
    _check(OmegaConf.get_type(cfg) is TrainConfig,
           "the config is not built on the run's schema, so nothing checks its keys and "
           "their types: start the defaults list of the config given with --config-name with "
           "train_schema (as configs/train.yaml does), or with train to change the script's "
           "own config; from Python, compose it with hydra.compose(config_name=\"train\")")


def validate_analysis(cfg: DictConfig) -> None:
    """``scripts/analyze.py``'s config: what its schema (:class:`AnalysisConfig`) cannot
    say. An empty ``out_dir=`` wrote into the working folder and said "to /"."""
    _check_known(cfg, AnalysisConfig)
    for key in ("runs_dir", "out_dir"):
        _check(bool(cfg[key].strip()), f"{key} is empty; give a folder, or drop the override "
                                       f"for the default")
        check_no_tilde(key, cfg[key])


#: The keys that name a file or folder, each with what stands for "none given" instead of
#: an empty value. An empty one (``basis.source_checkpoint=$CKPT``, CKPT unset) was read as
#: no checkpoint (``basis=convert`` then fitted the layers to the random initialization,
#: the estimate pretrained) or as the working folder (the sensitivity cache written there).
PATH_KEYS = {"data.root": "drop the override for the default",
             "basis.source_checkpoint": "null for none",
             "sensitivity.source_checkpoint": "null for none",
             "sensitivity.restore_from": "null for none",
             "sensitivity.cache_dir": "drop the override for the default"}


def _check_paths(cfg: DictConfig) -> None:
    # data.root defaults to $CIFAR10_ROOT: set but empty (CIFAR10_ROOT=$UNSET, which the
    # Makefile's ?= keeps), there is no override to drop, and the variable is what to fix
    raw = OmegaConf.to_container(cfg.data, resolve=False).get("root")
    _check(not ("CIFAR10_ROOT" in str(raw) and os.environ.get("CIFAR10_ROOT") == ""
                and not str(cfg.data.root).strip()),
           "data.root is empty: the environment variable CIFAR10_ROOT it reads is set but "
           "empty; set it to the dataset's folder, or unset it (for ./data)")
    for key, instead in PATH_KEYS.items():
        value = OmegaConf.select(cfg, key)
        _check(value is None or bool(str(value).strip()),
               f"{key} is empty (an unset shell variable?); give a path, or {instead}")
    for key in [*PATH_KEYS, "publish"]:
        if key != "data.root":  # (read through cifar10.expanded_root)
            check_no_tilde(key, OmegaConf.select(cfg, key))


def check_no_tilde(key: str, value: Any) -> None:
    """A path that starts with ``~``: the shell does not expand it in ``key=~/...`` (a
    key with a dot is no shell variable), so ``sensitivity.cache_dir=~/cache`` would make
    a folder named ``~`` in the working folder, and ``basis.source_checkpoint=~/...``
    would not be found (only data.root expands it); Hydra's own ``hydra.run.dir`` and
    ``hydra.sweep.dir`` too (:func:`basisconv.cli.run_and_report`, before Hydra makes the
    folder)."""
    path = str(value or "")
    if path.startswith("~"):
        example = (f" (the shell leaves it in key=value); give it in full, e.g. "
                   f"{key}=$HOME{path[1:]}" if path.startswith("~/") else "; give it in full")
        raise ConfigError(f"{key}={value!r}: a path starting with ~ is not expanded here"
                          f"{example}")


def name_problem(name: str) -> str | None:
    """What is wrong with the run name ``name`` as one folder name, or None: a / would nest
    the run's folder (``outputs/x/y/<date>``) and name its wandb group ``x/y``. Said before
    Hydra makes the folder where the command line gives it
    (:func:`basisconv.cli.run_and_report`), else by :func:`validate`."""
    if "/" in name:
        return (f"name={name!r} holds a /; it names one folder (outputs/<name>/<date>) and "
                f"the run's wandb group: write it without, e.g. name={name.replace('/', '-')}")
    return None


def validate(cfg: DictConfig, *, estimate: bool = False,
             reads_selection: bool = True) -> int | None:
    """Check ranges and names that a schema cannot express; raise :class:`ConfigError`
    naming the key, the value and what is allowed. Each group's own values are checked
    before the checks that relate groups (e.g. ``basis.dense_warmup_epochs`` against
    ``trainer.epochs``), so a bad value is named itself, not through another key.
    ``estimate``: the config of ``scripts/sensitivity.py`` or ``exhaustive_search.py``
    (:func:`validate_estimate`, :func:`validate_search`), which count the candidates of
    ``sensitivity.layers`` under every policy; ``reads_selection`` and what it returns
    (the candidates counted): as :func:`check_against_the_model`."""
    _check_on_the_schema(cfg)
    missing = missing_values(cfg)
    _check(not missing, f"{', '.join(missing)} not set (a config group removed with ~, or a "
                        f"value given as ???); drop that override")
    _check_known(cfg, TrainConfig)
    resolve_all(cfg)
    _check_paths(cfg)
    _check(cfg.model.name in list_models(),
           f"model.name={cfg.model.name!r} is unknown; choose one of {', '.join(list_models())}")
    _check_run_name(cfg)
    _check(0 < cfg.model.width < math.inf,
           f"model.width must be a finite number > 0, got {cfg.model.width}")
    _check_choice(cfg.data.name, DATASETS, "data.name")
    classes = NUM_CLASSES[cfg.data.name]
    _check(cfg.data.num_classes == classes,
           f"data.num_classes={cfg.data.num_classes}, but data={cfg.data.name} has {classes} "
           f"classes; drop the override (data.num_classes={classes})")
    _check_model_size(cfg)  # (after data.num_classes: the head's size is counted too)
    _check_data(cfg)
    _check_seeds(cfg)
    validate_trainer(cfg)
    _check_training_batch(cfg, estimate)
    validate_basis(cfg)
    _check_held_out(cfg, estimate)
    candidates = check_against_the_model(cfg, estimate, reads_selection=reads_selection)
    _check_step_settings(cfg)
    _check_publish(cfg)
    _check_choice(cfg.logger.backend, LOGGER_BACKENDS, "logger.backend")
    validate_logger_mode(cfg)
    _check_seconds(cfg.logger.init_timeout_s, "logger.init_timeout_s")
    _check_seconds(cfg.logger.finish_timeout_s, "logger.finish_timeout_s", "no limit")
    return candidates


def validate_estimate(cfg: DictConfig) -> None:
    """:func:`validate` for ``scripts/sensitivity.py``, which also marks the layers the
    selection chooses."""
    validate(cfg, estimate=True)


def validate_search(cfg: DictConfig) -> None:
    """:func:`validate` for ``scripts/exhaustive_search.py``, which reads no selection key
    but ``metric``: the selection's values are checked on their own, as in every run, and
    not against the model (:func:`check_against_the_model`). The subset size is checked
    against the candidates counted there: checked only as the search started, a sweep's
    job with a size too large failed after the jobs before it had run."""
    candidates = validate(cfg, estimate=True, reads_selection=False)
    if candidates is not None:
        check_search_size(cfg, candidates)


def _check_run_name(cfg: DictConfig) -> None:
    """``name``, which names the run's folder and wandb group: an empty one would put the
    run in ``outputs/<date>``, beside every run's folder, under an empty wandb group."""
    _check(str(cfg.name).strip() != "",
           f"name={cfg.name!r} is empty; it names the run's folder (outputs/<name>/<date>) and "
           f"its wandb group: give one (name=my-run), or drop the override")
    problem = name_problem(str(cfg.name))
    _check(problem is None, problem)


def _check_data(cfg: DictConfig) -> None:
    """``data.*``'s sizes: the subsets, the generated images of ``data=stripes`` and the
    crop's padding, so that a sweep's check refuses what each job would refuse as it
    reads its data."""
    _check_subset(cfg.data.train_subset, "data.train_subset")
    _check_subset(cfg.data.test_subset, "data.test_subset")
    if cfg.data.name == "stripes":
        for key in ("synthetic_train", "synthetic_test"):
            _check(cfg.data[key] >= 1, f"data.{key} must be >= 1 with data=stripes (the number "
                                       f"of generated images), got {cfg.data[key]}")
        for subset, key in (("train_subset", "synthetic_train"),
                            ("test_subset", "synthetic_test")):
            size, n = cfg.data[subset], cfg.data[key]
            _check(not is_int(size) or size <= n,
                   f"data.{subset}={size} must select between 1 and {n} images (data.{key}="
                   f"{n} are generated): lower it, or raise data.{key}")
    elif cfg.data.verify_md5:  # the genuine CIFAR-10, whose md5 sums vouch for its sizes
        for subset, split, n in (("train_subset", "training", TRAIN_IMAGES),
                                 ("test_subset", "test", TEST_IMAGES)):
            size = cfg.data[subset]
            _check(not is_int(size) or size <= n,
                   f"data.{subset}={size} must select between 1 and {n} images (CIFAR-10's "
                   f"{split} set has {n}): lower it, or give a fraction in (0, 1]")
    # from a padding of the image's side on, a random crop can hold padding only (and a huge
    # one is an overflow trace from torch's pad in the first training step)
    side = IMAGE_SHAPE[-1]
    _check(0 <= cfg.data.crop_padding < side,
           f"data.crop_padding must be in 0..{side - 1} (less than the image's {side} pixels), "
           f"got {cfg.data.crop_padding}")


def _check_training_batch(cfg: DictConfig, estimate: bool) -> None:
    """``trainer.batch_size`` against the training images, where the config tells their
    number (:func:`~basisconv.data.training_images`): training drops the last partial
    batch, so a larger batch gives no step, refused only as the loop started (in a sweep,
    after the jobs before it had trained). Own data's size is the files' to tell. Not in
    an estimate (``estimate``), whose batch :func:`_check_held_out` checks where it trains:
    one that trains nothing (``finetune_epochs=0``, no pretraining here) ran with any
    batch."""
    known = training_images(cfg.data)
    if known is None or estimate:
        return
    (n, said), batch = known, cfg.trainer.batch_size
    _check(batch <= n, f"trainer.batch_size={batch} is larger than the {n} training images "
                       f"({said}); lower trainer.batch_size, or keep more training images")


def _check_seeds(cfg: DictConfig) -> None:
    """torch.manual_seed takes a 64-bit seed: a larger one is an OverflowError trace, and
    so is one near 2**64, from which the estimate derives seed + 1, seed + 2, ..."""
    for key in ("seed", "sensitivity.seed", "selection.seed"):
        value = OmegaConf.select(cfg, key)
        _check(value is None or -2**63 <= value < 2**63,
               f"{key}={value} does not fit in 64 bits; use a seed in [0, 2**63)")


def _check_step_settings(cfg: DictConfig) -> None:
    """``trainer`` and ``basis`` settings that are each valid but cannot make one training
    step together (CUDA graphs, ``torch.compile``, the split form, skipped coefficient
    updates, fp16)."""
    t = cfg.trainer
    _check(not (t.cuda_graphs and t.compile and t.compile_mode in GRAPHING_COMPILE_MODES),
           f"trainer.cuda_graphs=true captures the step itself; with trainer.compile=true use "
           f"trainer.compile_mode=default or max-autotune-no-cudagraphs, not {t.compile_mode}")
    # torch 2.13's Inductor miscompiles the split form's reorder (index_select) in NCHW (the
    # first compiled backward corrupted the heap, no error line), so compiled there the layer
    # runs the stacked form (kernels.split_forward): a run asking for split would not be one
    _check(not (t.compile and cfg.basis.combine == "split" and not t.channels_last
                and cfg.selection.policy != "none"),
           "basis.combine=split with trainer.compile=true in NCHW (trainer.channels_last=false) "
           "runs the stacked form (torch's compiled backward of the split form crashes there); "
           "use trainer.channels_last=true (the default) or basis.combine=stacked")
    _check(not (t.cuda_graphs and cfg.basis.coefficient_update_every > 1),
           f"trainer.cuda_graphs=true replays one fixed step, but "
           f"basis.coefficient_update_every={cfg.basis.coefficient_update_every} changes which "
           f"parameters train between steps; set one of them back (false, or 1)")
    _check(not (t.cuda_graphs and t.amp == "fp16"),
           graphed_fp16_problem("trainer.cuda_graphs=true", "trainer.amp=fp16",
                                "use trainer.amp=bf16, or trainer.cuda_graphs=false"))


def _check_publish(cfg: DictConfig) -> None:
    """``publish``: a .json file this process can write, refused before training rather
    than when the complete record is published."""
    _check(cfg.publish is None or str(cfg.publish).endswith(".json"),
           f"publish={cfg.publish!r} must name a .json file (or be null)")
    if cfg.publish is not None:
        blocker = unwritable_folder(os.path.dirname(os.path.abspath(cfg.publish)))
        if blocker is None and os.path.isdir(cfg.publish):
            blocker = f"{cfg.publish} is a folder"
        _check(blocker is None, f"publish={cfg.publish!r} cannot be written ({blocker}); "
                                f"choose another .json path (or null)")


def validate_logger_mode(cfg: DictConfig) -> None:
    """``logger.mode``, which defaults to ``$WANDB_MODE``: wandb's other names for its modes
    (``dryrun``, ``run``) become ours (``offline``, ``online``), logged; an invalid value
    that came from the environment is named as ``WANDB_MODE``."""
    mode = cfg.logger.mode
    raw = OmegaConf.to_container(cfg.logger, resolve=False).get("mode")
    from_env = "WANDB_MODE" in str(raw) and os.environ.get("WANDB_MODE") == mode
    source = f"WANDB_MODE={mode}" if from_env else f"logger.mode={mode}"
    if mode in LOGGER_MODE_ALIASES:
        with read_write(cfg):
            cfg.logger.mode = LOGGER_MODE_ALIASES[mode]
        log.info("%s is wandb's other name for %s; using logger.mode=%s", source,
                 cfg.logger.mode, cfg.logger.mode)
        return
    choices = f"choose one of {', '.join(LOGGER_MODES)}"
    _check(mode in LOGGER_MODES,
           f"WANDB_MODE={mode!r} (the environment variable logger.mode reads); {choices}, or "
           f"unset it" if from_env else f"logger.mode={mode!r}; {choices}")
