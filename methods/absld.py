"""ABSLD (Zhao et al., NeurIPS 2024): anti-bias soft label distillation, a fairness-aware RSLAD.

The teacher's clean logits are divided per sample by a per-CLASS temperature tau[y]; the
student learns them with RSLAD's attack and loss (5/6 on x', 1/6 on x, hand-written KL with
1e-5, T = 1 on the student). At every epoch end each class's temperature moves against its
share of the student's loss: with E_k the epoch's summed per-sample CE of class k (CE(S(x'), y)
for tau_adv, CE(S(x), y) for tau_nat, from the training forwards), gap = E - mean(E),
    tau <- clamp(tau - r * gap / max|gap|, 0.5, 5),
r = 0.1, multiplied by 0.1 with the LR, at the end of the epoch BEFORE that epoch's update.
The code divides through `.detach()` aliases of ONE tensor, in place: the attack and both
terms all see z_T / tau_adv[y] / tau_nat[y] (kept in `faithful`); `fixed` gives tau_adv to
the attack and the adversarial term, tau_nat to the natural one. (The code writes
log(softmax(s)) where RSLAD's CIFAR-10 helper, reused here, has log_softmax(s): equal unless
a probability underflows.)
Authors' code: github.com/zhaoshiji123/ABSLD, resnet18_absld_cifar10.py, absld_loss.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from bench.methods.rslad import RSLADParams, rslad_kl, soft_label_pgd
from torch import Tensor

from bench.core.distiller import FAITHFUL, Distiller, Preset, bounded, paper
from bench.core.registry import register


@dataclass(frozen=True)
class ABSLDParams(RSLADParams):
    """Defaults: resnet18_absld_cifar10.py (RSLAD's schedule and weights, seed 0)."""

    tau_rate: float = bounded(0.1, ge=0)  # r of the temperature update, decayed with the LR
    tau_min: float = bounded(0.5, gt=0)  # a temperature divides the teacher's logits
    tau_max: float = bounded(5.0, gt=0)
    aliased: bool = True  # the code's in-place alias: every use sees tau_adv[y] * tau_nat[y]
    ordered: ClassVar[tuple[tuple[str, str], ...]] = (("tau_min", "tau_max"),)


@register("absld")
class ABSLD(Distiller):
    """ABSLD (Zhao et al. 2024): RSLAD with per-class teacher temperatures set for fairness."""

    display_name = "ABSLD"
    needs_teacher = True
    Params = ABSLDParams
    presets = {
        "faithful": FAITHFUL,
        "paper": paper("absld", cifar10=("trades", "wrn34_10")),
        "fixed": Preset("faithful, but tau_adv tempers the attack and the adversarial term and "
                        "tau_nat the natural one (no in-place alias)",
                        common=dict(aliased=False), base="faithful"),
    }

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.tau_adv: Tensor | None = None  # per class, created at the first batch
        self.tau_nat: Tensor | None = None

    def tempered(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The teacher's clean logits divided per sample by the temperatures of its class:
        (for the attack and adversarial term, for the natural term)."""
        with torch.no_grad():
            z = self.teacher.eval()(x)
        if self.tau_adv is None:
            self.tau_adv = torch.ones(z.shape[1], device=z.device)
            self.tau_nat = torch.ones(z.shape[1], device=z.device)
        a = self.tau_adv.to(z.device)[y, None].to(z.dtype)
        n = self.tau_nat.to(z.device)[y, None].to(z.dtype)
        if self.p.aliased:
            both = z / a / n
            return both, both
        return z / a, z / n

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        return soft_label_pgd(self.student, self.tempered(x, y)[0], x, self.p)

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q = self.p
        z_adv, z_nat = self.tempered(x, y)
        s_net = self.student.train()
        s_adv, s_nat = s_net(x_adv), s_net(x)
        c = s_adv.shape[1]
        self.accumulate("adv", F.cross_entropy(s_adv, y, reduction="none"), y, c)
        self.accumulate("nat", F.cross_entropy(s_nat, y, reduction="none"), y, c)
        return q.scale * (q.w_adv * rslad_kl(z_adv, s_adv, q.kl_eps)
                          + q.w_nat * rslad_kl(z_nat, s_nat, q.kl_eps))

    def rate(self, epoch: int) -> float:
        """r of the update ending 0-based `epoch`: decayed as the LR of the epoch after it."""
        return self.p.tau_rate * self.p.lr_decay ** sum(epoch + 1 >= m for m in self.p.milestones)

    def on_epoch_end(self, sums: dict[str, Tensor]) -> None:
        r, q = self.rate(self.epoch), self.p
        for key in ("adv", "nat"):  # on the training device, also after a resume from CPU
            tau = getattr(self, f"tau_{key}").to(sums[key].device)
            gap = sums[key] - sums[key].mean()
            setattr(self, f"tau_{key}",
                    (tau - r * gap / gap.abs().max()).clamp(q.tau_min, q.tau_max))

    def state_dict(self) -> dict[str, Any]:
        return {"tau_adv": self.tau_adv, "tau_nat": self.tau_nat}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau_adv, self.tau_nat = state["tau_adv"], state["tau_nat"]
