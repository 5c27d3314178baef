"""A basis layer with its batch norm and ReLU as one computation (``fuse_norm``) computes
what the layer, ``nn.BatchNorm2d`` and ReLU compute one after another: outputs, every
gradient, the running statistics, in training and in eval mode."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn

from basisconv.conv_norm import conv_norm_act
from basisconv.layers import BasisConv2d
from basisconv.models import build_model
from basisconv.surgery import apply_basis

LAYOUTS = {"nhwc": torch.channels_last, "nchw": torch.contiguous_format}
NORMS = {
    "default": {},
    "cumulative": {"momentum": None},
    "no-affine": {"affine": False},
    "no-running-stats": {"track_running_stats": False},
}


def layers(kind: str, device: str) -> BasisConv2d:
    """A basis layer converted from a conv (permuted output order, conv bias) or a
    from-scratch one with low-rank coefficients and a stride."""
    torch.manual_seed(0)
    if kind == "converted":
        conv = nn.Conv2d(6, 10, 3, padding=1, bias=True).double().to(device)
        return BasisConv2d.from_conv(conv, 4)
    return BasisConv2d(5, 9, 3, 3, stride=2, padding=1, coefficient_rank=2).double().to(device)


def pair(layer: BasisConv2d, norm_kwargs: dict, device: str):
    """The same layer and norm twice: unfused, then fused."""
    norm = nn.BatchNorm2d(layer.out_channels, **norm_kwargs).double().to(device)
    if norm.affine:
        with torch.no_grad():  # not the identity, so that a missing scale or shift shows
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    fused = copy.deepcopy(layer)
    fused.fuse_norm = True
    return (layer, norm), (fused, copy.deepcopy(norm))


def out_shape(conv, x):
    with torch.no_grad():
        return conv(x).shape


def step(conv, norm, x, upstream, relu):
    x = x.detach().clone().requires_grad_()
    out = conv_norm_act(conv, norm, x, relu=relu)
    out.backward(upstream)
    grads = [x.grad] + [p.grad for p in (*conv.parameters(), *norm.parameters())]
    return out, grads


@pytest.mark.device
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("norm_kwargs", NORMS.values(), ids=NORMS.keys())
@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("kind", ["converted", "scratch-lowrank"])
def test_fused_norm_equals_layer_then_batch_norm(kind, layout, norm_kwargs, relu, device,
                                                monkeypatch):
    import basisconv.conv_norm as conv_norm
    folded, fold = [], conv_norm.basis_conv_batch_norm
    monkeypatch.setattr(conv_norm, "basis_conv_batch_norm",  # the fold ran, not the plain
                        lambda *a, **k: folded.append(1) or fold(*a, **k))  # path (review)
    (conv, norm), (fconv, fnorm) = pair(layers(kind, device), norm_kwargs, device)
    torch.manual_seed(1)
    for _ in range(2):  # two steps: the running averages build on the first
        x = (torch.randn(3, conv.in_channels, 7, 8, dtype=torch.float64, device=device) + 0.7)
        x = x.to(memory_format=layout)
        upstream = torch.randn(out_shape(conv, x), dtype=x.dtype, device=device)
        ref, ref_grads = step(conv, norm, x, upstream, relu)
        got, got_grads = step(fconv, fnorm, x, upstream, relu)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
        # the unfused layers' layout: channels_last on CPU; on CUDA float64 convs give
        # NCHW whatever the input (PyTorch keeps float64 cuDNN convs NCHW), and so does the fusion
        assert got.stride() == ref.stride()
        if device.type == "cpu":
            assert got.is_contiguous(memory_format=layout)
        for g, r in zip(got_grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)
    for name, buffer in norm.named_buffers():
        torch.testing.assert_close(dict(fnorm.named_buffers())[name], buffer, rtol=1e-10,
                                   atol=1e-12, msg=f"running buffer {name}")
    norm.eval()
    fnorm.eval()
    x = torch.randn(2, conv.in_channels, 5, 6, dtype=torch.float64, device=device)
    upstream = torch.randn(out_shape(conv, x), dtype=x.dtype, device=device)
    ref, ref_grads = step(conv, norm, x, upstream, relu)
    got, got_grads = step(fconv, fnorm, x, upstream, relu)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)
    assert len(folded) == 3  # two training steps and the evaluation took the fold


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
def test_a_frozen_basis_gets_the_unfused_layers_gradients_for_the_rest(relu):
    """The fold's backward skips the basis maps' gradient (and the moments') when the maps
    need none: a frozen basis under an input without gradient. The coefficients, conv bias
    and norm still get the unfused layer's gradients. (That branch ran in no test before
    the coverage review.)"""
    (conv, norm), (fconv, fnorm) = pair(layers("converted", "cpu"), {}, "cpu")
    x = torch.randn(2, conv.in_channels, 6, 5, dtype=torch.float64)
    grads = []
    for c, n in ((conv, norm), (fconv, fnorm)):
        c.basis_weight.requires_grad_(False)
        trained = [p for p in (*c.parameters(), *n.parameters()) if p.requires_grad]
        out = conv_norm_act(c, n, x, relu=relu)
        grads.append(torch.autograd.grad(out.pow(3).sum(), trained))
    assert len(grads[1]) == 4  # coefficients, conv bias, norm weight and bias
    for got, ref in zip(*grads[::-1]):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "running-stats"])
def test_second_order_gradients_through_the_fold_are_the_unfused_layers(relu, training):
    """Found in review: with batch statistics the written-out backward had no graph of its
    own, so a gradient of a gradient (create_graph=True: a gradient penalty) came out
    wrong, or None for the input and the coefficients."""
    (conv, norm), (fconv, fnorm) = pair(layers("converted", "cpu"), {}, "cpu")
    norm.train(training)
    fnorm.train(training)
    x = torch.randn(2, conv.in_channels, 6, 5, dtype=torch.float64, requires_grad=True)

    def second_order(c, n):
        gx, = torch.autograd.grad(conv_norm_act(c, n, x, relu=relu).pow(3).sum(), x,
                                  create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), [x, *c.parameters(), n.weight])

    for got, ref in zip(second_order(fconv, fnorm), second_order(conv, norm)):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    class ConvNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = BasisConv2d(3, 5, 3, num_basis=2, padding=1, fuse_norm=True,
                                    dtype=torch.float64)
            self.norm = nn.BatchNorm2d(5, dtype=torch.float64).train(training)

        def forward(self, x):
            return conv_norm_act(self.conv, self.norm, x, relu=relu)

    small = ConvNorm()

    def layer(x, basis, coefficients):
        return torch.func.functional_call(
            small, {"conv.basis_weight": basis, "conv.coefficients": coefficients}, (x,))

    inputs = (torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True),
              small.conv.basis_weight, small.conv.coefficients)
    assert torch.autograd.gradgradcheck(layer, inputs)


def test_other_layers_and_norms_run_one_after_another():
    """A dense conv, a basis layer without ``fuse_norm`` and a subclass of BatchNorm2d (a
    synchronized norm needs its own statistics) take the plain path, bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)

    class OtherNorm(nn.BatchNorm2d):
        pass

    fused = BasisConv2d(4, 8, 3, 2, padding=1, fuse_norm=True)
    cases = [(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8)),
             (BasisConv2d(4, 8, 3, 2, padding=1), nn.BatchNorm2d(8)),
             (fused, OtherNorm(8))]
    for conv, norm in cases:
        expected = torch.relu(copy.deepcopy(norm)(conv(x)))
        assert torch.equal(conv_norm_act(conv, norm, x, relu=True), expected)
    assert "fuse_norm=True" in repr(fused)


