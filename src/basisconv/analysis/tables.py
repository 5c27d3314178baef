"""The comparison table (our protocol's; the paper's own tables are not available to us)
in three forms (Markdown, LaTeX, CSV)."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pandas as pd

from ..errors import one_line
from ..records import write_text_atomic
log = logging.getLogger(__name__)

#: Columns of :func:`~.runs.runs_frame` and :func:`~.comparison.compare` that only choose
#: baselines; the tables and ``index.json`` leave them out. (Here, not in ``runs``: the
#: tables then load no torch, nor does scripts/reproduce.sh's check of the speed records.)
INTERNAL_COLUMNS = ["recipe", "same_run"]


def _pct(x: float) -> str:
    return "-" if pd.isna(x) else f"{100 * x:.0f} %"


def _speedup(x: float) -> str:
    return "-" if pd.isna(x) else f"{x:.2f}x"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison formatted for reading: one row per configuration; a ``settings``
    column where configurations differ beyond model, selection and basis size (a sweep
    over ``selection.count`` or ``trainer.lr``)."""
    shown = "settings" in table and table["settings"].astype(bool).any()
    rows = []
    for r in table.to_dict("records"):
        std = f" ± {100 * r['test_accuracy_std']:.2f}" if r["seeds"] > 1 else ""
        change = "-" if pd.isna(r["accuracy_change"]) else f"{100 * r['accuracy_change']:+.2f}"
        if not pd.isna(r.get("accuracy_change_se", math.nan)) and r["accuracy_change_se"] > 0:
            change += f" ± {100 * r['accuracy_change_se']:.2f}"
        rows.append({
            "model": f"{r['model']} x{r['width']:g}",
            "selection": r["selection"],
            "basis size": str(r["basis_size"]),
            **({"settings": r["settings"] or "-"} if shown else {}),
            "seeds": str(r["seeds"]),
            "test accuracy (%)": f"{100 * r['test_accuracy']:.2f}{std}",
            # ± its standard error paired by seed (not a std, as the accuracy's is)
            "vs baseline (points, ± s.e.)": change,
            # a mean: random selection converts other layers in each seed
            "basis layers": f"{round(r['basis_layers'], 1):g}",
            "parameters": f"{r['params']:,.0f} ({_pct(r['params_ratio'])})",
            "training FLOPs / image": f"{(r['forward_flops'] + r['backward_flops']) / 1e6:.1f} M "
                                      f"({_pct(r['flops_ratio'])})",
            "fwd / bwd ms per step": f"{1e3 * r['forward_seconds_per_step']:.1f} / "
                                     f"{1e3 * r['backward_seconds_per_step']:.1f}",
            "epoch (s)": f"{r['epoch_seconds']:.1f}",
            "step speedup (theory)": f"{_speedup(r['step_speedup'])} "
                                     f"({_speedup(r['theory_speedup'])})",
            "epoch speedup": _speedup(r["epoch_speedup"]),
        })
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of a frame of strings (no extra dependency)."""
    lines = ["| " + " | ".join(frame.columns) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


#: LaTeX's special characters in text and what writes each as itself (replaced in one
#: pass, so no escape is escaped again). Beyond our own ``%``, ``_`` and ``±``, a caption names
#: paths, hardware, commands and overrides of the user's (``~/data``, ``R&D``, ``#2``)
#: that otherwise break or cut the table's compilation.
TEX_ESCAPES = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "&": r"\&", "%": r"\%",
               "$": r"\$", "#": r"\#", "_": r"\_", "~": r"\textasciitilde{}",
               "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    """``text`` with the characters LaTeX reads otherwise escaped (:data:`TEX_ESCAPES`), and
    ``±`` as math's, which every LaTeX engine sets."""
    return re.sub("|".join(map(re.escape, TEX_ESCAPES)), lambda m: TEX_ESCAPES[m[0]],
                  str(text)).replace("±", r"$\pm$")


def latex(frame: pd.DataFrame, caption: str) -> str:
    """A LaTeX ``tabular`` of a frame of strings (pandas' Styler; special characters
    escaped)."""
    escaped = frame.map(_tex)
    escaped.columns = [_tex(c) for c in frame.columns]
    return escaped.style.hide(axis="index").to_latex(
        caption=_tex(caption).replace("`", ""), hrules=True, position="t")


def csv_text(table: pd.DataFrame) -> str:
    """``table`` as CSV with its numbers in full: 12 significant digits keep every count
    (ResNet-18's 11,173,962 parameters, its FLOPs) exact, where pandas' shortest form of a
    mean's float would show its rounding noise."""
    return table.drop(columns=INTERNAL_COLUMNS, errors="ignore").to_csv(
        index=False, float_format="%.12g")


def write_table(table: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    """``<stem>.csv`` (all numbers), ``<stem>.md`` and ``<stem>.tex`` (formatted), each
    with ``caption`` (the provenance line, then notes, one a line) beside or in it. The
    LaTeX form needs jinja2 (pandas' Styler): without it, as on a GPU machine's own Python,
    the other two are still written, and a warning says what is missing."""
    shown = display_table(table)
    notes = caption.replace("\n", "\n\n")  # Markdown joins single lines into one
    written = [
        write_text_atomic(stem.with_suffix(".csv"), csv_text(table)),
        write_text_atomic(stem.with_suffix(".md"), markdown(shown) + f"\n{notes}\n"),
    ]
    try:
        import jinja2  # noqa: F401  (pandas' Styler renders the LaTeX with it)
    except ImportError as err:
        stem.with_suffix(".tex").unlink(missing_ok=True)  # an older one would disagree
        log.warning("%s not written: %s (pip install the jinja2 of requirements.txt)",
                    stem.with_suffix(".tex"), one_line(err))
        return written
    return [*written, write_text_atomic(stem.with_suffix(".tex"), latex(shown, caption))]
