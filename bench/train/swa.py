"""BatchNorm statistics of an SWA model, recomputed on the training data after each update.

Two weightings exist in the reference codes. PeerAiD's utils/SWA.py gives every IMAGE the
same weight: the momentum of a batch of b after n images is b / (n + b), so the running
mean is the mean of the batch means weighted by batch size (the same for the unbiased batch
variances). torch's `update_bn` (momentum None: a cumulative average over batches), which
SAAD calls, gives every BATCH the same weight: only a smaller last batch differs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

Weighting = Literal["image", "batch"]


def recompute_bn(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                 weigh: Weighting = "image") -> None:
    """Reset every BatchNorm of `model` and re-estimate it on `batches` in train mode."""
    if weigh == "batch":
        update_bn(((x, y) for x, y in batches), model)
        return
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
    model.train()
    seen = 0
    with torch.no_grad():
        for x, _ in batches:
            for m in bns:
                m.momentum = len(x) / (seen + len(x))
            model(x)
            seen += len(x)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
