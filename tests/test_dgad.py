"""DGAD against kunsaram01/DGAD's main.py (method "DGAD"), written out independently.

The reference replays the script's step line by line on tiny float64 BN and no-BN models: S(x)
then S(x') in train mode, T(x) and T(x') in eval mode without gradient, `Lambda` from the
teacher's clean mistakes and `num_lambda` from `.item()`, the in-place label swaps on the
teacher's logits, `nn.KLDivLoss(reduction='none')` rows, the weights over `args.bs` and
`nn.MSELoss()` on the two softmaxes. It never calls the method file's helpers or
`bench.eval.attacks`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bench.methods import dgad
from resumable import killed_and_resumed, short_trainer
from test_methods import (
    DATASETS,
    EPS,
    KL,
    STEP,
    _assert_same_buffers,
    _batch,
    _make,
    _nets,
    assert_same_loss_and_grads,
    ref_pgd,
)
from torch import nn

from bench.core import registry
from bench.train.cells import Cell, resolve


def _mixed_batch(nets: dict, classes: int, n: int = 8):
    """`_batch` with the labels of half the images set to the teacher's clean prediction, so
    both MAP groups are populated (random labels leave T right on almost none), and two of
    those x' replaced by other images, where T is then wrong: the x' swap outside MAP's group."""
    x, xa, y = _batch(classes, n)
    with torch.no_grad():
        y[: n // 2] = nets["t"].eval()(x[: n // 2]).argmax(1)
    xa[n // 2 - 2: n // 2] = x[n - 2:]
    return x, xa, y


def ref_loss(n: dict, x, xa, y, bs: int, model: str = "resnet18", alp: str = "on",
             beta: float = 1.0, wrong: str | None = None):
    """main.py's DGAD branch after `adaad_inner_loss` (`wrong`: a negative control)."""
    net, teacher_net = n["s"], n["t"]
    teacher_net.eval().requires_grad_(False)
    net.train()
    ori_outputs = net(x)
    adv_outputs = net(xa)
    KL_loss = nn.KLDivLoss(reduction="none")
    with torch.no_grad():
        t_ori_outputs = teacher_net(x)
        t_adv_outputs = teacher_net(xa)
    Lambda = torch.zeros(x.size(0), dtype=x.dtype)
    t_misclassified_group = torch.argmax(t_ori_outputs, dim=1) != y
    Lambda[t_misclassified_group] = 1.0
    num_lambda = Lambda.sum().item()
    g = t_misclassified_group
    ori_true_probs = torch.gather(t_ori_outputs, 1, y.unsqueeze(1)).squeeze()
    ori_max_probs, ori_max_indices = torch.max(t_ori_outputs, dim=1)
    t_ori_outputs[g, y[g]] = ori_max_probs[g]
    t_ori_outputs[g, ori_max_indices[g]] = ori_true_probs[g]
    correct_probs = torch.gather(t_adv_outputs, 1, y.unsqueeze(1)).squeeze()
    max_probs, max_indices = torch.max(t_adv_outputs.scatter(1, y.unsqueeze(1), -float("inf")),
                                       dim=1)
    mask = correct_probs - max_probs < 0
    if wrong != "no-adv-swap":
        t_adv_outputs[mask, y[mask]] = max_probs[mask]
        t_adv_outputs[mask, max_indices[mask]] = correct_probs[mask]
    loss_clean = (1 / (num_lambda + 1e-10)) * torch.sum(
        Lambda * KL_loss(F.log_softmax(ori_outputs, dim=1), F.softmax(t_ori_outputs, dim=1)).sum(
            dim=1))
    loss_adv = (1 / (len(xa) - num_lambda)) * torch.sum(
        (1 - Lambda) * KL_loss(F.log_softmax(adv_outputs, dim=1),
                               F.softmax(t_adv_outputs, dim=1)).sum(dim=1))
    if alp != "on":
        return (num_lambda / bs) * loss_clean + ((bs - num_lambda) / bs) * loss_adv
    s_nat = ori_outputs.detach() if wrong == "pcr-detached" else ori_outputs
    loss_alp = nn.MSELoss()(F.softmax(adv_outputs, dim=1), F.softmax(s_nat, dim=1))
    if model == "mobilenetV2":
        return 0.5 * ((num_lambda / bs) * loss_clean + (
            (bs - num_lambda) / bs)) * loss_adv + beta * loss_alp
    if model == "mobilenetV2-repaired":  # `fixed`: the parenthesis closed after loss_adv
        return 0.5 * ((num_lambda / bs) * loss_clean + (
            (bs - num_lambda) / bs) * loss_adv) + beta * loss_alp
    return (num_lambda / bs) * loss_clean + ((bs - num_lambda) / bs) * loss_adv + beta * loss_alp


# (preset, arch, overrides, the script's bs, its --model, --alp, --ALP_beta); bs None: B = 8
CASES = [("faithful", None, {}, 128, "resnet18", "on", 1.0),
         ("faithful", None, dict(batch_size=8), 8, "resnet18", "on", 1.0),
         ("faithful", None, dict(alp_beta=3.0), 128, "resnet18", "on", 3.0),
         ("faithful", None, dict(alp_beta=0.0), 128, "resnet18", "off", 0.0),
         ("faithful", "mobilenetv2", {}, 128, "mobilenetV2", "on", 1.0),
         ("fixed", None, {}, None, "resnet18", "on", 1.0),
         ("fixed", "mobilenetv2", {}, None, "mobilenetV2-repaired", "on", 1.0),
         ("fixed", "mobilenetv2", dict(alp_beta=2.0), None, "mobilenetV2-repaired", "on", 2.0)]


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("preset,arch,over,bs,model,alp,beta", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[4]}-bs{c[3]}-b{c[6]}" for c in CASES])
def test_loss_grads_and_bn_updates(preset, arch, over, bs, model, alp, beta, dataset, bn):
    classes = DATASETS[dataset]
    nets = _nets(classes, bn)
    ref = copy.deepcopy(nets)
    x, xa, y = _mixed_batch(nets, classes)
    m = registry.create("dgad", student=nets["s"], teacher=nets["t"], dataset=dataset,
                        preset=preset, arch=arch, **over)
    nets["s"].eval()  # the loss must put S in train mode itself, and keep T in eval mode
    ref["s"].eval()
    nets["t"].train()
    loss = m.loss(x, xa, y)
    expected = ref_loss(ref, x, xa, y, bs or len(y), model, alp, beta)
    assert_same_loss_and_grads(loss, expected, list(nets["s"].parameters()),
                               list(ref["s"].parameters()))
    _assert_same_buffers(nets, ref)  # S(x) then S(x'): two BN updates; T none
    assert not any(q.requires_grad for q in nets["t"].parameters())


def test_the_batch_has_both_groups_and_both_kinds_of_adversarial_rows():
    """The comparison above is not vacuous: T is right on some clean images and wrong on
    others, and on x' its true logit is below the best other one on some rows only."""
    for classes in (10, 100):
        nets = _nets(classes, True)
        x, xa, y = _mixed_batch(nets, classes)
        with torch.no_grad():
            t, ta = nets["t"].eval()(x), nets["t"](xa)
        wrong = t.argmax(1) != y
        below = ta.gather(1, y[:, None]).squeeze(1) < ta.scatter(1, y[:, None], -1e9).amax(1)
        assert 0 < wrong.sum() < len(y) and 0 < below.sum() < len(y)
        assert (below & ~wrong).any()  # the x' swap where MAP keeps the adversarial term


@pytest.mark.parametrize("wrong", ["no-adv-swap", "pcr-detached"])
def test_negative_controls(wrong):
    """Without the swap on T(x'), or with S(x) detached in PCR, another student gradient."""
    nets = _nets(10, True)
    ref = copy.deepcopy(nets)
    x, xa, y = _mixed_batch(nets, 10)
    m = _make("dgad", nets, "cifar10")
    got = torch.autograd.grad(m.loss(x, xa, y), list(nets["s"].parameters()))
    bad = ref_loss(ref, x, xa, y, 128, wrong=wrong)
    want = torch.autograd.grad(bad, list(ref["s"].parameters()))
    assert max((g - w).abs().max().item() for g, w in zip(got, want, strict=True)) > 1e-6


def test_nominal_batch_size_matters():
    """A batch smaller than batch_size: faithful (args.bs) and fixed (B) differ, and fixed is
    faithful run with batch_size = B."""
    x, xa, y = _mixed_batch(_nets(10, True), 10)
    losses = {}
    for key, preset, over in [("faithful", "faithful", {}), ("fixed", "fixed", {}),
                              ("full", "faithful", dict(batch_size=8))]:
        losses[key] = _make("dgad", _nets(10, True), "cifar10", preset=preset, **over).loss(
            x, xa, y)
    assert abs(losses["faithful"].item() - losses["fixed"].item()) > 1e-6
    torch.testing.assert_close(losses["fixed"], losses["full"], rtol=1e-12, atol=0)


def test_label_swap_by_hand():
    """ELS on explicit logits: the true logit and the best other one trade places, in the
    given rows, or (None) where the true logit is below the best other."""
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [5.0, 0.0, 5.0]])
    y = torch.tensor([0, 2, 1, 0])
    want_auto = torch.tensor([[3.0, 1.0, 2.0], [1.0, 2.0, 3.0], [1.0, 3.0, 2.0],
                              [5.0, 0.0, 5.0]])  # a tie is not `margin < 0`: kept
    assert torch.equal(dgad.swap_true_and_top(logits, y), want_auto)
    rows = torch.tensor([False, True, False, False])
    want_rows = logits.clone()
    want_rows[1] = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(dgad.swap_true_and_top(logits, y, rows), want_rows)


