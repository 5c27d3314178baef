"""The probe every sensitivity estimate and exhaustive search shares: a class-balanced
held-out split of the *training* images (the test set is never used to choose layers),
a briefly trained dense model, and one fine-tune recipe. ``Probe.evaluate_layers(names)``
converts those layers of a copy of the dense model, fine-tunes it and measures it on the
held-out images.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TYPE_CHECKING

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from . import execution, loop, optim
from .checkpoint import load_source_weights
from .data import TensorBatches, prepare_data, stratified_subset
from .errors import TrainingDiverged, WorkerFailed
from .network import build_dense
from .penalties import basis_penalty
from .progress import PROBE_BASIS, Progress
from .records import is_measurement
from .signals import one_stop, signals_blocked, stops_held
from .surgery import CONFIG_KEYS, apply_basis, basis_report

if TYPE_CHECKING:  # pandas (half a second) is imported where a table is made: a process
    import pandas as pd  # that makes none (most training runs) starts without it

log = logging.getLogger(__name__)


@dataclass
class Split:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor


def holdout_split(images: torch.Tensor, labels: torch.Tensor, val_size: int | float,
                  seed: int) -> Split:
    """A class-balanced held-out part of the training images to measure drops on."""
    # one training image at least is left to fine-tune on, and a refusal's range says so
    # (else it says n images, and n is then refused for leaving none)
    val = stratified_subset(labels, val_size, seed + 1, key="sensitivity.val_size", leave=1)
    keep = torch.ones(labels.numel(), dtype=torch.bool, device=labels.device)
    keep[val] = False
    return Split(images[keep], labels[keep], images[val], labels[val])


@contextlib.contextmanager
def diverging(what: str, lr_key: str, lr: float, note: str = ""):
    """A loss that becomes NaN or infinite in the block is :class:`TrainingDiverged` naming
    the training (``what``) and its learning rate (``lr_key``)."""
    try:
        yield
    except TrainingDiverged as err:
        raise TrainingDiverged(f"sensitivity: {what} diverged (its {err.quantity} became "
                               f"{err.value} with {lr_key}={lr}); lower {lr_key}{note}",
                               err.quantity, err.value) from None


class Probe:
    """What every estimate shares: the data split, the briefly trained dense model, and
    the fine-tune recipe. ``evaluate_layers(names)`` converts those layers of a copy of the
    dense model, fine-tunes and measures it (one layer for the sensitivity table, several
    for the exhaustive search)."""

    def __init__(self, cfg: DictConfig, dense_state: dict | None = None,
                 keep_in: str | Path | None = None):
        """``dense_state``: the briefly trained dense model's weights, from another
        process's probe (a worker of :func:`evaluate_many`), instead of pretraining.
        ``keep_in``: a folder (the table's cache folder) where the pretrained dense model
        and every finished fine-tune are kept, and found again by a later probe of the
        same settings (:mod:`basisconv.progress`): a stopped estimate resumes there."""
        self.cfg = cfg
        self.seed = cfg.sensitivity.seed
        self.runtime = execution.setup(cfg.trainer, self.seed)
        self.device, self.memory_format = self.runtime.device, self.runtime.memory_format
        self.graphed = execution.use_cuda_graphs(cfg.trainer, self.device)
        data = prepare_data(cfg.data, self.seed)
        self.split = holdout_split(data.train_images, data.train_labels,
                                   cfg.sensitivity.val_size, self.seed)
        for name in ("train_images", "train_labels", "val_images", "val_labels"):
            setattr(self.split, name, getattr(self.split, name).to(self.device))
        self.dense = build_dense(cfg)
        self.dense.to(self.device, memory_format=self.memory_format)
        self.progress = None if keep_in is None else Progress(keep_in, cfg, self.device)
        self.kept_pretraining, self.kept_finetunes = False, 0  # found kept, not redone
        self.pretrain_seconds = self._dense_weights(dense_state)
        if self.progress is not None:
            self.progress.start_from(self.dense)
        with diverging("the dense pretraining", "trainer.lr", cfg.trainer.lr):
            self.pretrained = self.measure(self.dense)

    def _dense_weights(self, dense_state: dict | None) -> float:
        """Give the dense model its weights, from the first that has them: ``dense_state``
        (a worker's), ``sensitivity.source_checkpoint``, or a pretraining (this probe's,
        or the one an earlier probe kept). Returns the pretraining's seconds (a load's,
        for the first two)."""
        start = time.perf_counter()
        if dense_state is not None:
            self.dense.load_state_dict(dense_state)
        elif self.cfg.sensitivity.source_checkpoint:
            self._load_source_checkpoint(self.cfg.sensitivity.source_checkpoint)
        else:
            return self._pretrain_or_take_kept()
        return time.perf_counter() - start

    def _load_source_checkpoint(self, source: str) -> None:
        """The dense weights of a trained run's checkpoint, said with what they have seen."""
        load_source_weights(self.dense, source, "sensitivity.source_checkpoint")
        log.info("sensitivity: dense weights from %s", source)
        # the split keeps them out of this probe's training only: a baseline trained on the
        # training images (a training run's checkpoint) has seen them
        log.warning("sensitivity: the dense weights of %s were trained elsewhere, most "
                    "likely on the %d held-out training images too; the drops are "
                    "measured on images they may have memorised (pretrain here, "
                    "sensitivity.source_checkpoint=null, to hold them out)",
                    source, self.split.val_labels.numel())

    def _pretrain_or_take_kept(self) -> float:
        """Pretrain the dense model briefly (``sensitivity.pretrain_epochs``, the trainer's
        recipe, warm-up included), and keep it for a later probe; or take the one an
        earlier probe of the same settings kept (``kept_pretraining``: a stopped estimate
        does not pretrain again). Returns the pretraining's seconds, also when an earlier
        probe did it."""
        start = time.perf_counter()
        kept = self.progress.dense(self.dense) if self.progress else None
        if kept is not None:
            state, seconds = kept
            self.dense.load_state_dict(state)
            self.kept_pretraining = True
            log.info("sensitivity: the dense model pretrained before, kept in %s",
                     self.progress.root)
            return seconds
        trainer = self.cfg.trainer
        with diverging("the dense pretraining", "trainer.lr", trainer.lr):
            self.train(self.dense, self.cfg.sensitivity.pretrain_epochs, trainer.lr,
                       trainer.schedule, trainer.warmup_fraction)
        seconds = time.perf_counter() - start
        if self.progress is not None:
            self.progress.keep_dense(self.dense, seconds)
        return seconds

    def batches(self, train: bool, seed: int | None = None) -> TensorBatches:
        s, trainer = self.split, self.cfg.trainer
        if train:
            return self.runtime.batches(s.train_images, s.train_labels, trainer.batch_size,
                                        augment=self.cfg.data,
                                        seed=self.seed if seed is None else seed)
        return self.runtime.batches(s.val_images, s.val_labels, trainer.eval_batch_size)

    def train(self, model: nn.Module, epochs: int, lr: float, schedule: str,
              warmup_fraction: float, batch_seed: int | None = None) -> None:
        """``trainer``'s recipe with these epochs, peak lr and schedule: the pretraining
        keeps the trainer's own warm-up, a fine-tune (a short cosine) has none."""
        if epochs == 0:
            return
        recipe = OmegaConf.merge(self.cfg.trainer, {
            "epochs": epochs, "lr": lr, "schedule": schedule, "warmup_fraction": warmup_fraction})
        batches = self.batches(train=True, seed=batch_seed)
        optimizer = optim.build_optimizer(model, recipe)
        scheduler = optim.build_scheduler(optimizer, recipe, len(batches))
        scaler = optim.grad_scaler(self.runtime.amp_dtype, self.device)
        # a fine-tune decays a converted layer's weight as training would (frobenius_decay;
        # its L1 penalty is a training run's choice, not the estimate's)
        penalty = basis_penalty(model, recipe.weight_decay,
                                frobenius_decay=self.cfg.basis.get("frobenius_decay", False))
        for _ in range(epochs):
            loop.train_one_epoch(model, batches, optimizer, scheduler, scaler=scaler,
                                 amp_dtype=self.runtime.amp_dtype, extra_loss=penalty,
                                 label_smoothing=recipe.label_smoothing, graphed=self.graphed)

    def measure(self, model: nn.Module) -> dict[str, float]:
        stats = loop.evaluate(model, self.batches(train=False), amp_dtype=self.runtime.amp_dtype,
                              graphed=self.graphed)
        loop.check_finite(stats.loss, "held-out loss")  # a NaN is never put in a table
        return {"accuracy": stats.accuracy, "loss": stats.loss}

    def converted(self, names: list[str]) -> nn.Module:
        """A copy of the dense model with ``names`` converted as ``cfg.basis`` says, and as
        a training run converts them: several same-shaped layers of a subset share one
        coefficient matrix under ``basis.share_coefficients`` (one layer has none to share)."""
        torch.manual_seed(self.seed)
        model = copy.deepcopy(self.dense)
        if names:  # the options kept work is found under (progress.PROBE_BASIS)
            options = {key: self.cfg.basis.get(key) for key in PROBE_BASIS if key != "size"}
            options["fit"] = options.get("fit") or "pivots"
            apply_basis(model, names, self.cfg.basis.size, inplace=True, convert=True,
                        keys=CONFIG_KEYS, **options)
            model.to(self.device, memory_format=self.memory_format)
        return model

    def kept(self, names: list[str], batch_seed: int | None = None) -> dict[str, Any] | None:
        """The result of this fine-tune that an earlier probe of the same settings kept
        (counted in ``kept_finetunes``), or ``None``."""
        result = None if self.progress is None else self.progress.result(names, batch_seed)
        lacking = [] if result is None else [
            key for key in RESULT_FIELDS if not is_measurement(result.get(key))]
        if lacking:  # a damaged kept file of the right job ended the table in a KeyError
            log.warning("sensitivity: the kept result of %s lacks %s (damaged); computing "
                        "it again", names or "the dense reference", ", ".join(lacking))
            result = None
        self.kept_finetunes += result is not None
        return result

    def evaluate_layers(self, names: list[str], batch_seed: int | None = None) -> dict[str, Any]:
        """Convert ``names`` (none: the dense reference), fine-tune, measure. Every call
        fine-tunes on the same batches unless ``batch_seed`` asks for another order. A
        result kept by an earlier probe of the same settings is returned as it was."""
        kept = self.kept(names, batch_seed)
        if kept is not None:
            return kept
        return self.keep(names, batch_seed, self._evaluate_layers(names, batch_seed))

    def keep(self, names: list[str], batch_seed: int | None, result: dict[str, Any]
             ) -> dict[str, Any]:
        """Keep a finished fine-tune's ``result`` for a later probe (if this one keeps)."""
        if self.progress is not None:
            self.progress.keep(names, batch_seed, result)
        return result

    def _evaluate_layers(self, names: list[str], batch_seed: int | None) -> dict[str, Any]:
        start = time.perf_counter()
        model = self.converted(names)
        errors = [row["reconstruction_error"] for row in basis_report(model)]
        converted = self.measure(model)
        sens = self.cfg.sensitivity
        with diverging("a fine-tune", "sensitivity.finetune_lr", sens.finetune_lr,
                       f" (the dense model it starts from has held-out accuracy "
                       f"{self.pretrained['accuracy']:.3f}; if that is chance, lower trainer.lr, "
                       f"which pretrained it)"):
            self.train(model, sens.finetune_epochs, sens.finetune_lr, "cosine", 0.0, batch_seed)
            after = self.measure(model)
        return {"reconstruction_error": max(errors) if errors else 0.0,
                "converted_accuracy": converted["accuracy"], **after,
                "seconds": time.perf_counter() - start}


