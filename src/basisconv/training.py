"""A training run in its process, once :func:`basisconv.train.fit` has found where it starts:
:class:`Training` builds it (the layers chosen for basis form, resolved before the network is
built, possibly by a sensitivity estimate; the network, its data, optimizer and schedule;
the run record set up, or all of it restored from a checkpoint), trains the epochs left
with the dense warm-up's conversion to basis layers at its end, tracks them in wandb and
saves after each (:mod:`basisconv.run_saves`); and :func:`final_metrics`, the complete
record's summary.

Apart from :mod:`basisconv.train`, which holds what a start in the run's folder does around
it (the config checked, the folder's lock, the resume point, a stop or memory running out as
the run starts said, the complete record published) and calls only :func:`epochs_in` and
:class:`Training`'s public methods here: nothing here calls back into it. The steps
themselves live in :mod:`basisconv.loop`.
"""

from __future__ import annotations

import gc
import logging
import signal
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import distributed, execution, loop, optim, stop_messages
from .config import GRAPHING_COMPILE_MODES
from .data import data_read, prepare_data, source_said
from .errors import ConfigError, Stopped, TrainingDiverged, error_line
from .kernels import auto
from .network import (build_network, check_conversion, choose_forms_now, converts_later,
                      describe, rebind_optimizer, skip_training_cost, to_basis)
from .penalties import basis_penalty
from .records import RECORD, RunRecord, timestamp, wandb_provenance
from .resume_point import keep_earlier_provenance
from .run_saves import RunSaves
from .sensitivity import choose_layers_and_table
from .signals import stops_let_go
from .surgery import CoefficientSkipSchedule
from .tracking import Tracker

log = logging.getLogger(__name__)


def epochs_in(checkpoint: dict | None) -> int:
    """The epochs a run resumed from ``checkpoint`` has done (none for a new run)."""
    return len(checkpoint["record"]["epochs"]) if checkpoint else 0


#: What restoring a checkpoint's saved state raises when that state is not of the shape
#: this version saves: torch's and the batch order's errors, from a wrong size to a missing key.
UNRESTORABLE = (RuntimeError, ValueError, KeyError, TypeError, AttributeError)


def unrestorable_said(err: Exception) -> str:
    """An :data:`UNRESTORABLE` error as a message quotes it: on one line, at most 300
    characters, its type named (``KeyError: 'generator'``; a key alone says nothing)."""
    return error_line(err)[:300]


def layers_to_convert(cfg: DictConfig, checkpoint: dict | None
                      ) -> tuple[list[str] | str | None, dict[str, Any]]:
    """The layers chosen for basis form, and which sensitivity table (or layer times) chose
    them (:func:`~basisconv.sensitivity.choose_layers_and_table`), which the run record keeps
    so a table row can be traced to its run (two tables of one key, estimated on two
    machines, choose differently). A resumed run keeps those its checkpoint was built
    with, where choosing again could differ (a time budget measured on another machine):
    its record's, or for a checkpoint from before records kept them, the basis layers its
    model was described with; only one with none (dense so far: a warm-up) chooses again."""
    record = checkpoint["record"] if checkpoint else {}
    made_from = {key: record.get(key)  # (None where an older record lacks one)
                 for key in ("sensitivity_key", "sensitivity_table", "measured_time")}
    if "layers" in record:
        return record["layers"], made_from
    built_with = (record.get("model") or {}).get("basis_layers")
    if built_with:  # choosing again from another table gave other layers: a traceback
        return list(built_with), made_from
    return choose_layers_and_table(cfg)


def check_processes(cfg: DictConfig) -> None:
    """What the run's processes allow, known only once it has joined torchrun's process
    group (:func:`~basisconv.config_checks.validate` checked the config before): a global batch
    they share evenly, and coefficients trained on every step."""
    batch, processes = cfg.trainer.batch_size, distributed.world_size()
    if batch % processes:
        raise ConfigError(f"trainer.batch_size={batch} (the global batch) must "
                          f"be divisible by the {processes} processes")
    skip_every = cfg.basis.coefficient_update_every
    if distributed.is_distributed() and skip_every > 1:
        # DDP expects the same parameters to need gradients in every step
        raise ConfigError(f"basis.coefficient_update_every={skip_every} (coefficients "
                          f"frozen on some steps) runs in one process only; set it to 1 "
                          f"under torchrun, or train in one process")


