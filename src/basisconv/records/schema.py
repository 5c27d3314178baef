"""What the analysis reads of a run record of each kind, and the checks that a record holds
it (each field there, of the type its producer writes). Its own module, apart from the
record itself (:mod:`.runs`: its type, writer and readers), because only what reads a
record back checks it (the analysis, a resumed run, the sensitivity cache, the protocol's
collection); writing one needs none of it. It takes the diverged status
(:data:`DIVERGED_STATUS`) from :mod:`.runs`, which never imports it back."""

from __future__ import annotations

import math
from typing import Any

from ..counts import is_int, is_number
from .runs import DIVERGED_STATUS


#: What analysis reads of a record of each kind (``basisconv.analysis``), as dotted paths:
#: those every record of the kind holds, and those it holds once complete (a training run
#: in progress has ``final: null``). A record that lacks one is skipped by the analysis
#: and listed as unreadable, as a truncated one is.
REQUIRED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "training": (
        ("config.name", "config.seed", "config.model.name", "config.model.width",
         "config.selection.policy", "config.basis.size", "config.trainer.epochs",
         "config.trainer.amp", "config.data.train_subset", "model.parameters",
         "model.forward_flops", "model.backward_flops", "model.basis_layers", "epochs"),
        ("final.test_accuracy", "final.best_test_accuracy", "final.forward_seconds_per_step",
         "final.backward_seconds_per_step", "final.mean_epoch_seconds", "final.train_seconds")),
    "sensitivity": (
        ("config.model.name", "config.model.width", "config.basis.size",
         "config.selection.policy", "config.trainer.amp", "provenance.hardware",
         "sensitivity.policy", "sensitivity.key", "sensitivity.chosen",
         "sensitivity.dense.params", "sensitivity.dense.flops",
         "sensitivity.estimate_seconds", "sensitivity.reference.accuracy",
         "sensitivity.pretrained.accuracy", "table", "estimate_provenance.date",
         "estimate_provenance.git", "estimate_provenance.hardware"), ()),
    "exhaustive_search": (
        ("config.model.name", "config.model.width", "config.basis.size", "config.trainer.amp",
         "provenance.hardware", "provenance.date", "provenance.git",
         *(f"search.{key}" for key in (
             "candidates", "subset_size", "subsets", "metric", "fast_choice", "fast_accuracy",
             "fast_rank_by_accuracy", "fast_rank_by_loss", "best_subset", "best_accuracy",
             "median_accuracy", "worst_accuracy", "reference_accuracy", "seconds",
             "spearman_predicted_vs_measured_drop", "spearman_predicted_vs_measured_loss"))),
        ()),
}


#: What analysis reads of a training record that diverged (:data:`DIVERGED_STATUS`)
#: besides :data:`REQUIRED`'s fields of every record: what diverged, a text.
REQUIRED_WHEN_DIVERGED = ("diverged",)


#: The columns analysis reads of each row of a record's ``table`` (the sensitivity page's
#: every candidate layer; the search plot's subsets), by kind: a row without one, a table
#: that is no list of such rows, or an empty one ended analysis with a ``KeyError`` from
#: pandas, after the comparison's tables were written and before ``index.json``.
TABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "sensitivity": ("layer", "position", "shape", "num_basis", "reconstruction_error",
                    "accuracy_drop", "loss_increase", "params_saved", "flops_saved",
                    "seconds"),
    "exhaustive_search": ("subset", "accuracy", "fast_choice")}
#: The type (:func:`of_type`) of each column of :data:`TABLE_FIELDS` that holds no number
#: (the others: :func:`~basisconv.counts.is_number`, a drop may be negative).
TABLE_TYPES: dict[str, dict[str, type]] = {
    "sensitivity": {"layer": str, "shape": str},
    "exhaustive_search": {"subset": str, "fast_choice": bool}}
#: The fields of :data:`REQUIRED` outside ``config``, ``model`` and ``final`` that hold a
#: measurement (:func:`is_measurement`), and those that hold a text: a null or a text
#: there ended the sensitivity or search page with a ``TypeError`` from a format.
MEASURED_FIELDS = {"sensitivity.estimate_seconds", "sensitivity.reference.accuracy",
                   "sensitivity.pretrained.accuracy", "sensitivity.dense.params",
                   "sensitivity.dense.flops",
                   *(f"search.{key}" for key in (
                       "subsets", "subset_size", "fast_accuracy", "fast_rank_by_accuracy",
                       "fast_rank_by_loss", "best_accuracy", "median_accuracy",
                       "worst_accuracy", "reference_accuracy", "seconds"))}
