"""What a ``selection`` config may hold, checked before anything trains: its schema
(:class:`SelectionConfig`), the policies and the values its keys take, a user's mapping
read as one (:func:`selection_config`: no unknown key, none left unresolved), the keys each
policy reads (:func:`keys_read`), and each value checked alone (:func:`check_selection`).

Apart from the choosing (:mod:`basisconv.selection`, which runs these first on a user's
mapping) because these read the config alone, never a candidate table or a model:
``basisconv.config_checks`` and the sweep's checks run them on a run's config, the
analysis reads :func:`keys_read` from a record, and nothing here calls back into the
choosing.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Iterable, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .candidates import python_number
from .counts import is_int, is_number
from .errors import ConfigError, warn_once

log = logging.getLogger(__name__)


@dataclass
class SelectionConfig:
    """The ``selection`` config group's keys (the schema of ``configs/selection/``; here,
    beside the rules that read them, so that a user's plain mapping is checked by them too)."""
    policy: str = MISSING
    layers: list[str] = MISSING
    metric: str = MISSING  # sensitivity policies: accuracy_drop | loss_increase
    threshold: float = MISSING  # sensitivity_threshold: the largest tolerated metric value
    budget_metric: str = MISSING  # params | flops | time (measured on trainer.device)
    budget_reduction: float = MISSING  # share of the dense model's params/FLOPs to remove
    count: Optional[int] = MISSING  # budget/random/first_k/last_k: layers; null = budget rule
    seed: int = MISSING  # random


KEYS = tuple(f.name for f in fields(SelectionConfig))

SENSITIVITY_POLICIES = ("sensitivity_threshold", "sensitivity_budget")
# Policies that choose among the candidates in an order (see basisconv.selection.pick_layers).
ORDERED_POLICIES = (*SENSITIVITY_POLICIES, "random", "first_k", "last_k")
POLICIES = ("none", "all", "list", *ORDERED_POLICIES)
METRICS = ("accuracy_drop", "loss_increase")
# budget_metric -> the candidate table's column of what each layer saves; "time" is
# measured on the device (basisconv.timing.layer_time_savings), the others counted
BUDGET_METRICS = {"params": "params_saved", "flops": "flops_saved", "time": "seconds_saved"}


LIST_NEEDS_LAYERS = ("selection.policy=list needs selection.layers, e.g. "
                     "selection.layers=[layer1.0.conv1,'layer4.*']")


def selection_config(selection: Mapping) -> DictConfig:
    """A user's plain mapping as a ``selection`` config: a misspelt key is refused as the
    command line refuses it (else ``cout=1`` would be ignored and the budget rule chosen),
    and numpy numbers (``table.accuracy_drop.median()``) are taken as Python numbers."""
    refuse_unknown_keys(selection)
    return OmegaConf.create({key: python_number(value) for key, value in selection.items()})


def refuse_unknown_keys(selection: Mapping) -> None:
    """A key that is not a ``selection`` key is a :class:`ConfigError` naming it (a plain
    mapping's or an OmegaConf config's alike: else ``cout=1`` was ignored silently and the
    budget rule chose)."""
    for key in selection:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"selection has no key {key!r}: {hint}the keys are "
                              f"{', '.join(KEYS)}")


def refuse_unresolved(selection: DictConfig) -> None:
    """A key its policy reads whose interpolation does not resolve is a
    :class:`ConfigError` naming it and the fix: ``configs/selection/base.yaml`` loaded alone
    has ``seed: ${seed}``, the run's seed, which only the whole config holds (OmegaConf
    says "Recursive interpolation detected", naming no key); a policy that reads no seed
    needs none."""
    _refuse_unresolved_key(selection, "policy")
    if "count" in keys_read({"policy": selection.policy}):
        # keys_read reads the count to tell whether the budget decides (budget_chooses)
        _refuse_unresolved_key(selection, "count")
    for key in sorted(keys_read(selection) - {"policy"}):
        _refuse_unresolved_key(selection, key)


def _refuse_unresolved_key(selection: DictConfig, key: str) -> None:
    if key not in selection or not OmegaConf.is_interpolation(selection, key):
        return  # (an unset key, ???, is check_selection's to name)
    try:
        selection[key]
    except OmegaConfBaseException as err:
        raise ConfigError(
            f"selection.{key}={OmegaConf.to_container(selection)[key]!r} does not "
            f"resolve in this config alone ({err.__class__.__name__}); give it a value, "
            f"e.g. OmegaConf.merge(selection, {{{key!r}: ...}})") from None


def budget_chooses(selection: DictConfig | Mapping) -> bool:
    """Whether the budget rule (``budget_metric``, ``budget_reduction``) decides how many
    layers are converted: an ordered policy other than the threshold, with no count."""
    policy = selection.get("policy")
    return (policy in ORDERED_POLICIES and policy != "sensitivity_threshold"
            and selection.get("count") is None)


def keys_read(selection: DictConfig | Mapping) -> set[str]:
    """The ``selection`` keys its policy reads: a run's config carries them all, and those
    it does not read (the budget policy's ``threshold``) set nothing apart."""
    policy = selection.get("policy")
    read = {"policy"}
    if policy == "list":
        read.add("layers")
    if policy in SENSITIVITY_POLICIES:
        read.add("metric")
    if policy == "sensitivity_threshold":
        read.add("threshold")
    elif policy in ORDERED_POLICIES:
        read.add("count")
    if budget_chooses(selection):
        read |= {"budget_metric", "budget_reduction"}
    if policy == "random":
        read.add("seed")
    return read


