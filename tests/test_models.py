import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from basisconv.errors import ConfigError
from basisconv.models import build_model, list_models, parameter_count, register_model
from basisconv.models import registry

# Published parameter counts: CIFAR ResNet-18/34/50 (kuangliu/pytorch-cifar), and the
# He et al. (2016) CIFAR ResNets with option-A shortcuts (0.27 M for ResNet-20, ...).
PUBLISHED_PARAMETERS = {
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_every_published_depth_is_registered():
    assert set(PUBLISHED_PARAMETERS) <= set(list_models())


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_parameter_count_and_forward(name):
    model = build_model(name)
    assert n_params(model) == PUBLISHED_PARAMETERS[name]
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_width_multiplier_and_classes():
    narrow = build_model("resnet18", num_classes=100, width=0.25)
    assert n_params(narrow) < n_params(build_model("resnet18")) / 10
    assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert narrow.conv1.out_channels == 16
    odd = build_model("resnet20", width=0.3)  # odd channel differences in the pad shortcut
    assert odd(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    # channel counts round to the nearest (16, 32, 64 x 0.3 = 4.8, 9.6, 19.2), never to 0
    assert [odd.get_submodule(f"layer{i}.0.conv2").out_channels for i in (1, 2, 3)] == [5, 10, 19]
    assert build_model("resnet20", width=0.01).conv1.out_channels == 1
    # halves round up, as basis sizes and data subsets do (16 x 0.15625 = 2.5 -> 3)
    assert build_model("resnet20", width=0.15625).conv1.out_channels == 3


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
        build_model("resnet19")


def test_a_second_model_of_one_name_is_refused(monkeypatch):
    """Registering a constructor under a name already taken would silently replace the
    published model every config of that name builds."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    published = registry._REGISTRY["resnet18"]

    def resnet18(num_classes=10, width=1.0):
        return nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="model 'resnet18' is registered twice"):
        register_model(resnet18)
    assert registry._REGISTRY["resnet18"] is published


def test_a_model_that_cannot_be_shaped_at_the_published_width_raises_its_own_error(
        monkeypatch):
    """parameter_count's None (too wide to shape) is for widths above 1 only: a model that
    fails at the published width fails for another reason, which is raised, also when a
    wider one was asked for."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model
    def broken(num_classes=10, width=1.0):
        raise RuntimeError("broken model")

    for width in (1.0, 4.0):
        with pytest.raises(RuntimeError, match="^broken model$"):
            parameter_count("broken", width=width)


def test_bad_width():
    for width in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"width must be a finite number > 0, got {width}"):
            build_model("resnet18", width=width)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 0"):
        build_model("resnet20", num_classes=0)


@pytest.mark.parametrize("width", ["0.5", None, True])
def test_a_width_that_is_no_number_is_one_clear_error(width):
    # "0.5" and None failed in a comparison with a TypeError; True was taken for 1.0
    with pytest.raises(ValueError, match="model width must be a finite number > 0"):
        build_model("resnet20", width=width)


@pytest.mark.parametrize("classes", [2.5, "10", None, True])
def test_a_class_count_that_is_no_int_is_one_clear_error(classes):
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        build_model("resnet20", num_classes=classes)


@pytest.mark.parametrize("depth", [2, -4])
def test_a_cifar_resnet_without_blocks_is_refused(depth):
    from basisconv.models.resnet_cifar import CifarResNet

    with pytest.raises(ValueError, match="6n\\+2 with n >= 1"):
        CifarResNet(depth)


def _reference_forward(model, x):
    """The published forward, written out with ``torch.nn.functional`` from the model's
    own weights: a ReLU after the stem and inside each block, the shortcut added before
    the block's last ReLU, option-A shortcuts that take every second pixel and pad the new
    channels with zeros on both sides (half before, the rest after)."""
    def conv(m, t):
        return F.conv2d(t, m.weight, None, m.stride, m.padding)

    def bn(m, t):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0,
                            m.eps)

    def shortcut(block, t, channels):
        s = block.shortcut
        if isinstance(s, torch.nn.Identity):
            return t
        if isinstance(s, torch.nn.Sequential):  # projection: 1x1 conv + BN
            return bn(s[1], conv(s[0], t))
        t = t[:, :, ::2, ::2]
        extra = channels - t.shape[1]
        zeros = lambda k: t.new_zeros(t.shape[0], k, *t.shape[2:])  # noqa: E731
        return torch.cat([zeros(extra // 2), t, zeros(extra - extra // 2)], 1)

    out = F.relu(bn(model.bn1, conv(model.conv1, x)))
    for stage in (model.layer1, model.layer2, model.layer3, getattr(model, "layer4", [])):
        for block in stage:
            y = F.relu(bn(block.bn1, conv(block.conv1, out)))
            y = bn(block.bn2, conv(block.conv2, y))
            if hasattr(block, "conv3"):  # bottleneck
                y = bn(block.bn3, conv(block.conv3, F.relu(y)))
            out = F.relu(y + shortcut(block, out, y.shape[1]))
    return model.linear(out.mean((2, 3)))


@pytest.mark.parametrize("name, width", [("resnet18", 0.125), ("resnet50", 0.125),
                                         ("resnet20", 0.3)])
def test_forward_is_the_published_architecture(name, width):
    """Parameter counts do not see a missing ReLU or a shortcut padded on one side only
    (the width 0.3 ResNet-20 pads odd channel differences): the outputs must be those of
    the architecture written out, in eval mode with non-trivial norm statistics."""
    torch.manual_seed(0)
    model = build_model(name, width=width).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_forward(model, x))


def test_convs_start_kaiming_normal_by_fan_out_and_norms_at_one_and_zero():
    """torchvision's ResNet init. The stem and a stage's first conv are where fan-in and
    fan-out differ (27 vs 144, 144 vs 288 in ResNet-20): fan-in would start them 2.3 and
    1.4 times wider."""
    torch.manual_seed(0)
    model = build_model("resnet20")
    for name in ("conv1", "layer2.0.conv1", "layer3.0.conv1"):
        weight = model.get_submodule(name).weight
        fan_out = weight.shape[0] * weight.shape[2] * weight.shape[3]
        assert weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1), name
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)


