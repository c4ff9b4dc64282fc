"""IBD (Kuang et al., NeurIPS 2023): robust soft labels plus adaptive feature distillation.

Authors' code: github.com/SkyKuang/IBD, defense/IBD_module.py (train.sh, train.py). The attack
draws x0 = x + 0.001 N(0, I) (not clamped); the teacher, in eval mode and without gradient,
gives its logits and block features at x0; S in EVAL mode maximises KL_sum(T(x0) || S(x')).
Then, S in train mode, S(x) and S(x') (with block features) and the adaptor in train mode:
    (1 - a) KL_bm(T(x0) || S(x)) + a KL_bm(T(x0) || S(x')) + b AFD(S_feats(x'), T_feats(x0))
a = b = 0.8. AFD is Ji et al.'s attention-based feature distillation (clovaai/attention-
feature-distillation, distill/AFD.py): a learned adaptor, trained by its own SGD alongside S.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.distiller import FAITHFUL, Distiller, Params, Preset, bounded, paper
from bench.core.registry import register
from bench.eval.attacks import kl, pgd, random_start
from bench.models.features import BLOCKS, Tap


@dataclass(frozen=True)
class IBDParams(Params):
    """Defaults: train.sh / IBD_module.py (CIFAR-10). `max_epoch=150` runs 0..150: 151 epochs."""

    epochs: int = 151
    milestones: tuple[int, ...] = (100, 125)  # piecewise: /10 at decay_epoch1, /100 at 2
    weight_decay: float = 5e-4
    seed: int | None = 111
    a: float = bounded(0.8, ge=0, le=1)  # convex: a KL(T||S(x')), (1 - a) KL(T||S(x))
    b: float = bounded(0.8, ge=0)  # the feature term's weight
    qk_dim: int = bounded(128, ge=1)  # the adaptor's query/key width
    # the first k block features of each network (None: all): the code's hint_layers 1..8
    # (ResNet-18's 8 blocks) and guide_layers 1..15 (WRN-34-10's 15), whatever the networks
    student_blocks: int | None = bounded(8, ge=1)
    teacher_blocks: int | None = bounded(15, ge=1)


class BnLinear(nn.Module):
    """Linear then BatchNorm1d (then ReLU if asked): the code's `nn_bn_relu`."""

    def __init__(self, nin: int, nout: int) -> None:
        super().__init__()
        self.linear, self.bn = nn.Linear(nin, nout), nn.BatchNorm1d(nout)

    def forward(self, x: Tensor, relu: bool = True) -> Tensor:
        out = self.bn(self.linear(x))
        return F.relu(out) if relu else out


def spatial(f: Tensor) -> Tensor:
    """A map's per-position energy, mean over channels of f^2: (B, C, H, W) -> (B, 1, H, W)."""
    return f.pow(2).mean(1, keepdim=True)


class Adaptor(nn.Module):
    """AFD's attention over (student layer, teacher layer) pairs: each teacher layer's query
    against every student layer's bilinear key, plus learned positional logits, weighs the
    squared distance of their normalised spatial energy maps (the student's pooled to the
    teacher's size)."""

    def __init__(self, s_channels: list[int], t_channels: list[int], qk_dim: int) -> None:
        super().__init__()
        self.qk_dim, n_s, n_t = qk_dim, len(s_channels), len(t_channels)
        self.key = nn.ModuleList(BnLinear(c, qk_dim) for c in s_channels)
        self.bilinear = BnLinear(qk_dim, qk_dim * n_t)
        self.query = nn.ModuleList(BnLinear(c, qk_dim) for c in t_channels)
        self.p_t = nn.Parameter(torch.empty(n_t, qk_dim))
        self.p_s = nn.Parameter(torch.empty(n_s, qk_dim))
        nn.init.xavier_normal_(self.p_t)
        nn.init.xavier_normal_(self.p_s)

    def forward(self, g_s: list[Tensor], g_t: list[Tensor]) -> Tensor:
        b, n_s, n_t = len(g_s[0]), len(g_s), len(g_t)
        key = torch.stack([k(f.mean((2, 3))) for k, f in zip(self.key, g_s, strict=True)], 1)
        key = self.bilinear(key.view(b * n_s, -1), relu=False).view(b, n_s, n_t, -1)
        query = torch.stack([q(f.mean((2, 3)), relu=False)
                             for q, f in zip(self.query, g_t, strict=True)], 1)
        logit = (torch.einsum("bstq,btq->bts", key, query) + self.p_t @ self.p_s.t()) / np.sqrt(
            self.qk_dim)
        att = F.softmax(logit, dim=2)  # b x t x s
        total = logit.new_zeros(())
        for j, f_t in enumerate(g_t):
            v_t = F.normalize(spatial(f_t).flatten(1), dim=1)
            v_s = F.normalize(torch.stack([F.adaptive_avg_pool2d(spatial(f), f_t.shape[2:])
                                           .flatten(1) for f in g_s], 1), dim=2)
            diff = (v_s - v_t.unsqueeze(1)).pow(2).mean(2)  # b x s
            total = total + (diff * att[:, j]).sum(1).mean()
        return total


