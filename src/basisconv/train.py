"""A training run: ``fit(cfg, output_dir)`` trains the model a composed Hydra config
describes (see ``configs/``) and keeps ``output_dir/run.json`` (the run record) and
``checkpoint.pt`` up to date after every epoch; re-running it on the same directory
resumes.

This module holds a start in the run's folder: the config checked, the folder's lock, the
folder refused when another kind of run's, the run's messages said by one process, a
killed write's leftovers removed and where the start begins (:mod:`basisconv.resume_point`:
a checkpoint, a complete record, or nothing), what a stop or memory running out as the run
starts says, and the complete record published. The run itself in this process (the
layers chosen, the network built, the dense warm-up conversion, the record, the epochs,
tracking) is :class:`~basisconv.training.Training`'s; the steps themselves live in
:mod:`basisconv.loop`. What it saves after each epoch (and which epoch its checkpoint
holds) is :mod:`basisconv.run_saves`'s; what a run that stops or fails says (where it was
left, how to go on) is :mod:`basisconv.stop_messages`'s.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from . import distributed, execution, stop_messages
from .config_checks import validate
from .errors import Stopped, memory_said
from .records import folder_lock, make_folder, publish, refuse_other_kind
from .resume_point import remove_leftovers, resume_point
from .signals import stops_let_go
from .training import Training, epochs_in


def fit(cfg: DictConfig, output_dir: str | Path, *, validated: bool = False) -> dict[str, Any]:
    """Train as ``cfg`` says, keeping ``output_dir/run.json`` and ``checkpoint.pt`` current
    after every epoch. Resumes from the checkpoint there when ``trainer.resume``; a run
    whose record is already complete is not trained again. Returns the run record.

    The run holds ``output_dir``'s lock throughout (under ``torchrun``: rank 0 for all), so
    a second process started on the same folder stops at once with one line. A complete
    record is also written to ``cfg.publish`` when set (see :func:`records.publish`).

    ``validated``: the caller has just checked this ``cfg`` with :func:`validate` and changed
    nothing since (``scripts/train.py``, which checks it before its warnings), so it is not
    checked a second time (35 ms for the default config, 117 ms with selection=all,
    measured on 2 CPU cores: it shapes the model on the meta device)."""
    training = finished = None
    try:
        if not validated:
            validate(cfg)
        output_dir = make_folder(output_dir)
        first_rank = distributed.first_process()
        with logged_by_the_first_process(), (
                folder_lock(output_dir) if first_rank else contextlib.nullcontext()):
            # a sensitivity estimate's or a search's folder: its record is not this run's to
            # replace, so it is refused first, in words that do not offer trainer.resume=false
            # (the fix for another config's training record, which would overwrite it)
            refuse_other_kind(output_dir, "training", "this training run")
            if first_rank:
                remove_leftovers(output_dir)
            config = OmegaConf.to_container(cfg, resolve=True)
            checkpoint, record = resume_point(cfg, config, output_dir, holds_lock=first_rank)
            if record is None:
                with execution.settings_restored(), memory_said(
                        lambda: where_memory_ran_out(cfg, output_dir, training, checkpoint)):
                    training = start_training(cfg, config, output_dir, checkpoint)
                    record = training.run()
            finished = record
            return publish(record, cfg.publish, output_dir) if first_rank else record
    except KeyboardInterrupt as err:  # a stop the steps below Training do not say, or a
        # second one (torchrun's SIGTERM after a peer's death) that replaced the first as
        # the run's process group was torn down
        if isinstance(err, Stopped) and str(err):  # (it says where it stopped)
            raise
        with stops_let_go():
            if finished is not None:
                stop = Stopped(getattr(err, "signum", signal.SIGINT),
                               stop_messages.complete_run_message(cfg, Path(output_dir)))
            elif training is not None:
                stop = training.stopped(err)
            else:
                stop = Stopped(getattr(err, "signum", signal.SIGINT),
                               stop_messages.stopped_as_it_started(cfg, Path(output_dir)))
        raise stop from None


@contextlib.contextmanager
def logged_by_the_first_process() -> Iterator[None]:
    """In the block, the package's messages below errors are logged by torchrun's rank 0
    alone, and its logging level is put back after (``fit`` is public: a caller's process
    with ``RANK`` set kept the package silenced below errors for good). Rank 0 says what
    every rank meets (a run already complete, a resume on another set-up, a selection that
    converted no layer): said by each, a line would come N times, and the wait for the
    sensitivity cache's lock, which rank 0 holds, would read as "in use by another
    sensitivity estimate"."""
    package_log = logging.getLogger("basisconv")
    level = package_log.level
    if not distributed.first_process():
        package_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        package_log.setLevel(level)


def where_memory_ran_out(cfg: DictConfig, output_dir: Path, training: Training | None,
                         checkpoint: dict | None) -> str:
    """What a run whose memory ran out tells the user after the fix (:func:`memory_said`):
    the fix changes what the run computes, so it makes a new run; where this one stopped,
    and how it goes on as it is (memory another process held, since freed)."""
    where = (training.stop_message() if training is not None
             else stop_messages.stopped_before_training(cfg, output_dir,
                                                         epochs_in(checkpoint)))
    return f"each starts a new run (a run resumes only with its own settings); {where}"


def start_training(cfg: DictConfig, config: dict, output_dir: Path,
                   checkpoint: dict | None) -> Training:
    """The run's :class:`Training`, built or restored from ``checkpoint``. A stop while it
    is built (choosing the layers, which may be a sensitivity estimate, or reading the data)
    trained no epoch of this start: it is said so, with how to go on, and why when a peer
    failed (:func:`built_training`)."""
    try:
        return built_training(cfg, config, output_dir, checkpoint)
    except KeyboardInterrupt as err:
        if isinstance(err, Stopped) and str(err):  # it says where it stopped
            raise
        with stops_let_go():
            message = stop_messages.stopped_before_training(cfg, output_dir,
                                                            epochs_in(checkpoint))
            reason = distributed.peer_failure_in(err)  # (torchrun's SIGTERM)
        raise Stopped(getattr(err, "signum", signal.SIGINT),
                      f"{reason}; {message}" if reason else message) from None


def built_training(cfg: DictConfig, config: dict, output_dir: Path,
                   checkpoint: dict | None) -> Training:
    """:class:`Training` built. A run stopped or failing as it is built leaves torchrun's
    process group, which it joined first, as :meth:`Training.run` leaves it (else each NCCL
    rank warns at exit, after the run's one line, that the group was never destroyed, and
    a caller in-process keeps it). A peer that died, froze, or started later than
    ``trainer.collective_timeout_s`` fails the build's collectives (joining the group,
    DDP's first broadcast): that failure becomes a stop, as in :meth:`Training.run`, which
    :func:`start_training` says (it was a trace)."""
    try:
        try:
            return Training(cfg, config, output_dir, checkpoint)
        except BaseException:
            distributed.teardown(together=False)  # (its peers may be elsewhere in the build)
            raise
    except RuntimeError as err:
        if distributed.peer_failure(err) is None:
            raise
        raise Stopped(signal.SIGTERM) from err  # said by start_training, with the failure