def test_a_batch_the_teacher_gets_all_wrong_or_all_right():
    """All wrong: the script divides by B - n = 0 and stops (ZeroDivisionError); bench's adv
    term is 0, leaving the clean term and PCR. All right: the clean term is 0 (its 1e-10)."""
    nets = _nets(10, True)
    x, xa, _ = _batch(10)
    with torch.no_grad():
        pred = nets["t"].eval()(x).argmax(1)
    for y, n in [((pred + 1) % 10, 8), (pred, 0)]:
        ref = copy.deepcopy(nets)
        m = _make("dgad", copy.deepcopy(nets), "cifar10", batch_size=8)
        loss = m.loss(x, xa, y)
        if n == 8:
            with pytest.raises(ZeroDivisionError):
                ref_loss(copy.deepcopy(nets), x, xa, y, 8)
            S = ref["s"].train()
            s_nat, s_adv = S(x), S(xa)
            with torch.no_grad():
                t = ref["t"](x)
            t_swapped = t.clone()
            top = t.argmax(1)
            ar = torch.arange(8)
            t_swapped[ar, y], t_swapped[ar, top] = t[ar, top], t[ar, y]
            want = KL(t_swapped, s_nat, "batchmean") + F.mse_loss(
                F.softmax(s_adv, 1), F.softmax(s_nat, 1))
        else:
            want = ref_loss(ref, x, xa, y, 8)
        torch.testing.assert_close(loss, want, rtol=1e-7, atol=1e-9)


