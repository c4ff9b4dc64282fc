"""How a step is computed (bench.train.compute): the fast path computes the reference loop's math.

fp32 on the device data path equals the authors'-style loop (PIL DataLoader, plain SGD) bit
for bit in NCHW, and to float rounding in channels_last (another summation order); bf16
autocast stays close to fp32 for every method's loss and attack gradient.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar

from bench.core import registry
from bench.data import datasets as data
from bench.data import devicedata
from bench.eval.batching import eval_batch_sizes
from bench.eval.evaluate import Threat, adversarial, judged
from bench.models import create_model
from bench.perf.gpucheck import attack_objective
from bench.perf.throughput import reference_step
from bench.train.compute import Compute, NonFiniteLoss, Tally

# bf16 (8 significant bits) against fp32 on the embedded set's CNN (untrained), at a random
# point of the eps ball: each loss within 1e-4 relative as measured, asserted to 5e-3 (or
# 1e-5 absolute: a KL between nearly equal distributions is itself ~1e-5 on a fresh net); the
# attack gradient's signs agree on 98-99 % of pixels as measured, asserted >= 95 %, except
# TRADES (85 %, asserted >= 80 %): its objective KL(S(x) || S(x')) is nearly flat around x on
# an untrained network, so rounding flips more of its tiny gradient's signs.
BF16_LOSS_RTOL, BF16_LOSS_ATOL = 5e-3, 1e-5
BF16_SIGN_AGREEMENT = {"trades": 0.8}
# fp32 against a float64 run of the same math, relative (each gradient tensor norm-wise):
# NCHW lands within 1e-4; channels_last, another summation order (on the CPU also its own
# BatchNorm kernel), within 1e-5 for the loss but only ~5e-3 for small gradients (the peer's):
# one reason the CPU keeps NCHW below 32 px, where channels_last gains nothing.
NCHW_GRAD_RTOL, CHANNELS_LAST_RTOL, CHANNELS_LAST_GRAD_RTOL = 1e-4, 1e-5, 2e-2


@pytest.fixture
def cifar_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake CIFAR-10 folder in torchvision's format (md5 sums cannot match fake files)."""
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())
    base, rng = tmp_path / "cifar-10-batches-py", np.random.default_rng(0)
    base.mkdir()
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        obj = {"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
               "labels": rng.integers(0, 10, 8).tolist()}
        (base / name).write_bytes(pickle.dumps(obj, protocol=2))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    return tmp_path


def _method(name: str, dataset: str, channels: int, size: int, compute: Compute):
    torch.manual_seed(0)
    cls = registry.get(name)

    def net():
        return compute.prepare(create_model("small_cnn", num_classes=10, in_channels=channels,
                                            image_size=size))

    spec = data.spec(dataset)
    return registry.create(name, student=net(), teacher=net() if cls.needs_teacher else None,
                           peer=net() if cls.needs_peer else None,
                           clean_teacher=net() if cls.needs_clean_teacher else None,
                           dataset=dataset, budget=spec.budget)


def _grads(method) -> list[torch.Tensor]:
    return [p.grad for n in method.trainable() for p in n.parameters()]


