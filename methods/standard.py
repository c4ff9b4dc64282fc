"""Standard (non-adversarial) training: the reference every robust method must beat."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from bench.core.distiller import Distiller
from bench.core.registry import register


@register("standard")
class Standard(Distiller):
    """Standard training: CE on clean images, no attack (the non-robust reference)."""

    display_name = "Standard"

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        return x

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        self.student.train()
        return F.cross_entropy(self.student(x), y)