def test_shards_under_torchrun_add_up_to_the_global_batch(monkeypatch):
    """Two simulated ranks (no BN: per-rank statistics are DDP's intended difference): each
    rank's loss times its weight, averaged as DDP does, is the whole batch's, value and
    gradient, with the global n and B (here the default nominal bs, the linear form)."""
    nets = _nets(10, False)
    x, xa, y = _mixed_batch(nets, 10, n=7)  # uneven shards: 4 and 3
    whole = _make("dgad", copy.deepcopy(nets), "cifar10")
    want = whole.loss(x, xa, y)
    want_g = torch.autograd.grad(want, list(whole.student.parameters()))
    with torch.no_grad():
        share = (nets["t"].eval()(x).argmax(1) != y).double().mean()
    monkeypatch.setattr(dgad, "world_size", lambda: 2)
    monkeypatch.setattr(dgad, "global_means", lambda values, weight: [share])
    m = _make("dgad", copy.deepcopy(nets), "cifar10")
    total = 0
    for r in (0, 1):
        m.shard_weight = len(y[r::2]) * 2 / len(y)
        total = total + m.loss(x[r::2], xa[r::2], y[r::2]) * m.shard_weight / 2
    torch.testing.assert_close(total, want, rtol=1e-7, atol=1e-9)
    got_g = torch.autograd.grad(total, list(m.student.parameters()))
    for g, w in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("steps", [10, 1])
