"""torchrun + DDP (gloo on CPU): two processes train exactly what one process trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from bench.core.store import Store

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _bench(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc)] if nproc > 1 else [sys.executable])
    res = subprocess.run([*launch, "-m", "bench.cli", "run", *args], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def _student(out: Path, method: str = "") -> dict[str, torch.Tensor]:
    (ckpt,) = out.glob(f"runs/{method}*/ckpt.pt")
    return torch.load(ckpt, weights_only=True)["models"]["student"]


def test_two_ranks_train_the_same_weights_as_one_process(tmp_path: Path) -> None:
    # No BatchNorm (per-rank batch statistics are DDP's one intended difference); 1437 training
    # images in batches of 64 end on an odd batch: the shard weights keep the mean loss exact.
    args = ["--methods", "standard", "--arch", "small_cnn_nobn", "--epochs", "2",
            "--attacks", "clean"]
    _bench([*args, "--out", str(tmp_path / "one")], 1)
    _bench([*args, "--out", str(tmp_path / "two")], 2)
    one, two = _student(tmp_path / "one"), _student(tmp_path / "two")
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-6), k
    rows, _ = Store(tmp_path / "two").read()
    assert sorted(r["checkpoint"] for r in rows) == ["best", "last"]  # rank 0 stores, once


def test_peeraid_and_rslad_under_torchrun(tmp_path: Path) -> None:
    # PeerAiD runs S three times per batch and has SWA; RSLAD needs a teacher trained first.
    out = tmp_path / "ddp"
    res = _bench(["--methods", "peeraid,rslad", "--epochs", "2", "--set", "milestones=1,",
                  "--attacks", "clean", "--out", str(out)], 2)
    rows, problems = Store(out).read()
    assert not problems and len(rows) == 6
    assert len(list((out / "teachers").glob("*.pt"))) == 1
    assert res.stdout.count("| PeerAiD |") == 4  # display names in the table


def test_adaptive_weights_and_temperatures_are_the_global_batchs_under_torchrun(
        tmp_path: Path) -> None:
    """B-MTARD adapts its weights and temperatures from each step's losses and entropies:
    every rank must adapt them from the global batch's, as one process does, or the ranks
    drift apart (and rank 0's checkpoint holds only its own shard's)."""
    out = tmp_path / "bmtard"
    args = ["--methods", "bmtard", "--arch", "small_cnn_nobn", "--epochs", "1",
            "--attacks", "clean", "--out", str(out)]
    _bench(args, 1)  # also trains and caches both teachers, which the second run reuses
    (ckpt,) = out.glob("runs/bmtard-*/ckpt.pt")
    one = torch.load(ckpt, weights_only=True)
    _bench([*args, "--redo"], 2)
    two = torch.load(ckpt, weights_only=True)
    a, b = one["method"], two["method"]
    assert a["w_adv"] != 0.5 and (a["tau_adv"], a["tau_nat"]) != (1.0, 1.0)  # they moved
    # Each rank draws the attack's random start for its own shard, so the losses (and with
    # them the weights) cannot agree to the bit: measured 8e-6 apart after 23 steps, where
    # ranks adapting from their own shards ended 2.2e-4 apart (w moved 1.9e-4 from 0.5).
    for k in ("w_adv", "w_nat", "tau_adv", "tau_nat"):
        assert abs(a[k] - b[k]) < 3e-5, (k, a[k], b[k])
    for k, v in one["models"]["student"].items():
        assert torch.allclose(v, two["models"]["student"][k], atol=1e-5), k



def _ciard_grads(x_adv_wrong_on_even: bool = True) -> list[torch.Tensor]:
    """CIARD's loss on a fixed digits batch (this process's shard under a process group),
    backward, gradients averaged over ranks as DDP does. The clean teacher is wrong on
    the even images only, all of which land on rank 0 of two (`shard` takes every 2nd)."""
    from bench.core import distributed, registry
    from bench.data import datasets as data
    from bench.models import create_model

    torch.manual_seed(0)
    spec = data.spec("digits")

    def net() -> torch.nn.Module:
        return create_model("small_cnn_nobn", num_classes=10, in_channels=1, image_size=8)

    m = registry.create("ciard", student=net(), teacher=net(), clean_teacher=net(),
                        dataset="digits", budget=spec.budget)
    ds = data.load("digits", "train")
    x = ds.x[:64]
    x_adv = (x + torch.empty_like(x).uniform_(-0.1, 0.1)).clamp(0, 1)
    with torch.no_grad():
        right = m.clean_teacher(x_adv).argmax(1)
    y = torch.where(torch.arange(64) % 2 == 0, (right + 1) % 10, right)
    xs, ys, weight = distributed.shard(x, y)
    xas, _, _ = distributed.shard(x_adv, y)
    m.shard_weight = weight
    (m.loss(xs, xas, ys) * weight).backward()
    grads = [p.grad for p in m.student.parameters()]
    if distributed.world_size() > 1:
        for g in grads:
            torch.distributed.all_reduce(g)
            g /= distributed.world_size()
    return grads


def _ciard_rank(rank: int, init: str, out: str) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    grads = _ciard_grads()
    if rank == 0:
        torch.save(grads, out)
    torch.distributed.destroy_process_group()


def test_ciards_push_term_is_the_global_batchs_under_torchrun(tmp_path: Path) -> None:
    """CIARD pushes the student away from its clean teacher on the images that teacher gets
    wrong: a mean over them, scaled to the other terms' magnitude. Under torchrun both come
    from the global batch's mistakes, so two ranks step as one process does even when every
    mistake lands on one rank (each rank's own mean and scale: rank 1 would push not at all,
    rank 0 with half the weight)."""
    import torch.multiprocessing as mp

    one = _ciard_grads()
    out = tmp_path / "grads.pt"
    mp.spawn(_ciard_rank, args=(f"file://{tmp_path / 'init'}", str(out)), nprocs=2)
    two = torch.load(out, weights_only=True)
    for a, b in zip(one, two, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (a - b).abs().max()


def _teacher_grads_rank(rank: int, init: str, out: str) -> None:
    """A trained teacher's gradients (this rank's own) averaged by `average_grads`, beside the
    tensor-by-tensor average it replaced, with its all_reduce calls counted."""
    from bench.core import distributed
    from bench.models import create_model

    os.environ.update(WORLD_SIZE="2", RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    net = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    torch.manual_seed(1 + rank)  # each rank its own gradients
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    one_by_one = [p.grad.clone() for p in net.parameters()]
    for g in one_by_one:  # the former average_grads
        torch.distributed.all_reduce(g)
        g /= 2
    calls = []
    reduce = torch.distributed.all_reduce

    def counted(t, *a, **kw):
        calls.append(t.numel())
        return reduce(t, *a, **kw)

    torch.distributed.all_reduce = counted
    distributed.average_grads(net)
    torch.distributed.all_reduce = reduce
    if rank == 0:
        torch.save({"bucket": [p.grad for p in net.parameters()], "one_by_one": one_by_one,
                    "calls": calls}, out)
    torch.distributed.destroy_process_group()


def test_a_trained_teachers_gradients_are_averaged_in_one_bucket(tmp_path: Path) -> None:
    """`average_grads` (CIARD's teacher under torchrun) all-reduces one flattened bucket, once
    per step, not one call per tensor; the averaged gradients are the same bits."""
    import torch.multiprocessing as mp

    out = tmp_path / "grads.pt"
    mp.spawn(_teacher_grads_rank, args=(f"file://{tmp_path / 'init'}", str(out)), nprocs=2)
    got = torch.load(out, weights_only=True)
    assert got["calls"] == [sum(g.numel() for g in got["bucket"])]
    for a, b in zip(got["bucket"], got["one_by_one"], strict=True):
        assert torch.equal(a, b)
