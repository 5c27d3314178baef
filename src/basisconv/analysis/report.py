"""``scripts/analyze.py``: from run records to the paper's tables and plots in
``results/<profile>/``, each file stating the profile, hardware, commits and dates of the
runs it came from; file names carry the device and precision."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from ..errors import ConfigError
from ..records import provenance, write_json_atomic, write_text_atomic
from . import figures
from .runs import (compare, curves_frame, device_name, precision_name, read_records,
                   records_of_kind, runs_frame, training_records, wandb_records)
from .sensitivity import chosen_table, plot_sensitivity
from .tables import markdown, write_table

log = logging.getLogger(__name__)


def provenance_note(runs: pd.DataFrame, profile: str, made: dict) -> str:
    """One line: where the numbers of a table or plot came from."""
    dates = sorted(d[:10] for d in runs["date"].dropna())
    span = f"{dates[0]}..{dates[-1]}" if dates and dates[0] != dates[-1] else (dates or ["?"])[0]
    return (f"profile {profile}; {len(runs)} runs on {', '.join(sorted(set(runs['hardware'].astype(str))))}; "
            f"commit {', '.join(sorted(set(runs['commit'].astype(str))))}; run {span}; "
            f"made {made['date'][:10]} by `{made['command']}`")


def write_report(cfg: DictConfig, command: str) -> list[Path]:
    """Collect the runs (local records or wandb), write every table and plot; returns the
    files written."""
    local = read_records(cfg.runs_dir) if cfg.source == "local" else []
    if cfg.source == "local":
        records = training_records(local)
    elif cfg.source == "wandb":
        records = wandb_records(cfg.wandb.project, cfg.wandb.entity)
    else:
        raise ConfigError(f"source={cfg.source!r}; choose local or wandb")
    if not records:
        where = cfg.runs_dir if cfg.source == "local" else f"wandb project {cfg.wandb.project}"
        raise ConfigError(f"no complete training run found in {where}; run "
                          f"`make reproduce PROFILE={cfg.profile}` (or some training runs) first")
    out = Path(cfg.out_dir)
    made = provenance(command)
    runs, curves = runs_frame(records), curves_frame(records)
    table = compare(runs)
    written: list[Path] = []
    for (device, precision), part in table.groupby(["device", "precision"], sort=False):
        tag = f"{device}-{precision}"
        mine = runs[(runs["device"] == device) & (runs["precision"] == precision)]
        note = provenance_note(mine, cfg.profile, made)
        written += write_table(part, out / f"comparison-{tag}", note)
        for path in (figures.speed_vs_basis_size(part, out / f"speed-{tag}.png", note),
                     figures.accuracy_vs_parameters(part, out / f"accuracy-params-{tag}.png", note),
                     figures.training_curves(
                         curves[(curves["device"] == device) & (curves["precision"] == precision)],
                         out / f"curves-{tag}.png", note)):
            if path is not None:
                written.append(path)
    if cfg.source == "local":
        written += sensitivity_outputs(local, out, cfg.profile)
    index = {"provenance": made, "source": cfg.source,
             "files": [p.name for p in written],
             "runs": runs.to_dict("records")}
    written.append(write_json_atomic(out / "index.json", index))
    return written


def _tag(record: dict) -> str:
    return (f"{device_name(record['provenance']['hardware'])}-"
            f"{precision_name(record['config']['trainer']['amp'])}")


def noise_line(noise: dict | None) -> str:
    if not noise:
        return ""
    return (f" The same reference fine-tuned with {noise['repeats']} batch orders: accuracy "
            f"std {noise['accuracy_std']:.4f}, loss std {noise['loss_std']:.4f} (a yardstick "
            f"for the drops below, which all share one batch order).")


def sensitivity_outputs(records: list[tuple[dict, Path]], out: Path, profile: str) -> list[Path]:
    """The sensitivity plot and chosen subset of each sensitivity run, and a summary of
    each exhaustive search, re-drawn from their records."""
    from ..search import plot_search

    written = []
    for record, folder in records_of_kind(records, "sensitivity"):
        cfg, summary = record["config"], record["sensitivity"]
        table = pd.DataFrame(record["table"])
        stem = f"sensitivity-{cfg['model']['name']}-m{cfg['basis']['size']:g}-{_tag(record)}"
        prov = record["estimate_provenance"]
        hardware = prov["hardware"].get("gpu") or prov["hardware"]["cpu"]
        note = (f"profile {profile}; estimated {prov['date'][:10]} on {hardware}, "
                f"commit {(prov['git']['commit'] or '')[:7]}, {summary['estimate_seconds']:.0f} s; "
                f"key {summary['key']}")
        threshold = cfg["selection"]["threshold"] if summary["policy"] == "sensitivity_threshold" else None
        written.append(plot_sensitivity(table, summary["chosen"], out / f"{stem}.png",
                                        f"{cfg['model']['name']} x{cfg['model']['width']:g}, basis "
                                        f"{cfg['basis']['size']:g}: {summary['policy']}", threshold,
                                        summary.get("noise")))
        per_layer = table.sort_values("position")[
            ["layer", "shape", "num_basis", "reconstruction_error", "accuracy_drop",
             "loss_increase", "params_saved", "flops_saved", "seconds"]]
        written.append(write_text_atomic(out / f"{stem}.md", (
            f"# Sensitivity of {cfg['model']['name']} x{cfg['model']['width']:g} to basis size "
            f"{cfg['basis']['size']:g}\n\n{note}\n\nDense reference (held-out accuracy after the "
            f"same fine-tune): {summary['reference']['accuracy']:.4f}; after pretraining: "
            f"{summary['pretrained']['accuracy']:.4f}.{noise_line(summary.get('noise'))}\n\n"
            f"## Chosen by `{summary['policy']}`\n\n"
            + chosen_table(table, summary["chosen"], summary["dense"])
            + "\n## Every candidate layer\n\n" + markdown(per_layer.round(4).astype(str)))))
    for record, folder in records_of_kind(records, "exhaustive_search"):
        s, cfg = record["search"], record["config"]
        stem = f"exhaustive-search-{cfg['model']['name']}-{_tag(record)}"
        found = pd.read_csv(folder / "search.csv")
        written.append(plot_search(found, s, out / f"{stem}.png",
                                   f"{cfg['model']['name']} x{cfg['model']['width']:g}, basis "
                                   f"{cfg['basis']['size']:g}: all {s['subsets']} subsets of "
                                   f"{s['subset_size']} layers"))
        prov = record["provenance"]
        written.append(write_text_atomic(out / f"{stem}.md", (
            f"# Exhaustive search: {cfg['model']['name']} x{cfg['model']['width']:g}, basis "
            f"{cfg['basis']['size']:g}, subsets of {s['subset_size']} of {len(s['candidates'])} "
            f"layers\n\nprofile {profile}; run {prov['date'][:10]}, commit "
            f"{(prov['git']['commit'] or '')[:7]}, {s['seconds']:.0f} s\n\n"
            f"| | subset | held-out accuracy |\n|---|---|---:|\n"
            f"| fast method's choice by {s['metric']} (rank {s['fast_rank_by_accuracy']} of {s['subsets']} by "
            f"accuracy, {s['fast_rank_by_loss']} by loss) | {s['fast_choice']} | "
            f"{s['fast_accuracy']:.4f} |\n"
            + (f"| choice by {s['other_metric']} instead (rank {s['other_rank_by_accuracy']}) | "
               f"{s['other_choice']} | {s['other_accuracy']:.4f} |\n" if "other_metric" in s else "")
            + f"| best subset | {s['best_subset']} | {s['best_accuracy']:.4f} |\n"
            f"| median subset | | {s['median_accuracy']:.4f} |\n"
            f"| worst subset | | {s['worst_accuracy']:.4f} |\n"
            f"| dense reference | | {s['reference_accuracy']:.4f} |\n\n"
            f"Spearman correlation of the predicted (sum of single-layer) and measured drop "
            f"over all subsets: accuracy {s['spearman_predicted_vs_measured_drop']:.2f}, "
            f"loss {s['spearman_predicted_vs_measured_loss']:.2f}.\n")))
    return written
