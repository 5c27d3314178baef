"""Shared plotting set-up: a headless backend and atomic PNG writes."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from ..records import write_bytes_atomic


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


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG atomically (a reader never sees half a file), then close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    return write_bytes_atomic(path, buffer.getvalue())
