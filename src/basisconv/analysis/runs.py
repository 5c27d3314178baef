"""Training runs as pandas DataFrames, from their records (read by
:mod:`.record_sources`: the local run records, ``run.json``, the default: no network, or
the wandb API, ``source=wandb``), and the comparison over seeds (mean and std, and the
change against the dense baseline with its standard error paired by seed)."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any, Callable

import pandas as pd

from ..checkpoint import changes_only_execution, flat_config
from ..counts import is_number
from ..records import (commit_name, device_name, hardware_name, is_measurement,
                       made_by_profile, measured_on_cpu, precision_name)
from ..selection_checks import SENSITIVITY_POLICIES, keys_read

# What identifies a configuration; runs that differ only in the seed are its repeats.
CONFIG_COLUMNS = ["experiment", "model", "width", "selection", "basis_size", "epochs",
                  "train_images", "device", "precision"]
#: what makes one table row: the columns, and the swept settings beyond them (``settings``)
ROW_COLUMNS = [*CONFIG_COLUMNS, "settings"]
# What a table row shows of its configuration besides the basis size, with its file's device
# and precision; rows alike in these (and the size) are told apart by their settings alone:
# the table has no experiment, epochs or training images column.
SHOWN_COLUMNS = ["model", "width", "selection", "device", "precision"]
METRIC_COLUMNS = ["test_accuracy", "best_test_accuracy", "params", "forward_flops",
                  "backward_flops", "basis_layers", "forward_seconds_per_step",
                  "backward_seconds_per_step", "epoch_seconds", "train_seconds"]
BASELINE_KEYS = ["model", "width", "epochs", "data", "train_images", "test_images", "device",
                 "precision"]
#: Seeds: runs that differ only in them (and in keys :func:`made_alike` allows) are repeats of
#: one configuration; any other key that differs makes another configuration.
SEED_KEYS = {"seed", "selection.seed", "sensitivity.seed"}
# Groups no dense run reads: a sweep's basis sizes do not make its baseline several.
DENSE_UNREAD = ("basis.", "selection.", "sensitivity.")


def timing_setup(cfg: dict[str, Any], hardware: dict[str, Any]) -> str:
    """How a run was executed, as far as it sets its times but not its results (but for
    the thread count on a CPU, which changes them to rounding): the
    hardware, torch's threads on a CPU, the processes of a ``torchrun`` run, and
    ``trainer.compile`` / ``cuda_graphs`` (keys :func:`made_alike` lets differ, so that
    runs of one configuration may mix them)."""
    trainer = cfg.get("trainer", {})
    device = trainer.get("device")
    parts = [hardware_name(hardware, device) or "unknown hardware"]
    if measured_on_cpu(hardware, device) and hardware.get("torch_threads"):
        threads = hardware["torch_threads"]
        parts.append(f"{threads} thread{'s' * (threads != 1)}")
    if hardware.get("processes"):
        parts.append(f"{hardware['processes']} processes")
    if trainer.get("compile"):
        parts.append(f"compiled ({trainer.get('compile_mode') or 'default'})")
    # ignored off CUDA and under torchrun (execution.use_cuda_graphs): such runs ran eagerly, and
    # are no set-up of their own
    if (trainer.get("cuda_graphs") and not measured_on_cpu(hardware, device)
            and not hardware.get("processes")):
        parts.append("CUDA graphs")
    return ", ".join(parts)


def trained_on(cfg: dict[str, Any]) -> str | None:
    """The device a run's config asked for (``auto`` takes the GPU where there is one): a
    CPU run on a machine with a GPU is named, and compared, as a CPU run."""
    return (cfg.get("trainer") or {}).get("device")


def record_tag(record: dict[str, Any]) -> str:
    """``<device>-<precision>`` of a record, as result file names carry it."""
    return (f"{device_name(record['provenance']['hardware'], trained_on(record['config']))}-"
            f"{precision_name(record['config']['trainer']['amp'])}")


def basis_size_value(size: int | float) -> str | float:
    """A basis size as a table row keeps it: a fraction as a number, a count of filters as
    its text. ``basis.size=1`` (one filter) and ``1.0`` (all of them) are different
    configurations, and pandas would take 1 and 1.0 for one group (or one float column)."""
    return str(size) if isinstance(size, int) else size


def run_row(record: dict[str, Any], where: str) -> dict[str, Any]:
    """One complete training run's record as a flat row."""
    cfg, model, final = record["config"], record["model"], record["final"]
    prov = record.get("provenance") or {}
    hardware = prov.get("hardware") or {}
    dense = cfg["selection"]["policy"] == "none"
    return {
        "experiment": cfg["name"], "model": cfg["model"]["name"], "width": cfg["model"]["width"],
        "selection": cfg["selection"]["policy"],
        "basis_size": "-" if dense else basis_size_value(cfg["basis"]["size"]),
        "epochs": cfg["trainer"]["epochs"],
        "train_images": cfg["data"]["train_subset"] or "all",
        # for the figures' line on what was trained (not in REQUIRED: not read otherwise)
        "data": cfg["data"].get("name", "?"),
        "test_images": cfg["data"].get("test_subset") or "all",
        "batch_size": cfg["trainer"].get("batch_size", "?"),
        "device": device_name(hardware, trained_on(cfg)),
        "precision": precision_name(cfg["trainer"]["amp"]),
        "seed": cfg["seed"],
        "test_accuracy": final["test_accuracy"], "best_test_accuracy": final["best_test_accuracy"],
        "params": model["parameters"], "forward_flops": model["forward_flops"],
        # skip-training (basis.coefficient_update_every): the mean over its cycle, as the
        # measured step times are (the recorded backward_flops is a step that trains all)
        "backward_flops": model.get("mean_backward_flops", model["backward_flops"]),
        "basis_layers": len(model["basis_layers"]),
        "layers": " ".join(model["basis_layers"]),
        "forward_seconds_per_step": final["forward_seconds_per_step"],
        "backward_seconds_per_step": final["backward_seconds_per_step"],
        "epoch_seconds": median_epoch_seconds(record), "train_seconds": final["train_seconds"],
        "commit": commit_name(prov.get("git")),
        "torch": (prov.get("versions") or {}).get("torch"),
        # which sensitivity table chose the layers (its checksum; None: none, or not recorded)
        "sensitivity_table": record.get("sensitivity_table"),
        # under a time budget, which layer timings chose them (None: another budget)
        **layer_timings(record.get("measured_time")),
        # a record without its hardware (an edited file, a wandb run without provenance)
        "date": prov.get("date"),
        "hardware": hardware_name(hardware, trained_on(cfg)) or "unknown hardware",
        "timing": timing_setup(cfg, hardware), "where": where,
        "profile": made_by_profile(record),  # what its command named (None: nothing)
        "same_run": same_run(cfg, model),
    }


