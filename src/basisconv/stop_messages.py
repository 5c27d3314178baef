"""What a training run that stops or fails tells the user: where it was left (which epoch
its checkpoint holds, whether its record is complete) and how to go on (the same
command, pointed at its folder or not).

Apart from :mod:`basisconv.train` and :mod:`basisconv.training`, which say them: each is a
pure function of the config, the run's folder and the epochs finished and saved, read from
what is on disk where that decides (a record already complete); none calls back into the
run.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .checkpoint import CHECKPOINT
from .errors import TrainingDiverged
from .records import RECORD
from .resume_point import says_complete
from .resuming import how_to_go_on


def stopped_as_it_started(cfg: DictConfig, output_dir: Path) -> str:
    """What a run stopped as it started (checking its config, taking its folder's lock,
    reading its checkpoint) tells the user: nothing of the run changed."""
    resume = OmegaConf.select(cfg, "trainer.resume", default=True,
                              throw_on_resolution_failure=False)
    if resume is not False and (output_dir / CHECKPOINT).exists():
        go_on = f"its checkpoint is kept: {how_to_go_on(output_dir, cfg, 1)}"
    else:
        go_on = how_to_go_on(output_dir, cfg, 0)
    return f"the run in {output_dir} stopped as it started, before training; {go_on}"


def complete_run_message(cfg: DictConfig, output_dir: Path, stopped_while: str = "") -> str:
    """What a run stopped once complete (``stopped_while`` it finished, or as it published
    its record) tells the user: only publishing may be left to do, which the same command
    pointed at its folder does."""
    message = f"the run in {output_dir} is complete ({RECORD})"
    if stopped_while:
        message += f"; it was stopped {stopped_while}"
    if cfg.publish:
        message += "; " + how_to_go_on(output_dir, cfg, cfg.trainer.epochs,
                                       to=f"publish it to {cfg.publish}")
    return message


def stopped_before_training(cfg: DictConfig, output_dir: Path, done: int) -> str:
    """What a run stopped before its first epoch of this start tells the user (``done``:
    the epochs its checkpoint holds, 0 for a new run)."""
    if done == 0:
        return (f"the run in {output_dir} stopped before its first epoch (choosing its layers, "
                f"reading its data or starting wandb); the same command starts it over")
    return (f"the run in {output_dir} stopped while resuming, before epoch {done + 1}; its "
            f"checkpoint of epoch {done} is kept: {how_to_go_on(output_dir, cfg, done)}")


def stopped_finishing_message(cfg: DictConfig, output_dir: Path) -> str:
    """A stop after the last epoch was saved, while wandb finished: the run is
    complete, and only what comes after it (publishing its record) is left undone."""
    return complete_run_message(cfg, output_dir, "while wandb finished, whose pending "
                                "uploads stay in its wandb folder for `wandb sync`")


def diverged_message(cfg: DictConfig, output_dir: Path, err: TrainingDiverged,
                     saved_epochs: int, finished: int) -> str:
    """What a diverged run tells the user: which loss, in which epoch, what to change,
    and what its folder keeps (the diverged epoch is neither recorded nor saved).
    ``finished``: the epochs trained before it; ``saved_epochs``: those its checkpoint
    holds."""
    epoch, epochs = finished + 1, cfg.trainer.epochs
    done = saved_epochs
    if not cfg.trainer.checkpoint:
        kept = "it keeps no checkpoint (trainer.checkpoint=false)"
    elif done == 0:
        kept = "it holds no checkpoint (no epoch came before)"
    else:
        kept = f"its checkpoint.pt is of epoch {done}" + (
            ", the last good one" if done == epoch - 1 else "")
    return (f"training diverged in epoch {epoch} of {epochs}: {divergence(cfg, err)}; lower "
            f"trainer.lr (or check the data) and start a new run. The run in {output_dir} "
            f"is not complete; {kept}")


def divergence(cfg: DictConfig, err: TrainingDiverged) -> str:
    """What diverged, and at which learning rate: the run's line says it, and its record
    keeps it (``diverged``), which the analysis names under its tables."""
    return f"the {err.quantity} became {err.value} with trainer.lr={cfg.trainer.lr}"


def save_failed_message(cfg: DictConfig, output_dir: Path, err: OSError,
                        saved_epochs: int, finished: int) -> str:
    """What a run whose checkpoint or record could not be written tells the user
    (``finished``: the epochs trained, the last of which it was saving)."""
    where = f"{err.filename}: " if err.filename else ""
    reason = f"{where}{err.strerror or type(err).__name__}"
    saved = saved_epochs if cfg.trainer.checkpoint else 0
    go_on = how_to_go_on(output_dir, cfg, saved)
    if saved:  # the atomic writes kept the last checkpoint whole
        go_on = f"its checkpoint of epoch {saved} is kept: {go_on}"
    return (f"the run in {output_dir} could not save epoch {finished} ({reason}); once "
            f"that is fixed (free space, or make the folder writable), {go_on}")


def stop_message(cfg: DictConfig, output_dir: Path, saved_epochs: int, finished: int) -> str:
    """What an interrupted run tells the user: where it stopped, how to go on.
    ``finished``: the epochs trained so far; ``saved_epochs``: those its checkpoint holds."""
    done, epochs = saved_epochs, cfg.trainer.epochs
    if not cfg.trainer.checkpoint:
        return (f"the run in {output_dir} stopped after epoch {done} of {epochs}; "
                f"trainer.checkpoint=false, so the same command starts it over")
    if done == epochs:  # stopped once its last checkpoint was written: complete
        return stopped_complete_message(cfg, output_dir, saved_epochs)
    every = cfg.trainer.checkpoint_every_s
    if finished > done and not every:  # stopped while its checkpoint was being written
        where = (f"stopped while saving epoch {finished} of {epochs}; its checkpoint "
                 + ("was not written yet" if done == 0 else f"is of epoch {done}"))
    elif finished > done:  # epochs that ended between checkpoints (checkpoint_every_s)
        where = (f"stopped after epoch {finished} of {epochs}; its checkpoint, written at "
                 f"most every trainer.checkpoint_every_s={every:g} s, ")
        where += "was not written yet" if done == 0 else f"is of epoch {done}"
    elif done == 0:
        where = f"stopped during epoch 1 of {epochs}, before its first checkpoint"
    else:
        where = f"stopped after epoch {done} of {epochs} (checkpoint saved)"
    go_on = how_to_go_on(output_dir, cfg, done)
    return f"the run in {output_dir} {where}; {go_on}"


def stopped_complete_message(cfg: DictConfig, output_dir: Path, saved_epochs: int) -> str:
    """A stop after the last epoch's checkpoint was written, before (or as) its record
    was: the run is complete, and the same command trains nothing (it writes
    ``run.json`` from the checkpoint, :func:`~basisconv.resume_point.repair_record`, and
    publishes it). "Stopped after epoch 3 of 3; ... to resume it" read as if training
    were left to do."""
    if says_complete(output_dir / RECORD):
        return complete_run_message(cfg, output_dir, "as it finished")
    to = "write it" + (f" and publish it to {cfg.publish}" if cfg.publish else "")
    go_on = how_to_go_on(output_dir, cfg, saved_epochs, to=f"{to}, training nothing")
    return (f"the run in {output_dir} is complete ({CHECKPOINT}), but was stopped "
            f"before its {RECORD} was written; {go_on}")
