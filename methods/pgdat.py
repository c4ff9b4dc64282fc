"""PGD-AT (Madry et al., ICLR 2018): cross-entropy on PGD-10 examples, all in train mode.

Preset `iad-teacher` is the teacher IAD trains for itself (github.com/ZFancy/IAD,
pre_train/AT.py): the attack runs in EVAL mode (uniform start, clamped, CE mean), the
"piecewise" LR of 200 epochs decays at 0-based epochs 99 and 149, seed 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from bench.core.distiller import FAITHFUL, PAPER, Distiller, Params, Preset
from bench.core.registry import register
from bench.eval.attacks import pgd


@dataclass(frozen=True)
class PGDATParams(Params):
    epochs: int = 200
    milestones: tuple[int, ...] = (100, 150)
    # the network's mode during the attack: None is train mode (None keeps old cell ids)
    attack_mode: Literal["eval"] | None = None


@register("pgdat")
class PGDAT(Distiller):
    """PGD-AT (Madry et al. 2018): CE on PGD-10 examples (uniform start); trains teachers."""

    display_name = "PGD-AT"
    Params = PGDATParams
    presets = {
        "faithful": FAITHFUL,
        "paper": PAPER,
        "iad-teacher": Preset("IAD's own teacher (pre_train/AT.py): the attack in eval mode, LR "
                              "x0.1 at 0-based epochs 99 and 149, seed 1; full schedule",
                              common=dict(attack_mode="eval", milestones=(99, 149), seed=1),
                              base="faithful", full_scale=True),
    }

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        s = self.student.train(self.p.attack_mode != "eval")
        return pgd(lambda xa: F.cross_entropy(s(xa), y), x, eps=self.p.eps, step=self.p.step,
                   steps=self.p.steps, start="uniform")

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        self.student.train()
        return F.cross_entropy(self.student(x_adv), y)