def layer_timings(measured: Any) -> dict[str, str | None]:
    """Which layer timings chose a run's layers under ``selection.budget_metric=time``
    (the record's ``measured_time``): ``layer_timings``, their cache key (it names the
    machine, as a hash of its hardware), and ``timings_device``, the device they were
    measured on; None for another budget, or a record from before they were kept."""
    if not isinstance(measured, dict):
        return {"layer_timings": None, "timings_device": None}
    return {"layer_timings": str(measured.get("key") or "unknown key"),
            "timings_device": str(measured.get("device") or "unknown device")}


def same_run(config: dict[str, Any], model: dict[str, Any]) -> str:
    """What two runs of one table row and seed must share to be one run trained twice (a
    sweep over a key the policy does not read), as JSON: the layers converted and the
    seeds their choice read (``selection.seed`` of random, ``sensitivity.seed`` of the
    sensitivity policies). Runs that differ in these are seeds of the row."""
    selection = config.get("selection") or {}
    policy = selection.get("policy")
    return json.dumps([model["basis_layers"],
                       selection.get("seed") if "seed" in keys_read(selection) else None,
                       (config.get("sensitivity") or {}).get("seed")
                       if policy in SENSITIVITY_POLICIES else None], default=str)


def median_epoch_seconds(record: dict[str, Any]) -> float:
    """A run's median epoch training time. The mean would charge a first epoch that
    compiles (``trainer.compile``) or captures CUDA graphs to every epoch, and so to the
    epoch speedup; ``train_seconds`` keeps the whole wall time. A record from wandb whose
    history lacks the per-epoch times gives the mean its summary holds; an epoch whose time
    is no measurement (null, text: an edited record) is left out of the median, as one
    without a time is. A run with a dense warm-up (``basis.dense_warmup_epochs``) counts
    its epochs in basis form only: the row's epoch speedup is its basis model's, as its step
    speedup is (a median over all epochs was a dense one once the warm-up took half)."""
    config = record.get("config") or {}
    warmup = ((config.get("basis") or {}).get("dense_warmup_epochs") or 0
              if (config.get("selection") or {}).get("policy") != "none" else 0)
    times = [epoch["epoch_seconds"] for epoch in record["epochs"]
             if is_measurement(epoch.get("epoch_seconds"))]
    converted = [epoch["epoch_seconds"] for epoch in record["epochs"]
                 if is_measurement(epoch.get("epoch_seconds"))
                 and is_measurement(epoch.get("epoch")) and epoch["epoch"] > warmup]
    times = converted or times  # (none: an edited record's epochs lack their numbers)
    return statistics.median(times) if times else record["final"]["mean_epoch_seconds"]


