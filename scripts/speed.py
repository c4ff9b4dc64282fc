"""Whole-process speed comparisons of `bench run` against straight loops doing the same work.

    python scripts/speed.py cifar  [--train 10000 --epochs 2 --rounds 3]   # (a)
    python scripts/speed.py digits [--method peeraid --rounds 3]           # (b)

`cifar` writes fake CIFAR-10 files in torchvision's on-disk format (random pixels: speed does
not depend on them) and times `bench run` on them against the authors' way: a straight PGD-AT
loop over torchvision's CIFAR10 with PIL augmentation in a DataLoader (0 and 2 workers).
`digits` times `bench run` on the embedded default against a straight loop doing the same
work: training, SWA, selection by PGD-10 every epoch (its examples also judged by the tutor,
which is attacked itself, as bench's tutor log does), saving the best, evaluating clean and
PGD-20 on every checkpoint, and the start-up of a fresh Python process.

Every configuration is a fresh process, run once untimed (warm file caches, decoded cache),
then A B A B ... for `--rounds`; medians and spreads are printed (and written with --json).
The fake CIFAR files are bench.data.fake's, with their own checksum manifest: bench and
torchvision load them as they would the real ones (bench warns that they are synthetic).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
TEST_BATCH = 128  # the authors' test loaders (IAD, CIARD: 128; ABSLD: 100)


def make_cifar(root: Path, train: int, test: int) -> Path:
    """torchvision's cifar-10-batches-py (the GPU check's fake files); existing files are kept:
    rewriting them would invalidate bench's decoded cache."""
    from bench.data.fake import fake_cifar

    if (root / "cifar-10-batches-py" / "batches.meta").exists():
        return root
    return fake_cifar(root, train, test)


def straight(a: argparse.Namespace) -> None:
    """A straight training script, as the authors write them, for one method."""
    import torch
    from torch.optim.swa_utils import AveragedModel, update_bn

    from bench.core import registry
    from bench.data import datasets
    from bench.eval.analysis import tutor_alone
    from bench.eval.evaluate import Threat, accuracy, judged
    from bench.models import create_model
    from bench.perf.throughput import reference_step

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    spec = datasets.spec(a.dataset)
    cls = registry.get(a.method)

    def net():
        return create_model(a.arch, num_classes=spec.num_classes, in_channels=spec.channels,
                            image_size=spec.image_size)

    m = registry.create(a.method, student=net(), peer=net() if cls.needs_peer else None,
                        dataset=a.dataset, budget=spec.budget,
                        **({"epochs": a.epochs} if a.epochs else {}))
    p = m.p
    optims = [torch.optim.SGD(n.parameters(), lr=p.lr, momentum=p.momentum,
                              weight_decay=p.weight_decay) for n in m.trainable()]
    root = Path(a.data_root) if a.data_root else None
    if a.dataset == "digits":  # scikit-learn's loader, as a script would call it
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        train, test = (datasets.digits_split(x, torch.tensor(d.target), s)
                       for s in ("train", "test"))
    else:
        train = datasets.load(a.dataset, "train", root=root, augment=True)
        test = datasets.load(a.dataset, "test", root=root)
    if isinstance(train, datasets.TensorData):
        def train_loader():
            return datasets.batches(train, p.batch_size, shuffle=True)

        def test_tensors():
            return test.x, test.y
    else:
        def train_loader():
            return torch.utils.data.DataLoader(train, batch_size=p.batch_size, shuffle=True,
                                               num_workers=a.workers)

        def test_tensors():
            xs, ys = zip(*torch.utils.data.DataLoader(test, batch_size=TEST_BATCH,
                                                      num_workers=a.workers), strict=True)
            return torch.cat(xs), torch.cat(ys)
    swa = AveragedModel(m.student) if p.swa else None
    tutor = getattr(m, "peer", None) or getattr(m, "teacher", None)
    threat, best, out = Threat(spec.eps), {}, Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    for epoch in range(p.epochs):
        for o in optims:
            for g in o.param_groups:
                g["lr"] = p.lr_at(epoch)
        total = 0.0
        for x, y in train_loader():
            total += reference_step(m, optims, x, y)
        x_test, y_test = test_tensors()
        nets = {"best": m.student}
        if swa is not None and epoch >= p.milestones[0]:
            swa.update_parameters(m.student)
            update_bn(train_loader(), swa)
            nets["swa_best"] = swa.module
        for name, model in nets.items():
            # the tutor (peer or teacher) judges the student's examples, and is attacked itself
            judges = [model, *([tutor] if tutor is not None and name == "best" else [])]
            hits = judged(model, judges, x_test, y_test, "pgd10", threat, TEST_BATCH)
            acc = hits[0].float().mean().item()
            if len(hits) > 1:
                print("tutor on student", hits[1].float().mean().item(),
                      tutor_alone(tutor, x_test, y_test, threat, seed=0, batch_size=TEST_BATCH))
            if acc > best.get(name, (-1,))[0]:
                best[name] = (acc, copy.deepcopy(model.state_dict()))
                torch.save(model.state_dict(), out / f"{name}.pt")
        print(f"epoch {epoch + 1} loss {total:.3f} pgd10 {acc:.3f}", flush=True)
    finals = {"last": m.student, **({"swa_last": swa.module} if swa is not None else {})}
    for name, (_, state) in best.items():
        finals[name] = copy.deepcopy(m.student)
        finals[name].load_state_dict(state)
    x_test, y_test = test_tensors()
    for name, model in finals.items():
        accs = {k: accuracy(model, x_test, y_test, k, threat, TEST_BATCH)
                for k in a.attacks.split(",")}
        print(name, accs)
    print(f"train+eval {time.perf_counter() - t0:.1f}s")


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return time.perf_counter() - t0


