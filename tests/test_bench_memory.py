"""The training-memory counts of the whole-model benchmark (``basisconv.bench.memory``)
against bytes counted by hand."""

import gc
import warnings
import weakref

import pytest
import torch
from torch import nn

from basisconv.bench.memory import (MIB, cuda_peak_mib, cuda_step_peak, reset_cuda_peak,
                                    saved_for_backward, training_memory_mib)
from basisconv.layers import BasisConv2d
from basisconv.models import build_model
from basisconv.surgery import apply_basis

FLOAT = 4  # bytes


def test_a_dense_conv_keeps_its_input_and_not_its_weight():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 10, 10)
    assert saved_for_backward(conv, lambda: conv(x)) == x.numel() * FLOAT


def test_a_stacked_basis_layer_keeps_its_basis_maps_and_combination_too():
    """The input (for the basis filters' gradient), the m basis maps and the [I; C]
    matrix (for the 1x1 combination's two gradients): m/C_out of an output more than a
    dense conv."""
    layer = BasisConv2d(8, 16, 3, num_basis=4, padding=1, combine="stacked")
    x = torch.randn(2, 8, 10, 10)
    maps = 2 * 4 * 10 * 10
    assert saved_for_backward(layer, lambda: layer(x)) == (x.numel() + maps + 16 * 4) * FLOAT


def test_a_storage_kept_through_two_views_is_counted_once_and_whole():
    conv = nn.Conv2d(3, 5, 1, bias=False)
    x = torch.randn(1, 3, 4, 4)

    def forward():
        y = conv(x)
        return y[:, :2] * y[:, 3:]  # keeps both slices: views of y's storage

    assert saved_for_backward(conv, forward) == (x.numel() + 5 * 16) * FLOAT


def test_basis_resnet18_keeps_more_than_dense_for_the_backward_and_less_with_folded_norms():
    """What the benchmark's memory columns report, at batch 8: at 1/4 the basis model
    has 28 % of the parameters but keeps its basis maps beside every layer's output (more
    than dense); folding each norm and ReLU into the layer keeps only the basis maps and
    the block's output (less)."""
    torch.manual_seed(0)
    dense = build_model("resnet18")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the layers that stay dense, said
        basis, folded = (apply_basis(dense, "all", 0.25, convert=False, only_where_saves=True,
                                     fuse_norm=fuse) for fuse in (False, True))
    x = torch.randn(8, 3, 32, 32)  # (at 2 images the matrices kept weigh as much as maps)
    kept = {name: saved_for_backward(model, lambda model=model: model(x))
            for name, model in (("dense", dense), ("basis", basis), ("folded", folded))}
    assert kept["basis"] > kept["dense"]
    assert kept["folded"] < 0.8 * kept["dense"]


@pytest.mark.device
def test_the_peaks_are_counted_on_cuda_and_hold_what_the_backward_keeps(device):
    """On CUDA (``make gpu-check``) a training step's peak holds at least what its forward
    keeps for the backward, the same count there as on a CPU; off CUDA there is no peak."""
    layer = BasisConv2d(64, 64, 3, num_basis=16, padding=1).to(device)
    x = torch.randn(32, 64, 16, 16, device=device)
    kept = saved_for_backward(layer, lambda: layer(x))
    assert kept == (x.numel() + 32 * 16 * 16 * 16 + 64 * 16) * FLOAT

    def step():
        layer(x).square().mean().backward()

    reset_cuda_peak(device)
    peak = cuda_step_peak(layer, step, device)
    whole = cuda_peak_mib(device)
    if device.type != "cuda":
        assert peak is None and whole is None
        return
    # the whole count also holds what was there before the step: the layer and its input
    held = sum(p.numel() for p in layer.parameters()) * FLOAT + x.numel() * FLOAT
    assert peak >= kept and whole * MIB >= peak + held


def test_the_forward_graph_and_what_it_kept_are_freed_on_return():
    """A pack hook that keeps the very tensor it is given makes a saved output (``exp``
    saves its result) hold its own ``grad_fn``: a cycle through C++ that no garbage
    collection breaks, so every call leaked its whole graph (pytorch/pytorch#189025).
    The counted tensors must be kept only until the function returns."""
    conv = nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 5, 5)
    outputs = []

    def forward():
        out = conv(x).exp()  # exp keeps its output for the backward
        outputs.append(weakref.ref(out))
        return out

    assert saved_for_backward(conv, forward) == (x.numel() + 2 * 4 * 5 * 5) * FLOAT
    gc.collect()
    assert outputs[0]() is None


def test_the_benchmarks_memory_of_a_bf16_run_is_that_of_its_autocast_forward():
    """``benchmark_layers.py --amp bf16`` counts what its training forward keeps under
    autocast: a conv keeps bf16 copies of its input and weight (2 bytes an element, the
    weight's copy not a parameter), not the float32 input a forward without autocast keeps."""
    from basisconv.timing import Runner

    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    x = torch.randn(2, 8, 10, 10)
    runner = Runner("cpu", amp="bf16", channels_last=False)
    memory = training_memory_mib({"dense": conv}, runner, x,
                                 lambda out: out.float().sum().backward())
    saved, peak = memory["dense"]
    assert saved * MIB == (x.numel() + conv.weight.numel()) * 2
    assert peak != peak  # NaN: no CUDA peak on a CPU
