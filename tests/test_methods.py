"""Every method against docs/methods.md, written out independently of the method files.

For each method and each data set's `faithful` preset: the loss value, its gradients (detach
points), the BatchNorm running statistics it leaves (order and count of train-mode forwards),
the training attack (modes, random start, objective), the LR schedule and the preset values.
The KL, the PGD loop and the forward sequences below never call the methods' helpers or
`bench.eval.attacks`. Everything runs in float64 on tiny models, so comparisons are tight.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.core import registry

DATASETS = {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200}
EPS, STEP = 8 / 255, 2 / 255
TOL = dict(rtol=1e-7, atol=1e-9)  # float64: far tighter than the 1e-5 the formulas need


def _spec(name: str, dataset: str) -> dict:
    """The methods.md values of `name`'s faithful preset on `dataset` (Params field names)."""
    c100, tiny = dataset == "cifar100", dataset == "tinyimagenet"
    if name == "peeraid":
        if tiny:
            return dict(t=1.0, tp=1.0, l1=0.035, l2=35.0, l3=20.0, g1=1.0, g2=100.0,
                        epochs=200, milestones=(99, 149), swa=True, kl_reduction="mean")
        return dict(t=5.0, tp=1.0, l1=0.0, l2=1.0, l3=1.0, g1=1.0, g2=1.0 if c100 else 0.1,
                    epochs=300, milestones=(214, 259, 284), swa=True, kl_reduction="mean")
    if name == "rslad":
        return dict(scale=10.0 if c100 else 1.0, w_adv=5 / 6, w_nat=1 / 6, kl_eps=1e-5,
                    epochs=300, milestones=(215, 260, 285), seed=0)
    if name == "ard":
        return dict(t=30.0, a=1.0, kl_reduction="mean", batch_size=256 if c100 else 128,
                    epochs=200, milestones=(100, 150), lr_schedule="ard", weight_decay=2e-4)
    if name == "adaad":
        return dict(a=1.0, kl_reduction="batchmean" if c100 else "mean", weight_decay=5e-4,
                    epochs=200, milestones=(100, 150), seed=42, eps=EPS, step=STEP)
    if name == "trades":
        return dict(beta=6.0, eps=0.031, step=0.007, steps=10, kl_reduction="batchmean",
                    epochs=76, milestones=(74, 89, 99), batch_size=128, weight_decay=2e-4)
    if name == "iad":
        return dict(t=1.0, a=1.0, beta=0.1, warmup=60, kl_reduction="batchmean",
                    epochs=200, milestones=(100, 150), lr_schedule="ard", batch_size=128)
    if name == "pgdat":
        return dict(epochs=200, milestones=(100, 150))
    raise KeyError(name)


METHODS = ["peeraid", "rslad", "ard", "adaad", "trades", "iad", "pgdat"]


# --- tiny models -------------------------------------------------------------------------

class Net(nn.Module):
    """conv-BN-relu, conv-BN-relu, 2x2 pool, linear. BN running stats start far from the
    batch statistics, so the output depends strongly on train/eval mode."""

    def __init__(self, classes: int, bn: bool, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.b1 = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.b2 = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.fc = nn.Linear(32, classes)
        with torch.no_grad():
            self.fc.weight.mul_(4.0)
            for b in (self.b1, self.b2):
                if bn:
                    b.weight.copy_(0.5 + torch.rand(8, generator=g))
                    b.bias.copy_(torch.rand(8, generator=g) - 0.5)
                    b.running_mean.copy_(torch.rand(8, generator=g) - 0.5)
                    b.running_var.copy_(0.3 + 2 * torch.rand(8, generator=g))
        self.double()

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))


def _nets(classes: int, bn: bool) -> dict[str, nn.Module]:
    return {"s": Net(classes, bn, 1), "t": Net(classes, bn, 2), "p": Net(classes, bn, 3)}


