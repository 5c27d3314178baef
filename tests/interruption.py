"""A training run stopped the way a kill stops it, in-process: fast, and the process (and
the monkeypatched state around it) lives on to resume the run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import pytest
import torch

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


def sigterm_amid_torch_save(monkeypatch, chosen: Callable[[Any], bool]) -> None:
    """``torch.save`` of an object ``chosen`` says yes to sends this process a SIGTERM
    between two of its writes to the file, once (as a protocol's Ctrl-C met a checkpoint
    being written: the stop raised inside torch's zip writer became its RuntimeError)."""
    real_save = torch.save

    class Amid:
        """The file, whose third write brings the signal."""

        def __init__(self, file):
            self.file, self.writes = file, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

    def save(obj, f, *args, **kwargs):
        if chosen(obj):
            monkeypatch.setattr(torch, "save", real_save)  # once
            f = Amid(f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def wait_for(ready: Callable[[], bool], process: subprocess.Popen, what: str,
             said: Callable[[], str], timeout: float = 300) -> None:
    """Wait until ``ready()`` while ``process`` runs. If the process ends first, fail at
    once with what it ``said`` (its error output): a run that failed as it started left a
    waiting test idle for the whole timeout with nothing to show, which is all a GPU
    machine's test part reported. After ``timeout`` seconds the process is killed and the
    test fails the same way; so it is if the wait is cut short (pytest-timeout's limit, a
    Ctrl-C), rather than left running."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"the process ended (exit {process.returncode}) before {what}; "
                            f"it said:\n{said()[-3000:]}")
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(f"no {what} within {timeout:g} s; the process said:\n"
                            f"{said()[-3000:]}")
            time.sleep(0.02)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise
