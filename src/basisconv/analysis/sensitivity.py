"""Sensitivity runs drawn from their records: the sensitivity plot (per-layer accuracy
drop and loss increase, chosen layers marked), the table of a chosen subset, and the
summary page in ``results/``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from ..noise import difference_std
from ..records import commit_name, hardware_name, write_text_atomic
from ..selection import rule_in_words
from .plots import add_note, pyplot, save_figure
from .runs import record_tag, resumed_note, trained_on
from .tables import markdown


def plot_sensitivity(table: pd.DataFrame, chosen: list[str], path: str | Path, title: str,
                     threshold: float | None = None, noise: dict | None = None,
                     threshold_metric: str = "accuracy_drop", drop_noise: dict | None = None,
                     note: str | None = None) -> Path:
    """Bars by layer in model order: accuracy drop (top) and loss increase (bottom) after
    converting that layer alone; chosen layers in colour, the others grey; the grey band
    is ±1 std of the dense reference over batch orders (``noise``), a yardstick, and the
    dotted lines ±1 pooled std of a few layers' drops over those orders (``drop_noise``),
    the drops' own noise. A ``threshold`` is drawn on the panel of the metric it bounds
    (``threshold_metric``). A ``note`` (the estimate's provenance) goes below the plot."""
    plt = pyplot()
    table = table.sort_values("position")
    x = range(len(table))
    colours = ["tab:blue" if name in chosen else "0.7" for name in table["layer"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.38 * len(table) + 2), 6),
                                      sharex=True)
    top.bar(x, 100 * table["accuracy_drop"], color=colours)
    top.set_ylabel("accuracy drop (points)")
    if noise:
        top.axhspan(-100 * noise["accuracy_std"], 100 * noise["accuracy_std"], color="0.85",
                    zorder=0, label=f"±1 std of the dense reference ({noise['repeats']} batch orders)")
        bottom.axhspan(-noise["loss_std"], noise["loss_std"], color="0.85", zorder=0)
    if drop_noise:
        for panel, scale, std in ((top, 100, drop_noise["accuracy_std"]),
                                  (bottom, 1, drop_noise["loss_std"])):
            for sign in (-1, 1):
                panel.axhline(sign * scale * std, color="0.3", ls=":", lw=1, label=(
                    f"±1 std of {len(drop_noise['layers'])} layers' drops (same orders)"
                    if panel is top and sign == 1 else None))
    bottom.bar(x, table["loss_increase"], color=colours)
    if threshold is not None:
        panel, scale = (top, 100) if threshold_metric == "accuracy_drop" else (bottom, 1)
        panel.axhline(scale * threshold, color="tab:red", ls="--", lw=1,
                      label=f"threshold {scale * threshold:g}")
        panel.legend(fontsize=8)
    if noise or drop_noise:
        top.legend(fontsize=8)
    bottom.set_ylabel("loss increase")
    bottom.set_xticks(list(x), table["layer"], rotation=70, ha="right", fontsize=7)
    for ax in (top, bottom):
        ax.axhline(0, color="black", lw=0.6)
        ax.grid(True, axis="y", alpha=0.3)
    # wrapped to the figure: a budget's rule in words is wider than the plot, and a
    # title cut at the edge lost the budget's metric
    wrapped = "\n".join(textwrap.wrap(title, int(fig.get_figwidth() * 14)))
    top.set_title(f"{wrapped}\nblue: chosen ({len(chosen)} of {len(table)} candidate layers)",
                  fontsize=9)
    add_note(fig, note)
    return save_figure(fig, path)