@pytest.mark.parametrize("name", ["peeraid", "rslad", "pgdat"])
def test_fp32_fast_path_equals_the_reference_loop(name: str, cifar_files: Path) -> None:
    ref_set = data.load("cifar10", "train", root=cifar_files)  # PIL + ToTensor
    x_ref, y_ref = next(iter(torch.utils.data.DataLoader(ref_set, batch_size=32)))
    x, y = next(devicedata.load("cifar10", "train", cifar_files, "cpu").batches(
        32, shuffle=False))
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    ref = _method(name, "cifar10", 3, 32, Compute())
    opt = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9) for n in ref.trainable()]
    attack, seen = ref.attack, {}
    ref.attack = lambda *a: seen.setdefault("x_adv", attack(*a))
    torch.manual_seed(1)
    want = reference_step(ref, opt, x_ref, y_ref)
    for channels_last in (False, True):
        c = Compute("cpu", "fp32", channels_last=channels_last)
        fast = _method(name, "cifar10", 3, 32, c)
        optims = [c.optimizer(n.parameters(), 0.1, 0.9, 0.0) for n in fast.trainable()]
        torch.manual_seed(1)
        if channels_last:  # PGD's sign steps turn a rounding difference in a near-zero
            fast.attack = lambda *a: seen["x_adv"]  # gradient into a whole step: same x_adv
        got = c.step(fast, optims, c.input(x), y)[0]
        pairs = list(zip(_grads(fast), _grads(ref), strict=True))
        if not channels_last:  # the same kernels in the same order: the same bits
            assert got.item() == want and all(torch.equal(a, b) for a, b in pairs)
            continue
        # another order of summation: as close to the float64 truth as fp32 NCHW is
        exact = _method(name, "cifar10", 3, 32, Compute())
        for n in [*exact.trainable(), exact.teacher]:
            if n is not None:
                n.double()
        exact.attack = lambda *a: seen["x_adv"].double()
        truth = exact.loss(x.double(), seen["x_adv"].double(), y)
        truth.backward()
        assert abs(got.item() - truth.item()) <= CHANNELS_LAST_RTOL * abs(truth.item())
        for a, b, t in zip(_grads(fast), _grads(ref), _grads(exact), strict=True):
            assert (b.double() - t).norm() <= NCHW_GRAD_RTOL * t.norm()
            assert (a.double() - t).norm() <= CHANNELS_LAST_GRAD_RTOL * t.norm()


@pytest.mark.parametrize("name", registry.names())
def test_bf16_autocast_stays_close_to_fp32(name: str) -> None:
    ds = data.load("digits", "train")
    x, y = ds.x[:128], ds.y[:128]
    method = _method(name, "digits", 1, 8, Compute("cpu", "bf16"))
    eps = method.p.eps
    torch.manual_seed(2)
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    losses, signs = {}, {}
    for precision in ("fp32", "bf16"):
        m, c = copy.deepcopy(method), Compute("cpu", precision)
        with c.autocast():
            f = attack_objective(m, x, y)
            xa = x_adv.clone().requires_grad_(True)
            if f is not None:
                signs[precision] = torch.autograd.grad(f(xa), xa)[0].sign()
            losses[precision] = m.loss(x, x_adv, y).item()
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=BF16_LOSS_RTOL, abs=BF16_LOSS_ATOL)
    if not signs:
        assert name == "standard"
        return
    agree = (signs["bf16"] == signs["fp32"]).float().mean().item()
    assert agree >= BF16_SIGN_AGREEMENT.get(name, 0.95), agree


def test_tally_reads_once_and_reports_the_first_bad_step() -> None:
    t = Tally("cpu")
    for i, v in enumerate([1.0, 3.0]):
        t.add(torch.tensor(v), 2, i)
    assert t.read() == 2.0
    t.add(torch.tensor(float("inf")), 2, 2)
    t.add(torch.tensor(float("nan")), 2, 3)
    with pytest.raises(NonFiniteLoss) as exc:
        t.read()
    assert (exc.value.value, exc.value.step) == (float("inf"), 2)


def test_defaults_per_device() -> None:
    cpu, cuda = Compute.for_run("cpu", epochs=300), Compute.for_run("cuda", epochs=15)
    assert (cpu.precision, cpu.channels_last, cpu.compile) == ("fp32", False, False)
    assert Compute.for_run("cpu", image_size=32).channels_last  # pays from 32 px up
    assert not Compute.for_run("cpu", image_size=8).channels_last  # the embedded set: NCHW
    assert not Compute.for_run("cpu", image_size=32, channels_last=False).channels_last
    assert (cuda.precision, cuda.channels_last, cuda.compile) == ("bf16", True, False)
    assert Compute.for_run("cuda", epochs=300).compile
    assert Compute.for_run("cpu", "tf32").precision == "tf32"


