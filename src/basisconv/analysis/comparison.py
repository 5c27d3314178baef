"""The comparison over seeds against the dense baseline: each table row's baseline (the
dense configuration of the same :data:`BASELINE_KEYS` whose recipe is nearest), each run
counted once (:func:`distinct_runs`), and the table of means, spreads and changes against
that baseline with the change's standard error paired by seed (:func:`compare`). Apart from
:mod:`.runs`, which reads the records into the rows this takes: the comparison is a rule
over rows, not a reading of records, and imports from it, never the reverse."""

from __future__ import annotations

import json
import math

import pandas as pd

from .runs import METRIC_COLUMNS, ROW_COLUMNS, setting_value

#: What a row and its dense baseline must share (:func:`baselines`); of several dense
#: configurations alike in these, the one whose recipe is nearest is chosen.
BASELINE_KEYS = ["model", "width", "epochs", "data", "train_images", "test_images", "device",
                 "precision"]


def recipe_differences(row: str, dense: str) -> list[str]:
    """The keys, with the dense run's values, in which two :func:`~.runs.recipe` s differ
    (keys only one of them has, removed since, do not count)."""
    mine, theirs = json.loads(row), json.loads(dense)
    return [f"{k}={setting_value(theirs[k])}" for k in sorted(mine.keys() & theirs.keys())
            if json.dumps(mine[k], sort_keys=True) != json.dumps(theirs[k], sort_keys=True)]


def baselines(table: pd.DataFrame) -> pd.DataFrame:
    """Row by row of ``table``, the dense configuration it is compared with: the same
    :data:`BASELINE_KEYS`, and of several such (a sweep over ``trainer.lr`` that ran the
    dense model too) the one whose config (:func:`~.runs.recipe`) differs from the row's in the
    fewest keys; of equals (one dense config trained by two experiments: ``baseline`` and a
    sweep ``selection=none,all``), the row's own experiment's, then the one sharing most of
    its settings, then the first; NaN where none ran. Its ``differs`` column names the keys
    in which the chosen one still differs (``""`` where it matches)."""
    dense = table[table["selection"] == "none"]
    rows = []
    for row in table.to_dict("records"):
        same = dense[(dense[BASELINE_KEYS] == pd.Series(row)[BASELINE_KEYS]).all(axis=1)]
        if same.empty:
            rows.append(pd.Series(index=[*table.columns, "differs"], dtype=float))
            continue
        differences = [recipe_differences(row["recipe"], r) for r in same["recipe"]]
        mine = set(filter(None, row["settings"].split(", ")))

        def rank(i: int) -> tuple:
            other = same.iloc[i]
            return (len(differences[i]), other["experiment"] != row["experiment"],
                    -len(set(filter(None, other["settings"].split(", "))) & mine))
        best = min(range(len(same)), key=rank)
        rows.append(pd.concat([same.iloc[best],
                               pd.Series({"differs": ", ".join(differences[best])})]))
    return pd.DataFrame(rows).reset_index(drop=True).infer_objects()


def distinct_runs(runs: pd.DataFrame, per: tuple[str, ...] = ("seed",),
                  metrics: list[str] = METRIC_COLUMNS) -> pd.DataFrame:
    """``runs`` with each run counted once: runs of one row and seed that differ only in
    keys they do not read or that change how they ran are one run trained twice, not more
    seeds (a sweep ``selection=none,all basis.size=0.25,0.5`` trains the same dense run
    once per size; one over ``selection.threshold`` the same budget run once per
    threshold); the copies' ``metrics`` are averaged into the first. Runs of one seed whose
    layers, or the seeds that chose them, differ (random selection with other
    ``selection.seed``) stay (:func:`~.runs.same_run`), and one seed counted twice there is
    named under the table; so do runs of one seed on two machines (record folders merged by
    hand): they are not copies. ``per`` is what one row of one run is: its seed, and for
    the training curves (:func:`distinct_curves`) its epoch."""
    keys = [*ROW_COLUMNS, "hardware", "same_run", *per]
    copies = runs.duplicated(keys, keep=False)
    if not copies.any():
        return runs
    runs = runs.astype({column: float for column in metrics})
    runs.loc[copies, metrics] = runs[copies].groupby(
        keys, sort=False, dropna=False)[metrics].transform("mean")
    return runs[~runs.duplicated(keys)]


def distinct_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """The per-epoch rows of :func:`~.runs.curves_frame` with each run counted once
    (:func:`distinct_runs`), so a mean over seeds weighs every seed alike."""
    keys = {*ROW_COLUMNS, "seed", "epoch", "hardware", "where", "same_run"}
    metrics = [c for c in curves.select_dtypes("number").columns if c not in keys]
    return distinct_runs(curves, per=("seed", "epoch"), metrics=metrics)


