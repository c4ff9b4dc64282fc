"""Data sets by name: the embedded digits default (offline, scikit-learn), torchvision sets
(CIFAR-10/100, SVHN) and TinyImageNet-200 read from its standard folder.

Every data set yields (x, y) with x float in [0, 1] (no normalisation) and y int64.
In-memory sets are `TensorData` and are batched by slicing (no per-item Python overhead).
Split "val" is a fixed (seed 0) subset of the train split, so model selection never looks at
the test set; `load(..., "train", holdout=True)` leaves those images out of training.

Files that torchvision rejects are named in one line: which are missing, which fail its md5
check. Random files in CIFAR's layout that `python -m bench.data.fake` wrote (an offline smoke
test) carry a manifest of their own md5 sums, `BENCH_FAKE_DATA`: bench checks them against
it instead, never downloads over them and warns on every load that they are synthetic
(`synthetic` tells callers, so that results from them can be marked).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, Subset

from bench import BenchError
from bench.core.files import load_file, write_file
from bench.core.suggest import unknown

Split = Literal["train", "val", "test"]
Source = Literal["train", "test"]  # what a loader reads; load() carves "val" out of "train"


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
    val_size: float = 1000  # held-out train images for "val": a count, or a fraction if < 1
    eps: float = 8 / 255  # the evaluation threat model (L-inf), whatever a method trains at
    # The L2 threat model (pgd20_l2, aa_l2): RobustBench's 0.5 for CIFAR-10, and for 32x32
    # colour sets of the same L-inf radius (CIFAR-100, SVHN) the same 0.5 the L2 literature
    # uses there (RobustBench has no L2 board for them).
    eps_l2: float = 0.5


def scaled_l2(eps: float, channels: int, image_size: int) -> float:
    """An L2 radius scaled from CIFAR-10's (0.5 at L-inf 8/255, 3x32x32) as the L-inf radius
    is scaled and by the square root of the pixel count (the same per-pixel root-mean-square
    change): eps_l2 = 0.5 * (eps / (8/255)) * sqrt(channels * size^2 / 3072)."""
    return 0.5 * (eps / (8 / 255)) * (channels * image_size ** 2 / 3072) ** 0.5


class TensorData(Dataset):
    """An in-memory data set held as two tensors."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]


Loader = Callable[[Source, Path | None, bool], Dataset]
_SPECS: dict[str, DataSpec] = {}
_LOADERS: dict[str, Loader] = {}


def register_dataset(spec: DataSpec) -> Callable[[Loader], Loader]:
    """Decorator: `loader(source, root, augment) -> Dataset` serves data set `spec.name`."""

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


def load(name: str, split: Split, *, root: str | Path | None = None, augment: bool = False,
         holdout: bool = False) -> Dataset:
    """The `split` of data set `name`; `augment` applies its standard training augmentation.

    "val" never augments; `holdout=True` removes the "val" images from "train" so a run that
    selects its checkpoint on "val" has not trained on them.
    """
    s = spec(name)
    if split not in get_args(Split):
        raise unknown("split", split, get_args(Split))
    path = Path(root) if root is not None else None
    if split == "test":
        return _LOADERS[name]("test", path, augment)
    data = _LOADERS[name]("train", path, augment and split == "train")
    if split == "train" and not holdout:
        return data
    val = val_mask(len(data), s.val_size)
    return _subset(data, (val if split == "val" else ~val).nonzero().squeeze(1))


def raw(name: str, source: Source, root: Path | None = None) -> Dataset:
    """Split `source` of `name` as its loader reads it, unaugmented (what a cache decodes)."""
    spec(name)
    return _LOADERS[name](source, Path(root) if root is not None else None, False)


def val_mask(n: int, size: float) -> Tensor:
    """Which of `n` train images are held out: seeded on its own (seed 0), not by the run's
    seed, so every run and method selects on the same images."""
    k = int(size * n) if size < 1 else int(size)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k]] = True
    return mask


def _subset(data: Dataset, idx: Tensor) -> Dataset:
    """Rows `idx` of `data`; in-memory sets stay `TensorData` to keep slicing batches fast."""
    if isinstance(data, TensorData):
        return TensorData(data.x[idx], data.y[idx])
    return Subset(data, idx.tolist())


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


