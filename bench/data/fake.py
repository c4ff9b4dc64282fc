"""Synthetic CIFAR-shaped files for offline smoke tests and speed checks:

    python -m bench.data.fake DIR [--dataset cifar10|cifar100] [--train N] [--test N]

writes random pixels and labels in torchvision's on-disk layout under DIR (cifar-10-batches-py/
or cifar-100-python/), and beside them a manifest of their md5 sums, BENCH_FAKE_DATA. No such
file can match torchvision's sums of the official files, so bench accepts these only through
that manifest (bench.data.datasets), warns on every load that they are synthetic, and never
downloads over them. Then `bench run --dataset cifar10 --data-root DIR ...` runs offline: the
numbers it gives measure the pipeline and its speed, never accuracy on CIFAR. See
docs/offline.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
from pathlib import Path

from bench import BenchError
from bench.data.datasets import FAKE_MARKER, FAKEABLE, spec

LABEL_KEY = {"cifar10": "labels", "cifar100": "fine_labels"}  # as the official pickles


def fake_cifar(root: Path, train: int, test: int, seed: int = 0,
               dataset: str = "cifar10") -> Path:
    """`train` + `test` random images of `dataset`'s shape in torchvision's layout under
    `root`, with their manifest; returns `root` (the --data-root). Refuses to overwrite files
    it did not write (the official ones, say)."""
    import numpy as np
    import torchvision

    cls = getattr(torchvision.datasets, FAKEABLE[dataset])
    base, rng = root / cls.base_folder, np.random.default_rng(seed)
    names = [f for f, _ in [*cls.train_list, *cls.test_list]] + [cls.meta["filename"]]
    _refuse_foreign(base, names)
    base.mkdir(parents=True, exist_ok=True)
    k, classes = len(cls.train_list), spec(dataset).num_classes
    sizes = [train // k + (i < train % k) for i in range(k)] + [test]
    for (name, _), n in zip([*cls.train_list, *cls.test_list], sizes, strict=True):
        _dump(base / name, {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                            LABEL_KEY[dataset]: rng.integers(0, classes, n).tolist()})
    _dump(base / cls.meta["filename"], {cls.meta["key"]: [f"class{i}" for i in range(classes)]})
    manifest = {"written_by": "python -m bench.data.fake", "dataset": dataset, "train": train,
                "test": test, "seed": seed, "md5": {f: _md5(base / f) for f in names}}
    (base / FAKE_MARKER).write_text(json.dumps(manifest, indent=1) + "\n")
    return root


def _refuse_foreign(base: Path, names: list[str]) -> None:
    """Files of the layout already there and no marker: someone else's, kept."""
    if (base / FAKE_MARKER).exists():
        return
    there = [f for f in names if (base / f).exists()]
    if there:
        raise BenchError(f"{base} already holds {', '.join(there)}, not written by "
                         "bench.data.fake; not overwriting them: choose another folder")


def _dump(path: Path, obj: dict) -> None:
    # protocol 2 with str keys, as torchvision reads the official Python 2 pickles
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _count(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.data.fake", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, metavar="DIR", help="the --data-root to write into")
    ap.add_argument("--dataset", choices=sorted(FAKEABLE), default="cifar10")
    ap.add_argument("--train", type=_count, default=1200, help="train images [1200]")
    ap.add_argument("--test", type=_count, default=200, help="test images [200]")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        fake_cifar(a.root, a.train, a.test, a.seed, a.dataset)
    except (BenchError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(f"wrote {a.train} train and {a.test} test random {a.dataset}-shaped images to "
          f"{a.root} (marked {FAKE_MARKER}: synthetic); bench run --dataset {a.dataset} "
          f"--data-root {a.root} ...")


if __name__ == "__main__":
    main()
