"""Which layers get basis convolutions: the ``selection/`` config group.

Policies:

* ``none``: the dense baseline; ``all``: every convolution where a basis can save compute
  (the paper's naive deployment); ``list``: module names or fnmatch patterns;
* ``sensitivity_threshold``: the layers whose measured sensitivity (``selection.metric``,
  the accuracy drop by default) is at most ``selection.threshold``;
* ``sensitivity_budget``: the least sensitive layers, one by one, until the model has
  lost ``selection.budget_reduction`` of its parameters or training FLOPs
  (``selection.budget_metric``), or the ``selection.count`` least sensitive layers;
* the baselines that show whether sensitivity helps, on the same budget: ``random``
  (seeded order), ``first_k`` (model order), ``last_k`` (reverse order). Like
  ``sensitivity_budget`` they take ``selection.count`` layers, or, with ``count: null``,
  stop at the budget rule, so a comparison on a count is on the same count.
  ``sensitivity_threshold`` has no count: a count with it is an error, not ignored.

Ordered policies consider only *candidates*: layers where a basis of the configured size
saves compute, listed in a *candidate table* (:mod:`basisconv.candidates`: what each
saves, by the cost model; for the sensitivity policies the sensitivity table, which adds
the measured metrics). The policies are pure functions of that table; the table is made by
the caller (``basisconv.sensitivity.choose_layers_and_table``), so choosing never trains a
model.

A new ordered policy: its file in ``configs/selection/`` (``defaults: [base, _self_]`` and
``policy: <name>``), its name in :data:`~basisconv.selection_checks.ORDERED_POLICIES`, its
order of the candidates in :func:`candidate_order` (each candidate once) and in words in
:data:`ORDER_WORDS` (what its results pages say decided the choice), and any ``selection``
key it reads besides ``count`` and the budget's in
:func:`~basisconv.selection_checks.keys_read` (so the key is checked and sets its runs
apart in the tables). The figures give it a colour of its own; ``SELECTION_COLOURS`` in
``basisconv.analysis.figures`` fixes one, and ``docs/selection.md`` describes it.

What a ``selection`` config may hold (its schema, keys and values) is checked in
:mod:`basisconv.selection_checks`, which reads the config alone; :func:`pick_layers` runs
those checks first on a user's mapping. What is taken given an order, the budget rule
(:func:`~basisconv.selection_budget.meet_budget`; the layers that cost training FLOPs
passed over, :func:`~basisconv.selection_budget.without_training_cost`), is in
:mod:`basisconv.selection_budget`, with the check of the table's numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch.nn as nn
from omegaconf import DictConfig

# (the candidate table's names are exported from here too, where they were defined first)
from .candidates import (IMAGE, SAVINGS_BASIS_KEYS, convert_candidates,  # noqa: F401
                         dense_totals, layer_savings, python_number, savings_basis)
from .counts import is_number
from .errors import ConfigError
from .layer_names import select_layers
from .selection_budget import (BUDGET_WORDS, meet_budget, refuse_missing_numbers,
                               without_training_cost)
from .selection_checks import (LIST_NEEDS_LAYERS, METRICS, ORDERED_POLICIES, POLICIES,
                               SENSITIVITY_POLICIES, budget_chooses, check_selection,
                               refuse_unknown_keys, refuse_unresolved, selection_config)

if TYPE_CHECKING:  # pandas (half a second) is imported where a table is made: a process
    import pandas as pd  # that makes none (most training runs) starts without it

log = logging.getLogger(__name__)


# Each evaluated metric, the column of its drop, and the sign that makes a drop positive
# when the result is worse than the reference (metric_drops)
DROPS = {"accuracy": ("accuracy_drop", 1), "loss": ("loss_increase", -1)}
# A sensitivity table's numbers are kept to 6 significant digits, in the cached and written
# CSV and in the own-model scan alike: 179/200 against 180/200 is a drop of 0.005, not
# 0.0050000000000000044 (which a threshold of 0.005 refused), and equal drops tie
TABLE_FLOAT_FORMAT = "%.6g"


def metric_drops(reference: Mapping, result: Mapping) -> dict[str, float]:
    """How much worse ``result`` is than ``reference`` (``accuracy_drop``,
    ``loss_increase``), for the metrics both report. The one definition of a layer's
    sensitivity: the estimate, the exhaustive search and the own-model scan rank by it."""
    return {column: sign * (reference[k] - result[k]) for k, (column, sign) in DROPS.items()
            if k in reference and k in result}


def table_number(value: float) -> float:
    """``value`` as a sensitivity table holds it (:data:`TABLE_FLOAT_FORMAT`)."""
    return float(TABLE_FLOAT_FORMAT % value)



def fixed_layers(selection: DictConfig) -> list[str] | str | None:
    """The ``layers`` argument for :func:`basisconv.surgery.apply_basis` of the policies
    that need no candidate table: ``None`` for ``none``, ``"all"``, or the names/patterns
    of ``list`` (checked against the model by ``apply_basis``, which names the valid
    layers when one does not exist)."""
    if selection.policy == "none":
        return None
    if selection.policy == "all":
        return "all"
    if selection.policy == "list":
        if not selection.layers:
            raise ConfigError(LIST_NEEDS_LAYERS)
        return list(selection.layers)
    raise ConfigError(f"selection.policy={selection.policy!r} chooses from a candidate table")


def fixed_candidates(selection: DictConfig, model: nn.Module, table: pd.DataFrame) -> list[str]:
    """The candidates in ``table`` that a fixed policy converts, in model order (none for
    ``none``): what ``all`` or a ``list`` would save, reported from the same table as an
    ordered policy's choice (``scripts/sensitivity.py selection=all``)."""
    layers = fixed_layers(selection)
    if layers is None:
        return []
    named = select_layers(model, layers, key="selection.layers")
    return [name for name in table.sort_values("position")["layer"] if name in named]


