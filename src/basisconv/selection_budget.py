"""The budget rule of the ordered policies: layers taken in their order until they save
``selection.budget_reduction`` of the dense model's parameters, training FLOPs or measured
step time (:func:`meet_budget`), the layers that cost training FLOPs passed over
(:func:`without_training_cost`, which the threshold policy applies too), and the check of
the candidate table's numbers that a budget sums and a policy ranks by
(:func:`refuse_missing_numbers`).

Apart from :mod:`basisconv.selection` (the policies, their order of the candidates and
:func:`~basisconv.selection.pick_layers`, which calls these): what is taken given an order
is one rule, read whole here, and it never calls back into the policies; the words a
budget is said in (:data:`BUDGET_WORDS`) live here, where its log uses them, and the
results pages' rule (``selection.rule_in_words``) imports them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from .counts import is_number
from .errors import ConfigError
from .selection_checks import BUDGET_METRICS

if TYPE_CHECKING:  # pandas (half a second) is imported where a table is made
    import pandas as pd

log = logging.getLogger(__name__)


#: What a candidate table's saving column counts, by budget metric (its time column is
#: seconds a training step).
SAVING_UNITS = {"params": "parameters", "flops": "FLOPs", "time": "s a step"}
#: How a page names what a budget is a share of.
BUDGET_WORDS = {"params": "parameters", "flops": "training FLOPs",
                "time": "training-step time (measured)"}


def without_training_cost(chosen: list[str], table: pd.DataFrame, selection: DictConfig,
                          read_for: str) -> list[str]:
    """``chosen`` less the layers whose basis form costs more training FLOPs than their
    dense conv (a negative ``flops_saved``: a first layer near the break-even size, whose
    input needs no gradient but whose basis maps do), as a FLOPs budget passes them over:
    within the threshold they cost no accuracy, under a parameter budget they save
    parameters, but converting them slows training, which basis convolutions are for. A
    table without ``flops_saved`` (a user's hand-made one) is taken as it is. ``read_for``:
    the setting that reads it, named where a number is missing (under a parameter budget,
    ``selection.budget_metric=params``, not the policy, which reads it under no other)."""
    if "flops_saved" not in table:
        return chosen
    refuse_missing_numbers(table[table["layer"].isin(chosen)], "flops_saved",
                           f"{read_for}, which passes over a layer that costs training FLOPs")
    saving = dict(zip(table["layer"], table["flops_saved"]))
    for name in chosen:
        if saving[name] < 0:
            log.info("selection %s: %s costs %g more training FLOPs in basis form; passed "
                     "over", selection.policy, name, -saving[name])
    return [name for name in chosen if saving[name] >= 0]


def meet_budget(order: list[str], table: pd.DataFrame, selection: DictConfig,
                dense: dict[str, int]) -> list[str]:
    """Take layers in ``order`` until the saving reaches ``budget_reduction`` of the dense
    model's parameters, training FLOPs or measured training-step time; a layer that saves
    nothing by that measure (a basis form slower than its dense conv) is passed over, and
    under a parameter budget also one that costs training FLOPs (a stem near the break-even
    size saves parameters but trains slower), as the threshold rule passes it over."""
    if selection.budget_metric not in BUDGET_METRICS:
        raise ConfigError(f"selection.budget_metric={selection.budget_metric!r}; choose one "
                          f"of {', '.join(BUDGET_METRICS)}")
    column = BUDGET_METRICS[selection.budget_metric]
    if not isinstance(dense, Mapping):  # (was a TypeError from the line below)
        raise ConfigError(f"pick_layers: a budget is a share of the dense model's totals, "
                          f"given as dense=dense_totals(model, input_shape) (or "
                          f"selection.count=k, which needs none); got dense={dense!r}")
    if column not in table or selection.budget_metric not in dense:
        raise ConfigError(
            f"selection.budget_metric={selection.budget_metric}: the candidate table has no "
            f"{column} column or the dense totals no {selection.budget_metric!r} (time is "
            f"measured by the pipeline, basisconv.time_budget.with_measured_time); use "
            f"params or flops")
    refuse_missing_numbers(table, column, "selection.budget_metric")
    target = selection.budget_reduction * dense[selection.budget_metric]
    saving = dict(zip(table["layer"], table[column]))
    # (the passed over stay in the count of candidates the warnings below give)
    taken = (without_training_cost(order, table, selection, "selection.budget_metric=params")
             if selection.budget_metric == "params" else order)
    # (said only where one was passed over: "the 2 of 3 that save any are all converted"
    # read as if the third saved none, when it saved more than the budget asked)
    unless_costly = " without costing training FLOPs" if len(taken) < len(order) else ""

    def met(saved: float) -> bool:  # 0.07 * 100 is 7.000000000000001: 7 saved meets it
        return saved >= target or math.isclose(saved, target, rel_tol=1e-9)

    chosen, saved = [], 0
    for name in taken:
        if met(saved):
            break
        if saving[name] <= 0:
            log.info("selection %s: %s saves no %s (%g %s); passed over", selection.policy,
                     name, selection.budget_metric, saving[name],
                     SAVING_UNITS[selection.budget_metric])
            continue
        chosen.append(name)
        saved += saving[name]
    if not met(saved) and not chosen:  # ("the 0 of 3 candidates that save any are all
        # converted" said it)
        log.warning("selection %s: none of the %d candidates saves any of the dense model's "
                    "%s%s, so none meets selection.budget_reduction=%g", selection.policy,
                    len(order), BUDGET_WORDS[selection.budget_metric], unless_costly,
                    selection.budget_reduction)
    elif not met(saved):  # (the ones passed over saved nothing toward it: not "every")
        log.warning("selection %s: the %d of %d candidates that save any%s are all converted, "
                    "and together save %.1f %% of the dense model's %s, short of "
                    "selection.budget_reduction=%g", selection.policy, len(chosen), len(order),
                    unless_costly,
                    100 * saved / dense[selection.budget_metric],
                    BUDGET_WORDS[selection.budget_metric], selection.budget_reduction)
    else:  # met: how far past it the last layer taken went (budgets a sweep sets apart
        # can choose the same layers; chosen.md shows the share, the log said none)
        log.info("selection %s: the %d layer%s chosen save%s %.1f %% of the dense model's "
                 "%s (selection.budget_reduction=%g asked %.1f %%)", selection.policy,
                 len(chosen), "s" * (len(chosen) != 1), "s" * (len(chosen) == 1),
                 100 * saved / dense[selection.budget_metric],
                 BUDGET_WORDS[selection.budget_metric], selection.budget_reduction,
                 100 * selection.budget_reduction)
    return chosen


def refuse_missing_numbers(table: pd.DataFrame, column: str, key: str) -> None:
    """One error naming the layers whose ``column`` holds no finite number (a table read
    back from a CSV with an empty cell): a NaN would rank its layer anywhere, or make a
    budget's running sum NaN, never met, so that every later layer is converted."""
    bad = [f"{layer!r} ({value!r})" for layer, value in zip(table["layer"], table[column])
           if not _finite_number(value)]
    if bad:  # the value said: a NaN wants measuring again, a '7' pd.to_numeric
        raise ConfigError(f"pick_layers: the candidate table's {column} column (read for "
                          f"{key}) holds no finite number for layer(s) {', '.join(bad)}; "
                          f"measure them again, leave them out of the table, or turn text "
                          f"into numbers (pd.to_numeric)")


def _finite_number(value) -> bool:
    """A finite int or float (numpy's too); not a string of digits, which ``float`` reads
    but a budget's sum and a threshold's comparison do not."""
    return is_number(value) and math.isfinite(value)
