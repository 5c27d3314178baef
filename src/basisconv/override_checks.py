"""The command line's overrides, checked before Hydra composes the config, each problem
as one line naming the override and the fix: one without a key (``=3``), a config group
given a list (``model=[resnet8,resnet20]``), chosen twice (``experiment=basis_all
experiment=baseline``) or a value none of its configs (``model=null``), a run name that
cannot name one folder, a key the config needs deleted (``~seed``); and what the
project's ``configs/`` offers (:data:`CONFIGS`, a group's configs and keys). Apart from
:mod:`basisconv.hydra_errors`, which turns an error Hydra or OmegaConf has raised into one
line (and reads a group's configs and keys from here): these read the command line
itself, before or instead of Hydra's report."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

from hydra.errors import HydraException
from omegaconf import OmegaConf

from .config import AnalysisConfig, TrainConfig
from .config_checks import name_problem
from .records import HYDRA_VALUE_FLAGS


def config_groups_of(loader) -> Callable[[str], bool]:
    """Whether a key names a config group of the app whose config ``loader`` loads (a
    Hydra ``ConfigLoader``): for :func:`listed_group_line`."""
    return lambda group: bool(loader.get_group_options(group))


def listed_group_line(overrides: list[str], is_group: Callable[[str], bool]) -> str | None:
    """One line for a config group given a list of its configs (``model=[resnet8,resnet20]``,
    meant as a sweep), or None: Hydra merges the configs a list names into one, each over
    the one before, so the run silently took the last one's values (``is_group``: whether a
    key names a config group of the app; ``profile`` is a plain key of the analysis
    config)."""
    parsed = parsed_overrides(overrides)
    if parsed is None:
        return None
    for override in parsed:
        value = override.value()
        if (isinstance(value, list) and len(value) > 1 and not override.is_delete()
                and is_group(override.key_or_group)):
            group, options = override.key_or_group, ",".join(map(str, value))
            key = override.get_key_element()  # as given: with its + and @package
            return (f"{override.input_line}: {group} is a config group and takes one of its "
                    f"configs; a list merges them into one, the last one's values winning "
                    f"({key}={value[-1]} here): to run each, sweep them with -m "
                    f"{key}={options}; for one run, give one, e.g. {key}={value[-1]}")
    return None


def repeated_group_line(overrides: list[str], is_group: Callable[[str], bool]) -> str | None:
    """One line for a config group chosen twice with different configs (``experiment=
    basis_all experiment=baseline``, two presets meant to combine), or None: Hydra keeps
    the last choice alone, so the run silently dropped the first (found in the sweep
    review; in a sweep, ``-m`` kept the last too, a sweep of it included). A group in
    another place (``+model@extra=``) is another choice."""
    parsed = parsed_overrides(overrides)
    if parsed is None:
        return None
    chosen: dict[tuple[str, str | None], Any] = {}
    for override in parsed:
        place = (override.key_or_group, override.package)
        if override.is_delete() or not is_group(override.key_or_group):
            continue
        first = chosen.setdefault(place, override)
        earlier, last = (o.input_line.split("=", 1)[1] for o in (first, override))  # as typed
        if earlier != last:
            key, group = override.get_key_element(), override.key_or_group
            return (f"{first.input_line} and {override.input_line}: {group} is a config group "
                    f"given twice, and the run would take the last one alone; to run each, "
                    f"sweep them with -m {key}={earlier},{last}; for one run, give one, e.g. "
                    f"{key}={last}, and set on the command line the keys you want of the "
                    f"other")
    return None


#: The project's Hydra configs (a source checkout's ``configs/``, as the scripts use).
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def malformed_override(args: list[str]) -> str | None:
    """A command-line override without a key (``=3``, ``+=x``), which Hydra reports with
    a stack trace."""
    flag_value = False
    for arg in args:
        if flag_value:
            flag_value = False
        elif arg in HYDRA_VALUE_FLAGS:
            flag_value = True
        elif not arg.startswith("-") and "=" in arg and not arg.split("=", 1)[0].lstrip("+~"):
            return arg
    return None


def parsed_overrides(args: list[str]) -> list | None:
    """The command line's overrides as Hydra parses them, without the flags (``-m``,
    ``--config-name NAME``, ...); None where Hydra cannot parse one (it says so itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given, flag_value = [], False
    for arg in args:
        if not flag_value and not arg.startswith("-"):
            given.append(arg)
        flag_value = not flag_value and arg in HYDRA_VALUE_FLAGS
    try:
        return OverridesParser.create().parse_overrides(given)
    except Exception:  # noqa: BLE001 - (Hydra says what it cannot parse itself)
        return None


def group_value_override(args: list[str], got: str = "NoneType") -> str | None:
    """One line for a config group set to a value that is none of its configs (``model=null``,
    ``basis=0.25`` meant as ``basis.size=0.25``), which Hydra reports as "Config group
    override must be a string or a list. Got NoneType" (or float: ``got``), naming no group
    (called on that error only: ``profile`` is a plain key of the analysis config)."""
    overrides = parsed_overrides(args)
    if overrides is None:
        return None
    for override in overrides:
        key = override.key_or_group
        options = group_options(key) if "/" not in key else []
        if not options or override.is_sweep_override() or (
                type(override.value()).__name__ != got):  # the value Hydra names
            continue
        said = (f"{override.input_line}: {key} is a config group and takes one of its configs "
                f"({', '.join(options)})")
        if override.value() is None:
            return f"{said}; drop the override for the default"
        keys = group_keys(key)
        return said + (f"; a value in it is set by its key, {key}.<key>=..., one of "
                       f"{', '.join(f'{key}.{name}' for name in keys)}" if keys else "")
    return None


def schema_annotation(schema: type, key: str) -> str | None:
    """The annotation of the dotted ``key`` in the dataclass ``schema``, as written (the
    schemas' annotations are strings), or None where ``key`` is not one of its leaf keys
    (unknown, or a nested config as a whole)."""
    node: Any = schema
    for name in key.split("."):
        field = ({f.name: f for f in dataclasses.fields(node)}.get(name)
                 if dataclasses.is_dataclass(node) else None)
        if field is None:
            return None
        node = (field.default_factory if dataclasses.is_dataclass(field.default_factory)
                else field.type)
    return node if isinstance(node, str) else None


def run_name_override(args: list[str]) -> str | None:
    """One line for a run name on the command line that cannot name one folder
    (:func:`~basisconv.config_checks.name_problem`), a plain value or any of a sweep's, said
    before Hydra makes ``outputs/<name>/``; None otherwise (an ``interval`` or ``glob``
    sweep lists no names: Hydra refuses those itself)."""
    for override in parsed_overrides(args) or []:
        if override.key_or_group != "name" or override.is_delete():
            continue
        try:
            names = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                     else [str(override.value())])
        except HydraException:
            continue
        problem = next(filter(None, map(name_problem, names)), None)
        if problem is not None:
            return problem
    return None


