"""The device-resident data path: decode a data set once, keep it on the training device,
augment whole batches there.

Decoding PIL images and augmenting them one by one on the host every epoch costs more than
training a small network (TinyImageNet re-decodes 100k JPEGs per epoch). Here each split is
decoded once into a uint8 (N, C, H, W) tensor plus int64 labels and cached on disk beside the
data, keyed by the source files' names, sizes and modification times (a changed file makes a
new key; a damaged cache file is rebuilt with one warning line, never used). While those
files and their folders are unchanged the cache is read without running the data set's
loader at all (torchvision's md5 sums of every file, unpickling, SVHN's .mat). Training batches
are cropped (zero padding, an independent offset per image, uniform in [-pad, pad]^2 as
torchvision's RandomCrop draws it) and flipped (per image, p = 1/2; none for SVHN) on the
device; the order and every draw come from one generator seeded by (seed, epoch). Without
augmentation a batch is exactly what torchvision's ToTensor gives: uint8 / 255 in float32.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from bench import BenchError
from bench.core.files import atomic_write_bytes, load_file, write_file
from bench.data import datasets

CACHE_FORMAT = "bench-decoded-1"
CACHE_DIR = "bench-decoded"  # under the data root
NO_FLIP = {"svhn"}  # a mirrored digit is another digit
PAD = 4  # RandomCrop padding of every real data set (32 px and TinyImageNet's 64 px)


@dataclass(frozen=True)
class Augment:
    """The standard training augmentation: zero-padded random crop, optional horizontal flip."""

    pad: int = PAD
    flip: bool = True


def augmentation(name: str) -> Augment | None:
    """The augmentation data set `name` trains with (None for the embedded set: none)."""
    if datasets.spec(name).embedded:
        return None
    return Augment(flip=name not in NO_FLIP)


# --- decode once, cache on disk ------------------------------------------------------------

def _source_files(ds: Dataset) -> list[Path]:
    """The files a torchvision / folder data set was read from (the cache key)."""
    if hasattr(ds, "items"):  # TinyImageNet's image files and the files naming their labels
        return [*ds.label_files, *(p for p, _ in ds.items)]
    if hasattr(ds, "base_folder") and hasattr(ds, "train_list"):  # CIFAR-10/100
        files = ds.train_list if ds.train else ds.test_list
        return [Path(ds.root) / ds.base_folder / f for f, _ in files]
    if hasattr(ds, "filename"):  # SVHN's .mat file
        return [Path(ds.root) / ds.filename]
    raise BenchError(f"no decoded cache for {type(ds).__name__}: its source files are unknown")


def _key(name: str, source: str, files: list[Path]) -> str:
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    blob = json.dumps([CACHE_FORMAT, name, source, stats]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _decode(ds: Dataset) -> tuple[Tensor, Tensor]:
    """uint8 (N, C, H, W) pixels and int64 labels, straight from the set's own arrays where it
    keeps them (CIFAR: N H W C; SVHN: N C H W), else each image decoded as its loader does."""
    if hasattr(ds, "items"):
        import numpy as np
        from PIL import Image

        xs = []
        for i, (path, _) in enumerate(ds.items):
            try:
                with Image.open(path) as im:
                    xs.append(np.asarray(im.convert("RGB")))
            except OSError:
                ds[i]  # the loader's own one-line error names the file
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2)
        y = torch.tensor([label for _, label in ds.items])
    elif hasattr(ds, "labels"):  # SVHN
        x, y = torch.from_numpy(ds.data), torch.as_tensor(ds.labels)
    else:
        x, y = torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.as_tensor(ds.targets)
    return x.contiguous(), y.to(torch.int64).contiguous()


def _read_cache(path: Path, key: str) -> tuple[Tensor, Tensor] | None:
    """The cached tensors, or None (with one warning line) when the file is damaged."""
    try:
        blob = load_file(path)  # CRC-checked, weights only
        ok = (isinstance(blob, dict) and blob.get("format") == CACHE_FORMAT
              and blob.get("key") == key and blob["x"].dtype == torch.uint8
              and blob["x"].dim() == 4 and len(blob["x"]) == len(blob["y"]))
        if ok:
            return blob["x"], blob["y"]
        why = "not a decoded cache of these files"
    except (BenchError, KeyError, AttributeError, TypeError) as exc:
        why = str(exc)
    datasets.warn(f"decoded data cache {path} is damaged ({why}); rebuilding it")
    return None


def _index(root: Path, name: str, source: str) -> Path:
    return root / CACHE_DIR / f"{name}-{source}.files.json"


def _indexed(root: Path, name: str, source: str) -> tuple[Path, str] | None:
    """(cache file, key) from the index a decode left, if its source files are unchanged:
    then neither the data set's loader (torchvision's md5 sums of every file, unpickling,
    SVHN's .mat, TinyImageNet's folder walk) nor the cache key's source need run again."""
    try:
        index = json.loads(_index(root, name, source).read_text())
        if index["stamp"] != _stamp(name, source, [Path(f) for f in index["files"]]):
            return None
        key = str(index["key"])
    except (OSError, ValueError, KeyError, TypeError):  # no index, a file gone, damaged
        return None
    path = root / CACHE_DIR / f"{name}-{source}-{key}.pt"
    return (path, key) if path.exists() else None


