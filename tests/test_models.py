import pytest
import torch

from basisconv.models import build_model, list_models

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


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
        build_model("resnet19")


def test_bad_width():
    with pytest.raises(ValueError, match="width must be > 0"):
        build_model("resnet18", width=0)
