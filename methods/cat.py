"""CAT (Liu et al., arXiv 2303.14922): two networks adversarially trained from scratch with
different methods, each distilled from the other's logits on its own adversarial examples.

The authors' code (github.com/liuxingbin/CAT, train_cat.py launched by train_cat.sh, which
pairs TRADES with ALP): network 1 (the student here, the network the script logs) crafts
TRADES' examples (trades.py: eval mode, x + 0.001 N(0, I), KL_sum), network 2 (the peer)
PGD-10 on CE_mean from a uniform start, in eval mode (--BNeval). In train mode, S on x, x_s;
P on x_p, x; S on x_p and P on x_s as detached targets. Loss
1/20 (L_TRADES(S) + L_ALP(P)) + 19/20 (KL_bm(P(x_s) || S(x_s)) + KL_bm(S(x_p) || P(x_p))),
one backward, one SGD each. After the step the script runs S(x) in train mode to log the
training accuracy: a BatchNorm update of S's running statistics, kept in `faithful`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.core.distiller import FAITHFUL, Distiller, Params, Preset, bounded, paper
from bench.core.registry import register
from bench.eval.attacks import kl, pgd


@dataclass(frozen=True)
class CATParams(Params):
    """Defaults: train_cat.sh (ResNet-18 pair, CIFAR-10); epochs 0-based: the script's
    1-based `t < 100`, `t < 150` decay at 0-based 99 and 149."""

    epochs: int = 200
    milestones: tuple[int, ...] = (99, 149)
    weight_decay: float = 5e-4
    seed: int | None = 0
    beta: float = bounded(6.0, ge=0)  # the student's TRADES KL weight
    pair: float = bounded(1.0, ge=0)  # the peer's ALP logit pairing (MSE mean) weight
    own: float = bounded(1 / 20, ge=0, le=1)  # weight of each network's own loss; 1 - own
    # weighs the mutual distillation
    peer_bn_eval: bool = True  # the peer's attack in eval mode (--BNeval, set by the .sh)
    log_forward: bool = True  # the script's post-step train-mode S(x): one more BN update


@register("cat")
class CAT(Distiller):
    """CAT (Liu et al. 2023): a TRADES student and an ALP peer, each distilled from the other."""

    display_name = "CAT"
    needs_peer = True
    Params = CATParams
    presets = {
        "faithful": FAITHFUL,
        "fixed": Preset("faithful, without the logging forward S(x) in train mode after each "
                        "step (a BatchNorm update of the student from statistics code)",
                        common=dict(log_forward=False), base="faithful"),
        "paper": paper(),
    }

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.peer_adv: tuple[Tensor, Tensor] | None = None  # (x, x_p) from attack(), for loss()
        self._logged: Tensor | None = None  # the batch whose S(x) after_step() runs

    def peer_attack(self, x: Tensor, y: Tensor) -> Tensor:
        """The peer's examples: PGD on CE_mean from a uniform start clipped to [0, 1]."""
        p = self.peer.train(not self.p.peer_bn_eval)
        return pgd(lambda xa: F.cross_entropy(p(xa), y), x, eps=self.p.eps, step=self.p.step,
                   steps=self.p.steps, start="uniform")

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        """The student's TRADES examples (returned) and then the peer's (kept for loss())."""
        s = self.student.eval()
        with torch.no_grad():
            s_nat = s(x)
        x_s = pgd(lambda xa: kl(s_nat, s(xa), "sum"), x, eps=self.p.eps, step=self.p.step,
                  steps=self.p.steps, start="normal", clamp_start=False)
        self.peer_adv = (x, self.peer_attack(x, y))
        return x_s

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q, kept = self.p, self.peer_adv
        x_p = kept[1] if kept is not None and kept[0] is x else self.peer_attack(x, y)
        self.peer_adv = None
        s_net, p_net = self.student.train(), self.peer.train()
        s_nat, s_adv = s_net(x), s_net(x_adv)
        loss_s = F.cross_entropy(s_nat, y) + q.beta * kl(s_nat, s_adv, "batchmean")
        p_adv, p_nat = p_net(x_p), p_net(x)
        loss_p = (0.5 * (F.cross_entropy(p_adv, y) + F.cross_entropy(p_nat, y))
                  + q.pair * F.mse_loss(p_adv, p_nat))
        with torch.no_grad():  # targets only (detached in the script): their BN updates count
            s_on_p, p_on_s = s_net(x_p), p_net(x_adv)
        mutual = kl(p_on_s, s_adv, "batchmean") + kl(s_on_p, p_adv, "batchmean")
        self._logged = x if q.log_forward else None
        return q.own * (loss_s + loss_p) + (1 - q.own) * mutual

    def after_step(self) -> None:
        """The script's logging forward S(x) after both steps, in train mode (its BN update)."""
        x, self._logged = self._logged, None
        if x is not None:
            with torch.no_grad():
                self.student.train()(x)
