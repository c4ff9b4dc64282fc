"""Training throughput, side by side: `python -m bench.perf.throughput` (torch only) or
`bench perf`.

Every configuration trains the same method, model, batch size and data; configurations are
interleaved round by round (A B A B ... after warm-up) in one process, so machine noise hits
them all alike, and the median over rounds is reported.

Plain mode compares (method, preset) pairs, each stepping bench's trainer on a fixed batch.
`--reference` compares bench's trainer, fed by the device data path, with a straight loop
written like the authors' code: fp32 tensors under PyTorch's default kernel flags (TF32
cuDNN convolutions on CUDA, as the authors' code got them), NCHW, a torchvision DataLoader
with PIL augmentation, `.item()` every step, no compile. `--synthetic` uses random images
of the data set's shape.
The GPU check that builds on this is `bench perf --suite gpu` (bench.perf.gpucheck).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench import BenchError
from bench.core import registry
from bench.data import datasets, devicedata
from bench.models import create_model
from bench.train.compute import COMPILE_MODES, Compute, Tally
from bench.train.experiment import writable

SHAPES = {"cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "svhn": (3, 32, 10),
          "tinyimagenet": (3, 64, 200), "digits": (1, 8, 10)}
SYNTHETIC_IMAGES = 10_000
EPOCH_IMAGES = 50_000  # the projected epoch: CIFAR's 50k training images


@dataclass
class Config:
    method: str
    preset: str
    loop: str  # "bench" or "reference"
    run: Callable[[int], None]  # runs k training steps
    compute: Compute
    note: str = ""
    peak_device: list[float] = field(default_factory=list)
    peak_host: list[float] = field(default_factory=list)


# PyTorch's own defaults for the process-wide kernel flags, which the authors' code never
# touched: cuDNN convolutions may use TF32, matmuls do not, no cuDNN autotuning.
TORCH_DEFAULTS = {"matmul_tf32": False, "cudnn_tf32": True, "cudnn_benchmark": False}


def backend_flags() -> dict[str, bool]:
    """The process-wide flags `TORCH_DEFAULTS` names, as they are now."""
    return {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def torch_defaults() -> None:
    """Put the flags back to PyTorch's defaults (bench's own configurations, interleaved in
    the same process, set theirs)."""
    torch.backends.cuda.matmul.allow_tf32 = TORCH_DEFAULTS["matmul_tf32"]
    torch.backends.cudnn.allow_tf32 = TORCH_DEFAULTS["cudnn_tf32"]
    torch.backends.cudnn.benchmark = TORCH_DEFAULTS["cudnn_benchmark"]


@dataclass(frozen=True)
class ReferenceCompute(Compute):
    """The reference loop's settings: NCHW, no compile, and PyTorch's default flags (fp32
    matmuls, TF32 cuDNN convolutions on CUDA: "cudnn-tf32"; fp32 on the CPU), never bench's
    strict fp32."""

    def setup(self) -> None:
        torch_defaults()


def reference_compute(device: str) -> ReferenceCompute:
    return ReferenceCompute(device, "cudnn-tf32" if torch.device(device).type == "cuda"
                            else "fp32")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _host_mb() -> float:
    """This process's resident memory now (Linux), else its peak so far (DataLoader workers,
    being other processes, are not included)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_step(method, optims: list[torch.optim.Optimizer], x: Tensor, y: Tensor) -> float:
    """One batch as the authors' training scripts write it: attack, loss, zero_grad,
    backward, step, and `loss.item()` (a host-device sync) every step."""
    x_adv = method.attack(x, y)
    loss = method.loss(x, x_adv, y)
    for o in optims:
        o.zero_grad()
    loss.backward()
    for o in optims:
        o.step()
    return loss.item()


def _method(method: str, preset: str, arch: str, shape: str, place: Callable) -> Any:
    channels, size, classes = SHAPES[shape]
    cls = registry.get(method)

    def net() -> torch.nn.Module:
        return place(create_model(arch, num_classes=classes, in_channels=channels,
                                  image_size=size))

    return registry.create(method, student=net(), dataset=shape, preset=preset,
                           teacher=net() if cls.needs_teacher else None,
                           clean_teacher=net() if cls.needs_clean_teacher else None,
                           peer=net() if cls.needs_peer else None)


def bench_config(method: str, preset: str, arch: str, shape: str, compute: Compute,
                 batches: Iterator[tuple[Tensor, Tensor]], note: str = "") -> Config:
    """bench's trainer: `compute.step` on every batch, the loss read once per round."""
    m = _method(method, preset, arch, shape, compute.prepare)
    optims = [compute.optimizer(n.parameters(), 1e-3, 0.9, 2e-4) for n in m.trainable()]

    def run(k: int) -> None:
        tally = Tally(compute.device)
        for i in range(k):
            x, y = next(batches)
            tally.add(compute.step(m, optims, compute.input(x), y)[0], len(y), i)
        tally.read()

    return Config(method, preset, "bench", run, compute, note)


