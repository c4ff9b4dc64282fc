"""AKD2 and IAD-II against ZFancy/IAD's AKD2.py and IAD-II.py, written out independently.

The references replay each script's step line by line on tiny float64 BN and no-BN models:
`AttackPGD.forward` (the student in train mode, uniform start not clamped, CE summed, then its
final forward S(x')), the teachers in eval mode on x', `nn.KLDivLoss(reduce=False)` rows summed
and scaled by 1/len(outputs), IAD-II's per-sample `Alpha` filled from `.item()` floats and its
S(x) inside the loss. They never call the method files' helpers or `bench.eval.attacks`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_run import cli
from resumable import killed_and_resumed, short_trainer
from test_methods import (
    EPS,
    STEP,
    _assert_same_buffers,
    _batch,
    assert_same_loss_and_grads,
    ref_pgd,
)
from test_second_wave_mt import DATASETS, _make, _nets  # CIFAR-10 and -100: the scripts' sets

from bench.core import registry
from bench.core.distiller import RangeError
from bench.data import datasets
from bench.train.cells import Cell, resolve

SPEC = dict(t=1.0, a1=0.5, a2=0.25, beta=0.1, warmup=40)  # AKD2.py / IAD-II.py argparse


def kl_rows(log_q, p):
    """`nn.KLDivLoss(reduce=False)(log_q, p).sum(dim=1)`: sum_c p (log p - log q)."""
    return (p * (torch.log(p) - log_q)).sum(dim=1)


def ref_loss(name: str, n: dict, x, xa, y, c: dict, epoch: int = 0, wrong: str | None = None):
    """The scripts' `train()` body after `net.forward`: S(x') is AttackPGD's last forward.

    `wrong` is a deliberately wrong choice (negative controls)."""
    S, T, ST = n["s"], n["t"], n["c"]
    for net in (T, ST):
        net.eval().requires_grad_(False)
    S.train()
    outputs = S(xa)
    teacher_outputs, st_outputs = T(xa), ST(xa)
    B, t, a1, a2 = len(outputs), c["t"], c["a1"], c["a2"]
    ce = F.cross_entropy(outputs, y)
    log_s = F.log_softmax(outputs / t, dim=1)
    st_term = a2 * t * t * (1 / B) * torch.sum(kl_rows(log_s, F.softmax(st_outputs / t, dim=1)))
    at_rows = kl_rows(log_s, F.softmax(teacher_outputs / t, dim=1))
    if name == "akd2" or epoch < c["warmup"]:
        return (1 - a1 - a2) * ce + a1 * t * t * (1 / B) * torch.sum(at_rows) + st_term
    guide = T(xa)
    alpha = torch.ones(B, dtype=outputs.dtype)
    for pp in range(B):
        alpha[pp] = F.softmax(guide, dim=1)[pp][y[pp].item()].pow(c["beta"]).item()
    if wrong == "unweighted-teacher":  # IAD-I's code: the teacher rows not weighted
        at_rows = at_rows / alpha
    s_nat = S(x)
    if wrong == "s_nat":
        s_nat = s_nat.detach()
    own = torch.sum(kl_rows(F.log_softmax(outputs, dim=1), F.softmax(s_nat, dim=1)) * (1 - alpha))
    return ((1 - a1 - a2) * ce + a1 * t * t * ((1 / B) * torch.sum(at_rows * alpha) + (1 / B) * own)
            + st_term)


CASES = [("akd2", 0, {}), ("akd2", 0, dict(t=3.0, a1=0.3, a2=0.6)), ("akd2", 199, dict(a2=0.0)),
         ("iad2", 39, {}), ("iad2", 40, {}), ("iad2", 40, dict(t=2.0, a1=0.6, a2=0.1)),
         ("iad2", 199, dict(beta=1.0))]


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("name,epoch,over", CASES,
                         ids=[f"{n}-e{e}" + "".join(f"-{k}{v}" for k, v in o.items())
                              for n, e, o in CASES])
def test_loss_grads_and_bn_updates(name, epoch, over, dataset, bn):
    classes = DATASETS[dataset]
    nets = _nets(classes, bn)
    ref = copy.deepcopy(nets)
    x, xa, y = _batch(classes)
    m = _make(name, nets, dataset, **over)
    m.epoch = epoch
    nets["s"].eval()  # the loss must put the student in train mode itself
    ref["s"].eval()
    nets["t"].train()  # and keep the teachers in eval mode
    nets["c"].train()
    loss = m.loss(x, xa, y)
    expected = ref_loss(name, ref, x, xa, y, {**SPEC, **over}, epoch)
    assert_same_loss_and_grads(loss, expected, list(nets["s"].parameters()),
                               list(ref["s"].parameters()))
    assert loss.item() > 0
    _assert_same_buffers(nets, ref)  # order and count of train-mode forwards
    assert not any(q.requires_grad for k in ("t", "c") for q in nets[k].parameters())


@pytest.mark.parametrize("wrong", ["s_nat", "unweighted-teacher"])
def test_iad2_detach_point_and_teacher_weights_matter(wrong):
    """Negative controls: a detached S(x), or IAD-I's unweighted teacher term, gives another
    student gradient, so the comparison above does check them."""
    nets = _nets(10, True)
    ref = copy.deepcopy(nets)
    x, xa, y = _batch(10)
    m = _make("iad2", nets)
    m.epoch = 40
    got = torch.autograd.grad(m.loss(x, xa, y), list(nets["s"].parameters()))
    bad = ref_loss("iad2", ref, x, xa, y, SPEC, 40, wrong=wrong)
    want = torch.autograd.grad(bad, list(ref["s"].parameters()))
    assert max((g - w).abs().max().item() for g, w in zip(got, want, strict=True)) > 1e-6


def test_bn_update_counts():
    """Train-mode student forwards per loss(): S(x') only; IAD-II adds S(x) from the warm-up.
    The teachers never update their statistics."""
    for name, epoch, k in [("akd2", 0, 1), ("akd2", 150, 1), ("iad2", 39, 1), ("iad2", 40, 2)]:
        nets = _nets(10, True)
        x, xa, y = _batch(10)
        m = _make(name, nets)
        m.epoch = epoch
        m.loss(x, xa, y)
        assert nets["s"].b1.num_batches_tracked.item() == k, (name, epoch)
        assert nets["t"].b1.num_batches_tracked.item() == 0
        assert nets["c"].b1.num_batches_tracked.item() == 0


@pytest.mark.parametrize("steps", [10, 1])
@pytest.mark.parametrize("name", ["akd2", "iad2"])
def test_attack(name, steps):
    """AttackPGD: S in TRAIN mode (a BN update per step), x + U(-eps, eps) not clamped, CE
    summed (`size_average=False`; its sign equals the mean's), projected and clipped."""
    nets = _nets(10, True)
    ref = copy.deepcopy(nets)
    x, _, y = _batch(10)
    m = _make(name, nets, steps=steps)
    torch.manual_seed(123)
    got = m.attack(x, y)

    def reference(n, start="uniform", clamp=False, train=True):
        S = n["s"].train(train)
        torch.manual_seed(123)
        return ref_pgd(lambda z: F.cross_entropy(S(z), y, reduction="sum"), x, EPS, STEP, steps,
                       start, clamp)

    torch.testing.assert_close(got, reference(ref), rtol=0, atol=1e-12)
    _assert_same_buffers(nets, ref)
    assert nets["s"].b1.num_batches_tracked.item() == steps
    assert (got - x).abs().max() <= EPS + 1e-12 and got.min() >= 0 and got.max() <= 1
    variants = [dict(start="normal"), dict(train=False)]
    if steps == 1:
        variants.append(dict(clamp=True))
    for v in variants:  # negative controls: each wrong choice gives another x'
        assert (reference(_nets(10, True), **v) - got).abs().max() > 1e-6, v


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
def test_full_step_replays_the_script(bn):
    """attack() then loss() of one batch, from epoch 40 on: the script's AttackPGD, its final
    S(x'), the teachers on x' and S(x), with the same values, gradients and BN statistics."""
    nets = _nets(10, bn)
    ref = copy.deepcopy(nets)
    x, _, y = _batch(10)
    m = _make("iad2", nets)
    m.epoch = 40
    torch.manual_seed(7)
    loss = m.loss(x, m.attack(x, y), y)
    S = ref["s"].train()
    torch.manual_seed(7)
    xa = ref_pgd(lambda z: F.cross_entropy(S(z), y, reduction="sum"), x, EPS, STEP, 10,
                 "uniform", False)
    want = ref_loss("iad2", ref, x, xa, y, SPEC, 40)
    assert_same_loss_and_grads(loss, want, list(nets["s"].parameters()), list(S.parameters()))
    _assert_same_buffers(nets, ref)


# --- presets, schedules, teachers ------------------------------------------------------------

def _p(name: str, dataset: str = "cifar10", preset: str = "faithful", **over):
    return registry.get(name).resolve(preset, dataset, budget=datasets.spec(dataset).budget,
                                      **over)


def test_faithful_presets_are_the_scripts():
    for dataset in DATASETS:
        for name in ("akd2", "iad2"):
            p = _p(name, dataset)
            assert (p.epochs, p.milestones, p.lr_schedule, p.seed, p.batch_size) == (
                200, (100, 150), "ard", 1, 128)
            assert (p.lr, p.momentum, p.weight_decay, p.lr_decay) == (0.1, 0.9, 2e-4, 0.1)
            assert (p.eps, p.step, p.steps, p.t, p.a1, p.a2) == (EPS, STEP, 10, 1.0, 0.5, 0.25)
            # adjust_learning_rate scales the INITIAL lr: 0.01 from epoch 100 on, never 0.001
            assert [p.lr_at(e) for e in (99, 100, 149, 150, 199)] == pytest.approx(
                [0.1, 0.01, 0.01, 0.01, 0.01])
            f = _p(name, dataset, "fixed")
            assert [f.lr_at(e) for e in (99, 100, 150)] == pytest.approx([0.1, 0.01, 0.001])
        assert (_p("iad2", dataset).beta, _p("iad2", dataset).warmup) == (0.1, 40)
    # the embedded digits: 40 of 200 epochs is epoch 3 of 15; an epochs override scales it
    d = _p("iad2", "digits")
    assert (d.epochs, d.milestones, d.warmup) == (15, (10, 13), 3)
    assert resolve(Cell("iad2", overrides=(("epochs", 30),))).params.warmup == 6
    assert _p("iad2", "digits", "paper").warmup == 40


def test_weights_must_leave_a_non_negative_ce_weight():
    assert _p("akd2", a1=0.75, a2=0.25).a1 == 0.75
    for name in ("akd2", "iad2"):
        with pytest.raises(RangeError, match="a1 \\+ a2 <= 1"):
            _p(name, a1=0.8, a2=0.25)


def _piecewise(t: int) -> float:
    """pre_train/AT.py and ST.py `lr_schedule(epoch + 1)`, 'piecewise', 200 epochs."""
    return 0.1 if t / 200 < 0.5 else 0.1 / 10 if t / 200 < 0.75 else 0.1 / 100


def test_paper_presets_train_iads_own_teachers():
    """AT.py: PGD-AT ResNet-18, attack in eval mode; ST.py: standard ResNet-18; both the
    piecewise LR (x0.1 at 0-based 99 and 149), seed 1, 200 epochs."""
    for name in ("akd2", "iad2"):
        for dataset in DATASETS:
            r = resolve(Cell(name, dataset, preset="paper"))
            assert r.teacher_cell == Cell("pgdat", dataset, "resnet18", preset="iad-teacher")
            assert r.clean_teacher_cell == Cell("standard", dataset, "resnet18",
                                                preset="iad-teacher")
            assert r.params.selection is None  # best PGD-10 every epoch, and last
            for cell in (r.teacher_cell, r.clean_teacher_cell):
                t = resolve(cell).params
                assert (t.epochs, t.milestones, t.seed, t.weight_decay) == (200, (99, 149), 1,
                                                                            2e-4)
                assert [t.lr_at(e) for e in range(200)] == pytest.approx(
                    [_piecewise(e + 1) for e in range(200)])
        f = resolve(Cell(name))  # faithful on the embedded set: the harness's default teachers
        assert f.teacher_cell.method == "pgdat" and f.clean_teacher_cell.method == "standard"
        assert f.teacher_cell.preset == f.clean_teacher_cell.preset == "faithful"


def test_no_method_state():
    """Neither script keeps state between steps: nothing to checkpoint beyond the networks."""
    for name in ("akd2", "iad2"):
        m = _make(name, _nets(10, True))
        x, xa, y = _batch(10)
        m.epoch = 50
        m.loss(x, xa, y)
        assert m.state_dict() == {}
        m.load_state_dict({})


# --- resume: interrupted mid-epoch, then resumed, ends bit-identical ------------------------

@pytest.mark.parametrize("method", ["akd2", "iad2"])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path, method: str,
                                                      monkeypatch) -> None:
    """Killed at batch 6 of the second epoch (IAD-II introspective in it: its warm-up of 3 of
    15 epochs scales to 1 of 2), resumed from the first epoch's checkpoint: the same bits."""
    if method == "iad2":
        assert short_trainer(method, tmp_path / "probe", True, True).method.p.warmup == 1
    got, want = killed_and_resumed(lambda out: short_trainer(method, out, True, True),
                                   tmp_path, monkeypatch)
    assert got["epoch"] == want["epoch"] == 2
    assert set(want["models"]) == {"student"}


def test_cli_trains_both_with_their_teachers(tmp_path: Path, capsys) -> None:
    """`bench run --methods akd2,iad2 --epochs 2 --attacks clean` on the embedded digits: the
    PGD-AT and the standard teacher are trained first, then both students."""
    code, out, err = cli(["run", "--methods", "akd2,iad2", "--epochs", "2", "--attacks", "clean",
                          "--threads", "1", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "AKD2" in out and "IAD-II" in out
    teachers = sorted(p.name.split("-")[0] for p in (tmp_path / "teachers").glob("*.pt"))
    assert teachers == ["pgdat", "standard"]