def _batch(classes: int, n: int = 8):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64)
    x[:, :, 0, :2] = 0.0  # pixels on the box boundary: a clamped start would differ
    x[:, :, 7, 6:] = 1.0
    y = torch.randint(0, classes, (n,), generator=g)
    x_adv = (x + (torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1) * EPS).clamp(0, 1)
    return x, x_adv, y


def _make(name: str, nets: dict, dataset: str, **kw):
    cls = registry.get(name)
    return registry.create(name, student=nets["s"], teacher=nets["t"],
                           peer=nets["p"] if cls.needs_peer else None, dataset=dataset, **kw)


def _buffers(nets: dict) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": b for k, m in nets.items() for n, b in m.named_buffers()}


def _assert_same_buffers(a: dict, b: dict) -> None:
    ba, bb = _buffers(a), _buffers(b)
    assert ba.keys() == bb.keys()
    for k in ba:
        torch.testing.assert_close(ba[k], bb[k], rtol=0, atol=1e-12, msg=f"buffer {k}")


# --- the formulas, by hand ---------------------------------------------------------------

def KL(target, inp, reduction: str, t: float = 1.0):
    """KL(softmax(target/t) || softmax(inp/t)) written out: sum p (log p - log q)."""
    p = F.softmax(target / t, dim=1)
    e = p * (torch.log(p) - F.log_softmax(inp / t, dim=1))
    return {"sum": e.sum(), "batchmean": e.sum() / inp.shape[0],
            "mean": e.sum() / inp.numel()}[reduction]


def KL_rows(target, inp, t: float = 1.0):
    p = F.softmax(target / t, dim=1)
    return (p * (torch.log(p) - F.log_softmax(inp / t, dim=1))).sum(1)


def ref_loss(name: str, n: dict, x, xa, y, c: dict, epoch: int = 0, wrong: str | None = None):
    """methods.md's loss, replaying the authors' sequence of train/eval-mode forwards.

    `wrong` names a deliberately wrong detach point (negative controls)."""
    S, T, P = n["s"], n["t"], n["p"]
    T.eval().requires_grad_(False)
    ce = F.cross_entropy
    if name == "peeraid":
        S.train()
        P.train()
        p, s = P(xa), S(xa)
        s2, s_nat = S(xa), S(x)  # three S forwards: x', x', x
        s_peer = s.detach() if wrong == "peer-s" else s
        s_soft = s_nat.detach() if wrong == "s_nat" else s_nat
        l_peer = c["g1"] * ce(p, y) + c["g2"] * c["tp"] ** 2 * KL(s_peer / c["tp"], p / c["tp"],
                                                                  "mean")
        l_stu = (c["l1"] * ce(s2, y) + c["l2"] * c["t"] ** 2 * KL(p.detach(), s2, "mean", c["t"])
                 + c["l3"] * c["t"] ** 2 * KL(s_soft, s2, "mean", c["t"]))
        return l_peer + l_stu
    if name == "rslad":
        S.train()
        s_adv, s_nat = S(xa), S(x)
        with torch.no_grad():
            b = F.softmax(T(x), dim=1)

        def hand(s):  # the authors' hand-written KL, averaged over B*C
            return (b * torch.log(b + c["kl_eps"]) - b * F.log_softmax(s, dim=1)).mean()

        return c["scale"] * (5 / 6 * hand(s_adv) + 1 / 6 * hand(s_nat))
    if name == "ard":
        S.train()
        s_adv = S(xa)
        with torch.no_grad():
            t_nat = T(x)
        s_nat = S(x)
        return (c["a"] * c["t"] ** 2 * KL(t_nat, s_adv, "mean", c["t"])
                + (1 - c["a"]) * ce(s_nat, y))
    if name == "adaad":
        S.train()
        s_nat, s_adv = S(x), S(xa)
        with torch.no_grad():
            t_nat, t_adv = T(x), T(xa)
        r = c["kl_reduction"]
        return c["a"] * KL(t_adv, s_adv, r) + (1 - c["a"]) * KL(t_nat, s_nat, r)
    if name == "trades":
        S.train()
        logits = S(x)
        s_adv = S(xa)
        s_nat = S(x)
        if wrong == "s_nat":
            s_nat = s_nat.detach()
        return ce(logits, y) + c["beta"] * KL(s_nat, s_adv, "batchmean")
    if name == "iad":
        S.train()
        B = x.shape[0]
        s_adv = S(xa)
        with torch.no_grad():
            S(xa)  # the code's unused `basicop` forward
            t_nat, t_adv = T(x), T(xa)
            w = F.softmax(t_adv, dim=1)[torch.arange(B), y] ** c["beta"]
        w_t = w if c.get("weight_teacher") and epoch >= c["warmup"] else torch.ones_like(w)
        loss = c["a"] * c["t"] ** 2 * (w_t * KL_rows(t_nat, s_adv, c["t"])).sum() / B
        if epoch >= c["warmup"]:
            s_nat = S(x)
            if wrong == "s_nat":
                s_nat = s_nat.detach()
            loss = loss + c["a"] * ((1 - w) * KL_rows(s_nat, s_adv)).sum() / B
        return loss + (1 - c["a"]) * ce(S(x), y)
    if name == "pgdat":
        S.train()
        return ce(S(xa), y)
    raise KeyError(name)


