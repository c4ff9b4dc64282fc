"""Fair-ARD, Fair-IAD, Fair-RSLAD and Fair-MTARD against their authors' scripts, written out.

The reference losses replay each script's per-sample loop (NISP-official/Fair-ARD at 910c8cd:
its forward order and modes, `nn.KLDivLoss` or the hand-written `kl_loss` per row, each row
times `reweight[targets[i]]`, then `(1/len) * sum`) on tiny float64 BN and no-BN models. The
attacks are the scripts' PGD loops counting Kappa before every step; the class weights are
`weight_assign` computed by hand in python floats; a run killed mid-epoch resumes exactly.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from resumable import killed_and_resumed
from test_methods import (
    EPS,
    STEP,
    Net,
    _assert_same_buffers,
    _batch,
    assert_same_loss_and_grads,
    ref_pgd,
)

from bench.core import registry
from bench.models import create_model
from bench.train.cells import Cell, resolve
from bench.train.runner import RunOptions, Trainer

METHODS = ["fair_ard", "fair_iad", "fair_rslad", "fair_mtard"]
DATASETS = {"cifar10": 10, "cifar100": 100}


def _nets(classes: int, bn: bool) -> dict:
    return {"s": Net(classes, bn, 1), "t": Net(classes, bn, 2), "c": Net(classes, bn, 3)}


def _make(name: str, nets: dict, dataset: str = "cifar10", **kw):
    return registry.create(name, student=nets["s"], teacher=nets["t"], clean_teacher=nets["c"],
                           dataset=dataset, **kw)


def _reweight(classes: int) -> torch.Tensor:
    """Known, uneven class weights in [5/6, 5/2] (float32, as the scripts' `reweight`)."""
    g = torch.Generator().manual_seed(3)
    return torch.linspace(5 / 6, 5 / 2, classes)[torch.randperm(classes, generator=g)]


def code_kl(a, b):
    """Fair-RSLAD.py:86-88 / Fair-MTARD.py:93-95, on one row: a = log_softmax(s), b = softmax(t)."""
    return -a * b + torch.log(b + 1e-5) * b


def ref_loss(name: str, n: dict, x, xa, y, rw, c: dict, epoch: int, state: dict | None = None):
    """One step of the script's loss, sample by sample (`rw`: the class weights)."""
    S, T, Tc = n["s"], n["t"], n["c"]
    for t in (T, Tc):
        t.eval().requires_grad_(False)
    B = len(y)
    S.train()
    if name == "fair_ard":  # Fair-ARD.py:133-148
        out = S(xa)
        t_out = T(x)
        basic = S(x)
        kl, ce = [], []
        for i in range(B):
            kl.append(torch.nn.KLDivLoss()(F.log_softmax(out[i] / c["t"], dim=0),
                                           F.softmax(t_out[i] / c["t"], dim=0)) * rw[y[i]])
            ce.append(torch.nn.CrossEntropyLoss()(basic[i][None], y[i][None]) * rw[y[i]])
        return (c["a"] * c["t"] ** 2 * (1 / B) * torch.sum(torch.stack(kl))
                + (1 - c["a"]) * (1 / B) * torch.sum(torch.stack(ce)))
    if name == "fair_iad":  # Fair-IAD.py:163-199
        t_out = T(x)
        out = S(xa)
        basic = S(x)
        S(xa).detach()  # basicop
        guide = T(xa)
        kld = torch.nn.KLDivLoss(reduction="none")
        k1 = [kld(F.log_softmax(out[i] / c["t"], dim=0), F.softmax(t_out[i] / c["t"], dim=0))
              .sum() * rw[y[i]] for i in range(B)]
        loss1 = c["a"] * c["t"] ** 2 * (1 / B) * torch.sum(torch.stack(k1))
        if epoch < 60:
            return loss1
        alpha = [F.softmax(guide, dim=1)[i][y[i].item()].pow(0.1).item() for i in range(B)]
        k2 = [kld(F.log_softmax(out[i], dim=0), F.softmax(basic[i], dim=0)).sum()
              .mul(1 - alpha[i]) * rw[y[i]] for i in range(B)]
        ce = [torch.nn.CrossEntropyLoss()(out[i][None], y[i][None]) * rw[y[i]] for i in range(B)]
        return (loss1 + c["a"] * (1 / B) * torch.sum(torch.stack(k2))
                + (1 - c["a"]) * (1 / B) * torch.sum(torch.stack(ce)))
    if name == "fair_rslad":  # Fair-RSLAD.py:118-138
        with torch.no_grad():
            t_out = T(x)
        adv = S(xa)
        nat = S(x)
        k1 = [code_kl(F.log_softmax(adv[i], dim=0), F.softmax(t_out[i], dim=0)) * rw[y[i]]
              for i in range(B)]
        k2 = [code_kl(F.log_softmax(nat[i], dim=0), F.softmax(t_out[i], dim=0)) * rw[y[i]]
              for i in range(B)]
        l1, l2 = torch.mean((1.0 / B) * sum(k1)), torch.mean((1.0 / B) * sum(k2))
        return c["scale"] * (5 / 6.0 * l1 + 1 / 6.0 * l2)
    if name == "fair_mtard":  # Fair-MTARD.py:133-171
        with torch.no_grad():
            t_nat = Tc(x)
        adv = S(xa)
        with torch.no_grad():
            t_adv = T(xa)
        nat = S(x)
        soft = t_nat if c["clean_target"] else t_adv  # the script: teacher_adv_logits (:144)
        k1 = [code_kl(F.log_softmax(adv[i], dim=0), F.softmax(t_adv[i], dim=0)) * rw[y[i]]
              for i in range(B)]
        k2 = [code_kl(F.log_softmax(nat[i], dim=0), F.softmax(soft[i], dim=0)) * rw[y[i]]
              for i in range(B)]
        l1 = c["scale"] * torch.mean((1 / B) * sum(k1))
        l2 = c["scale"] * torch.mean((1 / B) * sum(k2))
        if state["init"] is None:
            state["init"] = (l1.item(), l2.item())
        h_adv, h_nat = l1.item() / state["init"][0], l2.item() / state["init"][1]
        state["nat"] = state["nat"] - 0.025 * (state["nat"] - h_nat / (h_adv + h_nat))
        state["adv"] = 1 - state["nat"]
        return state["adv"] * l1 + state["nat"] * l2
    raise KeyError(name)


def _spec(name: str, dataset: str, preset: str) -> dict:
    c100 = dataset == "cifar100"
    return {"fair_ard": dict(t=30.0, a=1.0), "fair_iad": dict(t=1.0, a=1.0),
            "fair_rslad": dict(scale=10.0 if c100 else 1.0),
            "fair_mtard": dict(scale=10.0 if c100 else 1.0,
                               clean_target=preset == "fixed")}[name]


CASES = [("fair_ard", "faithful", 0, {}), ("fair_ard", "faithful", 3, {"a": 0.3}),
         ("fair_iad", "faithful", 59, {}), ("fair_iad", "faithful", 60, {}),
         ("fair_iad", "faithful", 60, {"a": 0.3}), ("fair_rslad", "faithful", 5, {}),
         ("fair_mtard", "faithful", 5, {}), ("fair_mtard", "fixed", 5, {})]


@pytest.mark.parametrize("first", [False, True], ids=["weighted", "first-epoch"])
@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("name,preset,epoch,over", CASES,
                         ids=[f"{n}-{p}-e{e}" + "".join(f"-{k}{v}" for k, v in o.items())
                              for n, p, e, o in CASES])
def test_loss_grads_and_bn_updates(name, preset, epoch, over, dataset, bn, first):
    """Value, student gradients and BN running statistics against the script's loop, with the
    class weights of a later epoch or the first epoch's ones; Fair-MTARD over two steps (its
    adaptive weights move from the first step's losses)."""
    classes = DATASETS[dataset]
    nets = _nets(classes, bn)
    ref = copy.deepcopy(nets)
    m = _make(name, nets, dataset, preset=preset, **over)
    rw = torch.ones(classes) if first else _reweight(classes)
    if not first:
        m.class_w = rw.clone()
    m.epoch = epoch
    c, state = {**_spec(name, dataset, preset), **over}, {"init": None, "nat": 0.5}
    nets["s"].eval()
    ref["s"].eval()
    for k in range(2 if name == "fair_mtard" else 1):
        x, xa, y = _batch(classes, n=8 + k)
        loss = m.loss(x, xa, y)
        expected = ref_loss(name, ref, x, xa, y, rw, c, epoch, state)
        assert_same_loss_and_grads(loss, expected, list(nets["s"].parameters()),
                                   list(ref["s"].parameters()))
        assert loss.item() > 0
    _assert_same_buffers(nets, ref)


def test_the_weights_and_the_mtard_target_matter():
    """Negative controls: uneven class weights change every loss; Fair-MTARD's faithful natural
    target (T_adv(x')) and the fixed one (T_nat(x)) give different losses."""
    x, xa, y = _batch(10)
    for name in METHODS:
        a, b = _make(name, _nets(10, True)), _make(name, _nets(10, True))
        a.epoch = b.epoch = 60
        b.class_w = _reweight(10)
        assert abs(a.loss(x, xa, y).item() - b.loss(x, xa, y).item()) > 1e-6, name
    f, g = _make("fair_mtard", _nets(10, True)), _make("fair_mtard", _nets(10, True),
                                                      preset="fixed")
    assert abs(f.loss(x, xa, y).item() - g.loss(x, xa, y).item()) > 1e-6


# --- the attacks and their Kappa counts ------------------------------------------------------

def ref_attack(name: str, n: dict, x, y, mode_flipped: bool = False):
    """The script's PGD loop with its Kappa: per sample, the iterates S classifies right,
    counted before each step, in the attack's own mode. Returns x', Kappa."""
    S, T = n["s"], n["t"]
    T.eval().requires_grad_(False)
    train = name in ("fair_ard", "fair_iad")  # Fair-ARD.py:128 net.train(); Fair-IAD.py:157
    S.train(train != mode_flipped)
    kappa = torch.zeros(len(y), dtype=torch.long)
    if name == "fair_rslad":
        with torch.no_grad():
            t = T(x)

    def obj(xa):
        out = S(xa)
        pred = out.max(1, keepdim=True)[1]
        for p in range(len(xa)):
            if pred[p] == y[p]:
                kappa[p] += 1
        if name == "fair_rslad":  # KL_sum to the fixed soft labels (Fair-RSLAD.py:65-67)
            return torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(out, dim=1),
                                                       F.softmax(t, dim=1))
        if name == "fair_mtard":
            return F.cross_entropy(out, y)  # Fair-MTARD.py:52, :66: mean
        return F.cross_entropy(out, y, reduction="sum")  # size_average=False

    start = "uniform" if train else "normal"
    return ref_pgd(obj, x, EPS, STEP, 10, start, False), kappa