#: What a fine-tune's result holds (:meth:`Probe._evaluate_layers`), each a measurement: a
#: kept result without one is computed again.
RESULT_FIELDS = ("reconstruction_error", "converted_accuracy", "accuracy", "loss", "seconds")


#: The probe of a worker process of :func:`evaluate_many` (one per process).
_WORKER_PROBE: Probe | None = None


def _end_with_parent(parent: int) -> None:
    """A worker ends when its parent process does, however it ended: one whose parent was
    killed outright (SIGKILL, the OOM killer, a slot's end) went on fine-tuning, holding its
    GPU memory, until its job was done. Linux's parent-death signal does it (the pool
    starts its workers from the thread that submits, which outlives them); a parent gone
    before the signal was set is seen by the worker's new parent id. Elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _start_worker(config: dict, dense_state: dict, parent: int) -> None:
    """A worker's start. Its progress bars' lock is this process's own: tqdm's default
    adds a multiprocessing lock, a semaphore that a spawned worker registers with the
    parent's resource tracker; a worker ended by a stop or by another's death (terminated,
    no clean-up) left it there, and the tracker said "leaked semaphore objects" after the
    stop's line. (A worker's bars are never shown and share no terminal line.)"""
    global _WORKER_PROBE
    _end_with_parent(parent)
    tqdm.set_lock(threading.RLock())
    logging.getLogger("basisconv").setLevel(logging.WARNING)  # the parent logs the results
    _WORKER_PROBE = Probe(OmegaConf.create(config), dense_state)


def _evaluate_in_worker(job: tuple[list[str], int | None]) -> dict[str, Any]:
    return _WORKER_PROBE.evaluate_layers(*job)


def _nothing() -> None:
    """A job that does nothing (see :func:`evaluate_many`)."""


def evaluate_many(probe: Probe, jobs: list[tuple[list[str], int | None]],
                  workers: int) -> list[dict[str, Any]]:
    """``probe.evaluate_layers(names, batch_seed)`` for every job, in order; with
    ``workers > 1`` in that many processes at once (``sensitivity.workers``). The
    fine-tunes are independent, and a small model leaves a GPU mostly idle, so several
    share it well. Each worker rebuilds the probe from the same config and the dense
    weights, so the results are the ones one process computes (same device and threads).

    The first job that fails ends them all at once, as in one process; a worker that dies
    (killed, out of memory) or cannot start is a :class:`WorkerFailed`. (A
    ``multiprocessing.Pool`` waited forever for a dead worker's job, restarted a worker
    that could not start without end, and raised a failure after every other job.)

    Results a probe that keeps (``keep_in``) finds kept are not computed again; each new
    one is kept as it arrives (see :func:`_gather`), so a stop loses only the fine-tunes
    then running."""
    results = [probe.kept(*job) for job in jobs]
    pending = [i for i, result in enumerate(results) if result is None]
    if workers <= 1 or len(pending) <= 1:
        for i in pending:  # (found not kept above: not looked up, nor warned of, again)
            results[i] = probe.keep(*jobs[i], probe._evaluate_layers(*jobs[i]))
        return results
    state = {k: v.detach().cpu() for k, v in probe.dense.state_dict().items()}
    config = OmegaConf.to_container(probe.cfg, resolve=True)
    context = torch.multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with one_stop():
        pool = ProcessPoolExecutor(min(workers, len(pending)), mp_context=context,
                                   initializer=_start_worker,
                                   initargs=(config, state, os.getpid()))
        try:
            # the workers start (one per submit) with Ctrl-C blocked, a mask they keep: a
            # Ctrl-C reaches every process of the terminal's group, and a worker starting
            # (importing torch) printed a KeyboardInterrupt traceback of its own, or died,
            # beside the parent's stop (which ends its workers). A stop that comes meanwhile
            # (through another thread, or a SIGTERM) is held until every worker is started:
            # raised in the pool's write of a worker's start (its weights), it cut the write
            # short, and the worker printed a traceback of the truncated data (EOFError)
            # beside the stop, or, not yet in the pool's list, was not ended with the others.
            with stops_held(), signals_blocked({signal.SIGINT}):
                futures = {pool.submit(_evaluate_in_worker, jobs[i]): i for i in pending}
                # CPython's pool starts a worker per submit and wakes its watcher just before:
                # the last worker started went unwatched until a later wake-up, so its death
                # (before a result from another worker woke it) went unseen. One more submit
                # wakes it with every worker started.
                pool.submit(_nothing)
            _gather(probe, jobs, futures, results)
            pool.shutdown(wait=True)  # all done: the workers end as they should (a terminated
            return results            # one left semaphores that Python warned of at exit)
        except BrokenProcessPool:
            raise WorkerFailed(
                f"sensitivity.workers={workers}: a worker process died or could not start "
                f"(killed, out of memory?); its error, if it had one, is printed above. Run "
                f"again with fewer workers (sensitivity.workers=1 runs in this process)") from None
        finally:
            _stop_workers(pool)


def _gather(probe: Probe, jobs: list[tuple[list[str], int | None]],
            futures: dict[Future, int], results: list[dict[str, Any] | None]) -> None:
    """Each result into ``results`` as it arrives, kept at once. The first failure raises
    the job's own error (e.g. TrainingDiverged), or a stop's KeyboardInterrupt; the results
    that finished beside it, which the loop had not reached yet, are kept first, so that a
    resume does not fine-tune them again."""
    try:
        for future in as_completed(futures):
            i = futures[future]
            results[i] = probe.keep(*jobs[i], future.result())
    except BaseException:
        for future, i in futures.items():
            if (results[i] is None and future.done() and not future.cancelled()
                    and future.exception() is None):
                probe.keep(*jobs[i], future.result())
        raise


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool without waiting for fine-tunes still running (after a failure, or a
    stop): their results would be thrown away."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)


def reference_noise(reference: dict, repeats: list[dict]) -> dict[str, Any] | None:
    """A yardstick for the drops: the spread of the dense reference and its ``repeats``
    (fine-tuned with other batch orders; a drop well inside this spread says little). It
    is not a bound on a drop's noise: a converted layer's drop can move as much or more
    with the batch order, and sharing one order does not cancel that (measured on the quick
    profile in ``results/drop-noise/``, quoted in docs/selection.md; :func:`drop_noise`
    measures it in any estimate)."""
    import pandas as pd
    if not repeats:
        return None
    runs = [reference, *repeats]
    accuracy = pd.Series([r["accuracy"] for r in runs])
    loss = pd.Series([r["loss"] for r in runs])
    return {"repeats": len(runs), "accuracy_std": float(accuracy.std(ddof=1)),
            "loss_std": float(loss.std(ddof=1)), "accuracies": accuracy.tolist()}


def spread_layers(names: list[str], count: int) -> list[str]:
    """``count`` of ``names`` (in model order) spread evenly over them, the middle of each
    of ``count`` equal stretches: one is the middle layer, as many as there are all of
    them. Chosen by position, not by result, so their fine-tunes go in the estimate's one
    batch of jobs."""
    count = min(count, len(names))
    return [names[(2 * i + 1) * len(names) // (2 * count)] for i in range(count)]


def difference_std(std: float) -> float:
    """The std of a difference of two measurements that each vary by ``std``,
    independently: ``sqrt(2) * std``. Two drops (or two subsets' accuracies) closer than
    this are not told apart by one run each."""
    return 2 ** 0.5 * std


def drop_noise(reference: dict, repeats: list[dict], layers: dict[str, list[dict]]
               ) -> dict[str, Any] | None:
    """The drops' own noise, which :func:`reference_noise` is not: for each layer of
    ``layers`` (its fine-tune under the reference's batch order, then under each of the
    ``repeats``' orders), its drops under each order against the reference fine-tuned
    under the same order, and their sample spread; pooled over the layers as the root of
    their mean variance (each layer's spread has only ``len(repeats)`` degrees of
    freedom)."""
    import pandas as pd
    if not repeats or not layers:
        return None
    references = [reference, *repeats]
    rows, variances = [], {"accuracy": [], "loss": []}
    for name, results in layers.items():
        drops = pd.Series([r["accuracy"] - mine["accuracy"]
                           for r, mine in zip(references, results, strict=True)])
        increases = pd.Series([mine["loss"] - r["loss"]
                               for r, mine in zip(references, results, strict=True)])
        rows.append({"layer": name, "accuracy_drops": drops.tolist(),
                     "accuracy_std": float(drops.std(ddof=1)),
                     "loss_std": float(increases.std(ddof=1))})
        variances["accuracy"].append(drops.var(ddof=1))
        variances["loss"].append(increases.var(ddof=1))
    return {"repeats": len(references), "layers": rows,
            "accuracy_std": float(pd.Series(variances["accuracy"]).mean() ** 0.5),
            "loss_std": float(pd.Series(variances["loss"]).mean() ** 0.5)}
