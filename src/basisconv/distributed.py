"""Data-parallel training across processes (``torchrun``), on GPUs (NCCL) or CPUs (gloo).

Semantics: ``trainer.batch_size`` is the *global* batch. Every process draws the same
permutation and augments the same global batch (from the same seeded generator), then
keeps its own contiguous slice; DDP averages the gradients, and batch-norm statistics
are synchronized over the global batch. So N processes compute the same training step as
one process with the whole batch: results do not depend on the number of processes.

Batch norm: ``torch.nn.SyncBatchNorm`` on CUDA; on CPU, where torch's SyncBatchNorm
refuses to run, :class:`CPUSyncBatchNorm` does the same with autograd-aware all-reduces.
"""

from __future__ import annotations

import datetime
import os
import re
import signal

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import ConfigError, context_chain


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def first_process() -> bool:
    """Whether this is the process that speaks for a run: under ``torchrun`` rank 0 (each
    rank meets the same error; N lines, some contradicting rank 0's, said it N times).
    Known from torchrun's ``RANK`` before the process group is joined, and after it is
    left, where :func:`is_main_process` asks the group."""
    return int(os.environ.get("RANK", "0")) == 0


#: What the backends' errors say when the other end of a collective went away: gloo reading
#: ("Connection reset/closed by peer") or writing to it ("Write error ...: Broken pipe", the
#: broadcast's source, rank 0, writes), NCCL's remote error.
PEER_FAILURE_SIGNS = ("by peer", "Broken pipe", "ncclRemoteError", "remote process exited")


#: What gloo says when a collective waited ``trainer.collective_timeout_s`` for a peer that
#: neither answered nor left: "Timed out waiting 5000ms for recv operation to complete".
#: (NCCL's watchdog aborts the process on its timeout instead: no error reaches Python.)
COLLECTIVE_TIMEOUT = re.compile(r"Timed out waiting (\d+)\s*ms for \w+ operation")

#: gloo's other words for the same timeout, when it fires as the connection is in another
#: state (met under load in DDP's buffer broadcast, a CI run's trace): no time in them, so
#: the time is the one the process group was set up with (:data:`group_timeout_s`).
PAIR_CLOSED = "Application timeout caused pair closure"

#: The collective timeout :func:`setup` gave the process group, in seconds (None before).
group_timeout_s: float | None = None

#: What the store says when a process waited ``trainer.collective_timeout_s`` for another
#: to join the process group (gloo's connection addresses, one key per rank, waited for in
#: order of rank): "wait timeout after 5000ms, keys: /default_pg/0//cpu//0/1", rank 1 had
#: not joined (it started that much later, or froze first). Other store timeouts are this
#: process's own, and so are NCCL's (its keys' last part is not known to be a rank: seen
#: with gloo only, in torch 2.13).
JOIN_TIMEOUT = re.compile(r"wait timeout after (\d+)\s*ms, keys: /default_pg/\d+//cpu//\d+/(\d+)")


def peer_failure(err: BaseException) -> str | None:
    """One line saying that another process of the job went away, when ``err`` is a
    collective's failure for that reason (gloo: "Connection reset/closed by peer", or a
    broken pipe when it wrote; NCCL: "ncclRemoteError", a remote process exited), or did
    not answer (:func:`peer_timeout`), else None: a fault of this process's own (a store's
    timeout, a CUDA out-of-memory inside NCCL) is left to propagate as it is."""
    if not isinstance(err, RuntimeError) or not (is_distributed() or launched_processes() > 1):
        return None  # (torchrun's environment tells once the process group is left)
    if not any(sign in str(err) for sign in PEER_FAILURE_SIGNS):
        return peer_timeout(err)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # gloo's first line: "[<source file>:<line>] Read error ...: Connection reset by peer.
    # This is typically caused by ..."; its first sentence, without the source location
    said = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]).split(". ")[0] if lines else ""
    return f"another process of this torchrun job failed ({said or type(err).__name__})"


def peer_timeout(err: RuntimeError) -> str | None:
    """One line for gloo's collective timeout (:func:`collective_timeout_s`), naming the rank
    waited for where there is one other, and the key that sets how long. Why: a process
    frozen (stopped, stuck in I/O) keeps its connections open, so it is never seen to
    fail; the others wait in a collective, where Python runs no signal handler, until
    this timeout (30 minutes by default), which was a trace. The same for the wait to
    join the process group (:data:`JOIN_TIMEOUT`), whose key names the rank waited for:
    a process that starts later than the timeout, or freezes before joining."""
    me = int(os.environ.get("RANK", "0"))
    joined = JOIN_TIMEOUT.search(str(err))
    if joined is not None:
        waited_s = int(joined.group(1)) / 1000
        return (f"rank {me} waited {waited_s:g} s for rank {joined.group(2)} to join the "
                f"job, which it had not (it started that much later, or froze); if it was "
                f"only late, {raise_timeout(waited_s)}, which bounds how far apart the "
                f"processes may start")
    waited_s = collective_timeout_s(str(err))
    if waited_s is None:
        return None
    others = [str(r) for r in range(launched_processes()) if r != me]
    waited_for = (f"rank {others[0]}" if len(others) == 1
                  else f"one of ranks {', '.join(others)} (gloo does not say which)")
    return (f"rank {me} waited {waited_s:g} s in a collective for {waited_for}, which neither "
            f"answered nor exited (frozen: stopped, or stuck in I/O); if it was only busy "
            f"that long, {raise_timeout(waited_s)}")


