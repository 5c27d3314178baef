"""Many of a probe's fine-tunes at once, in worker processes (``sensitivity.workers``):
:func:`evaluate_many`. Apart from the probe (:mod:`basisconv.probe`), which it only
drives through its public methods, because what it holds is about processes, not
fine-tunes: a spawned pool whose workers each rebuild the probe, end with their parent,
start with Ctrl-C blocked, and are ended at once by the first failure or a stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from .errors import WorkerFailed
from .probe import Probe
from .signals import one_stop, signals_blocked, stops_held


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
            results[i] = probe.keep(*jobs[i], probe.evaluate_anew(*jobs[i]))
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