def chosen_or_dense(selection: DictConfig, chosen: list[str]) -> list[str] | None:
    """Log an ordered policy's choice; ``None`` (the dense model) when it chose nothing."""
    log.info("selection %s: %d layers: %s", selection.policy, len(chosen), ", ".join(chosen))
    if not chosen:
        log.warning("selection %s chose no layer: the model stays dense", selection.policy)
        return None
    return chosen


# Each ordered policy's order as its results pages say it (rule_in_words): with a budget,
# and with a count k. Here beside candidate_order, which is that order in code; a policy
# missing here is described by its name, never as the sensitivity policies' order (else a
# new baseline policy's page says "least sensitive first").
ORDER_WORDS = {
    "sensitivity_budget": ("least sensitive by {metric} first",
                           "the {k} {layers} least sensitive by {metric}"),
    "first_k": ("in model order", "the first {k} {layers} in model order"),
    "last_k": ("in reverse model order", "the last {k} {layers} in model order"),
    "random": ("in a random order (seed {seed})", "{k} {layers} in a random order (seed {seed})"),
}


def candidate_order(selection: DictConfig, table: pd.DataFrame) -> list[str]:
    """The candidates in the order an ordered policy converts them."""
    policy = selection.policy
    table = table.sort_values("position", kind="stable")
    if policy in SENSITIVITY_POLICIES:
        if selection.metric not in METRICS:
            raise ConfigError(f"selection.metric={selection.metric!r}; choose one of "
                              f"{', '.join(METRICS)}")
        if selection.metric not in table:
            raise ConfigError(f"selection.metric={selection.metric}: the sensitivity table has "
                              f"no {selection.metric} column (an evaluate(model) that reports no "
                              f"{selection.metric.split('_')[0]}?); rank by one it has: "
                              f"{', '.join(m for m in METRICS if m in table) or 'none'}")
        # least sensitive first; ties by the other metric where the table has it (a scan of
        # a user's model may measure accuracy alone), then model order
        other = [m for m in METRICS if m != selection.metric and m in table]
        return list(table.sort_values([selection.metric, *other, "position"],
                                      kind="stable")["layer"])
    if policy == "first_k":
        return list(table["layer"])
    if policy == "last_k":
        return list(table["layer"])[::-1]
    if policy == "random":
        order = np.random.default_rng(selection.seed).permutation(len(table))
        return [table["layer"].iloc[i] for i in order]
    raise ConfigError(f"selection.policy={policy!r}; choose one of {', '.join(POLICIES)}")