def test_bf16_autocast_keeps_the_statistics_in_float32():
    """Under bf16 autocast the output matches the unfused bf16 path to bf16 precision, and
    the running statistics (from float32 moments) match it closely."""
    (conv, norm), (fconv, fnorm) = pair(layers("converted", "cpu"), {}, "cpu")
    for module in (conv, norm, fconv, fnorm):
        module.float()
    torch.manual_seed(2)
    x = (torch.randn(4, 6, 8, 8) + 3.0).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = conv_norm_act(conv, norm, x, relu=True)
        got = conv_norm_act(fconv, fnorm, x, relu=True)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref.float(), rtol=0.05, atol=0.05)
    torch.testing.assert_close(fnorm.running_mean, norm.running_mean, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(fnorm.running_var, norm.running_var, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("model_name, width", [("resnet8", 0.5), ("resnet18", 0.125)])
def test_a_fused_model_trains_as_the_unfused_one(model_name, width):
    """Three SGD steps of a whole basis ResNet (projection shortcuts converted too) in
    float64, fused and unfused from the same weights: the same losses, parameters and
    running statistics."""
    torch.manual_seed(0)
    dense = build_model(model_name, width=width).double()
    models = []
    for fuse in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 1x1 shortcuts save no compute; convert anyway
            model = apply_basis(dense, "all", 0.5, convert=False, fuse_norm=fuse)
        models.append(model.to(memory_format=torch.channels_last))
    models[1].load_state_dict(models[0].state_dict())
    assert all(m.fuse_norm for m in models[1].modules() if isinstance(m, BasisConv2d))
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in models]
    torch.manual_seed(3)
    for _ in range(3):
        x = torch.randn(8, 3, 16, 16, dtype=torch.float64).to(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (8,))
        losses = []
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=1e-9)
    fused_state = models[1].state_dict()
    for key, value in models[0].state_dict().items():
        torch.testing.assert_close(fused_state[key], value, rtol=1e-8, atol=1e-10, msg=key)
    for model in models:
        model.eval()
    torch.testing.assert_close(models[1](x), models[0](x), rtol=1e-8, atol=1e-10)


