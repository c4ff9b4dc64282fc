"""Teachers: checkpoint files in every common layout, RobustBench offline, self-normalising."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import BenchError
from bench.models import create_model
from bench.train.checkpoint import save_weights
from bench.train.teachers import NORMALIZATIONS, Normalized, load_weights, robustbench_model

ZOO_MODEL = "Sehwag2021Proxy_R18"  # a CIFAR ResNet-18 in RobustBench's Linf zoo


def _small(bn: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("small_cnn" if bn else "small_cnn_nobn", num_classes=10, in_channels=1)


@pytest.mark.parametrize("layout", ["bench", "plain", "wrapped", "ddp"])
def test_weight_file_layouts_load_exactly(tmp_path: Path, layout: str) -> None:
    src, path = _small(), tmp_path / "t.pt"
    state = src.state_dict()
    if layout == "bench":
        save_weights(path, src)
    else:
        obj = {"plain": state, "wrapped": {"state_dict": state, "epoch": 3},
               "ddp": {f"module.{k}": v for k, v in state.items()}}[layout]
        torch.save(obj, path)
    dst = load_weights(_small_other_init(), path, "teacher checkpoint")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def _small_other_init() -> torch.nn.Module:
    torch.manual_seed(1)
    return create_model("small_cnn", num_classes=10, in_channels=1)


def test_wrong_architecture_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save(_small(bn=False).state_dict(), path)
    with pytest.raises(BenchError) as err:
        load_weights(_small(), path, "teacher checkpoint")
    assert "does not fit the architecture" in str(err.value)
    assert "\n" not in str(err.value)


def test_normalized_teacher_normalises_inside() -> None:
    torch.manual_seed(0)
    inner = create_model("small_cnn_nobn", num_classes=10, in_channels=3)
    mean, std = NORMALIZATIONS["cifar10"]
    wrapped = Normalized(inner, mean, std)
    x = torch.rand(4, 3, 8, 8)
    expected = inner((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.allclose(wrapped(x), expected)
    # Gradients flow to the pixels: attacks on a normalising teacher still work in [0, 1].
    x.requires_grad_(True)
    wrapped(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def _zoo():
    import sys

    import pyautoattack

    sys.modules.setdefault("autoattack", pyautoattack)
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset("cifar10")][ThreatModel.Linf]


def test_robustbench_teacher_loads_offline_from_local_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = _zoo()[ZOO_MODEL]["model"]().eval()
    target = tmp_path / "cifar10" / "Linf" / f"{ZOO_MODEL}.pt"
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}},
               target)
    loaded = robustbench_model(ZOO_MODEL, "cifar10", tmp_path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    assert not loaded.training


def test_robustbench_unknown_name_and_missing_file(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(BenchError, match="did you mean 'Sehwag2021Proxy_R18'"):
        robustbench_model("Sehwag2021Proxy_R81", "cifar10", tmp_path)
    import robustbench.utils

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(robustbench.utils, "download_gdrive_new", offline)
    with pytest.raises(BenchError) as err:
        robustbench_model(ZOO_MODEL, "cifar10", tmp_path)
    assert str(tmp_path / "cifar10" / "Linf" / f"{ZOO_MODEL}.pt") in str(err.value)
