"""The folded norm's Triton kernels (``fuse_norm=True`` with ``combine="fused"``) against
what they replace (the batch moments in standard ops, the 1x1 conv and ReLU), and a layer
using them against the plain PyTorch fold.

On CPU the kernels run through Triton's interpreter (conftest's ``triton_backend``), with
``--device cuda`` compiled. Every layer-level comparison also checks that the kernels
ran (``kernel_runs``): a silent fallback to the PyTorch fold would match too.
"""

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

pytest.importorskip("triton")

from basisconv.kernels import (torch_ops, triton_combine, triton_fold,  # noqa: E402
                               triton_fold_wide, triton_moments)
from basisconv.conv_norm import conv_norm_act  # noqa: E402
from basisconv.layers import BasisConv2d  # noqa: E402

pytestmark = pytest.mark.usefixtures("triton_backend")

# (N, m, C_out, H, W, layout)
SHAPES = [
    (2, 5, 21, 5, 7, "nchw"),          # nothing a power of two, several output blocks
    (2, 16, 40, 3, 3, "channels_last"),  # a full basis tile
    (1, 1, 3, 4, 1, "nchw"),           # m = 1, one column of pixels
    (2, 1, 6, 3, 4, "channels_last"),  # m = 1 in channels_last: contiguous in both layouts
    (3, 33, 70, 2, 5, "channels_last"),  # the basis tile padded from 33 to 64
    (2, 4, 9, 3, 4, "sliced"),         # H and W that do not merge into one pixel stride
    (2, 4, 9, 3, 5, "transposed"),     # the same, dense (its gradient was left unwritten)
    (2, 4, 9, 3, 5, "channel-slice"),  # channels of a channels_last tensor: still that layout
    (0, 3, 6, 2, 2, "nchw"),           # an empty batch
]


def maps_of(n, m, h, w, layout, device):
    if layout == "sliced":  # a view whose rows are not one stride apart: copied first
        return torch.randn(n, m, h, w + 3, device=device)[..., :w]
    if layout == "transposed":  # dense, but H and W do not merge either
        return torch.randn(n, m, w, h, device=device).transpose(2, 3)
    if layout == "channel-slice":  # contiguous in neither layout, strided as channels_last
        return torch.randn(n, m + 2, h, w, device=device).to(
            memory_format=torch.channels_last)[:, 1:m + 1]
    maps = torch.randn(n, m, h, w, device=device)
    return maps.to(memory_format=torch.channels_last) if layout == "channels_last" else maps


@pytest.fixture
def kernel_runs(monkeypatch):
    """The kernels' launches, by name."""
    runs = []
    for module, name, said in KERNELS:
        launch = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, _launch=launch, _said=said, **k:
                            runs.append(_said) or _launch(*a, **k))
    return runs


@pytest.fixture(params=["one-program", "tiled"])
def fold_form(request, monkeypatch):
    """The fold's kernels as they run (one program up to ``ONE_PROGRAM_WIDTH``, tiled
    above), or tiled at every width (:mod:`triton_fold_wide`: its chunk loops and
    several programs on the tests' small bases too)."""
    if request.param == "tiled":
        monkeypatch.setattr(triton_fold, "ONE_PROGRAM_WIDTH", 0)
    return request.param


# (module, launcher, the name kernel_runs gives it)
KERNELS = [(triton_combine, "combine", "combine"),
           (triton_combine, "combine_backward", "combine_backward"),
           (triton_moments, "moment_sums", "moments"), (triton_fold, "fold", "fold"),
           (triton_fold, "fold_backward", "fold_backward"),
           (triton_moments, "add_moments_grad", "moments_backward")]
#: A training step's launches, forward and backward (the fold's launcher starts with the
#: moments' kernel).
TRAINING_STEP = ["fold", "moments", "combine", "combine_backward", "fold_backward",
                 "moments_backward"]


@pytest.mark.device
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_the_kernels_match_the_1x1_conv_and_relu_forward_and_backward(shape, relu, device,
                                                                    kernel_runs):
    n, m, c_out, h, w, layout = shape
    torch.manual_seed(0)
    maps = maps_of(n, m, h, w, layout, device).requires_grad_()
    matrix = torch.randn(c_out, m, device=device, requires_grad=True)
    bias = torch.randn(c_out, device=device, requires_grad=True)
    want = F.conv2d(maps, matrix[:, :, None, None], bias)
    want = want.relu() if relu else want
    got = triton_combine.folded_combine(maps, matrix, bias, relu)
    assert kernel_runs == ["combine"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if layout not in ("sliced", "transposed") and n:  # the layout the 1x1 conv gives
        assert got.stride() == want.stride()
    upstream = torch.randn_like(want)
    for name, a, b in zip(["maps", "matrix", "bias"],
                          torch.autograd.grad(got, (maps, matrix, bias), upstream),
                          torch.autograd.grad(want, (maps, matrix, bias), upstream)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda s: f"{name}: {s}")
    assert kernel_runs == ["combine", "combine_backward"]


def norm_layers(combine: str, device, relu_net: bool = True):
    """A converted basis layer (permuted output order, conv bias) and its batch norm, both
    with ``fuse_norm`` and the given ``combine``."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 20, 3, padding=1, bias=True, device=device)
    layer = BasisConv2d.from_conv(conv, 7, combine="stacked", fuse_norm=True)
    layer.combine = combine
    norm = nn.BatchNorm2d(20, device=device)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return layer, norm


def step(layer, norm, x, upstream, relu):
    x = x.detach().clone().requires_grad_()
    out = conv_norm_act(layer, norm, x, relu=relu)
    out.backward(upstream)
    return out.detach(), [x.grad] + [p.grad for p in (*layer.parameters(), *norm.parameters())]


@pytest.mark.device
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "channels_last"])
def test_a_fused_fold_trains_as_the_pytorch_fold(layout, relu, device, kernel_runs, fold_form):
    """Two training steps (batch statistics, running averages) and one with the running
    statistics (eval mode, still trained: the op's own autograd), outputs, every gradient
    and the norm's buffers as the PyTorch fold gives them."""
    plain = norm_layers("stacked", device)
    fused = tuple(copy.deepcopy(module) for module in plain)
    fused[0].combine = "fused"
    torch.manual_seed(1)
    for training in (True, True, False):
        for module in (*plain, *fused):
            module.train(training)
        x = (torch.randn(3, 6, 7, 8, device=device) + 0.5).to(memory_format=layout)
        upstream = torch.randn(3, 20, 7, 8, device=device)
        want, want_grads = step(*plain, x, upstream, relu)
        got, got_grads = step(*fused, x, upstream, relu)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert got.stride() == want.stride()
        for i, (a, b) in enumerate(zip(got_grads, want_grads)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda s: f"grad {i}: {s}")
        for module in (*plain, *fused):
            module.zero_grad(set_to_none=True)
    for name, buffer in plain[1].named_buffers():
        torch.testing.assert_close(dict(fused[1].named_buffers())[name], buffer)
    assert kernel_runs == TRAINING_STEP * 2 + [
        "combine", "combine_backward"]  # (eval mode: the running statistics, no moments)


def test_without_the_kernels_the_fold_runs_in_standard_ops_and_says_so_once(monkeypatch):
    """On a CPU tensor without the interpreter: the PyTorch fold's result and gradients."""
    monkeypatch.delenv("TRITON_INTERPRET")
    for module, name, _ in KERNELS:
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("kernel ran"))
    from basisconv.kernels import fused as fused_module
    monkeypatch.setattr(fused_module, "_WARNED", set())
    plain, fused = norm_layers("stacked", "cpu"), norm_layers("fused", "cpu")
    x = torch.randn(2, 6, 5, 5)
    upstream = torch.randn(2, 20, 5, 5)
    with pytest.warns(UserWarning, match="combine='fused' with fuse_norm=True needs a CUDA "
                                         "tensor.*standard ops instead") as said:
        got, got_grads = step(*fused, x, upstream, relu=True)
    assert len(said) == 1  # one line for the three kernels
    want, want_grads = step(*plain, x, upstream, relu=True)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        step(*fused, x, upstream, relu=True)


@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "running-stats"])
def test_a_gradient_of_a_gradient_is_the_pytorch_folds(training, kernel_runs):
    """``create_graph=True`` (a gradient penalty): the kernels' backward has no gradient of
    its own, so a differentiated backward runs standard ops (in eval mode it raised
    "no autograd formula" for the backward op)."""
    grads = {}
    for combine in ("stacked", "fused"):
        layer, norm = norm_layers(combine, "cpu")
        layer.train(training)
        norm.train(training)
        x = torch.randn(2, 6, 4, 5, requires_grad=True)
        out = conv_norm_act(layer, norm, x, relu=False)
        (grad_x,) = torch.autograd.grad((out ** 2).sum(), x, create_graph=True)
        grad_x.pow(2).sum().backward()
        grads[combine] = [p.grad for p in layer.parameters()]
    assert "combine" in kernel_runs
    for a, b in zip(grads["fused"], grads["stacked"]):  # (float32: penalties magnify rounding)
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item())


