"""Data sets by name: the embedded digits default (offline, scikit-learn) and torchvision sets.

Every data set yields (x, y) with x float in [0, 1] (no normalisation) and y int64.
In-memory sets are `TensorData` and are batched by slicing (no per-item Python overhead).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from bench import BenchError
from bench.suggest import unknown

Split = Literal["train", "test"]


@dataclass(frozen=True)
class DataSpec:
    """What the runner needs to know about a data set before loading it."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    default_arch: str
    embedded: bool = False  # ships inside an installed package: works offline
    budget: dict[str, Any] = field(default_factory=dict)  # scaled-down training budget
    doc: str = ""


class TensorData(Dataset):
    """An in-memory data set held as two tensors."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]


Loader = Callable[[Split, Path | None, bool], Dataset]
_SPECS: dict[str, DataSpec] = {}
_LOADERS: dict[str, Loader] = {}


def register_dataset(spec: DataSpec) -> Callable[[Loader], Loader]:
    """Decorator: `loader(split, root, augment) -> Dataset` serves data set `spec.name`."""

    def deco(loader: Loader) -> Loader:
        _SPECS[spec.name], _LOADERS[spec.name] = spec, loader
        return loader

    return deco


def dataset_names() -> list[str]:
    return sorted(_SPECS)


def spec(name: str) -> DataSpec:
    if name not in _SPECS:
        raise unknown("dataset", name, _SPECS)
    return _SPECS[name]


def load(name: str, split: Split, *, root: str | Path | None = None,
         augment: bool = False) -> Dataset:
    """The `split` of data set `name`; `augment` applies its standard training augmentation."""
    spec(name)
    return _LOADERS[name](split, Path(root) if root is not None else None, augment)


def batches(data: Dataset, batch_size: int, *, shuffle: bool,
            generator: torch.Generator | None = None,
            num_workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches of `data`; the order is a pure function of `generator`'s state."""
    if isinstance(data, TensorData):
        n = len(data)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield data.x[idx], data.y[idx]
        return
    sampler = RandomSampler(data, generator=generator) if shuffle else SequentialSampler(data)
    yield from DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                          generator=generator, persistent_workers=False)


# --- embedded default -------------------------------------------------------------------

DIGITS_BUDGET = dict(eps=0.1, step=0.025, steps=10, epochs=15, milestones=(10, 13),
                     batch_size=64, lr=0.05)


@register_dataset(DataSpec(
    "digits", num_classes=10, channels=1, image_size=8, default_arch="small_cnn", embedded=True,
    budget=DIGITS_BUDGET,
    doc="scikit-learn's 8x8 handwritten digits (1797 images), fixed 80/20 split; offline"))
def _digits(split: Split, root: Path | None, augment: bool) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_train = int(0.8 * len(y))
    idx = perm[:n_train] if split == "train" else perm[n_train:]
    return TensorData(x[idx].contiguous(), y[idx].contiguous())


# --- torchvision data sets ----------------------------------------------------------------

def default_root() -> Path:
    return Path.home() / ".cache" / "bench" / "data"


def _cifar_transform(augment: bool, size: int = 32):
    from torchvision import transforms as T

    ops = [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()] if augment else []
    return T.Compose([*ops, T.ToTensor()])


def _missing(name: str, root: Path, exc: Exception) -> BenchError:
    return BenchError(
        f"{name} not found under {root} and could not be downloaded "
        f"({type(exc).__name__}); put the files there or pass --data-root DIR")


def _torchvision(name: str, cls_name: str, split: Split, root: Path | None, augment: bool,
                 **kw: Any) -> Dataset:
    import torchvision

    root = root or default_root()
    cls = getattr(torchvision.datasets, cls_name)
    try:
        try:
            return cls(str(root), transform=_cifar_transform(augment), download=False, **kw)
        except RuntimeError:
            return cls(str(root), transform=_cifar_transform(augment), download=True, **kw)
    except Exception as exc:  # offline, corrupt, unwritable root: one clear line
        raise _missing(name, root, exc) from exc


@register_dataset(DataSpec("cifar10", 10, 3, 32, "resnet18",
                           doc="CIFAR-10 through torchvision (--data-root)"))
def _cifar10(split: Split, root: Path | None, augment: bool) -> Dataset:
    return _torchvision("cifar10", "CIFAR10", split, root, augment, train=split == "train")
