"""Threat models beyond L-inf: PGD-L2 and AutoAttack-L2 at the data set's L2 radius, and the
common corruptions read from their published layouts (files the tests make), through the
rows, the tables and the paired statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bench import BenchError
from bench.data import datasets as data
from bench.data.corrupted import CORRUPTIONS, SEVERITIES, corrupted_sets
from bench.data.fake import fake_cifar, fake_cifar_c
from bench.eval.evaluate import (
    Threat,
    adversarial,
    corruption_outcomes,
    evaluate,
    subset,
    unpack,
)
from bench.options import GridOptions
from bench.report.aggregate import aggregate, paper_table
from bench.report.stats import line_test, per_image

EPS_L2 = data.spec("digits").eps_l2


@pytest.fixture(scope="module")
def digits_model() -> nn.Module:
    """A linear classifier of the digits, 300 full-batch steps (well under a second): right
    on most test images, not robust at the L2 radius."""
    torch.manual_seed(0)
    train = data.load("digits", "train")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        loss = F.cross_entropy(model(train.x), train.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    test = data.load("digits", "test")
    idx = subset(len(test), 40)
    return test.x[idx], test.y[idx]


def test_l2_radii_scale_from_cifar10s() -> None:
    assert data.spec("cifar10").eps_l2 == 0.5
    digits = data.spec("digits")
    assert pytest.approx(0.5 * (digits.eps / (8 / 255)) * (64 / 3072) ** 0.5) == EPS_L2
    assert data.spec("tinyimagenet").eps_l2 == pytest.approx(1.0)


def _pgd_l2_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                      alpha: float, steps: int) -> torch.Tensor:
    """torchattacks' PGDL2 written out (its loss summed, as the suite's)."""
    b = len(x)
    delta = torch.empty_like(x).normal_()
    n = delta.view(b, -1).norm(p=2, dim=1).view(b, 1, 1, 1)
    r = torch.zeros_like(n).uniform_(0, 1)
    adv = torch.clamp(x + delta * r / n * eps, 0, 1).detach()
    for _ in range(steps):
        adv.requires_grad = True
        loss = F.cross_entropy(model(adv), y, reduction="sum")
        grad = torch.autograd.grad(loss, adv)[0]
        grad = grad / (grad.view(b, -1).norm(p=2, dim=1) + 1e-10).view(b, 1, 1, 1)
        adv = adv.detach() + alpha * grad
        d = adv - x
        factor = torch.min(eps / d.view(b, -1).norm(p=2, dim=1), torch.ones(b))
        adv = torch.clamp(x + d * factor.view(-1, 1, 1, 1), 0, 1).detach()
    return adv


def test_pgd_l2_stays_in_the_ball_lowers_accuracy_and_matches_the_reference(
        digits_model, digits_test) -> None:
    x, y = digits_test
    threat = Threat(0.1, EPS_L2)
    torch.manual_seed(3)
    adv = adversarial(digits_model, x, y, "pgd20_l2", threat)
    torch.manual_seed(3)
    ref = _pgd_l2_reference(digits_model, x, y, EPS_L2, EPS_L2 / 4, 20)
    torch.testing.assert_close(adv, ref, rtol=0, atol=1e-6)
    assert (adv - x).flatten(1).norm(dim=1).max() <= EPS_L2 + 1e-5
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        clean = (digits_model(x).argmax(1) == y).float().mean()
        robust = (digits_model(adv).argmax(1) == y).float().mean()
        wide = adversarial(digits_model, x, y, "pgd20_l2", Threat(0.1, 4 * EPS_L2))
        wider = (digits_model(wide).argmax(1) == y).float().mean()
    assert clean > 0.8 and robust < clean and wider < robust - 0.2
    out = evaluate(digits_model, x, y, threat, attacks=("clean", "pgd20", "pgd20_l2"))
    assert out["n_pgd20_l2"] == len(y) and set(out["outcomes"]) >= {"pgd20_l2"}
    assert out["robust"] == min(out["clean"], out["pgd20"])  # L-inf only: one threat model


def test_aa_l2_equals_a_direct_pyautoattack_call(digits_model, digits_test) -> None:
    pyautoattack = pytest.importorskip("pyautoattack")
    x, y = digits_test
    out = evaluate(digits_model, x, y, Threat(0.1, EPS_L2), attacks=("clean", "aa_l2"),
                   aa_samples=16)
    idx = subset(len(y), 16)
    direct = pyautoattack.AutoAttack(digits_model, norm="L2", eps=EPS_L2, version="standard",
                                     seed=0)
    _, y_adv = direct.run_standard_evaluation(x[idx], y[idx], batch_size=500)
    ours = unpack(out["outcomes"]["aa_l2"], out["n_aa_l2"])
    assert torch.equal(ours, y_adv == y[idx])  # image for image
    assert out["n_aa_l2"] == 16 and out["aa_l2"] < out["clean_on_aa"]
    assert isinstance(out["aa_l2_flags"], list)


# --- corrupted files --------------------------------------------------------------------


def _cifar_c(root: Path, n: int, labels_per_severity: bool = True) -> Path:
    """CIFAR-10-C's layout with n images a severity: pixel value 10 x severity + the
    corruption's index, so a wrong slice shows; labels differ per severity block."""
    folder = root / "CIFAR-10-C"
    folder.mkdir(parents=True)
    for k, c in enumerate(CORRUPTIONS):
        a = np.concatenate([np.full((n, 32, 32, 3), 10 * s + k, np.uint8) for s in SEVERITIES])
        np.save(folder / f"{c}.npy", a)
    labels = np.concatenate([np.arange(n) % 10 + s for s in SEVERITIES]) % 10
    np.save(folder / "labels.npy", labels if labels_per_severity else labels[:n])
    return folder