def check_selection(selection: DictConfig, *, every_key: bool = False) -> None:
    """Every value of a ``selection`` config that its policy reads, each wrong one a
    :class:`ConfigError` naming the key and the valid values (the one home of these rules:
    ``basisconv.config_checks`` runs them on a run's config,
    :func:`~basisconv.selection.pick_layers` on a user's). ``every_key``: also the keys
    this policy does not read (a run's config, which has them all: a sweep over policies
    is checked whole before its first job)."""
    policy = _needed(selection, "policy")
    if policy not in POLICIES:
        raise ConfigError(f"selection.policy={policy!r}; choose one of {', '.join(POLICIES)}")
    check_count(selection)
    check_layers(selection)
    read = keys_read(selection)
    count = selection.get("count")
    if count is not None and (not is_int(count) or count < 1):
        raise ConfigError(f"selection.count must be null or >= 1, got {count!r} (a number of "
                          f"layers)")
    if ("metric" in read or every_key) and (
            _needed(selection, "metric", METRICS) not in METRICS):
        raise ConfigError(f"selection.metric={selection.metric!r}; choose one of "
                          f"{', '.join(METRICS)}")
    if "threshold" in read or every_key:
        threshold = _needed(selection, "threshold")
        if not is_number(threshold) or math.isnan(threshold):
            raise ConfigError(f"selection.threshold={threshold!r} must be a number (the "
                              f"largest {selection.metric} a converted layer may have)")
        if selection.get("metric") == "accuracy_drop" and not -1 < threshold < 1:
            # at 1 or more every layer passes (selection=all under another name), at -1 or
            # less none: a threshold meant in points
            raise ConfigError(f"selection.threshold={threshold!r}: an accuracy_drop is a "
                              f"fraction in (-1, 1) (0.005 = half a point); give e.g. "
                              f"selection.threshold=0.05 for 5 points")
        if ("threshold" in read and selection.get("metric") == "accuracy_drop"
                and abs(threshold) >= 0.1):  # the pages show drops in points: 0.5 meant so?
            warn_once(log, f"selection.threshold={threshold:g} tolerates an accuracy drop of "
                           f"{100 * threshold:g} points (a fraction of accuracy, as "
                           f"sensitivity.csv gives it; the pages show points): for "
                           f"{threshold:g} points give {threshold / 100:g}")
    if "budget_reduction" in read or every_key:
        if _needed(selection, "budget_metric", BUDGET_METRICS) not in BUDGET_METRICS:
            raise ConfigError(f"selection.budget_metric={selection.budget_metric!r}; choose "
                              f"one of {', '.join(BUDGET_METRICS)}")
        reduction = _needed(selection, "budget_reduction")
        if not is_number(reduction) or not 0 < reduction < 1:
            raise ConfigError(f"selection.budget_reduction must be in (0, 1), got {reduction!r}")
    if "seed" in read:
        # numpy's generator, which orders the layers, takes no negative seed (torch's does)
        seed = _needed(selection, "seed")
        if not is_int(seed) or seed < 0:
            raise ConfigError(f"selection.seed={seed!r} orders selection=random and must be "
                              f">= 0, an integer (it is the run's seed unless set); give "
                              f"seed>=0 or selection.seed>=0")


def _needed(selection: DictConfig, key: str, choices: Iterable[str] = ()):
    """``selection[key]``, or one error naming the key and, where it has a few, its valid
    values (a user's own dict for :func:`~basisconv.selection.pick_layers` lacks the keys
    ``base.yaml`` sets)."""
    value = selection.get(key)
    if value is None:
        policy = selection.get("policy")
        choices = ", ".join(choices) if policy else ", ".join(POLICIES)
        raise ConfigError(f"selection.{key} is not set" + (
            f"; selection.policy={policy} reads it" if policy else "")
            + (f"; choose one of {choices}" if choices else ""))
    return value


def check_count(selection: DictConfig) -> None:
    """``selection.count`` with ``sensitivity_threshold`` is a :class:`ConfigError`: that
    policy converts every layer at or below the threshold and could only ignore a count
    (in a sweep beside ``random`` or ``first_k``, a silently unequal comparison)."""
    if selection.policy == "sensitivity_threshold" and selection.get("count") is not None:
        raise ConfigError(f"selection.count={selection.count} does not apply to "
                          f"selection.policy=sensitivity_threshold (it converts every layer "
                          f"whose {selection.metric} is at most selection.threshold); drop "
                          f"selection.count, or use selection=sensitivity_budget for the "
                          f"{selection.count} least sensitive layers")


def check_layers(selection: DictConfig) -> None:
    """``selection.layers`` with an ordered policy is a :class:`ConfigError`: those choose
    among the candidates ``sensitivity.layers`` names and would ignore it (``random`` over
    all layers where ``layer3.*`` was meant). ``none`` and ``all`` take it as ``list``'s,
    unread, so that a sweep ``selection=none,all,list`` can give it once. ``list`` without
    it is one too, found with the config's other values (before a sweep's first job)."""
    if selection.policy == "list" and not selection.get("layers"):
        raise ConfigError(LIST_NEEDS_LAYERS)
    if selection.policy in ORDERED_POLICIES and selection.get("layers"):
        layers = ",".join(selection.layers)
        raise ConfigError(f"selection.layers=[{layers}] is read by selection.policy=list only; "
                          f"{selection.policy} chooses among sensitivity.layers (the "
                          f"candidates): restrict them with sensitivity.layers=[{layers}] and "
                          f"drop selection.layers, or use selection=list")
