"""Hydra's and OmegaConf's errors as one line that names the key or option and the fix:
an unknown key (and where a key of that name is), a value of the wrong type, a config
group given a value, an override Hydra cannot parse, a broken ``${...}``, a
``--config-name`` no config folder holds, a key or value of a user's config file off the
schema (and the file to fix). Hydra's own reports are several lines and a stack trace,
often naming none of these."""

from __future__ import annotations

import dataclasses
import difflib
import errno
import re
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.object_type import ObjectType
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError,
                              InterpolationResolutionError, OmegaConfBaseException,
                              ValidationError)

from .config_keys import OTHER_NAMES
from .override_checks import group_keys, group_options, parsed_overrides


def typed_overrides() -> list[str]:
    """The command line's overrides as typed: outside ``-m`` Hydra keeps them unescaped,
    and reading one would resolve its ``${...}`` here, where a typo in it could not be
    named by its key (``validate`` names it)."""
    return OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)


def interpolation_error_line(err: InterpolationResolutionError) -> str:
    """A broken ``${...}`` as one line naming the override it was typed in: ``name=${typo}``
    failed first where another key interpolates ``name`` (``logger.group``), a key the
    user never set; else the key that failed."""
    first = str(err).splitlines()[0]
    where = err.full_key
    broken = re.search(r"'([^']+)'", first)  # "Interpolation key 'typo' not found"
    if broken and HydraConfig.initialized():
        typed = dict(override.lstrip("+~").partition("=")[::2]
                     for override in typed_overrides())
        reference = re.compile(r"\$\{\s*" + re.escape(broken.group(1)) + r"\s*\}")
        if where not in typed:
            where = next((key for key, value in typed.items() if reference.search(value)),
                         where)
    return f"{first} (in {where})"


def same_name_keys(node: Any, full_key: str) -> list[str]:
    """The keys of ``node``'s whole config named as ``full_key`` ends, elsewhere, the
    shallowest first: where a key given in the wrong place belongs."""
    name = full_key.rpartition(".")[2]
    found = []

    def walk(tree: Any, prefix: str) -> None:
        for key, value in tree.items():
            dotted = f"{prefix}{key}"
            if key == "hydra" and not prefix:
                continue
            if key == name and dotted != full_key:
                found.append(dotted)
            if isinstance(value, dict):
                walk(value, f"{dotted}.")

    walk(OmegaConf.to_container(node._get_root(), resolve=False), "")
    return sorted(found, key=lambda key: key.count("."))