@pytest.mark.parametrize("name", METHODS)
def test_attack_and_its_kappa(name):
    """x' equal to the script's PGD (same RNG) and the epoch's per-class sums equal to its
    Kappa_total; BN statistics move only in the train-mode attacks (ARD's, IAD's)."""
    classes = 4
    nets = _nets(classes, True)
    ref = copy.deepcopy(nets)
    m = _make(name, nets)
    want_sum, want_n = torch.zeros(classes), torch.zeros(classes)
    for k in range(3):
        x, _, y = _batch(classes, n=6 + k)
        torch.manual_seed(7 + k)
        got = m.attack(x, y)
        torch.manual_seed(7 + k)
        want, kappa = ref_attack(name, ref, x, y)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        assert m.student is nets["s"]  # the counting wrapper is gone
        for i in range(len(y)):
            want_sum[y[i]] += kappa[i].item()
            want_n[y[i]] += 1
        assert 0 < kappa.sum() < 10 * len(y)  # neither all right nor all wrong: counts matter
    _assert_same_buffers(nets, ref)
    sums = m.pop_sums()
    assert torch.equal(sums["hits"], want_sum) and torch.equal(sums["n"], want_n)
    torch.manual_seed(7)
    x, _, y = _batch(classes, n=6)
    flipped, _ = ref_attack(name, _nets(classes, True), x, y, mode_flipped=True)
    assert (flipped - m.attack(x, y)).abs().max() > 1e-6  # the mode matters