def as_tensors(ds: Dataset) -> tuple[Tensor, Tensor]:
    """A whole (evaluation) data set as two tensors."""
    if isinstance(ds, TensorData):
        return ds.x, ds.y
    xs, ys = zip(*batches(ds, 1000, shuffle=False), strict=True)
    return torch.cat(xs), torch.cat(ys)


# --- embedded default -------------------------------------------------------------------

DIGITS_BUDGET = dict(eps=0.1, step=0.025, steps=10, epochs=15, milestones=(10, 13),
                     batch_size=64, lr=0.05)


@register_dataset(DataSpec(
    "digits", num_classes=10, channels=1, image_size=8, default_arch="small_cnn", embedded=True,
    budget=DIGITS_BUDGET, eps=DIGITS_BUDGET["eps"], val_size=0.1,
    eps_l2=scaled_l2(DIGITS_BUDGET["eps"], 1, 8),  # 0.5 * 3.1875 * sqrt(64/3072) = 0.2301
    doc="scikit-learn's 8x8 handwritten digits (1797 images), fixed 80/20 split; offline"))
def _digits(split: Source, root: Path | None, augment: bool) -> Dataset:
    return digits_split(*_digits_arrays(root or default_root()), split)


def warn(line: str) -> None:
    """One warning line on stderr (a damaged or unwritable cache: rebuilt, never fatal)."""
    print(f"warning: {line}", file=sys.stderr)


def digits_split(x: Tensor, y: Tensor, split: Source) -> TensorData:
    """The embedded set's fixed 80/20 split of all 1797 digits."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_train = int(0.8 * len(y))
    idx = perm[:n_train] if split == "train" else perm[n_train:]
    return TensorData(x[idx].contiguous(), y[idx].contiguous())


def _digits_arrays(root: Path) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits (pixels / 16, labels), cached as tensors under `root` keyed by
    its data file: importing scikit-learn takes about a second, more than an embedded epoch.
    A damaged cache is rebuilt with one warning line."""
    found = importlib.util.find_spec("sklearn")
    src = Path((found.submodule_search_locations or [""])[0]) / "datasets/data/digits.csv.gz" \
        if found else Path()
    cache = None
    if src.is_file():
        stamp = f"{src.resolve()}|{src.stat().st_size}|{src.stat().st_mtime_ns}"
        key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
        cache = root / "bench-decoded" / f"digits-{key}.pt"
        if cache.exists():
            try:
                blob = load_file(cache)
                return blob["x"], blob["y"]
            except (BenchError, KeyError, TypeError) as exc:
                warn(f"digits cache {cache} is damaged ({exc}); rebuilding it")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    if cache is not None:
        with contextlib.suppress(OSError):  # an unwritable root just goes uncached
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_file(cache, {"x": x, "y": y})
    return x, y


# --- torchvision data sets ----------------------------------------------------------------

def default_root() -> Path:
    return Path.home() / ".cache" / "bench" / "data"


def _transform(augment: bool, size: int = 32, flip: bool = True) -> Callable:
    """PIL image -> CHW float in [0, 1]; the augmentation is the usual crop (+ flip)."""
    from torchvision import transforms as T

    ops = [T.RandomCrop(size, padding=4), *([T.RandomHorizontalFlip()] if flip else [])]
    return T.Compose([*(ops if augment else []), T.ToTensor()])


