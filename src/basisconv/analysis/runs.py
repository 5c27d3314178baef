"""Training runs as one pandas DataFrame, from their local run records, and the
comparison table over seeds (mean and std), relative to the dense baseline."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

# What identifies a configuration; runs that differ only in the seed are its repeats.
CONFIG_COLUMNS = ["model", "width", "selection", "basis_size", "basis_init", "epochs",
                  "train_images"]
METRIC_COLUMNS = ["test_accuracy", "best_test_accuracy", "params", "forward_flops",
                  "backward_flops", "basis_layers", "forward_seconds_per_step",
                  "backward_seconds_per_step", "mean_epoch_seconds", "train_seconds"]


def run_row(record: dict, path: Path) -> dict:
    """One complete training run's record as a flat row."""
    cfg, model, final = record["config"], record["model"], record["final"]
    prov = record["provenance"]
    dense = cfg["selection"]["policy"] == "none"
    return {
        "name": cfg["name"], "model": cfg["model"]["name"], "width": cfg["model"]["width"],
        "selection": cfg["selection"]["policy"],
        "basis_size": None if dense else cfg["basis"]["size"],
        "basis_init": None if dense else cfg["basis"]["init"],
        "epochs": cfg["trainer"]["epochs"], "train_images": cfg["data"]["train_subset"],
        "seed": cfg["seed"],
        "test_accuracy": final["test_accuracy"], "best_test_accuracy": final["best_test_accuracy"],
        "params": model["parameters"], "forward_flops": model["forward_flops"],
        "backward_flops": model["backward_flops"], "basis_layers": len(model["basis_layers"]),
        "layers": " ".join(model["basis_layers"]),
        "forward_seconds_per_step": final["forward_seconds_per_step"],
        "backward_seconds_per_step": final["backward_seconds_per_step"],
        "mean_epoch_seconds": final["mean_epoch_seconds"], "train_seconds": final["train_seconds"],
        "commit": (prov.get("git") or {}).get("commit"), "date": prov.get("date"),
        "hardware": (prov.get("hardware") or {}).get("gpu") or (prov.get("hardware") or {}).get("cpu"),
        "run_dir": str(path.parent),
    }


def load_runs(root: str | Path) -> pd.DataFrame:
    """Every complete training run under ``root`` (its ``run.json`` files); incomplete
    runs and other records (sensitivity, search) are skipped, unreadable ones logged."""
    rows = []
    for path in sorted(Path(root).rglob("run.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            log.warning("skipping unreadable run record %s (%s)", path, err)
            continue
        if record.get("kind") or record.get("status") != "complete":
            continue
        rows.append(run_row(record, path))
    return pd.DataFrame(rows)


def compare(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: seeds, accuracy mean and std, cost, time, and each relative to
    the dense baseline of the same model, width, epochs and data (speedup = baseline epoch
    time / this epoch time)."""
    keys = [c for c in CONFIG_COLUMNS if c in runs]
    filled = runs.assign(**{c: runs[c].fillna("-") for c in keys})
    grouped = filled.groupby(keys, sort=False)
    table = grouped[METRIC_COLUMNS].mean()
    table["seeds"] = grouped.size()
    table["test_accuracy_std"] = grouped["test_accuracy"].std(ddof=1)
    table = table.reset_index()
    base_keys = ["model", "width", "epochs", "train_images"]
    baseline = table[table["selection"] == "none"].set_index(base_keys)
    for column, name in (("params", "params_ratio"), ("forward_flops", "flops_ratio")):
        table[name] = [row[column] / baseline.loc[tuple(row[k] for k in base_keys), column]
                       if tuple(row[k] for k in base_keys) in baseline.index else float("nan")
                       for _, row in table.iterrows()]
    table["epoch_speedup"] = [
        baseline.loc[tuple(row[k] for k in base_keys), "mean_epoch_seconds"] / row["mean_epoch_seconds"]
        if tuple(row[k] for k in base_keys) in baseline.index else float("nan")
        for _, row in table.iterrows()]
    table["accuracy_change"] = [
        row["test_accuracy"] - baseline.loc[tuple(row[k] for k in base_keys), "test_accuracy"]
        if tuple(row[k] for k in base_keys) in baseline.index else float("nan")
        for _, row in table.iterrows()]
    return table


def comparison_markdown(table: pd.DataFrame) -> str:
    """The comparison as a Markdown table (accuracy in %, mean ± std over seeds)."""
    lines = ["| selection | basis size | seeds | test accuracy (%) | vs baseline (points) | "
             "basis layers | parameters | FLOPs (fwd) | fwd / bwd ms per step | epoch s | "
             "epoch speedup |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table.itertuples():
        std = f" ± {100 * r.test_accuracy_std:.2f}" if r.seeds > 1 else ""
        lines.append(
            f"| {r.selection} | {r.basis_size} | {r.seeds} | {100 * r.test_accuracy:.2f}{std} | "
            f"{100 * r.accuracy_change:+.2f} | {r.basis_layers:.0f} | {r.params:,.0f} "
            f"({100 * r.params_ratio:.0f} %) | {r.forward_flops / 1e6:.1f} M "
            f"({100 * r.flops_ratio:.0f} %) | {1e3 * r.forward_seconds_per_step:.1f} / "
            f"{1e3 * r.backward_seconds_per_step:.1f} | {r.mean_epoch_seconds:.1f} | "
            f"{r.epoch_speedup:.2f}x |")
    return "\n".join(lines) + "\n"