def collective_timeout_s(text: str) -> float | None:
    """How long a collective waited, in seconds, when ``text`` is gloo's timeout
    (:data:`COLLECTIVE_TIMEOUT`, or :data:`PAIR_CLOSED` at the group's timeout), else None
    (and for :data:`PAIR_CLOSED` where no group's timeout is known)."""
    found = COLLECTIVE_TIMEOUT.search(text)
    if found is not None:
        return int(found.group(1)) / 1000
    return group_timeout_s if PAIR_CLOSED in text else None


def raise_timeout(waited_s: float) -> str:
    """The fix a timeout's line names: the key that set how long it waited."""
    return f"set trainer.collective_timeout_s above {waited_s:g}"


def waited_for_frozen_rank_0(err: BaseException) -> bool:
    """Whether ``err``, or what it interrupted, is this process's timeout while it waited
    for rank 0: rank 0 is frozen (or late) then and will say nothing, so this process
    speaks for the run. A collective's timeout counts where rank 0 is the one other
    process of the job: gloo does not say which peer it waited for, and with more
    processes the waiting rank 0 speaks when another froze, while every other rank timed
    out alike. The wait to join counts for rank 1 alone, whose key names rank 0 (every
    rank waited for it)."""
    for raised in context_chain(err):
        if not isinstance(raised, RuntimeError):
            continue
        joined = JOIN_TIMEOUT.search(str(raised))
        if joined is not None:
            return joined.group(2) == "0" and os.environ.get("RANK") == "1"
        if collective_timeout_s(str(raised)) is not None:
            return launched_processes() == 2 and not first_process()
    return False


def peer_failure_in(err: BaseException) -> str | None:
    """:func:`peer_failure` of ``err`` or of the exception it was raised while handling,
    and so on: a stop that interrupted a collective's failure (torchrun's SIGTERM after
    another rank died) carries that failure as its context. A Ctrl-C (SIGINT) does not
    count one: torchrun stops its processes with SIGTERM after a failure, and passes the
    user's SIGINT on to every process, so the peer that left while this one waited in a
    collective left for the same Ctrl-C (it was said as "another process ... failed")."""
    if isinstance(err, KeyboardInterrupt) and getattr(err, "signum", None) in (None, signal.SIGINT):
        return None
    return next(filter(None, map(peer_failure, context_chain(err))), None)


def launched_processes() -> int:
    """How many processes torchrun started for this job (``WORLD_SIZE``; 1 without it),
    known before any joins the process group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def refuse_torchrun(what: str) -> None:
    """One line for a job that runs in one process, started under torchrun: else each
    process runs the whole of ``scripts/sensitivity.py`` on its own (printing its result
    twice), or waits on the first one's folder and fails the job after it has written its
    table."""
    if launched_processes() > 1:
        raise ConfigError(f"{what} runs in one process; start it with python, not torchrun "
                          f"(torchrun is for scripts/train.py)")


def setup(device: torch.device, timeout_s: float) -> torch.device:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1); returns
    the device this process trains on (``cuda:LOCAL_RANK`` on GPUs). Its collectives wait
    ``timeout_s`` for the other processes (``trainer.collective_timeout_s``)."""
    if launched_processes() <= 1 or is_distributed():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    global group_timeout_s
    group_timeout_s = timeout_s
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))
    return device


def teardown(together: bool = True) -> None:
    """Leave the process group: ``together`` after a run that ended well (a rank that tears
    gloo down while a peer is still writing its records can abort the peer), at once after
    one that failed, whose peers may wait in a collective this rank never joins (a barrier
    there hung both until the group's 30-minute timeout)."""
    if is_distributed():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def from_main(values: list[int], device: torch.device) -> list[int]:
    """Rank 0's ``values`` on every process (``values`` as given in a single process)."""
    if not is_distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.long, device=device)  # NCCL's on the GPU
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (no-op in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This process's contiguous slice of a global batch (its share may be empty)."""
    if not is_distributed():
        return batch
    size = -(-batch.shape[0] // world_size())
    return batch[rank() * size:(rank() + 1) * size]


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes, differentiable: each process's input affects every process's
    output, so its gradient is the sum of all processes' output gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, all-reduced
    over processes with autograd-aware collectives (gloo, CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        # statistics in float32 at least, as torch's own batch norm takes them: a bf16 or
        # fp16 input (autocast) summed in its own dtype loses digits, and its mean could
        # not update the float32 running buffers; the output keeps the input's dtype
        dtype, x = x.dtype, x.to(torch.promote_types(x.dtype, torch.float32))
        dims = (0, 2, 3)
        c = x.shape[1]
        n = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), n]))
        n = stats[-1]
        mean = stats[:c] / n
        # Two passes (mean, then squared deviations): E[x^2] - E[x]^2 loses digits in fp32.
        var = _AllReduceSum.apply((x - mean.view(1, c, 1, 1)).square().sum(dims)) / n
        if self.track_running_stats:  # (else it keeps none: no buffers, no count)
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else (
                    1.0 / float(self.num_batches_tracked))
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
        # Written out (not F.batch_norm), so gradients flow through the global mean and var.
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        out = (x - mean.view(1, c, 1, 1)) * scale.view(1, c, 1, 1)
        return (out + self.bias.view(1, c, 1, 1) if self.affine else out).to(dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Synchronize every BatchNorm2d across processes (torch's on CUDA, ours on CPU). The
    synchronized layer takes over the very parameters and buffers of the one it replaces,
    as torch's conversion does: an optimizer built before the conversion keeps updating
    them (a copy left the CPU runs' norm weights at their initial values)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats, device="meta")
            for key, tensor in [*child.named_parameters(recurse=False),
                                *child.named_buffers(recurse=False)]:
                setattr(sync, key, tensor)
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return model


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP-wrap ``model`` (with synchronized batch norm) when running distributed."""
    if not is_distributed():
        return model
    model = convert_sync_batchnorm(model, device)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
