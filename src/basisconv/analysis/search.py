"""Exhaustive searches drawn from their records: every subset's held-out accuracy with
the fast method's choice marked, and the summary page in ``results/``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..noise import difference_std
from ..records import commit_name, hardware_name, write_text_atomic
from .plots import add_note, pyplot, save_figure
from .runs import record_tag, resumed_note, trained_on


def subsets(record: dict, folder: Path) -> pd.DataFrame:
    """One row per subset. Records written before commit ``04946d5`` hold only the
    summary; their table is the ``search.csv`` beside them (one without either is
    unreadable: :func:`basisconv.records.search_table_found`)."""
    if "table" in record:
        return pd.DataFrame(record["table"])
    return pd.read_csv(Path(folder) / "search.csv")


def _title(record: dict) -> str:
    cfg, s = record["config"], record["search"]
    return (f"{cfg['model']['name']} x{cfg['model']['width']:g}, basis {cfg['basis']['size']}: "
            f"all {s['subsets']} subsets of {s['subset_size']} layers")


def draw_run(record: dict, folder: str | Path) -> Path:
    """``search.png`` beside a search's record (``scripts/exhaustive_search.py``)."""
    return plot_search(subsets(record, folder), record["search"], Path(folder) / "search.png",
                       _title(record))


def summary_stem(record: dict) -> str:
    """The summary's file name, less its suffix: model, device and precision. Two records
    of one such name (another basis size, width, subset size) get what sets them apart
    appended by the caller (:func:`basisconv.analysis.report.distinct_stems`), so a lone
    record keeps the name published results link to."""
    return f"exhaustive-search-{record['config']['model']['name']}-{record_tag(record)}"


def summarize(record: dict, folder: Path, out: Path, profile: str,
              stem: str | None = None) -> list[Path]:
    """For ``results/<profile>/``: the search plot and its Markdown summary, named ``stem``
    (default :func:`summary_stem`)."""
    s, cfg = record["search"], record["config"]
    stem = stem or summary_stem(record)
    prov = record["provenance"]
    note = (f"profile {profile}; run {prov['date'][:10]} on "
            f"{hardware_name(prov.get('hardware') or {}, trained_on(cfg)) or 'unknown hardware'}"
            f", commit {commit_name(prov['git'])}, {s['seconds']:.0f} s"
            + resumed_note({"pretraining": s.get("kept_pretraining"),
                            "fine_tunes": s.get("kept_fine_tunes")},
                           by="the estimate or an earlier search of its key"))
    return [
        plot_search(subsets(record, folder), s, out / f"{stem}.png", _title(record), note),
        write_text_atomic(out / f"{stem}.md", (
            f"# Exhaustive search: {cfg['model']['name']} x{cfg['model']['width']:g}, basis "
            f"{cfg['basis']['size']}, subsets of {s['subset_size']} of {len(s['candidates'])} "
            f"layers\n\n{note}\n\n"
            f"| | subset | held-out accuracy (%) |\n|---|---|---:|\n"
            f"| fast method's choice by {s['metric']} (rank {s['fast_rank_by_accuracy']} of {s['subsets']} by "
            f"accuracy, {s['fast_rank_by_loss']} by loss) | {s['fast_choice']} | "
            f"{_percent(s['fast_accuracy'])} |\n"
            + (f"| choice by {s['other_metric']} instead (rank {s['other_rank_by_accuracy']}) | "
               f"{s['other_choice']} | {_percent(s['other_accuracy'])} |\n" if "other_metric" in s else "")
            + f"| best subset | {s['best_subset']} | {_percent(s['best_accuracy'])} |\n"
            f"| median subset | | {_percent(s['median_accuracy'])} |\n"
            f"| worst subset | | {_percent(s['worst_accuracy'])} |\n"
            f"| dense reference | | {_percent(s['reference_accuracy'])} |\n\n"
            + (f"Noise: the dense reference fine-tuned with other batch orders varies by "
               f"{_percent(s['noise_accuracy_std'])} points (std); {s['subsets_within_noise_of_fast']} other "
               f"subsets lie within that of the fast choice, so ranks that close are not "
               f"told apart.\n\n" if "noise_accuracy_std" in s else "")
            + (f"A converted model's own noise (sensitivity.drop_noise_layers: paired drops "
               f"over the same batch orders) is {_percent(s['drop_noise_accuracy_std'])} points (std), so "
               f"two subsets' accuracies differ by about "
               f"{_percent(difference_std(s['drop_noise_accuracy_std']))} points by chance; "
               f"{s['subsets_within_drop_noise_of_fast']} other subsets lie within that of the "
               f"fast choice.\n\n" if "drop_noise_accuracy_std" in s else "")
            + f"Spearman correlation of the predicted (sum of single-layer) and measured drop "
            f"over all subsets: accuracy {_correlation(s['spearman_predicted_vs_measured_drop'])}, "
            f"loss {_correlation(s['spearman_predicted_vs_measured_loss'])}.\n"))]


def _percent(fraction: float) -> str:
    """An accuracy (or its spread) as the other pages and the search's plot give it: in %
    (points for a spread); the record holds fractions."""
    return f"{100 * fraction:.2f}"


def _correlation(value: float | None) -> str:
    """A rank correlation, or why there is none: one subset, or all of them tied (a record
    holds that as null, older ones as NaN)."""
    return "undefined (one subset, or all tied)" if value is None or value != value \
        else f"{value:.2f}"


def plot_search(found: pd.DataFrame, summary: dict, path: Path, title: str,
                note: str | None = None) -> Path:
    """Held-out accuracy of every subset, sorted, with the fast method's choice marked at
    its rank (first among its ties; counted from 1, else rank 2 shows as the third bar)
    and the accuracy's noise band around it; points, as the axis does not start at zero.
    A ``note`` (the search's provenance) goes below the plot."""
    plt = pyplot()
    ranked = found.sort_values(["accuracy", "fast_choice"], ascending=False,
                               kind="stable").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    rank = range(1, len(ranked) + 1)
    ax.scatter(rank, 100 * ranked["accuracy"], s=18, zorder=3,
               c=["tab:orange" if f else "0.5" for f in ranked["fast_choice"]])
    ax.axhline(100 * summary["reference_accuracy"], color="black", ls="--", lw=1,
               label="dense reference")
    if "noise_accuracy_std" in summary and ranked["fast_choice"].any():
        fast = 100 * ranked.loc[ranked["fast_choice"], "accuracy"].iloc[0]
        noise = 100 * summary["noise_accuracy_std"]
        ax.axhspan(fast - noise, fast + noise, color="tab:orange", alpha=0.15, lw=0,
                   label="fast choice ±1 noise std")
    low = 100 * min(ranked["accuracy"].min(), summary["reference_accuracy"])
    high = 100 * max(ranked["accuracy"].max(), summary["reference_accuracy"])
    ax.set_ylim(low - 0.2 * (high - low + 1), high + 0.2 * (high - low + 1))
    ax.set_xlabel("rank of the subset (1 = best)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"{title}\norange: the fast method's choice, rank "
                 f"{summary['fast_rank_by_accuracy']} of {summary['subsets']}", fontsize=9)
    ax.legend(fontsize=8)
    add_note(fig, note)
    return save_figure(fig, path)
