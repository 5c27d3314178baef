"""What a training run saves after each epoch, and where its saves stand: the checkpoint
(after every epoch, or every ``trainer.checkpoint_every_s`` and after the last) and then
the record, written by rank 0 and agreed by every process; and which epoch the checkpoint
holds, which a stop, a divergence or a failed save says (:mod:`basisconv.stop_messages`).

Apart from :mod:`basisconv.training`, which builds the run, trains its epochs and calls
:meth:`RunSaves.save_everywhere` after each: the saves' state has one owner here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from time import monotonic
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from . import distributed, stop_messages
from .checkpoint import CHECKPOINT, checksum_path, save_checkpoint, saved_epoch_rows
from .errors import SaveError
from .records import DIVERGED_STATUS, RECORD, RunRecord, write_record

log = logging.getLogger(__name__)


class RunSaves:
    """A training run's saves. ``saved_epochs``: the epochs its checkpoint holds, where a stop
    now resumes (a resumed run's, those it resumed from); ``last_checkpoint``: when that was
    written (this start's beginning until one is). ``run_state`` gives what the checkpoint
    holds besides the config and record (model, optimizer, schedule, batches, scaler)."""

    def __init__(self, cfg: DictConfig, output_dir: Path, record: RunRecord,
                 run_state: Callable[[], dict[str, Any]], device: torch.device):
        self.cfg, self.output_dir, self.record = cfg, output_dir, record
        self.run_state, self.device = run_state, device
        self.main_process = distributed.is_main_process()
        self.saved_epochs = self.finished
        self.start_clock()

    def start_clock(self) -> None:
        """``trainer.checkpoint_every_s`` counts from now: the run's first epoch is about to
        begin (its build and wandb's start, up to ``logger.init_timeout_s``, are not
        training a checkpoint would save)."""
        self.last_checkpoint = monotonic()

    @property
    def finished(self) -> int:
        """The epochs the run has trained (its record's rows)."""
        return len(self.record.results["epochs"])

    def save_everywhere(self) -> None:
        """Rank 0 saves (:meth:`save`); every process learns whether it could and of which
        epoch its checkpoint is, so that all stop together when it could not (the others
        would wait in the next epoch's first collective for a rank that had left) and all
        say the same of where a stop leaves the run."""
        error = None
        if self.main_process:
            try:
                self.save()
            except SaveError as err:
                error = err
        saved, self.saved_epochs = distributed.from_main(
            [error is None, self.saved_epochs], self.device)
        if error is not None:
            raise error
        if not saved:  # (said by rank 0, which alone prints)
            raise SaveError(f"the run in {self.output_dir} could not save epoch "
                            f"{self.finished} (rank 0 says why)")

    def save(self) -> None:
        """The checkpoint first, then the record: a kill (or a full disk) between the two
        leaves a ``run.json`` behind its checkpoint, which resuming catches up (a complete
        one: :func:`~basisconv.resume_point.repair_record`), never one ahead of it, saying
        complete while the checkpoint, and so the next start, would train the last epoch
        again. A write that fails (each is atomic, so the earlier file stays) is one
        :class:`SaveError` line.

        With ``trainer.checkpoint_every_s`` the checkpoint is written only when that long
        has passed since the last one, and after the last epoch; the record, a few
        kilobytes, after every epoch (an incomplete record ahead of the checkpoint is
        caught up by resuming, which trains the epochs after the checkpoint again)."""
        try:
            self._save()
        except OSError as err:
            raise SaveError(stop_messages.save_failed_message(
                self.cfg, self.output_dir, err, self.saved_epochs, self.finished)) from None

    def _save(self) -> None:
        trainer = self.cfg.trainer
        if not trainer.checkpoint:
            self.remove_stale_checkpoint()
        elif (self.record.status == "complete"
              or monotonic() - self.last_checkpoint >= trainer.checkpoint_every_s):
            save_checkpoint(self.output_dir / CHECKPOINT, {
                "config": self.record.config, "record": self.record.as_dict(),
                **self.run_state()})
            self.last_checkpoint = monotonic()
            self.saved_epochs = self.finished  # a stop now resumes after it
        write_record(self.output_dir, self.record)
        if not trainer.checkpoint:
            self.saved_epochs = self.finished

    def record_divergence(self, divergence: str) -> None:
        """Rank 0 writes the record of a run that diverged: status :data:`DIVERGED_STATUS`,
        ``diverged`` what became what (``divergence``,
        :func:`~basisconv.stop_messages.divergence`), and the epochs before the diverged
        one, which is neither recorded nor saved. Why: a divergence in the first epoch left
        no ``run.json``, and the analysis left a sweep's diverged job out unsaid. The
        checkpoint is not touched (it holds the last good epoch). A write that fails is
        logged: the divergence's own line is what the run ends with."""
        self.record.status = DIVERGED_STATUS
        self.record.results["diverged"] = divergence
        if not self.main_process:
            return
        try:
            write_record(self.output_dir, self.record)
        except OSError as err:
            log.warning("could not write %s of the diverged run (%s)",
                        self.output_dir / RECORD, err.strerror or err)

    def remove_stale_checkpoint(self) -> None:
        """A run that keeps no checkpoint (``trainer.checkpoint=false``) deletes one an
        earlier run left in its folder (before its record moves past it): resuming would
        otherwise take it for this run's, training a finished run again, or rewriting its
        ``run.json`` with the earlier run's record; and it would be taken as this run's
        weights (``basis.source_checkpoint``)."""
        path = self.output_dir / CHECKPOINT
        if path.exists():
            path.unlink()  # first: a kill in between leaves no checkpoint to resume from
            checksum_path(path).unlink(missing_ok=True)
            log.info("removed %s: trainer.checkpoint=false, and it would fall behind this "
                     "run's record", path)

    def note_a_checkpoint_just_saved(self) -> None:
        """A signal's handler runs as the checkpoint's rename returns, before :meth:`_save`
        notes it: the checkpoint on disk holding this run's epochs so far says so (an
        earlier run's, which ``trainer.resume=false`` has not yet replaced, holds others)."""
        finished = self.record.results["epochs"]
        if (self.main_process and self.cfg.trainer.checkpoint
                and len(finished) > self.saved_epochs
                and saved_epoch_rows(self.output_dir / CHECKPOINT) == finished):
            self.saved_epochs = len(finished)
