"""MTARD, B-MTARD and CIARD against their authors' code, written out independently.

The reference losses below replay each script's step line by line (its forward order and
modes, its hand-written `kl_loss`, its python-float weight and temperature updates) on tiny
float64 BN and no-BN models; the methods must give the same value, gradients, BatchNorm
running statistics and state. Attacks: the same PGD as the scripts' loop, seeded alike.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bench.methods.ciard import magnitude_scale
from resumable import killed_and_resumed, same
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

from bench.core import registry
from bench.models import create_model
from bench.train import checkpoint
from bench.train.cells import Cell, resolve
from bench.train.runner import RunOptions, Trainer

CASES = [("mtard", "faithful"), ("mtard", "paper"), ("bmtard", "faithful"), ("bmtard", "paper"),
         ("ciard", "faithful"), ("ciard", "paper"), ("ciard", "fixed")]
DATASETS = {"cifar10": 10, "cifar100": 100}


def _nets(classes: int, bn: bool) -> dict:
    return {"s": Net(classes, bn, 1), "t": Net(classes, bn, 2), "c": Net(classes, bn, 4)}


def _make(name: str, nets: dict, dataset: str = "cifar10", preset: str = "faithful", **kw):
    return registry.create(name, student=nets["s"], teacher=nets["t"], clean_teacher=nets["c"],
                           dataset=dataset, preset=preset, **kw)


def kl_loss(a, b):
    """The scripts' kl_loss(log_softmax(student), softmax(teacher)), elementwise."""
    return -a * b + torch.log(b + 1e-5) * b


def entropy_value(p):
    return torch.log(p + 1e-5) * p


class Code:
    """The scripts' globals: weight dict, first-step losses, temperatures, rates."""

    def __init__(self, name: str, preset: str, dataset: str) -> None:
        self.name, self.preset = name, preset
        self.scale = 10.0 if dataset == "cifar100" and name != "ciard" else 1.0
        self.weight = {"adv_loss": 0.5, "nat_loss": 0.5}
        self.init_adv = self.init_nat = None
        self.temp_adv = self.temp_nat = 1.0
        self.weight_learn_rate, self.temp_learn_rate = 0.025, 0.001

    def temps(self, t_adv, t_nat):
        """B-MTARD / CIARD: entropies of the tempered teachers, then a sign step, clamped."""
        if self.name == "mtard":
            return
        e_adv = torch.mean(entropy_value(F.softmax(t_adv.detach() / self.temp_adv, dim=1)))
        e_nat = torch.mean(entropy_value(F.softmax(t_nat.detach() / self.temp_nat, dim=1)))
        self.temp_adv = self.temp_adv - self.temp_learn_rate * torch.sign(e_adv / e_nat - 1).item()
        self.temp_nat = self.temp_nat - self.temp_learn_rate * torch.sign(e_nat / e_adv - 1).item()
        self.temp_adv = max(min(10, self.temp_adv), 1)
        self.temp_nat = max(min(10, self.temp_nat), 1)

    def weights(self, l1: float, l2: float):
        if self.init_nat is None:
            self.init_nat = l2
        if self.init_adv is None:
            self.init_adv = l1
        lhat_adv, lhat_nat = l1 / self.init_adv, l2 / self.init_nat
        w, a = self.weight, self.weight_learn_rate
        if self.name == "mtard":  # MTARD: bert = 1, w_adv = 1 - w_nat
            inv_adv, inv_nat = lhat_adv**1, lhat_nat**1
            w["nat_loss"] = w["nat_loss"] - a * (w["nat_loss"] - inv_nat / (inv_adv + inv_nat))
            w["adv_loss"] = 1 - w["nat_loss"]
            return
        lhat_avg = (lhat_adv + lhat_nat) / len(w)
        inv_adv, inv_nat = lhat_adv / lhat_avg, lhat_nat / lhat_avg
        w["nat_loss"] = w["nat_loss"] - a * (w["nat_loss"] - inv_nat / (inv_adv + inv_nat))
        w["adv_loss"] = w["adv_loss"] - a * (w["adv_loss"] - inv_adv / (inv_adv + inv_nat))
        w["adv_loss"], w["nat_loss"] = max(w["adv_loss"], 0), max(w["nat_loss"], 0)
        coef = 1.0 / (w["adv_loss"] + w["nat_loss"])
        w["adv_loss"] *= coef
        w["nat_loss"] *= coef


