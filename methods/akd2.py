"""AKD2 (Chen et al., ICLR 2021): distillation from a robust and a standard teacher at once.

Authors' code, the version the distillation papers compare against: github.com/ZFancy/IAD,
AKD2.py (teachers from pre_train/AT.py and pre_train/ST.py). The student S is attacked as in
ARD (train mode, uniform start not clamped, CE summed); both teachers, in eval mode and
without gradient, see only the student's x'. With KL_bm = (1/B) sum_i KL_i, per batch:
    (1 - a1 - a2) CE(S(x'), y) + a1 t^2 KL_bm(T_AT(x')/t || S(x')/t)
                               + a2 t^2 KL_bm(T_ST(x')/t || S(x')/t)
a1 = 0.5, a2 = 0.25, t = 1; S(x'), the attack's final forward, is the one train-mode forward of
the loss. The script has ARD's LR bug (the factor applied to the initial LR): `fixed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from bench.methods.ard import FIXED, train_mode_pgd
from bench.methods.iad import IAD_TEACHER, weighted_kl
from torch import Tensor

from bench.core.distiller import FAITHFUL, Distiller, Params, RangeError, bounded, paper
from bench.core.registry import register
from bench.eval.attacks import kl


@dataclass(frozen=True)
class AKD2Params(Params):
    """Defaults: AKD2.py (CIFAR-10 and CIFAR-100 alike: batch 128, seed 1)."""

    epochs: int = 200
    milestones: tuple[int, ...] = (100, 150)
    lr_schedule: Literal["multistep", "ard"] = "ard"
    seed: int | None = 1
    t: float = bounded(1.0, gt=0)  # temperature of both teacher terms
    a1: float = bounded(0.5, ge=0, le=1)  # the robust teacher's weight
    a2: float = bounded(0.25, ge=0, le=1)  # the standard teacher's; CE(S(x'), y) gets the rest

    def check(self) -> None:
        """The ranges, and a1 + a2 <= 1: the CE weight 1 - a1 - a2 is never negative."""
        super().check()
        if self.a1 + self.a2 > 1:
            raise RangeError(f"a1={self.a1!r} plus a2={self.a2!r} is above 1: valid a1 + a2 <= 1 "
                             "(CE(S(x'), y) is weighted by 1 - a1 - a2)")


# IAD's own standard-trained teacher (pre_train/ST.py): `standard`'s `iad-teacher` preset.
ST_TEACHER = ("standard", "resnet18", "iad-teacher")


@register("akd2")
class AKD2(Distiller):
    """AKD2 (Chen et al. 2021): CE + robust and standard teachers' KD, all on S's own x'."""

    display_name = "AKD2"
    needs_teacher = needs_clean_teacher = True
    Params = AKD2Params
    presets = {
        "faithful": FAITHFUL,
        # ZFancy/IAD's teachers: a PGD-AT ResNet-18 attacked in eval mode (pre_train/AT.py)
        # and a standard-trained ResNet-18 (pre_train/ST.py), both LR x0.1 at 99 and 149
        "paper": paper(cifar10=IAD_TEACHER, cifar100=IAD_TEACHER,
                       clean={"cifar10": ST_TEACHER, "cifar100": ST_TEACHER}),
        "fixed": FIXED,  # AKD2.py has ARD's LR bug too
    }

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        return train_mode_pgd(self.student, x, y, self.p)

    def forwards(self, x_adv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """S(x') in train mode (the attack's final forward in the script), then T_AT(x') and
        T_ST(x') in eval mode without gradient."""
        s_adv = self.student.train()(x_adv)
        with torch.no_grad():
            return s_adv, self.teacher.eval()(x_adv), self.clean_teacher.eval()(x_adv)

    def objective(self, s_adv: Tensor, t_at: Tensor, t_st: Tensor, y: Tensor,
                  w: Tensor | None = None, robust_extra: Tensor | None = None) -> Tensor:
        """The script's sum; IAD-II weighs the robust teacher's rows by `w` and adds
        `robust_extra` inside its a1 t^2 bracket."""
        q = self.p
        robust = weighted_kl(t_at, s_adv, w, "batchmean", q.t)
        if robust_extra is not None:
            robust = robust + robust_extra
        return ((1 - q.a1 - q.a2) * F.cross_entropy(s_adv, y) + q.a1 * q.t**2 * robust
                + q.a2 * q.t**2 * kl(t_st, s_adv, "batchmean", q.t))

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        return self.objective(*self.forwards(x_adv), y)
