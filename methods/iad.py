"""IAD-I (Zhu et al., ICLR 2022): ARD with an introspective student that partially trusts T.

Authors' code: github.com/ZFancy/IAD, IAD-I.py (the version with the unused `basicop`
forward, also copied into AdaAD's repo). With w_i = p_T(y_i | x'_i) ** beta (detached), per batch:
    a * t^2 * (1/B) sum_i KL(T(x_i)/t || S(x'_i)/t) + (1 - a) * CE(S(x), y)
    + [epoch >= warmup] a * (1/B) sum_i (1 - w_i) * KL(S(x_i) || S(x'_i))
S(x) in the last term is NOT detached. The teacher term is NOT weighted by w_i in the code
(the paper's equation weighs it by w_i: preset `paper-weights`). t = 1 (not ARD's 30).
Forwards (student in train mode): the attack's 10 + final S(x'), an unused S(x') (`basicop`),
then S(x) for the last term (from warm-up on) and S(x) again for the CE.
The script also has ARD's LR bug (factor applied to the initial LR): `fixed` repairs it.
IAD-II (IAD-II.py, on AKD2: a robust and a standard-trained teacher) is `iad2`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from bench.methods.ard import FIXED, train_mode_pgd
from torch import Tensor

from bench.core.distiller import FAITHFUL, Distiller, Params, Preset, bounded, paper
from bench.core.registry import register
from bench.eval.attacks import KLReduction, kl


@dataclass(frozen=True)
class IADParams(Params):
    """Defaults: IAD-I.py (CIFAR-10 and CIFAR-100 alike: batch 128, seed 1)."""

    epochs: int = 200
    milestones: tuple[int, ...] = (100, 150)
    lr_schedule: Literal["multistep", "ard"] = "ard"
    seed: int | None = 1
    t: float = bounded(1.0, gt=0)  # temperature of the teacher term
    a: float = bounded(1.0, ge=0, le=1)  # convex: distillation terms, (1 - a) CE(S(x), y)
    beta: float = bounded(0.1, ge=0)  # w_i = p_T(y_i | x'_i) ** beta
    warmup: int = bounded(60, ge=0)  # 0-based epoch from which the introspection term is added
    landmarks: ClassVar[tuple[str, ...]] = ("warmup",)  # an epochs override scales it
    kl_reduction: KLReduction = "batchmean"  # (1/B) * sum_i KL_i
    weight_teacher: bool = False  # the paper's w_i on the teacher term too
    code_forwards: bool = True  # the code's unused S(x') and duplicate S(x) forwards


def weighted_kl(target: Tensor, input: Tensor, w: Tensor | None, reduction: KLReduction,
                t: float = 1.0) -> Tensor:
    """sum_i w_i KL_i(softmax(target/t) || softmax(input/t)), reduced like
    `bench.eval.attacks.kl`."""
    if w is None:
        return kl(target, input, reduction, t)
    rows = F.kl_div(F.log_softmax(input / t, dim=1), F.softmax(target / t, dim=1),
                    reduction="none").sum(1)
    div = {"sum": 1, "batchmean": input.shape[0], "mean": input.numel()}[reduction]
    return (w * rows).sum() / div


IAD_TEACHER = ("pgdat", "resnet18", "iad-teacher")


@register("iad")
class IAD(Distiller):
    """IAD-I (Zhu et al. 2022): ARD, + (1 - p_T(y|x')^0.1)-weighted self-KD from epoch 60."""

    display_name = "IAD"
    needs_teacher = True
    Params = IADParams
    presets = {
        # 60 of 200 epochs: on the 15-epoch embedded budget the term starts at epoch 5.
        "faithful": Preset(FAITHFUL.doc, per_dataset={"digits": dict(warmup=5)}),
        # IAD's own teacher: a PGD-AT ResNet-18 attacked in eval mode (pre_train/AT.py)
        "paper": paper(cifar10=IAD_TEACHER, cifar100=IAD_TEACHER),
        "fixed": FIXED,  # IAD's script has ARD's LR bug too
        "paper-weights": Preset("faithful, but the teacher term is weighted by w_i as in the "
                                "paper's equation", common=dict(weight_teacher=True),
                                base="faithful"),
        "lean": Preset("faithful math without the code's unused S(x') and duplicate S(x) "
                       "forwards (fewer BN updates)", common=dict(code_forwards=False),
                       base="faithful"),
    }

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        return train_mode_pgd(self.student, x, y, self.p)

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q, r = self.p, self.p.kl_reduction
        s_net, t_net = self.student.train(), self.teacher.eval()
        s_adv = s_net(x_adv)  # the attack's final forward in the authors' code
        introspect = self.epoch >= q.warmup
        with torch.no_grad():
            if q.code_forwards:
                s_net(x_adv)  # `basicop`: unused, but a BN-statistics update
            t_nat, t_adv = t_net(x), t_net(x_adv)
            w = F.softmax(t_adv, dim=1).gather(1, y[:, None]).squeeze(1) ** q.beta
        w_t = w if q.weight_teacher and introspect else None
        loss = q.a * q.t**2 * weighted_kl(t_nat, s_adv, w_t, r, q.t)
        s_nat = None
        if introspect:
            s_nat = s_net(x)
            loss = loss + q.a * weighted_kl(s_nat, s_adv, 1 - w, r)
        s_ce = s_nat if s_nat is not None and not q.code_forwards else s_net(x)
        return loss + (1 - q.a) * F.cross_entropy(s_ce, y)
