"""The plots of our comparison (the paper's figures are not known to us) and the training
curves, and the speed benchmark's plot (the speed summary's, across hardware, is drawn by
:mod:`.speed`, which loads no torch). Every figure of the comparison carries a footer
saying which profile, hardware, commit and date its runs came from; the benchmark's says
it in its title."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from matplotlib.transforms import Bbox

from ..cost_formulas import basis_conv2d_cost, conv2d_cost
from ..layer_options import resolve_num_basis
from .comparison import BASELINE_KEYS, baselines
from .plots import LINE_STYLES, add_note, pyplot, save_figure, steady_colour
from .runs import ROW_COLUMNS

log = logging.getLogger(__name__)


#: One colour per selection policy in every figure of the comparison (else each figure
#: takes matplotlib's cycle in its own order, so first_k is green in one and brown in the
#: other, and green means two policies).
SELECTION_COLOURS = {"none": "tab:blue", "all": "tab:orange", "first_k": "tab:green",
                     "last_k": "tab:red", "random": "tab:purple",
                     "sensitivity_budget": "tab:brown", "sensitivity_threshold": "tab:pink",
                     "list": "tab:olive", "blocks": "tab:cyan"}
#: The spare colours (:data:`~.plots.EXTRA_COLOURS`) that policies not listed above (a
#: user's own) took, in the order the process first drew them, so each keeps one colour in
#: every figure of an analysis and two new ones differ (they were all grey).
_EXTRA_TAKEN: dict[str, str] = {}


def selection_colour(selection: str) -> str:
    return steady_colour(selection, SELECTION_COLOURS, _EXTRA_TAKEN)


def speedup_axis(ax) -> None:
    """A log axis of speedups whose ticks read as numbers (1.5x between 1 and 2, not bare
    minor ticks, between which the measured values would sit unlabelled)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(FixedLocator([0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7, 10]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.axhline(1.0, color="0.5", lw=0.8)


def _finish(fig, path: Path, note: str) -> Path:
    """Add the provenance note below the plot (:func:`add_note`), save."""
    add_note(fig, note)
    return save_figure(fig, path)


def speed_vs_basis_size(table: pd.DataFrame, path: Path, note: str) -> Path | None:
    """Forward and backward time per step (left) and speedup over the dense baseline
    (right) against the basis size, for basis convolutions in every layer, with the
    speedup the FLOP count predicts; one set of lines per model, epochs, data and swept
    setting, each beside the baseline its table rows are compared with
    (:func:`~basisconv.analysis.comparison.baselines`). ``None`` when there is no size sweep.
    Sizes given as fractions are drawn, or counts of filters when there are no fractions
    (a sweep of both draws the fractions and says which counts it leaves to the table)."""
    sweep = table[(table["selection"] == "all") & table["step_speedup"].notna()]
    if sweep.empty:  # a row has a step speedup only where its baseline was run
        return None
    # one axis, one unit: fractions where the sweep has any, else counts (kept as text)
    counts = sweep["basis_size"].map(lambda size: isinstance(size, str))
    unit = "number of basis filters per layer" if counts.all() else \
        "fraction of each layer's filters"
    if counts.any() and not counts.all():  # (the table has them: said, not dropped unsaid)
        log.warning("the speed plot %s draws the sizes given as fractions; the rows with a "
                    "number of filters (basis.size=%s) are in the table only", path.name,
                    ",".join(dict.fromkeys(sweep.loc[counts, "basis_size"])))
    sweep = sweep[counts] if counts.all() else sweep[~counts]
    sweep = sweep.assign(size=pd.to_numeric(sweep["basis_size"])).sort_values("size")
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    base = baselines(table).set_axis(table.index)  # the dense rows the table compares with
    groups = list(sweep.groupby([*BASELINE_KEYS, "settings"], sort=False))
    # what tells the groups apart, as the curves' labels name it; each dense row drawn once
    # (the rows of a basis-only setting share one), named by its own settings
    varying = [c for c in ("model", "width", "epochs", "train_images") if sweep[c].nunique() > 1]
    drawn_dense = set()
    for _, rows in groups:
        first, dense = rows.iloc[0], base.loc[rows.index[0]]
        of, dense_of = ((_qualifier(first, varying), _qualifier(dense, varying))
                        if len(groups) > 1 else ("", ""))
        key = (dense_of, dense["forward_seconds_per_step"], dense["backward_seconds_per_step"])
        for column, marker, label in (("forward_seconds_per_step", "o", "forward"),
                                      ("backward_seconds_per_step", "s", "backward")):
            line, = left.plot(rows["size"], 1e3 * rows[column], marker + "-",
                              label=f"basis, {label}{of}")
            if key not in drawn_dense:
                left.axhline(1e3 * dense[column], color=line.get_color(), ls=":",
                             label=f"dense, {label}{dense_of}")
        drawn_dense.add(key)
        # the two measured lines often coincide: drawn so that each stays visible; the
        # bars: ±1 sample std of one seed's speedup, from both rows' spread over seeds (as
        # accuracies are mean ± sample std; the mean's own uncertainty is std / sqrt(seeds))
        right.errorbar(rows["size"], rows["step_speedup"],
                       yerr=rows["step_speedup"] * _relative_step_spread(rows, base),
                       fmt="o-", lw=2.5, alpha=0.6, capsize=3,
                       label=f"measured, fwd+bwd step (bars: ±1 std of one seed's speedup){of}")
        right.plot(rows["size"], rows["epoch_speedup"], "s--", mfc="none",
                   label=f"measured, epoch{of}")
        right.plot(rows["size"], rows["theory_speedup"], "k--" if len(groups) == 1 else "--",
                   label=f"theory (training FLOPs){of}")
    left.set_ylabel("ms per step")
    left.set_title("time per training step")
    speedup_axis(right)
    right.set_ylabel("speedup over dense (x, log scale)")
    right.set_title("speedup (mean step time over seeds)")
    for ax in (left, right):
        ax.set_xlabel(f"basis size ({unit})")
        ax.grid(True, alpha=0.3)
        if len(groups) == 1:
            ax.legend(fontsize=8)
        else:  # below the axes: a legend of several groups covered their lines
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(0, -0.16))
            fig.set_figheight(4.3 + 0.12 * len(groups) * 3)
    models = ", ".join(dict.fromkeys(f"{m} x{w:g}" for m, w in zip(sweep["model"], sweep["width"])))
    fig.suptitle(f"{models}: basis convolutions in every layer", fontsize=10)
    return _finish(fig, path, note)


def _relative_step_spread(rows: pd.DataFrame, base: pd.DataFrame) -> pd.Series:
    """The relative sample std of one seed's step speedup (a dense step over a basis step)
    about ``rows``' speedups of the means, from each step's relative std over its seeds (to
    first order they add in quadrature); NaN, no bar, where either row has one seed (its
    spread is not known: a bar of the other's alone, or of 0, would read as the spread)."""
    def relative(frame: pd.DataFrame) -> pd.Series:
        step = frame["forward_seconds_per_step"] + frame["backward_seconds_per_step"]
        return frame["step_seconds_std"] / step
    return (relative(rows) ** 2 + relative(base.loc[rows.index]) ** 2) ** 0.5


# Settings a plot label names already by its own words: the row's epochs and training images.
LABELLED_KEYS = {"trainer.epochs": "epochs", "data.train_subset": "train_images"}


def _settings(row: pd.Series, labelled: list[str]) -> str:
    """The row's settings (:func:`~basisconv.analysis.runs.settings`) but for those the label
    names already (``labelled``: epochs, train_images), which would read twice."""
    return ", ".join(part for part in (row.get("settings") or "").split(", ")
                     if part and LABELLED_KEYS.get(part.split("=", 1)[0]) not in labelled)


def accuracy_vs_parameters(table: pd.DataFrame, path: Path, note: str) -> Path:
    """Test accuracy (mean ± std over seeds) against parameters, one point per config."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    labels = []
    for selection, group in table.groupby("selection", sort=False):
        ax.errorbar(group["params"], 100 * group["test_accuracy"],
                    yerr=100 * group["test_accuracy_std"], fmt="o", capsize=3,  # one seed: none
                    label=selection, color=selection_colour(selection))
        # the sizes of "all", and the settings that tell apart rows of one policy and size
        # (a sweep's: two points of one colour and size read alike without them); all of
        # them, epochs and training images too: no word of these labels names those
        for _, r in group.iterrows():
            label = ", ".join(part for part in (
                f"m={r['basis_size']}" if selection == "all" else "", _settings(r, [])) if part)
            if label:
                labels.append(ax.annotate(label, (r["params"], 100 * r["test_accuracy"]),
                                          xytext=LABEL_CORNERS[0][:2], fontsize=7,
                                          textcoords="offset points"))
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, title="selection")
    ax.set_title("accuracy against model size (mean over seeds, bars ±1 sample std)",
                 fontsize=10)
    add_note(fig, note)
    points = [(x, 100 * (y - err), 100 * (y + err)) for x, y, err in zip(
        table["params"], table["test_accuracy"], table["test_accuracy_std"].fillna(0))]
    place_clear(ax, labels, points)
    return save_figure(fig, path)


# Where a point's label may go, in turn: above right, above left, below right, below left
# (offset in points, alignment).
LABEL_CORNERS = ((4, 4, "left", "bottom"), (-4, 4, "right", "bottom"),
                 (4, -4, "left", "top"), (-4, -4, "right", "top"))


def place_clear(ax, labels: list, points: list[tuple[float, float, float]]) -> None:
    """Put each point label (an annotation of ``ax`` at its point) at the first corner of
    :data:`LABEL_CORNERS` where it stays inside the axes and covers no marker, error bar
    (``points``: x, bar bottom, bar top, in data units) or label placed before it; the
    first corner where none is clear (found in review: above right, "m=0.5" of the
    accuracy plot sat on the markers of the selected rows beside it). Call it once the
    figure is laid out: the test is in display units."""
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    pad = 4 * ax.figure.dpi / 72  # a marker's radius (matplotlib's 6-point default)
    taken = []
    for x, low, high in points:
        (x0, y0), (x1, y1) = ax.transData.transform([(x, low), (x, high)])
        taken.append(Bbox([[x0 - pad, min(y0, y1) - pad], [x1 + pad, max(y0, y1) + pad]]))
    inside = ax.get_window_extent(renderer)
    for label in labels:
        for dx, dy, ha, va in (*LABEL_CORNERS, LABEL_CORNERS[0]):
            label.xyann = (dx, dy)
            label.set(horizontalalignment=ha, verticalalignment=va)
            box = label.get_window_extent(renderer)
            if (inside.containsx(box.x0) and inside.containsx(box.x1) and inside.containsy(
                    box.y0) and inside.containsy(box.y1) and not box.count_overlaps(taken)):
                break
        taken.append(box)


def _curve_label(run: pd.Series, varying: list[str]) -> str:
    """``selection m=size``, with the model, epochs or data where those differ between
    the configurations of one plot, and the settings that tell apart rows alike in those."""
    label = run["selection"] + ("" if run["basis_size"] == "-" else f" m={run['basis_size']}")
    return label + _qualifier(run, varying)


def _qualifier(run: pd.Series, varying: list[str]) -> str:
    """`` (model, epochs, data)`` of :func:`_curve_label`, for those of ``varying``, then
    `` (settings)``; "" for none."""
    extra = [f"{run['model']} x{run['width']:g}"] if {"model", "width"} & set(varying) else []
    extra += ([f"{run['epochs']} epoch{'' if run['epochs'] == 1 else 's'}"]
              if "epochs" in varying else [])
    extra += [f"{run['train_images']} images"] if "train_images" in varying else []
    shown = _settings(run, varying)
    return (f" ({', '.join(extra)})" if extra else "") + (f" ({shown})" if shown else "")


def training_curves(curves: pd.DataFrame, path: Path, note: str) -> Path | None:
    """Test accuracy and train loss per epoch, mean over seeds with a band of ±1 sample std
    (the seeds' spread is about the gaps between the lines), one line per config (the
    table's rows: configurations that differ only in model or epochs are not averaged); a
    policy has its colour of every figure, its rows their line styles."""
    plt = pyplot()
    if curves.empty:  # no epoch a curve could draw
        return None
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4.3))
    varying = [c for c in ("model", "width", "epochs", "train_images") if curves[c].nunique() > 1]
    rows_of: dict[str, int] = {}
    for _, group in curves.groupby(ROW_COLUMNS, sort=False):
        first = group.iloc[0]
        name = _curve_label(first, varying)
        style = LINE_STYLES[rows_of.get(first["selection"], 0) % len(LINE_STYLES)]
        rows_of[first["selection"]] = rows_of.get(first["selection"], 0) + 1
        by_epoch = group.groupby("epoch")[["test_accuracy", "train_loss"]]
        mean, std = by_epoch.mean(), by_epoch.std()  # one seed: no band
        for ax, column, scale in ((acc, "test_accuracy", 100), (loss, "train_loss", 1)):
            ax.plot(mean.index, scale * mean[column], style, label=name,
                    color=selection_colour(first["selection"]))
            ax.fill_between(mean.index, scale * (mean[column] - std[column]),
                            scale * (mean[column] + std[column]), alpha=0.12, lw=0,
                            color=selection_colour(first["selection"]))
    acc.set_ylabel("test accuracy (%)")
    loss.set_ylabel("train loss")
    for ax in (acc, loss):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    acc.legend(fontsize=7)
    fig.suptitle("training curves (mean over seeds, bands ±1 sample std)", fontsize=10)
    return _finish(fig, path, note)


def basis_speedups(layer_rows: list[dict], model_rows: list[dict], path: Path, title: str, *,
                   target_slack: float) -> Path:
    """The speed benchmark's plot (rows of ``basisconv.bench.layers`` and
    ``basisconv.bench.whole_model``): speedup over dense against the basis fraction, per
    ResNet-18 conv shape with the FLOP-count line of a 3x3 C->C conv (left), and for the
    whole model with its FLOP ratio, the target (the FLOP ratio times ``target_slack``) and
    the time bound (right); a panel without rows is left out."""
    plt = pyplot()
    panels = [rows for rows in (layer_rows, model_rows) if rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    axes = list(axes[0])
    if layer_rows:
        ax = axes.pop(0)
        shapes = list(dict.fromkeys(r["shape"] for r in layer_rows))
        cmap = plt.get_cmap("tab20")
        for i, shape in enumerate(shapes):
            rows = [r for r in layer_rows if r["shape"] == shape]
            ax.plot([r["fraction"] for r in rows], [1 / r["fwdbwd_ratio"] for r in rows], "o-",
                    color=cmap(i % 20), lw=1, ms=3, label=shape)
        # theoretical line of a 3x3 conv C -> C (the shape of 12 of ResNet-18's 20 convs)
        fractions = [i / 100 for i in range(5, 101)]
        theory = [1 / (basis_conv2d_cost(256, 256, 3, resolve_num_basis(f, 256), 8,
                                         combine=layer_rows[0]["combine"]).total_flops
                       / conv2d_cost(256, 256, 3, 8).total_flops) for f in fractions]
        ax.plot(fractions, theory, "k--", lw=1.5, label="theory, 3x3 C->C")
        ax.set_title("single layers, forward+backward")
        ax.legend(fontsize=6, ncol=2)
    if model_rows:
        ax = axes.pop(0)
        f = [r["fraction"] for r in model_rows]
        ax.plot(f, [1 / r["fwdbwd_ratio"] for r in model_rows], "o-", label="measured fwd+bwd")
        ax.plot(f, [1 / r["fwd_ratio"] for r in model_rows], "s-", label="measured fwd")
        ax.plot(f, [1 / r["theory_fwdbwd_ratio"] for r in model_rows], "k--", label="theory (FLOPs)")
        ax.plot(f, [1 / (target_slack * r["theory_fwdbwd_ratio"]) for r in model_rows], "k:",
                label=f"target (theory / {target_slack})")
        if "time_bound_ratio" in model_rows[0]:
            # the rest is what the dense step takes beyond its convs timed alone; where
            # those add up past the step (launches a step overlaps), it is taken as 0
            rest = ("rest as dense" if any(r.get("dense_non_conv_share", 1) > 0
                                           for r in model_rows)
                    else "rest as 0: convs alone\ntook longer than the dense step")
            ax.plot(f, [1 / r["time_bound_ratio"] for r in model_rows], "^-", color="gray",
                    label=f"time bound (convs at theory, {rest})")
        ax.set_title("ResNet-18, all convs converted (where they save)")
        ax.legend(fontsize=7)
    for ax in fig.axes:
        ax.set_xlabel("basis fraction m / C_out")
        ax.set_ylabel("speedup over dense (x, log scale)")
        speedup_axis(ax)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
