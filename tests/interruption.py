"""A training run stopped the way a kill stops it, in-process: fast, and the process (and
the monkeypatched state around it) lives on to resume the run."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from basisconv import loop
from basisconv.train import fit


def fit_stopped_before(epoch: int, cfg, output_dir: Path) -> None:
    """``fit(cfg, output_dir)``, stopped as the given epoch starts: the run folder keeps
    the checkpoint of the epoch before, as after a kill. (A real SIGKILL is tested in
    ``test_pipeline.test_killed_run_resumes_to_the_same_final_metrics``.)"""
    run_epoch = loop.run_epoch

    def stopped(number, *args, **kwargs):
        if number == epoch:
            raise KeyboardInterrupt
        return run_epoch(number, *args, **kwargs)

    with mock.patch.object(loop, "run_epoch", stopped), pytest.raises(KeyboardInterrupt):
        fit(cfg, output_dir)