TEXT_FIELDS = {"sensitivity.policy", "sensitivity.key", "search.metric", "search.fast_choice",
               "search.best_subset", *REQUIRED_WHEN_DIVERGED}
#: Rank correlations: a number, or null where undefined (one subset, or all tied).
CORRELATIONS = {"search.spearman_predicted_vs_measured_drop",
                "search.spearman_predicted_vs_measured_loss"}

#: The parts of a record whose fields a producer always fills with measurements: a value
#: there that is not one (:func:`is_measurement`: null, NaN, text, ``true``, a negative
#: time) is missing (hand-edited, or not ours), not a value; a table would count the seed
#: and leave it out of the mean, take ``true`` for 1, or end in a trace from pandas.
#: ``config`` keeps its nulls where its schema allows them (:data:`CONFIG_TYPES`).
MEASURED = ("model", "final")
#: The fields of :data:`REQUIRED` that hold a list, not a measurement, with the type of its
#: items: a converted layer's name (the table counts them: the letters of a text would be
#: counted), an epoch's row of the curves.
LISTS = {"model.basis_layers": str, "epochs": dict, "sensitivity.chosen": str,
         "search.candidates": str, "table": dict}

#: The config values of :data:`REQUIRED`, with the types the producer writes there (its
#: schema, :mod:`basisconv.config`; :func:`of_type` says what each is): one of another
#: type is missing, not a value. A text width or seed ended analysis with a trace from a
#: format or a sort, a list or an object one from pandas' grouping, and a null, NaN, ``true``
#: or a fractional epoch count was read: the run was counted but left out of the table, or
#: averaged into seed 1, or given a row of its own without its baseline. Nulls are kept
#: where the schema allows them (``data.train_subset: null``: all the images); a basis size
#: or a training subset is a count (an int) or a fraction (a float).
CONFIG_TYPES: dict[str, tuple[type | None, ...]] = {
    "config.name": (str,), "config.seed": (int,), "config.model.name": (str,),
    "config.model.width": (float,), "config.selection.policy": (str,),
    "config.basis.size": (int, float), "config.trainer.epochs": (int,),
    "config.trainer.amp": (str,), "config.data.train_subset": (None, int, float)}

#: The provenance the analysis reads of every kind where a record has it (an older or
#: edited record may not: "unknown hardware"), with its type: one of another type (a
#: hand-written ``"hardware": "AMD EPYC"``) is missing too, not a trace from the table
#: (a GPU, CPU or commit that was no text ended it in one from the names made of them).
PROVENANCE_TYPES = {"provenance": dict, "provenance.hardware": dict, "provenance.git": dict,
                    "provenance.versions": dict, "provenance.date": str,
                    "provenance.hardware.gpu": str, "provenance.hardware.cpu": str,
                    "provenance.hardware.cpu_capability": str, "provenance.git.commit": str}
#: Fields of :data:`MEASURED` that only some records have, which the analysis reads where
#: present (a skip-training run's mean backward FLOPs): one that is no measurement is
#: missing, as a required one is (a text there ended the table in a trace from pandas).
MEASURED_WHEN_PRESENT = {"training": ("model.mean_backward_flops",)}


def is_measurement(value: Any) -> bool:
    """Whether ``value`` is what a producer measures: a finite number, not negative (counts,
    FLOPs, accuracies, seconds), and not a bool (JSON's ``true`` is an int to Python)."""
    return is_number(value) and math.isfinite(value) and value >= 0


#: What :func:`field_at` gives for a field a record does not hold.
ABSENT = object()


def field_at(record: dict[str, Any], path: str) -> Any:
    """The value of the dotted field ``path`` (``provenance.git.commit``) in ``record``;
    :data:`ABSENT` where it is missing or a field it is inside is no mapping (which that
    field's own check says)."""
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return ABSENT
        value = value[key]
    return value


