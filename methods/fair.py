"""Fair-ARD family (Yue et al., NeurIPS 2023): ARD, IAD, RSLAD and MTARD with class weights.

Each base method's per-sample loss terms are multiplied by w[y_i], the weight of the sample's
class. The weights come from the training attack itself: kappa_i counts the PGD iterates
x_0 .. x_{K-1} (those the attack differentiates, in the attack's own network mode) that S
classifies right; per class, kappa_k = (sum of kappa_i over the epoch) / (N / C), then
    v = (1 / (kappa + 1e-5)) ** beta,  w = clamp(C * v / sum(v), 5/6, 5/2),  beta = 2,
computed at the end of every epoch for the next one (ones in the first). Fair-RSLAD's script
writes 1 / kappa (no 1e-5): a class never right gives NaN weights (`fixed` adds the 1e-5).
Code: github.com/NISP-official/Fair-ARD at 910c8cd (Fair-ARD.py, Fair-IAD.py, Fair-RSLAD.py,
Fair-MTARD.py); docs/methods.md has every fact with its line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from bench.methods.ard import ARD, FIXED, ARDParams
from bench.methods.iad import IAD, IADParams, weighted_kl
from bench.methods.mtard import MTARD, MTARDParams
from bench.methods.rslad import RSLAD, RSLADParams
from torch import Tensor, nn

from bench.core.distiller import FAITHFUL, Distiller, Params, Preset, bounded, paper
from bench.core.registry import register


@dataclass(frozen=True)
class Reweight(Params):
    """The class-weight rule's constants (all four scripts)."""

    fair_beta: float = bounded(2.0, ge=0)  # `--beta`: v = (1 / (kappa + eps)) ** beta
    kappa_eps: float = bounded(1e-5, ge=0)  # 0 in Fair-RSLAD's script
    w_min: float = bounded(5 / 6, gt=0)  # the clamp after normalising to sum C
    w_max: float = bounded(5 / 2, gt=0)
    ordered: ClassVar[tuple[tuple[str, str], ...]] = (("w_min", "w_max"),)


def class_weights(kappa: Tensor, p: Reweight) -> Tensor:
    """The scripts' `weight_assign`: normalise (1 / (kappa + eps)) ** beta to sum C, clamp."""
    v = (1 / (kappa + p.kappa_eps)) ** p.fair_beta
    return (v * (kappa.numel() / v.sum())).clamp(p.w_min, p.w_max)


class Hits(nn.Module):
    """S seen by an attack: counts, per sample, the forwards that classify y right (the
    scripts' Kappa, updated before each PGD step), on the device."""

    def __init__(self, net: nn.Module, y: Tensor) -> None:
        super().__init__()
        self.net, self.y = net, y
        self.hits = torch.zeros(len(y), device=y.device)
        self.classes = 0

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        self.hits = self.hits + (out.detach().argmax(1) == self.y)
        self.classes = out.shape[1]
        return out


class ClassWeighted(Distiller):
    """The Fair-ARD re-weighting on top of a base method (first in the MRO): the base's attack
    with its iterates counted, per-class weights updated at every epoch end and checkpointed."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.class_w: Tensor | None = None  # None: the first epoch's ones

    @contextmanager
    def counting(self, y: Tensor) -> Iterator[None]:
        """Within the block, `self.student` is S wrapped in `Hits`; the counts then go to the
        epoch's per-class sums (and the number of samples per class)."""
        net = self.student
        self.student = hits = Hits(net, y)
        try:
            yield
        finally:
            self.student = net
        if hits.classes:  # an attack that ran S at least once (the training attack always does)
            self.accumulate("hits", hits.hits, y, hits.classes)
            self.accumulate("n", torch.ones_like(hits.hits), y, hits.classes)

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        with self.counting(y):
            return super().attack(x, y)

    def weights(self, y: Tensor, like: Tensor) -> Tensor:
        """w[y_i] per sample, in the logits' dtype (the scripts' reweight is float32)."""
        if self.class_w is None:
            return torch.ones(len(y), device=like.device, dtype=like.dtype)
        return self.class_w.to(like.device)[y].to(like.dtype)

    def on_epoch_end(self, sums: dict[str, Tensor]) -> None:
        super().on_epoch_end(sums)
        c = sums["hits"].numel()
        per_class = (sums["n"].double().sum() / c).float()  # len(dataset) / num_classes
        self.class_w = class_weights(sums["hits"] / per_class, self.p)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "class_w": self.class_w}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.class_w = state["class_w"]


def weighted_hand_kl(t_logits: Tensor, s_logits: Tensor, w: Tensor, eps: float) -> Tensor:
    """RSLAD's hand-written KL with each sample's row times w_i, averaged over B*C."""
    b = F.softmax(t_logits, dim=1)
    return (w[:, None] * (b * torch.log(b + eps) - b * F.log_softmax(s_logits, dim=1))).mean()


def weighted_ce(logits: Tensor, y: Tensor, w: Tensor) -> Tensor:
    return (w * F.cross_entropy(logits, y, reduction="none")).mean()


CIFAR10_TEACHER = ("trades", "wrn34_10")  # the scripts' WideResNet() is WRN-34-10


@dataclass(frozen=True)
class FairARDParams(ARDParams, Reweight):
    """Defaults: Fair-ARD.py (ARD's, batch 128 on every data set; no seed)."""


