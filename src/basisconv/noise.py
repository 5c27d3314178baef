"""How much an estimate's results move with the fine-tune's batch order: the dense
reference's spread (:func:`reference_noise`), the drops' own (:func:`drop_noise`, on the
layers :func:`spread_layers` picks), and when two results are told apart
(:func:`difference_std`). Apart from the probe that fine-tunes (:mod:`basisconv.probe`)
because these are statistics of its results alone, plain numbers in and out, read by the
estimate, the search and the analysis's pages (which need none of the probe's training).
"""

from __future__ import annotations

from typing import Any


def reference_noise(reference: dict, repeats: list[dict]) -> dict[str, Any] | None:
    """A yardstick for the drops: the spread of the dense reference and its ``repeats``
    (fine-tuned with other batch orders; a drop well inside this spread says little). It
    is not a bound on a drop's noise: a converted layer's drop can move as much or more
    with the batch order, and sharing one order does not cancel that (measured on the quick
    profile in ``results/drop-noise/``, quoted in docs/selection.md; :func:`drop_noise`
    measures it in any estimate)."""
    import pandas as pd
    if not repeats:
        return None
    runs = [reference, *repeats]
    accuracy = pd.Series([r["accuracy"] for r in runs])
    loss = pd.Series([r["loss"] for r in runs])
    return {"repeats": len(runs), "accuracy_std": float(accuracy.std(ddof=1)),
            "loss_std": float(loss.std(ddof=1)), "accuracies": accuracy.tolist()}


def spread_layers(names: list[str], count: int) -> list[str]:
    """``count`` of ``names`` (in model order) spread evenly over them, the middle of each
    of ``count`` equal stretches: one is the middle layer, as many as there are all of
    them. Chosen by position, not by result, so their fine-tunes go in the estimate's one
    batch of jobs."""
    count = min(count, len(names))
    return [names[(2 * i + 1) * len(names) // (2 * count)] for i in range(count)]


def difference_std(std: float) -> float:
    """The std of a difference of two measurements that each vary by ``std``,
    independently: ``sqrt(2) * std``. Two drops (or two subsets' accuracies) closer than
    this are not told apart by one run each."""
    return 2 ** 0.5 * std


def drop_noise(reference: dict, repeats: list[dict], layers: dict[str, list[dict]]
               ) -> dict[str, Any] | None:
    """The drops' own noise, which :func:`reference_noise` is not: for each layer of
    ``layers`` (its fine-tune under the reference's batch order, then under each of the
    ``repeats``' orders), its drops under each order against the reference fine-tuned
    under the same order, and their sample spread; pooled over the layers as the root of
    their mean variance (each layer's spread has only ``len(repeats)`` degrees of
    freedom)."""
    import pandas as pd
    if not repeats or not layers:
        return None
    references = [reference, *repeats]
    rows, variances = [], {"accuracy": [], "loss": []}
    for name, results in layers.items():
        drops = pd.Series([r["accuracy"] - mine["accuracy"]
                           for r, mine in zip(references, results, strict=True)])
        increases = pd.Series([mine["loss"] - r["loss"]
                               for r, mine in zip(references, results, strict=True)])
        rows.append({"layer": name, "accuracy_drops": drops.tolist(),
                     "accuracy_std": float(drops.std(ddof=1)),
                     "loss_std": float(increases.std(ddof=1))})
        variances["accuracy"].append(drops.var(ddof=1))
        variances["loss"].append(increases.var(ddof=1))
    return {"repeats": len(references), "layers": rows,
            "accuracy_std": float(pd.Series(variances["accuracy"]).mean() ** 0.5),
            "loss_std": float(pd.Series(variances["loss"]).mean() ** 0.5)}
