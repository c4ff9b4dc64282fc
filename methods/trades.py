"""TRADES (Zhang et al., ICML 2019): CE on clean x plus beta * KL(S(x) || S(x')).

Official code: github.com/yaodongyu/TRADES (trades.py, train_trades_cifar10.py). The script
counts epochs from 1 and decays the LR x0.1 at epochs >= 75, 90, 100 with 76 epochs: 0-based
milestones (74, 89, 99), so epochs 0..73 run at 0.1 and 74..75 at 0.01. Only a CIFAR-10 script
exists; CIFAR-100 and TinyImageNet reuse its values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.core.distiller import FAITHFUL, PAPER, Distiller, Params, Preset, bounded
from bench.core.registry import register
from bench.eval.attacks import KLReduction, kl, pgd


@dataclass(frozen=True)
class TRADESParams(Params):
    """Defaults: train_trades_cifar10.py (WRN-34-10, seed 1)."""

    eps: float = 0.031
    step: float = 0.007
    epochs: int = 76
    milestones: tuple[int, ...] = (74, 89, 99)
    seed: int | None = 1
    beta: float = bounded(6.0, ge=0)  # weight of the robust (KL) term
    kl_reduction: KLReduction = "batchmean"  # KLDivLoss(size_average=False) / batch_size
    attack_reduction: KLReduction = "sum"
    merged_forward: bool = False  # one S(x) forward instead of the authors' two


@register("trades")
class TRADES(Distiller):
    """TRADES (Zhang et al. 2019): CE(S(x)) + 6 KL(S(x)||S(x')) on a KL attack; trains teachers."""

    display_name = "TRADES"
    Params = TRADESParams
    presets = {
        "faithful": FAITHFUL,
        "paper": PAPER,
        "merged": Preset("faithful, but S runs once on x (two BN updates per batch, not three)",
                         common=dict(merged_forward=True), base="faithful"),
        "eps8": Preset("faithful with the bench's threat model: eps 8/255, step 2/255",
                       common=dict(eps=8 / 255, step=2 / 255), base="faithful"),
    }

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        s = self.student.eval()
        with torch.no_grad():
            s_nat = s(x)
        return pgd(lambda xa: kl(s_nat, s(xa), self.p.attack_reduction), x, eps=self.p.eps,
                   step=self.p.step, steps=self.p.steps, start="normal", clamp_start=False)

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q = self.p
        s_net = self.student.train()
        logits = s_net(x)
        s_adv = s_net(x_adv)
        s_nat = logits if q.merged_forward else s_net(x)  # NOT detached, as in the code
        return F.cross_entropy(logits, y) + q.beta * kl(s_nat, s_adv, q.kl_reduction)
