"""The sensitivity plot (per-layer accuracy drop and loss increase, chosen layers marked)
and the table of a chosen subset."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .plots import pyplot, save_figure


def plot_sensitivity(table: pd.DataFrame, chosen: list[str], path: str | Path, title: str,
                     threshold: float | None = None, noise: dict | None = None) -> Path:
    """Bars by layer in model order: accuracy drop (top) and loss increase (bottom) after
    converting that layer alone; chosen layers in colour, the others grey; the grey band
    is ±1 std of the dense reference over batch orders (``noise``), a yardstick."""
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
    if threshold is not None:
        top.axhline(100 * threshold, color="tab:red", ls="--", lw=1,
                    label=f"threshold {100 * threshold:g}")
    if noise or threshold is not None:
        top.legend(fontsize=8)
    bottom.bar(x, table["loss_increase"], color=colours)
    bottom.set_ylabel("loss increase")
    bottom.set_xticks(list(x), table["layer"], rotation=70, ha="right", fontsize=7)
    for ax in (top, bottom):
        ax.axhline(0, color="black", lw=0.6)
        ax.grid(True, axis="y", alpha=0.3)
    top.set_title(f"{title}\nblue: chosen ({len(chosen)} of {len(table)} candidate layers)",
                  fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def chosen_table(table: pd.DataFrame, chosen: list[str], dense: dict[str, int]) -> str:
    """Markdown: the chosen layers with their sensitivity and savings, and the totals as a
    share of the dense model."""
    rows = table[table["layer"].isin(chosen)].sort_values("position")
    lines = ["| layer | shape | m | accuracy drop | loss increase | params saved | "
             "training MFLOPs saved / image |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows.itertuples():
        lines.append(f"| {r.layer} | {r.shape} | {r.num_basis} | {r.accuracy_drop:+.4f} | "
                     f"{r.loss_increase:+.4f} | {r.params_saved:,} | {r.flops_saved / 1e6:.2f} |")
    params, flops = int(rows["params_saved"].sum()), int(rows["flops_saved"].sum())
    lines.append(f"| **total** ({len(rows)} layers) | | | | | {params:,} "
                 f"({100 * params / dense['params']:.1f} %) | {flops / 1e6:.2f} "
                 f"({100 * flops / dense['flops']:.1f} %) |")
    return "\n".join(lines) + "\n"


def sensitivity_report(cfg, output_dir: str | Path) -> dict:
    """``scripts/sensitivity.py``: the (cached or new) sensitivity table of ``cfg``, the
    layers ``cfg.selection`` chooses from it, and in ``output_dir``: ``sensitivity.csv``,
    ``sensitivity.png``, ``chosen.md`` and ``run.json``; the same to wandb."""
    from omegaconf import OmegaConf

    from ..records import provenance, write_json_atomic, write_text_atomic
    from ..selection import ORDERED_POLICIES, pick_layers
    from ..sensitivity import cache_dir, sensitivity_table
    from ..tracking import Tracker

    output_dir = Path(output_dir)
    table, record = sensitivity_table(cfg)
    chosen = (pick_layers(cfg.selection, table, record["dense"])
              if cfg.selection.policy in ORDERED_POLICIES else [])
    threshold = cfg.selection.threshold if cfg.selection.policy == "sensitivity_threshold" else None
    title = (f"{cfg.model.name} x{cfg.model.width:g}, basis {cfg.basis.size:g}, "
             f"selection {cfg.selection.policy}; key {record['key']}")
    write_text_atomic(output_dir / "sensitivity.csv", table.to_csv(index=False, float_format="%.6g"))
    plot_sensitivity(table, chosen, output_dir / "sensitivity.png", title, threshold,
                     record.get("noise"))
    write_text_atomic(output_dir / "chosen.md",
                      f"# Layers chosen by `{cfg.selection.policy}`\n\n{title}\n\n"
                      + chosen_table(table, chosen, record["dense"]))
    config = OmegaConf.to_container(cfg, resolve=True)
    summary = {"key": record["key"], "cache_dir": str(cache_dir(cfg)),
               "cache_hit": record["cache_hit"], "estimate_seconds": record["seconds"],
               "reference": record["reference"], "pretrained": record["pretrained"],
               "noise": record.get("noise"),
               "dense": record["dense"], "policy": cfg.selection.policy, "chosen": chosen,
               "params_saved": int(table[table["layer"].isin(chosen)]["params_saved"].sum()),
               "flops_saved": int(table[table["layer"].isin(chosen)]["flops_saved"].sum())}
    write_json_atomic(output_dir / "run.json", {
        "kind": "sensitivity", "status": "complete", "config": config,
        "provenance": provenance(), "estimate_provenance": record["provenance"],
        "sensitivity": summary, "table": table.to_dict("records")})
    tracker = Tracker(cfg.logger, config, output_dir, name=output_dir.name)
    try:
        for row in table.sort_values("position").to_dict("records"):
            tracker.log({f"sensitivity/{k}": row[k] for k in
                         ("accuracy_drop", "loss_increase", "params_saved", "flops_saved")},
                        step=int(row["position"]))
        tracker.table("sensitivity/table", table)
        tracker.summary({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
    finally:
        tracker.finish()
    return summary
