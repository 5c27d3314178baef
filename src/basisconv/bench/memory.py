"""Training memory of a model: what autograd keeps from the forward for the backward, and
on CUDA the peak the allocator reaches over a training step.

A basis layer trades parameters for activations: it keeps its ``m`` basis maps for the
combination's backward besides the input a dense conv keeps, so a basis model with a
quarter of the parameters can need *more* memory in training, where activations dominate
(CIFAR ResNet-18 in fp32: about 13 times its parameters' bytes at batch 128). The saved bytes
are counted through autograd's saved-tensor hooks (autocast's low-precision copies of the
weights among them), so they are the same on every device for the same graph and measured
on CPU too; the CUDA peak adds the gradients and the backward's transient buffers.
:func:`training_memory_mib` counts both for each model of the whole-model benchmark.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from ..timing import Runner

MIB = 2**20


def saved_for_backward(module: nn.Module, forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the storages autograd keeps from ``forward()`` (a training forward of
    ``module``) until the backward: each storage once (views of one tensor share it), the
    module's parameters and buffers not counted (they are held whatever the graph keeps).
    The forward's graph is freed before returning; nothing is backpropagated."""
    held = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
    kept: dict[tuple[torch.device, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in held and storage.nbytes():
            kept[tensor.device, storage.data_ptr()] = storage.nbytes()
        # Detached: the storage stays held (no address is freed and reused while the forward
        # runs), but a saved output no longer holds its own grad_fn, a cycle through C++ that
        # no garbage collection breaks when, as here, no backward runs (pytorch#189025).
        return tensor.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = forward()
    del out  # the graph, and what it kept, goes with the output
    return sum(kept.values())


def cuda_step_peak(module: nn.Module, step: Callable[[], None],
                   device: torch.device) -> int | None:
    """Bytes the CUDA caching allocator holds at most during ``step()`` (a training step of
    ``module``) beyond the module and its input: activations, gradients, workspaces.
    ``None`` off CUDA, where torch keeps no such count. A first step runs unmeasured: on
    first use of a shape cuDNN's algorithm search (and the fused kernel's autotuning) takes
    workspaces that later steps do not."""
    if device.type != "cuda":
        return None
    step()
    for p in module.parameters():
        p.grad = None  # a step's gradients are part of its peak, not of what was before
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def reset_cuda_peak(device: torch.device) -> None:
    """Start the CUDA allocator's peak count afresh (nothing off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mib(device: torch.device) -> float | None:
    """The most the CUDA allocator has held since :func:`reset_cuda_peak`, in MiB: all of
    it (model, optimizer state, data on the device, CUDA graph pools); ``None`` off CUDA."""
    return torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None


def training_memory_mib(models: dict, runner: Runner, x: torch.Tensor,
                        backward: Callable[[torch.Tensor], None]) -> dict:
    """Per model, in MiB: what its training forward keeps for the backward, and on CUDA the
    peak of a training step; both of the eager module (not compiled nor graphed: the
    memory of the layers as written), with the run's layout and autocast."""
    found = {}
    for key, model in models.items():
        def forward(model=model) -> torch.Tensor:
            with runner.autocast():
                return model(x)
        saved = saved_for_backward(model, forward)
        peak = cuda_step_peak(model, lambda: backward(forward()), runner.device)
        found[key] = (saved / MIB, math.nan if peak is None else peak / MIB)
    return found
