"""Model zoo: each CIFAR-variant architecture builds by name, trains, has its published size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench import BenchError
from bench.models import create_model, model_names

ARCHS = [n for n in model_names() if not n.startswith("small_cnn")]

# Parameter counts with 10 classes, as published for the reference code bases.
PARAMS = {
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    # Rice et al. keep a final BN(512) that kuangliu's PreActResNet18 (11,171,146) lacks.
    "preact_resnet18": 11_172_170,
    "wrn34_10": 46_160_474,  # TRADES code without its unused `sub_block1`
    "wrn28_10": 36_479_194,
    "mobilenetv2": 2_296_922,
    "resnet56": 855_770,  # option-B projections (the authors' clean teachers): see below
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ARCHS)
def test_cifar_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    logits = model(x)
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ARCHS)
def test_tinyimagenet_shape(name: str) -> None:
    model = create_model(name, num_classes=200, image_size=64)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 200)


@pytest.mark.parametrize("name", ARCHS)
def test_small_grayscale_input(name: str) -> None:
    model = create_model(name, num_classes=10, in_channels=1, image_size=8)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_every_arch_has_a_reference_count() -> None:
    assert sorted(PARAMS) == sorted(ARCHS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count(name: str) -> None:
    assert n_params(create_model(name, num_classes=10)) == pytest.approx(PARAMS[name], rel=0.01)


def test_resnet56_is_he_et_al_s_with_the_authors_shortcuts() -> None:
    """He et al.'s ResNet-56 has 853,018 parameters for 10 classes with parameter-free
    (option A) shortcuts; the authors' clean teacher (chenyaofo/pytorch-cifar-models, used by
    CIARD and B-MTARD) projects with 1x1 conv + BN at the two stage changes instead (2,752
    more), under module names its published checkpoints use."""
    model = create_model("resnet56", num_classes=10)
    projections = [m.downsample for m in model.modules() if getattr(m, "downsample", None)]
    assert len(projections) == 2
    assert n_params(model) - sum(n_params(p) for p in projections) == 853_018
    assert n_params(model) == 855_770
    blocks = [len(s) for s in (model.layer1, model.layer2, model.layer3)]
    assert blocks == [9, 9, 9] and model.fc.in_features == 64
    keys = model.state_dict().keys()
    for k in ("conv1.weight", "bn1.running_mean", "layer1.8.conv2.weight",
              "layer2.0.downsample.0.weight", "layer3.0.downsample.1.running_var", "fc.bias"):
        assert k in keys, k
    assert n_params(create_model("resnet56", num_classes=100)) == 855_770 + 65 * 90


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(BenchError, match="did you mean 'resnet18'"):
        create_model("resnet19", num_classes=10)


def test_global_avg_pool_is_adaptive_pooling_with_its_inputs_gradient_layout() -> None:
    import torch.nn.functional as F

    from bench.models.pool import global_avg_pool

    torch.manual_seed(0)
    base = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    for fmt in (torch.contiguous_format, torch.channels_last):
        ours, ref = (base.contiguous(memory_format=fmt).requires_grad_() for _ in range(2))
        g = torch.randn(4, 8, dtype=torch.float64)
        out = global_avg_pool(ours)
        assert torch.equal(out, F.adaptive_avg_pool2d(ref, 1).flatten(1))
        (got,), (want,) = torch.autograd.grad(out, ours, g), torch.autograd.grad(
            F.adaptive_avg_pool2d(ref, 1).flatten(1), ref, g)
        assert torch.equal(got, want) and got.is_contiguous(memory_format=fmt)
        assert torch.autograd.gradgradcheck(global_avg_pool, (ours,))