@pytest.mark.parametrize("size", [8, 32])
def test_cpu_evaluation_batches_change_the_speed_not_the_results(size: int) -> None:
    """The CPU's small evaluation batches (cache-sized, for speed) give every image the same
    examples, bit for bit, as one batch of 256: the random starts are drawn in order and an
    eval-mode network treats each image alone."""
    batch = eval_batch_sizes("cpu", size)[0]
    assert batch == (64 if size >= 32 else 128) and eval_batch_sizes("cuda", size)[0] == 1024
    channels = 3 if size == 32 else 1
    compute = Compute.for_run("cpu", image_size=size)
    torch.manual_seed(0)
    nets = [compute.prepare(create_model("small_cnn", num_classes=10, in_channels=channels,
                                         image_size=size)).eval() for _ in range(2)]
    x, y = compute.input(torch.rand(256, channels, size, size)), torch.randint(0, 10, (256,))
    threat = Threat(8 / 255)
    torch.manual_seed(1)
    whole = adversarial(nets[0], x, y, "pgd10", threat)
    torch.manual_seed(1)
    parts = torch.cat([adversarial(nets[0], x[i:i + batch], y[i:i + batch], "pgd10", threat)
                       for i in range(0, 256, batch)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, x)  # it did attack
    hits = []
    for b in (256, batch):
        torch.manual_seed(2)
        hits.append(judged(nets[0], nets, x, y, "pgd20", threat, b))
    assert all(torch.equal(a, b) for a, b in zip(*hits, strict=True))


_FAULTS = """
import resource, sys, torch
from bench.train.compute import Compute
if sys.argv[1] == "setup":
    Compute("cpu").setup()
x = torch.ones(256, 1 << 16)  # 64 MB: above the most glibc's mmap threshold ever rises to
for _ in range(10):  # (glibc's heap grows for the first few: 64-byte alignment padding)
    x.add(1)  # a result allocated and freed, like a step's feature maps
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    x.add(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 5 * (64 << 20) // 4096  # what mapping the 64 MB anew five times faults in


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_cpu_runs_reuse_freed_memory_instead_of_faulting_it_in_again() -> None:
    """A 64 MB result freed and allocated again: glibc maps and zeroes it anew every time,
    unless the CPU setup keeps freed memory; BENCH_MALLOC=system opts out."""
    def faults(*args: str, **env: str) -> int:
        res = subprocess.run([sys.executable, "-c", _FAULTS, *args], capture_output=True,
                             text=True, env={**os.environ, **env}, check=True)
        return int(res.stdout.split()[-1])

    plain, kept = faults("plain"), faults("setup")
    assert plain > 0.9 * PAGES and kept < 0.01 * PAGES, (plain, kept)
    assert faults("setup", BENCH_MALLOC="system") > 0.9 * PAGES


def test_the_runner_trains_on_either_data_path_and_records_how(cifar_files: Path,
                                                               tmp_path: Path) -> None:
    from bench.core.store import Store
    from bench.train.cells import Cell, resolve
    from bench.train.checkpoint import load_file
    from bench.train.pipeline import EvalOptions, run_cell
    from bench.train.runner import RunOptions

    cell = Cell("pgdat", "cifar10", "small_cnn", overrides=(("batch_size", 16), ("epochs", 1)))
    rows = {}
    for name, path, c in [("a", "device", cell), ("b", "device", cell),
                          ("pil", "torchvision", cell),
                          ("bf16", "device", dataclasses.replace(cell, precision="bf16"))]:
        out = tmp_path / name
        opts = RunOptions(out=out, data_root=cifar_files, data_path=path, log=lambda *_: None)
        rows[name] = {r["checkpoint"]: r for r in run_cell(c, opts, EvalOptions(("clean",)),
                                                           Store(out))}
        weights = load_file(out / "runs" / rows[name]["last"]["cell_id"] / "ckpt.pt")
        rows[name]["weights"] = weights["models"]["student"]
    a, b, pil, bf16 = rows["a"], rows["b"], rows["pil"], rows["bf16"]
    assert (a["last"]["data_path"], pil["last"]["data_path"]) == ("device", "torchvision")
    # the device path's order and augmentation are a pure function of (seed, epoch)
    assert all(torch.equal(v, b["weights"][k]) for k, v in a["weights"].items())
    assert a["last"]["clean"] == b["last"]["clean"]
    assert a["last"]["cell_id"] == pil["last"]["cell_id"] == resolve(cell).id
    assert bf16["last"]["cell_id"] != a["last"]["cell_id"]  # precision is part of the id
    assert (bf16["last"]["precision"], bf16["last"]["eval_precision"]) == ("bf16", "fp32")
    assert a["last"]["precision"] == "fp32" and "precision" not in {
        k for k, v in a["last"]["config"].items() if v is not None}
