"""Exhaustive search over layer subsets: does the fast sensitivity method find what trying
every subset finds?

For a model with few candidate layers, every subset of ``sensitivity.search_subset_size``
layers is converted together and evaluated exactly as a single layer is in the
sensitivity estimate (same dense start, same fine-tune, same held-out images). The fast
method's choice for that size is the ``k`` least sensitive layers of the table; the
search reports where that subset ranks among all of them, and how well the sum of
single-layer drops predicts a subset's drop (the additivity the fast method assumes).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .records import provenance, write_json_atomic, write_text_atomic
from .sensitivity import Probe, sensitivity_table

log = logging.getLogger(__name__)


def fast_choice(table: pd.DataFrame, k: int, metric: str) -> tuple[str, ...]:
    """The ``k`` least sensitive layers by ``metric`` (ties: model order), in model order."""
    ranked = table.sort_values([metric, "position"], kind="stable")["layer"].tolist()[:k]
    order = dict(zip(table["layer"], table["position"]))
    return tuple(sorted(ranked, key=order.__getitem__))


def exhaustive_search(cfg: DictConfig, output_dir: str | Path) -> dict:
    """Evaluate every subset; write ``search.csv``, ``search.png`` and ``run.json``."""
    output_dir = Path(output_dir)
    started = time.perf_counter()
    table, record = sensitivity_table(cfg)
    k, metric = cfg.sensitivity.search_subset_size, cfg.selection.metric
    layers = table.sort_values("position")["layer"].tolist()
    total = math.comb(len(layers), k)
    if not 1 <= k <= len(layers):
        raise ConfigError(f"sensitivity.search_subset_size={k}; there are {len(layers)} "
                          f"candidate layers, so choose 1..{len(layers)}")
    if total > cfg.sensitivity.search_max_subsets:
        raise ConfigError(f"{total} subsets of {k} among {len(layers)} candidate layers is more "
                          f"than sensitivity.search_max_subsets={cfg.sensitivity.search_max_subsets}; "
                          f"restrict sensitivity.layers, use a smaller model (model=resnet8) or "
                          f"raise the limit")
    probe = Probe(cfg)
    reference = probe.evaluate_layers([])
    single = table.set_index("layer")
    rows = []
    for i, subset in enumerate(itertools.combinations(layers, k), 1):
        result = probe.evaluate_layers(list(subset))
        rows.append({"subset": " ".join(subset), **result,
                     "accuracy_drop": reference["accuracy"] - result["accuracy"],
                     "loss_increase": result["loss"] - reference["loss"],
                     "predicted_accuracy_drop": float(single.loc[list(subset), "accuracy_drop"].sum()),
                     "predicted_loss_increase": float(single.loc[list(subset), "loss_increase"].sum()),
                     "flops_saved": int(single.loc[list(subset), "flops_saved"].sum())})
        log.info("subset %d/%d %-48s accuracy %.4f", i, total, rows[-1]["subset"],
                 result["accuracy"])
    found = pd.DataFrame(rows)
    # rank 1 = best; ties share the better rank
    found["rank_by_accuracy"] = found["accuracy"].rank(ascending=False, method="min").astype(int)
    found["rank_by_loss"] = found["loss"].rank(ascending=True, method="min").astype(int)
    choice = " ".join(fast_choice(table, k, metric))
    found["fast_choice"] = found["subset"] == choice
    mine = found[found["fast_choice"]].iloc[0]
    best = found.sort_values("rank_by_accuracy").iloc[0]
    # the choice the other metric would have made, for comparison
    other = next(m for m in ("accuracy_drop", "loss_increase") if m != metric)
    alternative = found[found["subset"] == " ".join(fast_choice(table, k, other))].iloc[0]
    summary = {
        "candidates": layers, "subset_size": k, "subsets": total, "metric": metric,
        "fast_choice": choice, "fast_accuracy": float(mine["accuracy"]),
        "fast_rank_by_accuracy": int(mine["rank_by_accuracy"]),
        "fast_rank_by_loss": int(mine["rank_by_loss"]),
        "fast_percentile": float((found["accuracy"] < mine["accuracy"]).mean()),
        "other_metric": other, "other_choice": alternative["subset"],
        "other_accuracy": float(alternative["accuracy"]),
        "other_rank_by_accuracy": int(alternative["rank_by_accuracy"]),
        "best_subset": best["subset"], "best_accuracy": float(best["accuracy"]),
        "median_accuracy": float(found["accuracy"].median()),
        "worst_accuracy": float(found["accuracy"].min()),
        "reference_accuracy": reference["accuracy"],
        "spearman_predicted_vs_measured_drop": spearman(found["predicted_accuracy_drop"],
                                                        found["accuracy_drop"]),
        "spearman_predicted_vs_measured_loss": spearman(found["predicted_loss_increase"],
                                                        found["loss_increase"]),
        "sensitivity_key": record["key"], "seconds": time.perf_counter() - started,
    }
    write_text_atomic(output_dir / "search.csv", found.to_csv(index=False, float_format="%.6g"))
    plot_search(found, summary, output_dir / "search.png",
                f"{cfg.model.name} x{cfg.model.width:g}, basis {cfg.basis.size:g}: all "
                f"{total} subsets of {k} layers")
    write_json_atomic(output_dir / "run.json", {
        "kind": "exhaustive_search", "status": "complete",
        "config": OmegaConf.to_container(cfg, resolve=True), "provenance": provenance(),
        "search": summary})
    return summary


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation (Pearson on ranks; pandas' own needs scipy)."""
    return float(a.rank().corr(b.rank()))


def plot_search(found: pd.DataFrame, summary: dict, path: Path, title: str) -> Path:
    """Held-out accuracy of every subset, sorted, with the fast method's choice marked."""
    from .analysis.plots import pyplot, save_figure

    plt = pyplot()
    ranked = found.sort_values("accuracy", ascending=False).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(range(len(ranked)), 100 * ranked["accuracy"],
           color=["tab:orange" if f else "0.65" for f in ranked["fast_choice"]])
    ax.axhline(100 * summary["reference_accuracy"], color="black", ls="--", lw=1,
               label="dense reference")
    low = 100 * min(ranked["accuracy"].min(), summary["reference_accuracy"])
    high = 100 * max(ranked["accuracy"].max(), summary["reference_accuracy"])
    ax.set_ylim(low - 0.2 * (high - low + 1), high + 0.2 * (high - low + 1))
    ax.set_xlabel("subsets, best first")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"{title}\norange: the fast method's choice, rank "
                 f"{summary['fast_rank_by_accuracy']} of {summary['subsets']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
