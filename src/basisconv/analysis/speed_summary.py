"""The speed summary's page and plot, written from the tables of :mod:`.speed`: the
tables in Markdown, each row naming its record (:func:`summary`), the whole-model speedup
against the basis fraction with CPU and GPU side by side (:func:`speed_across_hardware`),
and what ``scripts/speed_report.py`` writes (:func:`write_summary`: the page, the CSVs, the
plot and their provenance).

Apart from :mod:`.speed` so that reading the records stays free of the plotting and
writing: ``scripts/reproduce.sh`` reads the whole-model records with
:func:`~.speed.model_speed` to skip a benchmark already measured, and needs none of this.
Like it, this loads no torch.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import DatasetError
from ..records import (commit_name, provenance, threads_name, write_json_atomic,
                       write_text_atomic)
from .plots import LINE_STYLES, add_note, pyplot, save_figure, steady_colour
from .speed import (MEMORY_COLUMNS, MODEL_COLUMNS, RECORD_FILES, model_speed,
                    tf32_where_it_applies, training_memory, training_speed)
from .tables import csv_text, markdown


def _markdown(frame: pd.DataFrame) -> str:
    if not len(frame):
        return "(no records)\n"
    def cell(value) -> str:
        if not isinstance(value, float):
            return str(value)
        return "-" if pd.isna(value) else f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    shown = frame.map(cell)
    return markdown(shown)


def summary(model: pd.DataFrame, train: pd.DataFrame, memory: pd.DataFrame | None = None) -> str:
    """The tables in Markdown, each row naming its record."""
    return "\n".join([
        "## Whole ResNet-18, training forward+backward time relative to dense",
        "",
        "theory_fwdbwd_ratio: the FLOP ratio, the cost model's; time_bound_ratio: the dense "
        "step with its convolutions scaled to their FLOP ratio; fwdbwd_ratio: the measured "
        "time over the dense model's; fwdbwd_vs_theory: measured over FLOP ratio, 1.15 or "
        "less is the target; fwdbwd_spread: the interquartile range of the timed repeats "
        "over their median, the larger of the dense and the basis model's (\"-\": a table "
        "made before commit 22fe1e7 recorded it); dense_fwdbwd_ms: the dense model's, in ms; "
        "threads: torch's CPU threads (\"-\" on a GPU, whose step they do not bound); "
        "tf32 (a column where a row is float32 on a GPU): whether float32 could run in TF32, "
        "\"on\" for cuDNN's convolutions and the matmuls, \"convs\" for the convolutions "
        "alone (torch's default), \"matmuls\" for the matmuls alone, \"off\" for neither "
        "(\"-\": not float32 on a GPU, or a record made before commit 1c3199a kept the "
        "flags); it can change a float32 step's time several fold.",
        "",
        _markdown(model),
        "## Training step (scripts/benchmark_train.py)",
        "",
        "Epoch: a CIFAR-10 epoch (50,000 images) at the measured step time; relative: to "
        "the dense model measured at the same commit on the same machine, architecture, "
        "layout, threads, precision, batch, mode and number of timed and warm-up steps (\"-\" where "
        "there is none); checkpoint: "
        "the median time to write the model's and optimizer's state as a run's checkpoint "
        "(\"-\": not timed by the record's commit); CUDA peak: the most GPU memory the "
        "measured steps held in all (images on the device, model, optimizer, activations, "
        "graphs; \"-\": a CPU, or a record from before commit b697cd8); threads, tf32: as "
        "above.",
        "",
        _markdown(train),
        "## Training memory of the whole ResNet-18 relative to dense (scripts/benchmark_layers.py)",
        "",
        "params: the basis model's parameters over the dense model's (gradients and "
        "optimizer state follow them); saved: the MiB a training forward keeps for the "
        "backward (activations; the same on every device for the same layers), dense and "
        "relative; peak: the most the CUDA allocator holds over a training step beyond the "
        "model and its input (\"-\": not on CUDA). Of the eager modules; tables made before "
        "commit f0cb738 did not measure it.",
        "",
        _markdown(memory if memory is not None else pd.DataFrame(columns=MEMORY_COLUMNS))])


#: The summary's forms, one colour each in every panel of its plot (they took each panel's
#: colour cycle in its own order); others take the spare ones (:func:`~.plots.steady_colour`).
FORM_COLOURS = {"stacked": "tab:blue", "split": "tab:red", "compile": "tab:purple",
                "nchw": "tab:green", "defaultmalloc": "tab:orange", "auto": "tab:cyan",
                "fusenorm": "tab:brown", "fused": "tab:pink", "graphs": "tab:olive"}


_FORMS_TAKEN: dict[str, str] = {}


def _form_name(form: str) -> str:
    """A summary row's form without how it was measured (:func:`~.speed._options`):
    ``stacked (quick)`` is the stacked form."""
    return form.split(" (")[0]


def _form_colour(form: str) -> str:
    """The colour of a summary row's form, ``stacked (quick)`` as ``stacked``; a form of
    several parts not listed itself, ``graphs, fused``, as its last, the basis layer's
    form (it took the first spare colour, black: the FLOP line's)."""
    name = _form_name(form)
    if name not in FORM_COLOURS:
        name = name.split(", ")[-1]
    return steady_colour(name, FORM_COLOURS, _FORMS_TAKEN)


def _threads_said(line: pd.DataFrame) -> str:
    """A plotted record's CPU threads as its label says them (``, 1 thread``), as the
    table's column does; nothing where they are "-" (a GPU, an older record): records of
    one commit at 1 and 2 threads were otherwise two lines labelled alike."""
    threads = line["threads"].iloc[0]  # (one record a line: the same in every row)
    return "" if threads == "-" else f", {threads_name(threads)}"


def speed_across_hardware(model: pd.DataFrame, path: Path, note: str) -> Path | None:
    """Whole-model speedup over dense against the basis fraction, one panel per hardware
    (CPU and GPU side by side), one line per precision, batch and form of the
    :func:`model_speed` table, with the FLOP ratio's line."""
    if not len(model):
        return None
    plt = pyplot()
    groups = list(model.groupby("hardware", sort=True))
    # the most common setting drawn solid
    settings = list(pd.Series(list(zip(model["precision"], model["batch"]))).value_counts().index)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.6), squeeze=False,
                             sharey=True)
    for ax, (hardware, rows) in zip(axes[0], groups):
        # the default (stacked) form's FLOP ratio; other forms count slightly differently
        stacked = rows[rows["form"].map(_form_name) == "stacked"]
        flops = (stacked if len(stacked) else rows).groupby("fraction")["theory_fwdbwd_ratio"]
        flops = flops.first()
        ax.plot(flops.index, 1 / flops.values, "k--",
                label="theory (FLOPs, stacked form)" if len(stacked) else "theory (FLOPs)")
        ax.axhline(1.0, color="0.6", lw=0.8)
        drawn = []
        for (precision, batch, form, _, commit), line in rows.groupby(
                ["precision", "batch", "form", "source", "commit"], sort=True):
            line = line.sort_values("fraction")
            # a form has one colour in every panel, a precision and batch one line style;
            # records of one setting from other runs (commits) other markers
            style = settings.index((precision, batch))
            again = drawn.count((precision, batch, form))
            drawn.append((precision, batch, form))
            ax.plot(line["fraction"], 1 / line["fwdbwd_ratio"], ms=4,
                    marker="osD^v"[again % 5], ls=LINE_STYLES[style % len(LINE_STYLES)],
                    color=_form_colour(form),
                    label=f"{precision}, batch {batch}{_threads_said(line)}, {form} ({commit})")
        ax.set(title=hardware, xlabel="basis fraction m / C_out", ylim=(0, None))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    # the model records time a training forward+backward, not the optimizer's update
    axes[0][0].set_ylabel("speedup over dense, training forward+backward (x)")
    add_note(fig, note)
    return save_figure(fig, path)


