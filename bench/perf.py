"""Training throughput, side by side: `python -m bench.perf` (torch only) or `bench perf`.

Every (method, preset) configuration trains on the same synthetic batch shape; the
configurations are interleaved round by round so machine noise hits them all alike, and
the median images/second over rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import BenchError, registry
from bench.models import create_model
from bench.runner import train_step

SHAPES = {"cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "tinyimagenet": (3, 64, 200),
          "digits": (1, 8, 10)}


@dataclass
class Config:
    method: str
    preset: str
    run: object  # a closure running one training step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(method: str, preset: str, arch: str, shape: str, batch: int,
          device: torch.device) -> Config:
    """One configuration's networks, optimizers and a fixed synthetic batch."""
    channels, size, classes = SHAPES[shape]
    cls = registry.get(method)

    def net() -> torch.nn.Module:
        return create_model(arch, num_classes=classes, in_channels=channels,
                            image_size=size).to(device)

    method_obj = registry.create(method, student=net(), dataset=shape, preset=preset,
                                 teacher=net() if cls.needs_teacher else None,
                                 peer=net() if cls.needs_peer else None)
    optims = [torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
              for m in method_obj.trainable()]
    x = torch.rand(batch, channels, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    return Config(method, preset, lambda: train_step(method_obj, optims, x, y))


def measure(configs: list[Config], steps: int, rounds: int, warmup: int,
            device: torch.device) -> list[list[float]]:
    """Seconds per step of each configuration, one entry per round (interleaved)."""
    for c in configs:
        for _ in range(warmup):
            c.run()
    _sync(device)
    times: list[list[float]] = [[] for _ in configs]
    for _ in range(rounds):
        for i, c in enumerate(configs):
            t0 = time.perf_counter()
            for _ in range(steps):
                c.run()
            _sync(device)
            times[i].append((time.perf_counter() - t0) / steps)
    return times


def run(methods: list[str], presets: list[str], arch: str, shape: str, batch: int, steps: int,
        rounds: int, warmup: int, device: str) -> list[dict[str, object]]:
    """Throughput rows for every (method, preset) the methods define among `presets`."""
    if shape not in SHAPES:
        raise BenchError(f"unknown shape {shape!r} (valid: {', '.join(SHAPES)})")
    dev = torch.device(device)
    configs = [build(m, p, arch, shape, batch, dev) for m in methods for p in presets
               if p in registry.get(m).presets]
    if not configs:
        raise BenchError("no (method, preset) pair to measure")
    times = measure(configs, steps, rounds, warmup, dev)
    rows = []
    for c, t in zip(configs, times, strict=True):
        med = statistics.median(t)
        rows.append({"method": c.method, "preset": c.preset, "arch": arch, "shape": shape,
                     "batch": batch, "device": str(dev), "sec_per_step": round(med, 5),
                     "img_per_sec": round(batch / med, 1),
                     "spread": round((max(t) - min(t)) / med, 3)})
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(prog="bench perf", description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="pgdat,peeraid,rslad")
    ap.add_argument("--presets", default="faithful", help="comma-separated; missing ones skip")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--shape", default="cifar10", choices=sorted(SHAPES))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = ap.parse_args(argv)
    rows = run(a.methods.split(","), a.presets.split(","), a.arch, a.shape, a.batch_size,
               a.steps, a.rounds, a.warmup, a.device)
    for r in rows:
        print(f"{r['method']:>10} {r['preset']:>10}  {r['img_per_sec']:>9} img/s  "
              f"{r['sec_per_step']:.4f} s/step  (spread {r['spread']:.0%}, {r['device']})")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
