"""Exhaustive search over layer subsets: does the fast sensitivity method find what trying
every subset finds?

For a model with few candidate layers, every subset of ``sensitivity.search_subset_size``
layers is converted together and evaluated exactly as a single layer is in the
sensitivity estimate (same dense start, same fine-tune, same held-out images). The fast
method's choice for that size is the ``k`` least sensitive layers of the table, ranked as
the selection policies rank them (:func:`basisconv.selection.candidate_order`); the
search reports where that subset ranks among all of them, and how well the sum of
single-layer drops predicts a subset's drop (the additivity the fast method assumes).
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from . import distributed, execution
from .model_checks import check_search_size
from .noise import difference_std
from .probe import Probe
from .probe_pool import evaluate_many
from .records import (RunRecord, folder_lock, publish, refuse_other_kind, write_record,
                      write_text_atomic)
from .same_run import refuse_other_settings
from .selection import TABLE_FLOAT_FORMAT, candidate_order, metric_drops
from .sensitivity import say_the_work_is_kept, sensitivity_table
from .sensitivity_cache import check_estimate_record
from .sensitivity_estimate import candidate_table
from .sensitivity_key import cache_dir
from .unread import SELECTION_KEY_SEARCH_READS

log = logging.getLogger(__name__)

SEARCH_TABLE = "search.csv"


def fast_choice(table: pd.DataFrame, k: int, metric: str) -> tuple[str, ...]:
    """The ``k`` least sensitive layers by ``metric``, in model order. Ranked by the
    sensitivity policies' own order (ties by the other metric, then model order), so that
    the subset the search scores is the one ``sensitivity_budget`` with
    ``selection.count=k`` converts (a drop measured on a few hundred images ties often).
    The budget rule (``count`` null) may differ: it passes over a layer that saves nothing
    by its measure (``selection_budget.meet_budget``), which this choice keeps."""
    policy = OmegaConf.create({"policy": "sensitivity_budget", "metric": metric})
    ranked = candidate_order(policy, table)[:k]
    order = dict(zip(table["layer"], table["position"]))
    return tuple(sorted(ranked, key=order.__getitem__))


def exhaustive_search(cfg: DictConfig, output_dir: str | Path) -> dict:
    """Evaluate every subset; write ``search.csv`` (one row per subset) and the run record
    (``run.json``, kind ``exhaustive_search``: the summary); returns the summary.
    ``basisconv.analysis.search`` draws it."""
    distributed.refuse_torchrun("the exhaustive search (scripts/exhaustive_search.py)")
    output_dir = Path(output_dir)
    with say_the_work_is_kept(cfg, "the exhaustive search"):
        with folder_lock(output_dir, what="exhaustive search"), execution.settings_restored():
            refuse_other_kind(output_dir, "exhaustive_search", "the exhaustive search")
            # (the selection's keys but its metric are unread here: unread_search_selection)
            refuse_other_settings(OmegaConf.to_container(cfg, resolve=True), output_dir,
                                  "exhaustive_search", "search",
                                  unread=unread_search_selection(cfg))
            return _exhaustive_search(cfg, output_dir)


def unread_search_selection(cfg: DictConfig) -> tuple[str, ...]:
    """The selection's keys the search does not read (all but ``metric``, by which the fast
    choice is ranked: :data:`~basisconv.unread.SELECTION_KEY_SEARCH_READS`), as flattened
    keys: a search there again with only these changed (``selection=random``, which it
    warns is unread) computes what it computed."""
    return tuple(f"selection.{key}" for key in cfg.selection
                 if key != SELECTION_KEY_SEARCH_READS)


def candidate_count(cfg: DictConfig) -> int:
    """How many candidate layers the sensitivity table will have: from the cost model on a
    dense model, before anything is trained."""
    return len(candidate_table(cfg))


def _exhaustive_search(cfg: DictConfig, output_dir: Path) -> dict:
    """The search, under :func:`exhaustive_search`'s lock: the sensitivity table, every
    subset evaluated as the estimate evaluates one layer, the summary, and the files."""
    started = time.perf_counter()
    # before the (long) sensitivity estimate (validate_search checked it, but not for a
    # model that cannot be shaped on the meta device)
    check_search_size(cfg, candidate_count(cfg))
    table, record = sensitivity_table(cfg)
    check_estimate_record(cfg, record, ("provenance",))  # (read after all the subsets)
    layers = table.sort_values("position")["layer"].tolist()
    total = check_search_size(cfg, len(layers))
    # the estimate's probe: its dense model and reference, kept in the table's cache
    # folder, are found there (on this machine), and a stopped search resumes there
    probe = Probe(cfg, keep_in=cache_dir(cfg))
    reference = probe.evaluate_layers([])
    found = _evaluate_subsets(cfg, probe, table, layers, total, reference)
    summary = _summarize(cfg, table, found, layers, total, reference, record)
    # this process's time (the estimate's included when it made it); work kept
    # before, by the estimate or an earlier, stopped search, is not in it
    summary["seconds"] = time.perf_counter() - started
    summary["kept_pretraining"] = probe.kept_pretraining
    summary["kept_fine_tunes"] = probe.kept_finetunes
    _add_noise_yardsticks(summary, found, record)
    _write_search(cfg, output_dir, found, summary, record, probe.data_read)
    return summary


def _evaluate_subsets(cfg: DictConfig, probe: Probe, table: pd.DataFrame, layers: list[str],
                      total: int, reference: dict) -> pd.DataFrame:
    """One row per subset of ``sensitivity.search_subset_size`` layers (``search.csv``): what
    converting it together measures, beside what the sum of its single-layer rows of
    ``table`` predicts (the additivity the fast method assumes); ranked by accuracy and by
    loss, the fast method's choice marked."""
    k = cfg.sensitivity.search_subset_size
    single = table.set_index("layer")
    rows = []
    subsets = list(itertools.combinations(layers, k))
    results = evaluate_many(probe, [(list(subset), None) for subset in subsets],
                            cfg.sensitivity.workers)
    for i, (subset, result) in enumerate(zip(subsets, results), 1):
        rows.append({"subset": " ".join(subset), **result, **metric_drops(reference, result),
                     "predicted_accuracy_drop": predicted(single, subset, "accuracy_drop"),
                     "predicted_loss_increase": predicted(single, subset, "loss_increase"),
                     "flops_saved": int(single.loc[list(subset), "flops_saved"].sum())})
        log.info("subset %d/%d %-48s accuracy %.4f", i, total, rows[-1]["subset"],
                 result["accuracy"])
    found = pd.DataFrame(rows)
    # rank 1 = best; ties share the better rank
    found["rank_by_accuracy"] = found["accuracy"].rank(ascending=False, method="min").astype(int)
    found["rank_by_loss"] = found["loss"].rank(ascending=True, method="min").astype(int)
    found["fast_choice"] = found["subset"] == " ".join(
        fast_choice(table, k, cfg.selection.metric))
    return found


