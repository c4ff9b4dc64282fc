"""CIARD (ICCV 2025, arXiv 2509.12633): B-MTARD's two teachers, a push-away term, and a robust
teacher that keeps training on the student's adversarial examples.

Per step (code: github.com/CIARD2025/CIARD, CIARD.py, mtard_loss.robust_inner_loss_push):
S(x) train; T_nat(x) eval and T_adv(x) TRAIN (a BN update, output unused), both without grad;
A_CE on S; S(x') train, T_adv(x') train with grad (its one forward also feeds the teacher's
CE), T_nat(x') eval. L1 = KL(T_adv(x') / tau_adv || S(x')), L2 = KL(T_nat(x) / tau_nat ||
S(x)) (RSLAD's hand-written KL); on the samples T_nat(x') misclassifies, L3 = the same KL of
S(x')/5 pushed away from T_nat(x'), scaled by c = 10^(min(floor log10 L1, floor log10 L2) -
floor log10 L3) (a constant). Loss L1 + L2 - c L3 (HEAD: the adaptive weights are updated but
unused; the first release ec8a38e weighs L1, L2 by them: `paper`). The teacher steps on
CE(T_adv(x'), y) after the student, from 1-based epoch 51, with its own SGD (momentum 0.1)
and cosine-exp LR. Since S(x) and T_adv(x) run BEFORE the attack, `attack()` runs them and
keeps S(x) for `loss()` of the same batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from bench.methods.mtard import Balanced, MTARDParams, ce_attack, hand_kl
from torch import Tensor

from bench.core.distiller import FAITHFUL, Preset, Schedule, TeacherTraining, bounded, paper
from bench.core.distributed import global_subset_mean
from bench.core.registry import register


@dataclass(frozen=True)
class CIARDParams(MTARDParams, TeacherTraining):
    """Defaults: CIARD.py (CIFAR-10). Epochs 0-based: the student's cosine-exp from 149
    (1-based 150), the teacher's LR from 49 and its steps from 50 (1-based epoch > 50)."""

    epochs: int = 300
    lr_schedule: Schedule = "cosine-exp"
    milestones: tuple[int, ...] = (149,)
    weight_rule: Literal["complement", "renormalise"] = "renormalise"
    adaptive: bool = False
    temp_rate: float = 1e-3
    rate_milestones: tuple[int, ...] | None = (215, 260, 285)
    rate_per_step: bool = True
    push_t: float = bounded(5.0, gt=0)  # the student's temperature in the push term
    teacher_lr: float = 1e-4
    teacher_momentum: float = 0.1
    teacher_weight_decay: float = 2e-4
    teacher_lr_schedule: Schedule = "off-cosine-exp"
    teacher_milestones: tuple[int, ...] = (49,)
    teacher_from: int = bounded(50, ge=0)  # first 0-based epoch of teacher steps
    landmarks: ClassVar[tuple[str, ...]] = ("teacher_from",)  # an epochs override scales it


