"""RSLAD (Zi et al., ICCV 2021): robust soft-label distillation from a fixed robust teacher."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.distiller import FAITHFUL, Distiller, Params, Preset, bounded, paper
from bench.core.registry import register
from bench.eval.attacks import kl, pgd


@dataclass(frozen=True)
class RSLADParams(Params):
    """Defaults: CIFAR-10. Milestones 215/260/285 are 0-based (decay AFTER epoch 215 of 1..300)."""

    epochs: int = 300
    milestones: tuple[int, ...] = (215, 260, 285)
    seed: int | None = 0
    w_adv: float = bounded(5 / 6, ge=0, le=1)  # the paper's convex weights alpha, 1 - alpha
    w_nat: float = bounded(1 / 6, ge=0, le=1)
    scale: float = bounded(1.0, gt=0)  # x10 on CIFAR-100
    kl_eps: float = bounded(1e-5, ge=0)  # the authors' KL: b*log(b + eps) - b*log_softmax(s)


def rslad_kl(t_logits: Tensor, s_logits: Tensor, eps: float) -> Tensor:
    """The authors' KL, averaged over B*C; eps=0 is exactly KL_mean."""
    b = F.softmax(t_logits, dim=1)
    if eps == 0:
        return kl(t_logits, s_logits, "mean")
    return (b * torch.log(b + eps) - b * F.log_softmax(s_logits, dim=1)).mean()


def soft_label_pgd(student: nn.Module, t_logits: Tensor, x: Tensor, p: Params) -> Tensor:
    """RSLAD's attack (ABSLD reuses it): S in EVAL mode, start x + 0.001 N(0, I) not clamped,
    maximise KL_sum(softmax(t_logits) || S(x')) against fixed soft labels."""
    s = student.eval()
    return pgd(lambda xa: kl(t_logits, s(xa), "sum"), x, eps=p.eps, step=p.step, steps=p.steps,
               start="normal", clamp_start=False)


@register("rslad")
class RSLAD(Distiller):
    """RSLAD (Zi et al. 2021): distil a robust teacher's clean soft labels on S's own x'."""

    display_name = "RSLAD"
    needs_teacher = True
    Params = RSLADParams
    presets = {
        "faithful": Preset(FAITHFUL.doc, per_dataset={"cifar100": dict(scale=10.0)}),
        # The paper's teachers: TRADES WRN-34-10 (CIFAR-10); Gowal et al.'s WRN-70-16 without
        # extra data (CIFAR-100), which RSLAD's code wraps with CIFAR-10's mean/std where
        # RobustBench's copy normalises with CIFAR-100's: overridden, as RSLAD ran it.
        "paper": paper("rslad", normalize={"cifar100": "cifar10"},
                       cifar10=("trades", "wrn34_10"),
                       cifar100="robustbench:Gowal2020Uncovering"),
        "exact-kl": Preset("faithful with the exact mean KL (no 1e-5 shift in the log)",
                           common=dict(kl_eps=0.0), base="faithful"),
    }

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            t = self.teacher(x)
        return soft_label_pgd(self.student, t, x, self.p)

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        s_net = self.student.train()
        s_adv, s_nat = s_net(x_adv), s_net(x)
        with torch.no_grad():
            t = self.teacher(x)
        e = self.p.kl_eps
        return self.p.scale * (self.p.w_adv * rslad_kl(t, s_adv, e)
                               + self.p.w_nat * rslad_kl(t, s_nat, e))