def assert_same_loss_and_grads(loss: torch.Tensor, expected: torch.Tensor,
                               params: list[torch.Tensor],
                               ref_params: list[torch.Tensor]) -> None:
    """A method's loss against the reference written out in a test: its value, and the
    gradients of the trained networks' parameters (graphs kept for later checks)."""
    torch.testing.assert_close(loss, expected, **TOL)
    got = torch.autograd.grad(loss, params, retain_graph=True)
    want = torch.autograd.grad(expected, ref_params, retain_graph=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


def _params(name: str, nets: dict) -> list[torch.Tensor]:
    ps = list(nets["s"].parameters())
    return ps + list(nets["p"].parameters()) if name == "peeraid" else ps


LOSS_CASES = [("peeraid", 0, {}), ("rslad", 0, {}), ("ard", 0, {}), ("ard", 0, {"a": 0.3}),
              ("adaad", 0, {}), ("adaad", 0, {"a": 0.3}), ("trades", 0, {}), ("iad", 59, {}),
              ("iad", 60, {}), ("iad", 60, {"a": 0.3}), ("iad", 199, {}), ("pgdat", 0, {})]


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("name,epoch,over", LOSS_CASES,
                         ids=[f"{n}-e{e}" + "".join(f"-{k}{v}" for k, v in o.items())
                              for n, e, o in LOSS_CASES])
def test_loss_grads_and_bn_updates(name, epoch, over, dataset, bn):
    classes = DATASETS[dataset]
    nets = _nets(classes, bn)
    ref = copy.deepcopy(nets)
    x, xa, y = _batch(classes)
    m = _make(name, nets, dataset, **over)
    m.epoch = epoch
    for k in ("s", "p"):  # the loss must put the networks in train mode itself
        nets[k].eval()
        ref[k].eval()
    loss = m.loss(x, xa, y)
    c = {**_spec(name, dataset), **over}
    expected = ref_loss(name, ref, x, xa, y, c, epoch)
    assert_same_loss_and_grads(loss, expected, _params(name, nets), _params(name, ref))
    assert loss.item() > 0
    _assert_same_buffers(nets, ref)  # order and count of train-mode forwards


@pytest.mark.parametrize("name,epoch,wrong", [("peeraid", 0, "peer-s"), ("peeraid", 0, "s_nat"),
                                              ("trades", 0, "s_nat"), ("iad", 60, "s_nat")])
def test_detach_points_matter(name, epoch, wrong):
    """Negative control: detaching where methods.md says NOT to changes the student gradient,
    so the gradient comparison above does check the detach points."""
    nets = _nets(10, True)
    ref = copy.deepcopy(nets)
    x, xa, y = _batch(10)
    m = _make(name, nets, "cifar10")
    m.epoch = epoch
    got = torch.autograd.grad(m.loss(x, xa, y), list(nets["s"].parameters()))
    bad = ref_loss(name, ref, x, xa, y, _spec(name, "cifar10"), epoch, wrong=wrong)
    want = torch.autograd.grad(bad, list(ref["s"].parameters()))
    assert max((g - w).abs().max().item() for g, w in zip(got, want, strict=True)) > 1e-6


def test_bn_update_counts():
    """Train-mode student forwards per loss(): PeerAiD 3 (x', x', x), ARD 2 (x', x even at a=1),
    AdaAD 2 (x, x'), TRADES 3 (x, x', x), IAD 3 before warm-up and 4 from it, RSLAD 2."""
    counts = {("peeraid", 0): 3, ("ard", 0): 2, ("adaad", 0): 2, ("trades", 0): 3,
              ("iad", 0): 3, ("iad", 60): 4, ("rslad", 0): 2, ("pgdat", 0): 1}
    for (name, epoch), k in counts.items():
        nets = _nets(10, True)
        x, xa, y = _batch(10)
        m = _make(name, nets, "cifar10")
        m.epoch = epoch
        m.loss(x, xa, y)
        assert nets["s"].b1.num_batches_tracked.item() == k, name
        assert nets["t"].b1.num_batches_tracked.item() == 0, name


# --- non-faithful presets ----------------------------------------------------------------

def test_named_presets():
    x, xa, y = _batch(10)
    # RSLAD exact-kl: exactly the mean KL of methods.md
    nets = _nets(10, True)
    ref = copy.deepcopy(nets)
    m = _make("rslad", nets, "cifar10", preset="exact-kl")
    S, T = ref["s"].train(), ref["t"].eval()
    s_adv, s_nat = S(xa), S(x)
    t = T(x).detach()
    want = 5 / 6 * KL(t, s_adv, "mean") + 1 / 6 * KL(t, s_nat, "mean")
    torch.testing.assert_close(m.loss(x, xa, y), want, **TOL)
    # IAD paper-weights: the teacher term weighted by w_i from the warm-up on
    nets = _nets(10, True)
    ref = copy.deepcopy(nets)
    m = _make("iad", nets, "cifar10", preset="paper-weights")
    m.epoch = 60
    want = ref_loss("iad", ref, x, xa, y, {**_spec("iad", "cifar10"), "weight_teacher": True}, 60)
    torch.testing.assert_close(m.loss(x, xa, y), want, **TOL)
    # TRADES merged / IAD lean / PeerAiD merged: same value, fewer BN updates
    for name, preset, epoch, k in [("trades", "merged", 0, 2), ("iad", "lean", 60, 2),
                                   ("peeraid", "merged", 0, 2)]:
        a, b = _nets(10, True), _nets(10, True)
        ma, mb = _make(name, a, "cifar10"), _make(name, b, "cifar10", preset=preset)
        ma.epoch = mb.epoch = epoch
        torch.testing.assert_close(ma.loss(x, xa, y), mb.loss(x, xa, y), **TOL)
        assert b["s"].b1.num_batches_tracked.item() == k, name
    # AdaAD large-radius
    p = registry.get("adaad").resolve("large-radius", "cifar100")
    assert (p.eps, p.step, p.kl_reduction) == (16 / 255, 4 / 255, "batchmean")


# --- the training attacks ----------------------------------------------------------------

def ref_pgd(obj, x, eps, step, steps, start, clamp_start):
    """L-inf PGD as every reference code writes it."""
    if start == "uniform":
        xa = x + torch.empty_like(x).uniform_(-eps, eps)
    else:
        xa = x + 0.001 * torch.randn_like(x)
    if clamp_start:
        xa = xa.clamp(0.0, 1.0)
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(obj(xa), xa)
        xa = xa.detach() + step * torch.sign(g)
        xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0.0, 1.0)
    return xa.detach()