def channels(tap: Tap, like: Tensor, n: int | None) -> list[int]:
    """The channel counts of the first `n` features of `tap` (a probe on zeros, eval mode)."""
    net, mode = tap.net, tap.net.training
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    net.eval()  # no BN-statistics update
    with torch.no_grad():
        _, feats = tap(like.new_zeros(2, conv.in_channels, 32, 32))
    net.train(mode)
    return [f.shape[1] for f in feats[:n]]


@register("ibd")
class IBD(Distiller):
    """IBD (Kuang et al. 2023): RSLAD-style soft labels + attention feature distillation."""

    display_name = "IBD"
    needs_teacher = True
    Params = IBDParams
    features = {"student": BLOCKS, "teacher": BLOCKS}
    presets = {
        "faithful": FAITHFUL,
        # train.sh's teacher: RobustBench's TRADES WRN-34-10 (`--model_name
        # Zhang2019Theoretically`); the paper's table for CIFAR-100 was not reachable
        "paper": paper("ibd", cifar10="robustbench:Zhang2019Theoretically"),
        "fixed": Preset("faithful, but every block of each network feeds the adaptor (the code "
                        "hard-codes ResNet-18's 8 student and WRN-34's 15 teacher blocks)",
                        common=dict(student_blocks=None, teacher_blocks=None), base="faithful"),
    }

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.s_tap = Tap(self.student, self.features["student"])
        self.t_tap = Tap(self.teacher, self.features["teacher"])
        like = next(self.student.parameters())
        self.adaptor = Adaptor(channels(self.s_tap, like, self.p.student_blocks),
                               channels(self.t_tap, like, self.p.teacher_blocks),
                               self.p.qk_dim).to(like)
        self._soft: tuple[Tensor, Tensor, list[Tensor]] | None = None  # (x, T(x0), T feats)

    def trainable(self) -> list[nn.Module]:
        return [self.student, self.adaptor]

    def networks(self) -> dict[str, nn.Module]:
        """The adaptor trains with the student's SGD settings and schedule, as the code's
        aux_optimizer (lr 0.1, /10 at decay_epoch1 and decay_epoch2, momentum 0.9, wd 5e-4)."""
        return {"student": self.student, "adaptor": self.adaptor}

    def _teacher(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        self.teacher.eval()
        with torch.no_grad():
            t, feats = self.t_tap(x)
        return t, feats[:self.p.teacher_blocks]

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        q = self.p
        x0 = random_start(x, "normal", q.eps, clamp=False)
        t, feats = self._teacher(x0)
        self._soft = (x, t, feats)
        s = self.student.eval()
        return pgd(lambda xa: kl(t, s(xa), "sum"), x, eps=q.eps, step=q.step, steps=q.steps,
                   start="normal", x0=x0)

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        """With no attack of this batch before (a loss alone), the teacher sees x itself."""
        q = self.p
        soft = self._soft if self._soft is not None and self._soft[0] is x else None
        self._soft = None
        t, t_feats = soft[1:] if soft is not None else self._teacher(x)
        s_net = self.student.train()
        s_nat = s_net(x)
        s_adv, s_feats = self.s_tap(x_adv)
        feat = self.adaptor.train()(s_feats[:q.student_blocks], t_feats)
        return ((1 - q.a) * kl(t, s_nat, "batchmean") + q.a * kl(t, s_adv, "batchmean")
                + q.b * feat)