def test_a_run_record_counts_a_fused_model_per_image_at_the_training_batch():
    from basisconv.network import describe

    dense = build_model("resnet8", width=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1x1 shortcuts save no compute; convert anyway
        fused, plain = (apply_basis(dense, "all", 0.5, convert=False, fuse_norm=fuse)
                        for fuse in (True, False))
    assert describe(plain, batch=128) == describe(plain)  # nothing paid once per batch
    one, batch = describe(fused), describe(fused, batch=128)
    # the statistics' A Cov_b product, 2*C_out*m*m a batch, forward and in the backward
    assert batch["forward_flops"] < one["forward_flops"]
    assert batch["grad_input_flops"] < one["grad_input_flops"]
    assert batch["parameters"] == one["parameters"]
    assert batch["backward_flops"] == batch["grad_input_flops"] + batch["grad_weight_flops"]


def test_benchmark_files_say_when_norms_are_fused():
    from basisconv.bench.layers import SpeedOptions
    from basisconv.bench.throughput_options import ThroughputOptions

    assert SpeedOptions(fuse_norm=True).tag == "cpu-fp32-fusenorm"
    assert ThroughputOptions(basis_size=0.25, fuse_norm=True).tag == "-basis0.25-fusenorm"
    assert ThroughputOptions(fuse_norm=True).tag == ""  # a dense model has nothing to fuse


def test_torch_compile_traces_a_fused_model_as_one_graph():
    """No graph break in the fused path (its backward is written out by hand: autograd
    inside a backward would break the graph at every layer)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_basis(build_model("resnet8", width=0.5), "all", 0.5, convert=False,
                            fuse_norm=True)
    explained = torch._dynamo.explain(model)(torch.randn(4, 3, 16, 16))
    torch._dynamo.reset()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
        [b.reason for b in explained.break_reasons]


@pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])
def test_a_cumulative_average_does_not_recompile_a_compiled_model_every_step(fuse):
    """Found in the seventh review: with ``momentum=None`` (batch norm's cumulative
    average, ``1 / num_batches_tracked``) each training step's momentum is a new float, and
    the fold's running-average update took it as ``add_``'s ``alpha``, which made
    ``torch.compile`` specialize on its value: every step compiled again, until Dynamo's
    recompile limit sent the layer back to eager mode. The unfused norm compiles twice (the
    first step's momentum of 1, then every step); the fold must do no worse than one more."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    conv = BasisConv2d(3, 8, 3, 3, padding=1, fuse_norm=fuse)
    norm = nn.BatchNorm2d(8, momentum=None)
    reference = (copy.deepcopy(conv), copy.deepcopy(norm))
    torch._dynamo.reset()
    counters.clear()
    step = torch.compile(lambda x: conv_norm_act(conv, norm, x, relu=True), backend="aot_eager")
    try:
        for _ in range(6):
            x = torch.randn(2, 3, 5, 5)
            torch.testing.assert_close(step(x), torch.relu(reference[1](reference[0](x))))
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert graphs <= 3, f"{graphs} graphs compiled for 6 steps"
    torch.testing.assert_close(norm.running_var, reference[1].running_var)
    assert int(norm.num_batches_tracked) == 6


def test_frozen_coefficients_and_norm_parameters_get_no_gradient_and_the_rest_the_same():
    """The skip schedule's off steps (coefficients frozen), with frozen norm parameters on
    top: the fused backward gives them nothing and the basis filters what unfused does."""
    from basisconv.surgery import CoefficientSkipSchedule

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = [apply_basis(build_model("resnet8", width=0.5), "all", 0.5, convert=False,
                              fuse_norm=fuse).double() for fuse in (False, True)]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    for model in models:
        CoefficientSkipSchedule(model, 2)(1)
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.requires_grad_(False)
        model(x).sum().backward()
    unfused, fused = (dict(m.named_parameters()) for m in models)
    for name, param in fused.items():
        if unfused[name].grad is None:
            assert param.grad is None, name
        else:
            torch.testing.assert_close(param.grad, unfused[name].grad, rtol=1e-8, atol=1e-10,
                                       msg=name)
    assert fused["layer1.0.conv1.basis_weight"].grad is not None


def test_a_combine_mode_that_the_fold_replaces_is_said_to_not_apply():
    with pytest.warns(UserWarning, match="combine='split' applies only to layers without"):
        BasisConv2d(4, 8, 3, 2, combine="split", fuse_norm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BasisConv2d(4, 8, 3, 2, fuse_norm=True)  # stacked: what the fold computes anyway
        BasisConv2d(4, 8, 3, 2, combine="fused", fuse_norm=True)  # the fold's own kernels
        BasisConv2d(4, 8, 3, 2, combine="auto", fuse_norm=True)  # chooses among the fold's forms


def test_batches_of_fewer_than_two_values_per_channel_are_taken_as_batch_norm_takes_them():
    """Found by audit: an empty batch in training mode gave NaN running statistics and NaN
    gradients for the coefficients and the norm's weight (batch norm leaves its running
    averages as they were, every gradient zero), and one value per channel (a batch of one
    1x1 map) trained on a zero variance where batch norm refuses it."""
    (plain, norm), (fused, fused_norm) = pair(layers("converted", "cpu"), {}, "cpu")
    empty = torch.randn(0, 6, 5, 5, dtype=torch.float64)
    for conv, bn in ((plain, norm), (fused, fused_norm)):
        out = conv_norm_act(conv, bn, empty, relu=True)
        assert out.shape == (0, 10, 5, 5)
        out.sum().backward()
        assert all(p.grad is not None and not p.grad.any()
                   for p in (*conv.parameters(), *bn.parameters()))
        assert (bn.running_mean == 0).all() and (bn.running_var == 1).all()
        assert bn.num_batches_tracked == 1
    one = torch.randn(1, 6, 1, 1, dtype=torch.float64)
    for conv, bn in ((plain, norm), (fused, fused_norm)):
        with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when "
                                             r"training, got input size torch.Size\(\[1, 10, 1, 1\]\)"):
            conv_norm_act(conv, bn, one, relu=True)
    fused_norm.eval()  # the running statistics: one value is fine, as for batch norm
    assert conv_norm_act(fused, fused_norm, one).shape == (1, 10, 1, 1)


@pytest.mark.filterwarnings("ignore:a basis layer with fuse_norm")
@pytest.mark.parametrize("kind", ["forward", "pre"])
def test_a_norms_hooks_run_when_its_layer_would_fold_it(kind):
    """The fold never called the norm module, so its hooks (feature extraction,
    activation statistics) silently did not run."""
    torch.manual_seed(0)
    conv = BasisConv2d(4, 8, 3, 3, padding=1, fuse_norm=True)
    norm, seen = nn.BatchNorm2d(8), []
    if kind == "forward":
        norm.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    else:
        norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    conv_norm_act(conv, norm, torch.randn(2, 4, 6, 6), relu=True)
    assert seen == [torch.Size([2, 8, 6, 6])]


@pytest.mark.filterwarnings("ignore:layer .layer1.0.conv1.. num_basis=8 saves no compute")
def test_a_hook_moved_from_the_dense_conv_sees_the_convs_output_under_fuse_norm():
    """apply_basis moves a dense conv's forward hooks to its basis layer, 'whose output is
    the conv's'; under the fold the hook got relu(bn(conv(x))). Now the modules run one
    after another, said once; a hook registered with kwargs keeps the fold."""
    torch.manual_seed(0)
    model = build_model("resnet18", width=0.125).eval()
    seen = []
    model.layer1[0].conv1.register_forward_hook(lambda m, args, out: seen.append(out))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model(x)
        converted = apply_basis(model, "layer1.0.conv1", 1.0, fuse_norm=True)
        with pytest.warns(UserWarning, match="runs unfused beside its norm") as said:
            converted(x)
            converted(x)
    assert len(said) == 1
    torch.testing.assert_close(seen[1], seen[0], rtol=1e-4, atol=1e-4)
    folded = BasisConv2d(4, 8, 3, 3, padding=1, fuse_norm=True)
    calls = []
    folded.register_forward_hook(lambda m, args, kwargs, out: calls.append("norm" in kwargs),
                                 with_kwargs=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conv_norm_act(folded, nn.BatchNorm2d(8), torch.randn(2, 4, 6, 6))
    assert calls == [True]


def test_an_unbatched_input_to_a_folded_norm_is_refused_as_batch_norm_refuses_it():
    conv = BasisConv2d(4, 8, 3, 3, padding=1, fuse_norm=True)
    with pytest.raises(ValueError, match="expected 4D input"):
        conv_norm_act(conv, nn.BatchNorm2d(8), torch.randn(4, 6, 6))


@pytest.mark.parametrize("norm_kwargs, training", [({}, False), ({}, True),
                                                     ({"track_running_stats": False}, True),
                                                     ({"affine": False}, False)])
def test_a_norm_of_another_width_is_refused_as_batch_norm_refuses_it(norm_kwargs, training):
    """Found in review: the fold's per-channel products broadcast a 1-channel norm over the
    layer's 6 channels, a wrong output without an error (batch norm refuses it unfused)."""
    conv = BasisConv2d(4, 6, 3, 3, padding=1, fuse_norm=True)
    norm = nn.BatchNorm2d(1, **norm_kwargs).train(training)
    with pytest.raises(RuntimeError, match="should contain 6 elements not 1"):
        norm(conv(torch.randn(2, 4, 5, 5)))
    with pytest.raises(RuntimeError, match="should contain 6 elements not 1"):
        conv_norm_act(conv, norm, torch.randn(2, 4, 5, 5), relu=True)


@pytest.mark.filterwarnings("ignore:a basis layer with fuse_norm")
def test_backward_hooks_see_the_modules_one_after_another():
    """The norm's backward hook did not run under the fold, and the layer's got the
    gradient of relu(bn(conv)) for its output's."""
    torch.manual_seed(0)
    conv, norm, seen = BasisConv2d(4, 8, 3, 3, padding=1, fuse_norm=True), nn.BatchNorm2d(8), {}
    # (a backward hook returning a value replaces the gradient: these return None)
    norm.register_full_backward_hook(
        lambda m, grad_in, grad_out: seen.update(norm=True))
    conv.register_full_backward_hook(
        lambda m, grad_in, grad_out: seen.update(conv=grad_out[0]))
    x = torch.randn(2, 4, 6, 6, requires_grad=True)  # (else torch warns of the hooks)
    conv_norm_act(conv, norm, x, relu=True).sum().backward()
    assert "norm" in seen
    out = conv(x).detach().requires_grad_()
    torch.relu(norm(out)).sum().backward()
    torch.testing.assert_close(seen["conv"], out.grad)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_a_norm_whose_tracking_is_switched_off_keeps_its_running_statistics(momentum):
    """Found in review: ``norm.track_running_stats = False`` after construction (a common
    way to freeze the statistics; the buffers stay) was ignored by the fused norm, which
    went on updating them (momentum 0.1) or failed in lerp_ (momentum None)."""
    (conv, norm), (fused, fused_norm) = pair(layers("converted", "cpu"),
                                             {"momentum": momentum}, "cpu")
    with torch.no_grad():  # not the initial values, so that an update shows
        for buffers in (norm, fused_norm):
            buffers.running_mean.fill_(0.3)
            buffers.running_var.fill_(2.0)
    norm.track_running_stats = fused_norm.track_running_stats = False
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(conv_norm_act(fused, fused_norm, x, relu=True),
                               conv_norm_act(conv, norm, x, relu=True))
    for name, buffer in norm.named_buffers():
        torch.testing.assert_close(dict(fused_norm.named_buffers())[name], buffer)
    assert float(fused_norm.running_mean[0]) == 0.3


def test_a_folded_norm_without_relu_keeps_only_the_basis_maps_so_its_output_can_change():
    """Without a ReLU the backward needs no mask, so the output is not saved: the memory of
    a full-width tensor per layer (the memory benchmark's point), and the output may be
    changed in place afterwards, as after the unfused batch norm (whose backward keeps its
    input, not its output). Saved, the in-place change broke the backward."""
    from basisconv.bench.memory import saved_for_backward

    (conv, norm), (fconv, fnorm) = pair(layers("converted", "cpu"), {}, "cpu")
    x = torch.randn(2, conv.in_channels, 6, 5, dtype=torch.float64)
    grads = []
    for c, n in ((conv, norm), (fconv, fnorm)):
        out = conv_norm_act(c, n, x, relu=False)
        out.mul_(2.0)  # (a residual block's in-place addition, say)
        grads.append(torch.autograd.grad(out.pow(3).sum(), [c.coefficients, n.weight]))
    for got, ref in zip(*grads[::-1]):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    kept = {relu: saved_for_backward(fconv, lambda: conv_norm_act(fconv, fnorm, x, relu=relu))
            for relu in (True, False)}
    assert kept[True] - kept[False] == 2 * conv.out_channels * 6 * 5 * 8  # the output, float64


def test_basis_moments_of_bf16_maps_are_taken_in_float32():
    """Under bf16 autocast the basis maps are bf16; their mean and covariance in bf16 (8
    bits) lose what batch norm, which takes its statistics in float32, keeps: at a mean of
    100 a bf16 value is a multiple of 0.5, so a unit variance came out about 2 % off.
    The moments must be those of the same bf16 values in float64, to float32 precision."""
    from basisconv.kernels.torch_ops import basis_moments

    torch.manual_seed(0)
    maps = (100 + torch.randn(4, 3, 8, 8)).to(torch.bfloat16)
    mean, cov = basis_moments(maps)
    rows = maps.double().permute(0, 2, 3, 1).reshape(-1, 3)
    want_mean = rows.mean(0)
    want_cov = (rows - want_mean).T @ (rows - want_mean) / rows.shape[0]
    torch.testing.assert_close(cov.double(), want_cov, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean.double(), want_mean, rtol=1e-6, atol=1e-5)
    assert mean.dtype == cov.dtype == torch.float32


@pytest.mark.parametrize("frozen", ["weight", "bias"])
def test_a_norm_with_one_parameter_frozen_gets_the_other_ones_gradient(frozen):
    """Each of the norm's parameters gets its gradient by its own ``requires_grad``: with
    the scale frozen (a fixed gamma, say) the shift still trains, and the other way
    round, as in the unfused layers."""
    (conv, norm), (fconv, fnorm) = pair(layers("converted", "cpu"), {}, "cpu")
    x = torch.randn(2, conv.in_channels, 6, 5, dtype=torch.float64)
    grads = []
    for c, n in ((conv, norm), (fconv, fnorm)):
        getattr(n, frozen).requires_grad_(False)
        conv_norm_act(c, n, x, relu=True).pow(3).sum().backward()
        grads.append((n.weight.grad, n.bias.grad))
    (weight, bias), (fused_weight, fused_bias) = grads
    assert (fused_weight is None, fused_bias is None) == (frozen == "weight", frozen == "bias")
    for got, ref in ((fused_weight, weight), (fused_bias, bias)):
        if ref is not None:
            torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