def magnitude_scale(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """CIARD's scale_to_magnitude: 10^(min(floor log10 |a|, floor log10 |b|) - floor log10 |c|),
    a value of 0 read as 1e-7 (their isclose to 0), in float64 on the device."""
    a, b, c = (torch.where(v == 0, v + 1e-7, v) for v in (a, b, c))
    a, b, c = (torch.floor(torch.log10(v.abs())) for v in (a, b, c))
    return 10 ** (torch.minimum(a, b) - c)


def subset_kl(t_logits: Tensor, s_logits: Tensor, rows: Tensor, eps: float) -> Tensor:
    """`hand_kl(t_logits[rows], s_logits[rows], eps)` for a boolean `rows` without a host
    sync (boolean indexing waits for the device to learn the subset's size): the subset's
    rows moved first in order, the others zeroed, summed, over n x C (0 for no row)."""
    b = F.softmax(t_logits, dim=1)
    terms = b * torch.log(b + eps) - b * F.log_softmax(s_logits, dim=1)
    order = torch.argsort((~rows).to(torch.uint8), stable=True)
    kept = torch.where(rows[order, None], terms[order], 0)
    return kept.sum() / (rows.sum().clamp_min(1) * terms.shape[1])


# On the 15-epoch embedded budget the 300-epoch landmarks scale by 1/20: cosine from 7, teacher
# LR from 2 and steps from 3, rate decays at 11, 13, 14.
DIGITS = dict(milestones=(7,), teacher_milestones=(2,), teacher_from=3,
              rate_milestones=(11, 13, 14))


@register("ciard")
class CIARD(Balanced):
    """CIARD (2025): B-MTARD + push from T_nat's mistakes; the robust teacher keeps training."""

    display_name = "CIARD"
    trains_teacher = True
    Params = CIARDParams
    presets = {
        "faithful": Preset(FAITHFUL.doc, per_dataset={"digits": DIGITS}),
        "paper": dataclasses.replace(
            paper(cifar10=("trades", "wrn34_10"), cifar100=("trades", "wrn34_10"),
                  clean=dict(cifar10=("standard", "resnet56"), cifar100=("standard", "resnet56"))),
            doc="the first release (ec8a38e): B-MTARD's adaptive weights on L1 and L2; the "
                "paper's teachers, full schedule and checkpoint selection",
            common=dict(adaptive=True, selection="ciard")),
        "fixed": Preset("faithful, but the weight and temperature rates decay x0.1 once after "
                        "epochs 215, 260, 285, not after every step of them",
                        common=dict(rate_per_step=False), base="faithful"),
    }

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._pre: tuple[Tensor, Tensor, Tensor] | None = None  # (x, S(x), T_nat(x))
        self._t_adv: Tensor | None = None  # T_adv(x') of this batch, for teacher_loss

    def _before_attack(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s_nat = self.student.train()(x)
        with torch.no_grad():
            t_nat = self.clean_teacher(x)
            self.teacher.train()(x)  # unused: a BN-statistics update of the robust teacher
        return x, s_nat, t_nat

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        with torch.enable_grad():
            self._pre = self._before_attack(x)
        return ce_attack(self, x, y)

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q = self.p
        pre = self._pre if self._pre is not None and self._pre[0] is x else None
        _, s_nat, t_nat = pre or self._before_attack(x)
        self._pre = None
        s_adv = self.student.train()(x_adv)
        t_adv = self.teacher.train()(x_adv)
        with torch.no_grad():
            t_nat_adv = self.clean_teacher(x_adv)
        self._t_adv = t_adv
        l1 = hand_kl(t_adv.detach() / self.tau_adv, s_adv, q.kl_eps)
        l2 = hand_kl(t_nat / self.tau_nat, s_nat, q.kl_eps)
        self.update_temperatures(t_adv.detach(), t_nat)
        l1_all, l2_all = self.update_weights(l1, l2)  # the global batch's, as floats
        total = self.w_adv * l1 + self.w_nat * l2 if q.adaptive else 1 * l1 + 1 * l2
        wrong = t_nat_adv.argmax(1) != y
        l3 = subset_kl(t_nat_adv, s_adv / q.push_t, wrong, q.kl_eps)
        # under torchrun the scale and the mean come from the global batch's mistakes; with
        # none, the factor is 0 and the loss is `total` to the bit
        l3_all, factor = global_subset_mean(l3, wrong.sum(), self.shard_weight)
        scale = magnitude_scale(l1_all, l2_all, l3_all.double()) * factor
        return total - scale.to(l3) * l3

    def teacher_loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor | None:
        t_adv, self._t_adv = self._t_adv, None
        if self.epoch < self.p.teacher_from:
            return None
        if t_adv is None:
            t_adv = self.teacher.train()(x_adv)
        return F.cross_entropy(t_adv, y)
