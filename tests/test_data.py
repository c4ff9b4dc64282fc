"""bench.data offline: digits, and each on-disk format from small fake files written here."""

from __future__ import annotations

import os
import pickle
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets.cifar as tv_cifar
import torchvision.datasets.svhn as tv_svhn
from PIL import Image
from torch.utils.data import Subset
from torchvision import transforms as T

from bench import BenchError
from bench.data import devicedata
from bench.data.datasets import TensorData, batches, dataset_names, load, spec

rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every test runs as if offline, fast and deterministic even where the internet is up.

    torchvision reaches the network only through urllib.request.urlopen, so the real download
    code still runs (and is seen to be attempted) up to the socket.
    """
    urls: list[str] = []

    def urlopen(req, *a, **kw):
        urls.append(getattr(req, "full_url", req))
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return urls


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake files cannot match the real md5 sums torchvision checks, so only for tests that use
    fake files, integrity means "the file exists"; the layout and parsing stay torchvision's."""
    for mod in (tv_cifar, tv_svhn):
        monkeypatch.setattr(mod, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def _dump(path: Path, obj: dict) -> None:
    # str keys: the real files are Python 2 pickles whose byte-string keys torchvision reads
    # as str (encoding="latin1"); Python 3 bytes keys would load as bytes and not be found.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _images(n: int, classes: int) -> tuple[np.ndarray, list[int]]:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, classes, n).tolist()


def _as_x(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(data).reshape(-1, 3, 32, 32).float() / 255


def _stack(ds) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return torch.stack(xs), torch.tensor(ys)


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """1200 train images (so "val" = 1000 leaves 200), 50 test images."""
    root = tmp_path_factory.mktemp("cifar10")
    base, parts = root / "cifar-10-batches-py", {}
    for name, n in [*((f"data_batch_{i}", 240) for i in range(1, 6)), ("test_batch", 50)]:
        parts[name] = _images(n, 10)
        _dump(base / name, {"data": parts[name][0], "labels": parts[name][1]})
    _dump(base / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    train = [parts[f"data_batch_{i}"] for i in range(1, 6)]
    return root, {"train": (np.vstack([d for d, _ in train]), sum((y for _, y in train), [])),
                  "test": parts["test_batch"]}


# --- registry and digits ------------------------------------------------------------------

def test_registry() -> None:
    assert {"digits", "cifar10", "cifar100", "svhn", "tinyimagenet"} <= set(dataset_names())
    assert [(spec(n).num_classes, spec(n).channels, spec(n).image_size, spec(n).default_arch)
            for n in ("cifar100", "svhn", "tinyimagenet")] == \
        [(100, 3, 32, "resnet18"), (10, 3, 32, "resnet18"), (200, 3, 64, "resnet18")]
    with pytest.raises(BenchError, match="split"):
        load("digits", "valid")  # type: ignore[arg-type]


def test_digits_splits() -> None:
    train, test, val = (load("digits", s) for s in ("train", "test", "val"))
    held = load("digits", "train", holdout=True)
    for d in (train, test, val, held):
        assert isinstance(d, TensorData) and d.x.shape[1:] == (1, 8, 8) and d.y.dtype == torch.int64
        assert d.x.min() >= 0 and d.x.max() <= 1
    assert len(train) + len(test) == 1797 and len(val) == len(train) // 10
    assert set(torch.unique(train.y).tolist()) == set(range(10))
    assert torch.equal(load("digits", "train").x, train.x)  # fixed split
    rows = lambda d: {tuple(r) for r in d.x.flatten(1).tolist()}  # noqa: E731
    assert not rows(train) & rows(test)  # the 1797 digits images are all distinct
    assert len(held) + len(val) == len(train)
    assert rows(val) <= rows(train) and rows(held) | rows(val) == rows(train)
    assert torch.equal(torch.cat([held.y, val.y]).sort().values, train.y.sort().values)


# --- torchvision sets from fake files -------------------------------------------------------

def test_cifar10_pixels_labels_val(cifar10, no_md5) -> None:
    root, want = cifar10
    for split in ("train", "test"):
        x, y = _stack(load("cifar10", split, root=root))
        assert torch.equal(x, _as_x(want[split][0])) and y.tolist() == want[split][1]
    val, held = load("cifar10", "val", root=root), load("cifar10", "train", root=root,
                                                       augment=True, holdout=True)
    assert isinstance(val, Subset) and len(val) == 1000 and len(held) == 200
    assert sorted(val.indices + held.indices) == list(range(1200))
    assert val.indices == load("cifar10", "val", root=root).indices  # fixed
    assert [type(t) for t in val.dataset.transform.transforms] == [T.ToTensor]
    assert [type(t) for t in held.dataset.transform.transforms] == \
        [T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor]


def test_cifar100_fine_labels(tmp_path: Path, no_md5) -> None:
    base, want = tmp_path / "cifar-100-python", {}
    for split in ("train", "test"):
        want[split] = _images(20, 100)
        _dump(base / split, {"data": want[split][0], "fine_labels": want[split][1],
                             "coarse_labels": [0] * 20})
    _dump(base / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    for split in ("train", "test"):
        x, y = _stack(load("cifar100", split, root=tmp_path))
        assert torch.equal(x, _as_x(want[split][0])) and y.tolist() == want[split][1]


def test_svhn_mat_layout(tmp_path: Path, no_md5) -> None:
    for split in ("train", "test"):
        X = rng.integers(0, 256, (32, 32, 3, 12), dtype=np.uint8)
        y = np.arange(1, 13, dtype=np.uint8).clip(max=10).reshape(-1, 1)  # SVHN: 10 is digit 0
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": X, "y": y})
        xs, ys = _stack(load("svhn", split, root=tmp_path))
        assert torch.equal(xs, torch.from_numpy(X.transpose(3, 2, 0, 1)).float() / 255)
        assert ys.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0]
    aug = load("svhn", "train", root=tmp_path, augment=True).transform.transforms
    assert [type(t) for t in aug] == [T.RandomCrop, T.ToTensor]  # no flip for digits


# --- TinyImageNet from a fake folder --------------------------------------------------------

def _jpeg(path: Path, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).convert(mode).save(path)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    base = tmp_path / "tiny-imagenet-200"
    base.mkdir()
    (base / "wnids.txt").write_text("n03\nn01\nn02\n")  # classes are sorted: n01=0, n02=1, n03=2
    for w in ("n01", "n02", "n03"):
        for i in range(2):
            _jpeg(base / "train" / w / "images" / f"{w}_{i}.JPEG", "L" if w == "n02" else "RGB")
    val = [("val_0.JPEG", "n03"), ("val_1.JPEG", "n01"), ("val_2.JPEG", "n02")]
    for f, _ in val:
        _jpeg(base / "val" / "images" / f)
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in val))
    return tmp_path


def test_tinyimagenet(tiny: Path) -> None:
    for split, labels in [("train", [0, 0, 1, 1, 2, 2]), ("test", [2, 0, 1])]:
        x, y = _stack(load("tinyimagenet", split, root=tiny, augment=split == "train"))
        assert x.shape[1:] == (3, 64, 64) and x.min() >= 0 and x.max() <= 1  # gray -> RGB too
        assert y.tolist() == labels
    aug = load("tinyimagenet", "train", root=tiny, augment=True).transform.transforms
    assert [type(t) for t in aug] == [T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor]
    assert aug[0].size == (64, 64)


# --- missing, partial and corrupt data: one BenchError line ---------------------------------

def _one_line(exc: pytest.ExceptionInfo[BenchError], *parts: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg and "--data-root" in msg
    assert all(p in msg for p in parts), msg


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "tinyimagenet"])
def test_missing(name: str, tmp_path: Path, offline: list[str]) -> None:
    root = tmp_path / "nothing"
    with pytest.raises(BenchError) as exc:
        load(name, "train", root=root)
    _one_line(exc, name, str(root))
    if name == "tinyimagenet":
        _one_line(exc, "http://cs231n.stanford.edu/tiny-imagenet-200.zip")
    else:
        assert offline  # the download was attempted (and refused by the fake urlopen)