# --- the class weights ------------------------------------------------------------------------

def hand_weights(hits: list[float], n: list[float], beta: float, eps: float) -> list[float]:
    """weight_assign (Fair-ARD.py:116-125) after Kappa_total / (len(dataset) / num_classes)
    (:166), in python floats."""
    c = len(hits)
    per_class = sum(n) / c
    v = [(1 / (h / per_class + eps)) ** beta for h in hits]
    return [min(max(x * c / sum(v), 5 / 6), 5 / 2) for x in v]


@pytest.mark.parametrize("name", METHODS)
def test_class_weights_at_the_epoch_end_by_hand(name):
    """Known per-class counts: the weights normalise to sum C before the clamp, the hardest
    class (fewest hits) gets the largest weight, and both clamp bounds can bite."""
    m = _make(name, _nets(5, True))
    hits = [150.0, 1200.0, 2500.0, 3000.0, 80.0]
    n = [100.0, 101.0, 99.0, 100.0, 100.0]
    m.on_epoch_end({"hits": torch.tensor(hits), "n": torch.tensor(n)})
    eps = 0.0 if name == "fair_rslad" else 1e-5
    want = hand_weights(hits, n, 2.0, eps)
    torch.testing.assert_close(m.class_w, torch.tensor(want), rtol=1e-6, atol=1e-7)
    assert m.class_w.argmax() == 4 and m.class_w[4] == pytest.approx(5 / 2)
    assert m.class_w[3] == pytest.approx(5 / 6) and m.class_w[0] not in (5 / 6, 5 / 2)
    mild = [950.0, 1000.0, 1050.0, 1000.0, 980.0]  # no clamp: they sum to C
    m.on_epoch_end({"hits": torch.tensor(mild), "n": torch.tensor(n)})
    assert m.class_w.sum().item() == pytest.approx(5, rel=1e-6)
    torch.testing.assert_close(m.class_w, torch.tensor(hand_weights(mild, n, 2.0, eps)),
                               rtol=1e-6, atol=1e-7)
    x, xa, y = _batch(5)
    assert torch.equal(m.weights(y, x), m.class_w.double()[y])