def hydra_error_line(ex: Exception, args: list[str] | None = None) -> str:
    """One line for an error Hydra or OmegaConf raised while composing the config: the
    key or option, and what is valid. ``args``: the command line, where the override
    Hydra's message does not name is looked up (a sweep type its sweeper cannot run)."""
    cause = ex.__cause__
    unlisted = UNLISTED_SWEEP.match(str(ex))
    if unlisted:
        return unlisted_sweep_line(unlisted[1], args or [])
    if isinstance(ex, MissingConfigException) and ex.missing_cfg_file and ex.options:
        group, _, name = ex.missing_cfg_file.rpartition("/")
        return (f"{group}={name}: there is no such {group} config; choose one of "
                f"{', '.join(ex.options)}")
    if isinstance(ex, MissingConfigException) and str(ex).startswith("Cannot find primary"):
        return missing_primary_line(ex.missing_cfg_file)
    in_file = config_file_line(ex)
    if in_file is not None:
        return in_file
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        return unknown_key_line(cause)
    if isinstance(cause, ValidationError):
        override = str(ex).rpartition("override ")[2].strip() or cause.full_key
        message = str(cause).splitlines()[0]
        key, given, value = override.partition("=")
        if given and "is not a ListConfig" in message:  # sensitivity.layers=all
            items = value.strip("'\"")
            message = f"{message.rstrip('.')}; write a list: {key}=[{items}]"
        return f"{override}: {message}"
    added = re.match(r"Multiple values for (\S+)\. To override a value use 'override \S+: (.*)'",
                     str(ex))
    if added:  # +model=resnet20: Hydra's advice is the defaults list's, a YAML line
        return added_group_line(added[1], added[2])
    forced = re.match(r"force-add of config groups is not supported: "
                      r"'\+\+(([^=@]+)(?:@[^=]*)?)=(.*)'", str(ex))
    if forced:  # ++model=resnet8: ++ force-adds a key; a group's config is chosen plainly
        key, group, value = forced.groups()  # (the key keeps its @package)
        return (f"++{key}={value}: {group} is a config group, which ++ (add or override a "
                f"key) does not apply to; choose it with {key}={value}, without the ++")
    # Hydra makes the run's folder and .hydra/, and opens its train.log (which logging's
    # config says as "Unable to configure handler 'file'", the OSError its cause: found in
    # review, a read-only run folder or a folder named train.log)
    unwritable = ex if isinstance(ex, OSError) else cause if (
        isinstance(cause, OSError) and "Unable to configure handler" in str(ex)) else None
    if unwritable is not None and unwritable.filename:
        elsewhere = ("point hydra.run.dir (hydra.sweep.dir with -m) at a folder that can be "
                     "written")
        # a full disk: the folder itself is fine; a file-size limit (ulimit -f) is the
        # process's, and every folder has it
        fix = {errno.ENOSPC: f"free space there, or {elsewhere}",
               errno.EDQUOT: f"free space there, or {elsewhere}",
               errno.EFBIG: "raise the file-size limit (ulimit -f)"}.get(unwritable.errno,
                                                                         elsewhere)
        return f"cannot write {unwritable.filename} ({unwritable.strerror}); {fix}"
    if isinstance(ex, OverrideParseException):
        key, given, value = str(ex.override).partition("=")
        items = [item.strip() for item in value.split(",")]
        if given and len(items) > 1 and "" in items and not set(value) & set("'\"[](){}"):
            # a sweep list with a doubled, leading or trailing comma: quoting it, as said
            # below, made it one run of the string '0.25,,0.5' (found in the sweep review)
            return (f"{ex.override}: an empty value in the list {value}; drop the extra "
                    f"comma, e.g. {key}={','.join(item for item in items if item)}")
        if given and key.strip() and value:  # (else it says "write key=value" to a key=value)
            return (f"cannot parse the override {ex.override!r} "
                    f"({ex.message.splitlines()[0]}); Hydra takes unquoted values of letters, "
                    f"digits and /-_.:@ only: quote the value, e.g. \"{key}='{value}'\"")
        return (f"cannot parse the override {ex.override!r} ({ex.message.splitlines()[0]}); "
                f"write key=value, e.g. trainer.epochs=3")
    lines = [line.strip() for text in (str(ex), str(cause) if cause else "")
             for line in text.splitlines()]
    noise = ("full_key:", "reference_type=", "object_type=", "Set the environment variable")
    kept = [line for line in lines if line and not line.startswith(noise)]
    return "; ".join(kept) or type(ex).__name__


#: Hydra's basic sweeper's refusal of a sweep that lists no values (``interval(0.1,0.5)``).
UNLISTED_SWEEP = re.compile(r"(\w+) does not support sweep type : (\w+)")


def unlisted_sweep_line(sweeper: str, args: list[str]) -> str:
    """One line for an ``interval(...)`` sweep (found in ``args``, else said as the sweep's
    interval: a preset's ``hydra.sweeper.params``), which Hydra's basic sweeper refused as
    "BasicSweeper does not support sweep type : INTERVAL_SWEEP", naming no override and
    no fix: it runs a list of values, and an interval is sampled, by a sweeper plugin."""
    interval = next((o for o in parsed_overrides(args) or []
                     if o.is_sweep_override() and not o.is_discrete_sweep()), None)
    key = interval.key_or_group if interval is not None else "<key>"
    bounds = (f"{interval.value().start:g},{interval.value().end:g}" if interval is not None
              else "<a>,<b>")
    said = interval.input_line if interval is not None else "the sweep's interval(...)"
    return (f"{said}: Hydra's sweeper ({sweeper}) runs a list of values, and an interval lists "
            f"none; sweep a comma list ({key}={bounds}), range(start,stop,step) or "
            f"choice(...), or sample the interval with a sweeper plugin (e.g. Optuna's: "
            f"pip install hydra-optuna-sweeper, then hydra/sweeper=optuna)")


def unknown_key_line(err: ConfigKeyError | ConfigAttributeError) -> str:
    """A key the schema lacks, by its full dotted path: the key of that name elsewhere, or
    the closest valid one, and the valid keys beside it."""
    node = err.full_key.rpartition(".")[0]
    parent = getattr(err, "parent_node", None)
    keys = [f"{node}.{k}" if node else str(k) for k in (parent.keys() if parent else [])
            if k != "hydra"]
    valid = f"; valid keys here: {', '.join(keys)}" if keys else ""
    # a key of that name elsewhere first (trainer.seed: the run's seed is top-level)
    elsewhere = same_name_keys(parent, err.full_key) if parent is not None else []
    close = ([OTHER_NAMES[err.full_key]] if err.full_key in OTHER_NAMES else
             elsewhere or difflib.get_close_matches(err.full_key, keys, n=1))
    others = f" also: {', '.join(close[1:])}" if close[1:] else ""
    hint = f" (did you mean {close[0]}?{others})" if close else ""
    return f"{err.full_key} is not a config key{hint}{valid}"


