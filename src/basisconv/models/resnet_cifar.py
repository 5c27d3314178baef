"""ResNet-8/20/32/44/56/110 of He et al. (2016, section 4.2) for CIFAR-10: 6n+2 layers,
stages of 16-32-64 channels, and parameter-free shortcuts (option A: subsample and
zero-pad channels), which is what gives the published 0.27 M parameters of ResNet-20.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conv_norm import conv_norm_act
from .registry import register_model, scaled
from .resnet import BasicBlock, conv3x3, init_weights


class PadShortcut(nn.Module):
    """Option-A shortcut: take every ``stride``-th pixel, zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


def option_a_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity where the shape is kept, else :class:`PadShortcut` (no parameters)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return PadShortcut(in_channels, out_channels, stride)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:  # n >= 1 block per stage
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), "
                             f"got {depth}")
        n = (depth - 2) // 6
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_channels = [], widths[0]
        for i, channels in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_channels, channels, stride, shortcut=option_a_shortcut))
                in_channels = channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(widths[2], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_norm_act(self.conv1, self.bn1, x, relu=True)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _register_depth(depth: int) -> None:
    def build(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
        return CifarResNet(depth, num_classes, width)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth} of He et al. (2016) for CIFAR."
    register_model(build)


for _depth in (8, 20, 32, 44, 56, 110):
    _register_depth(_depth)