class Training:
    """One run's state: the model (and its DDP/compiled wrapper), optimizer, schedule,
    batches, run record, tracker and saves; built from the config, or restored from a
    checkpoint."""

    def __init__(self, cfg: DictConfig, config: dict, output_dir: Path,
                 checkpoint: dict | None):
        self.cfg, self.output_dir, trainer = cfg, output_dir, cfg.trainer
        auto.start_run()  # the record lists the combine=auto shapes of this run alone
        runtime = execution.setup(trainer, cfg.seed, join_process_group=True)
        self.device, self.memory_format = runtime.device, runtime.memory_format
        self.amp_dtype = runtime.amp_dtype
        check_processes(cfg)
        self.main_process = distributed.is_main_process()

        # Dense warm-up: the model turns into basis form at the end of epoch
        # `dense_warmup_epochs`, before that epoch's checkpoint, which so already holds it.
        done = epochs_in(checkpoint)
        self.pending_conversion = converts_later(cfg) and done < cfg.basis.dense_warmup_epochs
        self.layers, made_from = layers_to_convert(cfg, checkpoint)
        if self.pending_conversion:
            check_conversion(cfg, self.layers)
        self.model = build_network(cfg, self.layers, basis_now=not self.pending_conversion,
                                   restoring=checkpoint is not None)
        self.model.to(device=self.device, memory_format=self.memory_format)
        data = prepare_data(cfg.data, cfg.seed).to(self.device)
        self.train_batches = runtime.batches(data.train_images, data.train_labels,
                                             trainer.batch_size, augment=cfg.data, seed=cfg.seed)
        self.test_batches = runtime.batches(data.test_images, data.test_labels,
                                            trainer.eval_batch_size)
        self.optimizer = optim.build_optimizer(self.model, trainer)
        self.scaler = optim.grad_scaler(self.amp_dtype, self.device)
        self.scheduler = optim.build_scheduler(self.optimizer, trainer, len(self.train_batches))
        # the earlier start's wandb run, until start_tracker's replaces it
        earlier = checkpoint["record"].get("wandb") if checkpoint else None
        self.record = RunRecord("training", config, results={
            "model": describe(self.model, batch=self.process_batch), "layers": self.layers,
            **made_from, "epochs": [], "final": None, "wandb": earlier})
        self.results = self.record.results
        # the folders this start read, absolute: config.data.root is kept as given (it is
        # part of what makes two runs one, same_run.same_data), where a relative one
        # names a folder only from where the run started; an earlier start's, read from
        # another folder, is kept in provenance.earlier with the rest of where it ran
        self.record.provenance["data"] = data_read(cfg.data, data)
        if checkpoint is not None:
            self.restore(checkpoint)
        if not self.pending_conversion:
            self.warn_if_dense()
        log.info("model %s (width %s): %s parameters, %d basis layers; data %s: %d train / "
                 "%d test images; device %s", cfg.model.name, cfg.model.width,
                 f"{self.results['model']['parameters']:,}",
                 len(self.results["model"]["basis_layers"]), source_said(cfg.data, data),
                 data.train_labels.numel(), data.test_labels.numel(), self.device)
        self.wrap()
        self.saves = RunSaves(cfg, output_dir, self.record, self.checkpoint_state, self.device)
        # started by run(), in the try whose finally ends it: a stop or an error before
        # (the build, or between start_training and run) leaves no wandb run open
        self.tracker: Tracker | None = None
        self.epochs_begun = False  # a stop before them (the start's summary) trained nothing

    def start_tracker(self) -> None:
        """Start this start's wandb run (rank 0 alone), the earlier start's resumed. A start
        without wandb (logger=none, or wandb failing) keeps the earlier run's id, for a
        later start to resume that wandb run rather than begin a second one."""
        logger_cfg = (self.cfg.logger if self.main_process
                      else OmegaConf.create({"backend": "none"}))
        earlier = self.results["wandb"]
        self.tracker = Tracker(logger_cfg, self.record.config, self.output_dir,
                               name=self.output_dir.name, resume=earlier,
                               history=self.results["epochs"])
        self.results["wandb"] = self.tracker.info or earlier
        if earlier:  # wandb keeps a resumed run's summary: an earlier start's divergence
            # (this start goes on from the checkpoint before it) is cleared, else a resumed
            # run stopped or failed otherwise was named diverged by source=wandb analysis
            self.tracker.summary({"diverged": None})

    def restore(self, checkpoint: dict) -> None:
        """Continue from ``checkpoint``: its weights, optimizer, schedule, batch order and
        epochs so far, and where its earlier starts ran. A checkpoint that does not fit the
        model this config builds (other layers or shapes, other parameters, which its
        record did not say), or a part saved in a shape this version does not restore
        (another version's, or edited by hand), is one :class:`ConfigError` naming what to
        do, not a trace from inside torch or the batch order."""
        try:
            self.model.load_state_dict(checkpoint["model"])
            # its momentum is matched to this model's parameters by position: weights that
            # fit under a parameter list that differs (a tensor that was a buffer, or
            # parameters in another order, in the version that saved it) do not
            optim.load_optimizer_state(self.optimizer, checkpoint["optimizer"])
        except UNRESTORABLE as err:
            raise ConfigError(
                f"the checkpoint in {self.output_dir} does not fit the model this config "
                f"builds ({unrestorable_said(err)}); resume it with the config it was made "
                f"with, or start the run again with trainer.resume=false") from None
        if not optim.scheduler_state_fits(self.scheduler, checkpoint["scheduler"]):
            raise ConfigError(
                f"the checkpoint in {self.output_dir} was saved under the one-cycle schedule "
                f"of an earlier version, which without a warm-up (or over one step) followed "
                f"another rule; resume it with the commit that started it (its {RECORD} names "
                f"it), or start the run again with trainer.resume=false")
        try:
            optim.load_scheduler_state(self.scheduler, checkpoint["scheduler"])
            if "scaler" in checkpoint:  # (checkpoints from before fp16 loss scaling lack it)
                self.scaler.load_state_dict(checkpoint["scaler"])
            self.train_batches.load_state_dict(checkpoint["batches"])
        except UNRESTORABLE as err:
            raise ConfigError(
                f"the checkpoint in {self.output_dir} holds a schedule, loss scale or batch "
                f"order this version cannot continue ({unrestorable_said(err)}); resume it "
                f"with the commit that started it (its {RECORD} names it), or start the run "
                f"again with trainer.resume=false") from None
        self.results["epochs"] = checkpoint["record"]["epochs"]
        # the combine=auto forms the epochs before ran: this process chooses again (from
        # its own timings, so maybe others) and auto_forms names its choices alone
        if "auto_forms" in checkpoint["record"]:
            self.results["auto_forms_earlier"] = [
                *checkpoint["record"].get("auto_forms_earlier", []),
                checkpoint["record"]["auto_forms"]]
        # as fitted when the run converted (the rebuilt layers were not fitted to anything)
        self.results["model"] = checkpoint["record"].get("model", self.results["model"])
        done = len(self.results["epochs"])
        self.record.provenance["resumed_from_epoch"] = done
        keep_earlier_provenance(self.record.provenance, checkpoint["record"]["provenance"], done,
                                device=str(self.device), amp=self.cfg.trainer.amp)
        log.info("resuming %s after epoch %d", self.output_dir, done)

    @property
    def process_batch(self) -> int:
        """The batch one process steps on (``trainer.batch_size`` is the global batch):
        what the record's per-image FLOPs are counted at, as a layer's once-a-batch terms
        (folded-norm statistics, a low-rank product) are paid once per process's batch
        (at the global batch, torchrun's records understated them by the process count)."""
        return self.cfg.trainer.batch_size // distributed.world_size()

    def wrap(self) -> None:
        """The module the steps run: DDP and ``torch.compile`` around the model."""
        trainer = self.cfg.trainer
        if trainer.compile:  # combine="auto" layers time their forms before tracing
            image, processes = self.train_batches.images.shape[1:], distributed.world_size()
            evaluated = min(trainer.eval_batch_size, self.test_batches.labels.numel())
            shapes = [(size // processes, *image) for size in (trainer.batch_size, evaluated)]
            choose_forms_now(self.model, shapes, device=self.device,
                             memory_format=self.memory_format, amp_dtype=self.amp_dtype,
                             graphed=trainer.compile_mode in GRAPHING_COMPILE_MODES
                             or trainer.cuda_graphs and not distributed.is_distributed())
        step_model = distributed.wrap(self.model, self.device)
        if distributed.world_size() > 1:  # synchronized norms, which basis layers do not
            # fold (fuse_norm): the record counts what runs, as a dense warm-up's conversion,
            # after this, does (else it counts the folded form); the fit's errors are the
            # record's: a resumed run's layers were rebuilt, not fitted, and describe None
            # (a torchrun run resumed after its conversion would lose them)
            fitted = {row["name"]: row["reconstruction_error"]
                      for row in self.results["model"].get("basis_report", [])}
            self.results["model"] = describe(self.model, batch=self.process_batch)
            for row in self.results["model"]["basis_report"]:
                if row["reconstruction_error"] is None:
                    row["reconstruction_error"] = fitted.get(row["name"])
        self.step_model = execution.compiled(step_model, trainer)
        self.graphed = execution.use_cuda_graphs(trainer, self.device)
        skip_every = self.cfg.basis.coefficient_update_every
        has_basis = bool(self.results["model"]["basis_layers"])
        self.skip_schedule = (CoefficientSkipSchedule(self.model, skip_every)
                              if has_basis and skip_every > 1 else None)
        if self.skip_schedule is not None:  # the record states what skipping saves
            self.results["model"].update(skip_training_cost(
                self.model, self.skip_schedule, batch=self.process_batch))
        # steps counted from the conversion: the coefficients of a warmed-up model train on
        # its first basis step and every N-th after, as without a warm-up (counted from the
        # run's first step, an N above the basis steps left them untrained)
        self.converted_at_step = self.cfg.basis.dense_warmup_epochs * len(self.train_batches)
        basis = self.cfg.basis
        # (None for a model without basis layers, or without a penalty to add)
        self.penalty = basis_penalty(
            self.model, self.cfg.trainer.weight_decay, coefficient_l1=basis.coefficient_l1,
            frobenius_decay=basis.get("frobenius_decay", False))

    def convert(self) -> None:
        """End of the dense warm-up: fit the basis layers to the trained dense weights."""
        before = dict(self.model.named_parameters())
        to_basis(self.model, self.cfg, self.layers, convert=True)
        self.model.to(device=self.device, memory_format=self.memory_format)
        rebind_optimizer(self.optimizer, self.model, before)
        self.results["model"] = describe(self.model, batch=self.process_batch)
        self.pending_conversion = False
        self.warn_if_dense()
        if self.cfg.trainer.compile:
            # forget what dynamo learnt compiling the dense model (its train and eval batch
            # sizes made it mark the batch dynamic): the basis model is compiled as a run
            # resumed after the warm-up compiles it, static, so the two train alike
            import torch._dynamo

            torch._dynamo.reset()
        self.wrap()
        self.summarize_model()
        model = self.results["model"]
        log.info("dense warm-up done: %d layers converted to basis form, %s parameters",
                 len(model["basis_layers"]), f"{model['parameters']:,}")

    def warn_if_dense(self) -> None:
        """A basis run whose layers all stay dense (none saves compute at this basis size:
        ``basis.only_where_saves``) trains the dense baseline; say so, as a policy that
        chooses no layer does, rather than let a sweep's row pass for a basis result."""
        if self.layers is not None and not self.results["model"]["basis_layers"]:
            log.warning("selection %s converted no layer: at basis.size=%s none of them "
                        "saves compute (basis.only_where_saves), so the model stays dense",
                        self.cfg.selection.policy, self.cfg.basis.size)

    def summarize_model(self) -> None:
        """The model's counts and basis layers in the wandb summary, from which
        ``scripts/analyze.py source=wandb`` rebuilds the record's ``model``: at the start,
        and again when the dense warm-up converts the model (else the summary would keep
        the dense model's)."""
        model = self.results["model"]
        self.tracker.summary({
            **{f"model/{k}": v for k, v in model.items() if isinstance(v, (int, float))},
            "model/basis_layer_names": " ".join(model["basis_layers"])})

    def before_step(self) -> None:
        """Freeze or free the coefficients for the coming step
        (``basis.coefficient_update_every``), counted from the conversion."""
        self.skip_schedule(self.scheduler.last_epoch - self.converted_at_step)

    def run(self) -> dict[str, Any]:
        """Train the epochs left, saving after each; returns the run record. A stop, a
        peer's failure or a divergence leaves as one :class:`Stopped` or
        :class:`TrainingDiverged` line that says where the run is and how to go on. wandb
        starts here, in the ``try`` (a stop before it leaves no wandb run open), and is
        finished and the process group left whatever happens."""
        trainer, record, results = self.cfg.trainer, self.record, self.results
        failed = True
        try:
            try:
                self.start_tracker()
                self.saves.start_clock()  # (wandb's start is not counted)
                # What scripts/analyze.py source=wandb needs to rebuild the run record (in
                # the try: a stop while it is sent still ends the wandb run, and is said)
                self.summarize_model()
                self.tracker.summary(wandb_provenance(record.provenance))
                log.info("%5s %10s %9s %9s %8s %9s %8s", "epoch", "train_loss", "train_acc",
                         "test_loss", "test_acc", "lr", "time_s")
                self.epochs_begun = True
                for epoch in range(len(results["epochs"]) + 1, trainer.epochs + 1):
                    self.train_epoch(epoch, record)
                failed = False
            except RuntimeError as err:  # another rank died: torchrun stops this one next
                if distributed.peer_failure(err) is None:
                    raise
                raise Stopped(signal.SIGTERM) from err  # said below, as the other stops are
        except TrainingDiverged as err:  # before this epoch's record and checkpoint
            divergence = stop_messages.divergence(self.cfg, err)
            with stops_let_go():  # a stop while it is recorded would replace its line
                self.saves.record_divergence(divergence)
                # before finish(): source=wandb analysis names the run diverged by it, as
                # the local record's (wandb says only "failed", its exit code)
                self.tracker.summary({"diverged": divergence})
            message = stop_messages.diverged_message(self.cfg, self.output_dir, err,
                                                     self.saves.saved_epochs,
                                                     len(results["epochs"]))
            raise TrainingDiverged(message, err.quantity, err.value, "trainer.lr") from None
        except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM through basisconv.cli, a peer gone
            with stops_let_go():
                stop = self.stopped(err)
            raise stop from None
        finally:
            try:
                if self.tracker is not None:  # (None: stopped before wandb started)
                    self.tracker.finish(failed=failed)
            except KeyboardInterrupt as err:  # while wandb uploads (up to finish_timeout_s)
                if not failed:
                    raise Stopped(getattr(err, "signum", signal.SIGINT),
                                  stop_messages.stopped_finishing_message(
                                      self.cfg, self.output_dir)) from None
                # else a second stop: the stop or error in flight goes on out, and says
                # where the run is (a bare `raise` here would replace it with this one)
            finally:
                # Free DDP's reducer before its process group goes: DDP sits in reference
                # cycles, so dropping the name alone leaves it to a later (too late)
                # collection.
                self.step_model = None
                gc.collect()
                distributed.teardown(together=not failed)
        return record.as_dict()

    def train_epoch(self, epoch: int, record: RunRecord) -> None:
        """One epoch trained and evaluated, then its row logged and saved everywhere (the
        record completed after the last)."""
        trainer, results = self.cfg.trainer, self.results
        row = loop.run_epoch(epoch, self.step_model, self.train_batches, self.test_batches,
                             self.optimizer, self.scheduler, trainer, self.amp_dtype,
                             graphed=self.graphed, scaler=self.scaler,
                             before_step=self.before_step if self.skip_schedule else None,
                             extra_loss=self.penalty)
        results["epochs"].append(row)
        if self.cfg.basis.combine == "auto":  # which form each shape ran, and why
            results["auto_forms"] = auto.described(this_run=True)
        self.tracker.log(row, step=epoch)
        if self.pending_conversion and epoch == self.cfg.basis.dense_warmup_epochs:
            self.convert()
        if epoch == trainer.epochs:
            record.status = "complete"
            # when it ended (provenance.date is when this process started it)
            record.provenance["finished"] = timestamp()
            results["final"] = final_metrics(results["epochs"])
            self.tracker.summary(results["final"])
        self.saves.save_everywhere()

    def stopped(self, err: KeyboardInterrupt) -> Stopped:
        """The stop a signal or a peer's failure makes of the run: why, where it stopped
        and how to go on. A peer's failure is found in the stop's context too: under
        torchrun another rank's death fails this one's collective and brings torchrun's
        SIGTERM, which can land before the failure is made a stop (its own Stopped, without
        a message, then carries the failure as its context)."""
        signum = getattr(err, "signum", signal.SIGINT)
        self.saves.note_a_checkpoint_just_saved()
        message = self.stop_message()
        reason = distributed.peer_failure_in(err)
        if reason is not None:
            return Stopped(signal.SIGTERM, f"{reason}; {message}")
        if signum == signal.SIGTERM and distributed.world_size() > 1:
            # torchrun's SIGTERM can come before the collective that another process's
            # death broke has said so (a slow disk while rank 0 writes its record)
            message += ("; under torchrun a SIGTERM may also follow the failure of "
                        "another process of the job, which torchrun's summary names")
        return Stopped(signum, message)

    def checkpoint_state(self) -> dict[str, Any]:
        """What the checkpoint holds besides the config and record: all the next epoch
        depends on (:data:`~basisconv.checkpoint.RUN_STATE`)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "batches": self.train_batches.state_dict(), "scaler": self.scaler.state_dict()}

    def stop_message(self) -> str:
        """What an interrupted run tells the user: where it stopped, how to go on."""
        if not self.epochs_begun:  # as a stop while the run was built (start_training)
            return stop_messages.stopped_before_training(self.cfg, self.output_dir,
                                                         self.saves.saved_epochs)
        return stop_messages.stop_message(self.cfg, self.output_dir, self.saves.saved_epochs,
                                          len(self.results["epochs"]))


def final_metrics(epochs: list[dict]) -> dict[str, Any]:
    """The run's summary: the last epoch's test metrics are its result;
    ``best_test_accuracy`` is the maximum over epochs, picked on the test set (optimistic,
    for curves only: no checkpoint is chosen by it)."""
    last = epochs[-1]
    return {"test_accuracy": last["test_accuracy"], "test_loss": last["test_loss"],
            "train_loss": last["train_loss"], "best_test_accuracy":
            max(e["test_accuracy"] for e in epochs),
            "train_seconds": sum(e["epoch_seconds"] for e in epochs),
            "mean_epoch_seconds": sum(e["epoch_seconds"] for e in epochs) / len(epochs),
            "forward_seconds_per_step": sum(e["forward_seconds_per_step"] for e in epochs)
            / len(epochs),
            "backward_seconds_per_step": sum(e["backward_seconds_per_step"] for e in epochs)
            / len(epochs)}