def test_corrupt_cifar(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for f in ("data_batch_1", "test_batch", "batches.meta"):
        (base / f).write_bytes(b"truncated")
    with pytest.raises(BenchError) as exc:
        load("cifar10", "test", root=tmp_path)
    _one_line(exc, "cifar10", str(base))


def test_partial_and_corrupt_tinyimagenet(tiny: Path) -> None:
    base = tiny / "tiny-imagenet-200"
    (base / "val" / "images" / "val_2.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(BenchError, match="cannot read image") as exc:
        load("tinyimagenet", "test", root=tiny)[2]
    assert "\n" not in str(exc.value)
    (base / "val" / "images" / "val_2.JPEG").unlink()  # an interrupted unzip
    for f in (base / "train" / "n02" / "images").iterdir():
        f.unlink()
    for split in ("test", "train"):
        with pytest.raises(BenchError) as exc:
            load("tinyimagenet", split, root=tiny)
        _one_line(exc, "tinyimagenet", str(base))


CIFAR = {"cifar10": (tv_cifar.CIFAR10, "data_batch_3"), "cifar100": (tv_cifar.CIFAR100, "test")}


def _cifar_files(root: Path, name: str) -> tuple[Path, list[str]]:
    """Every file of `name`'s layout (random contents, no marker): its folder and file names."""
    cls = CIFAR[name][0]
    base = root / cls.base_folder
    files = [f for f, _ in [*cls.train_list, *cls.test_list]]
    for f in files:
        _dump(base / f, {"data": _images(4, 10)[0], "labels": [0] * 4})
    _dump(base / cls.meta["filename"], {cls.meta["key"]: [f"c{i}" for i in range(100)]})
    return base, [*files, cls.meta["filename"]]


def _as_official(monkeypatch: pytest.MonkeyPatch, name: str, base: Path) -> None:
    """The files now in `base` are, for torchvision's md5 check, the official ones."""
    import hashlib

    cls = CIFAR[name][0]
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in base.iterdir()}
    for attr in ("train_list", "test_list"):
        monkeypatch.setattr(cls, attr, [[f, md5[f]] for f, _ in getattr(cls, attr)])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5[cls.meta["filename"]]})


