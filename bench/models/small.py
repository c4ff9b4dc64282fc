"""Small CNNs for the embedded default (8x8 digits): train in seconds on a laptop CPU."""

from __future__ import annotations

from torch import Tensor, nn

from bench.models import register_model
from bench.models.pool import global_avg_pool


class SmallCNN(nn.Module):
    """Three 3x3 conv layers (16/32/32 channels), optional BatchNorm, global average pool."""

    def __init__(self, num_classes: int, in_channels: int, widths=(16, 32, 32),
                 batchnorm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            layers.append(nn.Conv2d(c, w, 3, padding=1, stride=2 if i == 1 else 1,
                                    bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.ReLU(inplace=True))
            c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(global_avg_pool(self.features(x)))


@register_model("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 1, image_size: int = 8) -> nn.Module:
    """16/32/32-channel CNN with BatchNorm (the embedded default's student, peer and teacher)."""
    return SmallCNN(num_classes, in_channels)


@register_model("small_cnn_nobn")
def small_cnn_nobn(num_classes: int, in_channels: int = 1, image_size: int = 8) -> nn.Module:
    """The same CNN without BatchNorm (mode-independent outputs)."""
    return SmallCNN(num_classes, in_channels, batchnorm=False)