def setting_value(value: Any) -> str:
    """A config value as a settings label shows it (a list without spaces: ``, `` parts
    the settings)."""
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


#: Paths that name a run's inputs, which differ between seeds of one configuration: the
#: data elsewhere, and each seed's own trained dense model to convert or estimate from (the
#: README's ``basis.source_checkpoint=outputs/<baseline>/<date>/checkpoint.pt``), which
#: split one configuration's seeds into rows of one seed each.
INPUT_PATHS = ("data.root", "basis.source_checkpoint", "sensitivity.source_checkpoint")


def made_alike(key: str) -> bool:
    """Whether records that differ in ``key`` still computed alike: it changes only how a run
    executes or where it writes (as a resume may; scripts/reproduce.sh lets records made
    with and without such keys mix), or it is a path to an input (:data:`INPUT_PATHS`)."""
    return key in INPUT_PATHS or changes_only_execution(key)


def unread_selection_key(key: str, read: set[str]) -> bool:
    """Whether the flattened ``key`` is a ``selection.*`` key outside ``read`` (what a
    run's policy reads, :func:`~basisconv.selection_checks.keys_read`): carried, not used."""
    return key.startswith("selection.") and key.removeprefix("selection.") not in read


def differing_keys(configs: list[dict[str, Any]], ignored: Callable[[str], bool]) -> list[str]:
    """The flattened keys, but for those ``ignored`` says, in which ``configs`` differ
    (sorted). ``configs`` come from :func:`~basisconv.checkpoint.flat_config`, so a key an
    older version did not write has the value it ran as; other keys that only some of them
    have (removed since) do not count."""
    common = set.intersection(*(set(c) for c in configs))
    return sorted(k for k in common if not ignored(k)
                  and len({json.dumps(c[k], sort_keys=True, default=str) for c in configs}) > 1)


def settings(records: list[tuple[dict, str]]) -> list[str]:
    """Per run, the config settings in which it differs from the other runs of its
    :data:`SHOWN_COLUMNS`, as ``key=value, ...`` (``""`` where they differ in none): a
    table row shows only those columns (its file: device and precision), so runs swept over
    ``selection.count``, ``trainer.lr`` ... are different configurations, not seeds of one,
    and must be told apart in it whatever experiment made them; the basis size is a column
    of its own, and grouping over it keeps one label along a size sweep (the speed plot's
    lines). The experiment name, which each run of a sweep over ``basis.size`` may carry
    its own of, is a setting only where the other keys leave two configurations alike.
    Seeds and keys :func:`made_alike` allows do not count (see :func:`differing_keys`)."""
    rows = pd.DataFrame([run_row(record, where) for record, where in records])
    configs = [flat_config(record["config"]) for record, _ in records]
    configurations = list(rows[CONFIG_COLUMNS].astype(str).itertuples(index=False))
    labels = [""] * len(records)
    for index in rows.groupby(SHOWN_COLUMNS, sort=False, dropna=False).indices.values():
        group = [configs[i] for i in index]
        dense = rows["selection"].iloc[index[0]] == "none"
        read = set().union(*(keys_read(records[i][0]["config"].get("selection") or {})
                             for i in index))  # (a key no run of the row reads splits none)
        keys = differing_keys(group, lambda k: k in SEED_KEYS or made_alike(k)
                              or k in ("basis.size", "name")
                              or (dense and k.startswith(DENSE_UNREAD))
                              or unread_selection_key(k, read))
        shown: dict[tuple, set] = {}
        for i in index:
            label = tuple(configs[i][k] for k in keys)
            shown.setdefault((rows["basis_size"].iloc[i], json.dumps(label, default=str)),
                             set()).add(configurations[i])
        if any(len(alike) > 1 for alike in shown.values()) and all("name" in c for c in group):
            keys = sorted([*keys, "name"])  # e.g. basis_warmup beside a run named after its model
        for i in index:
            labels[i] = ", ".join(f"{k}={setting_value(configs[i][k])}" for k in keys)
    return labels


