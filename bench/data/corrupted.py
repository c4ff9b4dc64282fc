"""Common corruptions (Hendrycks & Dietterich, 2019) read from their published files under
--data-root, for the `corruptions` evaluation:

- CIFAR-10-C / CIFAR-100-C: `<root>/CIFAR-10-C/<corruption>.npy`, uint8 (5 n, 32, 32, 3):
  severities 1 to 5 stacked, n test images each (10,000 in the published files), and
  `labels.npy` (5 n labels, as published; n also read: the same labels for every severity).
- Tiny-ImageNet-C: `<root>/Tiny-ImageNet-C/<corruption>/<severity 1-5>/<wnid>/*.JPEG`, class
  indices in the order bench's TinyImageNet loader uses (sorted wnids of
  `<root>/tiny-imagenet-200/wnids.txt`).

The 15 corruptions are RobustBench's (`robustbench.data.CORRUPTIONS`). Data sets without
published corrupted files (digits, SVHN) have no corruption evaluation: the one library that
generates them, `imagecorruptions` (last release 1.1.2, 2020), calls scikit-image's removed
`multichannel=` argument and imports `pkg_resources`, and it reproduces ImageNet-C's
parameters, not CIFAR-10-C's, on images of at least 32x32 (see docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench import BenchError
from bench.data.datasets import (
    FAKE_MARKER,
    _ImageFiles,
    _transform,
    _why,
    as_tensors,
    default_root,
    warn,
)

CORRUPTIONS = ("shot_noise", "motion_blur", "snow", "pixelate", "gaussian_noise",
               "defocus_blur", "brightness", "fog", "zoom_blur", "frost", "glass_blur",
               "impulse_noise", "contrast", "jpeg_compression", "elastic_transform")
SEVERITIES = (1, 2, 3, 4, 5)
FOLDERS = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C", "tinyimagenet": "Tiny-ImageNet-C"}
URLS = {"cifar10": "https://zenodo.org/record/2535967",
        "cifar100": "https://zenodo.org/record/3555552",
        "tinyimagenet": "https://zenodo.org/record/2536630"}


def available(dataset: str) -> bool:
    return dataset in FOLDERS


def unavailable(dataset: str) -> BenchError:
    """The one line for a data set without published corrupted files."""
    return BenchError(f"--attacks corruptions: {dataset} has no published corrupted files "
                      f"(only {', '.join(FOLDERS)} do; bench does not generate them): drop "
                      "corruptions from --attacks for it")


@dataclass(frozen=True)
class CorruptedSets:
    """A data set's corrupted test sets, checked on creation; iterating yields
    (corruption, severity, x float NCHW in [0, 1], y int64), one set at a time."""

    dataset: str
    folder: Path
    corruptions: tuple[str, ...] = CORRUPTIONS

    def __iter__(self) -> Iterator[tuple[str, int, Tensor, Tensor]]:
        for c in self.corruptions:
            for s in SEVERITIES:
                yield (c, s, *self.load(c, s))

    def load(self, corruption: str, severity: int) -> tuple[Tensor, Tensor]:
        if self.dataset == "tinyimagenet":
            return as_tensors(_ImageFiles(_tiny_items(self.folder, corruption, severity),
                                          _transform(False, size=64)))
        images = np.load(self.folder / f"{corruption}.npy", mmap_mode="r")
        n = len(images) // len(SEVERITIES)
        x = torch.from_numpy(np.array(images[(severity - 1) * n:severity * n]))
        labels = np.load(self.folder / "labels.npy")
        y = labels[(severity - 1) * n:severity * n] if len(labels) > n else labels
        return x.permute(0, 3, 1, 2).float().div(255), torch.from_numpy(
            np.asarray(y, dtype=np.int64))

    def describe(self) -> str:
        """Where the sets were read from, for the row."""
        return str(self.folder)


def corrupted_sets(dataset: str, root: str | Path | None = None) -> CorruptedSets:
    """`dataset`'s corrupted test sets under `root`, every file checked now (shapes, labels,
    folders), so a missing or damaged one is one BenchError line before any training."""
    if not available(dataset):
        raise unavailable(dataset)
    root = Path(root) if root is not None else default_root()
    folder = root / FOLDERS[dataset]
    try:
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder {folder}")
        if dataset == "tinyimagenet":
            _check_tiny(folder)
        else:
            _check_arrays(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise BenchError(
            f"{dataset} corruptions: not found or incomplete in {folder} ({_why(exc)}); "
            f"put the published {FOLDERS[dataset]} there ({URLS[dataset]}: the "
            f"{len(CORRUPTIONS)} corruptions {_layout(dataset)}), or pass --data-root DIR "
            "(the folder holding it)") from exc
    if (folder / FAKE_MARKER).is_file():
        warn(f"{dataset} corruptions in {folder} are synthetic (bench.data.fake, "
             f"{FAKE_MARKER}): results from them measure nothing about {FOLDERS[dataset]}")
    return CorruptedSets(dataset, folder)


def _layout(dataset: str) -> str:
    if dataset == "tinyimagenet":
        return "as <corruption>/<severity 1-5>/<wnid>/*.JPEG"
    return "as <corruption>.npy, uint8 (5 n, 32, 32, 3), and labels.npy"


def _check_arrays(folder: Path) -> None:
    """Every CIFAR-C array present, of one shape, severities stacked; labels matching."""
    labels = np.load(folder / "labels.npy", mmap_mode="r")
    sizes = set()
    for c in CORRUPTIONS:
        path = folder / f"{c}.npy"
        a = np.load(path, mmap_mode="r")
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[1:] != (32, 32, 3) \
                or len(a) % len(SEVERITIES) or not len(a):
            raise ValueError(f"{path.name} is {a.dtype} {a.shape}, not uint8 (5 n, 32, 32, 3)")
        sizes.add(len(a))
    if len(sizes) > 1:
        raise ValueError(f"the corruption files hold different numbers of images: {sorted(sizes)}")
    total = sizes.pop()
    if labels.ndim != 1 or len(labels) not in (total, total // len(SEVERITIES)):
        raise ValueError(f"labels.npy holds {labels.shape} labels for {total} images "
                         f"({total // len(SEVERITIES)} a severity)")


def _wnids(folder: Path) -> list[str]:
    """TinyImageNet's class order, as bench's loader (sorted wnids.txt beside the C folder)."""
    return sorted((folder.parent / "tiny-imagenet-200" / "wnids.txt").read_text().split())


def _tiny_items(folder: Path, corruption: str, severity: int) -> list[tuple[Path, int]]:
    wnids = _wnids(folder)
    base = folder / corruption / str(severity)
    items = [(f, i) for i, w in enumerate(wnids) for f in sorted((base / w).glob("*.JPEG"))]
    if not items:
        raise FileNotFoundError(f"no images in {base}/<wnid>/")
    return items


def _check_tiny(folder: Path) -> None:
    """Every corruption and severity folder present, one folder per known wnid, same count."""
    known, counts = set(_wnids(folder)), set()
    for c in CORRUPTIONS:
        for s in SEVERITIES:
            base = folder / c / str(s)
            if not base.is_dir():
                raise FileNotFoundError(f"no such folder {base}")
            stray = sorted(p.name for p in base.iterdir() if p.name not in known)
            if stray:
                raise ValueError(f"{base} holds {stray[0]}, not a wnid of wnids.txt")
            counts.add(len(_tiny_items(folder, c, s)))
    if len(counts) > 1:
        raise ValueError(f"the severity folders hold different numbers of images: {sorted(counts)}")