def test_cifar_c_layout_is_sliced_by_severity(tmp_path: Path) -> None:
    _cifar_c(tmp_path, 4)
    sets = corrupted_sets("cifar10", tmp_path)
    got = {(c, s): (x, y) for c, s, x, y in sets}
    assert len(got) == len(CORRUPTIONS) * len(SEVERITIES)
    x, y = got[("fog", 3)]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert torch.all(x == (30 + CORRUPTIONS.index("fog")) / 255)
    assert y.tolist() == [(i + 3) % 10 for i in range(4)]


def test_cifar_c_labels_of_one_severity_serve_all(tmp_path: Path) -> None:
    _cifar_c(tmp_path, 4, labels_per_severity=False)
    _, y = corrupted_sets("cifar10", tmp_path).load("snow", 5)
    assert y.tolist() == [(i + 1) % 10 for i in range(4)]


@pytest.mark.parametrize("damage, said", [
    ("missing", "fog.npy"), ("short", "(19, 32, 32, 3)"), ("labels", "labels.npy holds"),
    ("nothing", "no such folder")])
def test_missing_or_damaged_cifar_c_is_one_line(tmp_path: Path, damage: str, said: str) -> None:
    folder = _cifar_c(tmp_path, 4)
    if damage == "missing":
        (folder / "fog.npy").unlink()
    elif damage == "short":
        np.save(folder / "fog.npy", np.zeros((19, 32, 32, 3), np.uint8))
    elif damage == "labels":
        np.save(folder / "labels.npy", np.zeros(7, np.int64))
    else:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    with pytest.raises(BenchError) as err:
        corrupted_sets("cifar10", tmp_path)
    text = str(err.value)
    assert "\n" not in text and said in text and str(folder) in text
    assert "put the published CIFAR-10-C there" in text


def _tiny_c(root: Path, wnids: list[str]) -> Path:
    """Tiny-ImageNet-C's folders, one 64x64 JPEG a class, gray level 40 x the class index."""
    (root / "tiny-imagenet-200").mkdir(parents=True)
    (root / "tiny-imagenet-200" / "wnids.txt").write_text("\n".join(wnids) + "\n")
    folder = root / "Tiny-ImageNet-C"
    for c in CORRUPTIONS:
        for s in SEVERITIES:
            for i, w in enumerate(sorted(wnids)):
                d = folder / c / str(s) / w
                d.mkdir(parents=True)
                Image.new("RGB", (64, 64), (40 * i,) * 3).save(d / f"{w}_0.JPEG")
    return folder


def test_tiny_imagenet_c_folders_in_the_loaders_class_order(tmp_path: Path) -> None:
    folder = _tiny_c(tmp_path, ["n02", "n01", "n03"])  # wnids.txt unsorted: sorted order
    x, y = corrupted_sets("tinyimagenet", tmp_path).load("contrast", 2)
    assert x.shape == (3, 3, 64, 64) and y.tolist() == [0, 1, 2]
    assert (x.mean((1, 2, 3)) * 255).round().tolist() == [0, 40, 80]
    (folder / "frost" / "4" / "n03" / "n03_0.JPEG").unlink()
    with pytest.raises(BenchError, match="different numbers of images"):
        corrupted_sets("tinyimagenet", tmp_path)


