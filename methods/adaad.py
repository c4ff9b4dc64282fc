"""AdaAD (Huang et al., CVPR 2023): adaptive adversarial distillation.

The attack maximises the student-teacher divergence with the teacher RE-EVALUATED at x' each
step (gradient through both networks); the student then matches T(x') at x'.
Official code: github.com/boyellow/AdaAD (main.py, AT_helper.adaad_inner_loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.core.distiller import FAITHFUL, Distiller, Params, Preset, bounded, paper
from bench.core.registry import register
from bench.eval.attacks import KLReduction, kl, pgd


@dataclass(frozen=True)
class AdaADParams(Params):
    """Defaults: CIFAR-10 (KL "mean"); CIFAR-100 uses "batchmean" in the authors' code."""

    epochs: int = 200
    milestones: tuple[int, ...] = (100, 150)
    weight_decay: float = 5e-4
    seed: int | None = 42
    a: float = bounded(1.0, ge=0, le=1)  # convex: KL(T(x')||S(x')), (1 - a) KL(T(x)||S(x))
    kl_reduction: KLReduction = "mean"
    attack_reduction: KLReduction = "sum"


def adaad_pgd(student: nn.Module, teacher: nn.Module, x: Tensor, eps: float, step: float,
              steps: int, reduction: KLReduction = "sum") -> Tensor:
    """AdaAD's attack (IGDM and SAAD's repo reuse it): S and T in EVAL mode, start
    x + 0.001 N(0, I) not clamped, maximise KL(T(x') || S(x')) with T re-run each step."""
    s, t = student.eval(), teacher.eval()
    return pgd(lambda xa: kl(t(xa), s(xa), reduction), x, eps=eps, step=step, steps=steps,
               start="normal", clamp_start=False)


@register("adaad")
class AdaAD(Distiller):
    """AdaAD (Huang et al. 2023): match T(x') on x' maximising KL(T(x')||S(x')) (both eval)."""

    display_name = "AdaAD"
    needs_teacher = True
    Params = AdaADParams
    presets = {
        "faithful": Preset(FAITHFUL.doc, per_dataset={"cifar100": dict(kl_reduction="batchmean")}),
        "paper": paper("adaad", cifar10="robustbench:Chen2021LTD_WRN34_20",
                       cifar100="robustbench:Chen2021LTD_WRN34_10"),
        "large-radius": Preset("faithful with the paper's larger search radius (the argparse "
                               "default): eps 16/255, step 4/255",
                               common=dict(eps=16 / 255, step=4 / 255), base="faithful"),
    }

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        return adaad_pgd(self.student, self.teacher, x, self.p.eps, self.p.step, self.p.steps,
                         self.p.attack_reduction)

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q = self.p
        s_net, t_net = self.student.train(), self.teacher.eval()
        s_nat = s_net(x)  # before S(x'), even when a = 1: a BN-statistics update
        s_adv = s_net(x_adv)
        with torch.no_grad():
            t_nat, t_adv = t_net(x), t_net(x_adv)
        return (q.a * kl(t_adv, s_adv, q.kl_reduction)
                + (1 - q.a) * kl(t_nat, s_nat, q.kl_reduction))