def test_a_float64_layer_keeps_float64_where_the_kernels_cannot_run(kernel_runs):
    """The standard-op fallback of each op keeps float64 sums (they were rounded to
    float32, so a float64 layer's output was off by 1e-8 and gradcheck failed)."""
    torch.manual_seed(0)
    pair = [tuple(module.double() for module in norm_layers(combine, "cpu"))
            for combine in ("stacked", "fused")]
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    upstream = torch.randn(2, 20, 4, 5, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's notice (float64)
        for training in (True, False):
            results = []
            for layer, norm in pair:
                layer.train(training)
                norm.train(training)
                results.append(step(layer, norm, x, upstream, relu=True))
                layer.zero_grad(set_to_none=True)
                norm.zero_grad(set_to_none=True)
            (want, want_grads), (got, got_grads) = results
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            for a, b in zip(got_grads, want_grads):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        maps = torch.randn(2, 5, 3, 3, dtype=torch.float64)
        assert {t.dtype for t in triton_moments.fused_basis_moments(maps)} == {torch.float64}
    assert kernel_runs == []


def test_deterministic_mode_uses_one_tile_not_the_autotuners_choice(monkeypatch):
    """The tile sets the order in which a product's blocks are added: timing-chosen tiles
    could make one run differ from the next in its last bits."""
    from basisconv.kernels import triton_conv

    monkeypatch.setattr(triton_conv, "_KERNELS", {})
    monkeypatch.setattr(triton_conv, "interpreting", lambda: False)  # (a GPU's path)
    asked = []

    def configs(interpret, tune):
        asked.append(tune)
        return triton_combine._tile_configs(interpret, tune)

    was = torch.are_deterministic_algorithms_enabled()
    try:
        for deterministic in (False, True):
            torch.use_deterministic_algorithms(deterministic)
            triton_conv.autotuned_on_first_use(triton_combine._combine_kernel, configs, ["M"])
    finally:
        torch.use_deterministic_algorithms(was)
    assert asked == [True, False]


def test_the_flop_counter_counts_the_kernels_as_the_1x1_conv_they_replace(kernel_runs):
    layers = {combine: norm_layers(combine, "cpu") for combine in ("stacked", "fused")}
    counts = {}
    for combine, (layer, norm) in layers.items():
        x = torch.randn(2, 6, 5, 5)
        with FlopCounterMode(display=False) as counter:
            conv_norm_act(layer, norm, x, relu=True).sum().backward()
        counts[combine] = counter.get_total_flops()
    assert kernel_runs == TRAINING_STEP
    assert counts["fused"] == counts["stacked"] > 0


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced", "transposed"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["kernel", "fallback"])
def test_the_ops_pass_torch_library_opcheck(dtype, relu, layout):
    """PyTorch's own check of the two custom ops: schema, shape-only twins against the real
    outputs' shapes, strides and dtypes (the layouts included), the forward op's autograd
    and its gradients through AOTAutograd, for the kernels and for the standard-op
    fallback (float64: the interpreter takes float32 only)."""
    torch.manual_seed(0)
    maps = maps_of(2, 5, 3, 4, layout, "cpu").to(dtype).requires_grad_()
    matrix = torch.randn(9, 5, dtype=dtype, requires_grad=True)
    bias = torch.randn(9, dtype=dtype, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's notice
        torch.library.opcheck(triton_combine.folded_combine, (maps, matrix, bias, relu))
        out = triton_combine.folded_combine(maps, matrix, bias, relu).detach()
        torch.library.opcheck(triton_combine.folded_combine_backward,
                              (torch.randn_like(out), out if relu else None, maps.detach(),
                               matrix.detach(), relu))


def test_torch_compile_keeps_the_kernels_in_one_graph(kernel_runs):
    """The kernels are custom ops with shape-only twins: no graph break (Dynamo traces the
    fold's hand-written backward too), and the compiled step runs them."""
    layer, norm = norm_layers("fused", "cpu")

    def forward(x):
        return conv_norm_act(layer, norm, x, relu=True)

    x = torch.randn(2, 6, 5, 5)
    explained = torch._dynamo.explain(forward)(x)
    torch._dynamo.reset()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
        [b.reason for b in explained.break_reasons]
    compiled = torch.compile(forward, backend="aot_eager")
    try:
        want = forward(x)
        kernel_runs.clear()
        torch.testing.assert_close(compiled(x), want, rtol=1e-5, atol=1e-5)
        assert "combine" in kernel_runs
    finally:
        torch._dynamo.reset()


@pytest.mark.device
def test_bf16_autocast_is_close_to_float32(device, kernel_runs):
    """A training step under bf16 autocast runs every kernel of the fold (found in review:
    the test expected the combination's alone, as before the moments and the fold had
    kernels, and had never run on a GPU since). Under the interpreter, which has no
    bfloat16, the same step in float32."""
    bf16 = device.type == "cuda"
    plain, fused = norm_layers("stacked", device), norm_layers("fused", device)
    x = torch.randn(8, 6, 16, 16, device=device).to(memory_format=torch.channels_last)
    want = conv_norm_act(*plain, x, relu=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        got = conv_norm_act(*fused, x, relu=True)
    assert got.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert kernel_runs == TRAINING_STEP[:3]  # the forward's: fold, moments, combination
    tolerance = 5e-2 if bf16 else 1e-4
    torch.testing.assert_close(got.float(), want, rtol=tolerance,
                               atol=tolerance * want.abs().max().item())
    got.float().sum().backward()
    assert kernel_runs == TRAINING_STEP
    assert fused[0].coefficients.grad.dtype == torch.float32
    assert all(p.grad.isfinite().all() for p in (*fused[0].parameters(), *fused[1].parameters()))


@pytest.mark.device
@pytest.mark.parametrize("shape", [
    (3, 5, 7, 6, "nchw", 0.0),            # one program, several row blocks
    (2, 16, 9, 9, "channels_last", 0.0),  # several programs of several blocks, the last short
    (4, 33, 5, 5, "channels_last", 100.0),  # the sum padded from 33 to 64; a large mean
    (2, 64, 3, 3, "sliced", 1000.0),      # the widest one-tile basis on a GPU; pixels
                                          # that do not merge
    (1, 3, 1, 1, "nchw", 3.0),            # one pixel
    (3, 100, 4, 5, "channels_last", 10.0),  # tiles, the last ones short
    (2, 256, 2, 3, "nchw", 0.0),          # the widest basis
], ids=lambda s: "-".join(map(str, s)))
def test_the_moments_kernel_gives_the_batch_statistics(shape, device, kernel_runs):
    """Mean and covariance over batch and pixels as float64 computes them from the same
    float32 maps, to float32 precision even where the mean is a thousand standard
    deviations (the shifted sums do not cancel)."""
    n, m, h, w, layout, offset = shape
    torch.manual_seed(0)
    spread = torch.rand(m, device=device) * 3 + 0.1
    centre = offset * torch.randn(m, device=device)
    maps = maps_of(n, m, h, w, layout, device) * spread[:, None, None] + centre[:, None, None]
    mean, cov = triton_moments.fused_basis_moments(maps)
    assert kernel_runs == ["moments"] and mean.dtype == cov.dtype == torch.float32
    rows = maps.double().permute(0, 2, 3, 1).reshape(-1, m)
    want_mean = rows.mean(0)
    want_cov = (rows - want_mean).T @ (rows - want_mean) / rows.shape[0]
    torch.testing.assert_close(mean.double(), want_mean, rtol=1e-6, atol=1e-5 * spread.max().item())
    torch.testing.assert_close(cov.double(), want_cov, rtol=0, atol=1e-5 * spread.max().item() ** 2)


@pytest.mark.device
def test_moments_far_from_zero_keep_float32_precision(device, kernel_runs):
    """A mean ten thousand standard deviations from zero: the programs' means are merged
    as offsets from one shift, so their spread is not rounded away (merged as absolute
    float32 means, the covariance was off by 2.7e-5 of itself)."""
    torch.manual_seed(0)
    maps = (1e3 + 0.1 * torch.randn(4, 8, 8, 8, device=device)).to(memory_format=torch.channels_last)
    mean, cov = triton_moments.fused_basis_moments(maps)
    assert kernel_runs == ["moments"]
    rows = maps.double().permute(0, 2, 3, 1).reshape(-1, 8)
    want = (rows - rows.mean(0)).T @ (rows - rows.mean(0)) / rows.shape[0]
    torch.testing.assert_close(mean.double(), rows.mean(0), rtol=0, atol=2e-4)
    torch.testing.assert_close(cov.double(), want, rtol=0, atol=2e-6 * want.abs().max().item())


def test_a_basis_wider_than_the_moments_kernel_takes_keeps_the_standard_ops(kernel_runs):
    """Above ``MAX_WIDTH`` (few pixels there; cuBLAS's Gram product), silently."""
    maps = torch.randn(2, triton_moments.MAX_WIDTH + 1, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, cov = triton_moments.fused_basis_moments(maps)
    assert kernel_runs == []
    want = triton_moments.basis_moments(maps)
    torch.testing.assert_close(mean, want[0])
    torch.testing.assert_close(cov, want[1])


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["kernel", "fallback"])
def test_the_moments_op_passes_torch_library_opcheck(dtype, layout):
    maps = maps_of(2, 5, 3, 4, layout, "cpu").to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's notice
        torch.library.opcheck(triton_moments.fused_basis_moments, (maps,))


@pytest.mark.device
@pytest.mark.parametrize("shape", [
    (2, 5, 3, 4, "nchw"),              # one block of the maps' channels, several of rows
    (3, 1, 4, 1, "channels_last"),     # m = 1: a block padded from 1 to 16
    (2, 70, 3, 3, "channels_last"),    # two blocks of channels, two of the product's sum
    (1, 130, 2, 3, "nchw"),            # three of each, the last short
    (2, 4, 3, 4, "sliced"),            # pixels that do not merge: copied, the layout kept
    (2, 4, 3, 5, "transposed"),        # the same, dense (the result written back)
    (0, 3, 2, 2, "nchw"),              # an empty batch
], ids=lambda s: "-".join(map(str, s)))
def test_the_moments_backward_kernel_adds_the_1x1_conv_of_the_maps(shape, device, kernel_runs):
    """``grad + conv1x1(maps, sym) + shift`` as float64 computes it, for a ``sym`` that is
    not symmetric (read as the conv reads its weight, not transposed), in the gradient's
    layout."""
    n, m, h, w, layout = shape
    torch.manual_seed(0)
    maps, grad = (maps_of(n, m, h, w, layout, device) for _ in range(2))
    sym, shift = torch.randn(m, m, device=device), torch.randn(m, device=device)
    got = triton_moments.moments_backward(grad, maps, sym, shift)
    assert kernel_runs == ["moments_backward"]
    want = torch_ops.moments_backward(*as_float64((grad, maps, sym, shift)))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * m ** 0.5)
    assert got.dtype == grad.dtype and got.stride() == torch.empty_like(grad).stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["kernel", "fallback"])
@pytest.mark.parametrize("wrong", ["grad batch", "grad dtype", "sym", "shift"])
def test_the_moments_backward_op_refuses_inputs_that_disagree(wrong, dtype):
    """Found in review: the kernel takes its sizes from the maps, so a gradient of another
    batch was written out of bounds (a heap corruption) and a wider ``sym`` read in part;
    the standard ops broadcast or promoted. One error, either way."""
    maps = torch.randn(2, 4, 3, 4, dtype=dtype)
    args = {"grad batch": torch.randn(1, 4, 3, 4, dtype=dtype),
            "grad dtype": torch.randn(2, 4, 3, 4, dtype=torch.float16),
            "sym": torch.randn(5, 5, dtype=dtype), "shift": torch.randn(5, dtype=dtype)}
    grad = args[wrong] if wrong.startswith("grad") else torch.randn_like(maps)
    sym = args["sym"] if wrong == "sym" else torch.randn(4, 4, dtype=dtype)
    shift = args["shift"] if wrong == "shift" else torch.randn(4, dtype=dtype)
    with pytest.raises(ValueError, match="moments_backward needs grad_maps of the maps"):
        triton_moments.moments_backward(grad, maps, sym, shift)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["kernel", "fallback"])
