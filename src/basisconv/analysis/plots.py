"""Shared plotting set-up: a headless backend and atomic PNG writes."""

from __future__ import annotations

import io
from pathlib import Path

from ..records import write_bytes_atomic


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
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
