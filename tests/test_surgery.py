"""Model surgery: layer names, replacement with and without weight conversion, errors,
shared coefficients and the coefficient skip-training schedule."""

import contextlib
import copy
import io
import logging
import warnings

import pytest
import torch
import torch.nn as nn

from basisconv.cost import model_cost, measure_flops
from basisconv.dense_form import to_dense
from basisconv.errors import ConfigError
from basisconv.fitting import relative_error
from basisconv.layer_names import conv_layers, select_layers
from basisconv.layers import BasisConv2d, basis_layers
from basisconv.models import build_model
from basisconv.network import rebind_optimizer
from basisconv.surgery import CONFIG_KEYS, CoefficientSkipSchedule, apply_basis, basis_report


def small_resnet18(seed=0):
    """ResNet-18 at a quarter width in float64: has a stem, 3x3 block convs and 1x1 shortcuts."""
    torch.manual_seed(seed)
    return build_model("resnet18", width=0.25).double().eval()


def test_conv_layers_lists_module_names_in_order():
    names = list(conv_layers(build_model("resnet18")))
    assert len(names) == 20
    assert names[:4] == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
    assert "layer2.0.shortcut.0" in names and names.index("layer2.0.shortcut.0") == 7
    assert len(conv_layers(build_model("resnet20"))) == 19
    # the layers apply_basis can replace, each under a name: a bare conv, the model itself,
    # has none (apply_basis refuses it, naming from_conv)
    assert conv_layers(nn.Conv2d(3, 8, 3)) == {}
    # a list in another order selects in model order (a candidate table's positions)
    chosen = select_layers(build_model("resnet20"), ["layer3.*.conv1", "layer1.0.*", "conv1"])
    assert list(chosen)[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert list(chosen)[3:] == [f"layer3.{b}.conv1" for b in range(3)]


@pytest.mark.device
def test_full_rank_conversion_of_all_layers_keeps_the_outputs(device):
    model = small_resnet18().to(device)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # full rank saves nothing, and says so
        converted = apply_basis(model, "all", 1.0)
    assert all(isinstance(m, nn.Conv2d) for m in conv_layers(model).values())  # a copy
    assert len(basis_layers(converted)) == 20
    torch.testing.assert_close(converted(x), model(x), rtol=1e-10, atol=1e-10)
    assert max(r["reconstruction_error"] for r in basis_report(converted)) < 1e-12


def test_partial_conversion_reports_errors_and_inplace_returns_the_same_model():
    model = small_resnet18()
    out = apply_basis(model, ["layer*.conv*"], 0.5, inplace=True)
    assert out is model
    report = basis_report(model)
    assert [r["name"] for r in report] == [n for n in conv_layers(model) if ".conv" in n]
    assert all(0 < r["reconstruction_error"] < 1 for r in report)
    assert {r["num_basis"] for r in report} == {8, 16, 32, 64}
    assert {r["fraction"] for r in report} == {0.5}  # of each layer's out_channels
    assert isinstance(model.conv1, nn.Conv2d) and isinstance(model.layer2[0].shortcut[0], nn.Conv2d)


def test_fresh_layers_without_conversion():
    model = small_resnet18()
    converted = apply_basis(model, "layer1.0.conv1", 4, convert=False)
    layer = converted.layer1[0].conv1
    assert isinstance(layer, BasisConv2d) and layer.num_basis == 4
    assert layer.reconstruction_error is None
    assert layer.basis_weight.dtype == torch.float64 and not layer.training


def test_without_a_size_each_layer_keeps_half_its_filters():
    """The documented default (neither num_basis nor max_error): half of each layer's
    out_channels, rounded half up (found by a mutation test: every test gave a size)."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 9, 3))
    sizes = [layer.num_basis for layer in apply_basis(model, "all", convert=False)]
    assert sizes == [8, 5]


def _rms(weight):
    return float(weight.detach().double().square().mean().sqrt())


# over seeds 0-19 these layers' ratios stayed in 0.86-1.09; BasisConv2d's own fan-in init
# gives 2.3 at the stem (fan-in 27, fan-out 144) and 1.41 at the other two
def test_fresh_layers_start_at_the_scale_of_the_convs_they_replace():
    """The ResNets scale by fan-out, torch's default conv init by fan-in (uniform): either
    way a fresh basis layer's effective weight starts at the replaced conv's scale."""
    torch.manual_seed(0)
    model = build_model("resnet20")
    names = ["conv1", "layer2.0.conv1", "layer3.0.conv1"]
    modules = dict(model.named_modules())
    dense = {name: _rms(modules[name].weight) for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stem's basis saves nothing
        converted = dict(apply_basis(model, names, 0.5, convert=False).named_modules())
    for name in names:
        assert 0.75 < _rms(converted[name].to_conv().weight) / dense[name] < 1.33, name
    plain = nn.Conv2d(32, 64, 3)  # torch's default init
    layer = apply_basis(nn.Sequential(plain), "0", 16, convert=False)[0]
    assert 0.75 < _rms(layer.to_conv().weight) / _rms(plain.weight) < 1.33


def test_a_fresh_layer_draws_the_random_numbers_a_default_init_draws():
    """Only the basis filters' scale differs from ``BasisConv2d``'s own init: the same
    draws, so the layers after it start as they would have."""
    conv = nn.Conv2d(8, 16, 3, padding=1)
    torch.manual_seed(3)
    fresh = apply_basis(nn.Sequential(conv), "0", 4, convert=False)[0]
    after_fresh = torch.randn(4)
    torch.manual_seed(3)
    default = BasisConv2d(8, 16, 3, 4, padding=1)
    assert torch.equal(torch.randn(4), after_fresh)
    assert torch.equal(fresh.coefficients, default.coefficients)
    ratio = fresh.basis_weight / default.basis_weight
    torch.testing.assert_close(ratio, torch.full_like(ratio, _rms(conv.weight) / (2 / 72) ** 0.5))


def test_converted_and_fresh_layers_keep_the_convs_geometry():
    """Stride, padding, dilation, a non-square kernel and the bias reach the basis layer
    whether it is fitted or made from scratch (the ResNets have no dilation)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, (3, 1), stride=(2, 1), padding=(2, 0), dilation=2, bias=True)
    x = torch.randn(1, 4, 9, 9)
    for convert in (True, False):
        layer = apply_basis(nn.Sequential(conv), "0", 2, convert=convert)[0]
        assert (layer.kernel_size, layer.stride, layer.padding, layer.dilation) == \
            (conv.kernel_size, conv.stride, conv.padding, conv.dilation), convert
        assert layer.bias is not None
        with torch.no_grad():
            assert layer(x).shape == conv(x).shape


def test_a_count_above_a_layers_channels_leaves_it_dense_where_only_savings_are_asked(caplog):
    """Found in review: the README's own line, a count of 16 with only_where_saves, failed
    on a half-width ResNet-20 (its first stage has 8 channels), and so did
    `experiment=basis_all basis.size=16` on the quick profile's ResNet-8, while a count
    equal to a layer's channels (no saving either) left it dense."""
    model = build_model("resnet20")  # stages of 16, 32 and 64 channels
    with caplog.at_level(logging.INFO, logger="basisconv.basis_sizes"):
        small = apply_basis(model, "all", 20, convert=False, only_where_saves=True)
    converted = {name for name, m in small.named_modules() if isinstance(m, BasisConv2d)}
    assert converted == {name for name, conv in conv_layers(model).items()
                         if conv.out_channels > 16}
    assert ("layer 'layer1.0.conv1': num_basis=20 is more than its 16 output channels; left "
            "dense (only_where_saves)") in caplog.messages
    # above every layer it would leave the whole model dense: refused, naming the widest
    with pytest.raises(ConfigError, match=r"^num_basis=65 is more than the output channels of "
                                          r"every selected layer \(at most 64\)"):
        apply_basis(model, "all", 65, only_where_saves=True)
    # a count equal to the widest layer's channels is no more than them: that layer saves
    # nothing and is left dense, which the warning of an all-dense result says
    with pytest.warns(UserWarning, match="at num_basis=64 no selected layer saves compute"):
        assert not basis_layers(apply_basis(model, "all", 64, convert=False,
                                            only_where_saves=True))


def test_an_error_bound_sizes_each_layer_by_its_own_filters(caplog):
    """apply_basis(max_error=...): each layer the basis from_conv(max_error=...) gives it
    (found in a walkthrough: max_error was from_conv's alone, and the pages named it beside
    apply_basis). Redundant filters make a small basis; independent ones need them all,
    which saves nothing, so only_where_saves leaves such a layer dense."""
    torch.manual_seed(0)
    model = build_model("resnet20")
    with torch.no_grad():  # layer3.0.conv1: its last 32 filters combine its first 32
        w = model.layer3[0].conv1.weight
        w[32:] = (torch.randn(32, 32) @ w[:32].reshape(32, -1)).reshape(32, *w.shape[1:])
    sized = apply_basis(model, "all", max_error=0.05, only_where_saves=True)
    layers = {name: m for name, m in sized.named_modules() if isinstance(m, BasisConv2d)}
    alone = BasisConv2d.from_conv(model.layer3[0].conv1, max_error=0.05)
    assert list(layers) == ["layer3.0.conv1"] and alone.num_basis <= 32
    assert torch.equal(layers["layer3.0.conv1"].basis_weight, alone.basis_weight)
    # without only_where_saves each layer is converted at its size, as asked
    with pytest.warns(UserWarning, match="saves no compute"):
        every = apply_basis(model, "all", max_error=0.05)
    for name, conv in conv_layers(model).items():
        layer = dict(every.named_modules())[name]
        assert layer.num_basis == BasisConv2d.from_conv(conv, max_error=0.05).num_basis
        assert layer.reconstruction_error <= 0.05
    for args, message in [({"num_basis": 0.5}, "give max_error .* or num_basis .*, not both"),
                          ({"convert": False}, "max_error sizes layers by their trained "
                                               "filters, so it needs convert=True"),
                          ({"max_error": 1.5}, r"^max_error must be in \[0, 1\), got 1.5$")]:
        with pytest.raises(ConfigError, match=message):
            apply_basis(model, "all", **{"max_error": 0.05, **args})