def ref_attack(name: str, n: dict, x, y, variant: str | None = None, steps: int = 10):
    """methods.md's attack; `variant` is a deliberately wrong mode/start/objective.

    Returns (x_adv, objective)."""
    S, T, P = n["s"], n["t"], n["p"]
    T.eval().requires_grad_(False)
    start, clamp, eps, step = "normal", False, EPS, STEP
    if variant == "uniform":
        start = "uniform"
    if variant == "clamped":
        clamp = True

    def mode(net, train):
        return net.train() if train != (variant == "flip-mode") else net.eval()

    if name == "peeraid":
        S, P = mode(S, False), P.eval()
        with torch.no_grad():
            z = P(x)
        obj = lambda xa: KL(z, S(xa), "sum")  # noqa: E731
    elif name == "rslad":
        S = mode(S, False)
        with torch.no_grad():
            t = T(x)
        obj = lambda xa: KL(t, S(xa), "sum")  # noqa: E731
    elif name in ("ard", "iad"):
        S = mode(S, True)
        start = "normal" if variant == "normal" else "uniform"
        obj = lambda xa: F.cross_entropy(S(xa), y, reduction="sum")  # noqa: E731
    elif name == "adaad":
        S = mode(S, False)
        with torch.no_grad():
            t_fixed = T(x)
        if variant == "fixed-teacher":
            obj = lambda xa: KL(t_fixed, S(xa), "sum")  # noqa: E731
        else:
            obj = lambda xa: KL(T(xa), S(xa), "sum")  # noqa: E731
    elif name == "trades":
        S, eps, step = mode(S, False), 0.031, 0.007
        with torch.no_grad():
            s_nat = S(x)
        obj = lambda xa: KL(s_nat, S(xa), "sum")  # noqa: E731
    elif name == "pgdat":
        S, start, clamp = mode(S, True), "uniform", variant != "unclamped"
        obj = lambda xa: F.cross_entropy(S(xa), y)  # noqa: E731
    else:
        raise KeyError(name)
    return ref_pgd(obj, x, eps, step, steps, start, clamp), obj


