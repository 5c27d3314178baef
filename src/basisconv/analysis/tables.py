"""The paper-style table in three forms (Markdown, LaTeX, CSV) from the comparison."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..records import write_text_atomic


def _pct(x: float) -> str:
    return "-" if pd.isna(x) else f"{100 * x:.0f} %"


def _speedup(x: float) -> str:
    return "-" if pd.isna(x) else f"{x:.2f}x"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison formatted for reading: one row per configuration."""
    rows = []
    for r in table.to_dict("records"):
        std = f" ± {100 * r['test_accuracy_std']:.2f}" if r["seeds"] > 1 else ""
        change = "-" if pd.isna(r["accuracy_change"]) else f"{100 * r['accuracy_change']:+.2f}"
        rows.append({
            "model": f"{r['model']} x{r['width']:g}",
            "selection": r["selection"],
            "basis size": str(r["basis_size"]),
            "seeds": str(r["seeds"]),
            "test accuracy (%)": f"{100 * r['test_accuracy']:.2f}{std}",
            "vs baseline (points)": change,
            "basis layers": f"{r['basis_layers']:.0f}",
            "parameters": f"{r['params']:,.0f} ({_pct(r['params_ratio'])})",
            "training FLOPs / image": f"{(r['forward_flops'] + r['backward_flops']) / 1e6:.1f} M "
                                      f"({_pct(r['flops_ratio'])})",
            "fwd / bwd ms per step": f"{1e3 * r['forward_seconds_per_step']:.1f} / "
                                     f"{1e3 * r['backward_seconds_per_step']:.1f}",
            "epoch (s)": f"{r['mean_epoch_seconds']:.1f}",
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


def latex(frame: pd.DataFrame, caption: str) -> str:
    """A LaTeX ``tabular`` of a frame of strings (pandas' Styler; special characters
    escaped)."""
    escaped = frame.map(lambda v: str(v).replace("%", r"\%").replace("±", r"$\pm$")
                        .replace("_", r"\_"))
    escaped.columns = [c.replace("%", r"\%") for c in frame.columns]
    return escaped.style.hide(axis="index").to_latex(
        caption=caption.replace("_", r"\_").replace("`", ""), hrules=True, position="t")


def write_table(table: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    """``<stem>.csv`` (all numbers), ``<stem>.md`` and ``<stem>.tex`` (formatted), each
    with ``caption`` (the provenance line) beside or in it."""
    shown = display_table(table)
    return [
        write_text_atomic(stem.with_suffix(".csv"), table.to_csv(index=False, float_format="%.6g")),
        write_text_atomic(stem.with_suffix(".md"), markdown(shown) + f"\n{caption}\n"),
        write_text_atomic(stem.with_suffix(".tex"), latex(shown, caption)),
    ]
