"""Shared plotting set-up: a headless backend, the provenance note below a plot, atomic
PNG writes, and colours and line styles that stay one name's in every figure."""

from __future__ import annotations

import io
import logging
import textwrap
from pathlib import Path

from ..records import write_bytes_atomic

#: Names without a colour of their own (a user's selection policy, a speed summary's form)
#: take these in the order the process first draws them (:func:`steady_colour`).
EXTRA_COLOURS = ("black", "gold", "navy", "teal", "magenta", "lime", "maroon", "tab:gray")
#: Lines of one colour (the basis sizes of ``all``, the settings of one speed form) told
#: apart by line style, in order.
LINE_STYLES = ("-", "--", ":", "-.")


def steady_colour(name: str, fixed: dict[str, str], taken: dict[str, str]) -> str:
    """``name``'s colour in ``fixed``, or the next spare one, kept in ``taken``."""
    if name in fixed:
        return fixed[name]
    if name not in taken:
        taken[name] = EXTRA_COLOURS[len(taken) % len(EXTRA_COLOURS)]
    return taken[name]


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed). matplotlib's own INFO
    lines (``generated new fontManager``, the first time on a machine) are kept off the
    console, where an entry point's lines are its result, unless its logger was set."""
    quiet = logging.getLogger("matplotlib")
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def add_note(fig, note: str | None) -> None:
    """Put the provenance line and any caveats (one per line of ``note``, each wrapped to
    the figure's width) below the plot, and lay it out with room for them: a plot copied
    out of its folder still says which profile, hardware, commit and date it shows. With
    no ``note``, the plain tight layout."""
    if not note:
        fig.tight_layout()
        return
    lines = [wrapped for line in note.split("\n")
             for wrapped in textwrap.wrap(line, int(fig.get_figwidth() * 20))]
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=6.5, color="0.35", ha="left", va="bottom")
    # 6.5 pt at matplotlib's 1.2 line spacing, plus 0.1 inch between the axes and the note
    bottom = (0.1 + len(lines) * 6.5 * 1.2 / 72) / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG atomically (a reader never sees half a file), then close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    return write_bytes_atomic(path, buffer.getvalue())