WRONG = {"peeraid": ["flip-mode", "uniform", "clamped"],
         "rslad": ["flip-mode", "uniform", "clamped"],
         "ard": ["flip-mode", "normal", "clamped"], "iad": ["flip-mode", "normal", "clamped"],
         "adaad": ["flip-mode", "fixed-teacher", "uniform", "clamped"],
         "trades": ["flip-mode", "uniform", "clamped"], "pgdat": ["flip-mode", "unclamped"]}


@pytest.mark.parametrize("steps", [10, 1])
@pytest.mark.parametrize("name", METHODS)
def test_attack(name, steps):
    """The method's attack equals methods.md's PGD (same RNG seed), stays in the eps ball and
    [0, 1], raises its objective; each wrong mode / start / objective gives another x'.
    The 1-step run makes a clamped start visible: over 10 steps the projection erases it."""
    nets = _nets(10, True)
    ref = copy.deepcopy(nets)
    x, _, y = _batch(10)
    m = _make(name, nets, "cifar10", steps=steps)
    torch.manual_seed(123)
    got = m.attack(x, y)
    torch.manual_seed(123)
    want, obj = ref_attack(name, ref, x, y, steps=steps)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    _assert_same_buffers(nets, ref)  # train-mode attacks: one BN update a step; eval: none
    eps = 0.031 if name == "trades" else EPS
    assert (got - x).abs().max() <= eps + 1e-12
    assert got.min() >= 0 and got.max() <= 1
    with torch.no_grad():
        assert obj(got) > obj(x)
    for variant in WRONG[name]:  # negative controls: the test tells these apart
        if steps > 1 and variant in ("clamped", "unclamped"):
            continue
        torch.manual_seed(123)
        bad, _ = ref_attack(name, _nets(10, True), x, y, variant, steps=steps)
        assert (bad - got).abs().max() > 1e-6, variant