def compare(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: seeds, accuracy mean and std, cost and time, and each against
    the dense baseline of the same model, width, epochs, data (set, training and test
    images), device and precision:
    ``params_ratio``, ``flops_ratio`` (training FLOPs), ``theory_speedup`` (its inverse),
    ``step_speedup`` (forward+backward time per step), ``epoch_speedup`` (median epoch) and
    ``accuracy_change`` (NaN where that baseline was not run) with its standard error
    paired by seed (``accuracy_change_se``: :func:`paired_change_se`), and the seeds'
    spread of the accuracy and the step time (``test_accuracy_std``, ``step_seconds_std``).
    A run trained more than once at one seed counts once (:func:`distinct_runs`)."""
    distinct = distinct_runs(runs)
    grouped = distinct.assign(
        step=lambda r: r["forward_seconds_per_step"] + r["backward_seconds_per_step"]
    ).groupby(ROW_COLUMNS, sort=False)
    table = grouped[METRIC_COLUMNS].mean()
    table["recipe"] = grouped["recipe"].first()  # alike within a row but for removed keys
    table["seeds"] = grouped.size()
    table["test_accuracy_std"] = grouped["test_accuracy"].std(ddof=1)
    # how much the timed step varies from seed to seed (other runs on the machine, other
    # batch orders): at small speedups it is about the gap to dense
    table["step_seconds_std"] = grouped["step"].std(ddof=1)
    table = table.reset_index()
    # beside the other recipe keys that choose the baseline (another data.name or
    # data.test_subset is another row: a setting)
    for offset, column in enumerate(("data", "test_images"), start=1):
        table.insert(table.columns.get_loc("train_images") + offset, column,
                     grouped[column].first().to_numpy())
    base = baselines(table)
    flops = table["forward_flops"] + table["backward_flops"]
    step = table["forward_seconds_per_step"] + table["backward_seconds_per_step"]
    table["params_ratio"] = table["params"] / base["params"]
    table["flops_ratio"] = flops / (base["forward_flops"] + base["backward_flops"])
    table["theory_speedup"] = 1 / table["flops_ratio"]
    table["step_speedup"] = (base["forward_seconds_per_step"]
                             + base["backward_seconds_per_step"]) / step
    table["epoch_speedup"] = base["epoch_seconds"] / table["epoch_seconds"]
    table["accuracy_change"] = table["test_accuracy"] - base["test_accuracy"]
    table["accuracy_change_se"] = paired_change_se(distinct, table, base)
    table["baseline_differs"] = [d if isinstance(d, str) else "" for d in base["differs"]]
    # rows in the records' order (their sorted paths), but each model's dense rows first: a
    # table is read against its baseline (frobenius-decay's "baseline" sorted after "all-*")
    model = table.groupby(["model", "width"], sort=False, dropna=False).ngroup()
    order = pd.DataFrame({"model": model, "converted": table["selection"] != "none"})
    return table.loc[order.sort_values(["model", "converted"], kind="stable").index
                     ].reset_index(drop=True)


def paired_change_se(runs: pd.DataFrame, table: pd.DataFrame, base: pd.DataFrame) -> list[float]:
    """Row by row of ``table``, the standard error of its accuracy change against its
    baseline (``base``, :func:`baselines`), paired by seed: each seed's run against the
    baseline's run of that seed, the sample std of those differences over the root of
    their number. A seed fixes the batch order and augmentation of both runs, so its luck
    is shared and cancels in the pair, which the two rows' spreads would count twice. NaN
    where the row's seeds are not its baseline's (its change, a difference of means over
    all seeds of each, is then no mean of pairs), with fewer than two seeds, or no
    baseline; 0 for the baseline itself. A seed counted twice in a row
    (:func:`distinct_runs`) enters as its mean."""
    accuracy = runs.groupby([*ROW_COLUMNS, "seed"], sort=False)["test_accuracy"].mean()
    by_row = {row: group.droplevel(list(range(len(ROW_COLUMNS))))
              for row, group in accuracy.groupby(level=list(range(len(ROW_COLUMNS))),
                                                 sort=False)}
    errors = []
    for mine, theirs in zip(table[ROW_COLUMNS].itertuples(index=False, name=None),
                            base[ROW_COLUMNS].itertuples(index=False, name=None)):
        if theirs not in by_row or set(by_row[mine].index) != set(by_row[theirs].index):
            errors.append(math.nan)
            continue
        differences = by_row[mine] - by_row[theirs]
        errors.append(float(differences.std(ddof=1) / len(differences) ** 0.5)
                      if len(differences) >= 2 else math.nan)
    return errors