def test_fair_rslad_zero_kappa_is_nan_and_fixed_repairs_it():
    """Fair-RSLAD.py:99 has 1 / Kappa: a class no iterate classified right gives NaN weights;
    `fixed` adds the others' 1e-5 (that class gets the top weight)."""
    sums = {"hits": torch.tensor([0.0, 500.0, 900.0]), "n": torch.tensor([100.0] * 3)}
    faithful, fixed = (_make("fair_rslad", _nets(3, True), preset=p) for p in ("faithful",
                                                                               "fixed"))
    faithful.on_epoch_end(dict(sums))
    fixed.on_epoch_end(dict(sums))
    assert torch.isnan(faithful.class_w).any()
    assert torch.isfinite(fixed.class_w).all() and fixed.class_w[0] == pytest.approx(5 / 2)
    ard = _make("fair_ard", _nets(3, True))
    ard.on_epoch_end(dict(sums))
    torch.testing.assert_close(ard.class_w, fixed.class_w)


def test_mtard_rate_and_weights_survive_the_epoch_end():
    """Fair-MTARD keeps MTARD's state (adaptive weights, rate x0.1 after 1-based epoch 215,
    Fair-MTARD.py:185-188) beside the class weights, in one state dict."""
    m = _make("fair_mtard", _nets(3, True))
    m.epoch = 214
    m.on_epoch_end({"hits": torch.tensor([5.0, 6.0, 7.0]), "n": torch.tensor([1.0] * 3)})
    state = m.state_dict()
    assert state["weight_rate"] == pytest.approx(0.0025) and state["class_w"] is not None
    other = _make("fair_mtard", _nets(3, True))
    other.load_state_dict(state)
    assert torch.equal(other.class_w, m.class_w) and other.weight_rate == m.weight_rate