@pytest.mark.parametrize("name", list_models())
def test_each_stage_downsamples_where_the_published_architecture_does(name):
    """The architecture test builds its reference from each conv's own stride, so a stride
    moved within a block (the same parameters, shapes and outputs' size) went unseen: the
    first block of each later stage downsamples in its first 3x3 conv (He et al.'s CIFAR
    ResNets, kuangliu's basic blocks), in the bottleneck's 3x3 conv2 for ResNet-50
    (kuangliu's, torchvision's v1.5), and in its projection shortcut; nothing else does."""
    model = build_model(name)
    strided = [n for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert all(model.get_submodule(n).stride == (2, 2) for n in strided)
    stages = ([2, 3, 4] if hasattr(model, "layer4") else [2, 3])
    conv = "conv2" if name == "resnet50" else "conv1"
    shortcut = [".shortcut.0"] if hasattr(model, "layer4") else []  # option A: no conv
    assert strided == [f"layer{s}.0{part}" for s in stages
                       for part in (f".{conv}", *shortcut)]


def test_a_constructor_without_the_keywords_build_model_passes_is_refused_when_registered(
        monkeypatch):
    """Found in review: a user's constructor without ``width`` (or ``num_classes``) was
    registered, and failed only when a run built it, with torch's bare TypeError. The
    registration says what build_model calls it with."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def classes_only(num_classes=10):
        return nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match=r"model 'classes_only' cannot be registered: "
                                         r"build_model calls it as classes_only\(num_classes=\.\.\., "
                                         r"width=\.\.\.\)"):
        register_model(classes_only)
    assert "classes_only" not in list_models()

    @register_model
    def flexible(**options):  # keywords taken another way are welcome
        return nn.Linear(1, options["num_classes"])
    assert build_model("flexible", num_classes=3).out_features == 3


def test_a_second_model_of_one_name_says_how_to_register_it(monkeypatch):
    """Found in review: the refusal named the model but not what to do."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def resnet20(num_classes=10, width=1.0):
        return nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="registered twice; give the second constructor "
                                         "another function name"):
        register_model(resnet20)


def test_a_constructor_without_a_function_name_is_registered_under_the_name_given(monkeypatch):
    """Found in review: ``register_model(lambda ...)`` registered ``'<lambda>'``, a name no
    config can give, and ``register_model(functools.partial(...))`` failed on ``__name__``
    with Python's AttributeError. Such a constructor takes ``name=``; without it, one line
    says to give one."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def vgg(num_classes=10, width=1.0, depth=11):
        return nn.Linear(depth, num_classes)

    for nameless in (lambda num_classes=10, width=1.0: nn.Linear(1, num_classes),
                     functools.partial(vgg, depth=13)):
        with pytest.raises(ValueError, match=r"^register_model: .* has no function name a "
                                             r"config can give .*; give it one: "
                                             r"register_model\(fn, name='my_model'\)$"):
            register_model(nameless)
    assert not {"<lambda>", "vgg"} & set(list_models())
    register_model(functools.partial(vgg, depth=13), name="vgg13")
    register_model(lambda num_classes=10, width=1.0: nn.Linear(2, num_classes), name="tiny")

    @register_model(name="vgg16")
    def _vgg16(num_classes=10, width=1.0):
        return vgg(num_classes, width, depth=16)

    assert build_model("vgg13", num_classes=3).in_features == 13
    assert build_model("tiny").in_features == 2
    assert build_model("vgg16").in_features == 16
    assert "_vgg16" not in list_models()
    for bad in ("", 13, "my model"):
        with pytest.raises(ValueError, match=r"^register_model: name="):
            register_model(vgg, name=bad)


def test_counting_a_registered_model_with_an_unmade_lazy_layer_is_one_line(monkeypatch):
    """Found in review: parameter_count of a model with ``nn.LazyConv2d`` gave torch's
    paragraph on uninitialized parameters; its size is known only after a forward."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model
    def lazy_net(num_classes=10, width=1.0):
        return nn.Sequential(nn.LazyConv2d(8, 3), nn.Flatten(), nn.LazyLinear(num_classes))

    with pytest.raises(ConfigError, match=r"^parameter_count: layer '0' is a LazyConv2d whose "
                                          r"parameters are not made yet; .*forward"):
        parameter_count("lazy_net")


def test_a_name_given_in_place_of_the_constructor_says_to_give_it_as_name(monkeypatch):
    """Found in review: ``@register_model("vgg13")`` (the name where the constructor goes)
    was said to be "a lambda or a functools.partial" with "no function name"."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match=r"^register_model\('vgg13'\): the name is given as "
                                         r"name=: @register_model\(name='vgg13'\)$"):
        register_model("vgg13")
    assert "vgg13" not in list_models()