def _why(exc: Exception) -> str:
    """The first line of `exc`: the CLI prints BenchError on one line."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0]}" if msg else type(exc).__name__


FAKE_MARKER = "BENCH_FAKE_DATA"  # in a data set's folder: its files are bench's synthetic ones
FAKEABLE = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}  # what bench.data.fake can write
FAKE_HOW = "python -m bench.data.fake DIR"
OFFICIAL_BAD = "an incomplete download, or not the official files"


def synthetic(name: str, root: str | Path | None = None) -> Path | None:
    """The folder of `name` under `root` when it holds bench's synthetic files (its marker is
    there), else None: results from such files must say so."""
    if name not in FAKEABLE:
        return None
    import torchvision

    cls = getattr(torchvision.datasets, FAKEABLE[name])
    folder = (Path(root) if root is not None else default_root()) / cls.base_folder
    return folder if (folder / FAKE_MARKER).is_file() else None


def _torchvision(name: str, cls_name: str, root: Path | None, augment: bool,
                 flip: bool = True, **kw: Any) -> Dataset:
    """A torchvision set from `root`, downloading it if absent or failing its md5 sums (bench's
    synthetic files excepted); every failure is one line naming the files at fault."""
    import torchvision

    root = root or default_root()
    cls = getattr(torchvision.datasets, cls_name)
    tf = _transform(augment, flip=flip)
    if synthetic(name, root):
        return _synthetic(name, cls, root, tf, **kw)
    try:
        try:
            return cls(str(root), transform=tf, download=False, **kw)
        except RuntimeError:  # absent or failing its md5 sums: (re)download
            return cls(str(root), transform=tf, download=True, **kw)
    except Exception as exc:  # offline, corrupt, unwritable root
        folder = root / getattr(cls, "base_folder", "")
        faults = _faults(folder, _files(cls, kw), OFFICIAL_BAD) or f"cannot read {folder}"
        hint = f" (random files for a smoke test: {FAKE_HOW})" if name in FAKEABLE else ""
        raise BenchError(f"{name}: {faults}; could not download them ({_why(exc)}); put the "
                         f"official files there or pass --data-root DIR{hint}") from exc


def _files(cls: Any, kw: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(file, md5) of every file torchvision checks before reading split `kw` of `cls` (CIFAR:
    all batches and the meta file; SVHN: the split's .mat file)."""
    if hasattr(cls, "train_list"):
        return [(f, md5) for f, md5 in [*cls.train_list, *cls.test_list]] + [
            (cls.meta["filename"], cls.meta["md5"])]
    _, file, md5 = cls.split_list[kw["split"]]
    return [(file, md5)]


def _faults(folder: Path, files: list[tuple[str, str | None]], bad_why: str) -> str | None:
    """Which check failed, naming the files: the folder or files missing, or files present
    whose md5 sum is not the expected one (`bad_why`: what that suggests); None if none."""
    from torchvision.datasets.utils import check_integrity

    if not folder.is_dir():
        return (f"not found or incomplete in {folder}: no such folder (it should hold "
                f"{', '.join(f for f, _ in files)})")
    missing = [f for f, _ in files if not (folder / f).is_file()]
    bad = [f for f, md5 in files
           if f not in missing and not check_integrity(str(folder / f), md5 or "")]
    said = [f"{', '.join(missing)} missing"] if missing else []
    if bad:
        said.append(f"{', '.join(bad)} fail{'s' * (len(bad) == 1)} the md5 check ({bad_why})")
    head = "not found or incomplete in" if missing else "files in"
    return (f"{head} {folder}: " + "; ".join(said)) if said else None


def _synthetic(name: str, cls: Any, root: Path, tf: Callable, **kw: Any) -> Dataset:
    """bench's synthetic files: torchvision checks them against the md5 sums their writer
    recorded, not the official ones; never downloaded over; one warning line per load."""
    folder = root / cls.base_folder
    sums = _manifest(name, folder)
    ds = cls.__new__(cls)  # the sums as instance attributes: a plain, picklable CIFAR set
    ds.train_list = [[f, sums.get(f, "")] for f, _ in cls.train_list]
    ds.test_list = [[f, sums.get(f, "")] for f, _ in cls.test_list]
    ds.meta = {**cls.meta, "md5": sums.get(cls.meta["filename"], "")}
    try:
        cls.__init__(ds, str(root), transform=tf, download=False, **kw)
    except Exception as exc:
        faults = (_faults(folder, _files(ds, kw), "changed since bench.data.fake wrote them")
                  or f"cannot read {folder} ({_why(exc)})")
        raise BenchError(f"{name} (synthetic files, {FAKE_MARKER}): {faults}; write them again "
                         f"({FAKE_HOW}), delete {FAKE_MARKER} if they are the official files "
                         "now, or pass --data-root DIR") from exc
    warn_synthetic(name, folder)
    return ds


def warn_synthetic(name: str, folder: Path) -> None:
    """The line every load of bench's synthetic files prints (decoded or from the cache)."""
    warn(f"{name} in {folder} is synthetic: random images written by bench.data.fake "
         f"({FAKE_MARKER}), not {name}; results from it measure nothing about {name}")


def _manifest(name: str, folder: Path) -> dict[str, str]:
    """The md5 sums bench.data.fake recorded for the files it wrote in `folder`."""
    path = folder / FAKE_MARKER
    try:
        sums = json.loads(path.read_text())["md5"]
        if not isinstance(sums, dict):
            raise TypeError(f"md5 is a {type(sums).__name__}, not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{name}: the synthetic files' manifest {path} is unreadable "
                         f"({_why(exc)}); write them again ({FAKE_HOW}), or delete it and put "
                         "the official files there, or pass --data-root DIR") from exc
    return {str(f): str(md5) for f, md5 in sums.items()}