def chosen_table(table: pd.DataFrame, chosen: list[str], dense: dict[str, int]) -> str:
    """Markdown: the chosen layers with their sensitivity and savings, and the totals as a
    share of the dense model."""
    rows = table[table["layer"].isin(chosen)].sort_values("position")
    lines = ["| layer | shape | m | accuracy drop (points) | loss increase | params saved | "
             "training MFLOPs saved / image |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows.itertuples():
        lines.append(f"| {r.layer} | {r.shape} | {r.num_basis} | {100 * r.accuracy_drop:+.2f} | "
                     f"{r.loss_increase:+.4f} | {r.params_saved:,} | {r.flops_saved / 1e6:.2f} |")
    params, flops = int(rows["params_saved"].sum()), int(rows["flops_saved"].sum())
    lines.append(f"| **total** ({len(rows)} layers) | | | | | {params:,} "
                 f"({100 * params / dense['params']:.1f} %) | {flops / 1e6:.2f} "
                 f"({100 * flops / dense['flops']:.1f} %) |")
    return "\n".join(lines) + "\n"


def _title(record: dict) -> str:
    cfg, summary = record["config"], record["sensitivity"]
    return (f"{cfg['model']['name']} x{cfg['model']['width']:g}, basis "
            f"{cfg['basis']['size']}: {summary['policy']}{_rule(record, ': ')}")


def _rule(record: dict, before: str) -> str:
    """The policy's rule in words after ``before`` (the budget or threshold that chose)."""
    rule = rule_in_words(record["config"].get("selection") or {})
    return f"{before}{rule}" if rule else ""


def _threshold(record: dict) -> dict:
    """The plot's threshold arguments: the bound and the metric it bounds, for the
    threshold policy; none for the others."""
    selection = record["config"]["selection"]
    if selection["policy"] != "sensitivity_threshold":
        return {}
    return {"threshold": selection["threshold"],
            "threshold_metric": selection.get("metric", "accuracy_drop")}  # its default


def draw_run(record: dict, output_dir: str | Path) -> list[Path]:
    """Beside a sensitivity run's record (``scripts/sensitivity.py``): ``sensitivity.png``
    and ``chosen.md`` (the chosen layers and their savings)."""
    output_dir, summary = Path(output_dir), record["sensitivity"]
    table = pd.DataFrame(record["table"])
    title = f"{_title(record)}; key {summary['key']}"
    return [plot_sensitivity(table, summary["chosen"], output_dir / "sensitivity.png", title,
                             noise=summary.get("noise"), drop_noise=summary.get("drop_noise"),
                             **_threshold(record)),
            write_text_atomic(output_dir / "chosen.md",
                              f"# Layers chosen by `{summary['policy']}`\n\n{title}\n\n"
                              + chosen_section(table, summary))]


def chosen_section(table: pd.DataFrame, summary: dict) -> str:
    """The chosen layers and their savings, and for a time budget the measured times they
    were chosen by: the same in ``chosen.md`` and the published page (without the times, a
    10 % time budget reads as having saved 27 % of FLOPs)."""
    return chosen_table(table, summary["chosen"], summary["dense"]) + measured_time_line(summary)


def measured_time_line(summary: dict) -> str:
    """"" or, for ``selection.budget_metric=time``, the measured times the layers were
    chosen by (the table's savings are the cost model's, which that budget does not read).
    Their saving is the sum of single-layer timings, said as an estimate: ResNet-18's 20
    convs timed alone added up to 4 % more than the whole dense step on a 2-core CPU
    (``docs/speed.md``), so a subset's summed saving reads a few % high."""
    measured = summary.get("measured_time")
    if not measured:
        return ""
    layers = pd.DataFrame(measured["layers"])
    step = measured["dense_step_seconds"]
    saved = float(layers[layers["layer"].isin(summary["chosen"])]["seconds_saved"].sum())
    slower = layers[(layers["seconds_saved"] <= 0)
                    & ~layers["layer"].isin(summary["chosen"])]["layer"].tolist()
    device = f" on {measured['device']}" if measured.get("device") else ""  # older records
    return (f"\nChosen by measured time (selection.budget_metric=time): dense training step "
            f"{1e3 * step:.2f} ms{device}; the chosen layers save {1e3 * saved:.2f} ms "
            f"({100 * saved / step:.1f} %) of it, an estimate from each layer timed alone "
            f"(which pays what a whole step overlaps: it tends to run a few % high)"
            + (f"; slower in basis form (never chosen): {', '.join(slower)}" if slower else "")
            + ".\n")


def noise_line(noise: dict | None, own: dict | None = None) -> str:
    """The reference's spread over batch orders and, where measured
    (``sensitivity.drop_noise_layers``), the drops' own: a few layers' drops under the
    same orders, each against the reference fine-tuned under that order."""
    if not noise:
        return ""
    line = (f" The same reference fine-tuned with {noise['repeats']} batch orders: accuracy "
            f"std {100 * noise['accuracy_std']:.2f} points, loss std {noise['loss_std']:.4f} "
            f"(a yardstick for the drops below, not a bound on their noise: a converted "
            f"layer's drop can move as much or more with the batch order).")
    if not own:
        return line
    layers = ", ".join(f"{row['layer']} {100 * row['accuracy_std']:.2f}"
                       for row in own["layers"])
    return (f"{line} The drops' own noise: {len(own['layers'])} layers fine-tuned under the "
            f"same {own['repeats']} orders, their drops' std pooled {100 * own['accuracy_std']:.2f} "
            f"points, loss {own['loss_std']:.4f} (per layer, points: {layers}); a difference "
            f"of two drops within about {100 * difference_std(own['accuracy_std']):.2f} points "
            f"(1 std of a difference) says little.")


def threshold_noise_line(record: dict, table: pd.DataFrame) -> str:
    """"" or, for ``sensitivity_threshold`` with the drops' own noise measured, the layers
    whose drop lies within one std of the threshold: on which side of it they fall is
    within the noise, so a rerun with another batch order may choose otherwise."""
    own, rule = record["sensitivity"].get("drop_noise"), _threshold(record)
    if not own or not rule:
        return ""
    metric = rule["threshold_metric"]
    std = own["accuracy_std" if metric == "accuracy_drop" else "loss_std"]
    near = table[(table[metric] - rule["threshold"]).abs() <= std].sort_values("position")
    scale, unit = (100, " points") if metric == "accuracy_drop" else (1, "")
    return (f" Within the drops' own noise of the threshold ({scale * rule['threshold']:g} "
            f"± {scale * std:.2f}{unit}): {len(near)} of {len(table)} layers"
            + (f" ({', '.join(near['layer'])}), chosen or left by chance of the batch order"
               if len(near) else "") + ".")


def summary_stem(record: dict) -> str:
    """The summary's file name, less its suffix: model, basis size, device and precision.
    Two records of one such name (another width, policy, budget) get what sets them apart
    appended by the caller (:func:`basisconv.analysis.report.distinct_stems`), so a lone
    record keeps the name published results link to."""
    cfg = record["config"]
    return f"sensitivity-{cfg['model']['name']}-m{cfg['basis']['size']}-{record_tag(record)}"


def summarize(record: dict, out: Path, profile: str, stem: str | None = None) -> list[Path]:
    """For ``results/<profile>/``: the sensitivity plot and a Markdown page (chosen subset,
    every candidate layer, the noise yardstick) of one sensitivity run's record, named
    ``stem`` (default :func:`summary_stem`)."""
    cfg, summary = record["config"], record["sensitivity"]
    table = pd.DataFrame(record["table"])
    stem = stem or summary_stem(record)
    prov = record["estimate_provenance"]
    hardware = hardware_name(prov["hardware"], trained_on(cfg))
    note = (f"profile {profile}; estimated {prov['date'][:10]} on {hardware}, "
            f"commit {commit_name(prov['git'])}, {summary['estimate_seconds']:.0f} s"
            f"{resumed_note(summary.get('resumed'))}; key {summary['key']}")
    per_layer = table.sort_values("position")[
        ["layer", "shape", "num_basis", "reconstruction_error", "accuracy_drop",
         "loss_increase", "params_saved", "flops_saved", "seconds"]]
    # in points, as the plot and the chosen table give them
    per_layer = per_layer.assign(accuracy_drop=100 * per_layer["accuracy_drop"]).rename(
        columns={"accuracy_drop": "accuracy_drop (points)"})
    return [
        plot_sensitivity(table, summary["chosen"], out / f"{stem}.png", _title(record),
                         noise=summary.get("noise"), drop_noise=summary.get("drop_noise"),
                         note=note, **_threshold(record)),
        write_text_atomic(out / f"{stem}.md", (
            f"# Sensitivity of {cfg['model']['name']} x{cfg['model']['width']:g} to basis size "
            f"{cfg['basis']['size']}\n\n{note}\n\nDense reference (held-out accuracy after the "
            f"same fine-tune): {100 * summary['reference']['accuracy']:.2f} %; after "
            f"pretraining: {100 * summary['pretrained']['accuracy']:.2f} %."
            f"{noise_line(summary.get('noise'), summary.get('drop_noise'))}"
            f"{threshold_noise_line(record, table)}\n\n"
            f"## Chosen by `{summary['policy']}`{_rule(record, ': ')}\n\n"
            + chosen_section(table, summary)
            + "\n## Every candidate layer\n\n" + markdown(per_layer.round(4).astype(str))))]