def ref_loss(code: Code, n: dict, x, xa, y, parts: dict | None = None):
    """One step's student objective, in the script's order of forwards."""
    S, T, C = n["s"], n["t"], n["c"]
    C.eval().requires_grad_(False)
    if code.name == "ciard":
        S.train()
        sn = S(x)
        with torch.no_grad():
            tn = C(x)
            T.train()(x)
        S.train()
        T.train()
        sa, ta, na = S(xa), T(xa), C(xa)
    else:
        T.eval().requires_grad_(False)
        with torch.no_grad():
            tn = C(x)  # MTARD's place; B-MTARD computes it after S(x): eval, no difference
        S.train()
        sa = S(xa)
        with torch.no_grad():
            ta = T(xa)
        sn = S(x)
    l1 = code.scale * torch.mean(kl_loss(F.log_softmax(sa, dim=1),
                                         F.softmax(ta.detach() / code.temp_adv, dim=1)))
    l2 = code.scale * torch.mean(kl_loss(F.log_softmax(sn, dim=1),
                                         F.softmax(tn.detach() / code.temp_nat, dim=1)))
    code.temps(ta, tn)
    code.weights(l1.item(), l2.item())
    if code.name == "ciard" and code.preset != "paper":
        total = 1 * l1 + 1 * l2
    else:
        total = code.weight["adv_loss"] * l1 + code.weight["nat_loss"] * l2
    if code.name == "ciard":
        idx = (torch.argmax(na, dim=1) != y).nonzero(as_tuple=True)[0]
        l3 = kl_loss(F.log_softmax(sa[idx] / 5, dim=1), F.softmax(na[idx].detach(), dim=1))
        if l3.numel() > 0:
            l3 = torch.mean(l3)
            c = scale_to_magnitude(float(l1.item()), float(l2.item()), float(l3.item()))
            total = total - c * l3
        if parts is not None:
            parts.update(l1=l1, l2=l2, l3=l3, ta=ta)
    return total


def _state(m, code: Code) -> None:
    """Start both from a state off its initial values (after some steps)."""
    m.w_adv, m.w_nat, m.l0 = 0.35, 0.65, (0.03, 0.11)
    code.weight = {"adv_loss": 0.35, "nat_loss": 0.65}
    code.init_adv, code.init_nat = 0.03, 0.11
    if code.name != "mtard":
        m.tau_adv, m.tau_nat = code.temp_adv, code.temp_nat = 1.4, 2.25


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("name,preset", CASES)
def test_loss_grads_bn_and_state(name, preset, dataset, bn):
    classes = DATASETS[dataset]
    nets = _nets(classes, bn)
    ref = copy.deepcopy(nets)
    x, xa, y = _batch(classes)
    m, code = _make(name, nets, dataset, preset), Code(name, preset, dataset)
    _state(m, code)
    nets["s"].eval()
    ref["s"].eval()
    loss = m.loss(x, xa, y)
    expected = ref_loss(code, ref, x, xa, y)
    assert_same_loss_and_grads(loss, expected, list(nets["s"].parameters()),
                               list(ref["s"].parameters()))
    # fixed teachers are frozen; CIARD's trained one gets nothing from the student's objective
    assert not any(q.requires_grad for q in nets["c"].parameters())
    t_params = list(nets["t"].parameters())
    assert all(q.requires_grad for q in t_params) == (name == "ciard")
    if name == "ciard":
        grads = torch.autograd.grad(loss, t_params, allow_unused=True)
        assert all(g is None or not g.any() for g in grads)
    _assert_same_buffers(nets, ref)
    assert (m.w_adv, m.w_nat) == (code.weight["adv_loss"], code.weight["nat_loss"])
    assert (m.tau_adv, m.tau_nat) == (code.temp_adv, code.temp_nat)
    assert m.l0 == (0.03, 0.11)


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("preset", ["faithful", "paper"])
def test_ciard_teacher_loss_and_push_term(preset, bn):
    nets = _nets(10, bn)
    ref = copy.deepcopy(nets)
    x, xa, y = _batch(10)
    m, code = _make("ciard", nets, "cifar10", preset), Code("ciard", preset, "cifar10")
    m.epoch = 50 if preset == "faithful" else 299  # 1-based 51 and 300: the teacher steps
    parts: dict = {}
    loss = m.loss(x, xa, y)
    expected = ref_loss(code, ref, x, xa, y, parts)
    torch.testing.assert_close(loss, expected, **TOL)
    # the push term is there, scaled to the magnitude of L1 and L2 by hand
    l1, l2, l3 = (parts[k].item() for k in ("l1", "l2", "l3"))
    c = 10 ** (min(math.floor(math.log10(l1)), math.floor(math.log10(l2)))
               - math.floor(math.log10(l3)))
    w = (1, 1) if preset == "faithful" else (code.weight["adv_loss"], code.weight["nat_loss"])
    assert loss.item() == pytest.approx(w[0] * l1 + w[1] * l2 - c * l3, rel=1e-12)
    assert c != 1 or l3 > 0.1 * l1
    # the teacher's objective: CE of the ONE T_adv(x') forward of loss(), in train mode
    t_loss = m.teacher_loss(x, xa, y)
    want = F.cross_entropy(parts["ta"], y)
    torch.testing.assert_close(t_loss, want, **TOL)
    got_g = torch.autograd.grad(t_loss, list(nets["t"].parameters()))
    want_g = torch.autograd.grad(want, list(ref["t"].parameters()))
    for g, w_ in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(g, w_, **TOL)
    if bn:  # T_adv(x) and T_adv(x'): two BN updates, none from the teacher's objective
        assert nets["t"].b1.num_batches_tracked.item() == 2
    _assert_same_buffers(nets, ref)
    m.epoch = 49  # 1-based 50: the LR is already 1e-4 but the script does not step yet
    m.loss(x, xa, y)
    assert m.teacher_loss(x, xa, y) is None