@pytest.mark.parametrize("wrong", ["matrix wider", "matrix narrower", "bias", "grad", "out"])
def test_the_combination_ops_refuse_inputs_that_disagree(wrong, dtype):
    """Found in review: the kernels take ``m`` from the maps and ``C_out`` from the matrix,
    so a narrower matrix was read past its rows, a shorter bias or output gradient past
    its end, and a wider matrix in part, while the standard ops (the fallback) refused
    each. One error, either way."""
    maps = torch.randn(2, 3, 4, 4, dtype=dtype)
    matrix = {"matrix wider": torch.randn(5, 4), "matrix narrower": torch.randn(5, 2)}.get(
        wrong, torch.randn(5, 3)).to(dtype)
    bias = torch.randn(4 if wrong == "bias" else 5, dtype=dtype)
    grad = torch.randn(2, 4 if wrong == "grad" else 5, 4, 4, dtype=dtype)
    out = torch.randn(2, 6 if wrong == "out" else 5, 4, 4, dtype=dtype)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="folded_combine needs"):
        warnings.simplefilter("ignore")  # the fallback's notice
        if wrong in ("grad", "out"):
            triton_combine.folded_combine_backward(grad, out, maps, matrix, True)
        else:
            triton_combine.folded_combine(maps, matrix, bias, True)
            triton_combine.folded_combine_backward(grad, out, maps, matrix, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["kernel", "fallback"])