def of_type(value: Any, kind: type | None) -> bool:
    """Whether ``value`` is of ``kind`` as a producer writes it: an ``int`` is no bool
    (JSON's ``true`` is an int to Python), a ``float`` any finite number (the schema takes
    ``1`` for ``1.0``; a NaN is no configuration, and pandas leaves its row out of a
    table), ``None`` a null."""
    if kind is None:
        return value is None
    if kind is int:
        return is_int(value)
    if kind is float:
        return is_number(value) and math.isfinite(value)
    return isinstance(value, kind)


def of_another_type(path: str, value: Any) -> bool:
    """Whether ``value``, found at ``path`` of :data:`REQUIRED`, is not what its producer
    writes there: a list of other items than :data:`LISTS` says, a config value of
    another type than :data:`CONFIG_TYPES` says, or a field of :data:`MEASURED` that is no
    measurement (:func:`is_measurement`)."""
    if path in LISTS:
        return not (isinstance(value, list) and all(isinstance(item, LISTS[path])
                                                    for item in value))
    if path in CONFIG_TYPES:
        return not any(of_type(value, kind) for kind in CONFIG_TYPES[path])
    if path in TEXT_FIELDS:
        return not isinstance(value, str)
    if path in CORRELATIONS:
        return value is not None and not is_number(value)
    return ((path.split(".")[0] in MEASURED or path in MEASURED_FIELDS)
            and not is_measurement(value))


def missing_fields(record: dict[str, Any]) -> list[str]:
    """The fields of :data:`REQUIRED` that ``record`` (as :func:`.runs.read_record` returns it)
    lacks for its kind and status (:data:`REQUIRED_WHEN_DIVERGED` too for a diverged
    training run), each named once by its outermost missing part (``final``
    for a missing or null ``final``), those that hold another type than their producer
    writes (:func:`of_another_type`), and the provenance of another type than
    :data:`PROVENANCE_TYPES` says; none for the kinds analysis does not read."""
    always, once_complete = REQUIRED.get(record.get("kind"), ((), ()))
    paths = always + (once_complete if record.get("status") == "complete" else ())
    if record.get("kind") == "training" and record.get("status") == DIVERGED_STATUS:
        paths += REQUIRED_WHEN_DIVERGED
    missing: list[str] = []
    for path in paths:
        node: Any = record
        keys = path.split(".")
        for depth, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                # a null or non-object parent is the missing part, else this key
                where = ".".join(keys[:depth + (1 if isinstance(node, dict) else 0)])
                if where not in missing:
                    missing.append(where)
                break
            node = node[key]
        else:
            if of_another_type(path, node):
                missing.append(path)
    for path in MEASURED_WHEN_PRESENT.get(record.get("kind"), ()):
        parent, key = path.split(".")
        node = record.get(parent)
        if isinstance(node, dict) and key in node and not is_measurement(node[key]):
            missing.append(path)
    missing += [path for path in table_lacks(record) if "table" not in missing]
    if record.get("kind") in REQUIRED:
        for path, kind in PROVENANCE_TYPES.items():
            node = field_at(record, path)
            if (node is not None and node is not ABSENT and not isinstance(node, kind)
                    and path not in missing):
                missing.append(path)
    return missing


def table_lacks(record: dict[str, Any]) -> list[str]:
    """The columns of :data:`TABLE_FIELDS` that some row of ``record``'s ``table`` lacks,
    as ``table.<column>`` (``table`` itself for an empty table: an estimate or a search has
    a row at least); none where the record has no table of rows (an older search's is its
    ``search.csv``; a table of another type is named by :func:`of_another_type`)."""
    table = record.get("table")
    if record.get("kind") not in TABLE_FIELDS or not isinstance(table, list) or not all(
            isinstance(row, dict) for row in table):
        return []
    if not table:
        return ["table"]
    # a column of another type than its producer writes (a text accuracy_drop, hand-edited)
    # ended the sensitivity page in a TypeError trace from matplotlib (found in review)
    kinds = TABLE_TYPES[record["kind"]]

    def holds(row: dict, column: str) -> bool:
        return column in row and (of_type(row[column], kinds[column]) if column in kinds
                                  else is_number(row[column]))
    return [f"table.{column}" for column in TABLE_FIELDS[record["kind"]]
            if not all(holds(row, column) for row in table)]