def test_corruptions_refused_before_training_where_no_files_exist() -> None:
    with pytest.raises(BenchError) as err:
        GridOptions(attacks="clean,corruptions", datasets="digits").check()
    assert "digits has no published corrupted files" in str(err.value)
    with pytest.raises(BenchError, match="did you mean 'pgd20_l2'"):
        GridOptions(attacks="clean,pgd20_l3").check()


# --- end to end: rows, tables, statistics -----------------------------------------------


def _cifar_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10)).eval()


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fake")
    fake_cifar(root, train=10, test=60)
    return fake_cifar_c(root)


def test_corruption_accuracies_and_their_mean_by_hand(fake_root: Path) -> None:
    x, y = data.as_tensors(data.load("cifar10", "test", root=fake_root))
    model = _cifar_model(0)
    out = evaluate(model, x, y, Threat(8 / 255), attacks=("clean", "corruptions"),
                   corrupted=corrupted_sets("cifar10", fake_root), batch_size=7)
    labels = np.load(fake_root / "CIFAR-10-C" / "labels.npy")
    by_hand, columns = {}, []
    for c in CORRUPTIONS:
        a = np.load(fake_root / "CIFAR-10-C" / f"{c}.npy")
        for s in SEVERITIES:
            block = slice((s - 1) * 60, s * 60)
            xc = torch.tensor(a[block].transpose(0, 3, 1, 2) / 255, dtype=torch.float32)
            with torch.no_grad():
                hits = model(xc).argmax(1).numpy() == labels[block]
            by_hand.setdefault(c, []).append(hits.mean())
            columns.append(hits)
    assert out["corruption_acc"].keys() == by_hand.keys()
    for c in CORRUPTIONS:
        assert out["corruption_acc"][c] == pytest.approx(by_hand[c], abs=1e-12)
    assert out["corruptions"] == pytest.approx(np.mean(list(by_hand.values())), abs=1e-12)
    assert out["n_corruptions"] == 60
    assert np.array_equal(corruption_outcomes(out).numpy(), np.stack(columns, 1))


def _row(method: str, metrics: dict, seed: int = 0) -> dict:
    return {"method": method, "preset": "faithful", "dataset": "cifar10", "arch": "tiny",
            "epochs": 1, "checkpoint": "best", "seed": seed, "cell_id": f"{method}-s{seed}",
            "eps": 8 / 255, "test_images": "t" * 16, **metrics}


def test_corruption_mean_in_tables_and_paired_only_on_the_same_images(
        fake_root: Path, tmp_path: Path) -> None:
    x, y = data.as_tensors(data.load("cifar10", "test", root=fake_root))
    sets = corrupted_sets("cifar10", fake_root)
    rows = [_row(m, evaluate(_cifar_model(k), x, y, Threat(8 / 255),
                             attacks=("clean", "corruptions"), corrupted=sets))
            for k, m in enumerate(("pgdat", "trades"))]
    agg = aggregate(pd.DataFrame(rows))
    table = paper_table(agg, metrics=["clean", "corruptions"])
    head = "Corruptions (mean) (n=60)"
    assert head in table.columns
    shown = dict(zip(table["method"], table[head], strict=True))
    assert shown["PGD-AT"].startswith(f"{100 * rows[0]['corruptions']:.2f}")
    a, b = per_image(rows[0])["corruptions"], per_image(rows[1])["corruptions"]
    assert a[1].shape == (60, len(CORRUPTIONS) * len(SEVERITIES)) and a[0] == b[0]
    assert line_test(rows[:1], rows[1:], "corruptions") is not None
    # the same model on other corrupted images: its row must not pair with the first
    root2 = tmp_path / "other"
    fake_cifar(root2, train=10, test=60)
    fake_cifar_c(root2, seed=1)
    moved = _row("trades", evaluate(_cifar_model(1), x, y, Threat(8 / 255),
                                    attacks=("clean", "corruptions"),
                                    corrupted=corrupted_sets("cifar10", root2)))
    assert moved["corruption_images"] != rows[0]["corruption_images"]
    assert line_test(rows[:1], [moved], "corruptions") is None
    assert line_test(rows[:1], [moved], "clean") is not None  # the clean images still pair