#: Hydra's first line for an error OmegaConf raised while it merged one config file.
COMPOSING = re.compile(r"In '([^']+)': \w+ raised while composing config:")


def config_file_line(ex: Exception) -> str | None:
    """One line for a config file off the schema (a user's own, given with ``--config-dir``,
    or a group's config there): a key the schema lacks, or a value of the wrong type, by
    its full dotted path, what is valid, and the file to fix; None for any other error, or
    where this diagnosis fails (Hydra's line is said then). Hydra said "In 'mine':
    ConfigKeyError raised while composing config: Key 'lrr' not in 'TrainerConfig'": the
    key's last part, no file, no fix (found in the stop-85 review). Hydra raises it without
    ``from``: OmegaConf's error, which names the full key, is its context; any other of
    OmegaConf's errors there is its first line and the file."""
    composing = COMPOSING.match(str(ex))
    err = ex.__context__
    if composing is None or not isinstance(err, OmegaConfBaseException):
        return None
    try:
        if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and err.full_key:
            line = unknown_key_line(err)
        else:  # a wrong type
            message = str(err).splitlines()[0]
            line = f"{err.full_key}: {message}" if err.full_key else (
                section_given_value_line(err, message) or message)
        return f"{line}; fix it in {config_file(composing[1])}"
    except Exception:  # noqa: BLE001 - a diagnosis that fails leaves Hydra's line
        return None


#: OmegaConf's line for a section of the schema given a value, which names no key.
SECTION_GIVEN_VALUE = re.compile(r"Merge error: \w+ is not a subclass of (\w+)\. value: (.*)")


def section_given_value_line(err: OmegaConfBaseException, message: str) -> str | None:
    """One line for a section of the schema given a value in a config file (``trainer: 3``),
    naming the key, or None: OmegaConf said "Merge error: int is not a subclass of
    TrainerConfig. value: 3", with no key (found in review). The key is the field of the
    section it was merged into (``err.object_type``) whose type is the class it names."""
    said = SECTION_GIVEN_VALUE.match(message)
    parent = getattr(err, "object_type", None)
    if said is None or not dataclasses.is_dataclass(parent):
        return None
    section, value = said.groups()
    keys = [field.name for field in dataclasses.fields(parent)
            if getattr(field.default_factory, "__name__", None) == section]
    if len(keys) != 1:
        return None
    key = keys[0]
    options = group_options(key)
    example = (group_keys(key) or ["<key>"])[0]
    choose = (f", or choose one of its configs ({', '.join(options)}) in the defaults list "
              f"(- {key}: {options[0]})") if options else ""
    return (f"{key}: {value}: {key} is a section of the config and takes a mapping of its "
            f"keys, not a value: set them under it ({key}: {{{example}: ...}}){choose}")


def file_config_sources() -> list:
    """The config folders of the app's search path, in Hydra's order (its own and the
    structured schemas left out): where a config name is a file."""
    sources = GlobalHydra.instance().config_loader().get_sources() if (
        GlobalHydra.instance().is_initialized()) else []
    return [source for source in sources if source.scheme() == "file" and source.available()]


def config_file(config_path: str) -> str:
    """The file Hydra read as ``config_path`` (``mine``, ``trainer/mine``): the first config
    folder that holds it, as Hydra looks; the name, quoted, where none does."""
    folder = next((source.path for source in file_config_sources()
                   if source.is_config(config_path)), None)
    name = config_path if config_path.endswith((".yaml", ".yml")) else f"{config_path}.yaml"
    return str(Path(folder) / name) if folder is not None else f"'{config_path}'"


def missing_primary_line(name: str) -> str:
    """One line for ``--config-name <name>`` that no config folder holds: Hydra's message
    named the config search path, not the configs in it (found in review)."""
    # the config folders' files alone: not the schemas (train_schema) nor Hydra's own
    names = sorted({config for source in file_config_sources()
                    for config in source.list("", ObjectType.CONFIG)})
    choices = f"choose one of {', '.join(names)}, or " if names else ""
    return (f"--config-name {name}: there is no such config; {choices}leave --config-name "
            f"out for the script's own")


def added_group_line(group: str, option: str) -> str:
    """One line for ``+group=option`` where the config's defaults list has ``group``
    already (every group of ``configs/`` is there): Hydra, as for a YAML file, said to write
    ``override group: option``; on the command line the choice is ``group=option``."""
    return (f"+{group}={option}: {group} is in the config's defaults list already, so the "
            f"+ (add) does not apply; choose it with {group}={option}, without the +")
