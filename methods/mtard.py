"""MTARD (Zhao et al., ECCV 2022) and B-MTARD (TPAMI 2024): a robust and a clean teacher.

The student learns T_adv(x') at its own CE adversarial x' and T_nat(x) at x, with adaptive
weights balancing the two: every step, from this step's losses L and the first step's L0,
l = L / L0, r_nat = l_nat / (l_adv + l_nat), w_nat <- w_nat - a (w_nat - r_nat) BEFORE the
total is formed (python floats, as the code). B-MTARD also tempers each teacher's logits by a
global temperature (init 1), moved by eta = 0.001 after each step towards equal entropies and
clamped to [1, 10]. The rates a and eta are x0.1 at the end of epochs 215, 260, 285 (1-based,
with the LR). Code: github.com/zhaoshiji123/MTARD (mtard_resnet18_cifar10/100.py,
mtard_loss.py), github.com/zhaoshiji123/MTARD-extension (resnet18_mtard_cifar10.py; the
weights there update both w and renormalise, which equals MTARD's 1 - w_nat up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from bench.methods.rslad import rslad_kl
from torch import Tensor

from bench.core.distiller import FAITHFUL, Distiller, Params, Preset, bounded, paper
from bench.core.distributed import global_means
from bench.core.registry import register
from bench.eval.attacks import pgd


@dataclass(frozen=True)
class MTARDParams(Params):
    """Defaults: MTARD's CIFAR-10 script (RSLAD's schedule: LR x0.1 after epochs 215, 260, 285)."""

    epochs: int = 300
    milestones: tuple[int, ...] = (215, 260, 285)
    seed: int | None = 0
    scale: float = bounded(1.0, gt=0)  # both KL terms x10 on CIFAR-100
    kl_eps: float = bounded(1e-5, ge=0)  # RSLAD's hand-written KL
    weight_rate: float = bounded(0.025, ge=0, le=1)  # a: w moves this share towards r
    weight_rule: Literal["complement", "renormalise"] = "complement"  # MTARD / B-MTARD form
    adaptive: bool = True  # the adaptive weights form the total (CIARD's HEAD: 1 and 1)
    temp_rate: float = bounded(0.0, ge=0)  # eta of B-MTARD's temperatures (0: fixed at 1, MTARD)
    temp_min: float = bounded(1.0, gt=0)  # a temperature divides the teacher's logits
    temp_max: float = bounded(10.0, gt=0)
    rate_milestones: tuple[int, ...] | None = bounded(None, ge=0)  # a, eta x0.1 from these
    # 0-based epochs (None: the LR milestones)
    rate_per_step: bool = False  # CIARD's bug: x0.1 after EVERY step of epochs m - 1
    landmarks: ClassVar[tuple[str, ...]] = ("rate_milestones",)  # an epochs override scales it
    ordered: ClassVar[tuple[tuple[str, str], ...]] = (("temp_min", "temp_max"),)


def hand_kl(t_logits: Tensor, s_logits: Tensor, eps: float) -> Tensor:
    """RSLAD's hand-written KL (+eps in the log), mean over B*C."""
    return rslad_kl(t_logits, s_logits, eps)


def entropy(logits: Tensor) -> Tensor:
    """B-MTARD's (negative) entropy: mean over B*C of p log(p + 1e-5)."""
    p = F.softmax(logits, dim=1)
    return (torch.log(p + 1e-5) * p).mean()


def ce_attack(d: Distiller, x: Tensor, y: Tensor) -> Tensor:
    """A_CE: S eval, x + 0.001 N(0, I) not clamped, maximise CE_mean(S(x'), y)."""
    s = d.student.eval()
    return pgd(lambda xa: F.cross_entropy(s(xa), y), x, eps=d.p.eps, step=d.p.step,
               steps=d.p.steps, start="normal", clamp_start=False)