def curve_rows(record: dict[str, Any], where: str, setting: str = "") -> list[dict[str, Any]]:
    """Per-epoch metrics of one run, with its configuration columns. A metric that is no
    finite number (null, text: an edited record) is a gap in its curve, as a null one is:
    one text value would make its column text, and the mean over seeds a trace. The run's
    columns are its record's: an epoch's entry of one of their names (``seed``, ``model``:
    an edited or foreign record) is no metric, and would have put that epoch in another
    run's curve (or another seed's, averaged as a copy of it)."""
    row = run_row(record, where)
    columns = {**{k: row[k] for k in [*CONFIG_COLUMNS, "seed", "hardware", "where", "same_run"]},
               "settings": setting}
    return [{**columns, **{k: v if is_number(v) and math.isfinite(v) else None
                           for k, v in epoch.items() if k not in columns}}
            for epoch in record["epochs"]]


def recipe(config: dict[str, Any]) -> str:
    """What a run's dense baseline must share with it, as JSON: its flattened config but
    for seeds, keys :func:`made_alike` allows, the experiment's name, and the groups a
    dense run does not read (:data:`DENSE_UNREAD`)."""
    return json.dumps({k: v for k, v in flat_config(config).items()
                       if not (k in SEED_KEYS or made_alike(k) or k == "name"
                               or k.startswith(DENSE_UNREAD))}, sort_keys=True, default=str)


#: The per-epoch columns the training curves read.
CURVE_COLUMNS = ["epoch", "test_accuracy", "train_loss"]


def runs_frame(records: list[tuple[dict, str]]) -> pd.DataFrame:
    """One row per run (:func:`run_row`), with the ``settings`` that tell its table row
    apart (:func:`settings`) and the ``recipe`` its baseline is chosen by (:func:`recipe`)."""
    frame = pd.DataFrame([run_row(record, where) for record, where in records])
    if not records:
        return frame
    return frame.assign(settings=settings(records),
                        recipe=[recipe(record["config"]) for record, _ in records])


def curves_frame(records: list[tuple[dict, str]],
                 labels: list[str] | None = None) -> pd.DataFrame:
    """Per-epoch rows of every run; ``labels`` are the runs' :func:`settings` where the
    caller has them already (``runs_frame(records)["settings"]``), else worked out here."""
    labels = settings(records) if labels is None else labels
    frame = pd.DataFrame([row for (record, where), setting in zip(records, labels)
                          for row in curve_rows(record, where, setting)])
    # the columns the curves read, where no record's epochs have one (an edited record);
    # an entry without its epoch is no point of a curve
    for column in [*ROW_COLUMNS, "seed", "hardware", "where", "same_run", *CURVE_COLUMNS]:
        if column not in frame:
            frame[column] = pd.Series(index=frame.index, dtype=float)
    return frame[frame["epoch"].notna()]


def recipe_differences(row: str, dense: str) -> list[str]:
    """The keys, with the dense run's values, in which two :func:`recipe` s differ (keys
    only one of them has, removed since, do not count)."""
    mine, theirs = json.loads(row), json.loads(dense)
    return [f"{k}={setting_value(theirs[k])}" for k in sorted(mine.keys() & theirs.keys())
            if json.dumps(mine[k], sort_keys=True) != json.dumps(theirs[k], sort_keys=True)]


def baselines(table: pd.DataFrame) -> pd.DataFrame:
    """Row by row of ``table``, the dense configuration it is compared with: the same
    :data:`BASELINE_KEYS`, and of several such (a sweep over ``trainer.lr`` that ran the
    dense model too) the one whose config (:func:`recipe`) differs from the row's in the
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
    ``selection.seed``) stay (:func:`same_run`), and one seed counted twice there is named
    under the table; so do runs of one seed on two machines (record folders merged by
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
    """The per-epoch rows of :func:`curves_frame` with each run counted once
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


def resumed_note(resumed: dict | None,
                 by: str = "an earlier estimate or search of this key") -> str:
    """What a resumed estimate (or a search that found kept work) did not do itself, for
    its page: its time and provenance are this process's alone."""
    if not resumed or not (resumed.get("pretraining") or resumed.get("fine_tunes")):
        return ""
    done = ["the pretraining"] if resumed.get("pretraining") else []
    if resumed.get("fine_tunes"):
        done.append(f"{resumed['fine_tunes']} fine-tune{'s' * (resumed['fine_tunes'] != 1)}")
    return f"; resumed: {' and '.join(done)} done before by {by}, not in this time"
