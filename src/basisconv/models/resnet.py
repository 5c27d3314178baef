"""CIFAR ResNet-18/34/50: the ImageNet ResNets (He et al. 2016) with a 3x3 stride-1 stem and
no max-pool, stages of 64-128-256-512 channels, projection (1x1 conv) shortcuts.

This is the "ResNet-18" of most CIFAR papers (kuangliu/pytorch-cifar), 11,173,962
parameters; not to be confused with the thinner ResNet-20 family in ``resnet_cifar.py``.
Module names and state_dict keys are kuangliu/pytorch-cifar's (``layer1.0.conv1``,
``layer2.0.shortcut.0``, ``linear``): the block convs are named as in torchvision, the
shortcuts and the head are not (``downsample.0`` and ``fc`` there).

Every conv-norm(-ReLU) triple goes through :func:`basisconv.conv_norm.conv_norm_act`, which
is the plain sequence for dense convs and one fused computation for basis layers built
with ``fuse_norm=True``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conv_norm import conv_norm_act
from .registry import register_model, scaled


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class Projection(nn.Sequential):
    """1x1 conv + BN shortcut (a ``Sequential``, so its modules keep the names
    ``shortcut.0`` and ``shortcut.1``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_norm_act(self[0], self[1], x)


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The shortcut where the residual changes shape: :class:`Projection`, else identity."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return Projection(in_channels, out_channels, stride)


class BasicBlock(nn.Module):
    """Two 3x3 convs and a residual. ``shortcut(in_channels, channels, stride)`` builds the
    residual path: a projection here, the parameter-free option A in ``resnet_cifar.py``."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1,
                 shortcut: Callable[[int, int, int], nn.Module] = projection):
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = shortcut(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_norm_act(self.conv1, self.bn1, x, relu=True)
        out = conv_norm_act(self.conv2, self.bn2, out)
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_norm_act(self.conv1, self.bn1, x, relu=True)
        out = conv_norm_act(self.conv2, self.bn2, out, relu=True)
        out = conv_norm_act(self.conv3, self.bn3, out)
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock | Bottleneck], num_blocks: list[int],
                 num_classes: int = 10, width: float = 1.0):
        super().__init__()
        widths = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.in_channels = widths[0]
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_stage(block, widths[0], num_blocks[0], stride=1)
        self.layer2 = self._make_stage(block, widths[1], num_blocks[1], stride=2)
        self.layer3 = self._make_stage(block, widths[2], num_blocks[2], stride=2)
        self.layer4 = self._make_stage(block, widths[3], num_blocks[3], stride=2)
        self.linear = nn.Linear(widths[3] * block.expansion, num_classes)
        init_weights(self)

    def _make_stage(self, block, channels: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            blocks.append(block(self.in_channels, channels, block_stride))
            self.in_channels = channels * block.expansion
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_norm_act(self.conv1, self.bn1, x, relu=True)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs and unit BN, as torchvision's ResNets do. A model
    shaped on the meta device (the config checks, the architecture digest) has no values to
    draw: torch's meta ``normal_`` loaded ``torch._dynamo``, a second of every run's start."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and not module.weight.is_meta:
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


@register_model
def resnet18(num_classes: int = 10, width: float = 1.0) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width)


@register_model
def resnet34(num_classes: int = 10, width: float = 1.0) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, width)


@register_model
def resnet50(num_classes: int = 10, width: float = 1.0) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width)