@pytest.mark.parametrize("wrong", ["coefficients", "output index", "conv bias", "norm weight",
                                   "norm bias", "running var"])
def test_the_fold_op_refuses_inputs_that_disagree(wrong, dtype):
    """Found in review: the fold's kernel takes ``m`` from the maps and ``C_out`` from the
    output index, so coefficients of another width, a shorter index, or a bias, weight or
    running average of another length were read (a running average written) out of bounds
    or in part, while the standard ops refused each. One error, either way."""
    maps = torch.randn(2, 3, 4, 4, dtype=dtype)
    coefficients = torch.randn((2, 2) if wrong == "coefficients" else (2, 3))
    index = torch.arange(4 if wrong == "output index" else 5)
    channel = {name: torch.randn(4 if wrong == name else 5) for name in (
        "conv bias", "norm weight", "norm bias")}
    running = (torch.zeros(5), torch.ones(4 if wrong == "running var" else 5))
    with warnings.catch_warnings(), pytest.raises(ValueError, match="folded_norm needs"):
        warnings.simplefilter("ignore")  # the fallback's notice
        triton_fold.folded_norm(maps, coefficients.to(dtype), index, *channel.values(), 1e-5,
                                *running, 0.1)


def test_a_fallbacks_result_takes_the_dtype_the_op_promises():
    """Found in review: ``strided_as`` kept a result whose strides matched but whose dtype
    did not (the standard ops promote), so an op's result and its shape-only twin
    disagreed."""
    got = triton_combine.strided_as(torch.ones(2, 3, dtype=torch.float64), torch.empty(2, 3))
    assert got.dtype == torch.float32 and got.stride() == (3, 1)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["kernel", "fallback"])
def test_the_moments_backward_op_passes_torch_library_opcheck(dtype, layout):
    torch.manual_seed(0)
    maps, grad = (maps_of(2, 5, 3, 4, layout, "cpu").to(dtype) for _ in range(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's notice
        torch.library.opcheck(triton_moments.moments_backward,
                              (grad, maps, torch.randn(5, 5, dtype=dtype),
                               torch.randn(5, dtype=dtype)))


@pytest.mark.parametrize("width", [16, 256])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_the_kernels_compile_to_hopper_machine_code_without_spilling(backward, width,
                                                                      monkeypatch):
    """Triton's real compiler, to sm_90 (no GPU needed; the interpreter accepts what a
    compiler may refuse): the tile used without autotuning, in bf16, at the narrowest and
    widest basis, fits a block's shared memory and keeps its accumulators in registers."""
    monkeypatch.delenv("TRITON_INTERPRET")
    from basisconv.bench.kernel_resources import compile_combination, resources

    row = resources(compile_combination(backward, width, "bf16"))
    assert row["fits"] and 0 < row["registers"] <= 255 and row["spill_store_bytes"] == 0, row


def test_a_resnet_with_the_kernels_computes_what_the_pytorch_fold_does(kernel_runs, fold_form):
    """A basis ResNet-8 with every norm folded, the combinations as kernels and as standard
    ops, from the same weights: the same loss and gradients of every parameter, and the
    same running statistics after the step (float32, so one step: batch norm's backward
    magnifies rounding over several)."""
    from basisconv.models import build_model
    from basisconv.surgery import apply_basis

    torch.manual_seed(0)
    dense = build_model("resnet8", width=0.5)
    models = []
    for combine in ("stacked", "fused"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 1x1 shortcuts save no compute; convert anyway
            model = apply_basis(dense, "all", 0.5, convert=False, fuse_norm=True,
                                combine=combine)
        models.append(model.to(memory_format=torch.channels_last))
    models[1].load_state_dict(models[0].state_dict())
    # 4 images: the last stage's moments still span 2 programs (8 took 18 s a case under
    # the interpreter, 4 take 7)
    x = torch.randn(4, 3, 16, 16).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,))
    losses = [F.cross_entropy(model(x), y) for model in models]
    for loss in losses:
        loss.backward()
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=1e-5)
    convs = sum(isinstance(m, BasisConv2d) for m in models[1].modules())
    assert all(kernel_runs.count(name) == convs for name in TRAINING_STEP)
    fused = dict(models[1].named_parameters())
    for name, param in models[0].named_parameters():
        scale = param.grad.abs().max().item()
        torch.testing.assert_close(fused[name].grad, param.grad, rtol=1e-3, atol=1e-4 * scale,
                                   msg=name)
    buffers = dict(models[1].named_buffers())
    for name, buffer in models[0].named_buffers():
        torch.testing.assert_close(buffers[name], buffer, msg=name)


@pytest.mark.parametrize("width", [16, 64, 256])
@pytest.mark.parametrize("dtype, precision", [("bf16", "tf32"), ("fp32", "tf32"),
                                              ("fp32", "ieee")])