def reference_config(method: str, preset: str, arch: str, shape: str, device: str,
                     loader: Iterator[tuple[Tensor, Tensor]], note: str = "") -> Config:
    """The authors' loop: fp32 NCHW networks, plain SGD, host batches moved every step."""
    m = _method(method, preset, arch, shape, lambda n: n.to(device))
    optims = [torch.optim.SGD(n.parameters(), lr=1e-3, momentum=0.9, weight_decay=2e-4)
              for n in m.trainable()]

    def run(k: int) -> None:
        total = 0.0
        for _ in range(k):
            x, y = next(loader)
            total += reference_step(m, optims, x.to(device), y.to(device))

    return Config(method, preset, "reference", run, reference_compute(device), note)


def measure(configs: list[Config], steps: int, rounds: int, warmup: int,
            device: torch.device) -> list[list[float]]:
    """Seconds per step of each configuration, one entry per round (interleaved)."""
    for c in configs:
        c.compute.setup()
        c.run(warmup)
    _sync(device)
    times: list[list[float]] = [[] for _ in configs]
    for _ in range(rounds):
        for i, c in enumerate(configs):
            c.compute.setup()  # process-wide kernel flags: each configuration its own
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            c.run(steps)
            _sync(device)
            times[i].append((time.perf_counter() - t0) / steps)
            c.peak_host.append(_host_mb())
            if device.type == "cuda":
                c.peak_device.append(torch.cuda.max_memory_allocated(device) / 2**20)
    return times


def _forever(make: Callable[[int], Iterator]) -> Iterator:
    """Batches of epoch 0, 1, 2, ... without end (perf rounds span epoch boundaries)."""
    return itertools.chain.from_iterable(make(e) for e in itertools.count())


class _PILImages(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) images served as PIL images through a torchvision transform:
    what a torchvision data set does per item (synthetic data for the reference loop)."""

    def __init__(self, x: Tensor, y: Tensor, transform: Callable) -> None:
        self.x, self.y, self.transform = x.permute(0, 2, 3, 1).numpy(), y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        img = self.x[i]
        img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        return self.transform(img), int(self.y[i])


def _reference_data(shape: str, root: Path | None, synthetic: tuple[Tensor, Tensor] | None
                    ) -> torch.utils.data.Dataset:
    if synthetic is None:
        return datasets.load(shape, "train", root=root, augment=True)
    aug = devicedata.augmentation(shape) or devicedata.Augment(flip=False)
    size = SHAPES[shape][1]
    return _PILImages(*synthetic, datasets._transform(True, size=size, flip=aug.flip))


def synthetic_images(shape: str, n: int = SYNTHETIC_IMAGES, seed: int = 0
                     ) -> tuple[Tensor, Tensor]:
    channels, size, classes = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, classes, (n,), generator=g))


def reference_configs(methods: list[str], preset: str, arch: str, shape: str, batch: int,
                      compute: Compute, root: Path | None, synthetic: bool,
                      workers: int) -> list[Config]:
    """For each method, the reference loop and bench's trainer on the same data."""
    if shape == "digits":
        raise BenchError("--reference needs an image data set (cifar10, svhn, ...)")
    images = synthetic_images(shape) if synthetic else None
    x, y = images if images is not None else devicedata.tensors(shape, "train", root)
    dev = devicedata.DeviceData(x, y, compute.device, devicedata.augmentation(shape)
                                or devicedata.Augment(flip=False))
    ref_set = _reference_data(shape, root, images)
    out = []
    for m in methods:
        def loader(epoch: int) -> Iterator:
            g = torch.Generator().manual_seed(epoch)
            return iter(torch.utils.data.DataLoader(
                ref_set, batch_size=batch, shuffle=True, generator=g, num_workers=workers,
                drop_last=True, pin_memory=compute.device.startswith("cuda")))

        def device_batches(epoch: int) -> Iterator:
            g = torch.Generator().manual_seed(epoch)
            return (b for b in dev.batches(batch, shuffle=True, generator=g)
                    if len(b[1]) == batch)

        out.append(reference_config(m, preset, arch, shape, compute.device, _forever(loader),
                                    note=f"DataLoader, {workers} workers, PIL"))
        out.append(bench_config(m, preset, arch, shape, compute, _forever(device_batches),
                                note="device data"))
    return out