def test_adaad_attack_flows_through_teacher():
    """The teacher is re-evaluated at x' each step and not detached: the gradient w.r.t. x'
    differs from the one with T(x') detached."""
    nets = _nets(10, True)
    x, _, y = _batch(10)
    xa = x.clone().requires_grad_(True)
    S, T = nets["s"].eval(), nets["t"].eval().requires_grad_(False)
    (g1,) = torch.autograd.grad(KL(T(xa), S(xa), "sum"), xa)
    (g2,) = torch.autograd.grad(KL(T(xa).detach(), S(xa), "sum"), xa)
    assert (g1.sign() != g2.sign()).any()


# --- schedules and presets ---------------------------------------------------------------

def _p(name, dataset="cifar10", preset="faithful", **kw):
    return registry.get(name).resolve(preset, dataset, **kw)


def test_lr_schedules():
    ard, fixed = _p("ard"), _p("ard", preset="fixed")
    assert [ard.lr_at(e) for e in (0, 99)] == [0.1, 0.1]
    assert all(ard.lr_at(e) == pytest.approx(0.01) for e in (100, 149, 150, 199))
    assert fixed.lr_at(99) == 0.1 and fixed.lr_at(100) == pytest.approx(0.01)
    assert fixed.lr_at(149) == pytest.approx(0.01) and fixed.lr_at(150) == pytest.approx(0.001)
    iad, iad_fixed = _p("iad"), _p("iad", preset="fixed")
    assert iad.lr_at(99) == 0.1 and iad.lr_at(150) == pytest.approx(0.01)
    assert iad_fixed.lr_at(150) == pytest.approx(0.001)
    peer = _p("peeraid")
    assert peer.lr_at(213) == 0.1 and peer.lr_at(214) == pytest.approx(0.01)
    assert peer.lr_at(259) == pytest.approx(0.001) and peer.lr_at(284) == pytest.approx(1e-4)
    rslad = _p("rslad")
    assert rslad.lr_at(214) == 0.1 and rslad.lr_at(215) == pytest.approx(0.01)
    adaad = _p("adaad")
    assert adaad.lr_at(99) == 0.1 and adaad.lr_at(100) == pytest.approx(0.01)
    assert adaad.lr_at(150) == pytest.approx(0.001)
    trades = _p("trades")  # the script's 1-based "epoch >= 75" is 0-based epoch 74
    assert trades.lr_at(73) == 0.1 and trades.lr_at(74) == pytest.approx(0.01)
    assert trades.lr_at(89) == pytest.approx(0.001) and trades.epochs == 76
    tiny_wrn = _p("peeraid", "tinyimagenet", arch="wrn34_10")
    assert (tiny_wrn.epochs, tiny_wrn.milestones) == (100, (49, 79))
    assert tiny_wrn.lr_at(48) == 0.1 and tiny_wrn.lr_at(49) == pytest.approx(0.01)


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("name", METHODS)
def test_faithful_presets(name, dataset):
    p = _p(name, dataset)
    for key, value in _spec(name, dataset).items():
        got = getattr(p, key)
        assert got == (pytest.approx(value) if isinstance(value, float) else value), key
    common = dict(lr=0.1, momentum=0.9, steps=10)
    if name != "trades":
        common.update(eps=EPS, step=STEP)
    for key, value in common.items():
        assert getattr(p, key) == pytest.approx(value), key
    cls = registry.get(name)
    assert cls.needs_teacher == (name in ("rslad", "ard", "adaad", "iad"))
    assert cls.needs_peer == (name == "peeraid")