@pytest.mark.parametrize("name", sorted(CIFAR))
def test_cifar_errors_name_the_check_that_failed(name: str, tmp_path: Path, offline: list[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing folder, one missing file, every file present with the wrong md5 sum: each
    its own line naming the files (the last was "not found or incomplete ... put the files
    there", although every file was there)."""
    gone = tmp_path / "nothing"
    with pytest.raises(BenchError) as exc:
        load(name, "train", root=gone)
    base, files = _cifar_files(tmp_path, name)
    _one_line(exc, name, f"not found or incomplete in {gone / base.name}: no such folder",
              ", ".join(files))
    with pytest.raises(BenchError) as exc:  # the files bench.perf's fake_cifar wrote, say
        load(name, "test", root=tmp_path)
    _one_line(exc, f"{name}: files in {base}: {', '.join(files)} fail the md5 check (an "
              "incomplete download, or not the official files); could not download them (URL")
    assert "not found" not in str(exc.value) and "bench.data.fake" in str(exc.value)
    _as_official(monkeypatch, name, base)
    assert len(load(name, "test", root=tmp_path)) == 4  # the control: all there, all good
    missing = CIFAR[name][1]
    (base / missing).unlink()
    with pytest.raises(BenchError) as exc:
        load(name, "test", root=tmp_path)
    _one_line(exc, f"{name}: not found or incomplete in {base}: {missing} missing; could not")
    assert "md5" not in str(exc.value)
    assert offline  # every time, the download was tried (and refused offline)


# --- bench's synthetic files: accepted through their own manifest, and said to be synthetic ---

def _fake(root: Path, *args: str) -> Path:
    from bench.data import fake

    fake.main([str(root), *args])
    return root


@pytest.mark.parametrize(("name", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_synthetic_files_load_with_a_warning_on_every_load(
        name: str, classes: int, tmp_path: Path, offline: list[str], capsys) -> None:
    from bench.data.datasets import FAKE_MARKER, synthetic

    root = _fake(tmp_path, "--dataset", name, "--train", "7", "--test", "3")
    capsys.readouterr()
    base = root / CIFAR[name][0].base_folder
    assert synthetic(name, root) == base and synthetic(name, tmp_path / "x") is None
    for split, n in [("train", 7), ("test", 3), ("train", 7)]:
        x, y = _stack(load(name, split, root=root))
        assert x.shape == (n, 3, 32, 32) and y.min() >= 0 and y.max() < classes
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"warning: {name} in {base} is synthetic")
    x, _ = devicedata.tensors(name, "test", root)  # the device path decodes the same files
    assert len(x) == 3 and "synthetic" in capsys.readouterr().err
    assert offline == []  # never a download over them
    assert (base / FAKE_MARKER).is_file() and synthetic("svhn", root) is None


def test_changed_synthetic_files_are_named(tmp_path: Path, offline: list[str]) -> None:
    from bench.data.datasets import FAKE_MARKER

    root = _fake(tmp_path, "--train", "5", "--test", "2")
    base = root / "cifar-10-batches-py"
    with (base / "data_batch_2").open("ab") as f:
        f.write(b"\0")
    (base / "test_batch").unlink()
    with pytest.raises(BenchError) as exc:
        load("cifar10", "train", root=root)
    _one_line(exc, f"cifar10 (synthetic files, {FAKE_MARKER}): not found or incomplete in "
              f"{base}: test_batch missing; data_batch_2 fails the md5 check (changed since "
              "bench.data.fake wrote them)", "python -m bench.data.fake DIR")
    (base / FAKE_MARKER).write_text("{")
    with pytest.raises(BenchError) as exc:
        load("cifar10", "train", root=root)
    _one_line(exc, f"manifest {base / FAKE_MARKER} is unreadable")
    assert offline == []


def test_synthetic_files_never_overwrite_others(tmp_path: Path) -> None:
    base, _ = _cifar_files(tmp_path, "cifar10")
    before = (base / "data_batch_1").read_bytes()
    with pytest.raises(SystemExit, match="already holds data_batch_1, .*not overwriting"):
        _fake(tmp_path, "--train", "5", "--test", "2")
    assert (base / "data_batch_1").read_bytes() == before
    with pytest.raises(SystemExit):  # argparse: a count must be positive
        _fake(tmp_path / "new", "--train", "0")


@pytest.mark.slow
def test_offline_smoke_test_of_a_cifar_shaped_run(tmp_path: Path, offline: list[str],
                                                  capsys) -> None:
    """docs/offline.md's commands, with fewer images: synthetic files, then `bench run`."""
    import bench.cli
    from bench.core.store import Store
    from bench.data import fake
    from bench.perf.gpucheck import fake_cifar

    assert fake_cifar is fake.fake_cifar  # the GPU check writes the same files
    root = _fake(tmp_path / "cifar", "--train", "40", "--test", "20")
    assert "wrote 40 train and 20 test" in capsys.readouterr().out
    out = tmp_path / "smoke"
    bench.cli.main(["run", "--dataset", "cifar10", "--data-root", str(root), "--arch",
                    "small_cnn", "--methods", "pgdat", "--epochs", "1", "--attacks", "clean",
                    "--out", str(out)])
    rows, problems = Store(out).read()
    assert not problems and {(r["checkpoint"], r["n_clean"]) for r in rows} == {
        ("best", 20), ("last", 20)}
    assert all(r["synthetic_data"] for r in rows)  # the rows say what they measured
    assert "is synthetic" in capsys.readouterr().err and offline == []
    # another seed: the decoded cache serves the images, and the warning still comes; the
    # table marks the lines
    bench.cli.main(["run", "--dataset", "cifar10", "--data-root", str(root), "--arch",
                    "small_cnn", "--methods", "pgdat", "--epochs", "1", "--attacks", "clean",
                    "--seeds", "1", "--out", str(out)])
    out_text, err = capsys.readouterr()
    assert "is synthetic" in err and "PGD-AT (synthetic data)" in out_text


def test_rows_from_synthetic_files_never_stand_for_real_data() -> None:
    from bench.train import pipeline
    from bench.train.cells import Cell, resolve
    from bench.train.runner import RunOptions

    r, opts = resolve(Cell("pgdat")), RunOptions()
    assert pipeline._data_change(r, opts, {"synthetic_data": False}) is None
    assert pipeline._data_change(r, opts, {}) is None  # rows from before the field: real
    assert "synthetic files" in pipeline._data_change(r, opts, {"synthetic_data": True})


# --- batch order ---------------------------------------------------------------------------

def test_batches_seeded(cifar10, no_md5) -> None:
    for data in (load("digits", "test"), load("cifar10", "test", root=cifar10[0])):
        def order(seed: int, data=data) -> torch.Tensor:
            g = torch.Generator().manual_seed(seed)
            return torch.cat([x.flatten(1) for x, _ in batches(data, 16, shuffle=True,
                                                                 generator=g)])
        assert torch.equal(order(1), order(1)) and not torch.equal(order(1), order(2))
        assert order(1).shape[0] == len(data)


# --- the device-resident path: decoded once, cached, augmented in whole batches -------------

def _tv(name: str, split: str, root: Path, holdout: bool = False) -> torch.Tensor:
    """What the torchvision/PIL path (ToTensor, no augmentation) gives for the same files."""
    return _stack(load(name, split, root=root, holdout=holdout))


def test_device_path_pixels_are_totensors(cifar10, tiny: Path, tmp_path: Path, no_md5) -> None:
    root = cifar10[0]
    for split, holdout in [("train", False), ("test", False), ("val", False), ("train", True)]:
        x, y = devicedata.tensors("cifar10", split, root, holdout=holdout)
        want_x, want_y = _tv("cifar10", split, root, holdout)
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32)
        assert torch.equal(devicedata.to_float(x), want_x) and torch.equal(y, want_y)
    for split in ("train", "test"):  # TinyImageNet's JPEGs (one class grayscale) and SVHN
        x, y = devicedata.tensors("tinyimagenet", split, tiny)
        assert torch.equal(devicedata.to_float(x), _tv("tinyimagenet", split, tiny)[0])
        X = rng.integers(0, 256, (32, 32, 3, 7), dtype=np.uint8)
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": X, "y": np.full((7, 1), 10)})
        x, y = devicedata.tensors("svhn", split, tmp_path)
        assert torch.equal(devicedata.to_float(x), _tv("svhn", split, tmp_path)[0])
        assert y.tolist() == [0] * 7
    batch = next(devicedata.load("cifar10", "test", root, "cpu").batches(50, shuffle=False))
    assert torch.equal(batch[0], _tv("cifar10", "test", root)[0])  # augmentation off


def test_decoded_cache_is_used_invalidated_and_rebuilt(tmp_path: Path, no_md5, monkeypatch,
                                                       capsys) -> None:
    base = tmp_path / "cifar-100-python"
    for split in ("train", "test"):
        _dump(base / split, {"data": _images(6, 100)[0], "fine_labels": [1] * 6})
    _dump(base / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    first = devicedata.decoded("cifar100", "test", tmp_path)
    (cache,) = (tmp_path / devicedata.CACHE_DIR).glob("*.pt")
    decode, raw = devicedata._decode, devicedata.datasets.raw
    monkeypatch.setattr(devicedata, "_decode", lambda ds: pytest.fail("decoded again"))
    # unchanged files: the cache is read without running the loader (md5 sums, unpickling)
    monkeypatch.setattr(devicedata.datasets, "raw", lambda *a: pytest.fail("the loader ran"))
    assert torch.equal(devicedata.decoded("cifar100", "test", tmp_path)[0], first[0])
    new = _images(6, 100)[0]
    _dump(base / "test", {"data": new, "fine_labels": [2] * 6})  # a changed file: a new key
    monkeypatch.setattr(devicedata, "_decode", decode)
    monkeypatch.setattr(devicedata.datasets, "raw", raw)
    x, y = devicedata.decoded("cifar100", "test", tmp_path)
    assert torch.equal(devicedata.to_float(x), _as_x(new)) and y.tolist() == [2] * 6
    (cache,) = set((tmp_path / devicedata.CACHE_DIR).glob("*.pt")) - {cache}
    blob = bytearray(cache.read_bytes())
    blob[len(blob) // 2] ^= 0x10  # a flipped bit: never used, rebuilt with one warning line
    cache.write_bytes(bytes(blob))
    capsys.readouterr()
    assert torch.equal(devicedata.decoded("cifar100", "test", tmp_path)[0], x)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: decoded data cache")
    assert "rebuilding" in err[0]
    assert torch.equal(devicedata.decoded("cifar100", "test", tmp_path)[0], x)
    assert capsys.readouterr().err == ""  # the rebuilt file is good


def test_an_added_image_or_a_changed_label_is_picked_up_despite_the_cache(tiny: Path) -> None:
    assert len(devicedata.decoded("tinyimagenet", "train", tiny)[1]) == 6
    _jpeg(tiny / "tiny-imagenet-200" / "train" / "n01" / "images" / "n01_9.JPEG")
    x, y = devicedata.decoded("tinyimagenet", "train", tiny)
    assert len(y) == 7 and y.tolist().count(0) == 3
    assert devicedata.decoded("tinyimagenet", "test", tiny)[1].tolist() == [2, 0, 1]
    notes = tiny / "tiny-imagenet-200" / "val" / "val_annotations.txt"  # relabelled images
    notes.write_text(notes.read_text().replace("n03", "n00").replace("n01", "n03")
                     .replace("n00", "n01"))
    assert devicedata.decoded("tinyimagenet", "test", tiny)[1].tolist() == [0, 2, 1]


def test_device_augmentation_draws_like_random_crop_and_flip() -> None:
    """Each image encodes its own coordinates (channel 0: row + 1, channel 1: col + 1,
    channel 2: 255), so each output tells its crop offset and flip; the output must equal
    torchvision's pad + crop + hflip with those parameters, and the parameters must be
    uniform on [-4, 4]^2 and flipped half the time (chi-square / binomial, fixed seed)."""
    import torchvision.transforms.functional as TF

    n, size = 9 * 9 * 200, 32
    grid = torch.arange(1, size + 1, dtype=torch.uint8)
    img = torch.stack([grid[:, None].expand(size, size), grid[None, :].expand(size, size),
                       torch.full((size, size), 255, dtype=torch.uint8)])
    dd = devicedata.DeviceData(img.expand(n, 3, size, size), torch.zeros(n, dtype=torch.int64),
                               "cpu", devicedata.Augment())
    g = torch.Generator().manual_seed(0)
    out = torch.cat([x for x, _ in dd.batches(1000, shuffle=True, generator=g)])
    pix = (out * 255).round().to(torch.uint8)
    c = size // 2
    dy = pix[:, 0, c, c].long() - 1 - c
    flip = pix[:, 1, c, c + 1] < pix[:, 1, c, c]
    col = pix[:, 1, c, c].long() - 1
    dx = torch.where(flip, col - (size - 1 - c), col - c)
    for k in range(0, n, 997):  # exactly torchvision's pad (zeros) + crop (+ hflip)
        want = TF.crop(TF.pad(img, [4]), int(dy[k]) + 4, int(dx[k]) + 4, size, size)
        assert torch.equal(pix[k], TF.hflip(want) if flip[k] else want), k
    assert set(dy.tolist()) == set(dx.tolist()) == set(range(-4, 5))
    counts = torch.bincount((dy + 4) * 9 + dx + 4, minlength=81).double()
    chi2 = ((counts - n / 81) ** 2 / (n / 81)).sum().item()
    assert counts.min() > 0 and chi2 < 124.8  # 80 degrees of freedom, p = 0.001
    assert abs(flip.double().mean().item() - 0.5) < 4 * (0.25 / n) ** 0.5
    assert (pix[:, 2] == 0).any(1).any(1).float().mean() > 0.8  # padding present, and zero:
    assert torch.equal(pix[:, 2] == 255, pix[:, 0] > 0)  # exactly where no image row is
    # a pure function of the generator's seed; SVHN (digits) never flips
    again = torch.cat([x for x, _ in dd.batches(1000, shuffle=True,
                                                 generator=torch.Generator().manual_seed(0))])
    assert torch.equal(again, out)
    assert devicedata.augmentation("svhn") == devicedata.Augment(flip=False)
    assert devicedata.augmentation("cifar10").flip and devicedata.augmentation("digits") is None


def test_digits_are_cached_as_tensors_and_a_damaged_cache_is_rebuilt(
        tmp_path: Path, monkeypatch, capsys) -> None:
    from sklearn.datasets import load_digits

    from bench.data.datasets import _digits_arrays

    d = load_digits()
    x, y = _digits_arrays(tmp_path)
    assert torch.equal(x, torch.tensor(d.images, dtype=torch.float32)[:, None] / 16)
    assert y.tolist() == d.target.tolist()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # importing it now fails
    again = _digits_arrays(tmp_path)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    monkeypatch.undo()
    (cache,) = (tmp_path / "bench-decoded").glob("digits-*.pt")
    cache.write_bytes(cache.read_bytes()[:-40])
    capsys.readouterr()
    assert torch.equal(_digits_arrays(tmp_path)[0], x)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged" in err[0] and "rebuilding" in err[0]
    assert torch.equal(_digits_arrays(tmp_path)[0], x) and capsys.readouterr().err == ""
