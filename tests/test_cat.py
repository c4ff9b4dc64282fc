"""CAT against its authors' train_cat.py (github.com/liuxingbin/CAT), written out independently.

The reference step below replays the script's batch loop line by line (its two attacks and
their modes and starts, its order of train-mode forwards, its nn.KLDivLoss("batchmean"),
CE and MSE terms, its detach points and 1/20 - 19/20 weights, one backward, two SGD steps,
then the logging forward model1(X)) on tiny float64 BN and no-BN models; the method must give
the same loss, gradients of both networks, BatchNorm statistics and weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from resumable import killed_and_resumed, short_trainer
from test_methods import (
    EPS,
    STEP,
    TOL,
    Net,
    _assert_same_buffers,
    _batch,
    assert_same_loss_and_grads,
    ref_pgd,
)
from torch import nn

from bench.core import registry
from bench.train.cells import Cell, resolve

KLDIV = nn.KLDivLoss(reduction="batchmean")  # train_cat.py:223
CE = nn.CrossEntropyLoss()  # train_cat.py:195


def _nets(bn: bool, classes: int = 10) -> dict:
    return {"s": Net(classes, bn, 1), "p": Net(classes, bn, 3)}


def _make(nets: dict, preset: str = "faithful", **kw):
    return registry.create("cat", student=nets["s"], peer=nets["p"], dataset="cifar10",
                           preset=preset, **kw)


def _peer_batch(x):
    g = torch.Generator().manual_seed(5)
    return (x + (torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1) * EPS).clamp(0, 1)


def ref_loss(n: dict, X, x_adv1, x_adv2, y, wrong: str | None = None):
    """train_cat.py:261-281, model1 = S, model2 = P, both in train mode (the attacks' end)."""
    model1, model2 = n["s"].train(), n["p"].train()
    clean_logit1 = model1(X)
    adv_logit1 = model1(x_adv1)
    loss_natural = F.cross_entropy(clean_logit1, y)
    target = clean_logit1.detach() if wrong == "trades-target" else clean_logit1
    loss_robust = KLDIV(F.log_softmax(adv_logit1, dim=1), F.softmax(target, dim=1))
    loss1 = loss_natural + 6.0 * loss_robust
    adv_logit2 = model2(x_adv2)
    clean_logit2 = model2(X)
    loss2 = 0.5 * (CE(adv_logit2, y) + CE(clean_logit2, y)) + F.mse_loss(adv_logit2, clean_logit2)
    adv_logit12 = model1(x_adv2)
    adv_logit21 = model2(x_adv1)
    t21, t12 = F.softmax(adv_logit21, dim=1), F.softmax(adv_logit12, dim=1)
    if wrong != "mutual-attached":
        t21, t12 = t21.detach(), t12.detach()
    loss3 = (KLDIV(F.log_softmax(adv_logit1, dim=1), t21)
             + KLDIV(F.log_softmax(adv_logit2, dim=1), t12))
    return 1.0 / 20 * (loss1 + loss2) + 19.0 / 20 * loss3


def _params(nets: dict) -> list[torch.Tensor]:
    return list(nets["s"].parameters()) + list(nets["p"].parameters())


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("preset", ["faithful", "fixed", "paper"])
def test_loss_grads_and_bn_updates(preset, bn):
    nets = _nets(bn)
    ref = copy.deepcopy(nets)
    x, xa, y = _batch(10)
    xp = _peer_batch(x)
    m = _make(nets, preset)
    for k in nets:  # the loss must put both networks in train mode itself
        nets[k].eval()
        ref[k].eval()
    m.peer_adv = (x, xp)
    loss = m.loss(x, xa, y)
    expected = ref_loss(ref, x, xa, xp, y)
    assert_same_loss_and_grads(loss, expected, _params(nets), _params(ref))
    assert m.peer_adv is None  # used once
    _assert_same_buffers(nets, ref)  # S: x, x_s, x_p; P: x_p, x, x_s
    if bn:
        assert nets["s"].b1.num_batches_tracked.item() == 3
        assert nets["p"].b1.num_batches_tracked.item() == 3


@pytest.mark.parametrize("wrong", ["trades-target", "mutual-attached"])
def test_detach_points_matter(wrong):
    """Negative controls: a detached TRADES target, or mutual targets that carry gradient,
    change the gradients, so the comparison above checks the detach points."""
    nets = _nets(True)
    ref = copy.deepcopy(nets)
    x, xa, y = _batch(10)
    xp = _peer_batch(x)
    m = _make(nets)
    m.peer_adv = (x, xp)
    got = torch.autograd.grad(m.loss(x, xa, y), _params(nets))
    want = torch.autograd.grad(ref_loss(ref, x, xa, xp, y, wrong), _params(ref))
    assert max((g - w).abs().max().item() for g, w in zip(got, want, strict=True)) > 1e-6


def ref_attacks(n: dict, x, y, steps: int = 10, variant: str | None = None):
    """trades.py trades_loss on model1 (eval, x + 0.001 N(0, I) unclipped, KL_sum against
    model1(x)), then train_cat.py attack_pgd on model2 (BNeval: eval; uniform start clipped to
    the box; CE mean): drawn in this order from one RNG."""
    S, P = n["s"].eval(), n["p"].train(variant == "peer-train")
    if variant == "student-train":
        S.train()
    kl_sum = nn.KLDivLoss(reduction="sum")
    s_nat = S(x).detach()
    x_s = ref_pgd(lambda xa: kl_sum(F.log_softmax(S(xa), dim=1), F.softmax(s_nat, dim=1)),
                  x, EPS, STEP, steps, "uniform" if variant == "student-uniform" else "normal",
                  variant == "clamped")
    x_p = ref_pgd(lambda xa: CE(P(xa), y), x, EPS, STEP, steps,
                  "normal" if variant == "peer-normal" else "uniform", variant != "unclamped")
    return x_s, x_p


@pytest.mark.parametrize("steps", [10, 1])
def test_attacks(steps):
    nets = _nets(True)
    ref = copy.deepcopy(nets)
    x, _, y = _batch(10)
    m = _make(nets, steps=steps)
    torch.manual_seed(123)
    got_s = m.attack(x, y)
    kept_x, got_p = m.peer_adv
    assert kept_x is x
    torch.manual_seed(123)
    want_s, want_p = ref_attacks(ref, x, y, steps)
    torch.testing.assert_close(got_s, want_s, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_p, want_p, rtol=0, atol=1e-12)
    _assert_same_buffers(nets, ref)  # both attacks in eval mode: no BN update
    assert nets["p"].b1.num_batches_tracked.item() == 0
    for a in (got_s, got_p):
        assert (a - x).abs().max() <= EPS + 1e-12 and a.min() >= 0 and a.max() <= 1
    with torch.no_grad():
        assert CE(nets["p"](got_p), y) > CE(nets["p"](x), y)
    variants = ["peer-train", "student-train", "student-uniform", "peer-normal"]
    if steps == 1:  # over 10 steps the projection erases a start's clipping
        variants += ["clamped", "unclamped"]
    for v in variants:  # negative controls: each wrong choice gives another x_s or x_p
        torch.manual_seed(123)
        bad_s, bad_p = ref_attacks(_nets(True), x, y, steps, v)
        diff = max((bad_s - got_s).abs().max().item(), (bad_p - got_p).abs().max().item())
        assert diff > 1e-6, v


def test_peer_attack_in_train_mode_without_bn_eval():
    """Without --BNeval the peer attacks in train mode: a BN update per step."""
    nets = _nets(True)
    ref = copy.deepcopy(nets)
    x, _, y = _batch(10)
    m = _make(nets, steps=3, peer_bn_eval=False)
    torch.manual_seed(9)
    m.attack(x, y)
    torch.manual_seed(9)
    _, want_p = ref_attacks(ref, x, y, 3, "peer-train")
    torch.testing.assert_close(m.peer_adv[1], want_p, rtol=0, atol=1e-12)
    assert nets["p"].b1.num_batches_tracked.item() == 3
    _assert_same_buffers(nets, ref)


def _sgd(net: nn.Module) -> torch.optim.SGD:  # train_cat.py:190-193 with train_cat.sh's values
    return torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("preset", ["faithful", "fixed"])
def test_two_full_steps_as_the_script(preset, bn):
    """attack, loss, one backward, both SGD steps, after_step: twice, against the script's
    loop (its logging model1(X) after the steps in `faithful`): same weights and BN stats."""
    nets = _nets(bn)
    ref = copy.deepcopy(nets)
    m = _make(nets, preset)
    opts, ref_opts = [_sgd(nets["s"]), _sgd(nets["p"])], [_sgd(ref["s"]), _sgd(ref["p"])]
    for k in range(2):
        x, _, y = _batch(10)
        x = x.roll(k, 0)
        torch.manual_seed(40 + k)
        loss = m.loss(x, m.attack(x, y), y)
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
        m.after_step()
        torch.manual_seed(40 + k)  # the script
        x_adv1, x_adv2 = ref_attacks(ref, x, y)
        want = ref_loss(ref, x, x_adv1, x_adv2, y)
        for o in ref_opts:
            o.zero_grad()
        want.backward()
        for o in ref_opts:
            o.step()
        if preset == "faithful":
            ref["s"](x)  # train_cat.py:289, train mode, statistics only
        torch.testing.assert_close(loss.detach(), want.detach(), **TOL)
        for a, b in zip(_params(nets), _params(ref), strict=True):
            torch.testing.assert_close(a, b, **TOL)
        _assert_same_buffers(nets, ref)
    if bn:
        assert nets["s"].b1.num_batches_tracked.item() == (8 if preset == "faithful" else 6)
        assert nets["p"].b1.num_batches_tracked.item() == 6


def test_logging_forward_runs_after_the_steps():
    """Negative control: the logging forward before the steps leaves other BN statistics."""
    nets, early = _nets(True), _nets(True)
    x, _, y = _batch(10)
    for net, before in ((nets, False), (early, True)):
        m = _make(net)
        torch.manual_seed(3)
        loss = m.loss(x, m.attack(x, y), y)
        opts = [_sgd(net["s"]), _sgd(net["p"])]
        loss.backward()
        if before:
            m.after_step()
        for o in opts:
            o.step()
        if not before:
            m.after_step()
    assert (nets["s"].b2.running_mean - early["s"].b2.running_mean).abs().max() > 1e-6


def test_presets_and_schedule():
    cls = registry.get("cat")
    assert cls.needs_peer and not cls.needs_teacher and not cls.trains_teacher
    p = cls.resolve("faithful", "cifar10")
    assert (p.epochs, p.milestones, p.lr, p.momentum, p.weight_decay, p.batch_size, p.seed) == (
        200, (99, 149), 0.1, 0.9, 5e-4, 128, 0)
    assert (p.eps, p.step, p.steps) == (EPS, STEP, 10)
    assert (p.beta, p.pair, p.own, 1 - p.own) == (6.0, 1.0, 1.0 / 20, 19.0 / 20)
    assert p.peer_bn_eval and p.log_forward and not p.swa and p.selection is None

    def script_lr(t):  # train_cat.py:199-206, t the 1-based epoch
        return 0.1 if t < 100 else (0.1 / 10.0 if t < 150 else 0.1 / 100.0)

    assert all(p.lr_at(t - 1) == pytest.approx(script_lr(t), rel=1e-12) for t in range(1, 201))
    assert not cls.resolve("fixed", "cifar10").log_forward
    paper = cls.resolve("paper", "digits", budget={"epochs": 15, "milestones": (10, 13)})
    assert (paper.epochs, paper.milestones, paper.log_forward) == (200, (99, 149), True)
    digits = resolve(Cell("cat"))
    assert digits.config["peer_arch"] == digits.arch


def test_loss_crafts_the_peer_examples_without_attack():
    """loss() alone (no attack() before it for this batch) crafts x_p itself, as attack() would."""
    nets = _nets(True)
    ref = copy.deepcopy(nets)
    x, xa, y = _batch(10)
    m = _make(nets)
    m.peer_adv = (x.clone(), x)  # another batch's: ignored
    torch.manual_seed(2)
    loss = m.loss(x, xa, y)
    torch.manual_seed(2)
    xp = ref_pgd(lambda z: CE(ref["p"].eval()(z), y), x, EPS, STEP, 10, "uniform", True)
    torch.testing.assert_close(loss, ref_loss(ref, x, xa, xp, y), **TOL)


# --- resume: interrupted mid-epoch, then resumed, ends bit-identical ------------------------

def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path, monkeypatch) -> None:
    """Killed at batch 6 of the second epoch, resumed by a fresh Trainer from the first epoch's
    checkpoint: student, peer, both optimizers and the history as a run never interrupted."""
    got, want = killed_and_resumed(
        lambda out: short_trainer("cat", out), tmp_path, monkeypatch)
    assert got["epoch"] == want["epoch"] == 2
    assert set(want["models"]) == set(want["optims"]) == {"student", "peer"}
    assert want["optims"]["peer"]["state"]  # momentum buffers: the peer stepped
