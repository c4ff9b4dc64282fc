"""The GPU check: `bench perf --suite gpu` (or scripts/gpu_check.sh, `python -m
bench.perf.gpucheck`), torch and bench only.

On one CUDA GPU in under 8 minutes, with no network: (1) the fp32 fast path (device data,
channels_last, fused SGD) computes the reference loop's loss and gradients on a fixed batch;
(2) bf16 autocast stays within the stated tolerances of fp32; (3) `bench perf --reference`
for PeerAiD (ResNet-18 student and peer), RSLAD (ResNet-18 from a ResNet-18 teacher) and
PGD-AT at CIFAR-10 shape, batch 128, plus PeerAiD compiled; (4) a profiler summary of a
PeerAiD step; (5) one real `bench run` epoch of PeerAiD on synthetic CIFAR-10 files (clean
and PGD-20: no AutoAttack, so the check runs without pyautoattack); then a one-screen
summary. `--device cpu --tiny` runs the same code on a small budget (a smoke test).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.core import registry
from bench.data import devicedata
from bench.data.fake import fake_cifar
from bench.models import create_model
from bench.perf import throughput
from bench.train.compute import COMPILE_MODES, Compute
from bench.train.experiment import writable

# The tolerances the unit tests state (tests/test_compute.py), applied at CIFAR-10 shape.
# fp32 channels_last against NCHW on the same x_adv: other kernels, another summation order.
FP32_LOSS_RTOL, FP32_GRAD_RTOL = 1e-4, 2e-2
BF16_LOSS_RTOL, BF16_SIGN_AGREEMENT = 5e-3, 0.9


def _method(name: str, arch: str, compute: Compute, seed: int = 0):
    torch.manual_seed(seed)
    cls = registry.get(name)

    def net():
        return compute.prepare(create_model(arch, num_classes=10, in_channels=3, image_size=32))

    return registry.create(name, student=net(), teacher=net() if cls.needs_teacher else None,
                           peer=net() if cls.needs_peer else None, dataset="cifar10")


def _grads(m) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for n in m.trainable() for p in n.parameters()])


def check_fp32(root: Path, arch: str, device: str, batch: int) -> dict[str, Any]:
    """Device-data fp32 fast path against the reference loop's math on one fixed batch: both
    sides in strict fp32 (TF32 off), so that the comparison is of the same arithmetic; the
    reference loop's speed (step 3) runs under PyTorch's default flags, as the authors' did
    (`throughput.ReferenceCompute`)."""
    from bench.data import datasets

    ref_set = datasets.load("cifar10", "train", root=root)
    x_ref, y_ref = next(iter(torch.utils.data.DataLoader(ref_set, batch_size=batch)))
    x, y = next(devicedata.load("cifar10", "train", root, device).batches(
        batch, shuffle=False))
    out: dict[str, Any] = {"pixels_equal": bool(torch.equal(x.cpu(), x_ref))}
    for name in ("peeraid", "rslad", "pgdat"):
        ref = _method(name, arch, Compute(device, "fp32"))
        opt = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9) for n in ref.trainable()]
        attack, seen = ref.attack, {}
        ref.attack = lambda *a, attack=attack, seen=seen: seen.setdefault("x", attack(*a))
        Compute(device, "fp32").setup()
        torch.manual_seed(1)
        want = throughput.reference_step(ref, opt, x_ref.to(device), y_ref.to(device))
        c = Compute.for_run(device, "fp32")
        c.setup()
        fast = _method(name, arch, c)
        fast.attack = lambda *a, seen=seen: seen["x"]
        optims = [c.optimizer(n.parameters(), 0.1, 0.9, 0.0) for n in fast.trainable()]
        got = c.step(fast, optims, c.input(x), y)[0].item()
        g_ref, g = _grads(ref), _grads(fast)
        out[name] = {"loss_rel": abs(got - want) / abs(want),
                     "grad_rel": ((g - g_ref).norm() / g_ref.norm()).item()}
    out["ok"] = out["pixels_equal"] and all(
        out[n]["loss_rel"] <= FP32_LOSS_RTOL and out[n]["grad_rel"] <= FP32_GRAD_RTOL
        for n in ("peeraid", "rslad", "pgdat"))
    return out


def attack_objective(method, x: torch.Tensor, y: torch.Tensor):
    """The objective `method.attack` hands to PGD (its networks in the attack's modes), caught
    by replacing `pgd` wherever a module imported it; None for a method that trains on clean
    images."""
    from bench.eval import attacks

    seen: dict[str, Any] = {}

    def capture(objective, x, **_):  # pgd's own parameter names (a caller may pass x0=)
        seen["f"] = objective
        return x

    real = attacks.pgd
    users = [mod for mod in list(sys.modules.values()) if getattr(mod, "pgd", None) is real]
    for mod in users:
        mod.pgd = capture
    try:
        method.attack(x, y)
    finally:
        for mod in users:
            mod.pgd = real
    return seen.get("f")


def check_bf16(arch: str, device: str, batch: int) -> dict[str, Any]:
    """Each method's loss and attack-gradient signs, bf16 autocast against fp32."""
    out: dict[str, Any] = {}
    g = torch.Generator().manual_seed(3)
    x = torch.rand(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    for name in ("peeraid", "rslad", "pgdat"):
        method = _method(name, arch, Compute.for_run(device, "bf16"))
        eps = method.p.eps
        x_adv = (x + (torch.rand_like(x) * 2 - 1) * eps).clamp(0, 1)
        losses, signs = {}, {}
        for precision in ("fp32", "bf16"):
            m, c = copy.deepcopy(method), Compute.for_run(device, precision)
            c.setup()
            with c.autocast():
                f = attack_objective(m, c.input(x), y)
            xa = c.input(x_adv).requires_grad_(True)
            with c.autocast():
                signs[precision] = torch.autograd.grad(f(xa), xa)[0].sign()
                losses[precision] = m.loss(c.input(x), c.input(x_adv), y).item()
        out[name] = {"loss_rel": abs(losses["bf16"] - losses["fp32"]) / abs(losses["fp32"]),
                     "sign_agree": (signs["bf16"] == signs["fp32"]).float().mean().item()}
    out["ok"] = all(out[n]["loss_rel"] <= BF16_LOSS_RTOL
                    and out[n]["sign_agree"] >= BF16_SIGN_AGREEMENT
                    for n in ("peeraid", "rslad", "pgdat"))
    return out


def profile(arch: str, compute: Compute, batch: int, steps: int = 3) -> list[str]:
    """The ten most expensive operators of a few PeerAiD steps on the device."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    x, y = throughput.synthetic_images("cifar10", batch)
    m = _method("peeraid", arch, compute)
    optims = [compute.optimizer(n.parameters(), 1e-3, 0.9, 2e-4) for n in m.trainable()]
    xs = devicedata.to_float(x.to(compute.device))
    ys = y.to(compute.device)
    compute.step(m, optims, compute.input(xs), ys)
    cuda = torch.device(compute.device).type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with prof(activities=acts) as p:
        for _ in range(steps):
            compute.step(m, optims, compute.input(xs), ys)
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return p.key_averages().table(sort_by=key, row_limit=10).splitlines()


def bench_epoch(root: Path, arch: str, compute: Compute, out: Path) -> dict[str, Any]:
    """One real `bench run` epoch of PeerAiD, as a long run computes it (compiled on CUDA):
    training alone, the epoch's wall time with selection, evaluation, the device's peak
    memory, and the graphs each compiled network holds against dynamo's recompile limit."""
    from bench.core.store import Store
    from bench.train.cells import Cell
    from bench.train.checkpoint import load_file
    from bench.train.compute import counting_graphs, graphs_of
    from bench.train.pipeline import EvalOptions, run_cell
    from bench.train.runner import RunOptions

    opts = RunOptions(out=out, device=compute.device, data_root=root,
                      channels_last=compute.channels_last, compile=compute.compile,
                      compile_mode=compute.compile_mode, log=lambda line: print(line, flush=True))
    cell = Cell("peeraid", "cifar10", arch, precision=compute.precision,
                overrides=(("epochs", 1),))
    cuda = torch.device(compute.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(compute.device)
    t0 = time.perf_counter()
    with counting_graphs() as compiled:
        rows = run_cell(cell, opts, EvalOptions(attacks=("clean", "pgd20"), aa_on="none"),
                        Store(out), redo=True)
        graphs = [graphs_of(c) for c in compiled]
    wall = time.perf_counter() - t0
    best = next(r for r in rows if r["checkpoint"] == "best")
    state = load_file(out / "runs" / best["cell_id"] / "ckpt.pt")
    (timing,), (history,) = state["timing"], state["history"]
    return {"cell_s": round(wall, 1), "train_s": history["seconds"],
            "epoch_wall_s": timing["wall_seconds"], "selection_s": timing["selection_seconds"],
            "eval_s": best["eval_seconds"], "clean": best["clean"], "pgd20": best["pgd20"],
            "compile": compute.compile, "compile_mode": compute.compile_mode,
            "graphs_per_network": graphs,
            "recompile_limit": torch._dynamo.config.recompile_limit,
            "peak_device_mb": round(torch.cuda.max_memory_allocated(compute.device) / 2**20)
            if cuda else None}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(prog="bench perf --suite gpu", description=__doc__)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="small budget: a smoke test")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None, help="folder for fake files and runs")
    a = ap.parse_args(argv)
    if a.json:  # where the report goes, checked before minutes of checks
        writable(a.json.parent)
    tiny = a.tiny
    arch, batch = ("small_cnn", 16) if tiny else ("resnet18", 128)
    steps, rounds, warmup = (1, 1, 0) if tiny else (5, 3, 3)
    work = a.work or Path(tempfile.mkdtemp(prefix="bench-gpucheck-"))
    t_start = time.perf_counter()
    print(f"bench GPU check: torch {torch.__version__}, device {_device_name(a.device)}",
          flush=True)
    root = fake_cifar(work / "data", *((160, 40) if tiny else (50_000, 10_000)))
    report: dict[str, Any] = {"device": _device_name(a.device), "torch": torch.__version__}
    report["fp32"] = check_fp32(root, arch, a.device, 32)
    print("fp32 fast path = reference:", _brief(report["fp32"]), flush=True)
    report["bf16"] = check_bf16(arch, a.device, 64)
    print("bf16 vs fp32:", _brief(report["bf16"]), flush=True)
    compute = Compute.for_run(a.device)
    rows = throughput.run(["peeraid", "rslad", "pgdat"], ["faithful"], arch, "cifar10", batch,
                          steps, rounds, warmup, compute, reference=True, synthetic=True,
                          workers=0 if tiny else 4)
    throughput.print_rows(rows)
    compiled = []
    if torch.device(a.device).type == "cuda":  # compile is never the CPU's default
        t0 = time.perf_counter()
        for mode in COMPILE_MODES[:2]:  # default, and CUDA graphs (reduce-overhead)
            t0 = time.perf_counter()
            rows_c = throughput.run(["peeraid"], ["faithful"], arch, "cifar10", batch, steps,
                                    rounds, warmup,
                                    Compute.for_run(a.device, compile=True, compile_mode=mode))
            rows_c[0]["warmup_and_measure_s"] = round(time.perf_counter() - t0, 1)
            throughput.print_rows(rows_c)
            compiled += rows_c
    report["perf"] = rows + compiled
    report["profile"] = profile(arch, compute, batch, 1 if tiny else 3)
    print("\n".join(report["profile"]), flush=True)
    # as a long run computes it: compiled on CUDA (bench.train.compute.COMPILE_MIN_EPOCHS)
    epoch_compute = Compute.for_run(a.device, compile=torch.device(a.device).type == "cuda")
    report["epoch"] = bench_epoch(root, arch, epoch_compute, work / "results")
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    _summary(report)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1, default=str))
    return [report]


