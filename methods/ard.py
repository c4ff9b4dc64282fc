"""ARD (Goldblum et al., AAAI 2020): adversarially robust distillation from a fixed teacher.

The student is attacked in TRAIN mode with CE (uniform start, not clamped before the first
step); it learns the teacher's temperature-30 soft labels on the CLEAN x at its own x'.
Official script: github.com/goldblum/AdversariallyRobustDistillation, main.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.distiller import FAITHFUL, Distiller, Params, Preset, bounded, paper
from bench.core.registry import register
from bench.eval.attacks import KLReduction, kl, pgd


@dataclass(frozen=True)
class ARDParams(Params):
    """Defaults: CIFAR-10. `lr_schedule="ard"`: the script's LR stays 0.01 from epoch 100 on."""

    epochs: int = 200
    milestones: tuple[int, ...] = (100, 150)
    lr_schedule: Literal["multistep", "ard"] = "ard"
    t: float = bounded(30.0, gt=0)  # distillation temperature
    a: float = bounded(1.0, ge=0, le=1)  # convex: distillation term, (1 - a) CE(S(x), y)
    kl_reduction: KLReduction = "mean"  # nn.KLDivLoss() default: sum / (B*C)
    attack_reduction: Literal["sum", "mean"] = "sum"  # the attack's CE


FIXED = Preset("faithful, but the LR decays x0.1 at 100 AND at 150 (the official script's "
               "second decay is a no-op)", common=dict(lr_schedule="multistep"), base="faithful")


def train_mode_pgd(student: nn.Module, x: Tensor, y: Tensor, p: Params,
                   reduction: str = "sum") -> Tensor:
    """ARD's attack (IAD reuses it): S in TRAIN mode, uniform start not clamped, CE."""
    s = student.train()
    return pgd(lambda xa: F.cross_entropy(s(xa), y, reduction=reduction), x, eps=p.eps,
               step=p.step, steps=p.steps, start="uniform", clamp_start=False)


@register("ard")
class ARD(Distiller):
    """ARD (Goldblum et al. 2020): T=30 KD on train-mode PGD; `fixed` repairs the 2nd LR decay."""

    display_name = "ARD"
    needs_teacher = True
    Params = ARDParams
    presets = {
        "faithful": Preset(FAITHFUL.doc, per_dataset={"cifar100": dict(batch_size=256)}),
        "paper": paper("ard", cifar10=("trades", "wrn34_10"), cifar100=("trades", "wrn34_10")),
        "fixed": FIXED,
    }

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        return train_mode_pgd(self.student, x, y, self.p, self.p.attack_reduction)

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q = self.p
        s_net, t_net = self.student.train(), self.teacher.eval()
        s_adv = s_net(x_adv)  # the attack's final forward in the authors' code
        with torch.no_grad():
            t_nat = t_net(x)
        s_nat = s_net(x)  # computed even when a = 1: a BN-statistics update
        return (q.a * q.t**2 * kl(t_nat, s_adv, q.kl_reduction, q.t)
                + (1 - q.a) * F.cross_entropy(s_nat, y))