# --- presets ----------------------------------------------------------------------------------

def test_presets():
    get = registry.get
    for name in METHODS:
        p = get(name).resolve("faithful", "cifar10")
        assert (p.fair_beta, p.w_min, p.w_max) == (2.0, 5 / 6, 5 / 2), name
        assert p.kappa_eps == (0.0 if name == "fair_rslad" else 1e-5), name
        assert p.selection is None
        paper = get(name).resolve("paper", "cifar10")
        assert paper.selection == "fair" and paper.epochs == p.epochs
        assert get(name).preset_teacher("paper", "cifar10") == ("trades", "wrn34_10")
        assert get(name).display_name == "Fair-" + name[5:].upper()
    ard, iad = get("fair_ard").resolve(), get("fair_iad").resolve()
    assert (ard.t, ard.a, ard.kl_reduction, ard.batch_size, ard.seed) == (30.0, 1.0, "mean",
                                                                            128, None)
    assert get("fair_ard").resolve("faithful", "cifar100").batch_size == 128  # not ARD's 256
    assert (iad.t, iad.beta, iad.warmup, iad.kl_reduction, iad.seed) == (1.0, 0.1, 60,
                                                                         "batchmean", 1)
    for p in (ard, iad):
        assert p.lr_schedule == "ard" and p.lr_at(150) == pytest.approx(0.01)
        assert get("fair_ard").resolve("fixed").lr_at(150) == pytest.approx(0.001)
    assert get("fair_iad").resolve("faithful", "digits").warmup == 5
    rs = get("fair_rslad").resolve()
    assert (rs.epochs, rs.milestones, rs.seed, rs.kl_eps) == (300, (215, 260, 285), 0, 1e-5)
    assert get("fair_rslad").resolve("fixed").kappa_eps == 1e-5
    mt = get("fair_mtard").resolve()
    assert (mt.weight_rate, mt.clean_target, mt.temp_rate) == (0.025, False, 0.0)
    assert get("fair_mtard").resolve("fixed").clean_target
    assert get("fair_mtard").preset_teacher("paper", "cifar10", "clean_teacher") == (
        "standard", "resnet56")
    assert get("fair_mtard").needs_clean_teacher


# --- resume: killed mid-epoch, resumed, the same bits ------------------------------------------

# Fair-RSLAD's faithful 1 / Kappa: on digits a class the untrained student never gets right in
# the first epoch makes the second epoch's weights NaN (the run stops), so it resumes `fixed`'s.
RESUME = {"fair_ard": (), "fair_iad": (("warmup", 1),), "fair_rslad": (("kappa_eps", 1e-5),),
          "fair_mtard": ()}


def _trainer(method: str, out: Path) -> Trainer:
    torch.manual_seed(11)
    teacher = create_model("small_cnn", num_classes=10, in_channels=1)
    clean = create_model("small_cnn_nobn", num_classes=10, in_channels=1)
    cell = Cell(method, select_every=5,
                overrides=(("epochs", 2), ("steps", 2), *RESUME[method]))
    return Trainer(resolve(cell), RunOptions(out=out, log=lambda *_: None), teacher,
                   clean if registry.get(method).needs_clean_teacher else None)


@pytest.mark.parametrize("method", list(RESUME))
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path, method: str,
                                                      monkeypatch) -> None:
    """Killed at batch 5 of the second epoch (trained with the first epoch's class weights),
    resumed from the first epoch's checkpoint: the same bits as a run never interrupted."""
    got, want = killed_and_resumed(lambda out: _trainer(method, out), tmp_path, monkeypatch)
    assert got["epoch"] == want["epoch"] == 2
    w = want["method"]["class_w"]
    assert w is not None and w.numel() == 10 and w.max() > w.min()  # uneven weights
    assert all(math.isfinite(v) for v in w.tolist())