def test_layer_errors_name_the_layer_and_the_valid_range():
    model = build_model("resnet20")
    with pytest.raises(ValueError, match=r"unknown layer 'layer4.0.conv1'.*valid names: conv1, layer1.0.conv1"):
        apply_basis(model, ["layer4.0.conv1"], 0.5)
    with pytest.raises(ValueError, match=r"pattern 'layer9\*' matches no convolution"):
        apply_basis(model, "layer9*", 0.5)
    with pytest.raises(ValueError, match=r"'layer1.0.bn1' is a BatchNorm2d, not a convolution"):
        apply_basis(model, "layer1.0.bn1", 0.5)
    # a container of convs: the pattern for what is inside it (found in review)
    with pytest.raises(ValueError, match=r"'layer1.0' is a BasicBlock, not a convolution; for "
                                         r"the convolutions inside it give the pattern 'layer1.0.\*'$"):
        apply_basis(model, "layer1.0", 0.5)
    with pytest.raises(ValueError, match=r"layer 'conv1'.*num_basis = 0 is out of range: valid is 1\.\.16"):
        apply_basis(model, "all", 0)
    with pytest.raises(ValueError, match=r"layer 'conv1'.*num_basis = 20 is out of range: valid is "
                                         r"1\.\.16.*; or pass only_where_saves=True to leave such "
                                         r"layers dense$"):
        apply_basis(model, "all", 20)
    with pytest.raises(ValueError, match=r"layer 'layer3.0.conv1'.*valid is 1\.\.64"):
        apply_basis(model, "layer3.0.conv1", 65)
    # (found by a fuzz: above every selected layer, only_where_saves=True is refused too, so
    # the error does not advise it)
    with pytest.raises(ValueError, match=r"valid is 1\.\.16 \(its out_channels\); set num_basis "
                                         r"to a count in that range, or to a fraction in \(0, "
                                         r"1\] of each layer's out_channels$"):
        apply_basis(model, ["conv1", "layer1.0.conv1"], 20)
    # Found by audit: a bare conv was "a model with no Conv2d layers"
    with pytest.raises(ValueError, match=r"a single conv; convert it with BasisConv2d\.from_conv"):
        apply_basis(nn.Conv2d(8, 16, 3), "all", 4)
    # and (found in review) a bare basis layer was "the model has no Conv2d layers" too
    with pytest.raises(ValueError, match=r"a single basis layer, already in basis form; to "
                                         r"change its basis size, BasisConv2d\.from_conv\("
                                         r"layer\.to_conv\(\), num_basis\)$"):
        apply_basis(BasisConv2d(8, 16, 3, 4), "all", 2)


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Conv2d(4, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        return self.depthwise(self.dense(x))


def test_grouped_convs_are_skipped_by_all_and_refused_by_name():
    with pytest.warns(UserWarning, match=r"^skipping layer 'depthwise': it is a grouped conv \(groups=8\); "):
        model = apply_basis(Grouped(), "all", 0.25)
    assert isinstance(model.dense, BasisConv2d) and isinstance(model.depthwise, nn.Conv2d)
    with pytest.raises(ValueError, match="'depthwise' is a grouped conv"):
        apply_basis(Grouped(), "depthwise", 0.25)


class StandardizedConv2d(nn.Conv2d):
    """A conv subclass with its own forward (weight standardization, as in BiT/NFNet)."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


class StandardizedInnerConv2d(nn.Conv2d):
    """The same in ``_conv_forward``, which ``nn.Conv2d.forward`` calls with the weight."""

    def _conv_forward(self, x, weight, bias):
        w = (weight - weight.mean((1, 2, 3), keepdim=True)) / (
            weight.std((1, 2, 3), keepdim=True) + 1e-5)
        return super()._conv_forward(x, w, bias)


@pytest.mark.parametrize("kind", [StandardizedConv2d, StandardizedInnerConv2d])
def test_conv_subclasses_with_their_own_forward_are_skipped_not_silently_converted(kind):
    # Found by review: from_conv fitted the raw weight, and the converted layer computed a
    # plain conv of it (here an output error of ~30 at full rank).
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), kind(8, 8, 3, padding=1))
    name = kind.__name__
    with pytest.warns(UserWarning, match=f"^skipping layer '1': it is a {name}.*own forward"):
        converted = apply_basis(model, "all", 2)
    assert isinstance(converted[0], BasisConv2d) and type(converted[1]) is kind
    with pytest.raises(ValueError, match=f"layer '1' is a {name}.*leave this layer dense"):
        apply_basis(model, "1", 2)


@pytest.mark.parametrize("mode, pad", [("reflect", nn.ReflectionPad2d),
                                       ("replicate", nn.ReplicationPad2d),
                                       ("circular", nn.CircularPad2d)])
def test_a_padded_conv_is_told_the_padding_module_that_makes_it_convertible(mode, pad):
    """Found in review: a reflect-, replicate- or circular-padded conv named for conversion
    was told only to stay dense, though the docs give the way to convert it (the padding
    as a module before the conv, the conv with padding=0). The error says it, with the
    conv's own padding, and following it converts the same function."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=(1, 2), padding_mode=mode).double()
    with pytest.raises(ConfigError, match=rf"layer '0' uses padding_mode='{mode}'.*so leave this "
                                          rf"layer dense \(or pad its input first: nn.Sequential\("
                                          rf"nn.{pad.__name__}\(\(2, 2, 1, 1\)\), the conv with "
                                          rf"padding=0\) converts\)$"):
        apply_basis(nn.Sequential(conv), "0", 8)
    padded = nn.Sequential(pad((2, 2, 1, 1)), nn.Conv2d(4, 8, 3).double())
    padded[1].load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (full rank saves nothing: said, not the point)
        converted = apply_basis(padded, "1", 8)
    assert isinstance(converted[1], BasisConv2d)
    torch.testing.assert_close(converted(x), conv(x))


def test_a_skipped_layer_says_it_stays_dense_and_how_it_could_be_converted():
    """Found in review: a pattern's skip line ended with the named layer's error advice,
    "leave this layer dense", an order for what the conversion had already done. It says
    the layer stays dense and, where there is one, what would make it convertible; the
    error for a layer named on its own still says to leave it dense."""
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                          nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
                          StandardizedConv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    plain = model[4].forward
    model[4].forward = lambda x: 2 * plain(x)
    with pytest.warns(UserWarning) as caught:
        apply_basis(model, "all", 2)
    lines = [str(w.message) for w in caught if str(w.message).startswith("skipping")]
    assert len(lines) == 4
    assert all("leave this layer dense" not in line for line in lines), lines
    assert lines[0].endswith("support groups=1 only, so it stays dense")
    assert lines[1].endswith("support zero padding only, so it stays dense (to convert it, "
                             "pad its input first: nn.Sequential(nn.ReflectionPad2d(1), the "
                             "conv with padding=0) converts)")
    assert lines[2].endswith("so it stays dense (to convert it, replace it by a plain nn.Conv2d "
                             "with the weight it uses)")
    assert lines[3].endswith("so it stays dense (to convert it, del conv.forward if it computes "
                             "the plain conv)")
    for name in "1234":
        with pytest.raises(ConfigError, match="so leave this layer dense"):
            apply_basis(model, name, 2)


@pytest.mark.parametrize("patched", ["forward", "_conv_forward"])
def test_a_conv_whose_forward_is_replaced_on_the_instance_is_not_silently_converted(patched):
    # Found by review: only the class's forward was checked, so a conv given its own
    # forward on the instance (conv.forward = ..., as a patching library does) was fitted to
    # its raw weight and computed a plain conv of it (here twice off at full rank).
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    plain = getattr(model[1], patched)
    setattr(model[1], patched, lambda *args: 2 * plain(*args))
    with pytest.warns(UserWarning, match=f"^skipping layer '1': it has its {patched} replaced on the instance"):
        converted = apply_basis(model, "all", 8)
    assert isinstance(converted[0], BasisConv2d) and type(converted[1]) is nn.Conv2d
    with pytest.raises(ValueError, match="layer '1'.*on the instance.*leave this layer dense"):
        apply_basis(model, "1", 8)


def test_an_unmade_lazy_conv_asks_for_a_forward_pass_first():
    model = nn.Sequential(nn.LazyConv2d(8, 3))
    with pytest.raises(ValueError, match="run one forward pass of the model first"):
        apply_basis(model, "0", 0.5)
    model(torch.randn(1, 4, 6, 6))
    assert isinstance(apply_basis(model, "0", 0.5)[0], BasisConv2d)


def test_a_wrapped_models_unknown_name_suggests_the_prefixed_one():
    # Found by review: torch.compile names the layers '_orig_mod.<name>', and the error
    # for '<name>' listed them without suggesting the one meant.
    wrapped = nn.DataParallel(nn.Sequential(nn.Conv2d(4, 16, 3), nn.Conv2d(16, 16, 3)))
    with pytest.raises(ValueError, match=r"unknown layer '1' \(did you mean module\.1\?\)"):
        apply_basis(wrapped, "1", 4)
    assert isinstance(apply_basis(wrapped, "module.1", 4).module[1], BasisConv2d)
    # a prefix ends at a dot: a typo that is the tail of many names ('onv1') is no
    # wrapper's name, and gets the nearest names, not every conv ending so
    with pytest.raises(ValueError, match=r"unknown layer 'onv1' \(did you mean conv1\?\)"):
        select_layers(build_model("resnet20"), ["onv1"])


def test_a_distributed_data_parallel_model_is_refused_naming_its_module(tmp_path):
    """Found in review: converting inside DistributedDataParallel worked without a word,
    but its gradient sync keeps the parameters it was built with: the basis layers' were
    never averaged across processes, and the second step failed with DDP's "parameters
    that were not used in producing loss", which names no conversion. The fix it names
    (convert .module, wrap again) trains."""
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1,
                            init_method=f"file://{tmp_path / 'store'}")
    try:
        wrapped = nn.parallel.DistributedDataParallel(
            nn.Sequential(nn.Conv2d(4, 16, 3), nn.Conv2d(16, 16, 3)))
        for call, fix in ((lambda: apply_basis(wrapped, "all", 4), "convert its .module"),
                          (lambda: apply_basis(wrapped, "all", 4, inplace=True),
                           "convert its .module"),
                          (lambda: to_dense(wrapped), "make dense its .module")):
            with pytest.raises(ConfigError, match=r"got a DistributedDataParallel model.*; "
                                                  + fix) as err:
                call()
            assert "\n" not in str(err.value)
        assert not basis_layers(wrapped)  # left as it was
        rewrapped = nn.parallel.DistributedDataParallel(apply_basis(wrapped.module, "1", 4))
        for _ in range(2):  # the second step is the one that failed
            rewrapped(torch.randn(2, 4, 8, 8)).sum().backward()
        assert all(p.grad is not None for p in rewrapped.parameters())
    finally:
        dist.destroy_process_group()


def test_a_compiled_distributed_data_parallel_model_is_refused_too(tmp_path):
    """Found in review: ``torch.compile(DistributedDataParallel(model))``, the order torch
    recommends (and this project's own step model), was converted inside, its
    ``_orig_mod.module.<name>`` layers never averaged, unsaid."""
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1,
                            init_method=f"file://{tmp_path / 'store'}")
    try:
        compiled = torch.compile(nn.parallel.DistributedDataParallel(
            nn.Sequential(nn.Conv2d(4, 16, 3), nn.Conv2d(16, 16, 3))))
        for call in (lambda: apply_basis(compiled, "all", 4, inplace=True),
                     lambda: to_dense(compiled)):
            with pytest.raises(ConfigError, match=r"got a DistributedDataParallel model "
                                                  r"\(compiled\).*its \._orig_mod\.module"):
                call()
        assert not basis_layers(compiled)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("convert", [True, False])
def test_a_conv_with_non_finite_weights_is_one_error_naming_it(bad, convert):
    """Found in review: fitting a conv with a NaN or inf weight failed inside LAPACK with
    "INTERNAL ASSERT FAILED ... report a bug to PyTorch" (and a fresh layer took a NaN
    scale); the model is left as it was."""
    model = build_model("resnet20", width=0.25)
    with torch.no_grad():
        model.layer2[0].conv1.weight[0, 0, 0, 0] = bad
    with pytest.raises(ConfigError, match=r"^layer 'layer2.0.conv1' has NaN or infinite weights"):
        apply_basis(model, "all", 0.5, convert=convert, inplace=True)
    assert not basis_layers(model)
    with pytest.raises(ConfigError, match=r"^the layer has NaN or infinite weights"):
        BasisConv2d.from_conv(model.layer2[0].conv1, 2)


def test_layers_that_are_not_names_are_one_clear_error():
    # Found by review: layers=None (the pipeline's "no layer") gave "'NoneType' object is
    # not iterable" from inside select_layers.
    for layers in (None, nn.Conv2d):
        with pytest.raises(ValueError, match="give 'all', a name, or a list of names"):
            apply_basis(Grouped(), layers, 0.25)


