"""A form's trial timed as CUDA graph replays (:class:`GraphTrial`), the switch that turns
such trials on (:func:`graph_replays`, which a run that replays its steps as CUDA graphs
enters: ``trainer.cuda_graphs``), and what every trial of :mod:`.auto` shares, eager or
graphed: its leaves detached (:func:`detached`), one call with its backward
(:func:`call_once`) (a failure is quoted in its warning by
:func:`basisconv.errors.error_head`).

Kept apart from :mod:`.auto`, which chooses a form per shape: capturing and replaying a
graph (a side stream, the allocator's pool after a failed capture) is CUDA's business
alone and reads nothing of the choice; :mod:`.auto` imports from here, never the reverse.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time

import torch

from ..errors import error_head

log = logging.getLogger(__name__)

#: Whether CUDA trials are timed as graph replays (:func:`graph_replays`).
_GRAPH_REPLAYS = False
#: Replays a graphed trial's call times at once (one synchronization for them all).
REPLAYS = 10


def detached(leaves: tuple) -> list:
    """Detached copies of the tensors among ``leaves`` (None kept), each requiring a
    gradient where its original does: a trial's graph never reaches the caller's."""
    return [t.detach().requires_grad_(t.requires_grad) if t is not None else None
            for t in leaves]


def call_once(call, leaves: list, backward: bool) -> None:
    """``call(*leaves)``, then its output's backward where ``backward``, the leaves'
    gradients set to None first (inside a capture, the graph's backward writes them)."""
    for leaf in leaves:
        if leaf is not None:
            leaf.grad = None
    out = call(*leaves)
    if backward:
        out.backward(torch.ones_like(out))


@contextlib.contextmanager
def graph_replays(on: bool = True):
    """Inside, trials on CUDA are timed as CUDA graph replays (:class:`GraphTrial`), as a
    run that replays its steps as graphs (``trainer.cuda_graphs``) will run them: timed
    eagerly, every kernel launch counts (a few microseconds each), and a form of many small
    launches (the fold in standard ops: about 70 a layer) is judged slower than it runs
    in the graph, where launches cost nothing. The graphed steps' eager first calls, where
    their layers choose, run inside."""
    global _GRAPH_REPLAYS
    before, _GRAPH_REPLAYS = _GRAPH_REPLAYS, on
    try:
        yield
    finally:
        _GRAPH_REPLAYS = before



def timed_as_replays(x: torch.Tensor) -> bool:
    """Whether a trial on ``x``'s device is timed as graph replays: on CUDA, inside
    :func:`graph_replays`. The one rule by which :func:`.auto.trial` makes a trial and
    :func:`.auto.shape_key` keys the choice it makes (a choice timed eagerly is not one
    timed as replays)."""
    return _GRAPH_REPLAYS and x.is_cuda


class GraphTrial:
    """One form's trial as CUDA graph replays, for :func:`.auto.interleaved`: its first call (the
    untimed round) runs the call twice eagerly on a side stream (cuDNN's algorithm,
    autotuning, allocations), captures it, forward and backward, into a graph and replays
    it once (the first launch uploads the graph); each later call replays it
    :data:`REPLAYS` times and gives the seconds per replay. A form that cannot be captured
    counts as never fastest (``math.inf``, said in the log): a graphed run could not
    capture it either."""

    def __init__(self, call, leaves: tuple, backward: bool):
        self.call, self.backward = call, backward
        self.leaves = detached(leaves)
        self.device = self.leaves[0].device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False

    def _run(self) -> None:
        call_once(self.call, self.leaves, self.backward)

    def __call__(self) -> float:
        if self.failed:
            return math.inf
        if self.graph is None:
            start = time.perf_counter()
            self._capture()
            return time.perf_counter() - start
        torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for _ in range(REPLAYS):
            self.graph.replay()
        torch.cuda.synchronize(self.device)
        return (time.perf_counter() - start) / REPLAYS

    def _capture(self) -> None:
        stream, current = _trial_stream(self.device), torch.cuda.current_stream(self.device)
        stream.wait_stream(current)
        pool, graph = torch.cuda.graph_pool_handle(), torch.cuda.CUDAGraph()
        try:
            # (the caller's stream comes back even where the graph's own exit raises)
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._run()
                try:
                    # thread-local: another thread's CUDA calls (NCCL's watchdog) do not
                    # invalidate the capture, as Inductor captures
                    with torch.cuda.graph(graph, pool=pool, stream=stream,
                                          capture_error_mode="thread_local"):
                        self._run()
                except Exception:
                    _end_failed_capture(self.device, pool)
                    raise
                graph.replay()
            self.graph = graph
        except Exception as err:  # noqa: BLE001 - any failure: the form is not chosen
            self.failed = True
            log.warning("combine=auto: a form could not be captured as a CUDA graph (%s); "
                        "it is not chosen for this shape", error_head(err))
        finally:
            current.wait_stream(stream)


@functools.lru_cache(maxsize=None)
def _trial_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for every trial's warm-up and capture (what a stream sets
    up lazily, cuBLAS's workspace for it, is then set up outside any capture)."""
    return torch.cuda.Stream(device)


def _end_failed_capture(device: torch.device, pool) -> None:
    """After a capture that CUDA invalidated, ``CUDAGraph.capture_end`` raises before it
    tells PyTorch's allocator that the capture ended, which then keeps it registered and
    its pool alive (a later ``empty_cache`` fails an internal assert): tell it here, and
    release the pool. Where the capture did end (the error came after), the first call
    fails and the graph's own reset releases the pool. Best effort: private bindings."""
    end = getattr(torch._C, "_cuda_endAllocateToPool", None)
    release = getattr(torch._C, "_cuda_releasePool", None)
    if end is None or release is None:
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        end(index, pool)
    except RuntimeError:
        return
    release(index, pool)