def test_ciard_without_misclassified_samples_has_no_push_term():
    nets = _nets(10, True)
    ref = copy.deepcopy(nets)
    x, xa, _ = _batch(10)
    with torch.no_grad():
        y = nets["c"].eval()(xa).argmax(1)  # T_nat(x') is right on every sample
    m, code = _make("ciard", nets), Code("ciard", "faithful", "cifar10")
    parts: dict = {}
    torch.testing.assert_close(m.loss(x, xa, y), ref_loss(code, ref, x, xa, y, parts), **TOL)
    torch.testing.assert_close(m.loss(x, xa, y), parts["l1"] + parts["l2"], rtol=1e-3, atol=0)


def scale_to_magnitude(a: float, b: float, c: float) -> float:
    """CIARD's scale_to_magnitude as their script writes it, on python floats."""
    a, b, c = (v + 1e-7 if math.isclose(v, 0, rel_tol=1e-9) else v for v in (a, b, c))
    target = min(math.floor(math.log10(abs(a))), math.floor(math.log10(abs(b))))
    return 10 ** (target - math.floor(math.log10(abs(c))))


def test_magnitude_scale_by_hand():
    def scale(a: float, b: float, c: float) -> float:
        return magnitude_scale(*(torch.tensor(v, dtype=torch.float64) for v in (a, b, c))).item()

    assert scale(0.0234, 0.5, 0.00012) == 100  # min(-2, -1) - (-4)
    assert scale(3.0, 20.0, 0.5) == 10
    assert scale(0.03, 0.04, 7.0) == pytest.approx(0.01)
    assert scale(0.03, 0.04, 0.0) == 10**5  # 0 -> 1e-7: -2 - (-7)
    assert scale(-0.3, 2e-9, 1e-12) == 10**3  # by |value|: min(-1, -9) - (-12)
    g = torch.Generator().manual_seed(0)  # on the device, the script's floats exactly
    for v in (10 ** (torch.rand(300, 3, generator=g, dtype=torch.float64) * 16 - 8)).tolist():
        assert scale(*v) == scale_to_magnitude(*v), v


