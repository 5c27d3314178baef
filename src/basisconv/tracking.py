"""Experiment tracking through Weights & Biases, made harmless to training.

The run record (``run.json``) is where results live; wandb is a view of them. So every
wandb call here is guarded: a failure (no network, no account, a broken install) is
logged once and tracking is switched off, and training goes on. ``finish`` is safe to
call in a ``finally``, so each job of a Hydra multirun gets its own wandb run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Tracker:
    """A wandb run (or nothing, for ``logger.backend=none`` or ``mode=disabled``)."""

    def __init__(self, logger_cfg: Any, config: dict, output_dir: Path, name: str):
        self.run = None
        if logger_cfg.backend != "wandb" or logger_cfg.mode == "disabled":
            return
        try:
            import wandb

            self.run = wandb.init(
                project=logger_cfg.project, entity=logger_cfg.entity,
                group=logger_cfg.group, tags=list(logger_cfg.tags), name=name,
                config=config, dir=str(output_dir), mode=logger_cfg.mode,
                reinit="finish_previous")
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            log.warning("wandb could not start (%s: %s); training goes on without it. "
                        "The run record run.json has every metric.", type(err).__name__, err)
            self.run = None

    @property
    def info(self) -> dict | None:
        """What the run record keeps about the wandb run, to find it again."""
        if self.run is None:
            return None
        return {"id": self.run.id, "dir": str(Path(self.run.dir).parent),
                "mode": self.run.settings.mode, "url": self.run.url}

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            log.warning("wandb %s failed (%s: %s); tracking is off for the rest of this run.",
                        what, type(err).__name__, err)
            self.run = None

    def log(self, metrics: dict, step: int) -> None:
        self._guard("log", lambda: self.run.log(metrics, step=step))

    def table(self, key: str, frame) -> None:
        """Log a pandas DataFrame as a wandb table."""
        def log_table():
            import wandb

            self.run.log({key: wandb.Table(dataframe=frame)})
        self._guard("table", log_table)

    def summary(self, values: dict) -> None:
        self._guard("summary", lambda: self.run.summary.update(values))

    def finish(self, failed: bool = False) -> None:
        self._guard("finish", lambda: self.run.finish(exit_code=1 if failed else 0))
        self.run = None
