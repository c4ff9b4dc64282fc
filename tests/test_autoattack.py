"""bench's AutoAttack number is pyautoattack's own, and an interrupted evaluation resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pyautoattack import AutoAttack

from bench.core import registry
from bench.data import datasets as data
from bench.eval.evaluate import Threat, accuracy, autoattack, evaluate, subset
from bench.models import create_model

EPS = 0.1


@pytest.fixture(scope="module")
def robust_model() -> torch.nn.Module:
    """A small CNN adversarially trained for 4 epochs on digits (a couple of seconds)."""
    torch.manual_seed(0)
    train = data.load("digits", "train")
    model = create_model("small_cnn", num_classes=10, in_channels=1)
    method = registry.create("pgdat", student=model, dataset="digits",
                             budget=data.spec("digits").budget)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(4):
        for x, y in data.batches(train, 64, shuffle=True,
                                 generator=torch.Generator().manual_seed(epoch)):
            loss = method.loss(x, method.attack(x, y), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def test_batch() -> tuple[torch.Tensor, torch.Tensor]:
    test = data.load("digits", "test")
    idx = subset(len(test), 80)
    return test.x[idx], test.y[idx]


def test_bench_aa_equals_direct_pyautoattack(robust_model, test_batch) -> None:
    x, y = test_batch
    ours, flags = autoattack(robust_model, x, y, EPS, seed=0)
    direct = AutoAttack(robust_model, eps=EPS, norm="Linf", version="standard", seed=0)
    _, y_adv = direct.run_standard_evaluation(x, y, batch_size=500)
    assert ours == (y_adv == y).float().mean().item()
    assert isinstance(flags, list)
    clean = accuracy(robust_model, x, y, "clean", Threat(EPS))
    pgd20 = accuracy(robust_model, x, y, "pgd20", Threat(EPS))
    assert 0.3 < ours < clean  # a real attack on a model that is partly robust
    assert ours <= pgd20 + 1 / len(y)


def test_aa_resumes_from_state_file(robust_model, test_batch, tmp_path: Path) -> None:
    x, y = test_batch
    full, _ = autoattack(robust_model, x, y, EPS, seed=0)
    state = tmp_path / "aa_state.json"
    # An evaluation interrupted after its first attack: the state file records APGD-CE only.
    AutoAttack(robust_model, eps=EPS, norm="Linf", version="custom", attacks=["apgd-ce"],
               seed=0).run_standard_evaluation(x, y, batch_size=500, state_path=state)
    resumed, _ = autoattack(robust_model, x, y, EPS, seed=0, state_path=state)
    assert resumed == full


def test_suite_reports_image_counts(robust_model, test_batch) -> None:
    x, y = test_batch
    out = evaluate(robust_model, x, y, Threat(EPS), attacks=("clean", "fgsm", "aa"),
                   aa_samples=30)
    assert out["n_clean"] == out["n_fgsm"] == len(y) and out["n_aa"] == 30
    assert out["fgsm"] < out["clean"]