class Balanced(Distiller):
    """Two teachers balanced by adaptive weights and temperatures (state, checkpointed).

    The authors keep the weights and temperatures as python floats, read from the device
    every step. Here they are float64 tensors on the device, updated by the same IEEE double
    operations (the same bits on the CPU) without a host sync; a checkpoint stores floats."""

    needs_teacher = needs_clean_teacher = True

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.w_adv: float | Tensor = 0.5
        self.w_nat: float | Tensor = 0.5
        self.l0: tuple[float | Tensor, float | Tensor] | None = None  # the first step's losses
        self.tau_adv: float | Tensor = 1.0
        self.tau_nat: float | Tensor = 1.0
        self.weight_rate, self.temp_rate = self.p.weight_rate, self.p.temp_rate

    def update_weights(self, loss_adv: Tensor, loss_nat: Tensor) -> tuple[Tensor, Tensor]:
        """The adaptive weights from this step's losses (the global batch's under torchrun);
        returns those losses in float64."""
        l_adv, l_nat = (v.detach().double()
                        for v in global_means([loss_adv, loss_nat], self.shard_weight))
        if self.l0 is None:
            self.l0 = (l_adv, l_nat)
        a, h_adv, h_nat = self.weight_rate, l_adv / self.l0[0], l_nat / self.l0[1]
        if self.p.weight_rule == "complement":
            self.w_nat = self.w_nat - a * (self.w_nat - h_nat / (h_adv + h_nat))
            self.w_adv = 1 - self.w_nat
            return l_adv, l_nat
        avg = (h_adv + h_nat) / 2
        r_adv, r_nat = h_adv / avg, h_nat / avg
        w_nat = self.w_nat - a * (self.w_nat - r_nat / (r_adv + r_nat))
        w_adv = self.w_adv - a * (self.w_adv - r_adv / (r_adv + r_nat))
        w_adv, w_nat = w_adv.clamp_min(0), w_nat.clamp_min(0)
        coef = 1.0 / (w_adv + w_nat)
        self.w_adv, self.w_nat = w_adv * coef, w_nat * coef
        return l_adv, l_nat

    def weighted(self, loss_adv: Tensor, loss_nat: Tensor) -> Tensor:
        """w_adv L_adv + w_nat L_nat, each weight rounded to the loss's dtype as a python
        float multiplying a tensor is."""
        return (torch.as_tensor(self.w_adv).to(loss_adv) * loss_adv
                + torch.as_tensor(self.w_nat).to(loss_nat) * loss_nat)

    def update_temperatures(self, t_adv: Tensor, t_nat: Tensor) -> None:
        """B-MTARD: move each temperature towards equal tempered entropies (used next step)."""
        if self.temp_rate == 0:
            return
        e_adv, e_nat = global_means([entropy(t_adv / self.tau_adv),
                                     entropy(t_nat / self.tau_nat)], self.shard_weight)
        eta, lo, hi = self.temp_rate, self.p.temp_min, self.p.temp_max
        tau_adv = self.tau_adv - eta * torch.sign(e_adv / e_nat - 1).double()
        tau_nat = self.tau_nat - eta * torch.sign(e_nat / e_adv - 1).double()
        self.tau_adv, self.tau_nat = tau_adv.clamp(lo, hi), tau_nat.clamp(lo, hi)

    def _rate_epochs(self) -> tuple[int, ...]:
        p = self.p
        return p.milestones if p.rate_milestones is None else p.rate_milestones

    def after_step(self) -> None:
        if self.p.rate_per_step and self.epoch + 1 in self._rate_epochs():
            self.weight_rate, self.temp_rate = self.weight_rate * 0.1, self.temp_rate * 0.1

    def on_epoch_end(self, sums: dict[str, Tensor]) -> None:
        if not self.p.rate_per_step and self.epoch + 1 in self._rate_epochs():
            self.weight_rate, self.temp_rate = self.weight_rate * 0.1, self.temp_rate * 0.1

    _STATE = ("w_adv", "w_nat", "l0", "tau_adv", "tau_nat", "weight_rate", "temp_rate")

    def state_dict(self) -> dict[str, Any]:
        def host(v: Any) -> Any:  # the checkpoint's python floats (one sync, per epoch)
            return float(v) if isinstance(v, Tensor) else v
        return {k: tuple(map(host, v)) if k == "l0" and v else host(v)
                for k, v in ((k, getattr(self, k)) for k in self._STATE)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self._STATE:
            setattr(self, k, tuple(state[k]) if k == "l0" and state[k] else state[k])


@register("mtard")
class MTARD(Balanced):
    """MTARD (Zhao et al. 2022): robust T(x') + clean T(x) soft labels, adaptive weights."""

    display_name = "MTARD"
    Params = MTARDParams
    presets = {
        "faithful": Preset(FAITHFUL.doc, per_dataset={"cifar100": dict(scale=10.0)}),
        # The papers' teachers: TRADES WRN-34-10 (robust); a naturally trained WRN-34-10.
        "paper": paper("mtard", cifar10=("trades", "wrn34_10"), cifar100=("trades", "wrn34_10"),
                       clean={"cifar10": ("standard", "wrn34_10"),
                              "cifar100": ("standard", "wrn34_10")}),
    }

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        return ce_attack(self, x, y)

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q = self.p
        with torch.no_grad():
            t_nat = self.clean_teacher(x)
        s_net = self.student.train()
        s_adv = s_net(x_adv)
        with torch.no_grad():
            t_adv = self.teacher(x_adv)
        s_nat = s_net(x)
        l_adv = q.scale * hand_kl(t_adv / self.tau_adv, s_adv, q.kl_eps)
        l_nat = q.scale * hand_kl(t_nat / self.tau_nat, s_nat, q.kl_eps)
        self.update_temperatures(t_adv, t_nat)
        self.update_weights(l_adv, l_nat)
        return self.weighted(l_adv, l_nat)


@register("bmtard")
class BMTARD(MTARD):
    """B-MTARD (Zhao et al. 2024): MTARD with a ResNet-56 clean teacher and temperatures."""

    display_name = "B-MTARD"
    Params = MTARDParams
    presets = {
        "faithful": Preset(FAITHFUL.doc, common=dict(weight_rule="renormalise", temp_rate=1e-3),
                           per_dataset={"cifar100": dict(scale=10.0)}),
        "paper": paper("bmtard", cifar10=("trades", "wrn34_10"), cifar100=("trades", "wrn34_10"),
                       clean={"cifar10": ("standard", "resnet56"),
                              "cifar100": ("standard", "resnet56")}),
    }

