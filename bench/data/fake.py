"""Synthetic CIFAR-shaped files for offline smoke tests and speed checks:

    python -m bench.data.fake DIR [--dataset cifar10|cifar100] [--train N] [--test N]
                                  [--corrupted]

writes random pixels and labels in torchvision's on-disk layout under DIR (cifar-10-batches-py/
or cifar-100-python/), and beside them a manifest of their md5 sums, BENCH_FAKE_DATA.
`--corrupted` also writes CIFAR-10-C/ (CIFAR-100-C/) in the published layout: every
corruption's file holds the fake test images with noise growing with the severity, and
labels.npy their labels (marked BENCH_FAKE_DATA too: bench warns when it reads them). No such
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


def fake_cifar_c(root: Path, dataset: str = "cifar10", seed: int = 0) -> Path:
    """The fake test images `fake_cifar` wrote under `root`, as `dataset`'s corrupted sets in
    the published layout (bench.data.corrupted): a seeded noise of standard deviation 8 x
    severity (out of 255) per corruption, the labels repeated per severity."""
    import numpy as np
    import torchvision

    from bench.data.corrupted import CORRUPTIONS, FOLDERS, SEVERITIES

    cls = getattr(torchvision.datasets, FAKEABLE[dataset])
    test = pickle.loads((root / cls.base_folder / cls.test_list[0][0]).read_bytes())
    x = np.asarray(test["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.tile(np.asarray(test[LABEL_KEY[dataset]], np.int64), len(SEVERITIES))
    base, rng = root / FOLDERS[dataset], np.random.default_rng(seed)
    names = [f"{c}.npy" for c in CORRUPTIONS] + ["labels.npy"]
    _refuse_foreign(base, names)
    base.mkdir(parents=True, exist_ok=True)
    for c in CORRUPTIONS:
        sets = [np.clip(x + rng.normal(0, 8 * s, x.shape), 0, 255).astype(np.uint8)
                for s in SEVERITIES]
        np.save(base / f"{c}.npy", np.concatenate(sets))
    np.save(base / "labels.npy", labels)
    manifest = {"written_by": "python -m bench.data.fake --corrupted", "dataset": dataset,
                "seed": seed, "md5": {f: _md5(base / f) for f in names}}
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
    ap.add_argument("--corrupted", action="store_true",
                    help="also write the test images' corrupted sets (CIFAR-10-C layout)")
    a = ap.parse_args(argv)
    try:
        fake_cifar(a.root, a.train, a.test, a.seed, a.dataset)
        if a.corrupted:
            fake_cifar_c(a.root, a.dataset, a.seed)
    except (BenchError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    also = " and their corrupted sets" if a.corrupted else ""
    print(f"wrote {a.train} train and {a.test} test random {a.dataset}-shaped images{also} to "
          f"{a.root} (marked {FAKE_MARKER}: synthetic); bench run --dataset {a.dataset} "
          f"--data-root {a.root} ...")


if __name__ == "__main__":
    main()