def test_attack_is_adaads(steps):
    """adaad_inner_loss: S and T in eval mode, x + 0.001 N(0, I) not clamped, KL summed with T
    re-run at every x~, projected and clipped; wrong mode, start or a fixed T(x) differ."""
    nets = _nets(10, True)
    ref = copy.deepcopy(nets)
    x, _, y = _batch(10)
    m = _make("dgad", nets, "cifar10", steps=steps)
    torch.manual_seed(5)
    got = m.attack(x, y)

    def reference(n, start="normal", train=False, fixed=False, clamp=False):
        S, T = n["s"].train(train), n["t"].eval()
        with torch.no_grad():
            t = T(x)

        def obj(z):
            return KL(t if fixed else T(z), S(z), "sum")

        torch.manual_seed(5)
        return ref_pgd(obj, x, EPS, STEP, steps, start, clamp)

    torch.testing.assert_close(got, reference(ref), rtol=0, atol=1e-12)
    _assert_same_buffers(nets, ref)  # eval mode: no BN update
    assert (got - x).abs().max() <= EPS + 1e-12 and got.min() >= 0 and got.max() <= 1
    variants = [dict(start="uniform"), dict(train=True), dict(fixed=True)]
    if steps == 1:
        variants.append(dict(clamp=True))
    for v in variants:
        assert (reference(_nets(10, True), **v) - got).abs().max() > 1e-6, v


def test_presets():
    """main.py's argparse and lr_decay: 200 epochs, 0.1 to epoch 99, 0.01 to 149, then 0.001;
    SGD 0.9 / 5e-4, batch 128, seed 42, ALP_beta 1; the MobileNetV2 branch on CIFAR only."""
    for dataset in ("cifar10", "cifar100", "tinyimagenet"):
        p = registry.get("dgad").resolve("faithful", dataset)
        assert (p.epochs, p.batch_size, p.seed, p.momentum, p.weight_decay) == (
            200, 128, 42, 0.9, 5e-4)
        assert (p.eps, p.step, p.steps, p.alp_beta, p.nominal_batch) == (EPS, STEP, 10, 1.0, True)
        assert [p.lr_at(e) for e in (0, 99, 100, 149, 150, 199)] == pytest.approx(
            [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
        mobile = registry.get("dgad").resolve("faithful", dataset, arch="mobilenetv2")
        assert mobile.product_form == mobile.half == (dataset != "tinyimagenet")
        fixed = registry.get("dgad").resolve("fixed", dataset, arch="mobilenetv2")
        assert not fixed.product_form and not fixed.nominal_batch
        assert fixed.half == (dataset != "tinyimagenet")
    r = resolve(Cell("dgad", "cifar10", preset="paper"))
    assert r.params.selection == "adaad" and r.params.epochs == 200
    cls = registry.get("dgad")
    assert cls.preset_teacher("paper", "cifar10") == "robustbench:Chen2021LTD_WRN34_20"
    assert cls.preset_teacher("paper", "cifar100") == "robustbench:Chen2021LTD_WRN34_10"


def test_no_method_state():
    """The script keeps nothing between steps: nothing to checkpoint beyond the networks."""
    m = _make("dgad", _nets(10, True), "cifar10")
    x, xa, y = _batch(10)
    m.loss(x, xa, y)
    assert m.state_dict() == {}


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path, monkeypatch) -> None:
    """Killed at batch 6 of the second epoch, resumed from the first epoch's checkpoint."""
    got, want = killed_and_resumed(
        lambda out: short_trainer("dgad", out, teacher=True), tmp_path, monkeypatch)
    assert got["epoch"] == want["epoch"] == 2
    assert set(want["models"]) == {"student"}