def _summarize(cfg: DictConfig, table: pd.DataFrame, found: pd.DataFrame, layers: list[str],
               total: int, reference: dict, record: dict) -> dict:
    """The search's answer (the record's ``search``): where the fast choice ranks, the
    choice the other metric would have made, the best, median and worst subsets, how well
    the single-layer sums predict the measured drops, and which estimate was read."""
    k, metric = cfg.sensitivity.search_subset_size, cfg.selection.metric
    mine = found[found["fast_choice"]].iloc[0]
    # of subsets tied for best, the first in model order (a stable sort: pandas' default
    # quicksort picked any of them, maybe another on another CPU)
    best = found.sort_values("rank_by_accuracy", kind="stable").iloc[0]
    # the choice the other metric would have made, for comparison
    other = next(m for m in ("accuracy_drop", "loss_increase") if m != metric)
    alternative = found[found["subset"] == " ".join(fast_choice(table, k, other))].iloc[0]
    return {
        "candidates": layers, "subset_size": k, "subsets": total, "metric": metric,
        "fast_choice": mine["subset"], "fast_accuracy": float(mine["accuracy"]),
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
        "sensitivity_key": record["key"], "sensitivity_cache_hit": record["cache_hit"],
    }


def _add_noise_yardsticks(summary: dict, found: pd.DataFrame, record: dict) -> None:
    """The yardsticks for reading a rank, where the estimate measured them: how far an
    accuracy moves by chance, and how many subsets lie that close to the fast choice."""
    mine = summary["fast_accuracy"]
    # how far the dense reference moves with another batch order (sensitivity.noise_repeats)
    noise = (record.get("noise") or {}).get("accuracy_std")
    if noise is not None:
        summary["noise_accuracy_std"] = noise
        summary["subsets_within_noise_of_fast"] = int(
            ((found["accuracy"] - mine).abs() <= noise).sum() - 1)
    # and, where measured (sensitivity.drop_noise_layers), a converted model's own: two
    # subsets' accuracies differ by about one std of a difference by chance
    own = (record.get("drop_noise") or {}).get("accuracy_std")
    if own is not None:
        summary["drop_noise_accuracy_std"] = own
        summary["subsets_within_drop_noise_of_fast"] = int(
            ((found["accuracy"] - mine).abs() <= difference_std(own)).sum() - 1)


def _write_search(cfg: DictConfig, output_dir: Path, found: pd.DataFrame, summary: dict,
                  record: dict, read: dict) -> None:
    """``search.csv`` (the subsets' table) and the run record, published where
    ``cfg.publish`` says; ``read``, the data its probe read (``provenance.data``, which a
    search again in its folder compares a relative ``data.root`` with)."""
    write_text_atomic(output_dir / SEARCH_TABLE,
                      found.to_csv(index=False, float_format=TABLE_FLOAT_FORMAT))
    run = RunRecord("exhaustive_search", OmegaConf.to_container(cfg, resolve=True),
                    status="complete", results={
                        "search": summary, "table": found.to_dict("records"),
                        # who made the table the fast choice read (maybe another run, cached)
                        "estimate_provenance": record["provenance"]})
    run.provenance["data"] = read
    write_record(output_dir, run)
    publish(run.as_dict(), cfg.publish, output_dir)


def predicted(single: pd.DataFrame, subset: tuple[str, ...], column: str) -> float:
    """The sum of the subset's single-layer ``column``, rounded off its float noise: else
    0.1 + 0.2 and 0.3 + 0.0 differ (0.30000000000000004), so subsets that tie are ranked
    apart by chance in the Spearman correlations."""
    return round(float(single.loc[list(subset), column].sum()), 12)


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation (Pearson on ranks; pandas' own needs scipy); values equal
    but for float noise (measured drops are differences of accuracies) tie."""
    return float(a.round(12).rank().corr(b.round(12).rank()))
