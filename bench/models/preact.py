"""PreAct ResNet-18, CIFAR variant, as in Rice et al. (2020) and the TRADES-era code bases.

Pre-activation blocks (BN-ReLU before each conv, 1x1 conv shortcuts without BN), no stem
BN, and a final BN+ReLU before global average pooling. Parameter names match that code.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bench.models import register_model
from bench.models.pool import global_avg_pool
from bench.models.resnet import ResNet


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet(ResNet):
    """The CIFAR ResNet trunk with pre-activation blocks: no stem BN, final BN+ReLU."""

    def __init__(self, num_blocks: list[int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__(PreActBlock, num_blocks, num_classes, in_channels)
        del self.bn1  # the stem conv feeds the first block's BN directly
        self.bn = nn.BatchNorm2d(512 * PreActBlock.expansion)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return self.linear(global_avg_pool(out))


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """PreAct ResNet-18, CIFAR variant (about 11.2M parameters with 10 classes)."""
    return PreActResNet([2, 2, 2, 2], num_classes, in_channels)