def _device_name(device: str) -> str:
    d = torch.device(device)
    return torch.cuda.get_device_name(d) if d.type == "cuda" else "cpu"


def _brief(r: dict[str, Any]) -> str:
    parts = [f"{k}: " + ", ".join(f"{kk} {vv:.2g}" for kk, vv in v.items())
             for k, v in r.items() if isinstance(v, dict)]
    return ("PASS" if r["ok"] else "FAIL") + "  " + "; ".join(parts)


def _summary(r: dict[str, Any]) -> None:
    line = "=" * 78
    print(f"\n{line}\nbench GPU check on {r['device']} (torch {r['torch']}), "
          f"{r['total_s']:.0f} s in all\n{line}")
    print(f"fp32 fast path = reference loop : {_brief(r['fp32'])}")
    print(f"bf16 autocast vs fp32           : {_brief(r['bf16'])}")
    for row in r["perf"]:
        extra = f"  x{row['speedup']:.2f}" if "speedup" in row else ""
        mem = f"  {row['peak_device_mb']:.0f} MB" if row.get("peak_device_mb") else ""
        compiled = (row["compile_mode"] if row["compile_mode"] != "default" else "compiled"
                    ) if row["compile"] else ""
        print(f"{row['method']:>8} {row['loop']:>9} {row['precision']} "
              f"{compiled:>15} {row['img_per_sec']:>8} img/s "
              f"{row['sec_per_epoch']:>7.1f} s/50k{mem}{extra}")
    e = r["epoch"]
    print(f"bench run, 1 PeerAiD epoch on CIFAR-10-shaped files"
          f"{' (compiled, ' + e['compile_mode'] + ')' if e['compile'] else ''}: "
          f"training {e['train_s']} s, epoch wall {e['epoch_wall_s']} s with selection "
          f"{e['selection_s']} s; evaluation {e['eval_s']} s; whole cell {e['cell_s']} s")
    if e["peak_device_mb"] is not None:
        print(f"  peak device memory {e['peak_device_mb']} MB")
    if e["compile"]:
        print(f"  graphs per compiled network {e['graphs_per_network']} "
              f"(dynamo's recompile limit {e['recompile_limit']})")
    print(f"profile (top operators of a PeerAiD step): see above\n{line}")


if __name__ == "__main__":
    main()
