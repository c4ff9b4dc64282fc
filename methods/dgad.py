"""DGAD (Park & Min, ECCV 2024): dynamic guidance adversarial distillation, on AdaAD's attack.

Authors' code: github.com/kunsaram01/DGAD (main.py, method "DGAD"; AT_helper.adaad_inner_loss).
x' is AdaAD's (S and T in eval mode, KL_sum(T(x') || S(x')), T re-run at every step). The loss
runs S in train mode on x then x', T in eval mode without gradient, and with the teacher's
logits T~ corrected (ELS: y's logit swapped with the best other one, in T(x) on the images T
misclassifies, W, n = |W| (MAP), and in T(x') wherever y's logit is below the best other):
    (n/bs) (1/(n + 1e-10)) sum_{i in W} KL_i(T~(x) || S(x))
    + ((bs - n)/bs) (1/(B - n)) sum_{i not in W} KL_i(T~(x') || S(x'))
    + beta MSE_mean(softmax S(x'), softmax S(x))          (PCR, gradient through both)
bs is the NOMINAL batch size (`args.bs`), B the batch's own: the last, smaller batch weighs its
groups wrongly. A MobileNetV2 student gets a misplaced parenthesis instead:
0.5 (n/bs L_clean + (bs - n)/bs) L_adv + beta PCR. `fixed` repairs both (B for bs, and
0.5 (n/B L_clean + (B - n)/B L_adv) + beta PCR for MobileNetV2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from bench.methods.adaad import adaad_pgd
from bench.methods.iad import weighted_kl
from torch import Tensor

from bench.core.distiller import FAITHFUL, Distiller, Params, Preset, bounded, paper
from bench.core.distributed import global_means, world_size
from bench.core.registry import register


@dataclass(frozen=True)
class DGADParams(Params):
    """Defaults: main.py's argparse (CIFAR-10 and CIFAR-100 alike; main_tiny.py's too)."""

    epochs: int = 200
    milestones: tuple[int, ...] = (100, 150)
    weight_decay: float = 5e-4
    seed: int | None = 42
    alp_beta: float = bounded(1.0, ge=0)  # PCR's weight (--ALP_beta; 0 is --alp off)
    nominal_batch: bool = True  # the group weights divide by batch_size (args.bs), not B
    half: bool = False  # the MobileNetV2 branch's 0.5 on the distillation terms
    product_form: bool = False  # ... and its parenthesis: 0.5 (n/bs L_c + (bs-n)/bs) L_adv


def swap_true_and_top(logits: Tensor, y: Tensor, rows: Tensor | None = None) -> Tensor:
    """ELS: in `rows` (None: wherever y's logit is below the best other class's, the script's
    `margin < 0`), y's logit and the best other class's logit trade places."""
    hot = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, y[:, None], True)
    true = logits.gather(1, y[:, None])
    top, at = logits.masked_fill(hot, float("-inf")).max(1, keepdim=True)
    if rows is None:
        rows = (true < top).squeeze(1)
    other = torch.zeros_like(hot).scatter_(1, at, True)
    swapped = torch.where(hot, top, torch.where(other, true, logits))
    return torch.where(rows[:, None], swapped, logits)


@register("dgad")
class DGAD(Distiller):
    """DGAD (Park & Min 2024): T-misclassified images distilled clean, the rest adversarially."""

    display_name = "DGAD"
    needs_teacher = True
    Params = DGADParams
    presets = {
        "faithful": Preset(FAITHFUL.doc, per_dataset={
            "cifar10:mobilenetv2": dict(half=True, product_form=True),
            "cifar100:mobilenetv2": dict(half=True, product_form=True)}),
        # main.py's teacher choices (the README names none): LTD WRN-34-20 and WRN-34-10
        "paper": paper("adaad", cifar10="robustbench:Chen2021LTD_WRN34_20",
                       cifar100="robustbench:Chen2021LTD_WRN34_10"),
        "fixed": Preset("faithful, but the groups are weighted by the batch's own size and the "
                        "MobileNetV2 branch's parenthesis closes after L_adv",
                        common=dict(nominal_batch=False, product_form=False), base="faithful"),
    }

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        return adaad_pgd(self.student, self.teacher, x, self.p.eps, self.p.step, self.p.steps)

    def counts(self, wrong: Tensor) -> tuple[Tensor, float]:
        """n and B of the global batch (under torchrun, every rank's images together)."""
        (share,) = global_means([wrong.double().mean()], self.shard_weight)
        b = round(len(wrong) * world_size() / self.shard_weight)
        return (share.double() * b).round(), float(b)

    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        q = self.p
        s_net, t_net = self.student.train(), self.teacher.eval()
        s_nat, s_adv = s_net(x), s_net(x_adv)
        with torch.no_grad():
            t_nat, t_adv = t_net(x), t_net(x_adv)
            wrong = t_nat.argmax(1) != y  # MAP
            t_nat, t_adv = swap_true_and_top(t_nat, y, wrong), swap_true_and_top(t_adv, y)
        n, b = self.counts(wrong)
        n = n.to(s_nat.dtype)
        bs = float(q.batch_size) if q.nominal_batch else b
        scale = world_size() / self.shard_weight  # a shard's sums, as the global batch's
        clean = scale * weighted_kl(t_nat, s_nat, wrong.to(s_nat.dtype), "sum") / (n + 1e-10)
        # an empty group sums to 0 (the script divides by 0 there and stops)
        adv = scale * weighted_kl(t_adv, s_adv, (~wrong).to(s_adv.dtype), "sum") / (
            b - n).clamp_min(1)
        pcr = q.alp_beta * F.mse_loss(F.softmax(s_adv, dim=1), F.softmax(s_nat, dim=1))
        k = 0.5 if q.half else 1.0
        if not q.product_form:
            return k * (n / bs * clean + (bs - n) / bs * adv) + pcr
        # a product of two global means: under torchrun each rank's factor times the other's
        # global value (detached), so that DDP's average has the product's value and gradient
        first = n / bs * clean + (bs - n) / bs
        g_first, g_adv = (v.detach() for v in global_means([first, adv], self.shard_weight))
        return k * (g_first * adv + first * g_adv - g_first * g_adv) + pcr