def write_summary(folders: list[Path], out: Path, command: str) -> list[Path]:
    """``<out>.md`` (the tables, each row naming its record), ``<out>-model.csv``,
    ``<out>-training.csv`` and ``<out>-memory.csv`` (all digits) and ``<out>.png`` (CPU
    and GPU side by side), with a line saying how they were made, and ``<out>.json``
    beside them: the full provenance (command, commit, versions, hardware, date), the
    folders and the files written. A folder that is not there, or folders that hold no
    speed record at all, are an error naming them."""
    missing = [str(f) for f in folders if not Path(f).is_dir()]
    if missing:
        raise DatasetError(f"no folder {', '.join(missing)}: name folders that hold "
                           f"model-speed-*.json or train-throughput-*.json records")
    rows, train = model_speed(folders, columns=None), training_speed(folders)
    model, memory = tf32_where_it_applies(rows, MODEL_COLUMNS), training_memory(rows)
    if not len(model) and not len(train):
        looked = ", ".join(f"{pattern} ({writer})" for pattern, writer in RECORD_FILES.items())
        raise DatasetError(f"no speed records in {', '.join(map(str, folders)) or 'no folder'}: "
                           f"the summary is made of {looked}; name folders that hold them "
                           f"(e.g. results)")
    made = provenance(command)
    note = (f"From the records in {', '.join(map(str, folders))}; made by `{command}` at "
            f"commit {commit_name(made['git'])} on {made['date'][:10]}.")
    out = Path(out)
    if out.suffix in (".md", ".csv", ".png", ".json"):  # the summary's own name, not a stem:
        out = out.with_suffix("")  # else "s.md-model.csv" beside "s.md" and "s.png"
    named = out.parent / f"{out.name}.md"  # not with_suffix: a stem may hold dots (a date)
    written = [
        write_text_atomic(named, f"{note}\n\n{summary(model, train, memory)}"),
        write_text_atomic(out.parent / f"{out.name}-model.csv", csv_text(model)),
        write_text_atomic(out.parent / f"{out.name}-training.csv", csv_text(train)),
        write_text_atomic(out.parent / f"{out.name}-memory.csv", csv_text(memory))]
    plot = out.parent / f"{out.name}.png"
    figure = speed_across_hardware(model, plot, note)
    if figure is None:  # no model records: no plot, and none left from an earlier summary
        plot.unlink(missing_ok=True)
    written += [figure] if figure else []
    sidecar = write_json_atomic(out.parent / f"{out.name}.json", {
        "provenance": made, "folders": [str(folder) for folder in folders],
        "files": [path.name for path in written]})
    return [*written, sidecar]