def compare(configs: dict[str, list[str]], rounds: int, json_path: Path | None,
            ratios: dict[str, tuple[str, list[str]]], warmup: bool = True) -> dict:
    """Each command once untimed, then interleaved rounds; medians, spreads, ratios."""
    for cmd in configs.values() if warmup else ():
        _timed(cmd)
    times: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(rounds):
        for k, cmd in configs.items():
            times[k].append(_timed(cmd))
            print(f"round {r + 1} {k}: {times[k][-1]:.1f}s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"seconds": times, "median": med, "ratios": {}}
    for k, v in times.items():
        print(f"{k:>28}: median {med[k]:6.1f}s  (min {min(v):.1f}, max {max(v):.1f})")
    for name, (a, bs) in ratios.items():
        base = min(med[b] for b in bs)
        out["ratios"][name] = round(med[a] / base, 3)
        print(f"{name}: {med[a]:.1f}s / {base:.1f}s = {med[a] / base:.2f}")
    if json_path:
        json_path.write_text(json.dumps(out, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("straight")
    s.add_argument("--dataset", default="digits")
    s.add_argument("--method", default="peeraid")
    s.add_argument("--arch", default="small_cnn")
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--workers", type=int, default=0)
    s.add_argument("--data-root", default=None)
    s.add_argument("--attacks", default="clean,pgd20")
    s.add_argument("--threads", type=int, default=None)
    b = sub.add_parser("bench", help="bench run ARGS, with fake files' md5 check relaxed")
    b.add_argument("args", nargs=argparse.REMAINDER)
    for name in ("cifar", "digits"):
        c = sub.add_parser(name)
        c.add_argument("--method", default="pgdat" if name == "cifar" else "peeraid")
        c.add_argument("--arch", default="small_cnn")
        c.add_argument("--epochs", type=int, default=2 if name == "cifar" else None)
        c.add_argument("--train", type=int, default=10_000)
        c.add_argument("--test", type=int, default=2_000)
        c.add_argument("--rounds", type=int, default=3)
        c.add_argument("--threads", type=int, default=2)
        c.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-speed")
        c.add_argument("--json", type=Path, default=None)
        c.add_argument("--only", default=None, help="comma-separated configuration names")
        c.add_argument("--no-warmup", action="store_true",
                       help="skip the untimed first run of each (caches already warm)")
    a = ap.parse_args()
    if a.cmd == "straight":
        return straight(a)
    if a.cmd == "bench":
        from bench.cli import main as bench_main

        sys.argv = ["bench", *a.args]
        return bench_main()
    py, me = sys.executable, str(HERE)
    common = ["--method", a.method, "--arch", a.arch, "--threads", str(a.threads)]
    epochs = ["--epochs", str(a.epochs)] if a.epochs else []
    run = ["run", "--methods", a.method, "--arch", a.arch, "--attacks", "clean,pgd20",
           "--threads", str(a.threads), "--redo", *epochs]
    if a.cmd == "cifar":
        root = make_cifar(a.work / "data", a.train, a.test)
        data = ["--data-root", str(root)]
        configs = {
            "bench": [py, me, "bench", *run, "--dataset", "cifar10", *data,
                      "--out", str(a.work / "out")],
            "bench-cl": [py, me, "bench", *run, "--dataset", "cifar10", *data,
                         "--channels-last", "on", "--out", str(a.work / "o3")],
            "bench-pil": [py, me, "bench", *run, "--dataset", "cifar10", *data,
                          "--data-path", "torchvision", "--out", str(a.work / "o2")],
            "authors-0": [py, me, "straight", "--dataset", "cifar10", *common, *epochs, *data,
                          "--workers", "0"],
            "authors-2": [py, me, "straight", "--dataset", "cifar10", *common, *epochs, *data,
                          "--workers", "2"],
        }
        ratios = {"bench / best authors' loop": ("bench", ["authors-0", "authors-2"])}
    else:
        configs = {
            "bench": [py, me, "bench", *run, "--out", str(a.work / "out")],
            "straight": [py, me, "straight", *common, *epochs],
        }
        ratios = {"bench / straight loop": ("bench", ["straight"])}
    if a.only:
        configs = {k: v for k, v in configs.items() if k in a.only.split(",")}
        ratios = {k: (x, [b for b in bs if b in configs]) for k, (x, bs) in ratios.items()
                  if x in configs and any(b in configs for b in bs)}
    compare(configs, a.rounds, a.json, ratios, warmup=not a.no_warmup)


if __name__ == "__main__":
    main()