@register("fair_ard")
class FairARD(ClassWeighted, ARD):
    """Fair-ARD (Yue et al. 2023): ARD with each sample's KL and CE times its class weight."""

    display_name = "Fair-ARD"
    Params = FairARDParams
    presets = {"faithful": FAITHFUL, "paper": paper("fair", cifar10=CIFAR10_TEACHER),
               "fixed": FIXED}

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q = self.p
        s_net, t_net = self.student.train(), self.teacher.eval()
        s_adv = s_net(x_adv)  # the attack's final forward in the script
        with torch.no_grad():
            t_nat = t_net(x)
        s_nat = s_net(x)  # computed even when a = 1: a BN-statistics update
        w = self.weights(y, s_adv)
        return (q.a * q.t**2 * weighted_kl(t_nat, s_adv, w, q.kl_reduction, q.t)
                + (1 - q.a) * weighted_ce(s_nat, y, w))


@dataclass(frozen=True)
class FairIADParams(IADParams, Reweight):
    """Defaults: Fair-IAD.py (IAD-I's: t = 1, beta_iad = 0.1 from 0-based epoch 60, seed 1)."""


@register("fair_iad")
class FairIAD(ClassWeighted, IAD):
    """Fair-IAD (Yue et al. 2023): IAD-I with every term times the class weight; CE on S(x')."""

    display_name = "Fair-IAD"
    Params = FairIADParams
    presets = {"faithful": Preset(FAITHFUL.doc, per_dataset={"digits": dict(warmup=5)}),
               "paper": paper("fair", cifar10=CIFAR10_TEACHER), "fixed": FIXED}

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q, r = self.p, self.p.kl_reduction
        s_net, t_net = self.student.train(), self.teacher.eval()
        s_adv = s_net(x_adv)  # the attack's final forward in the script
        s_nat = s_net(x)  # every epoch, with gradient
        with torch.no_grad():
            if q.code_forwards:
                s_net(x_adv)  # `basicop`: unused, but a BN-statistics update
            t_nat, t_adv = t_net(x), t_net(x_adv)
            trust = F.softmax(t_adv, dim=1).gather(1, y[:, None]).squeeze(1) ** q.beta
        w = self.weights(y, s_adv)
        if self.epoch < q.warmup:  # the script's else branch: the teacher term alone
            return q.a * q.t**2 * weighted_kl(t_nat, s_adv, w, r, q.t)
        w_t = w * trust if q.weight_teacher else w
        return (q.a * q.t**2 * weighted_kl(t_nat, s_adv, w_t, r, q.t)
                + q.a * weighted_kl(s_nat, s_adv, (1 - trust) * w, r)
                + (1 - q.a) * weighted_ce(s_adv, y, w))


@dataclass(frozen=True)
class FairRSLADParams(RSLADParams, Reweight):
    """Defaults: Fair-RSLAD.py (RSLAD's; 1 / kappa without the 1e-5)."""

    kappa_eps: float = 0.0


@register("fair_rslad")
class FairRSLAD(ClassWeighted, RSLAD):
    """Fair-RSLAD (Yue et al. 2023): RSLAD with both KL terms times the class weight."""

    display_name = "Fair-RSLAD"
    Params = FairRSLADParams
    presets = {
        "faithful": RSLAD.presets["faithful"],
        "paper": paper("fair", cifar10=CIFAR10_TEACHER),
        "fixed": Preset("faithful, but 1 / (kappa + 1e-5) as the other three scripts: a class "
                        "no iterate classifies right gives NaN weights otherwise",
                        common=dict(kappa_eps=1e-5), base="faithful"),
    }

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q = self.p
        s_net = self.student.train()
        s_adv, s_nat = s_net(x_adv), s_net(x)
        with torch.no_grad():
            t = self.teacher(x)
        w = self.weights(y, s_adv)
        return q.scale * (q.w_adv * weighted_hand_kl(t, s_adv, w, q.kl_eps)
                          + q.w_nat * weighted_hand_kl(t, s_nat, w, q.kl_eps))


@dataclass(frozen=True)
class FairMTARDParams(MTARDParams, Reweight):
    """Defaults: Fair-MTARD.py (MTARD's; the natural term's target is T_adv(x'), a bug)."""

    clean_target: bool = False  # the natural term learns T_nat(x) (MTARD's loss)


@register("fair_mtard")
class FairMTARD(ClassWeighted, MTARD):
    """Fair-MTARD (Yue et al. 2023): MTARD with both KL terms times the class weight."""

    display_name = "Fair-MTARD"
    Params = FairMTARDParams
    presets = {
        "faithful": MTARD.presets["faithful"],
        "paper": paper("fair", cifar10=CIFAR10_TEACHER, clean={"cifar10": ("standard",
                                                                           "resnet56")}),
        "fixed": Preset("faithful, but the natural term learns the clean teacher's T_nat(x) "
                        "(the script computes it and uses T_adv(x') instead)",
                        common=dict(clean_target=True), base="faithful"),
    }

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q = self.p
        with torch.no_grad():
            t_nat = self.clean_teacher(x)
        s_net = self.student.train()
        s_adv = s_net(x_adv)
        with torch.no_grad():
            t_adv = self.teacher(x_adv)
        s_nat = s_net(x)
        w = self.weights(y, s_adv)
        t_soft = t_nat if q.clean_target else t_adv
        l_adv = q.scale * weighted_hand_kl(t_adv / self.tau_adv, s_adv, w, q.kl_eps)
        l_nat = q.scale * weighted_hand_kl(t_soft / self.tau_nat, s_nat, w, q.kl_eps)
        self.update_temperatures(t_adv, t_soft)
        self.update_weights(l_adv, l_nat)
        return self.weighted(l_adv, l_nat)
