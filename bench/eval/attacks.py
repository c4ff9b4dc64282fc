"""Shared attack building blocks: one PGD loop parameterised by objective, start and norm
(L-inf, or L2 for the L2 threat model of the evaluation suite).

Every method's training-time attack and every evaluation attack is this loop with its own
objective; a method only says which networks, in which mode, the objective runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Start = Literal["none", "uniform", "normal"]
Norm = Literal["Linf", "L2"]
KLReduction = Literal["mean", "batchmean", "sum"]


def kl(target_logits: Tensor, input_logits: Tensor, reduction: KLReduction,
       t: float = 1.0) -> Tensor:
    """KL(softmax(target/t) || softmax(input/t)) as `F.kl_div` computes it (methods.md notation).

    No temperature-squared factor: the methods multiply by t**2 themselves where they do.
    "mean" is computed as sum / (B*C) explicitly: PyTorch has announced that its own "mean"
    will turn into "batchmean", which would silently change the faithful presets.
    """
    out = F.kl_div(F.log_softmax(input_logits / t, dim=1), F.softmax(target_logits / t, dim=1),
                   reduction="sum" if reduction == "mean" else reduction)
    return out / input_logits.numel() if reduction == "mean" else out


def cw_margin(logits: Tensor, y: Tensor) -> Tensor:
    """Summed Carlini-Wagner margin: best wrong logit minus true logit (to maximise)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (wrong - true).sum()


def _per_image_norm(t: Tensor) -> Tensor:
    """Each image's L2 norm, shaped to broadcast over the image."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *[1] * (t.dim() - 1))


def random_start(x: Tensor, start: Start, eps: float, clamp: bool,
                 norm: Norm = "Linf") -> Tensor:
    """The attack's starting point: x itself, uniform in the eps ball, or x + 0.001 N(0, I).

    In the L2 ball, "uniform" is torchattacks' PGDL2 draw: a Gaussian direction scaled to
    radius eps * U(0, 1) (uniform in radius, not in volume).
    """
    if start == "none":
        x0 = x.clone()
    elif start == "uniform" and norm == "L2":
        delta = torch.randn_like(x)
        radius = torch.empty(len(x), *[1] * (x.dim() - 1), device=x.device,
                             dtype=x.dtype).uniform_(0, 1)
        x0 = x + delta * radius / _per_image_norm(delta) * eps
    elif start == "uniform":
        x0 = x + torch.empty_like(x).uniform_(-eps, eps)
    elif start == "normal":
        x0 = x + 0.001 * torch.randn_like(x)
    else:
        raise ValueError(f"unknown start {start!r}")
    return x0.clamp(0.0, 1.0) if clamp else x0


def pgd(
    objective: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    eps: float,
    step: float,
    steps: int,
    start: Start,
    clamp_start: bool = True,
    norm: Norm = "Linf",
    x0: Tensor | None = None,
) -> Tensor:
    """PGD maximising `objective(x_adv)` (a scalar), pixels kept in [0, 1].

    L-inf: each step is x <- clip(Proj_eps(x + step * sign(grad)), 0, 1), as in every
    reference code. L2: x <- clip(x0 + Proj_eps(x + step * grad / ||grad||_2 - x0), 0, 1) per
    image, as torchattacks' PGDL2 (1e-10 added to the gradient's norm, the ball's projection a
    rescaling). Networks stay in whatever mode the caller put them in. `x0`: a start the
    caller drew (`random_start`) and used itself (IBD's teacher sees it), instead of
    `start`'s draw.
    """
    x = x.detach()
    x_adv = (random_start(x, start, eps, clamp_start, norm) if x0 is None else x0).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = objective(x_adv)
        (grad,) = torch.autograd.grad(loss, x_adv)
        if norm == "L2":
            x_adv = x_adv.detach() + step * grad / (_per_image_norm(grad) + 1e-10)
            delta = x_adv - x
            delta = delta * torch.clamp(eps / _per_image_norm(delta), max=1.0)
            x_adv = (x + delta).clamp(0.0, 1.0)
        else:
            x_adv = x_adv.detach() + step * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()