def pick_layers(selection: DictConfig | Mapping, table: pd.DataFrame,
                dense: dict[str, int]) -> list[str]:
    """The layers an ordered policy converts, in model order.

    ``selection``: the ``selection`` config, or a mapping with its keys (``policy`` and
    what that policy reads; :func:`~basisconv.selection_checks.check_selection`).
    ``table`` has one row per candidate: ``layer``, ``position`` (model order, one per
    layer), ``params_saved``, ``flops_saved`` and, for the sensitivity policies, the
    metrics; ``dense`` the dense model's ``params`` and ``flops`` (the budget's 100 %).
    """
    if not isinstance(selection, Mapping):  # else "first_k" reads as keys f, i, ...
        raise ConfigError(f"pick_layers: selection is the selection config or a mapping of its "
                          f"keys, e.g. {{'policy': 'first_k', 'count': 3}}; got {selection!r}")
    if not isinstance(selection, DictConfig):  # a plain mapping (a DictConfig is one too)
        selection = selection_config(selection)
    else:  # an OmegaConf config a user made (base.yaml merged with a misspelt override)
        refuse_unknown_keys(selection)
        refuse_unresolved(selection)
    check_selection(selection)
    missing = {"layer", "position"} - set(getattr(table, "columns", ()))
    if missing:
        raise ConfigError(f"pick_layers: the candidate table needs the columns layer and "
                          f"position (model order), as layer_sensitivity and layer_savings make "
                          f"them; it has no {', '.join(sorted(missing))}")
    if selection.policy not in ORDERED_POLICIES:
        raise ConfigError(f"selection.policy={selection.policy!r} needs no candidate table: "
                          f"pick_layers takes {', '.join(ORDERED_POLICIES)}")
    if table.empty:  # (a count would be told to choose 1..0, a budget that nothing saves)
        raise ConfigError("pick_layers: the candidate table has no rows, so there is no "
                          "candidate layer to choose; give the layers to choose from "
                          "(sensitivity.layers, or the layers given to layer_savings)")
    unnamed = [int(i) for i, name in enumerate(table["layer"]) if not isinstance(name, str)]
    if unnamed:  # (sorting the names was a TypeError)
        raise ConfigError(f"pick_layers: the candidate table's layer column needs each "
                          f"candidate's module name (a str); row(s) {unnamed} have none")
    repeated = sorted(set(table["layer"][table["layer"].duplicated()]))
    if repeated:  # its saving would count twice toward a budget, a count choose it twice
        raise ConfigError(f"pick_layers: the candidate table lists layer(s) "
                          f"{', '.join(map(repr, repeated))} more than once; it needs one row "
                          f"per candidate (e.g. table.drop_duplicates('layer'))")
    refuse_missing_numbers(table, "position", "model order")  # (NaN: no place, no tie)
    refuse_shared_positions(table)
    order = candidate_order(selection, table)
    if selection.policy in SENSITIVITY_POLICIES:
        refuse_missing_numbers(table, selection.metric, "selection.metric")
    # each candidate once, nothing else: a policy's order that repeated a layer counted its
    # saving twice toward the budget, and an unknown name failed deep in the budget rule
    if sorted(order) != sorted(table["layer"]):
        raise ConfigError(f"selection.policy={selection.policy}: its order of the candidates "
                          f"must name each candidate layer once (candidate_order); it gave "
                          f"{order}, for {list(table['layer'])}")
    positions = dict(zip(table["layer"], table["position"]))
    if selection.policy == "sensitivity_threshold":
        metric = dict(zip(table["layer"], table[selection.metric]))
        chosen = without_training_cost(
            [name for name in order if metric[name] <= selection.threshold], table, selection,
            "selection.policy=sensitivity_threshold")
    elif selection.get("count") is not None:
        check_count_fits(selection, len(order))
        chosen = order[:selection.count]
    else:
        chosen = meet_budget(order, table, selection, dense)
    return sorted(chosen, key=positions.__getitem__)


def refuse_shared_positions(table: pd.DataFrame) -> None:
    """One error naming the layers that share a ``position``: it is the model order that
    ``first_k``, ``last_k`` and the ties in sensitivity follow, so two layers at one place
    (two scans' tables concatenated, each numbered from 0) were ordered by the rows
    instead, silently (``first_k`` took the first layer of each scan)."""
    shared = table[table["position"].duplicated(keep=False)]
    if shared.empty:
        return
    position, layers = next(iter(shared.groupby("position")["layer"]))  # (the first)
    raise ConfigError(f"pick_layers: the candidate table gives layers "
                      f"{', '.join(map(repr, layers))} the same position {position}; position "
                      f"is each candidate's place in model order, one per layer (tables "
                      f"concatenated: number their rows again in model order)")


def check_count_fits(selection: DictConfig, candidates: int) -> None:
    """``selection.count`` (when set) at most the number of ``candidates``: one
    :class:`ConfigError` naming the range. :func:`pick_layers` checks it on its table, and
    ``basisconv.model_checks`` on the model shaped on the meta device, before a sensitivity
    estimate (or a sweep's first job) spends its time on a choice that cannot be made."""
    count = selection.get("count")
    if count is not None and not 1 <= count <= candidates:
        raise ConfigError(f"selection.count={count}; there are {candidates} candidate layers, "
                          f"so choose 1..{candidates} (or null: the budget)")


def rule_in_words(selection: DictConfig | Mapping) -> str:
    """What decided which layers an ordered policy took, for a results page: e.g. "layers
    least sensitive by accuracy drop first, until they save 25 % of the dense model's
    training FLOPs" (a threshold on accuracy in points, as the pages show drops); "" for
    the other policies."""
    policy = selection.get("policy")
    if policy not in ORDERED_POLICIES:
        return ""
    metric = str(selection.get("metric", "accuracy_drop")).replace("_", " ")
    if policy == "sensitivity_threshold":
        bound = selection.get("threshold")
        if not is_number(bound):
            return ""
        shown = f"{100 * bound:g} points" if metric == "accuracy drop" else f"{bound:g}"
        return f"every layer whose {metric} is at most {shown}"
    by_budget, by_count = ORDER_WORDS.get(
        policy, (f"in the {policy} policy's order", f"the first {{k}} {{layers}} in the {policy} "
                 f"policy's order"))
    count = selection.get("count")
    words = {"metric": metric, "seed": selection.get("seed"), "k": count,
             "layers": "layer" if count == 1 else "layers"}  # (not "the 1 layers")
    if not budget_chooses(selection):
        return by_count.format(**words)
    order = by_budget.format(**words)
    share, of = selection.get("budget_reduction"), selection.get("budget_metric")
    if not is_number(share) or of is None:  # (a hand-made or older record)
        return ""
    share = f"{100 * share:g} %"
    return (f"layers {order}, until they save {share} of the dense model's "
            f"{BUDGET_WORDS.get(of, of)}")