def test_layers_given_with_their_sizes_are_each_converted_at_its_size():
    """A name -> size mapping (what basis_report's rows give, or a user's own plan) converts
    each layer at its size, a count or a fraction, names and patterns alike; at a layer's
    full size its output is the dense conv's. (Until c7fbfcd its sizes were dropped: every
    layer got the default half; then it was refused, asking for one call a layer.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1),
                          nn.Sequential(nn.Conv2d(16, 16, 1), nn.Conv2d(16, 32, 1))).double()
    with pytest.warns(UserWarning, match="saves no compute"):  # (as asked: sizes to test)
        small = apply_basis(model, {"0": 8, "1": 0.25, "2.*": 0.5})
    assert {name: layer.num_basis for name, layer in basis_layers(small).items()} == {
        "0": 8, "1": 4, "2.0": 8, "2.1": 16}
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with pytest.warns(UserWarning, match="saves no compute"):  # (full size: the dense conv's)
        full = apply_basis(model, {"0": 1.0, "2.1": 32})
    assert [layer.num_basis for layer in basis_layers(full).values()] == [8, 32]
    torch.testing.assert_close(full(x), model(x))
    assert list(basis_layers(model)) == []  # (on a copy: the model as it was)
    with pytest.warns(UserWarning, match=r"^apply_basis: at the sizes given no selected "
                                         r"layer saves compute.*; give smaller bases$"):
        apply_basis(model, {"0": 8, "2.1": 32}, only_where_saves=True)


@pytest.mark.parametrize("sizes, others, error", [
    ({"0": 4, "1": 64}, {}, r"^layer '1': layers\['1'\] = 64 is out of range: valid is "
                            r"1\.\.32 \(its out_channels\); set layers\['1'\] to a count"),
    ({"*": 20}, {}, r"^layer '0': layers\['\*'\] = 20 is out of range: valid is 1\.\.16 "
                    r"\(its out_channels\); set layers\['\*'\] to a count in that range, or "
                    r"to a fraction in \(0, 1\] of each layer's out_channels$"),
    ({"0": 4, "1": 1.5}, {}, r"^layers\['1'\]=1\.5 as a fraction must be in \(0, 1\]"),
    ({"0": 4, "1": 0}, {}, r"^layers\['1'\]=0 as a count must be >= 1"),
    ({"0": 4, "*": 2}, {}, r"^apply_basis: layer '0' is given two sizes, 4 by '0' and 2 by "
                           r"'\*'; give it one$"),
    ({"0": 4, "00": 2}, {}, r"^unknown layer '00' \(did you mean 0\?\); valid names: 0, 1$"),
    ({"0": 4}, {"num_basis": 0.5}, r"^apply_basis: layers given with their sizes and "
                                   r"num_basis=0\.5 too; give each layer's size in the "
                                   r"mapping, or its names as a list with num_basis=0\.5$"),
    ({"0": 4}, {"max_error": 0.1}, r"and max_error=0\.1 too"),
    ({}, {}, "the layer list is empty")])
def test_a_bad_size_or_name_in_a_mapping_is_one_line_and_converts_no_layer(sizes, others,
                                                                           error):
    """Every size and name of a mapping is checked before any layer is converted: a bad
    one is one line naming it, and even in place the model is left as it was."""
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 32, 3))
    with pytest.raises(ConfigError, match=error):
        apply_basis(model, sizes, inplace=True, **others)
    assert list(basis_layers(model)) == []
    with pytest.raises(TypeError, match=r"layers\['1'\]='half' must be an int"):
        apply_basis(model, {"0": 4, "1": "half"}, inplace=True)


def test_an_entry_matching_only_basis_layers_is_warned_of_as_what_it_is():
    """Found in review: an entry of a mapping that matched only layers already in basis
    form warned "nothing is converted" while the mapping's other entries converted layers.
    Such an entry is named with its size, not applied; "nothing is converted" is said only
    when nothing is, as a layer list says it (which says nothing when others convert)."""
    model = apply_basis(nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 32, 3)), {"0": 4})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = apply_basis(model, {"0*": 2, "1": 8})
    assert [str(w.message) for w in caught] == [
        "layers['0*'] matches only layers already in basis form (0), left as they are: its "
        "size 2 is not applied (the other entries' layers are converted); to change their "
        "basis size, convert a dense copy of the model instead: apply_basis(to_dense(model), "
        "...)"]
    assert {name: layer.num_basis for name, layer in basis_layers(converted).items()} == {
        "0": 4, "1": 8}
    with pytest.warns(UserWarning, match=r"^'0\*' matches only layers already in basis form "
                                         r"\(0\), left as they are: nothing is converted; "):
        apply_basis(model, {"0*": 2})
    with pytest.warns(UserWarning, match=r"^'0\*' matches only layers already in basis form "
                                         r"\(0\), left as they are: it converts nothing \(the "
                                         r"other entries' layers are converted\); to change"):
        apply_basis(model, ["0*", "1"], 8)  # (a layer list's entry too: found in review)
    with warnings.catch_warnings():  # ("all" converts the dense layers: silent)
        warnings.simplefilter("error")
        apply_basis(model, "all", 8)


def test_a_mapping_under_a_callers_key_names_its_entries_under_that_key():
    """Found in review: apply_basis' ``keys`` names the layers where they come from
    (``selection.layers``), yet a mapping's entry was ``layers['1']`` in its errors and
    ``selection.layers: layers['0*']`` in its warning; each is the caller's key's entry."""
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 32, 3))
    keys = {"layers": "plan.layers"}
    with pytest.raises(ConfigError, match=r"^layer '1': plan\.layers\['1'\] = 64 is out of "
                                          r"range: .*; set plan\.layers\['1'\] to a count"):
        apply_basis(model, {"0": 4, "1": 64}, keys=keys)
    with pytest.raises(ConfigError, match=r"^plan\.layers\['1'\]=1\.5 as a fraction"):
        apply_basis(model, {"0": 4, "1": 1.5}, keys=keys)
    model = apply_basis(model, {"0": 4})
    with pytest.warns(UserWarning, match=r"^plan\.layers\['0\*'\] matches only layers already "
                                         r"in basis form \(0\), left as they are: its size 2 "
                                         r"is not applied"):
        apply_basis(model, {"0*": 2, "1": 8}, keys=keys)


def test_a_tied_conv_given_a_size_by_either_name_is_converted_once_under_both():
    """A conv registered twice (self.b = self.a) takes its size by either name, stays one
    layer under both, and two different sizes for its two names are refused."""
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU())
    model.add_module("2", model[0])
    small = apply_basis(model, {"2": 2})
    assert small[0] is small[2] and small[0].num_basis == 2
    with pytest.raises(ConfigError, match=r"layer '0' is given two sizes, 2 by '0' and 4 by "
                                          r"'2'"):
        apply_basis(model, {"0": 2, "2": 4})


def test_a_count_and_a_fraction_equal_in_python_for_one_layer_are_two_sizes():
    """Found in review: 1 == 1.0 in Python, but a count of 1 is one filter and a fraction
    1.0 all of them; a layer given both (a pattern and its name) took whichever came
    first, silently, instead of being refused as two sizes."""
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 32, 3))
    for sizes in ({"*": 1.0, "0": 1}, {"0": 1, "*": 1.0}):
        with pytest.raises(ConfigError, match=r"^apply_basis: layer '0' is given two sizes"):
            apply_basis(model, sizes)


def test_sizes_per_layer_are_refused_where_layers_take_names_only():
    """select_layers' other callers (the scan's candidates, a config's list) take names
    sized by one num_basis: a mapping there is refused, saying apply_basis takes one."""
    model = nn.Sequential(nn.Conv2d(8, 16, 3))
    with pytest.raises(ConfigError, match=r"^layers=\{'0': 4\} gives a size per layer, "
                                          r"which apply_basis takes; here layers takes names "
                                          r"only, all of one size$"):
        select_layers(model, {"0": 4})


def test_converting_again_keeps_basis_layers_and_refuses_to_resize_one_by_name():
    """apply_basis on a model that has basis layers: "all" (or a pattern) converts the dense
    convs and leaves the basis ones as they are; a basis layer named on its own is one line
    saying how to change its size; a name that is not a string is one line. (No test
    converted a partly converted model before the coverage review.)"""
    model = apply_basis(build_model("resnet8", width=0.25), ["conv1"], 0.5)
    kept = model.conv1
    again = apply_basis(model, "all", 0.25, inplace=False)
    assert again.conv1.num_basis == kept.num_basis == 2
    assert len(basis_layers(again)) == len(conv_layers(again)) == 7
    assert all(layer.num_basis == max(1, round(0.25 * layer.out_channels))
               for name, layer in basis_layers(again).items() if name != "conv1")
    with pytest.raises(ConfigError, match=r"^layer 'conv1' is already a BasisConv2d; to change "
                                          r"its basis size, convert a dense copy of the model "
                                          r"instead: apply_basis\(to_dense\(model\), \.\.\.\)$"):
        apply_basis(model, ["conv1"], 0.25, inplace=False)
    # (the advice works: a layer's to_conv(), which the error named before, is no model)
    assert apply_basis(to_dense(model), ["conv1"], 0.25).conv1.num_basis == 1
    with pytest.raises(ConfigError, match=r"^apply_basis: layer names must be strings, got 3$"):
        apply_basis(model, [3], 0.25, inplace=False)


def test_the_advice_to_resize_one_basis_layer_names_the_others_it_makes_dense():
    """Found in review: ``apply_basis(to_dense(model), ...)``, advised to resize one basis
    layer by name, made every other basis layer dense too, and the advice did not say so.
    It names them; followed as worded, the others are back at their sizes and weights."""
    model = apply_basis(build_model("resnet8", width=0.25).double(),
                        ["conv1", "layer1.0.conv1"], 0.5)
    with pytest.raises(ConfigError, match=r"apply_basis\(to_dense\(model\), \.\.\.\), which "
                                          r"makes its other basis layers dense too \(layer1\.0"
                                          r"\.conv1\): convert them again in it, at their sizes$"):
        apply_basis(model, ["conv1"], 0.25)
    kept = model.layer1[0].conv1
    resized = apply_basis(apply_basis(to_dense(model), ["conv1"], 0.25),
                          ["layer1.0.conv1"], kept.num_basis)
    assert {name: layer.num_basis for name, layer in basis_layers(resized).items()} == {
        "conv1": 1, "layer1.0.conv1": kept.num_basis}
    torch.testing.assert_close(resized.layer1[0].conv1.to_conv().weight,
                               kept.to_conv().weight)
    # found by a mutation test: a pattern matching basis layers alone names only the others
    # in its warning (not the ones it matched), and four others are three "and 1 more"
    with pytest.warns(UserWarning, match=r"makes its other basis layers dense too "
                                         r"\(layer1\.0\.conv1\): convert") as said:
        apply_basis(model, "conv*", 0.25)
    assert "(conv1, " not in str(said[0].message)
    five = apply_basis(build_model("resnet8", width=0.25),
                       ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1",
                        "layer2.0.conv2"], 0.5)
    with pytest.raises(ConfigError, match=r"dense too \(layer1\.0\.conv1, layer1\.0\.conv2, "
                                          r"layer2\.0\.conv1 and 1 more\): convert"):
        apply_basis(five, ["conv1"], 0.25)


def test_a_named_layer_that_cannot_be_converted_names_the_config_key_it_came_from():
    """Its siblings (an unknown layer, a pattern that matches none) open with the key the
    list came from; a basis layer or an unconvertible conv named in it did not."""
    keys = {"layers": "selection.layers"}
    model = apply_basis(build_model("resnet8", width=0.25), ["conv1"], 0.5)
    with pytest.raises(ConfigError, match=r"^selection.layers: layer 'conv1' is already a "
                                          r"BasisConv2d; "):
        apply_basis(model, ["conv1"], 0.25, keys=keys)
    with pytest.raises(ConfigError, match=r"^selection.layers: layer 'depthwise' is a grouped "
                                          r"conv"):
        apply_basis(Grouped(), ["depthwise"], 0.25, keys=keys)


def test_converting_a_fully_converted_model_again_says_nothing_is_converted():
    """A second ``apply_basis(model, "all", 0.25)`` on a model already all in basis form,
    meant to change the sizes, returned it unchanged without a word (found in review); a
    pattern that matches only basis layers now warns once, naming them and the fix."""
    model = apply_basis(build_model("resnet8", width=0.25), "all", 0.5)
    sizes = {name: layer.num_basis for name, layer in basis_layers(model).items()}
    with pytest.warns(UserWarning, match=r"^'all' matches only layers already in basis form "
                                         r"\(conv1, layer1\.0\.conv1, .*\), left as they are: "
                                         r"nothing is converted; .*: "
                                         r"apply_basis\(to_dense\(model\), \.\.\.\)$") as caught:
        again = apply_basis(model, "all", 0.25)
    assert len(caught) == 1
    assert {name: layer.num_basis for name, layer in basis_layers(again).items()} == sizes
    with warnings.catch_warnings():  # a pattern that also finds a dense conv converts it
        warnings.simplefilter("error")
        partly = apply_basis(build_model("resnet8", width=0.25), "conv1", 0.5)
        apply_basis(partly, "*conv1", 0.5)  # (conv1, in basis form, and the dense others)


def test_only_where_saves_leaves_unprofitable_layers_dense():
    model = build_model("resnet18")
    with pytest.warns(UserWarning, match="saves no compute") as caught:
        apply_basis(model, "all", 0.5, convert=False)
    assert len(caught) == 4 and "layer 'conv1': num_basis=32 saves no compute" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = apply_basis(model, "all", 0.5, convert=False, only_where_saves=True)
    dense = [n for n, m in conv_layers(kept).items() if isinstance(m, nn.Conv2d)]
    assert dense == ["conv1", "layer2.0.shortcut.0", "layer3.0.shortcut.0", "layer4.0.shortcut.0"]


def test_only_where_saves_that_leaves_every_layer_dense_says_so():
    """Found in review: the README's `apply_basis(model, "all", max_error=0.05,
    only_where_saves=True)` on a model none of whose layers saves at that size returned a
    dense copy without a word a script sees (each layer's reason is logged at INFO), while
    a count above every layer is refused as changing nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1))
    # the fix it names is the one that converts: a smaller basis, or a looser bound (a
    # max_error run was told to give a smaller basis, which it does not set; found in review)
    for size, fix in (({"num_basis": 0.9}, "give a smaller basis"),
                      ({"max_error": 0.01}, "give a larger max_error")):
        with pytest.warns(UserWarning, match=r"only_where_saves=True left them all dense and "
                                             r"the model returned has no basis layer; "
                                             + fix):
            kept = apply_basis(model, "all", only_where_saves=True, **size)
        assert not basis_layers(kept)
    # a conversion that converts some layers says nothing of the kind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_basis(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 64, 3)), "all", 0.25,
                    only_where_saves=True)


def test_only_where_saves_judges_the_combine_form_that_runs():
    """A 3-channel 3x3 conv (K = 27) with 64 outputs at m = 20: the split form does
    fewer multiply-adds than the dense conv (20*27 + 44*20 < 64*27), the stacked one
    does not (20*27 + 64*20 > 64*27), so only the split form is converted."""
    model = nn.Sequential(nn.Conv2d(3, 64, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a layer that saves is converted without a warning
        split = apply_basis(model, "all", 20, combine="split", only_where_saves=True,
                            convert=False)
    assert isinstance(split[0], BasisConv2d) and split[0].combine == "split"
    with pytest.warns(UserWarning, match="left them all dense"):
        stacked = apply_basis(model, "all", 20, only_where_saves=True, convert=False)
    assert type(stacked[0]) is nn.Conv2d
    # a layer fused with its norm combines stacked whatever `combine` says: judged so
    with pytest.warns(UserWarning, match="left them all dense"):
        fused = apply_basis(model, "all", 20, combine="split", only_where_saves=True,
                            convert=False, fuse_norm=True)
    assert type(fused[0]) is nn.Conv2d
    with pytest.warns(UserWarning, match="combine='split' applies only to layers without"):
        layer = BasisConv2d(3, 64, 3, 20, combine="split", fuse_norm=True)
    assert not basis_report(nn.Sequential(layer))[0]["saves_compute"]


def test_shared_coefficients_fit_each_layers_combined_filters_in_its_own_order():
    """Two convs whose filters are the same combinations of three filters each, at other
    positions in each conv: one shared matrix reproduces both exactly, so the joint fit
    must pair every layer's basis with its own combined filters in their stored order
    (not in the conv's channel order)."""
    g = torch.Generator().manual_seed(0)
    mix = torch.rand(5, 3, generator=g, dtype=torch.float64) * 0.15 + 0.05
    # two same-shaped convs (called one by one; the container is only for their names)
    model = nn.Sequential(*(nn.Conv2d(4, 8, 3, padding=1, bias=False) for _ in range(2))).double()
    places = {"0": [5, 1, 6], "1": [7, 3, 2]}  # where each conv keeps its three basis filters
    for name, basis_at in places.items():
        # descending norms, nearly orthogonal (K = 36): the greedy pick takes them in order
        basis = torch.randn(3, 36, generator=g, dtype=torch.float64)
        basis = basis / basis.norm(dim=1, keepdim=True) * torch.tensor([[30.0], [20.0], [10.0]],
                                                                       dtype=torch.float64)
        weight = torch.empty(8, 36, dtype=torch.float64)
        weight[basis_at] = basis
        weight[[c for c in range(8) if c not in basis_at]] = mix @ basis
        with torch.no_grad():
            model.get_submodule(name).weight.copy_(weight.reshape(8, 4, 3, 3))
    shared = apply_basis(model, ["0", "1"], 3, share_coefficients=True)
    assert shared[0].coefficients is shared[1].coefficients
    x = torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64)
    for name, basis_at in places.items():
        layer = shared.get_submodule(name)
        assert layer.basis_channels.tolist() == basis_at
        assert layer.reconstruction_error < 1e-12, name
        torch.testing.assert_close(layer(x), model.get_submodule(name)(x), rtol=1e-10, atol=1e-10)


@pytest.mark.device
def test_shared_coefficients_are_one_tensor_fitted_jointly(device):
    model = small_resnet18().to(device)
    own = apply_basis(model, "layer3.*.conv*", 0.25)
    shared = apply_basis(model, "layer3.*.conv*", 0.25, share_coefficients=True)
    layers = list(basis_layers(shared).values())
    assert len({id(layer.coefficients) for layer in layers}) == 1
    n_own = sum(p.numel() for p in own.parameters())
    n_shared = sum(p.numel() for p in shared.parameters())
    assert n_own - n_shared == 3 * (64 - 16) * 16
    assert model_cost(shared).params == n_shared
    own_err = [r["reconstruction_error"] for r in basis_report(own)]
    shared_report = basis_report(shared)
    assert shared_report[1]["shares_coefficients_of"] == "layer3.0.conv1"
    # one matrix for four layers fits worse than four, but it is a real fit, not noise
    assert all(s["reconstruction_error"] >= o - 1e-12 for s, o in zip(shared_report, own_err))
    assert all(s["reconstruction_error"] < 1.0 for s in shared_report)
    # what each layer reports is the error of the shared fit, not of its own fit before
    convs = dict(model.named_modules())
    for name, layer in basis_layers(shared).items():
        assert layer.reconstruction_error == pytest.approx(
            relative_error(layer.dense_weight(), convs[name].weight), rel=1e-9, abs=1e-12)
    assert {p.device.type for p in shared.parameters()} == {device.type}
    # low-rank: both factors are one tensor each
    low = basis_layers(apply_basis(model, "layer3.*.conv*", 0.25, share_coefficients=True,
                                   coefficient_rank=2)).values()
    assert len({id(layer.coefficients_left) for layer in low}) == 1
    assert len({id(layer.coefficients_right) for layer in low}) == 1


def test_a_coefficient_rank_that_saves_no_parameters_is_warned_of():
    # Found in review: the config says a rank means fewer parameters; from
    # r >= (C_out - m) * m / C_out its factors hold more than the full matrix, silently
    model = build_model("resnet20")  # layer1: 16 -> 16 channels, m = 8: full matrix 64
    with pytest.warns(UserWarning) as caught:  # one warning for the six layers of the shape
        apply_basis(model, "layer1.*", 0.5, coefficient_rank=4, convert=False)
    assert [str(w.message) for w in caught] == [
        "coefficient_rank=4: in layers with C_out=16 and m=8 its two factors hold 64 "
        "coefficients, no fewer than the full matrix's 64; ranks up to 3 save parameters "
        "there, null keeps the full matrix"]
    with pytest.warns(UserWarning, match=r"no rank saves parameters there"):  # m = 1
        apply_basis(model, "layer1.0.conv1", 1, coefficient_rank=1, convert=False)
    # m = 6: full matrix 60, not a multiple of 16; rank 3's 48 saves, so 3 is the largest
    with pytest.warns(UserWarning, match=r"hold 64 coefficients, no fewer than the full "
                                         r"matrix's 60; ranks up to 3 save"):
        apply_basis(model, "layer1.0.conv1", 6, coefficient_rank=4, convert=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_basis(model, "layer1.*", 0.5, coefficient_rank=3, convert=False)  # 48 < 64
        apply_basis(model, "layer1.*", 0.5, convert=False)


def test_the_saves_no_compute_warning_names_the_config_key_from_a_config():
    model = build_model("resnet20")
    with pytest.warns(UserWarning, match=r"pass only_where_saves=True to leave"):
        apply_basis(model, "conv1", 16, convert=False)
    with pytest.warns(UserWarning, match=r"set basis.only_where_saves=true to leave"):
        apply_basis(model, "conv1", 16, convert=False, keys=CONFIG_KEYS)


def test_coefficient_skip_schedule_skips_the_gradient_and_the_update():
    torch.manual_seed(0)
    model = apply_basis(build_model("resnet20", width=0.5), "layer*.conv*", 0.5, convert=False)
    schedule = CoefficientSkipSchedule(model, train_every=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    layer = model.layer1[0].conv1
    trained = []
    for step in range(4):
        active = schedule(step)
        before = layer.coefficients.detach().clone()
        # zeroed, not set to None: on a skipped step the schedule's own grad = None is what
        # keeps SGD's momentum and weight decay from moving the coefficients
        optimizer.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(x), y).backward()
        assert (layer.coefficients.grad is not None) == active
        assert layer.basis_weight.grad is not None
        optimizer.step()
        trained.append(not torch.equal(before, layer.coefficients.detach()))
    assert trained == [True, False, False, True]
    # a skipped step really does less backward work, exactly the coefficient gradients
    schedule(1)
    skipped = measure_flops(model, (2, 3, 16, 16))["backward_flops"]
    assert skipped == model_cost(model, (2, 3, 16, 16)).backward_flops
    schedule(0)
    full = measure_flops(model, (2, 3, 16, 16))["backward_flops"]
    assert full > skipped
    with pytest.raises(ValueError, match="train_every must be an int >= 1"):
        CoefficientSkipSchedule(model, 0)
    with pytest.raises(ValueError, match="no BasisConv2d layers"):
        CoefficientSkipSchedule(build_model("resnet20"), 2)


def test_a_skip_schedule_leaves_no_coefficient_frozen_after_its_loop():
    """Found in review: a loop that ended on a skipped step left the coefficients frozen
    (requires_grad=False) for good: a later phase without the schedule did not train them,
    and a schedule built later took them for frozen by the user (left them out, or refused
    the model). The user's own frozen coefficients stay frozen."""
    def model():
        torch.manual_seed(0)
        return apply_basis(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1),
                                         nn.Conv2d(16, 16, 3, padding=1),
                                         nn.Conv2d(16, 16, 3, padding=1)), ["1", "2"], 0.5)
    net = model()
    net[2].coefficients.requires_grad_(False)  # the user's
    schedule = CoefficientSkipSchedule(net, 4)
    schedule(1)  # the loop ends on a skipped step
    assert not net[1].coefficients.requires_grad
    later = CoefficientSkipSchedule(net, 4)  # (per epoch, after more conversions)
    assert [p is net[1].coefficients for p in later.parameters] == [True]
    later.restore()
    assert net[1].coefficients.requires_grad and not net[2].coefficients.requires_grad
    with CoefficientSkipSchedule(model(), 2) as schedule:
        schedule(1)
    assert all(p.requires_grad for p in schedule.parameters)
    # a model saved whole at a skipped step still has its coefficients to skip-train
    net = model()
    CoefficientSkipSchedule(net, 4)(3)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    assert len(CoefficientSkipSchedule(torch.load(buffer, weights_only=False), 4).parameters) == 2
    # and one converted further on a copy (apply_basis' default), or deep-copied (found in
    # review: the mark was the parameter's attribute, which deepcopy drops, so they never
    # trained again)
    net = model()
    CoefficientSkipSchedule(net, 4)(3)
    for copied in (apply_basis(net, ["0"], 0.5), copy.deepcopy(net)):
        schedule = CoefficientSkipSchedule(copied, 4)
        schedule(0)
        assert {id(p) for p in schedule.parameters} >= {id(copied[1].coefficients),
                                                         id(copied[2].coefficients)}
        assert copied[1].coefficients.requires_grad and copied[2].coefficients.requires_grad


def test_a_restored_skip_schedule_leaves_no_mark_that_overrides_a_later_freeze():
    """Found by mutation (restore leaving the layers marked as frozen by the schedule passed
    every test): after the loop the coefficients are the user's again, so ones the user
    then freezes stay frozen, for a later schedule and for to_dense alike."""
    torch.manual_seed(0)
    net = apply_basis(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1),
                                    nn.Conv2d(16, 16, 3, padding=1)), ["1"], 0.5)
    with CoefficientSkipSchedule(net, 2) as schedule:
        schedule(1)  # the loop ends on a skipped step
    net[1].requires_grad_(False)  # the user freezes the layer after it
    assert not to_dense(net)[1].weight.requires_grad
    with pytest.raises(ConfigError, match="every coefficient matrix of the model is frozen"):
        CoefficientSkipSchedule(net, 2)


def test_frozen_convs_stay_frozen_when_converted():
    """A fine-tuning recipe's frozen layers: converting must not make them train, and
    skip-training must not switch their coefficients on."""
    model = small_resnet18()
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    converted = apply_basis(model, ["layer1.0.conv1", "layer2.0.conv1"], 0.5)
    frozen, trained = converted.layer1[0].conv1, converted.layer2[0].conv1
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in trained.parameters())
    schedule = CoefficientSkipSchedule(converted, train_every=2)
    schedule(0)
    assert not frozen.coefficients.requires_grad and trained.coefficients.requires_grad
    # a shared matrix trains if any of its layers did
    shared = apply_basis(model, ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"], 0.5,
                         share_coefficients=True)
    assert not shared.layer1[0].conv1.coefficients.requires_grad
    model.layer1[1].conv1.weight.requires_grad_(True)
    shared = apply_basis(model, ["layer1.0.conv1", "layer1.1.conv1"], 0.5, share_coefficients=True)
    assert shared.layer1[0].conv1.coefficients.requires_grad
    assert not shared.layer1[0].conv1.basis_weight.requires_grad
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="every coefficient matrix of the model is frozen"):
        CoefficientSkipSchedule(apply_basis(model, "layer1.*", 0.5), 2)
    # a fresh layer (convert=False) trains as its conv did too (it was trainable, and the
    # savings tables, which count with fresh layers, charged a frozen conv's conversion
    # with weight gradients it never computes)
    model.layer2[0].conv1.weight.requires_grad_(True)
    fresh = apply_basis(model, ["layer1.0.conv1", "layer2.0.conv1"], 0.5, convert=False)
    assert not any(p.requires_grad for p in fresh.layer1[0].conv1.parameters())
    assert all(p.requires_grad for p in fresh.layer2[0].conv1.parameters())


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("wrap", ["prune", "weight_norm", "spectral_norm",
                                  "parametrizations.weight_norm",
                                  "parametrizations.spectral_norm"])
@pytest.mark.parametrize("no_grad", [False, True], ids=["grad", "no_grad"])
@pytest.mark.parametrize("convert", [True, False])
def test_a_conv_whose_weight_is_computed_trains_as_its_parameters_do(wrap, no_grad, convert):
    """Found in review: a layer trained as ``conv.weight.requires_grad`` said, but a weight
    that a hook or parametrization computes (pruning, weight or spectral norm) is a tensor
    made afresh, whose flag says only whether grad mode was on when it was made: the old
    hooks' weight is recomputed under no_grad before a conversion, and a parametrized one
    read inside ``torch.no_grad()``. Such a trainable conv became a frozen basis layer,
    which no optimizer then trained, silently. Its parameters (``weight_orig``,
    ``weight_g``/``weight_v``, the parametrization's ``original``) say whether it trains."""
    from torch.nn.utils import parametrizations, prune, spectral_norm, weight_norm
    wraps = {"prune": lambda c: prune.l1_unstructured(c, "weight", 0.5),
             "weight_norm": weight_norm, "spectral_norm": spectral_norm,
             "parametrizations.weight_norm": parametrizations.weight_norm,
             "parametrizations.spectral_norm": parametrizations.spectral_norm}
    for trainable in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 3), wraps[wrap](nn.Conv2d(16, 32, 3)))
        for p in model[1].parameters():
            p.requires_grad_(trainable)
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            converted = apply_basis(model, "1", 0.25, convert=convert)
        layer = converted[1]
        assert [p.requires_grad for p in (layer.basis_weight, layer.coefficients)] == \
            [trainable] * 2, trainable
        alone = BasisConv2d.from_conv(model[1], 0.25)
        assert alone.basis_weight.requires_grad == trainable


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("wrap", ["weight_norm", "parametrizations.weight_norm"])
def test_a_weight_norm_conv_with_a_frozen_magnitude_still_trains(wrap):
    """Found in a mutation round: a weight computed from two parameters trains while either
    does (a frozen magnitude ``g``, a trained direction ``v``), so its basis layer trains."""
    from torch.nn.utils import parametrizations, weight_norm

    conv = {"weight_norm": weight_norm,
            "parametrizations.weight_norm": parametrizations.weight_norm}[wrap](
        nn.Conv2d(16, 32, 3))
    magnitude = next(p for p in conv.parameters() if p.shape == (32, 1, 1, 1))
    magnitude.requires_grad_(False)
    model = apply_basis(nn.Sequential(nn.Conv2d(3, 16, 3), conv), "1", 0.25)
    assert model[1].basis_weight.requires_grad and model[1].coefficients.requires_grad


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_weight_computed_by_two_stacked_hooks_trains_as_its_parameters_do():
    """Review: spectral norm, then pruning of its ``weight_orig`` (two of torch's older
    hooks stacked): ``weight_orig`` is itself computed (``weight_orig_orig * mask``), and
    after the conversion's refresh under no_grad its own flag said False, so a trainable
    conv became a frozen basis layer (even converted with grad on). Its sources are
    followed down to the parameters."""
    from torch.nn.utils import prune, spectral_norm
    for trainable in (True, False):
        torch.manual_seed(0)
        conv = spectral_norm(nn.Conv2d(16, 32, 3))
        prune.l1_unstructured(conv, "weight_orig", 0.5)
        for p in conv.parameters():
            p.requires_grad_(trainable)
        layer = apply_basis(nn.Sequential(nn.Conv2d(3, 16, 3), conv), "1", 0.25)[1]
        assert [layer.basis_weight.requires_grad, layer.coefficients.requires_grad] == \
            [trainable] * 2, trainable


def test_dense_warmup_then_convert():
    """The warm-up half of skip-training: a briefly trained dense model is converted in
    place; at full rank nothing changes, below it the trained weights are approximated."""
    torch.manual_seed(0)
    model = build_model("resnet20", width=0.5).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (8,))
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    expected = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_basis(model, "layer*.conv*", 1.0, inplace=True)
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fused", [None, True], ids=["default", "fused"])
def test_the_optimizer_after_a_conversion_keeps_the_momentum_of_the_layers_left_alone(fused):
    # Found by audit: rebind_optimizer dropped every momentum buffer at the end of a dense
    # warm-up, also those of the norms, the head and the convs left dense, so a warm-up run
    # that converted no layer (only_where_saves) trained on differently from the dense run.
    # Found on an H200: fused SGD (optim.build_optimizer's on CUDA) refused the step after the
    # conversion, the new parameters having no buffer beside the others' (TypeError)
    torch.manual_seed(0)
    model = build_model("resnet8", width=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                                fused=fused)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=4)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    before = {p: optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    lr = optimizer.param_groups[0]["lr"]
    named = dict(model.named_parameters())
    apply_basis(model, "layer2.0.conv1", 0.5, inplace=True)
    rebind_optimizer(optimizer, model, named)
    converted = {id(p) for p in basis_layers(model)["layer2.0.conv1"].parameters()}
    assert optimizer.param_groups[0]["params"] == list(model.parameters())
    assert optimizer.param_groups[0]["lr"] == lr and optimizer.param_groups[0]["momentum"] == 0.9
    for p in model.parameters():
        if id(p) in converted:  # new parameters: no momentum yet
            assert torch.count_nonzero(optimizer.state[p]["momentum_buffer"]) == 0
        else:
            assert torch.equal(optimizer.state[p]["momentum_buffer"], before[p])
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    new = {p: p.detach().clone() for p in model.parameters() if id(p) in converted}
    optimizer.step()
    for p, old in new.items():  # a new buffer holds the first gradient, with weight decay
        torch.testing.assert_close(optimizer.state[p]["momentum_buffer"], p.grad + 5e-4 * old)
    scheduler.step()  # the schedule goes on from where it was
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.875)


class TiedConvs(nn.Module):
    """One conv registered under two names (weight tying by assignment), applied twice."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Conv2d(8, 8, 3, padding=1)
        self.decode = self.encode

    def forward(self, x):
        return self.decode(torch.relu(self.encode(x)))


@pytest.mark.parametrize("inplace", [False, True])
def test_a_conv_registered_under_two_names_is_replaced_under_both(inplace):
    # Found by audit: only the first name was replaced; the other kept the dense conv, so
    # the model ran it dense, and training untied the two.
    torch.manual_seed(0)
    model = TiedConvs().double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    expected = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # full rank saves nothing, and says so
        converted = apply_basis(model, "all", 8, inplace=inplace)
    assert isinstance(converted.decode, BasisConv2d) and converted.decode is converted.encode
    assert (converted is model) == inplace
    torch.testing.assert_close(converted(x), expected, rtol=1e-10, atol=1e-10)
    # either name selects the layer, and so does a pattern that matches only the second
    for layers in ("decode", "dec*"):
        tied = apply_basis(TiedConvs(), layers, 2)
        assert isinstance(tied.decode, BasisConv2d) and tied.decode is tied.encode


def test_a_model_torch_cannot_copy_asks_for_inplace():
    # Found by audit: a conv pruned with torch.nn.utils.prune (its weight computed by a
    # hook) failed in copy.deepcopy with torch's "Only Tensors created explicitly by the
    # user" and a deep trace, which does not say that apply_basis copies the model.
    # A pruned conv's weight is now recomputed (without a graph) before the copy, so that
    # model copies; a tensor with a graph held elsewhere in the model still cannot.
    import torch.nn.utils.prune as prune
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3))
    prune.l1_unstructured(model[1], "weight", 0.5)
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)  # a forward with a graph: the weight is no leaf
    model.scale = torch.ones(1, requires_grad=True) * 2
    with pytest.raises(ValueError, match="cannot be copied.*inplace=True"):
        apply_basis(model, "1", 4)
    del model.scale
    with pytest.warns(UserWarning, match="saves no compute"):  # full rank, to compare
        copied = apply_basis(model, "1", 16)
    torch.testing.assert_close(copied(x), expected, rtol=1e-4, atol=1e-5)
    pruned = model[1].weight.detach().clone()
    with pytest.warns(UserWarning, match="saves no compute"):
        apply_basis(model, "1", 16, inplace=True)
    torch.testing.assert_close(model[1].dense_weight(), pruned)  # the pruned weight
    # the pruning hook, which recomputes a weight the basis layer has not, stays behind
    assert not model[1]._forward_pre_hooks
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


class _LockedRecorder:
    """A feature recorder whose forward hook is a bound method of an object holding a lock
    (a thread-safe logger, a writer with an open file): Python cannot copy it."""

    def __init__(self):
        import threading
        self.lock, self.shapes = threading.Lock(), []

    def hook(self, module, args, out):
        with self.lock:
            self.shapes.append(tuple(out.shape))


def test_a_model_python_cannot_copy_is_one_clear_error_too():
    # Found in review: a hook (or attribute) that Python cannot copy made apply_basis,
    # to_dense and model_cost fail in copy.deepcopy with a bare "TypeError: cannot pickle
    # '_thread.lock' object" and a deep trace, not saying that a copy was made nor how to
    # avoid it (only torch's RuntimeError was turned into the one-line error)
    model = build_model("resnet8", width=0.25)
    model.layer1[0].conv1.register_forward_hook(_LockedRecorder().hook)
    with pytest.raises(ConfigError, match="apply_basis: the model cannot be copied "
                                          r"\(cannot pickle.*inplace=True"):
        apply_basis(model, "layer3.*", 0.5)
    with pytest.raises(ConfigError, match="to_dense: the model cannot be copied.*inplace=True"):
        to_dense(model)
    with pytest.raises(ConfigError, match="model_cost: the model cannot be copied"):
        model_cost(model, (1, 3, 16, 16))
    converted = apply_basis(model, "layer3.*", 0.5, inplace=True)  # the fix it names works
    assert set(basis_layers(converted)) == {"layer3.0.conv1", "layer3.0.conv2"}


class Hooked(nn.Module):
    """A conv with every kind of hook a user registers to watch or change it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.seen = []
        self.handles = [
            self.conv.register_forward_pre_hook(lambda m, args: self.seen.append(("pre", m))),
            self.conv.register_forward_hook(
                lambda m, args, out: self.seen.append(("forward", m, out.detach().clone()))),
            self.conv.register_forward_hook(lambda m, args, kwargs, out: out * 2,
                                            with_kwargs=True),
            self.conv.register_full_backward_hook(
                lambda m, grad_in, grad_out: self.seen.append(("backward", m)))]

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("inplace", [True, False])
def test_a_converted_conv_keeps_its_forward_and_backward_hooks(inplace):
    # Found by audit: the basis layer replaced the conv without its hooks, so a user's
    # feature extraction or activation statistics silently stopped.
    torch.manual_seed(0)
    model = Hooked().double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    expected = model(x)
    with pytest.warns(UserWarning, match="saves no compute"):  # full rank, to compare
        converted = apply_basis(model, "conv", 16, inplace=inplace)
    layer = converted.conv
    seen = model.seen  # a copy's hooks are the same functions: they report to the original
    seen.clear()
    out = converted(x)
    out.sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)  # the doubling hook ran
    assert [event[0] for event in seen] == ["pre", "forward", "backward"]
    assert all(event[1] is layer for event in seen)
    torch.testing.assert_close(seen[1][2] * 2, out.detach(), rtol=1e-10, atol=1e-10)
    if inplace:  # the handles the conv's register calls returned still remove them
        for handle in model.handles:
            handle.remove()
        assert not (layer._forward_pre_hooks or layer._forward_hooks or layer._backward_hooks)


def test_a_converted_conv_keeps_a_forward_hook_that_is_always_called():
    """A hook registered with ``always_call=True`` still runs when its layer's forward
    raises (found by a mutation test of model_copy: the table of such hooks left out of
    HOOK_TABLES made it an ordinary hook of the basis layer)."""
    conv = nn.Conv2d(8, 16, 3, padding=1)
    called = []
    conv.register_forward_hook(lambda m, args, out: called.append(type(m).__name__),
                               always_call=True)
    model = apply_basis(nn.Sequential(conv), "0", 4)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 3, 6, 6))  # channels the conv does not take
    assert called == ["BasisConv2d"]


@pytest.mark.filterwarnings("ignore:.*weight_norm.* is deprecated:FutureWarning")
def test_weight_norm_stays_behind_and_state_dict_hooks_are_named():
    torch.manual_seed(0)
    conv = nn.utils.weight_norm(nn.Conv2d(8, 16, 3, padding=1))
    calls = []
    conv.register_forward_hook(lambda m, args, out: calls.append(m))
    conv._register_state_dict_hook(lambda m, state, prefix, local: state)
    model = nn.Sequential(conv)
    x = torch.randn(2, 8, 6, 6)
    expected = model(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_basis(model, "0", 16, inplace=True)
    assert any("'0': its state-dict hooks are not carried" in str(w.message) for w in caught)
    calls.clear()
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    assert calls == [model[0]]  # the user's hook came along, the weight-norm one did not


@pytest.mark.parametrize("register", ["register_state_dict_pre_hook",
                                      "register_load_state_dict_post_hook"])
def test_each_kind_of_state_dict_hook_left_behind_is_named(register):
    """Found by a mutation test of hook_transfer: a table left out of the check (the
    load post-hooks) lost the user's hook without the warning."""
    conv = nn.Conv2d(8, 16, 3, padding=1)
    getattr(conv, register)(lambda *args: None)
    with pytest.warns(UserWarning, match="'0': its state-dict hooks are not carried"):
        apply_basis(nn.Sequential(conv), "0", 16, inplace=True)


def test_a_replaced_weight_norm_conv_keeps_its_weight_hook():
    """Found by a mutation test of hook_transfer: with the weight hook not kept on the
    replaced conv, a user who calls it on purpose ran a weight its magnitude and direction
    no longer computed, and ``remove_weight_norm`` on it raised "not found"."""
    torch.manual_seed(0)
    conv = nn.utils.weight_norm(nn.Conv2d(8, 16, 3, padding=1, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_basis(nn.Sequential(conv), "0", 16, inplace=True)
        x = torch.randn(2, 8, 6, 6)
        before = conv(x)
        with torch.no_grad():
            conv.weight_g.mul_(2)
        torch.testing.assert_close(conv(x), 2 * before)
    nn.utils.remove_weight_norm(conv)

class TiedWeights(nn.Module):
    """Two convs, of other strides, that share one weight tensor (and one bias)."""

    def __init__(self):
        super().__init__()
        self.fine = nn.Conv2d(8, 8, 3, padding=1)
        self.coarse = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.coarse.weight, self.coarse.bias = self.fine.weight, self.fine.bias

    def forward(self, x):
        return self.coarse(torch.relu(self.fine(x)))


@pytest.mark.parametrize("convert", [True, False])
def test_convs_that_share_a_weight_share_their_basis_parameters(convert):
    # Found by audit: each conv got its own basis filters and coefficients, so the model had
    # twice the parameters and training silently untied the two.
    torch.manual_seed(0)
    model = TiedWeights().double()
    converted = apply_basis(model, "all", 4, convert=convert)
    fine, coarse = converted.fine, converted.coarse
    assert fine.basis_weight is coarse.basis_weight and fine.coefficients is coarse.coefficients
    assert fine.bias is coarse.bias and torch.equal(fine.output_index, coarse.output_index)
    assert sum(p.numel() for p in converted.parameters()) == 4 * 72 + 4 * 4 + 8
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    optimizer = torch.optim.SGD(converted.parameters(), lr=0.1)
    converted(x).sum().backward()
    optimizer.step()
    torch.testing.assert_close(fine.dense_weight(), coarse.dense_weight(), rtol=0, atol=0)
    with pytest.warns(UserWarning, match="'coarse'.*shares its weight and bias with 'fine'"):
        apply_basis(model, "fine", 4, convert=convert)


def test_a_bias_shared_with_a_layer_left_dense_is_warned_of():
    """Found in review: only a shared weight was warned of; a conv whose bias alone another
    module shares (``b.bias = a.bias``) was converted into a new bias without a word, and
    the two then trained apart."""
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(8, 16, 3))
    model[1].bias = model[0].bias
    with pytest.warns(UserWarning, match=r"^layer '1' shares its bias with '0', which is "
                                         r"converted: the two no longer share it"):
        apply_basis(model, "0", 4)


def test_convs_whose_weight_a_parametrization_computes_are_never_tied():
    """Found in review: the tie check keyed on id(conv.weight), which a parametrization
    (weight_norm, spectral_norm) makes afresh at each read; freed, its id was the next
    conv's, and unrelated convs shared basis filters (a full-rank output off by ~1)."""
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    model = nn.Sequential(*[weight_norm(nn.Conv2d(4, 4, 3, padding=1)) for _ in range(4)]).double()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = apply_basis(model, "all", 1.0)
    # the parametrization's own state-dict hook is no loss to warn of (full rank saves none)
    assert [str(w.message) for w in caught if "hooks" in str(w.message)] == []
    filters = {id(layer.basis_weight) for layer in converted}
    assert len(filters) == 4
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(converted(x), model(x))


def test_a_coefficient_rank_is_checked_on_the_layers_converted_only():
    """Found in review: a 1-channel head that only_where_saves leaves dense was refused for
    coefficient_rank=8 before it was skipped."""
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(),
                          nn.Conv2d(64, 1, 1))
    converted = apply_basis(model, "all", 0.25, coefficient_rank=8, only_where_saves=True,
                            convert=False)
    assert [type(m).__name__ for m in converted[::2]] == ["BasisConv2d"] * 2 + ["Conv2d"]
    assert converted[2].coefficient_rank == 8


@pytest.mark.parametrize("combine", ["split", "stacked"])
def test_a_converted_model_exports_with_torch_export(combine):
    """Deployment: ``torch.export`` takes a basis model as it is (no ``to_conv`` first); the
    exported program computes what the eager model does."""
    torch.manual_seed(0)
    model = apply_basis(build_model("resnet20", width=0.25).eval(), "layer*", 0.5,
                        combine=combine)
    x = torch.randn(2, 3, 16, 16)
    exported = torch.export.export(model, (x,))
    assert any("conv2d" in str(node.target) for node in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:combine='fused' needs")
@pytest.mark.parametrize("combine", ["stacked", "fused", "auto"])
def test_a_converted_model_traces_and_exports_with_a_dynamic_batch(combine):
    """Found in review: torch.jit.trace failed for combine='fused' (its trace, checked
    under no_grad, differed) and 'auto' (it timed its forms inside the trace), and
    torch.export with a dynamic batch failed for 'auto' (a symbolic size as its key)."""
    torch.manual_seed(0)
    model = nn.Sequential(BasisConv2d(8, 16, 3, 4, padding=1, combine=combine)).eval()
    x = torch.randn(2, 8, 10, 10)
    torch.testing.assert_close(torch.jit.trace(model, x)(x), model(x))
    exported = torch.export.export(model, (x,),
                                   dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
    torch.testing.assert_close(exported.module()(x[:1]), model(x[:1]))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm", "prune"])
def test_converts_the_weight_a_hook_computes_right_after_loading(wrap):
    """torch's older weight norm, spectral norm and pruning keep the weight as a plain
    attribute that a forward recomputes: after load_state_dict it is stale, and the
    full-rank conversion fitted it (wrong output) until a forward had run."""
    from torch.nn.utils import prune, spectral_norm, weight_norm

    def wrapped():
        conv = nn.Conv2d(4, 8, 3, padding=1)
        return nn.Sequential({"weight_norm": weight_norm, "spectral_norm": spectral_norm,
                              "prune": lambda c: prune.l1_unstructured(c, "weight", 0.5)}[wrap](
                                  conv)).eval()

    torch.manual_seed(0)
    trained = wrapped()
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.mul_(3).add_(1)
    model = wrapped()
    model.load_state_dict(trained.state_dict())  # no forward since: its weight is stale
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad(), warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        expected = trained(x)
        converted = apply_basis(model, "all", 8)
        torch.testing.assert_close(converted(x), expected)
        layer = BasisConv2d.from_conv(wrapped()[0].eval(), 8)  # from_conv alone, fresh
        assert layer.reconstruction_error < 1e-6
    # torch's own state-dict hooks (spectral norm's) are no user hooks lost: no warning
    assert not [w for w in said if "state-dict hooks" in str(w.message)]


@pytest.mark.parametrize("how", ["from_conv", "apply_basis", "max_error", "shared"])
def test_a_spectral_norm_conv_in_training_converts_to_its_eval_weight_and_is_left_as_it_was(how):
    """Found in review: a parametrized spectral norm runs a power iteration at each read of
    the weight in training mode, and a conversion reads it several times (check, size, fit),
    so a training model's conv was fitted some iterations ahead of the model: at full rank
    neither its eval output nor its next forward's (off by ~1e-3), and the user's model,
    converted on a copy or by from_conv, had its iteration state advanced. The weight is read
    as in eval (what old-style spectral norm's conversion reads, and a loaded model
    computes), and the model keeps its state and modes."""
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    model = nn.Sequential(*[parametrizations.spectral_norm(nn.Conv2d(4, 8, 3, padding=1))
                            for _ in range(2)]).double()
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = [copy.deepcopy(conv).eval()(x) for conv in model]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (full rank saves no compute; constraints dropped)
        if how == "from_conv":
            layers = [BasisConv2d.from_conv(conv, 8) for conv in model]
        else:
            options = {"max_error": 0.0} if how == "max_error" else {"num_basis": 8}
            layers = list(apply_basis(model, "all", share_coefficients=how == "shared",
                                      **options))
    for layer, output in zip(layers, expected):
        torch.testing.assert_close(layer(x), output)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(module.training for module in model.modules())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_max_error_sizes_a_layer_by_the_weight_a_hook_computes_right_after_loading():
    """The basis size, too, comes from the weight a forward computes, not the stale one
    load_state_dict leaves (here: trained filters all alike, one basis filter; the stale
    random ones would need all eight)."""
    from torch.nn.utils import weight_norm

    torch.manual_seed(0)
    trained = nn.Sequential(weight_norm(nn.Conv2d(4, 8, 3, padding=1)))
    with torch.no_grad():
        trained[0].weight_v.copy_(torch.randn(1, 4, 3, 3).expand(8, -1, -1, -1))
    model = nn.Sequential(weight_norm(nn.Conv2d(4, 8, 3, padding=1)))
    model.load_state_dict(trained.state_dict())  # no forward since: its weight is stale
    assert apply_basis(model, "all", max_error=1e-4)[0].num_basis == 1


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_a_torchscript_model_is_refused_with_the_fix():
    """apply_basis and to_dense refuse it in one wording (they were worded apart)."""
    model = nn.Sequential(nn.Conv2d(8, 16, 3))
    for compiled in (torch.jit.script(model), torch.jit.trace(model, torch.randn(1, 8, 5, 5))):
        for function, call in (("apply_basis", lambda: apply_basis(compiled, "all", 4)),
                               ("to_dense", lambda: to_dense(compiled))):
            with pytest.raises(ConfigError, match=rf"^{function} got a TorchScript module "
                                                  rf"\(torch.jit.script or trace\), whose layers "
                                                  rf"cannot be replaced; call {function} on the "
                                                  rf"eager model, then script or trace the "
                                                  rf"result$"):
                call()


def test_a_model_on_the_meta_device_is_fitted_only_once_it_has_weights():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1))
    with pytest.raises(ConfigError, match="layer '0' has no weights yet .meta device.*load"):
        apply_basis(model, "all", 4)
    fresh = apply_basis(model, "all", 4, convert=False)  # fresh layers need no values
    assert isinstance(fresh[0], BasisConv2d) and fresh[0].basis_weight.is_meta


class PlainListPath(nn.Module):
    """Its convs (or basis layers, ``basis=True``) are modules, but its forward reaches
    them through a plain list."""

    def __init__(self, basis: bool = False):
        super().__init__()
        self.a, self.b = ((BasisConv2d(4, 8, 3, 2), BasisConv2d(8, 8, 3, 2)) if basis
                          else (nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3)))
        self.path = [self.a, self.b]

    def forward(self, x):
        for conv in self.path:
            x = torch.relu(conv(x))
        return x


@pytest.mark.parametrize("inplace", [True, False])
def test_a_replaced_conv_still_called_warns_and_no_longer_runs_the_users_hooks(inplace):
    """Found in review: a conv the forward reaches through a plain list stays there, so the
    "converted" model ran its old dense convs (untrained: their weights left parameters())
    without a word, and the hooks it shared with its basis layer fired on it."""
    model = PlainListPath()
    fired = []
    model.a.register_forward_hook(lambda m, args, out: fired.append(type(m).__name__))
    converted = apply_basis(model, "all", 2, inplace=inplace)
    with pytest.warns(UserWarning) as caught:
        converted(torch.randn(1, 4, 8, 8))
    assert sorted(str(w.message).split(" was ")[0] for w in caught) == ["conv 'a'", "conv 'b'"]
    assert "still called" in str(caught[0].message) and "nn.ModuleList" in str(caught[0].message)
    assert fired == []  # the hook moved to the basis layer, which this forward never calls
    converted.a(torch.randn(1, 4, 8, 8))
    assert fired == ["BasisConv2d"]


def test_a_replaced_conv_no_longer_runs_the_users_backward_hooks():
    """Found by a mutation test of hook_transfer: every hook table of the replaced conv is
    its own again, the backward ones too (a shared one fired the user's full backward hook
    on the old conv), and so is its kind of backward hook (an old-style one is taken)."""
    conv = nn.Conv2d(4, 8, 3, padding=1)
    fired = []
    conv.register_full_backward_hook(lambda m, grad_in, grad_out: fired.append(type(m).__name__))
    model = apply_basis(nn.Sequential(conv), "0", 4, inplace=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv(torch.randn(1, 4, 8, 8, requires_grad=True)).sum().backward()
        assert fired == []
        conv.register_backward_hook(lambda m, grad_in, grad_out: fired.append("old conv's"))
    model(torch.randn(1, 4, 8, 8, requires_grad=True)).sum().backward()
    assert fired == ["BasisConv2d"]  # (a hook put on the old conv is not the layer's)


def test_a_converted_model_calls_no_replaced_conv():
    """The warning has no false alarm on a model that holds its convs as modules."""
    model = build_model("resnet20", width=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_basis(model, "all", 0.5, inplace=True, only_where_saves=True)(
            torch.randn(2, 3, 8, 8))


def test_an_empty_layer_list_and_a_conv1d_say_what_to_do():
    model = nn.Sequential(nn.Conv1d(3, 8, 3), nn.Conv2d(3, 8, 3))
    with pytest.raises(ConfigError, match=r"empty; .*\(if pick_layers chose none, keep the "
                                          r"dense model\)$"):
        apply_basis(model, [], 2)
    with pytest.raises(ConfigError, match=r"layer '0' is a Conv1d, only nn.Conv2d layers "
                                          r"convert; valid names: 1$"):
        apply_basis(model, "0", 2)


def test_an_exact_name_with_pattern_characters_is_taken_literally():
    """Found in review: a ModuleDict key may hold brackets, and "conv[12]" was matched as a
    pattern: conv1 and conv2 were converted, conv[12] left dense, without a word."""
    model = nn.ModuleDict({"conv[12]": nn.Conv2d(16, 32, 3), "conv1": nn.Conv2d(32, 32, 3),
                           "conv2": nn.Conv2d(32, 32, 3)})
    converted = apply_basis(model, "conv[12]", 0.25)
    assert isinstance(converted["conv[12]"], BasisConv2d)
    assert type(converted["conv1"]) is nn.Conv2d and type(converted["conv2"]) is nn.Conv2d
    both = apply_basis(model, "conv[12]*", 0.25)  # not a name: a pattern, as before
    assert [type(both[k]).__name__ for k in ("conv[12]", "conv1", "conv2")] == \
        ["Conv2d", "BasisConv2d", "BasisConv2d"]


@pytest.mark.filterwarnings("ignore:a basis layer with fuse_norm=True runs unfused")
@pytest.mark.parametrize("options", [{"combine": "split"}, {"fuse_norm": True},
                                     {"coefficient_rank": 2}])
def test_to_dense_gives_a_trained_basis_model_back_as_plain_convs(options):
    """Deployment: one call makes every basis layer the nn.Conv2d it computes, for tools
    that need plain convs; the outputs stay, the model given is left as it was."""
    model = apply_basis(small_resnet18(), "layer*", 0.25, **options)
    model.layer1[0].conv1.register_forward_hook(lambda m, i, out: seen.append(out.shape))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    seen: list = []
    dense = to_dense(model)
    assert not basis_layers(dense) and len(basis_layers(model)) == 19
    assert all(type(m) is nn.Conv2d for m in conv_layers(dense).values())
    torch.testing.assert_close(dense(x), model(x))
    assert len(seen) == 2  # the hook moved with the layer


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_to_dense_keeps_tied_layers_tied_frozen_layers_frozen_and_the_mode():
    """And the dense model scripts (torch.jit.script refuses a basis layer)."""
    tied = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    tied.append(tied[0])  # registered twice
    tied[0].weight.requires_grad_(False)
    model = apply_basis(tied.train(), "all", 4)
    assert to_dense(model, inplace=True) is model
    assert model[0] is model[2] and type(model[0]) is nn.Conv2d and model[0].training
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))
    with pytest.raises(ConfigError, match="single basis layer; use its to_conv"):
        to_dense(BasisConv2d(4, 8, 3, 2))


@pytest.mark.parametrize("frozen", ["basis", "coefficients", "skipped", "basis+skipped", "all"])
def test_a_dense_weight_trains_while_any_of_its_parts_does(frozen):
    """Found in review: to_dense took the conv's ``requires_grad`` from the basis filters
    alone, so a layer whose coefficients alone fine-tune (frozen basis), also on a step its
    skip schedule skipped, became a frozen conv that no optimizer trains. The weight is
    made of both parts and trains while either does, as apply_basis reads a conv's weight
    computed from two parameters; only a layer frozen whole gives a frozen conv."""
    model = apply_basis(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3)), "1", 4)
    layer = model[1]
    if "basis" in frozen or frozen == "all":
        layer.basis_weight.requires_grad_(False)
    if frozen in ("coefficients", "all"):
        layer.coefficients.requires_grad_(False)
    if "skipped" in frozen:
        CoefficientSkipSchedule(model, 2)(1)
        assert not layer.coefficients.requires_grad
    assert to_dense(model)[1].weight.requires_grad == (frozen != "all")
    assert to_dense(model)[1].bias.requires_grad  # the bias is its own part


def test_a_dense_weight_trains_while_low_rank_coefficients_alone_do():
    """Found by mutation (the coefficients of a low-rank layer, ``coefficient_rank``, not
    read passed every test): its two factors are its coefficients, so a frozen basis with
    trainable factors gives a conv that trains, and only all three frozen a frozen conv."""
    model = apply_basis(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3)), "1", 4,
                        coefficient_rank=2)
    layer = model[1]
    layer.basis_weight.requires_grad_(False)
    assert to_dense(model)[1].weight.requires_grad
    layer.coefficients_left.requires_grad_(False)
    layer.coefficients_right.requires_grad_(False)
    assert not to_dense(model)[1].weight.requires_grad


@pytest.mark.parametrize("inplace", [False, True])
def test_to_dense_of_a_spectral_norm_basis_in_training_gives_its_eval_weight(inplace):
    """Found by mutation (to_dense reading the parametrized basis in training mode passed
    every test): spectral norm's power iteration runs at each read in training, so the
    dense conv was one iteration ahead of the layer (~1e-6 here). It is the weight the layer
    computes in eval, as apply_basis reads a conv's, and the layer's mode is kept."""
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    model = apply_basis(nn.Sequential(nn.Conv2d(4, 8, 3, bias=False)), "all", 4)
    layer = model[0]
    parametrizations.spectral_norm(layer, "basis_weight")
    model(torch.randn(1, 4, 6, 6))  # (one power iteration: far from converged)
    with torch.no_grad():
        expected = layer.eval().dense_weight().clone()
    layer.train()
    with pytest.warns(UserWarning, match=r"^to_dense: the tensors of basis layers '0' "
                                         r"\(SpectralNorm\)"):
        dense = to_dense(model, inplace=inplace)
    torch.testing.assert_close(dense[0].weight, expected, rtol=0, atol=0)
    assert layer.parametrizations.training


@pytest.mark.parametrize("inplace", [True, False])
def test_a_basis_layer_still_called_after_to_dense_warns_and_no_longer_runs_the_users_hooks(
        inplace):
    """Found in review: as apply_basis's replaced conv (see the test above), a basis layer
    the forward reaches through a plain list stays there after to_dense, which ran the
    basis form silently, and the hooks it shared with its new conv fired on it."""
    model = PlainListPath(basis=True)
    fired = []
    model.a.register_forward_hook(lambda m, args, out: fired.append(type(m).__name__))
    dense = to_dense(model, inplace=inplace)
    with pytest.warns(UserWarning) as caught:
        dense(torch.randn(1, 4, 8, 8))
    assert sorted(str(w.message).split(" was ")[0] for w in caught) == \
        ["basis layer 'a'", "basis layer 'b'"]
    assert "still called" in str(caught[0].message) and caught[0].filename == __file__
    assert fired == []  # the hook moved to the conv, which this forward never calls
    dense.a(torch.randn(1, 4, 8, 8))
    assert fired == ["Conv2d"]


def test_to_dense_of_a_pruned_basis_computes_the_pruned_weight_and_leaves_the_pruning_behind():
    """Found in review: pruning a basis layer's filters (``prune.l1_unstructured(layer,
    "basis_weight", 0.5)``) and then ``to_dense`` gave the dense conv the pruning's hook,
    whose first call failed ("'Conv2d' object has no attribute 'basis_weight_mask'"), and
    the weight as the last forward computed it (stale after an optimizer step). As
    apply_basis leaves a conv's pruning with the conv, said in a warning, to_dense leaves
    the layer's with the layer, from the weight a forward would compute now."""
    torch.manual_seed(0)
    model = apply_basis(nn.Sequential(nn.Conv2d(4, 8, 3, bias=False)), "all", 4)
    layer = model[0]
    nn.utils.prune.l1_unstructured(layer, "basis_weight", 0.5)
    x = torch.randn(2, 4, 6, 6)
    pruned = model(x)
    with torch.no_grad():  # a step: the pruned weight is recomputed at the next forward
        layer.basis_weight_orig.mul_(2)
    with pytest.warns(UserWarning, match=r"^to_dense: the tensors of basis layers '0' "
                                         r"\(L1Unstructured\) are computed by pruning"):
        dense = to_dense(model, inplace=True)  # (a pruned model cannot be deep-copied)
    assert type(dense[0]) is nn.Conv2d and not dense[0]._forward_pre_hooks
    torch.testing.assert_close(dense(x), 2 * pruned)
    assert dense[0].weight.requires_grad  # (its computed tensor, remade under no_grad, not)
    nn.utils.prune.remove(layer, "basis_weight")  # the replaced layer keeps its pruning


def test_to_dense_keeps_convs_that_share_a_weight_sharing_one():
    """apply_basis gives convs that share one weight one set of basis parameters, so that
    they stay tied in training; to_dense keeps them tied as well (it made each its own
    weight: the round trip untied them silently, twice the parameters, and training the
    dense model moved the two apart)."""
    torch.manual_seed(0)
    model = TiedWeights().double()
    dense = to_dense(apply_basis(model, "all", 4))
    assert dense.fine.weight is dense.coarse.weight and dense.fine.bias is dense.coarse.bias
    assert sum(p.numel() for p in dense.parameters()) == sum(p.numel() for p in model.parameters())


def test_to_dense_of_something_not_a_module_is_one_clear_error():
    """As apply_basis does, to_dense refuses a list of layers with a TypeError naming what
    it needs (it failed deep inside: "'list' object has no attribute 'named_modules'")."""
    with pytest.raises(TypeError, match="needs an nn.Module"):
        to_dense([BasisConv2d(4, 8, 3, 2)])


def test_a_model_sized_per_layer_loads_into_its_architecture_rebuilt_from_its_report(tmp_path):
    """docs/basis-convolutions.md's recipe: the sizes basis_report gives, in one call with
    convert=False, then load_state_dict (strict) gives the saved model's outputs."""
    def make_model():
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(32, 32, 3, padding=1))

    torch.manual_seed(0)
    small = apply_basis(make_model(), "all", max_error=0.6, only_where_saves=True)
    sizes = {row["name"]: row["num_basis"] for row in basis_report(small)}
    assert len(set(sizes.values())) == 3  # sized per layer: no one size rebuilds it
    torch.save({"sizes": sizes, "state": small.state_dict()}, tmp_path / "small.pt")
    saved = torch.load(tmp_path / "small.pt")
    rebuilt = make_model()
    apply_basis(rebuilt, saved["sizes"], convert=False, inplace=True)
    rebuilt.load_state_dict(saved["state"])
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(rebuilt(x), small(x), rtol=0, atol=0)


def test_a_dense_checkpoint_loaded_into_a_converted_model_says_to_load_then_convert():
    """Found in review: a state_dict saved before converting, loaded after, left every basis
    layer as it was without a word under strict=False (a backbone's usual load), and under
    strict torch's error named only the keys. A warning, once a load, says the order that
    works; the converted model's own state_dict loads without one."""
    dense = build_model("resnet8", width=0.25)
    small = apply_basis(dense, "all", 0.5, only_where_saves=True)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    fix = r"load the checkpoint into the dense model, then convert it"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # (Python's own: one message at one line once)
        small.load_state_dict(dense.state_dict(), strict=False)
    assert ["then convert it" in str(w.message) for w in caught] == [True]
    assert all(torch.equal(v, before[k]) for k, v in small.state_dict().items()
               if "conv" in k and "bn" not in k)
    with pytest.warns(UserWarning, match=fix), pytest.raises(RuntimeError, match="Missing key"):
        small.load_state_dict(dense.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small.load_state_dict(before)
        apply_basis(dense, "all", 0.5, convert=False, only_where_saves=True).load_state_dict(before)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_constraint_on_a_converted_weight_is_said_to_stay_behind():
    """Found in review: a conv whose weight a parametrization or pruning computes was
    converted without a word, and its basis layer then trained unconstrained (a pruned
    filter's zeros filled in, a spectral norm's bound no longer held). One warning names
    each such layer and what constrained it; a plain conv gives none."""
    from torch.nn.utils import parametrizations, prune, weight_norm
    model = nn.Sequential(nn.Conv2d(3, 16, 3), parametrizations.spectral_norm(nn.Conv2d(16, 32, 3)),
                          weight_norm(nn.Conv2d(32, 32, 3)), nn.Conv2d(32, 32, 3))
    prune.l1_unstructured(model[3], "weight", 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_basis(model, "all", 0.25)
    said = [str(w.message) for w in caught if "do not keep" in str(w.message)]
    assert len(said) == 1
    assert "'1' (SpectralNorm), '2' (WeightNorm), '3' (L1Unstructured)" in said[0]
    assert "'0'" not in said[0]
    many = nn.Sequential(*[nn.Conv2d(8, 8, 1) for _ in range(5)])  # four named, the rest counted
    for conv in many:
        prune.l1_unstructured(conv, "weight", 0.5)
    with pytest.warns(UserWarning, match=r"of '0' \(L1Unstructured\), '1' \(L1Unstructured\), "
                                         r"'2' \(L1Unstructured\), '3' \(L1Unstructured\) "
                                         r"and 1 more are computed"):
        apply_basis(many, "all", 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_basis(nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3)), "all", 0.25)


def test_rebinding_the_optimizer_keeps_the_momentum_of_the_parameters_surgery_left():
    """After a dense warm-up's conversion the optimizer is pointed at the new parameters:
    those surgery left (norms, the head, unconverted convs) keep their momentum, the new
    ones start from a zero buffer, and the settings stay (found by a mutation test: every
    kept momentum dropped failed no test; the warm-up tests check the conversion, not the
    optimizer's state)."""
    from basisconv.network import rebind_optimizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    kept = model[0].weight
    momentum = optimizer.state[kept]["momentum_buffer"].clone()
    assert momentum.abs().max() > 0
    before = dict(model.named_parameters())
    model[1] = nn.Conv2d(4, 4, 3)  # as surgery replaces a layer
    rebind_optimizer(optimizer, model, before)
    assert torch.equal(optimizer.state[kept]["momentum_buffer"], momentum)
    assert torch.equal(optimizer.state[model[1].weight]["momentum_buffer"],
                       torch.zeros_like(model[1].weight))
    group, = optimizer.param_groups
    assert (group["lr"], group["momentum"]) == (0.1, 0.9)
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]


@pytest.mark.parametrize("convert", [True, False], ids=["convert", "fresh"])
def test_a_channels_last_models_basis_filters_are_channels_last_too(convert):
    """Found in review: apply_basis on a model in channels_last (model.to(memory_format=
    torch.channels_last)) gave the basis filters NCHW strides, so each step copied them to
    the input's layout and back for their gradient, and a channels_last model fed an NCHW
    input gave NCHW activations where its dense convs (whose weight sets the layout) give
    channels_last. The source conv's layout is kept (1x1 filters included, whose strides
    the conv reads too), as to_dense keeps the layer's; a full-rank conversion keeps the
    outputs and their strides exactly, in either input layout."""
    last = torch.channels_last
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1),
                          nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2)).to(memory_format=last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # full rank saves nothing, and says so
        small = apply_basis(model, "all", 1.0 if convert else 0.5, convert=convert)
        flat = apply_basis(copy.deepcopy(model).to(memory_format=torch.contiguous_format), "all",
                           0.5, convert=convert)
    for name, layer in basis_layers(small).items():
        weight = layer.basis_weight
        assert weight.stride() == weight.to(memory_format=last).stride(), name
    for name, layer in basis_layers(flat).items():  # an NCHW model's stay NCHW
        assert layer.basis_weight.is_contiguous(), name
    for name, conv in conv_layers(to_dense(small)).items():
        assert conv.weight.stride() == model.get_submodule(name).weight.stride(), name
    if convert:  # (float32: in float64 this CPU's conv rounds the pivots' order 1 ulp apart)
        x = torch.randn(2, 3, 9, 9)
        for given in (x, x.to(memory_format=last)):
            want, got = model(given), small(given)
            assert torch.equal(got, want) and got.stride() == want.stride()


def test_layers_that_share_coefficients_converted_one_call_at_a_time_are_said_to_stay_apart():
    """Found in review: share_coefficients ties the layers of one call, so a model rebuilt
    one layer a call (docs/basis-convolutions.md's recipe then) with it got untied layers, and
    loading the saved state hid it: they trained apart, silently. A call that asks to share
    says which of its layers have the coefficient shape of a basis layer there already;
    the one-call conversion says nothing."""
    def make_model():
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 32, 3, padding=1))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = apply_basis(make_model(), ["2", "4", "6"], 4, share_coefficients=True)
    assert basis_report(small)[1]["shares_coefficients_of"] == "2"
    rebuilt = make_model()
    apply_basis(rebuilt, "2", 4, convert=False, inplace=True, share_coefficients=True)
    with pytest.warns(UserWarning, match=r"share_coefficients ties the layers converted in "
                                         r"one call.*: '4' \(the coefficient shape of '2'\); "
                                         r"convert the layers that share in one call") as said:
        apply_basis(rebuilt, ["4", "6"], 4, convert=False, inplace=True,
                    share_coefficients=True)
    assert [w.filename for w in said] == [__file__]
    assert "'6'" not in str(said[0].message)  # (C_out=32: a shape of its own)
    with warnings.catch_warnings():  # not asked to share: nothing to say
        warnings.simplefilter("error")
        apply_basis(make_model(), "2", 4, inplace=True)
        # nor where the earlier layer's coefficients are of another rank: never shareable
        ranked = apply_basis(make_model(), "2", 4, convert=False, share_coefficients=True)
        apply_basis(ranked, "4", 4, convert=False, inplace=True, share_coefficients=True,
                    coefficient_rank=2)


def test_warnings_of_a_conversion_point_at_the_callers_line():
    """Found in review: warnings meant for the caller named the package's own lines where
    they were raised deeper than a fixed stacklevel reached (the state-dict hooks' in
    surgery.py, the still-called conv's in torch's module.py, select_layers' skip when
    called directly)."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = [nn.Conv2d(3, 16, 3)]  # a plain list: apply_basis cannot reach it
            self.conv = self.convs[0]
            self.grouped = nn.Conv2d(16, 16, 3, groups=2)

        def forward(self, x):
            return self.grouped(self.convs[0](x))

    model = Model()
    model.conv.register_state_dict_pre_hook(lambda *args, **kwargs: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        select_layers(model, "all")
        small = apply_basis(model, "all", 4)
        small(torch.randn(1, 3, 8, 8))
    said = [(str(w.message), w.filename) for w in caught]
    for start in ("skipping layer 'grouped'", "layer 'conv': its state-dict hooks",
                  "conv 'conv' was replaced by a basis layer but is still called"):
        assert any(message.startswith(start) for message, _ in said), start
    assert len(said) == 4 and {filename for _, filename in said} == {__file__}, said


@pytest.mark.parametrize("inplace", [True, False])
def test_a_converted_conv_keeps_a_forward_pre_hook_that_takes_keyword_arguments(inplace):
    """Found by a mutation test (``_forward_pre_hooks_with_kwargs`` left out of the hook
    tables, failing no test): the hook went over without its flag and was called as
    ``hook(module, args)``, a TypeError for one written as ``hook(module, args, kwargs)``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)).double()
    model[0].register_forward_pre_hook(lambda m, args, kwargs: ((2 * args[0],), kwargs),
                                       with_kwargs=True)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    expected = model(x)
    with pytest.warns(UserWarning, match="saves no compute"):  # full rank, to compare
        converted = apply_basis(model, "0", 16, inplace=inplace)
    torch.testing.assert_close(converted(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("how", ["apply_basis", "apply_basis_inplace", "fresh", "from_conv"])
def test_a_conversion_under_inference_mode_is_refused_in_one_line(how):
    """Found in review: a model converted under ``torch.inference_mode()`` (as one might
    convert a pretrained model to evaluate it, then fine-tune it) held inference tensors,
    and its first training step failed in torch's words ("Inference tensors cannot be
    saved for backward"), naming no conversion; under ``torch.no_grad()`` it trains."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    convert = {"apply_basis": lambda: apply_basis(model, "2", 0.5),
               "apply_basis_inplace": lambda: apply_basis(model, "2", 0.5, inplace=True),
               "fresh": lambda: apply_basis(model, "2", 0.5, convert=False),
               "from_conv": lambda: BasisConv2d.from_conv(model[2], 0.5)}[how]
    function = "from_conv" if how == "from_conv" else "apply_basis"
    with torch.inference_mode(), pytest.raises(ConfigError, match=(
            rf"^{function} under torch\.inference_mode\(\) makes inference tensors, which "
            rf"cannot train; convert under torch\.no_grad\(\) instead$")):
        convert()
    assert isinstance(model[2], nn.Conv2d)  # nothing replaced
    with torch.no_grad():
        converted = convert()
    layer = converted if how == "from_conv" else converted[2]
    layer(torch.randn(2, 8, 6, 6)).sum().backward()
    assert layer.basis_weight.grad is not None


class ConvNormHead(nn.Module):
    """A tiny model with what an optimizer's groups tell apart: convs, a norm, a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, bias=False)
        self.norm = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv(torch.relu(self.norm(self.stem(x))))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_rebinding_an_optimizer_of_several_groups_keeps_each_group(kind):
    """Found in review: rebind_optimizer rebuilt one group from the first group's settings,
    so a user's groups (no weight decay on norms and biases, another lr for the head, as
    timm and pycls make them) were merged and their settings changed silently. A converted
    conv's new parameters join its weight's group (its bias the bias's); every other group
    keeps its settings, its parameters (in the model's order) and their state."""
    torch.manual_seed(0)
    model = ConvNormHead()
    groups = [{"params": [model.stem.weight, model.conv.weight], "weight_decay": 5e-4},
              {"params": [model.norm.weight, model.norm.bias, model.conv.bias],
               "weight_decay": 0.0},
              {"params": list(model.head.parameters()), "lr": 0.01, "weight_decay": 0.0}]
    optimizer = (torch.optim.SGD(groups, lr=0.1, momentum=0.9) if kind == "sgd" else
                 torch.optim.AdamW(groups, lr=0.1))
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    untouched = [model.stem.weight, model.norm.weight, model.norm.bias, *model.head.parameters()]
    state = {p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in untouched}
    before = dict(model.named_parameters())
    apply_basis(model, "conv", 0.5, inplace=True)
    rebind_optimizer(optimizer, model, before)
    assert [{k: v for k, v in g.items() if k != "params"}
            for g in optimizer.param_groups] == settings
    layer = model.conv
    assert [[id(p) for p in g["params"]] for g in optimizer.param_groups] == [
        [id(model.stem.weight), id(layer.basis_weight), id(layer.coefficients)],
        [id(model.norm.weight), id(model.norm.bias), id(layer.bias)],
        [id(p) for p in model.head.parameters()]]
    for p in untouched:
        assert all(torch.equal(optimizer.state[p][k], v) for k, v in state[p].items())
    assert len(optimizer.state) == len(untouched) + (3 if kind == "sgd" else 0)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()  # (the new parameters' state starts now)
    assert all(p in optimizer.state for p in model.parameters())


def test_rebinding_an_optimizer_without_the_converted_convs_group_is_one_line():
    """Where the converted conv's weight was in none of the optimizer's groups (a frozen
    backbone, the head alone trained), its new parameters have no group to join: one line
    says so, and the optimizer is left as it was."""
    torch.manual_seed(0)
    model = ConvNormHead()
    optimizer = torch.optim.SGD(model.head.parameters(), lr=0.1)
    before = dict(model.named_parameters())
    apply_basis(model, "conv", 0.5, inplace=True)
    with pytest.raises(ConfigError, match=(
            r"^rebind_optimizer: the new parameter 'conv\.basis_weight' has no group to join: "
            r"layer 'conv''s weight before the conversion was in none of the optimizer's "
            r"parameter groups; add it to one before converting \(before=dict\(model\."
            r"named_parameters\(\)\) taken then\), or build the optimizer from the "
            r"converted model$")):
        rebind_optimizer(optimizer, model, before)
    assert optimizer.param_groups[0]["params"] == list(model.head.parameters())


@pytest.mark.parametrize("wrap", ["weight_norm", "parametrizations.weight_norm"])
def test_rebinding_an_optimizer_with_a_weight_split_across_a_group_and_none_names_its_parts(
        wrap):
    """Found in review: a weight-normed conv's weight is two parameters (a magnitude and a
    direction), which a conversion fits as the weight they compute; with one of them in an
    optimizer group and the other in none, rebind_optimizer said the weight was in "none of
    the groups". It names each part and where it was."""
    from torch.nn.utils import parametrizations, weight_norm

    torch.manual_seed(0)
    model = ConvNormHead()
    {"weight_norm": weight_norm,
     "parametrizations.weight_norm": parametrizations.weight_norm}[wrap](model.conv)
    magnitude, direction = [name for name, _ in model.conv.named_parameters()
                            if name != "bias"]
    optimizer = torch.optim.SGD([{"params": [model.stem.weight, model.conv.bias,
                                             model.conv.get_parameter(magnitude)]},
                                 {"params": list(model.head.parameters()), "lr": 0.01}],
                                lr=0.1)
    groups = [list(g["params"]) for g in optimizer.param_groups]
    before = dict(model.named_parameters())
    with pytest.warns(UserWarning):  # (the weight's hook stays behind: said once)
        apply_basis(model, "conv", 0.5, inplace=True)
    with pytest.raises(ConfigError, match=(
            rf"^rebind_optimizer: the new parameter 'conv\.basis_weight' has no group to join: "
            rf"layer 'conv''s weight before the conversion was split: 'conv\.{magnitude}' in "
            rf"group 0, 'conv\.{direction}' in none; put its parts in one group before "
            rf"converting \(before=dict\(model\.named_parameters\(\)\) taken then\), or "
            rf"build the optimizer from the converted model$")):
        rebind_optimizer(optimizer, model, before)
    assert [g["params"] for g in optimizer.param_groups] == groups
