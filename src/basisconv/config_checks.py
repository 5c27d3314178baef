"""The checks of a run's config: what its schema (:mod:`basisconv.config`) cannot say.

:func:`validate` refuses keys added with ``+`` that the schema lacks (nothing reads them)
and checks ranges and names (model, basis size, layer names) with one clear line each,
before anything runs (in a sweep, every job's before the first starts). Here
:func:`validate`, which runs every check in order, and the checks of the config's keys,
paths, names, ``publish`` and logger; the keys themselves are found in
:mod:`basisconv.config_keys`, the values' ranges group by group are judged in
:mod:`basisconv.range_checks`, and the rules that need the model judge it shaped on the
meta device in :mod:`basisconv.model_checks`.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf, read_write

from .config import (DATASETS, LOGGER_BACKENDS, LOGGER_MODE_ALIASES, LOGGER_MODES,
                     AnalysisConfig, TrainConfig)
from .config_keys import missing_values, resolve_all, unknown_keys
from .data import NUM_CLASSES
from .errors import ConfigError
from .model_checks import check_against_the_model, check_model_size, check_search_size
from .models import list_models
from .range_checks import (check, check_choice, check_data, check_held_out, check_seconds,
                           check_seeds, check_step_settings, check_training_batch,
                           validate_basis, validate_trainer)
from .records import unwritable_folder
from .tracking import project_problem

log = logging.getLogger(__name__)


def _check_known(cfg: DictConfig, schema_class: type) -> None:
    unknown = unknown_keys(cfg, schema_class)
    what = "is not a config key" if len(unknown) == 1 else "are not config keys"
    check(not unknown, f"{', '.join(unknown)} {what}; nothing reads a key added with +, so "
                       f"remove it")


def _check_on_the_schema(cfg: DictConfig) -> None:
    """A run's config is built on its schema (``train_schema``, :class:`TrainConfig`), which
    checks every key's name and type as Hydra composes it. A config of the user's given
    with ``--config-dir D --config-name X`` whose defaults list leaves the schema out went
    unchecked: ``seed: abc`` was a ``TypeError`` traceback from a range check here, and an
    unknown key was said to be "added with +" (found in the stop-85 review)."""
    check(OmegaConf.get_type(cfg) is TrainConfig,
          "the config is not built on the run's schema, so nothing checks its keys and "
          "their types: start the defaults list of the config given with --config-name with "
          "train_schema (as configs/train.yaml does), or with train to change the script's "
          "own config; from Python, compose it with hydra.compose(config_name=\"train\")")


def validate_analysis(cfg: DictConfig) -> None:
    """``scripts/analyze.py``'s config: what its schema (:class:`AnalysisConfig`) cannot
    say. An empty ``out_dir=`` wrote into the working folder and said "to /". With
    ``source=wandb``, ``wandb.project`` as the training's ``logger.project`` is checked
    (:func:`validate_logger_project`): an empty or refused name was found only once wandb
    was asked (after its login), and ``a/b`` was read as entity a's project b, beside
    ``wandb.entity``."""
    _check_known(cfg, AnalysisConfig)
    for key in ("runs_dir", "out_dir"):
        check(bool(cfg[key].strip()), f"{key} is empty; give a folder, or drop the override "
                                      f"for the default")
        check_no_tilde(key, cfg[key])
    if cfg.source == "wandb":
        entity, slash, name = str(cfg.wandb.project).partition("/")
        # (wandb's Api read a/b as entity a's project b, wandb.entity aside; a/b/c is
        # neither, and wandb.project=b/c would be refused again)
        as_entity = (f" (entity {entity}'s project {name}: wandb.entity={entity} "
                     f"wandb.project={name})" if slash and entity and name and "/" not in name
                     else "")
        _check_wandb_project(cfg.wandb, "wandb.project",
                             "no wandb project is named to read the runs of",
                             f"and no project of that name holds runs to read{as_entity}")


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
    check(not ("CIFAR10_ROOT" in str(raw) and os.environ.get("CIFAR10_ROOT") == ""
               and not str(cfg.data.root).strip()),
          "data.root is empty: the environment variable CIFAR10_ROOT it reads is set but "
          "empty; set it to the dataset's folder, or unset it (for ./data)")
    for key, instead in PATH_KEYS.items():
        value = OmegaConf.select(cfg, key)
        check(value is None or bool(str(value).strip()),
              f"{key} is empty (an unset shell variable?); give a path, or {instead}")
    for key in [*PATH_KEYS, "publish"]:
        if key != "data.root":  # (read through cifar10_location.expanded_root)
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
    check(not missing, f"{', '.join(missing)} not set (a config group removed with ~, or a "
                       f"value given as ???); drop that override")
    _check_known(cfg, TrainConfig)
    resolve_all(cfg)
    _check_paths(cfg)
    check(cfg.model.name in list_models(),
          f"model.name={cfg.model.name!r} is unknown; choose one of {', '.join(list_models())}")
    _check_run_name(cfg)
    check(0 < cfg.model.width < math.inf,
          f"model.width must be a finite number > 0, got {cfg.model.width}")
    check_choice(cfg.data.name, DATASETS, "data.name")
    classes = NUM_CLASSES[cfg.data.name]
    check(cfg.data.num_classes == classes,
          f"data.num_classes={cfg.data.num_classes}, but data={cfg.data.name} has {classes} "
          f"classes; drop the override (data.num_classes={classes})")
    check_model_size(cfg)  # (after data.num_classes: the head's size is counted too)
    check_data(cfg)
    check_seeds(cfg)
    validate_trainer(cfg)
    check_training_batch(cfg, estimate)
    validate_basis(cfg)
    check_held_out(cfg, estimate)
    candidates = check_against_the_model(cfg, estimate, reads_selection=reads_selection)
    check_step_settings(cfg)
    _check_publish(cfg)
    check_choice(cfg.logger.backend, LOGGER_BACKENDS, "logger.backend")
    validate_logger_mode(cfg)
    validate_logger_project(cfg)
    check_seconds(cfg.logger.init_timeout_s, "logger.init_timeout_s")
    check_seconds(cfg.logger.finish_timeout_s, "logger.finish_timeout_s", "no limit")
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
    check(str(cfg.name).strip() != "",
          f"name={cfg.name!r} is empty; it names the run's folder (outputs/<name>/<date>) and "
          f"its wandb group: give one (name=my-run), or drop the override")
    problem = name_problem(str(cfg.name))
    check(problem is None, problem)


def _check_publish(cfg: DictConfig) -> None:
    """``publish``: a .json file this process can write, refused before training rather
    than when the complete record is published."""
    check(cfg.publish is None or str(cfg.publish).endswith(".json"),
          f"publish={cfg.publish!r} must name a .json file (or be null)")
    if cfg.publish is not None:
        blocker = unwritable_folder(os.path.dirname(os.path.abspath(cfg.publish)))
        if blocker is None and os.path.isdir(cfg.publish):
            blocker = f"{cfg.publish} is a folder"
        check(blocker is None, f"publish={cfg.publish!r} cannot be written ({blocker}); "
                               f"choose another .json path (or null)")


def validate_logger_mode(cfg: DictConfig) -> None:
    """``logger.mode``, which defaults to ``$WANDB_MODE``: wandb's other names for its modes
    (``dryrun``, ``run``) become ours (``offline``, ``online``), logged; an invalid value
    that came from the environment is named as ``WANDB_MODE``."""
    mode = cfg.logger.mode
    from_env = _from_environment(cfg.logger, "mode", "WANDB_MODE")
    source = f"WANDB_MODE={mode}" if from_env else f"logger.mode={mode}"
    if mode in LOGGER_MODE_ALIASES:
        with read_write(cfg):
            cfg.logger.mode = LOGGER_MODE_ALIASES[mode]
        log.info("%s is wandb's other name for %s; using logger.mode=%s", source,
                 cfg.logger.mode, cfg.logger.mode)
        return
    choices = f"choose one of {', '.join(LOGGER_MODES)}"
    check(mode in LOGGER_MODES,
          f"WANDB_MODE={mode!r} (the environment variable logger.mode reads); {choices}, or "
          f"unset it" if from_env else f"logger.mode={mode!r}; {choices}")


def validate_logger_project(cfg: DictConfig) -> None:
    """``logger.project``, which defaults to ``$WANDB_PROJECT`` (else basisconv), checked
    before any run trains: a name wandb refuses (:func:`basisconv.tracking.project_problem`)
    is only a warning at ``wandb.init``, so a sweep with a typo trained every job without
    wandb. An empty one is refused too: wandb takes it (an offline run keeps project '';
    the default wandb documents, named after the git folder or "uncategorized", is for no
    project given), so a sweep's runs would land outside the project. Unread, so
    unchecked, with wandb off
    (``logger=none``, ``logger.mode=disabled``)."""
    if cfg.logger.backend != "wandb" or cfg.logger.mode == "disabled":
        return
    _check_wandb_project(cfg.logger, "logger.project",
                         "wandb takes it, and the runs would land outside any named project",
                         "and every run would train without wandb")


def _check_wandb_project(group: DictConfig, key: str, if_empty: str, if_refused: str) -> None:
    """``group.project`` (``key``, which defaults to ``$WANDB_PROJECT``) neither empty nor
    refused by wandb (:func:`basisconv.tracking.project_problem`); ``if_empty`` and
    ``if_refused`` say what such a name would do. One rule for the training's project and
    the analysis' (``source=wandb``), each bad value named as the user set it."""
    project = str(group.project)
    if _from_environment(group, "project", "WANDB_PROJECT"):
        source = f"WANDB_PROJECT={project!r} (the environment variable {key} reads)"
        fix = "set it to a project name, or unset it (for basisconv)"
    else:
        source = f"{key}={project!r}"
        fix = f"give a project name ({key}=my-project), or drop the override"
    check(project.strip() != "", f"{source} is empty: {if_empty}; {fix}")
    problem = project_problem(project)
    check(problem is None, f"{source} is refused by wandb ({problem}), {if_refused}; {fix}")


def _from_environment(group: DictConfig, key: str, variable: str) -> bool:
    """Whether ``group.key`` holds the environment variable ``variable``'s value through
    its default (``${oc.env:VARIABLE,...}``), so that a bad value is named by the variable
    the user set, not by a key they never typed."""
    raw = OmegaConf.to_container(group, resolve=False).get(key)
    return variable in str(raw) and os.environ.get(variable) == group[key]