@pytest.mark.parametrize("name", ["mtard", "bmtard", "ciard"])
def test_weights_and_temperatures_over_several_steps(name):
    """Five steps on different batches from the initial state: the first step's losses are the
    references, then the weights (and temperatures) move as the scripts' floats do."""
    nets = _nets(10, True)
    ref = copy.deepcopy(nets)
    m, code = _make(name, nets), Code(name, "faithful", "cifar10")
    taus = []
    for k in range(5):
        g = torch.Generator().manual_seed(k)
        x = torch.rand(8, 3, 8, 8, generator=g, dtype=torch.float64)
        xa = (x + 0.03 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
        y = torch.randint(0, 10, (8,), generator=g)
        m.loss(x, xa, y)
        ref_loss(code, ref, x, xa, y)
        # on the device, the scripts' python floats to the bit
        assert (float(m.w_nat), float(m.w_adv)) == (code.weight["nat_loss"],
                                                    code.weight["adv_loss"])
        assert (float(m.tau_adv), float(m.tau_nat)) == (code.temp_adv, code.temp_nat)
        taus.append((float(m.tau_adv), float(m.tau_nat)))
    assert m.l0 == (code.init_adv, code.init_nat)
    assert 0 < m.w_nat < 1 and m.w_nat != 0.5
    if name == "mtard":
        assert set(taus) == {(1.0, 1.0)}
    else:  # one temperature rises by 0.001 a step, the other is held at its floor 1
        assert all(max(t) == pytest.approx(1 + 0.001 * (k + 1)) and min(t) == 1.0
                   for k, t in enumerate(taus))


def test_rate_decays():
    """MTARD / B-MTARD / CIARD fixed: x0.1 at the end of 1-based epochs 215, 260, 285. CIARD's
    code multiplies inside its batch loop: after EVERY step of those epochs."""
    for name, preset, per_step in [("mtard", "faithful", False), ("bmtard", "faithful", False),
                                   ("ciard", "fixed", False), ("ciard", "faithful", True)]:
        m = _make(name, _nets(10, False), preset=preset)
        for epoch in (0, 213, 215, 258):  # 1-based 1, 214, 216, 259
            m.epoch = epoch
            m.after_step()
            m.on_epoch_end({})
        assert m.weight_rate == 0.025, name
        m.epoch = 214  # 1-based 215
        for _ in range(3):
            m.after_step()
        m.on_epoch_end({})
        k = 3 if per_step else 1
        assert m.weight_rate == pytest.approx(0.025 * 0.1**k), (name, preset)
        assert m.temp_rate == pytest.approx((0 if name == "mtard" else 1e-3) * 0.1**k)


def test_state_dict_round_trip():
    m = _make("bmtard", _nets(10, True))
    x, xa, y = _batch(10)
    m.loss(x, xa, y)
    m.loss(x, xa.flip(0), y)
    state = m.state_dict()
    fresh = _make("bmtard", _nets(10, True))
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state and state["l0"] is not None and state["w_nat"] != 0.5
    assert all(isinstance(v, float | tuple) for v in state.values())  # weights-only safe


@pytest.mark.parametrize("steps", [10, 1])
@pytest.mark.parametrize("name", ["mtard", "bmtard", "ciard"])
def test_attack(name, steps):
    """A_CE: S eval, x + 0.001 N(0, I) not clamped, CE mean; CIARD first runs S(x) and
    T_adv(x) in train mode (their BN updates change the eval-mode student it attacks)."""
    nets = _nets(10, True)
    ref = copy.deepcopy(nets)
    x, _, y = _batch(10)
    m = _make(name, nets, steps=steps)
    torch.manual_seed(123)
    got = m.attack(x, y)

    def reference(n, pre=True, start="normal", clamp=False, train=False):
        if name == "ciard" and pre:
            n["s"].train()(x)
            with torch.no_grad():
                n["t"].train()(x)
        S = n["s"].train() if train else n["s"].eval()
        obj = lambda xa: F.cross_entropy(S(xa), y)  # noqa: E731
        torch.manual_seed(123)
        return ref_pgd(obj, x, EPS, STEP, steps, start, clamp), obj

    want, obj = reference(ref)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    _assert_same_buffers(nets, ref)
    assert (got - x).abs().max() <= EPS + 1e-12 and got.min() >= 0 and got.max() <= 1
    with torch.no_grad():
        assert obj(got) > obj(x)
    variants = [dict(start="uniform"), dict(train=True)]
    if steps == 1:
        variants.append(dict(clamp=True))
    if name == "ciard":
        variants.append(dict(pre=False))
    for v in variants:  # negative controls: each wrong choice gives another x'
        bad, _ = reference(_nets(10, True), **v)
        assert (bad - got).abs().max() > 1e-6, v


def test_ciard_full_step_reuses_the_pre_attack_forwards():
    """attack() then loss() of the same batch: S(x) and T_adv(x) run once, before the attack."""
    nets = _nets(10, True)
    ref = copy.deepcopy(nets)
    x, _, y = _batch(10)
    m, code = _make("ciard", nets), Code("ciard", "faithful", "cifar10")
    torch.manual_seed(7)
    xa = m.attack(x, y)
    loss = m.loss(x, xa, y)
    assert nets["s"].b1.num_batches_tracked.item() == 2  # S(x), S(x')
    assert nets["t"].b1.num_batches_tracked.item() == 2  # T_adv(x), T_adv(x')
    # the reference replays the script: pre-attack forwards, the attack, then the losses
    S = ref["s"]
    torch.manual_seed(7)
    sn = S.train()(x)
    with torch.no_grad():
        tn = ref["c"].eval()(x)
        ref["t"].train()(x)
    S.eval()
    xa_ref = ref_pgd(lambda z: F.cross_entropy(S(z), y), x, EPS, STEP, 10, "normal", False)
    torch.testing.assert_close(xa, xa_ref, rtol=0, atol=1e-12)
    sa, ta, na = S.train()(xa_ref), ref["t"].train()(xa_ref), ref["c"](xa_ref)
    l1 = torch.mean(kl_loss(F.log_softmax(sa, dim=1), F.softmax(ta.detach(), dim=1)))
    l2 = torch.mean(kl_loss(F.log_softmax(sn, dim=1), F.softmax(tn, dim=1)))
    idx = (na.argmax(1) != y).nonzero(as_tuple=True)[0]
    l3 = torch.mean(kl_loss(F.log_softmax(sa[idx] / 5, dim=1), F.softmax(na[idx], dim=1)))
    want = l1 + l2 - scale_to_magnitude(l1.item(), l2.item(), l3.item()) * l3
    torch.testing.assert_close(loss, want, **TOL)
    g = torch.autograd.grad(loss, list(nets["s"].parameters()))
    g_ref = torch.autograd.grad(want, list(S.parameters()))
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    _assert_same_buffers(nets, ref)
    del code


def _p(name, dataset="cifar10", preset="faithful"):
    return registry.get(name).resolve(preset, dataset)


def test_presets_and_schedules():
    for name in ("mtard", "bmtard"):
        for dataset in DATASETS:
            p = _p(name, dataset)
            assert (p.epochs, p.milestones, p.seed, p.lr, p.momentum) == (
                300, (215, 260, 285), 0, 0.1, 0.9)
            assert (p.eps, p.step, p.steps, p.batch_size, p.weight_decay) == (
                EPS, STEP, 10, 128, 2e-4)
            assert p.scale == (10.0 if dataset == "cifar100" else 1.0)
            assert p.lr_at(214) == 0.1 and p.lr_at(215) == pytest.approx(0.01)
            assert (p.weight_rate, p.temp_rate) == (0.025, 0.0 if name == "mtard" else 1e-3)
    c = _p("ciard")
    assert (c.teacher_lr, c.teacher_momentum, c.teacher_weight_decay) == (1e-4, 0.1, 2e-4)
    assert (c.adaptive, c.rate_per_step, _p("ciard", preset="paper").adaptive) == (
        False, True, True)
    assert not _p("ciard", preset="fixed").rate_per_step
    # the per-epoch LRs the script sets (1-based epoch e = 0-based + 1)
    for e in range(300):
        e1 = e + 1
        lr = 0.1 if e1 < 150 else 0.1 * (0.5 + 0.5 * math.cos(math.pi * (e1 - 150) / 150)) \
            * math.exp(-0.01 * (e1 - 150) ** 2 / 150**2)
        t_lr = 0 if e1 < 50 else 1e-4 * (0.5 + 0.5 * math.cos(math.pi * (e1 - 50) / 250)) \
            * math.exp(-0.01 * (e1 - 50) ** 2 / 250**2)
        assert c.lr_at(e, step=3, steps_per_epoch=391) == pytest.approx(lr, abs=1e-15)
        assert c.teacher_lr_at(e) == pytest.approx(t_lr, abs=1e-18)
    assert c.lr_at(299) == pytest.approx(0, abs=1e-17)  # epoch 300 runs at LR 0


def test_paper_presets_carry_the_papers_teachers():
    for name, clean in [("mtard", "wrn34_10"), ("bmtard", "resnet56"), ("ciard", "resnet56")]:
        r = resolve(Cell(name, "cifar10", preset="paper"))
        assert r.config["teacher"].startswith("trades-faithful-cifar10-wrn34_10-")
        assert r.config["clean_teacher"].startswith(f"standard-faithful-cifar10-{clean}-")
        assert r.params.selection == name
        f = resolve(Cell(name, "cifar10"))
        assert f.config["clean_teacher"].startswith("standard-faithful-cifar10-resnet18-")
        assert f.params.selection is None
    assert registry.get("ciard").trains_teacher and not registry.get("mtard").trains_teacher


# --- resume: interrupted mid-epoch, then resumed, ends bit-identical ------------------------

RESUME = {  # digits, 2 epochs, 2 attack steps; CIARD's teacher steps from epoch 0 and its rate
    # bug (x0.1 after every step) strikes inside epoch 1, the interrupted one
    "mtard": (), "bmtard": (),
    "ciard": (("teacher_from", 0), ("teacher_milestones", (0,)), ("rate_milestones", (2,))),
}


def _trainer(method: str, out: Path) -> Trainer:
    torch.manual_seed(11)
    teacher = create_model("small_cnn", num_classes=10, in_channels=1)
    clean = create_model("small_cnn_nobn", num_classes=10, in_channels=1)
    cell = Cell(method, select_every=5, overrides=(("epochs", 2), ("steps", 2), *RESUME[method]))
    return Trainer(resolve(cell), RunOptions(out=out, log=lambda *_: None), teacher, clean)


@pytest.mark.parametrize("method", list(RESUME))
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path, method: str,
                                                      monkeypatch) -> None:
    """Killed at batch 6 of the second epoch (its weights, state and RNG already moved on),
    resumed by a fresh Trainer from the first epoch's checkpoint: the same bits as a run never
    interrupted."""
    got, want = killed_and_resumed(lambda out: _trainer(method, out), tmp_path, monkeypatch)
    assert got["epoch"] == want["epoch"] == 2
    state = want["method"]
    assert state["l0"] is not None and state["w_nat"] != 0.5
    if method != "mtard":
        assert state["tau_adv"] != 1.0 or state["tau_nat"] != 1.0
    if method == "ciard":
        assert set(want["models"]) == {"student", "teacher"}
        assert want["optims"]["teacher"]["state"]  # momentum buffers: the teacher stepped
        assert state["weight_rate"] < 0.025 * 0.1**2  # decayed after every step of epoch 1