@register_dataset(DataSpec("cifar10", 10, 3, 32, "resnet18",
                           doc="CIFAR-10 through torchvision (--data-root)"))
def _cifar10(split: Source, root: Path | None, augment: bool) -> Dataset:
    return _torchvision("cifar10", "CIFAR10", root, augment, train=split == "train")


@register_dataset(DataSpec("cifar100", 100, 3, 32, "resnet18",
                           doc="CIFAR-100 (fine labels) through torchvision (--data-root)"))
def _cifar100(split: Source, root: Path | None, augment: bool) -> Dataset:
    return _torchvision("cifar100", "CIFAR100", root, augment, train=split == "train")


@register_dataset(DataSpec("svhn", 10, 3, 32, "resnet18",
                           doc="SVHN digits (train/test, no extra) through torchvision; "
                               "no flip: mirrored digits are other digits"))
def _svhn(split: Source, root: Path | None, augment: bool) -> Dataset:
    return _torchvision("svhn", "SVHN", root, augment, flip=False, split=split)


# --- TinyImageNet-200 (no torchvision class, no public download API) ------------------------

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


class _ImageFiles(Dataset):
    """Images decoded lazily from `(path, label)` pairs (TinyImageNet's 110k JPEGs);
    `label_files`, the files the labels were read from (part of the decoded cache's key)."""

    def __init__(self, items: list[tuple[Path, int]], transform: Callable,
                 label_files: tuple[Path, ...] = ()) -> None:
        self.items, self.transform, self.label_files = items, transform, label_files

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        path, label = self.items[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")  # a few TinyImageNet images are grayscale
        except OSError as exc:
            raise BenchError(f"cannot read image {path} ({_why(exc)}); "
                             f"re-extract the data set from {TINY_URL}") from exc
        return self.transform(img), label


def _tiny_items(base: Path, split: Source) -> list[tuple[Path, int]]:
    """(image, class) pairs of a tiny-imagenet-200 folder; classes in sorted wnids.txt order.

    Raises OSError/KeyError/ValueError on a missing or partial folder, so that `_tinyimagenet`
    reports it before training starts rather than at some later batch.
    """
    wnids = sorted((base / "wnids.txt").read_text().split())
    label = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        items = []
        for w in wnids:
            files = sorted((base / "train" / w / "images").glob("*.JPEG"))
            if not files:
                raise FileNotFoundError(f"no images in {base / 'train' / w / 'images'}")
            items += [(f, label[w]) for f in files]
        return items
    rows = [ln.split("\t") for ln in (base / "val" / "val_annotations.txt").read_text().splitlines()
            if ln.strip()]
    items = [(base / "val" / "images" / r[0], label[r[1]]) for r in rows]
    missing = next((f for f, _ in items if not f.is_file()), None)
    if missing or not items:
        raise FileNotFoundError(f"missing {missing or 'val images'}")
    return items


# L2: no radius is common for 64x64 TinyImageNet; CIFAR-10's 0.5 scaled by the pixel count
# (`scaled_l2`, same L-inf eps): 0.5 * sqrt(12288 / 3072) = 1.0.
@register_dataset(DataSpec("tinyimagenet", 200, 3, 64, "resnet18", eps_l2=scaled_l2(8 / 255, 3, 64),
                           doc="TinyImageNet-200 from <data-root>/tiny-imagenet-200; "
                               "test = its val folder (test labels are unpublished)"))
def _tinyimagenet(split: Source, root: Path | None, augment: bool) -> Dataset:
    root = root or default_root()
    base = root / "tiny-imagenet-200"
    try:
        items = _tiny_items(base, split)
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise BenchError(
            f"tinyimagenet: not found or incomplete in {base} ({_why(exc)}); download "
            f"{TINY_URL}, unzip it in {root}, or pass --data-root DIR (the folder holding "
            f"tiny-imagenet-200)") from exc
    val = () if split == "train" else (base / "val" / "val_annotations.txt",)
    labels = (base / "wnids.txt", *val)
    return _ImageFiles(items, _transform(augment, size=64), labels)