def plain_configs(methods: list[str], presets: list[str], arch: str, shape: str, batch: int,
                  compute: Compute) -> list[Config]:
    """Every (method, preset) the methods define among `presets`, on one fixed batch."""
    channels, size, classes = SHAPES[shape]
    x = torch.rand(batch, channels, size, size, device=compute.device)
    y = torch.randint(0, classes, (batch,), device=compute.device)
    return [bench_config(m, p, arch, shape, compute, itertools.repeat((x, y)))
            for m in methods for p in presets if p in registry.get(m).presets]


def rows_of(configs: list[Config], times: list[list[float]], arch: str, shape: str,
            batch: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for c, t in zip(configs, times, strict=True):
        med = statistics.median(t)
        row = {"method": c.method, "preset": c.preset, "loop": c.loop, "arch": arch,
               "shape": shape, "batch": batch, "device": c.compute.device,
               "precision": c.compute.precision, "channels_last": c.compute.channels_last,
               "compile": c.compute.compile, "compile_mode": c.compute.compile_mode,
               "data": c.note, "sec_per_step": round(med, 5),
               "img_per_sec": round(batch / med, 1),
               "sec_per_epoch": round(EPOCH_IMAGES / batch * med, 1),
               "spread": round((max(t) - min(t)) / med, 3),
               "peak_host_mb": round(max(c.peak_host), 1),
               "peak_device_mb": round(max(c.peak_device), 1) if c.peak_device else None}
        ref = next((r for r in rows if c.loop == "bench" and r["loop"] == "reference"
                    and r["method"] == c.method), None)
        if ref is not None:
            row["speedup"] = round(ref["sec_per_step"] / med, 2)
        rows.append(row)
    return rows


def run(methods: list[str], presets: list[str], arch: str, shape: str, batch: int, steps: int,
        rounds: int, warmup: int, compute: Compute, *, reference: bool = False,
        root: Path | None = None, synthetic: bool = False,
        workers: int = 2) -> list[dict[str, Any]]:
    """Throughput rows; with `reference`, pairs of (reference loop, bench) per method."""
    if shape not in SHAPES:
        raise BenchError(f"unknown shape {shape!r} (valid: {', '.join(SHAPES)})")
    for m in methods:
        registry.get(m)
    if reference:
        configs = reference_configs(methods, presets[0], arch, shape, batch, compute, root,
                                    synthetic, workers)
    else:
        configs = plain_configs(methods, presets, arch, shape, batch, compute)
    if not configs:
        raise BenchError("no (method, preset) pair to measure")
    times = measure(configs, steps, rounds, warmup, torch.device(compute.device))
    return rows_of(configs, times, arch, shape, batch)


def _flag(value: str) -> bool | None:
    return {"auto": None, "on": True, "off": False}[value]


def print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        mem = f"  host {r['peak_host_mb']:.0f} MB" + (
            f"  device {r['peak_device_mb']:.0f} MB" if r["peak_device_mb"] else "")
        speed = f"  x{r['speedup']:.2f} vs reference" if "speedup" in r else ""
        print(f"{r['method']:>8} {r['preset']:>9} {r['loop']:>9} {r['precision']:>4}  "
              f"{r['img_per_sec']:>8} img/s  {r['sec_per_epoch']:>7.1f} s/50k  "
              f"(spread {r['spread']:.0%}){mem}{speed}", flush=True)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench perf", description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="pgdat,peeraid,rslad")
    ap.add_argument("--presets", default="faithful", help="comma-separated; missing ones skip")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--shape", "--dataset", dest="shape", default="cifar10",
                    choices=sorted(SHAPES), help="data set (its shape for synthetic data)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="steps of each before timing")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default=None, choices=["fp32", "tf32", "bf16"],
                    help="bench's training precision [default: bf16 on CUDA, else fp32]")
    ap.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--compile", default="off", choices=["auto", "on", "off"],
                    help="torch.compile the networks (auto: CUDA runs of 30 epochs or more)")
    ap.add_argument("--compile-mode", default="default", choices=list(COMPILE_MODES),
                    help="torch.compile's mode; reduce-overhead replays CUDA graphs")
    ap.add_argument("--reference", action="store_true",
                    help="bench's trainer against the authors'-style reference loop")
    ap.add_argument("--synthetic", action="store_true",
                    help="random images of the data set's shape instead of its files")
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=2, help="the reference DataLoader's")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return ap


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    a = parser().parse_args(argv)
    if a.json:  # where the rows go, checked before minutes of timing
        writable(a.json.parent)
    compute = Compute.for_run(a.device, a.precision, channels_last=_flag(a.channels_last),
                              compile=_flag(a.compile), image_size=SHAPES[a.shape][1],
                              compile_mode=a.compile_mode)
    rows = run(a.methods.split(","), a.presets.split(","), a.arch, a.shape, a.batch_size,
               a.steps, a.rounds, a.warmup, compute, reference=a.reference,
               root=a.data_root, synthetic=a.synthetic, workers=a.workers)
    print_rows(rows)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