def test_selection_rules_of_the_scripts():
    """The epochs at which the scripts evaluate (1-based): MTARD and B-MTARD `epoch == 1`, every
    20 before 215 and every epoch from 215; CIARD `epoch == 1 or epoch % 10 == 0 or epoch >=
    250`. Both score (clean + PGD-20 at step 0.003) / 2."""
    from bench.train.selection import rule

    code = {"bmtard": lambda e: e == 1 or (e % 20 == 0 and e < 215) or e >= 215,
            "ciard": lambda e: e == 1 or e % 10 == 0 or e >= 250}
    for name, due in code.items():
        r = rule(name)
        assert [r.due(e - 1, 300, 1) for e in range(1, 301)] == [due(e) for e in range(1, 301)]
        assert (r.attack, r.score) == ("pgd20s", "clean+adv")


def test_ciard_rule_keeps_the_best_trained_teacher(tmp_path: Path) -> None:
    """CIARD's scripts keep the best (clean + PGD-20) / 2 of the student AND of its trained
    teacher: the teacher's is saved as `teacher_best`, its score logged, never evaluated as a
    student checkpoint."""
    torch.manual_seed(11)
    teacher = create_model("small_cnn", num_classes=10, in_channels=1)
    clean = create_model("small_cnn_nobn", num_classes=10, in_channels=1)
    cell = Cell("ciard", overrides=(("epochs", 2), ("steps", 2), ("selection", "ciard"),
                                    *RESUME["ciard"]))
    tr = Trainer(resolve(cell), RunOptions(out=tmp_path, log=lambda *_: None), teacher, clean)
    finals = tr.train()
    assert "teacher_best" not in finals
    scores = [(h["teacher_clean"] + h["teacher_pgd20s"]) / 2 for h in tr.history]
    assert len(scores) == 2  # 1-based epoch 1 and the last epoch are due
    assert tr.best["teacher_best"] == max(scores)
    saved = checkpoint.load_file(tr.dir / "teacher_best.pt")
    at = scores.index(max(scores))  # the epoch whose teacher was kept
    state = checkpoint.load_file(tr.ckpt_path if at == 1 else tr.dir / "ckpt.prev.pt")
    same(saved["models"]["student"], state["models"]["teacher"], "teacher_best")
    # and it is reachable by name (bench eval / transfer RUN:teacher_best), in its architecture
    from bench.train import runs

    net = runs.load(tmp_path, runs.find(tmp_path, tr.r.id), "teacher_best")
    same(dict(net.state_dict()), dict(saved["models"]["student"]), "loaded teacher_best")
