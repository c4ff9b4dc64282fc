"""WideResNet, exactly as in the TRADES / RSLAD / ARD code bases (dropRate 0).

Same blocks (`equalInOut` / `convShortcut`), parameter names and initialisation as that
code, minus its unused `sub_block1` (never called in forward, so it carried no trained
weights; load such checkpoints with `strict=False`). The final 8x8 average pool is global
adaptive average pooling, so 64x64 inputs work.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from bench.models import register_model
from bench.models.pool import global_avg_pool


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # Unequal widths: the pre-activation also feeds the shortcut; equal: the raw input.
        out = F.relu(self.bn1(x))
        if not self.equalInOut:
            x = out
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + (x if self.convShortcut is None else self.convShortcut(x))


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
            for i in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, num_classes: int,
                 in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(global_avg_pool(out))


@register_model("wrn34_10")
def wrn34_10(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """WideResNet-34-10, TRADES code (about 46.2M parameters with 10 classes)."""
    return WideResNet(34, 10, num_classes, in_channels)


@register_model("wrn28_10")
def wrn28_10(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """WideResNet-28-10, TRADES code (about 36.5M parameters with 10 classes)."""
    return WideResNet(28, 10, num_classes, in_channels)
