"""PeerAiD (Jung et al., CVPR 2024, arXiv 2403.06668): a peer trained with the student.

The peer P learns to defend the student's own adversarial examples; the student S is
distilled from P's (detached) predictions and from its own clean predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.core.distiller import FAITHFUL, Distiller, Params, Preset, bounded, paper
from bench.core.registry import register
from bench.eval.attacks import KLReduction, kl, pgd


@dataclass(frozen=True)
class PeerAiDParams(Params):
    """Defaults: the CIFAR-10 row of methods.md."""

    epochs: int = 300
    milestones: tuple[int, ...] = (214, 259, 284)
    swa: bool = True
    t: float = bounded(5.0, gt=0)  # student distillation temperature
    tp: float = bounded(1.0, gt=0)  # peer temperature
    l1: float = bounded(0.0, ge=0)  # student CE weight (weights, not convex: 35 on Tiny)
    l2: float = bounded(1.0, ge=0)  # student <- peer KL weight
    l3: float = bounded(1.0, ge=0)  # student <- own clean prediction KL weight
    g1: float = bounded(1.0, ge=0)  # peer CE weight
    g2: float = bounded(0.1, ge=0)  # peer <- student KL weight
    kl_reduction: KLReduction = "mean"
    attack_reduction: KLReduction = "sum"
    merged_forward: bool = False  # one S(x') forward instead of the authors' two


TINY = dict(t=1.0, l1=0.035, l2=35.0, l3=20.0, g1=1.0, g2=100.0, epochs=200, milestones=(99, 149))


@register("peeraid")
class PeerAiD(Distiller):
    """PeerAiD (Jung et al. 2024): peer and student trained together on S's adversarial x'."""

    display_name = "PeerAiD"
    needs_peer = True
    Params = PeerAiDParams
    presets = {
        "faithful": Preset(FAITHFUL.doc, per_dataset={
            "cifar100": dict(g2=1.0), "tinyimagenet": TINY,
            "tinyimagenet:wrn34_10": dict(epochs=100, milestones=(49, 79))}),
        "paper": paper("peeraid"),
        "merged": Preset("faithful, but S runs once on x' (two BN updates per batch, not three)",
                         common=dict(merged_forward=True), base="faithful"),
    }

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        s, p = self.student.eval(), self.peer.eval()
        with torch.no_grad():
            z_p = p(x)
        return pgd(lambda xa: kl(z_p, s(xa), self.p.attack_reduction), x, eps=self.p.eps,
                   step=self.p.step, steps=self.p.steps, start="normal", clamp_start=False)

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q, r = self.p, self.p.kl_reduction
        s_net, p_net = self.student.train(), self.peer.train()
        p = p_net(x_adv)
        s = s_net(x_adv)
        loss_peer = q.g1 * F.cross_entropy(p, y) + q.g2 * q.tp**2 * kl(s, p, r, q.tp)
        s2 = s if q.merged_forward else s_net(x_adv)
        s_nat = s_net(x)
        loss_stu = (q.l1 * F.cross_entropy(s2, y)
                    + q.l2 * q.t**2 * kl(p.detach(), s2, r, q.t)
                    + q.l3 * q.t**2 * kl(s_nat, s2, r, q.t))
        return loss_peer + loss_stu
