"""IAD-II (Zhu et al., ICLR 2022): AKD2 with an introspective student that partially trusts T.

Authors' code: github.com/ZFancy/IAD, IAD-II.py ("introspective adversarial distillation
based on AKD2"; `iad` is IAD-I, on ARD). AKD2's attack and terms (`akd2`); from 0-based epoch
`warmup` = 40 on, with w_i = p_T(y_i | x'_i) ** beta (beta = 0.1, detached: `.item()` floats),
the robust teacher's bracket a1 t^2 KL_bm(T_AT(x')/t || S(x')/t) becomes
    a1 t^2 (1/B) sum_i [w_i KL_t(T_AT(x'_i) || S(x'_i)) + (1 - w_i) KL(S(x_i) || S(x'_i))]
with the self term at temperature 1 and S(x) (train mode, after S(x')) NOT detached. Unlike
IAD-I's code, the teacher term IS weighted by w_i, as the paper's equation. The script's second
T_AT(x') forward (`guide`, eval mode) equals the first and is not repeated. ARD's LR bug: `fixed`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from bench.methods.akd2 import AKD2, ST_TEACHER, AKD2Params
from bench.methods.ard import FIXED
from bench.methods.iad import IAD_TEACHER, weighted_kl
from torch import Tensor

from bench.core.distiller import FAITHFUL, Preset, bounded, paper
from bench.core.registry import register


@dataclass(frozen=True)
class IAD2Params(AKD2Params):
    """Defaults: IAD-II.py (AKD2.py's, plus beta and the warm-up `--begin`)."""

    beta: float = bounded(0.1, ge=0)  # w_i = p_T(y_i | x'_i) ** beta
    warmup: int = bounded(40, ge=0)  # 0-based epoch from which the student is introspective
    landmarks: ClassVar[tuple[str, ...]] = ("warmup",)  # an epochs override scales it


@register("iad2")
class IAD2(AKD2):
    """IAD-II (Zhu et al. 2022): AKD2, its robust term split by p_T(y|x')^0.1 from epoch 40."""

    display_name = "IAD-II"
    Params = IAD2Params
    presets = {
        # 40 of 200 epochs: on the 15-epoch embedded budget the introspection starts at epoch 3.
        "faithful": Preset(FAITHFUL.doc, per_dataset={"digits": dict(warmup=3)}),
        "paper": dataclasses.replace(  # the full schedule on the embedded set too
            paper(cifar10=IAD_TEACHER, cifar100=IAD_TEACHER,
                  clean={"cifar10": ST_TEACHER, "cifar100": ST_TEACHER}),
            per_dataset={"digits": dict(warmup=40)}),
        "fixed": FIXED,  # IAD-II.py has ARD's LR bug too
    }

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        s_adv, t_at, t_st = self.forwards(x_adv)
        if self.epoch < self.p.warmup:
            return self.objective(s_adv, t_at, t_st, y)
        w = F.softmax(t_at, dim=1).gather(1, y[:, None]).squeeze(1) ** self.p.beta
        s_nat = self.student(x)  # train mode, with gradient: a BN update from the warm-up on
        own = weighted_kl(s_nat, s_adv, 1 - w, "batchmean")
        return self.objective(s_adv, t_at, t_st, y, w, own)

