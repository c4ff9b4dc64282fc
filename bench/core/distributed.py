"""Multi-GPU (or multi-process CPU) training under torchrun, through DistributedDataParallel.

    torchrun --nproc_per_node 4 -m bench.cli run --dataset cifar10 ...

Every process trains the same cell on its share of each global batch and DDP averages the
gradients. A method's loss calls its networks several times per batch (PeerAiD: three
student forwards), which DDP supports only inside ONE forward of the wrapped module:
`LossModule` is that forward. Rank 0 alone writes checkpoints, rows and logs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.nn.parallel import DistributedDataParallel

from bench.core.distiller import Distiller


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> str:
    """Join the process group torchrun prepared (once); returns this process's device."""
    if world_size() == 1:
        return device
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class LossModule(nn.Module):
    """A method's training loss as one forward over its trainable networks: DDP's unit."""

    def __init__(self, method: Distiller) -> None:
        super().__init__()
        self.nets = nn.ModuleList(method.trainable())
        self.method = method

    def forward(self, x: Tensor, x_adv: Tensor, y: Tensor, weight: float) -> Tensor:
        return self.method.loss(x, x_adv, y) * weight


def wrap(method: Distiller, device: torch.device) -> DistributedDataParallel | None:
    """DDP over the method's networks (parameters broadcast from rank 0), or None alone.

    Networks compiled one by one (`Compute.prepare`) before this wrap still get PyTorch's
    DDP-then-compile behaviour: dynamo compiles a graph the loss runs inside DDP's forward
    with its DDPOptimizer, split at DDP's gradient buckets, so their all-reduce overlaps the
    backward (tests/test_compile.py counts it)."""
    if world_size() == 1:
        return None
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(LossModule(method), device_ids=ids)


def shard(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, float]:
    """This rank's share of a global batch and its loss weight: with unequal shards, the
    weighted average DDP takes is exactly the global batch's mean loss."""
    n, r = world_size(), rank()
    if n == 1:
        return x, y, 1.0
    return x[r::n], y[r::n], len(y[r::n]) * n / len(y)


def average_grads(module: nn.Module) -> None:
    """Average `module`'s gradients over ranks, as DDP does (for a network trained outside
    the DDP-wrapped loss: a teacher that keeps training), in one flattened all-reduce per
    dtype (one bucket, not one call per tensor: the same sums, the same bits)."""
    if world_size() == 1:
        return
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for p in module.parameters():
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= world_size()
        for g, mean in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            g.copy_(mean)


def all_reduce_sums(sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-class sums gathered on each rank (`Distiller.accumulate`), summed over ranks."""
    if world_size() > 1:
        for key in sorted(sums):  # the same order on every rank
            dist.all_reduce(sums[key])
    return sums


def global_means(values: Sequence[Tensor], weight: float) -> list[Tensor]:
    """This step's global-batch means of per-shard means (`weight`: this rank's share, from
    `shard`), the same on every rank; alone, the values themselves. For state a method
    adapts from batch statistics every step (MTARD's weights, B-MTARD's temperatures), so
    that every rank adapts it as one process would."""
    if world_size() == 1:
        return list(values)
    t = torch.stack([v.detach().float() for v in values]) * weight
    dist.all_reduce(t)
    return list(t / world_size())


def global_subset_mean(value: Tensor, count: Tensor, weight: float) -> tuple[Tensor, Tensor]:
    """A mean over the images of a per-rank subset (`count` of this shard's, `value` their
    mean) taken over the global batch's: (the global mean, this rank's factor, 0 when the
    global subset is empty), as device tensors (no host sync). A loss term `value * factor`
    weighted by `weight` (this rank's share) and averaged over ranks as DDP does is the
    global batch's term, however unevenly the subset falls on the ranks. Alone: `value`
    itself and 1 (0 for an empty subset). For CIARD's push term, a mean over the images its
    clean teacher gets wrong."""
    if world_size() == 1:
        return value, (count > 0).double()
    t = torch.stack([value.detach().float() * count, count.float()])
    dist.all_reduce(t)
    total, n = t[0], t[1].clamp_min(1)
    return total / n, count.double() / n.double() * world_size() / weight
