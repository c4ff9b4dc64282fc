"""PGD-AT (Madry et al., ICLR 2018): cross-entropy on PGD-10 examples, all in train mode."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from bench.attacks import pgd
from bench.distiller import Distiller, Params
from bench.registry import register


@dataclass(frozen=True)
class PGDATParams(Params):
    epochs: int = 200
    milestones: tuple[int, ...] = (100, 150)


@register("pgdat")
class PGDAT(Distiller):
    """PGD-AT (Madry et al. 2018): CE on PGD-10 examples (uniform start); trains teachers."""

    Params = PGDATParams

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        s = self.student.train()
        return pgd(lambda xa: F.cross_entropy(s(xa), y), x, eps=self.p.eps, step=self.p.step,
                   steps=self.p.steps, start="uniform")

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        self.student.train()
        return F.cross_entropy(self.student(x_adv), y)