def deleted_key_override(args: list[str], is_group: Callable[[str], bool]) -> str | None:
    """One line for ``~key`` (or ``~key=value``) deleting a key of the schema, which the
    script reads, or None. Hydra said it three ways, none naming the fix (found in review):
    ``~seed`` as the interpolation it broke elsewhere ("Interpolation key 'seed' not found
    (in selection.seed)"), ``~publish`` (null) as "'publish' does not exist", and
    ``~trainer.epochs`` as "TrainerConfig (DictConfig) does not support deletion". A config
    group (``~selection``) is left to the config check, which names the keys it leaves
    unset; ``is_group``: whether a key names a config group of the app, whose schema is
    the training one where ``model`` is a group (else ``scripts/analyze.py``'s)."""
    overrides = parsed_overrides(args)
    if overrides is None:
        return None
    schema = TrainConfig if is_group("model") else AnalysisConfig
    for override in overrides:
        key = override.key_or_group
        if not override.is_delete() or key.startswith("hydra.") or is_group(key):
            continue
        annotation = schema_annotation(schema, key)
        if annotation is None:
            continue
        kind = re.fullmatch(r"Optional\[(.*)\]", annotation)
        value = f"{key}=<{kind[1] if kind else annotation}>".replace("<Any>", "<value>")
        value += f" or {key}=null" if kind else ""
        return (f"{override.input_line}: {key} is a key the config needs, which cannot be "
                f"deleted; give it a value ({value}), or drop the override for its default")
    return None


def group_options(group: str) -> list[str]:
    """The names of ``group``'s configs in the project's ``configs/`` (none where it is no
    config group there)."""
    return sorted(path.stem for path in (CONFIGS / group).glob("*.yaml"))


def group_keys(group: str) -> list[str]:
    """The keys ``group``'s configs set (none for a group of whole-config presets,
    ``# @package _global_``, such as ``profile`` and ``experiment``)."""
    configs = []
    for path in sorted((CONFIGS / group).glob("*.yaml")):
        if path.read_text().startswith("# @package _global_"):
            return []
        configs.append([str(name) for name in OmegaConf.to_container(OmegaConf.load(path)) or {}
                        if name != "defaults"])
    keys: dict[str, None] = {}
    for names in sorted(configs, key=len, reverse=True):  # the fullest (a base) in its order
        keys.update(dict.fromkeys(names))
    return list(keys)