def _stamp(name: str, source: str, files: list[Path]) -> str:
    """The key of the files and of their folders (a file added to a folder of images, which
    the loader would pick up, changes the folder's modification time)."""
    return _key(name, source, [*files, *sorted({f.parent for f in files})])


def decoded(name: str, source: datasets.Source, root: Path | None = None) -> tuple[Tensor, Tensor]:
    """Split `source` of data set `name` as uint8 (N, C, H, W) and labels, decoded once.

    A cache under `<root>/bench-decoded/` whose source files are unchanged is read straight
    away; otherwise the data set's own loader runs (its checks and one-line errors stay) and
    the cache is read, or written if missing or damaged (a root that cannot be written to
    just goes uncached).
    """
    root = root or datasets.default_root()
    hit = _indexed(root, name, source)
    if hit is not None and (cached := _read_cache(*hit)) is not None:
        if (fake := datasets.synthetic(name, root)) is not None:  # said on every load
            datasets.warn_synthetic(name, fake)
        return cached
    ds = datasets.raw(name, source, root)
    if isinstance(ds, datasets.TensorData):
        raise BenchError(f"{name} is an in-memory data set: nothing to decode")
    files = _source_files(ds)
    key = _key(name, source, files)
    path = root / CACHE_DIR / f"{name}-{source}-{key}.pt"
    if hit != (path, key) and path.exists() and (cached := _read_cache(path, key)) is not None:
        return cached
    x, y = _decode(ds)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, {"format": CACHE_FORMAT, "key": key, "x": x, "y": y})
        atomic_write_bytes(_index(root, name, source), json.dumps(
            {"format": CACHE_FORMAT, "key": key, "stamp": _stamp(name, source, files),
             "files": [str(f.resolve()) for f in files]}).encode())
    except OSError as exc:
        datasets.warn(f"cannot write the decoded data cache {path} ({exc.strerror}); not cached")
    return x, y


def tensors(name: str, split: datasets.Split, root: Path | None = None,
            holdout: bool = False) -> tuple[Tensor, Tensor]:
    """Split `split` of `name` as (pixels, labels): uint8 for image sets, the embedded set's
    own floats for in-memory sets; "val" and `holdout` as `datasets.load` makes them."""
    if datasets.spec(name).embedded:
        ds = datasets.load(name, split, root=root, holdout=holdout)
        return ds.x, ds.y
    x, y = decoded(name, "test" if split == "test" else "train", root)
    if split == "val" or (split == "train" and holdout):
        val = datasets.val_mask(len(y), datasets.spec(name).val_size)
        keep = val if split == "val" else ~val
        x, y = x[keep], y[keep]
    return x, y


def to_float(x: Tensor) -> Tensor:
    """Pixels in [0, 1] as float32: uint8 / 255, exactly what ToTensor computes."""
    return x.float().div(255) if x.dtype == torch.uint8 else x


# --- whole-batch augmentation on the device -------------------------------------------------

@dataclass(frozen=True)
class Draws:
    """Per-image crop offsets (top, left in [0, 2 pad]) and flips for one pass over the data."""

    top: Tensor
    left: Tensor
    flip: Tensor

    @staticmethod
    def sample(n: int, aug: Augment, generator: torch.Generator | None) -> Draws:
        top = torch.randint(0, 2 * aug.pad + 1, (n,), generator=generator)
        left = torch.randint(0, 2 * aug.pad + 1, (n,), generator=generator)
        flip = (torch.rand(n, generator=generator) < 0.5) if aug.flip else \
            torch.zeros(n, dtype=torch.bool)
        return Draws(top, left, flip)

    def to(self, device: torch.device) -> Draws:
        return Draws(self.top.to(device), self.left.to(device), self.flip.to(device))

    def __getitem__(self, s: slice) -> Draws:
        return Draws(self.top[s], self.left[s], self.flip[s])


def crop_flip(x: Tensor, d: Draws, pad: int) -> Tensor:
    """Random-crop (zero padding `pad`) and flip a whole batch in one gather, on its device."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = d.top[:, None] + ar_h  # (B, H)
    cols = d.left[:, None] + torch.where(d.flip[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    out = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None],
                 cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


class DeviceData:
    """A training split held on the device, batched by slicing and augmented there."""

    def __init__(self, x: Tensor, y: Tensor, device: str | torch.device,
                 augment: Augment | None) -> None:
        self.x, self.y = x.to(device), y.to(device)
        self.device, self.augment = torch.device(device), augment

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, *, shuffle: bool,
                generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Float batches in [0, 1]; the order, then the augmentation draws, come from
        `generator` (the same permutation `datasets.batches` draws for an in-memory set)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        draws = (Draws.sample(n, self.augment, generator).to(self.device)
                 if self.augment is not None else None)
        order = order.to(self.device)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            xb = self.x[idx]
            if draws is not None:
                xb = crop_flip(xb, draws[i:i + batch_size], self.augment.pad)
            yield to_float(xb), self.y[idx]


def load(name: str, split: datasets.Split, root: Path | None, device: str | torch.device, *,
         augment: bool = False, holdout: bool = False) -> DeviceData:
    """Split `split` of `name` on `device`, augmented (in `batches`) when `augment`."""
    x, y = tensors(name, split, root, holdout)
    return DeviceData(x, y, device, augmentation(name) if augment else None)

