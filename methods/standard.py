"""Standard (non-adversarial) training: the reference every robust method must beat.

A standard-trained network is selected by its clean accuracy (rule `clean`), in every preset:
its robust accuracy is near 0 at every epoch, so the best of it would be noise. Preset
`iad-teacher` is the standard-trained teacher IAD trains for AKD2 and IAD-II
(github.com/ZFancy/IAD, pre_train/ST.py): the "piecewise" LR of 200 epochs decays at 0-based
epochs 99 and 149, seed 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from bench.core.distiller import FAITHFUL, PAPER, Distiller, Params, Preset
from bench.core.registry import register


@dataclass(frozen=True)
class StandardParams(Params):
    selection: str | None = "clean"  # the best clean network (IAD's pre_train/ST.py)


@register("standard")
class Standard(Distiller):
    """Standard training: CE on clean images, no attack (the non-robust reference)."""

    display_name = "Standard"
    Params = StandardParams
    presets = {
        "faithful": FAITHFUL,
        "paper": PAPER,
        "iad-teacher": Preset("IAD's standard-trained teacher (pre_train/ST.py): LR x0.1 at "
                              "0-based epochs 99 and 149, seed 1; full schedule",
                              common=dict(milestones=(99, 149), seed=1), base="faithful",
                              full_scale=True),
    }

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        return x

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        self.student.train()
        return F.cross_entropy(self.student(x), y)