def test_the_moments_backward_kernel_compiles_to_hopper_machine_code_without_spilling(
        dtype, precision, width, monkeypatch):
    """Every tile its autotuner tries, at the narrowest, a full and the widest basis, in
    each precision it runs in (exact float32 where TF32 is off: a tile of 128 rows on
    four warps spilled there, found in review)."""
    monkeypatch.delenv("TRITON_INTERPRET")
    from basisconv.bench.kernel_resources import compile_moments_backward, resources

    for tile in triton_moments._backward_configs(interpret=False, tune=True):
        row = resources(compile_moments_backward(width, dtype, tile, precision))
        assert row["fits"] and 0 < row["registers"] <= 255 and row["spill_store_bytes"] == 0, (
            tile, row)


@pytest.mark.parametrize("shift", [False, True], ids=["sums", "shift"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_the_moments_kernel_compiles_to_hopper_machine_code_without_spilling(dtype, shift,
                                                                             monkeypatch):
    """At its widest basis (Triton's default three stages spilled there), and its shift's."""
    monkeypatch.delenv("TRITON_INTERPRET")
    from basisconv.bench.kernel_resources import compile_moments, resources

    row = resources(compile_moments(triton_moments.MAX_WIDTH, dtype, shift))
    assert row["fits"] and 0 < row["registers"] <= 255 and row["spill_store_bytes"] == 0, row


# (C_out, m): several blocks of output channels and no power of two; one basis map; the
# basis tile padded from 33 to 64; the widest basis of the one-program kernels; full rank
# (no coefficients); wider bases (the tiled kernels, the last tiles short; the widest)
FOLD_SHAPES = [(20, 7), (3, 1), (70, 33), (90, triton_fold.ONE_PROGRAM_WIDTH), (6, 6),
               (150, 100), (260, triton_moments.MAX_WIDTH)]
#: Each shape with each form of the fold that runs other kernels on it: a basis wider than
#: ONE_PROGRAM_WIDTH runs the tiled kernels in either form, so its "one-program" case ran
#: the same kernels again (under the interpreter, 14 s a case for the widest).
FOLD_CASES = [(shape, form) for shape in FOLD_SHAPES for form in ("one-program", "tiled")
              if form == "tiled" or shape[1] <= triton_fold.ONE_PROGRAM_WIDTH]


#: The widest basis whose fold cases run every presence of the optional inputs under the
#: interpreter (the 20x7, 3x1 and 6x6 cases; the wider ones' other presences took about
#: 100 s of the test's 300 there: they run with every input present only).
PRESENCES_UNDER_THE_INTERPRETER = 7


def use_the_gpus_tiles(monkeypatch):
    """The GPU's tiles of the moments and the wide fold (up to 64 wide) under the
    interpreter, whose own are 32 wide (:func:`.triton_moments.tile_width`)."""
    def gpu_tile_width(m):
        return min(triton_moments.MAX_TILE, max(16, 1 << (m - 1).bit_length()))
    for module in (triton_moments, triton_fold_wide):
        monkeypatch.setattr(module, "tile_width", gpu_tile_width)


def fold_inputs(c_out, m, device, conv_bias=True, weight=True, bias=True):
    """Maps whose mean is far from zero, coefficients and a shuffled output order, and the
    norm's parameters."""
    torch.manual_seed(0)
    maps = (torch.randn(3, m, 5, 4, device=device) * (torch.rand(m, 1, 1, device=device) + 0.2)
            + 3 * torch.randn(m, 1, 1, device=device)).to(memory_format=torch.channels_last)
    coefficients = torch.randn(c_out - m, m, device=device)
    output_index = torch.randperm(c_out, device=device)
    optional = [torch.randn(c_out, device=device) if present else None
                for present in (conv_bias, weight, bias)]
    return maps, coefficients, output_index, *optional


def as_float64(tensors):
    return [t if t is None or not t.is_floating_point() else t.double() for t in tensors]


@pytest.mark.device
@pytest.mark.parametrize("present", [(True, True, True), (False, False, False),
                                     (False, True, False)], ids=["all", "none", "weight"])
@pytest.mark.parametrize("shape, fold_form", FOLD_CASES, indirect=["fold_form"],
                         ids=["x".join(map(str, s)) + f"-{form}" for s, form in FOLD_CASES])
def test_the_fold_kernels_compute_the_standard_fold_and_its_backward(shape, present, device,
                                                                     kernel_runs, fold_form,
                                                                     monkeypatch):
    """:mod:`triton_fold`'s kernels against the standard ops' fold in float64, forward
    (moments, folded matrix and bias, the outputs' statistics) and backward (the
    coefficients' gradient, with and without the moments' part), every optional input
    present or not, the combination built from shuffled rows. Under Triton's interpreter
    the bases wider than ``PRESENCES_UNDER_THE_INTERPRETER`` run with every input present
    only (each of the widest's cases took 20-30 s there): what is present is read and
    written per output channel (the ``HAS_*`` branches: in the one-program kernels' loop
    over blocks of channels, in the tiled kernels outside their loops over tiles), which
    the 20x7 cases run in both forms over two blocks (or programs), the last short."""
    if (device.type == "cpu" and shape[1] > PRESENCES_UNDER_THE_INTERPRETER
            and not all(present)):
        pytest.skip("a wide basis under the interpreter: every input present only")
    if device.type == "cpu" and shape[1] == triton_moments.MAX_WIDTH:
        # 4 tiles a side, not the interpreter's 8 (104 s there, a quarter of the inner
        # loops' steps): the tiled kernels' branches (several tiles, several rounds of the
        # covariance's tiles, the last tile short) are the 150x100 case's and 90x64's
        use_the_gpus_tiles(monkeypatch)
    inputs = fold_inputs(*shape, device, *present)
    maps, coefficients, output_index, conv_bias, weight, bias = inputs
    got = triton_fold.folded_norm(*inputs, 1e-5)
    as64 = as_float64(inputs)
    a64 = torch_ops.combination_rows(as64[1], output_index)
    want = torch_ops.norm_fold(as64[0], a64, *as64[3:], 1e-5)
    names = ["mean_b", "cov_b", "folded", "folded_bias", "mean", "var"]
    for name, g, w in zip(names, got, want):
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5 * w.abs().max().item(),
                                   msg=lambda s: f"{name}: {s}")
    torch.manual_seed(1)
    grad_folded, grad_folded_bias = torch.randn_like(a64).float(), torch.randn_like(a64[:, 0]).float()
    stats = [t.detach() for t in got]
    for moments_grad in (True, False):
        grads = triton_fold.folded_norm_backward(
            grad_folded, grad_folded_bias, coefficients, output_index, stats[0], stats[1],
            stats[4], stats[5], conv_bias, weight, 1e-5, maps, moments_grad)
        wants = torch_ops.coefficient_fold_backward(
            *as_float64([grad_folded, grad_folded_bias, coefficients]), output_index,
            *as_float64([stats[0], stats[1], stats[4], stats[5], conv_bias, weight]), 1e-5,
            maps.numel() // maps.shape[1], moments_grad)
        # (a's gradient is a difference of terms the size of scale * grad_folded, which
        # cancel exactly for m = 1: batch norm does not see the scale of one map)
        scale = torch_ops.normalizer(*as_float64([stats[4], stats[5]]), None, as64[4], 1e-5)[1]
        terms = (scale[:, None] * grad_folded.double()).abs().max().item()
        for name, g, w in zip(["coefficients", "conv_bias", "weight", "sym", "shift"], grads,
                              wants):
            assert (g is None) == (w is None), name
            if w is not None:
                assert g.shape == w.shape, name
                size = max(w.abs().max().item() if w.numel() else 0,
                           terms if name == "coefficients" else 0)
                torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5 * size,
                                           msg=lambda s: f"{name}: {s}")
    assert kernel_runs == ["fold", "moments", "fold_backward", "fold_backward"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["kernel", "fallback"])
def test_the_fold_ops_pass_torch_library_opcheck(dtype, fold_form):
    inputs = [t if t is None or not t.is_floating_point() else t.to(dtype)
              for t in fold_inputs(9, 5, "cpu", True, True, False)]
    maps, coefficients, output_index, conv_bias, weight, _ = inputs
    running = (torch.rand(9, dtype=dtype), torch.rand(9, dtype=dtype) + 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's notice
        stats = triton_fold.folded_norm(*inputs, 1e-5)
        torch.library.opcheck(triton_fold.folded_norm, (*inputs, 1e-5))
        torch.library.opcheck(triton_fold.folded_norm, (*inputs, 1e-5, *running, 0.1))
        for moments_grad in (True, False):
            torch.library.opcheck(triton_fold._folded_norm_backward, (
                torch.randn_like(stats[2]), torch.randn_like(stats[3]), coefficients,
                output_index, stats[0], stats[1], stats[4], stats[5], conv_bias, weight, 1e-5,
                maps, moments_grad))


@pytest.mark.device
def test_one_value_per_channel_leaves_the_running_variance_finite(device, kernel_runs,
                                                                  fold_form):
    """Found in review: the kernels took the unbiased variance as ``var * n / (n - 1)``, a
    division by zero for one pixel (an error under the interpreter, NaN on a GPU), where
    :func:`torch_ops.update_running` divides by at least 1. (The layer refuses one value
    per channel in training, as batch norm does; the op is its own entry point.)"""
    maps, coefficients, output_index, *optional = fold_inputs(80, 70, device)
    maps = maps[:1, :, :1, :1]
    running = [torch.rand(80, device=device), torch.rand(80, device=device) + 0.5]
    want = [t.clone() for t in running]
    stats = triton_fold.folded_norm(maps, coefficients, output_index, *optional, 1e-5,
                                    *running, 0.1)
    assert kernel_runs == ["fold", "moments"]
    torch_ops.update_running(*want, stats[4], stats[5], 1, 0.1)
    for got, expected in zip(running, want):
        torch.testing.assert_close(got, expected)


@pytest.mark.device
@pytest.mark.parametrize("momentum", [0.1, 0.7, 1.0])
def test_the_fold_kernel_moves_the_running_averages_as_batch_norm_does(momentum, device,
                                                                       kernel_runs, fold_form):
    """In place, towards the batch's mean and unbiased variance (the standard ops' rule,
    :func:`torch_ops.update_running`), as the layer asks for in training."""
    inputs = fold_inputs(70, 33, device)
    torch.manual_seed(2)
    running = [torch.rand(70, device=device), torch.rand(70, device=device) + 0.5]
    want = [t.clone() for t in running]
    stats = triton_fold.folded_norm(*inputs, 1e-5, *running, momentum)
    assert kernel_runs == ["fold", "moments"]
    maps = inputs[0]
    torch_ops.update_running(*want, stats[4], stats[5], maps.numel() // maps.shape[1], momentum)
    for got, expected in zip(running, want):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.device
def test_running_averages_that_are_strided_views_move_as_batch_norm_moves_them(device,
                                                                               kernel_runs):
    """The fold kernel writes the running averages as contiguous vectors; strided ones
    (every other entry of a buffer) are moved by the standard ops instead, and the entries
    between are left alone (mutation review: handing them to the kernel passed)."""
    inputs = fold_inputs(70, 33, device)
    torch.manual_seed(2)
    buffers = [torch.rand(140, device=device), torch.rand(140, device=device) + 0.5]
    want = [t.clone() for t in buffers]
    stats = triton_fold.folded_norm(*inputs, 1e-5, buffers[0][::2], buffers[1][::2], 0.1)
    maps = inputs[0]
    torch_ops.update_running(want[0][::2], want[1][::2], stats[4], stats[5],
                             maps.numel() // maps.shape[1], 0.1)
    for got, expected in zip(buffers, want):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_a_training_step_of_a_folded_layer_runs_few_operations(kernel_runs):
    """What the fold kernels are for: each operation is a kernel launch on a GPU, a few
    microseconds however small. A training step of one folded layer, forward and
    backward, counted at the dispatcher (views aside; a custom op counts once, though the
    moments' and the combination's backward add one or two reductions inside): about 70
    operations in standard ops, 8 with the kernels (60 before the fold's kernels, 9
    before the moments' backward was one op)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    counts = {}
    for combine in ("stacked", "fused"):
        layer, norm = norm_layers(combine, "cpu")
        x = torch.randn(2, 6, 5, 5)
        out = conv_norm_act(layer, norm, x, relu=True)
        upstream = torch.randn_like(out)
        out = None
        with Count() as counted:
            conv_norm_act(layer, norm, x, relu=True).backward(upstream)
        counts[combine] = counted.ops
    assert kernel_runs.count("fold") == 2 and "fold_backward" in kernel_runs
    assert len(counts["stacked"]) >= 50, counts["stacked"]
    assert len(counts["fused"]) <= 8, counts["fused"]


@pytest.mark.parametrize("backward, width", [(False, 16), (False, 64), (True, 16), (True, 32),
                                             (False, 128), (True, 128), ("moments", 128),
                                             (False, 256), (True, 256), ("moments", 256)],
                         ids=["forward-16", "forward-64", "backward-16", "backward-32",
                              "tiled-forward-128", "tiled-backward-128", "tiled-moments-128",
                              "tiled-forward-256", "tiled-backward-256", "tiled-moments-256"])
def test_the_fold_kernels_compile_to_hopper_machine_code_without_spilling(backward, width,
                                                                          monkeypatch):
    """At the widths where they do not spill (the one-program backward spills ~330 bytes
    at 64: its three ``m x m`` blocks; ``_configs`` says why that is left), and the tiled
    kernels of wider bases."""
    monkeypatch.delenv("TRITON_INTERPRET")
    from basisconv.bench.kernel_resources import compile_fold, resources

    row = resources(compile_fold(backward, width, "bf16"))
    assert row["fits"] and 0 < row["registers"] <= 255 and row["spill_store_bytes"] == 0, row



@pytest.mark.device
def test_an_outlying_first_pixel_costs_the_moments_no_precision(device, kernel_runs):
    """Found in review: the moments were shifted by the maps' first pixel, so one pixel a
    thousand standard deviations out put its distance squared into every row's sums and
    float32 cancelled the variance down to 4e-4 of itself (the standard ops: 3e-6). The
    shift is now the mean of rows spread over the batch."""
    torch.manual_seed(0)
    maps = torch.randn(1, 4, 64, 64, device=device)
    maps[0, :, 0, 0] = 1000.0
    coefficients, output_index = torch.randn(4, 4, device=device), torch.arange(8, device=device)
    got = triton_fold.folded_norm(maps, coefficients, output_index, None, None, None, 1e-5)
    moments = triton_moments.fused_basis_moments(maps)
    want = torch_ops.norm_fold(maps.double(), torch_ops.combination_rows(
        coefficients.double(), output_index), None, None, None, 1e-5)
    assert kernel_runs == ["fold", "moments", "moments"]
    for name, g, w in [("cov_b", got[1], want[1]), ("var", got[5], want[5]),
                       ("moments' cov", moments[1], want[1])]:
        error = ((g.double() - w).abs().max() / w.abs().max()).item()
        assert error < 1e-5, (name, error)


@pytest.mark.device
def test_a_zero_eps_keeps_the_folded_backward_finite(device, kernel_runs, fold_form):
    """Found in review: with ``eps=0`` the backward kernel's rows past ``C_out`` (21 here,
    a block of 16 or 32) read a variance of 0, and the infinite ``rstd`` there made every
    gradient of the maps NaN through ``0 * inf``."""
    grads = {}
    for combine in ("stacked", "fused"):
        torch.manual_seed(0)
        layer = BasisConv2d.from_conv(nn.Conv2d(4, 21, 3, padding=1, device=device), 5,
                                      combine=combine, fuse_norm=True)
        norm = nn.BatchNorm2d(21, eps=0.0, device=device)
        x = torch.randn(2, 4, 5, 6, device=device, requires_grad=True)
        conv_norm_act(layer, norm, x, relu=True).sum().backward()
        grads[combine] = [x.grad, layer.basis_weight.grad, layer.coefficients.grad]
    assert "fold_backward" in kernel_runs
    for got, want in zip(grads["fused"], grads["stacked"]):
        assert got.isfinite().all()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_the_fold_ops_take_strided_index_and_statistics(kernel_runs, fold_form):
    """Found in review: the kernels read the output index and (backward) the statistics
    without strides, so a strided view of the same values gave another folded matrix and
    coefficient rows never written."""
    maps, coefficients, output_index, *_ = fold_inputs(21, 5, "cpu", False, False, False)

    def strided(t):
        return torch.stack([t, torch.zeros_like(t)], -1)[..., 0]

    want = triton_fold.folded_norm(maps, coefficients, output_index, None, None, None, 1e-5)
    got = triton_fold.folded_norm(maps, coefficients, strided(output_index), None, None, None,
                                  1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    grads = torch.randn(21, 5), torch.randn(21)
    mean_b, cov_b, _, _, mean, var = want
    backward = [triton_fold._folded_norm_backward(
        *grads, coefficients, index, *stats, None, None, 1e-5, maps, True)
        for index, stats in ((output_index, (mean_b, cov_b, mean, var)),
                             (strided(output_index), [strided(t) for t in (mean_b, cov_b, mean, var)]))]
    for a, b in zip(*backward):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("frozen", ["basis", "all but the norm's bias"])
def test_the_cost_model_counts_the_kernels_backward_as_it_runs(frozen, kernel_runs):
    """Found in review: the combination's backward kernel computed the maps' gradient even
    where nothing needs it (the stem: images without gradient, its basis frozen), 16,384
    FLOPs a step more than ``model_cost`` counts; it now computes what is asked."""
    from basisconv.cost import measure_flops, model_cost
    from basisconv.models import build_model
    from basisconv.surgery import apply_basis

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1x1 shortcuts save no compute; convert anyway
        model = apply_basis(build_model("resnet8", width=0.5), "all", 0.5, convert=False,
                            fuse_norm=True, combine="fused")
    for module in model.modules():
        if isinstance(module, BasisConv2d):
            module.requires_grad_(frozen != "basis")
            module.basis_weight.requires_grad_(False)
        elif isinstance(module, nn.BatchNorm2d) and frozen != "basis":
            module.weight.requires_grad_(False)
    counted = measure_flops(model, (2, 3, 8, 8))
    cost = model_cost(model, (2, 3, 8, 8))
    assert "combine_backward" in kernel_runs
    assert (cost.forward_flops, cost.backward_flops) == (counted["forward_flops"],
                                                         counted["backward_flops"])


def test_the_cost_model_counts_the_kernels_matrix_gradient_on_running_statistics(kernel_runs):
    """Found in review: on running statistics (eval mode) the combination's backward
    kernel computes the folded matrix's gradient whenever it runs, which the cost model
    counted only where the coefficients or the norm's weight train (here only the norm's
    bias does: a 1x1 conv's weight gradient short)."""
    from basisconv.cost import measure_flops, model_cost

    torch.manual_seed(0)
    conv = BasisConv2d(3, 8, 3, 4, padding=1, combine="fused", fuse_norm=True)
    conv.requires_grad_(False)
    norm = nn.BatchNorm2d(8)
    norm.weight.requires_grad_(False)

    class ConvNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = conv, norm

        def forward(self, x):
            return conv_norm_act(self.conv, self.norm, x, relu=True)

    model = ConvNorm().eval()
    counted = measure_flops(model, (2, 3, 8, 8))
    cost = model_cost(model, (2, 3, 8, 8))
    assert "combine_backward" in kernel_runs
    assert (cost.forward_flops, cost.backward_flops) == (counted["forward_flops"],
                                                         counted["backward_flops"])


@pytest.mark.device
@pytest.mark.parametrize("momentum, track", [(None, True), (0.5, True), (0.1, False)],
                         ids=["cumulative", "momentum-0.5", "untracked"])
def test_the_kernels_running_averages_are_batch_norms(momentum, track, device, kernel_runs,
                                                     fold_form):
    """Three training steps of a folded layer through the kernels (which move the running
    averages in place) against the dense conv, ``nn.BatchNorm2d`` and ReLU: outputs and
    every buffer, with a cumulative average, another momentum, and no tracking."""
    torch.manual_seed(0)
    layer = BasisConv2d.from_conv(nn.Conv2d(5, 24, 3, padding=1, device=device), 7,
                                  combine="fused", fuse_norm=True)
    norm = nn.BatchNorm2d(24, momentum=momentum, track_running_stats=track, device=device)
    dense, dense_norm = layer.to_conv(), copy.deepcopy(norm)
    for _ in range(3):
        x = torch.randn(3, 5, 6, 7, device=device) + 0.3
        torch.testing.assert_close(conv_norm_act(layer, norm, x, relu=True),
                                   F.relu(dense_norm(dense(x))), rtol=1e-4, atol=1e-4)
    assert kernel_runs.count("fold") == 3
    for (name, got), want in zip(norm.named_buffers(), dense_norm.buffers()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("combine", ["stacked", "fused"])
def test_a_cumulative_average_without_a_batch_counter_leaves_the_buffers(combine, kernel_runs):
    """Found in review: ``momentum=None`` with ``num_batches_tracked`` set to None (a state
    dict saved without it) crashed the fold; batch norm averages by 0 there: the running
    statistics stay, the output is the batch's."""
    torch.manual_seed(0)
    layer = BasisConv2d.from_conv(nn.Conv2d(6, 20, 3, padding=1), 7, fuse_norm=True,
                                  combine=combine)
    norm = nn.BatchNorm2d(20, momentum=None)
    norm.num_batches_tracked = None
    reference = copy.deepcopy(norm)
    x = torch.randn(3, 6, 5, 4)
    torch.testing.assert_close(conv_norm_act(layer, norm, x, relu=True),
                               F.relu(reference(layer.to_conv()(x))), rtol=1e-4, atol=1e-4)
    assert (norm.running_mean == 0).all() and (norm.running_var == 1).all()
    assert ("fold" in kernel_runs) == (combine == "fused")


@pytest.mark.parametrize("combine", ["stacked", "fused"])
def test_a_compiled_cumulative_average_traced_as_a_symbol_updates_once(combine, kernel_runs):
    """Found in review: under ``torch.compile`` with ``capture_scalar_outputs`` a cumulative
    average's momentum (``1 / num_batches_tracked``) is a traced symbol, which the fold
    kernel's float argument refused (and ``lerp_`` with it failed under Inductor). While
    tracing, the update runs in standard ops, which the compiler fuses; the buffers after
    two compiled steps are eager's."""
    torch.manual_seed(0)
    layer = BasisConv2d.from_conv(nn.Conv2d(6, 20, 3, padding=1), 7, fuse_norm=True,
                                  combine=combine)
    eager = (layer, nn.BatchNorm2d(20, momentum=None))
    compiled = copy.deepcopy(eager)
    step_compiled = torch.compile(lambda x: conv_norm_act(*compiled, x, relu=True),
                                  backend="aot_eager")
    try:
        with torch._dynamo.config.patch(capture_scalar_outputs=True):
            for _ in range(2):
                x = torch.randn(2, 6, 5, 5)
                torch.testing.assert_close(step_compiled(x), conv_norm_act(*eager, x, relu=True))
    finally:
        torch._dynamo.reset()
    for (name, got), want in zip(compiled[1].named_buffers(), eager[1].buffers()):
        torch.testing.assert_close(got, want, msg=name)


@pytest.mark.device
def test_the_moments_shift_does_not_sample_one_pixel_of_every_image(device, kernel_runs):
    """Found in review: rows spread evenly over a batch of 64 images are the first pixel of
    each, so a border pixel unlike the rest set the shift (six standard deviations from
    the mean here); the sampled place now varies within each run of rows."""
    torch.manual_seed(0)
    maps = torch.randn(64, 3, 6, 6, device=device)
    maps[:, :, 0, 0] += 50.0
    shift, _ = triton_moments.moment_sums(maps)
    rows = maps.permute(0, 2, 3, 1).reshape(-1, 3).double()
    distance = (shift.double() - rows.mean(0)).abs() / rows.std(0)
    assert kernel_runs == ["moments"] and distance.max() < 2, distance


# ---------------------------------- wide bases under bf16 (checks for the next GPU slot)
#: Bases past the fold's one program (:mod:`triton_fold_wide`) and, on a GPU, past one
#: 64-wide tile of the moments: (C_in, C_out, m, batch, (H, W), layout, relu, momentum).
WIDE_FOLDS = [
    (8, 72, 65, 2, (5, 7), "channels_last", True, 0.1),  # one past a tile: 2x2, mostly padding
    (6, 136, 128, 3, (4, 5), "nchw", False, 0.3),        # two full tiles a side
    (5, 264, 256, 2, (6, 6), "channels_last", True, None),  # the widest; a cumulative average
]


@pytest.mark.device
@pytest.mark.parametrize("shape", WIDE_FOLDS, ids=lambda s: f"m{s[2]}-{s[5]}")
def test_a_wide_fold_trains_as_the_unfused_layers_under_bf16_autocast(shape, device,
                                                                      kernel_runs, monkeypatch):
    """Two training steps (batch statistics) and one in eval mode (running statistics) of a
    folded layer with a basis of 65 to 256 under bf16 autocast, as training runs, against
    the conv, ``nn.BatchNorm2d`` and ReLU one after another in float64: the output, the
    gradients of the input and of every parameter, and the norm's buffers, within bf16's
    tolerance of each reference's largest magnitude (at least 1: the conv bias's gradient
    is zero through batch norm, up to rounding). Under the interpreter (no bfloat16) the
    same in float32, to float32's, with the GPU's 64-wide tiles of the moments and the
    wide fold (the interpreter's own are 32 wide)."""
    c_in, c_out, m, batch, image, layout, relu, momentum = shape
    if device.type == "cpu":
        use_the_gpus_tiles(monkeypatch)
    torch.manual_seed(0)
    layer = BasisConv2d(c_in, c_out, 3, m, padding=1, combine="fused", fuse_norm=True,
                        device=device)
    norm = nn.BatchNorm2d(c_out, momentum=momentum, device=device)
    with torch.no_grad():
        layer.output_index.copy_(torch.randperm(c_out))  # a converted layer's channel order
        layer.bias.normal_()
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    exact = [copy.deepcopy(module).double() for module in (layer, norm)]
    exact[0].combine, exact[0].fuse_norm = "stacked", False  # the modules one after another
    bf16 = device.type == "cuda"
    tolerance = 5e-2 if bf16 else 1e-4
    layout = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for training in (True, True, False):
        for module in (layer, norm, *exact):
            module.train(training)
        x = (torch.randn(batch, c_in, *image, device=device) + 0.5).to(memory_format=layout)
        upstream = torch.randn(batch, c_out, *image, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            got, got_grads = step(layer, norm, x, upstream, relu)
        want, want_grads = step(*exact, x.double(), upstream.double(), relu)
        assert got.dtype == (torch.bfloat16 if bf16 else torch.float32)
        names = ["output", "input"] + [f"grad {i}" for i in range(len(got_grads) - 1)]
        for name, a, b in zip(names, [got, *got_grads], [want, *want_grads]):
            torch.testing.assert_close(a.double(), b, rtol=tolerance,
                                       atol=tolerance * max(1.0, b.abs().max().item()),
                                       msg=lambda s: f"{name}: {s}")
        for module in (layer, norm, *exact):
            module.zero_grad(set_to_none=True)
    for (name, got), want in zip(norm.named_buffers(), exact[1].buffers()):
        want = want.double()  # (num_batches_tracked: an integer)
        torch.testing.assert_close(got.double(), want, rtol=tolerance, msg=name,
                                   atol=tolerance * want.abs().max().item())
    assert kernel_runs == TRAINING_STEP * 2 + ["combine", "combine_backward"]
