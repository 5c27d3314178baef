"""Training runs as pandas DataFrames, from their records (read by
:mod:`.record_sources`: the local run records, ``run.json``, the default: no network, or
the wandb API, ``source=wandb``): one row per run, the per-epoch rows of its curves, the
settings that tell a table row apart and the recipe its baseline is chosen by. The
comparison over seeds against the dense baseline is :mod:`.comparison`'s, which reads
these rows."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any, Callable

import pandas as pd

from ..counts import is_number
from ..records import (commit_name, device_name, hardware_name, is_measurement,
                       made_by_profile, measured_on_cpu, precision_name)
from ..same_run import changes_only_execution, flat_config
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
    (sorted). ``configs`` come from :func:`~basisconv.same_run.flat_config`, so a key an
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
