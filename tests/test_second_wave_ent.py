"""IGDM, SAAD and ABSLD against their authors' code, written out independently of the methods.

Loss values and gradients (float64, tiny BN and no-BN models), BatchNorm running statistics
(order and count of train-mode forwards), the training attacks (modes, start, objective,
eps/step), the presets, and the state updates (SAAD's entropy weights, ABSLD's per-class
temperatures) by hand. The teacher tempering of ABSLD replays the code's per-sample in-place
loop over `.detach()` aliases, so the alias bug is reproduced, not re-derived.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F
from test_methods import (
    DATASETS,
    EPS,
    KL,
    STEP,
    _assert_same_buffers,
    _batch,
    _nets,
    assert_same_loss_and_grads,
    ref_pgd,
)

from bench.core import registry

E2E = 1e-12


def _make(name: str, nets: dict, dataset: str = "cifar10", **kw):
    return registry.create(name, student=nets["s"], teacher=nets["t"], dataset=dataset, **kw)


def kl_rows(target, inp):
    p = F.softmax(target, dim=1)
    return (p * (torch.log(p) - F.log_softmax(inp, dim=1))).sum(1)


def code_tempering(z, y, tau_adv, tau_nat, aliased: bool):
    """resnet18_absld_cifar10.py's loop: two `.detach()` views of ONE tensor divided in place
    (aliased), or the intended two separate copies."""
    new_adv = z.detach() if aliased else z.detach().clone()
    new_nat = z.detach() if aliased else z.detach().clone()
    for i in range(len(y)):
        new_adv[i] = new_adv[i] / tau_adv[y[i]]
        new_nat[i] = new_nat[i] / tau_nat[y[i]]
    return new_adv, new_nat


def hand_kl(t_logits, s_logits):
    """The ABSLD/RSLAD code's kl_loss(log softmax(s), softmax(t)), averaged over B*C."""
    b = F.softmax(t_logits, dim=1)
    return (-torch.log(F.softmax(s_logits, dim=1)) * b + torch.log(b + 1e-5) * b).mean()


TAUS = (torch.linspace(0.6, 2.5, 200), torch.linspace(3.0, 0.7, 200))


def ref_loss(name: str, n: dict, x, xa, y, c: dict, epoch: int):
    S, T = n["s"], n["t"]
    T.eval().requires_grad_(False)
    if name == "igdm":
        S.train()
        d = xa - x
        with torch.no_grad():
            tp, tm = T(xa), T(x - d)
        sp, sm = S(x + d), S(x - d)
        ramp = (epoch + 1) / (200 if c["faithful"] else c["epochs"])
        return KL(tp, sp, "batchmean") + c["alpha"] * ramp * KL(tp - tm, sp - sm, "batchmean")
    if name == "saad":
        S.train()
        d = xa - x
        with torch.no_grad():
            tn, tp, tm = T(x), T(xa), T(x - d)
        sp, sm, sn = S(xa), S(x - d), S(x)
        p = F.softmax(tp, dim=1)
        h = -(p * torch.log(p + 1e-12)).sum(1)
        w = torch.clamp(5 * (h - h.min().item()), min=0.0)
        wn = (w - w.min()) / (w.max() - w.min() + 1e-8)
        ig = c["alpha"] * ((epoch + 1) / c["epochs"]) * kl_rows(tp - tm, sp - sm)
        return (w * (kl_rows(tp, sp) + ig) + c["beta"] * (1 - wn) * kl_rows(tn, sn)).mean()
    if name == "absld":
        with torch.no_grad():
            z = T(x)
        k = z.shape[1]
        za, zn = code_tempering(z, y, TAUS[0][:k].double(), TAUS[1][:k].double(), c["aliased"])
        S.train()
        sa, sn = S(xa), S(x)
        return 5 / 6 * hand_kl(za, sa) + 1 / 6 * hand_kl(zn, sn)
    raise KeyError(name)


def _spec(name: str, dataset: str, preset: str) -> dict:
    ten = dataset in ("cifar100", "tinyimagenet")
    if name == "igdm":
        return dict(alpha=10.0 if ten else 1.0, epochs=200, faithful=preset == "faithful")
    if name == "saad":
        return dict(alpha=10.0 if ten else 1.0, epochs=200, beta=0.0)
    return dict(aliased=preset == "faithful")


def _set_taus(m, k: int) -> None:
    if m.name == "absld":
        m.load_state_dict({"tau_adv": TAUS[0][:k].clone(), "tau_nat": TAUS[1][:k].clone()})


CASES = [("igdm", "faithful", 0, {}), ("igdm", "faithful", 99, {}), ("igdm", "fixed", 99, {}),
         ("igdm", "fixed", 99, {"epochs": 120}), ("saad", "faithful", 0, {}),
         ("saad", "faithful", 150, {}), ("saad", "faithful", 150, {"beta": 0.5}),
         ("absld", "faithful", 0, {}), ("absld", "fixed", 0, {})]


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("name,preset,epoch,over", CASES,
                         ids=[f"{n}-{p}-e{e}" + "".join(f"-{k}{v}" for k, v in o.items())
                              for n, p, e, o in CASES])
def test_loss_grads_and_bn_updates(name, preset, epoch, over, dataset, bn):
    classes = DATASETS[dataset]
    nets = _nets(classes, bn)
    ref = copy.deepcopy(nets)
    x, xa, y = _batch(classes)
    m = _make(name, nets, dataset, preset=preset, **over)
    _set_taus(m, classes)
    m.epoch = epoch
    nets["s"].eval()
    ref["s"].eval()
    loss = m.loss(x, xa, y)
    c = {**_spec(name, dataset, preset), **over}
    expected = ref_loss(name, ref, x, xa, y, c, epoch)
    assert_same_loss_and_grads(loss, expected, list(nets["s"].parameters()),
                               list(ref["s"].parameters()))
    assert loss.item() > 0
    _assert_same_buffers(nets, ref)


def test_bn_update_counts_and_frozen_teacher():
    """Train-mode student forwards per loss(): IGDM 2 (x+d, x-d), SAAD 3 (x', x-d, x), ABSLD 2."""
    for name, k in {"igdm": 2, "saad": 3, "absld": 2}.items():
        nets = _nets(10, True)
        x, xa, y = _batch(10)
        _make(name, nets).loss(x, xa, y)
        assert nets["s"].b1.num_batches_tracked.item() == k, name
        assert nets["t"].b1.num_batches_tracked.item() == 0, name
        assert not any(p.requires_grad for p in nets["t"].parameters())


def test_aliasing_matters_and_igdm_ramp_differs():
    """Negative controls: ABSLD faithful and fixed differ once tau_adv != tau_nat; IGDM's
    hardcoded /200 differs from /epochs when the run is not 200 epochs long."""
    x, xa, y = _batch(10)
    losses = []
    for preset in ("faithful", "fixed"):
        m = _make("absld", _nets(10, True), preset=preset)
        _set_taus(m, 10)
        losses.append(m.loss(x, xa, y).item())
    assert abs(losses[0] - losses[1]) > 1e-6
    a = _make("igdm", _nets(10, True), epochs=50)
    b = _make("igdm", _nets(10, True), preset="fixed", epochs=50)
    a.epoch = b.epoch = 9
    assert a.ramp() == 10 / 200 and b.ramp() == 10 / 50
    assert abs(a.loss(x, xa, y).item() - b.loss(x, xa, y).item()) > 1e-6


# --- attacks -------------------------------------------------------------------------------

def ref_attack(name: str, n: dict, x, y, preset: str = "faithful", variant: str | None = None,
               steps: int = 10):
    """The authors' attack; `variant` is a deliberately wrong mode/start/objective."""
    S, T = n["s"], n["t"]
    T.eval().requires_grad_(False)
    S.train() if variant == "flip-mode" else S.eval()
    start = "uniform" if variant == "uniform" else "normal"
    eps, step = EPS, STEP
    if name == "igdm":
        if preset == "faithful" and variant != "no-swap":
            eps, step = STEP, EPS  # igdm.py:49 adaad_inner_loss(step_size=8/255, epsilon=2/255)
        obj = lambda xa: KL(T(xa), S(xa), "sum")  # noqa: E731
    elif name == "saad":
        xt = x.detach().clone().requires_grad_(True)
        t = T(xt)
        (g,) = torch.autograd.grad(t[torch.arange(len(y)), y].sum(), xt)
        lam = 0.0 if variant == "no-correction" else 1.0

        def obj(xa):
            corr = torch.einsum("bchw,bchw->b", g, xa - x)
            z = t.detach().clone()
            z[torch.arange(len(y)), y] += lam * corr
            return KL(z, S(xa), "sum")
    elif name == "absld":
        with torch.no_grad():
            z = T(x)
        k = z.shape[1]
        za, _ = code_tempering(z, y, TAUS[0][:k].double(), TAUS[1][:k].double(), True)
        if variant == "untempered":
            za = z
        obj = lambda xa: KL(za, S(xa), "sum")  # noqa: E731
    else:
        raise KeyError(name)
    return ref_pgd(obj, x, eps, step, steps, start, variant == "clamped"), obj, eps


WRONG = {"igdm": ["flip-mode", "uniform", "clamped", "no-swap"],
         "saad": ["flip-mode", "uniform", "clamped", "no-correction"],
         "absld": ["flip-mode", "uniform", "clamped", "untempered"]}
ATTACKS = [("igdm", "faithful"), ("igdm", "fixed"), ("saad", "faithful"), ("absld", "faithful")]


@pytest.mark.parametrize("steps", [10, 1])
@pytest.mark.parametrize("name,preset", ATTACKS, ids=[f"{n}-{p}" for n, p in ATTACKS])
def test_attack(name, preset, steps):
    """Equal to the authors' PGD (same RNG), inside the eps ball and [0, 1], raising its
    objective; every wrong mode / start / objective / radius gives another x'."""
    nets = _nets(10, True)
    ref = copy.deepcopy(nets)
    x, _, y = _batch(10)
    m = _make(name, nets, preset=preset, steps=steps)
    _set_taus(m, 10)
    torch.manual_seed(123)
    got = m.attack(x, y)
    torch.manual_seed(123)
    want, obj, eps = ref_attack(name, ref, x, y, preset, steps=steps)
    torch.testing.assert_close(got, want, rtol=0, atol=E2E)
    _assert_same_buffers(nets, ref)  # eval-mode attacks: no BN update
    assert (got - x).abs().max() <= eps + E2E
    assert got.min() >= 0 and got.max() <= 1
    with torch.no_grad():
        assert obj(got) > obj(x)
    for variant in WRONG[name]:
        if (steps > 1 and variant == "clamped") or (variant == "no-swap" and preset != "faithful"):
            continue
        torch.manual_seed(123)
        bad, _, _ = ref_attack(name, _nets(10, True), x, y, preset, variant, steps=steps)
        assert (bad - got).abs().max() > 1e-6, variant


def test_igdm_faithful_attack_has_the_swapped_radius():
    nets = _nets(10, True)
    x, _, y = _batch(10)
    got = _make("igdm", nets).attack(x, y)
    assert (got - x).abs().max() <= STEP + E2E  # the ball is 2/255: eps and step swapped
    assert (got - x).abs().max() > STEP - 1e-6


# --- state ---------------------------------------------------------------------------------

def test_saad_entropy_weights_by_hand():
    """w = 5 (H - min H) on the teacher's entropies at x': the lowest-entropy sample gets 0 and
    the weights are not normalised (their mean is not 1)."""
    logits = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [9.0, 0.0, 1.0]],
                          dtype=torch.float64)
    p = logits.softmax(1)
    h = [-(row * (row + 1e-12).log()).sum().item() for row in p]
    from bench.methods.saad import entropy, entropy_weights

    torch.testing.assert_close(entropy(logits), torch.tensor(h, dtype=torch.float64))
    w, wn = entropy_weights(entropy(logits), 5.0)
    want = [5 * (v - min(h)) for v in h]
    torch.testing.assert_close(w, torch.tensor(want, dtype=torch.float64))
    assert w[3] == 0 and w.argmin() == 3 and abs(w.mean().item() - 1) > 0.1
    torch.testing.assert_close(wn, torch.tensor([v / (max(want) + 1e-8) for v in want],
                                                dtype=torch.float64))


def test_absld_temperatures_after_an_epoch_by_hand():
    """Per-class CE sums gathered by loss() over the epoch's batches, then the epoch-end
    update, against a hand computation; the rate drops x0.1 at the end of 1-based epoch 215
    BEFORE that epoch's update (and again after 260, 285)."""
    k = 4
    nets = _nets(k, True)
    m = _make("absld", nets)
    ref_s = copy.deepcopy(nets["s"])
    batches = [_batch(k, n=6) for _ in range(3)]
    g = torch.Generator().manual_seed(5)
    batches = [(x, xa, torch.randint(0, k, (6,), generator=g)) for x, xa, _ in batches]
    sums = {"adv": torch.zeros(k, dtype=torch.float64), "nat": torch.zeros(k, dtype=torch.float64)}
    for x, xa, y in batches:
        m.loss(x, xa, y)
        ref_s.train()
        for key, inp in (("adv", xa), ("nat", x)):
            ce = F.cross_entropy(ref_s(inp), y, reduction="none")
            for i in range(len(y)):
                sums[key][y[i]] += ce[i].item()
    got = m.pop_sums()
    assert m.pop_sums() == {}
    for key in ("adv", "nat"):
        torch.testing.assert_close(got[key].double(), sums[key], rtol=1e-5, atol=1e-6)
    for epoch, rate in [(0, 0.1), (213, 0.1), (214, 0.01), (258, 0.01), (259, 1e-3),
                        (284, 1e-4), (299, 1e-4)]:
        assert m.rate(epoch) == pytest.approx(rate), epoch
    tau = {"adv": torch.tensor([1.0, 0.55, 4.98, 2.0]), "nat": torch.tensor([1.0, 1.2, 0.8, 1.5])}
    for epoch, rate in [(3, 0.1), (214, 0.01)]:
        m.load_state_dict({"tau_adv": tau["adv"].clone(), "tau_nat": tau["nat"].clone()})
        m.epoch = epoch
        m.on_epoch_end(got)
        for key in ("adv", "nat"):
            e = [v.item() for v in got[key]]
            mean = sum(e) / k
            big = max(abs(v - mean) for v in e)
            want = [min(max(tau[key][c].item() - rate * (e[c] - mean) / big, 0.5), 5.0)
                    for c in range(k)]
            torch.testing.assert_close(m.state_dict()[f"tau_{key}"], torch.tensor(want),
                                       rtol=1e-6, atol=1e-7)
    # the class with the largest loss share gets the lowest temperature (sharper labels)
    m.load_state_dict({"tau_adv": torch.ones(k), "tau_nat": torch.ones(k)})
    m.epoch = 0
    m.on_epoch_end(got)
    assert m.state_dict()["tau_adv"].argmin() == got["adv"].argmax()


# --- presets -------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", list(DATASETS))
def test_faithful_presets(dataset):
    ten = dataset != "cifar10"
    ig = registry.get("igdm").resolve("faithful", dataset)
    assert (ig.alpha, ig.ramp_epochs, ig.swap_eps_step) == (10.0 if ten else 1.0, 200, True)
    assert (ig.epochs, ig.milestones, ig.weight_decay, ig.seed) == (200, (100, 150), 2e-4, 0)
    assert (ig.eps, ig.step, ig.kl_reduction) == (EPS, STEP, "batchmean")
    assert ig.lr_at(99) == 0.1 and ig.lr_at(100) == pytest.approx(0.01)
    sa = registry.get("saad").resolve("faithful", dataset)
    assert (sa.alpha, sa.lam, sa.w_scale, sa.beta) == (10.0 if ten else 1.0, 1.0, 5.0, 0.0)
    assert (sa.swa, sa.swa_start, sa.swa_bn) == (True, 94, "batch")
    assert (sa.epochs, sa.milestones, sa.weight_decay, sa.seed) == (200, (100, 150), 2e-4, 0)
    ab = registry.get("absld").resolve("faithful", dataset)
    assert (ab.tau_rate, ab.tau_min, ab.tau_max, ab.aliased) == (0.1, 0.5, 5.0, True)
    assert (ab.epochs, ab.milestones, ab.seed, ab.kl_eps) == (300, (215, 260, 285), 0, 1e-5)
    assert (ab.w_adv, ab.w_nat, ab.scale) == (5 / 6, 1 / 6, 1.0)
    for name in ("igdm", "saad", "absld"):
        assert registry.get(name).needs_teacher


def test_named_presets_and_teachers():
    fixed = registry.get("igdm").resolve("fixed", "cifar100")
    assert (fixed.swap_eps_step, fixed.ramp_epochs, fixed.alpha) == (False, None, 10.0)
    assert not registry.get("absld").resolve("fixed").aliased
    for name in ("igdm", "saad"):
        assert (registry.get(name).preset_teacher("paper", "cifar10")
                == "robustbench:Gowal2021Improving_28_10_ddpm_100m")
    assert registry.get("absld").preset_teacher("paper", "cifar10") == ("trades", "wrn34_10")
    # on the 15-epoch embedded budget SAAD's SWA starts at 0-based epoch 7 (95 of 200)
    assert registry.get("saad").resolve("faithful", "digits").swa_start == 7
    full = registry.get("saad").resolve("paper", "digits", budget={"epochs": 15})
    assert (full.swa_start, full.epochs, full.selection) == (94, 200, "saad")


# --- SWA BatchNorm recompute ---------------------------------------------------------------

def test_swa_bn_recompute_weights_images_or_batches():
    """PeerAiD's per-image weighting (momentum b / (n + b)) against a hand computation with an
    uneven last batch; SAAD's torch update_bn weighs each batch equally."""
    from bench.train.swa import recompute_bn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3)).double()
    model[1].momentum = 0.3
    batches = [(torch.randn(n, 2, 4, 4, dtype=torch.float64) * (i + 1) + i, torch.zeros(n))
               for i, n in enumerate((5, 5, 2))]
    with torch.no_grad():
        feats = [model[0](x) for x, _ in batches]
    means = [f.mean((0, 2, 3)) for f in feats]
    vars_ = [f.transpose(0, 1).flatten(1).var(1, unbiased=True) for f in feats]
    sizes = [len(x) for x, _ in batches]
    model.eval()
    recompute_bn(model, batches, "image")
    bn = model[1]
    want_mean = sum(b * m for b, m in zip(sizes, means, strict=True)) / sum(sizes)
    want_var = sum(b * v for b, v in zip(sizes, vars_, strict=True)) / sum(sizes)
    torch.testing.assert_close(bn.running_mean, want_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bn.running_var, want_var, rtol=1e-10, atol=1e-12)
    assert bn.momentum == 0.3 and not model.training
    recompute_bn(model, batches, "batch")
    torch.testing.assert_close(bn.running_mean, sum(means) / 3, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bn.running_var, sum(vars_) / 3, rtol=1e-10, atol=1e-12)
    assert (bn.running_mean - want_mean).abs().max() > 1e-3  # the two weightings differ


# --- model selection per paper -------------------------------------------------------------

def test_selection_rules_schedules_and_scores():
    from bench.train.selection import RULES, score, worst_class

    every = {name: [e for e in range(300) if r.due(e, 300, 1)] for name, r in RULES.items()}
    # RSLAD: 1-based 20, 40, ..., 200 before 215, then 215..300; ABSLD: every 10 before 215
    assert every["rslad"] == [e - 1 for e in range(20, 215, 20)] + list(range(214, 300))
    assert every["absld"] == [e - 1 for e in range(10, 215, 10)] + list(range(214, 300))
    assert every["common"] == every["adaad"] == list(range(300))
    assert [e for e in range(10) if RULES["common"].due(e, 10, 4)] == [0, 4, 8, 9]
    hits = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1], dtype=torch.bool)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    assert worst_class(hits, y) == pytest.approx(0.5)  # class 1: 1 of 2
    assert score(RULES["absld"], hits, y) == pytest.approx(5 / 8 + 0.5)
    assert score(RULES["rslad"], hits, y) == pytest.approx(5 / 8)
    assert (RULES["rslad"].attack, RULES["absld"].attack) == ("pgd20s", "pgd20s")
    assert score(RULES["bmtard"], hits, y, clean=0.875) == pytest.approx((0.875 + 5 / 8) / 2)


def test_paper_presets_name_their_papers_rules_and_faithful_keeps_the_common_one():
    want = {"rslad": "rslad", "ard": "ard", "adaad": "adaad", "peeraid": "peeraid",
            "igdm": "igdm", "saad": "saad", "absld": "absld"}
    for name, rule in want.items():
        cls = registry.get(name)
        assert cls.resolve("paper", "cifar10").selection == rule, name
        assert cls.resolve("faithful", "cifar10").selection is None, name


def test_selection_rules_in_a_run(tmp_path):
    """A rule decides what is evaluated, kept and reported; every row names its rule."""
    from bench.core.store import Store
    from bench.train.cells import Cell
    from bench.train.checkpoint import load_latest
    from bench.train.pipeline import EvalOptions, run_cell
    from bench.train.runner import RunOptions

    opts, store = RunOptions(out=tmp_path, log=lambda *_: None), Store(tmp_path)
    ev = EvalOptions(attacks=("clean",))
    got, hist, best = {}, {}, {}
    for rule in ("adaad", "ard", "absld", "bmtard", "common", None):
        over = (("epochs", 2),) + ((("selection", rule),) if rule else ())
        rows = run_cell(Cell("standard", overrides=over), opts, ev, store)
        got[rule] = {r["checkpoint"]: r for r in rows}
        assert {r["selection"] for r in rows} == {rule or "clean"}  # standard's own: clean
        state = load_latest(tmp_path / "runs" / rows[0]["cell_id"] / "ckpt.pt")
        hist[rule], best[rule] = state["history"], state["best"]
    assert set(got["adaad"]) == {"best", "best_clean", "last"}
    h = hist["adaad"]
    assert best["adaad"]["best_clean"] == max(e["clean"] for e in h)
    assert got["adaad"]["best_clean"]["clean"] == pytest.approx(
        max(e["clean"] for e in h), abs=1e-9)  # same split (test) in selection and evaluation
    assert set(got["ard"]) == {"last"} and got["ard"]["last"]["reported"]
    h = hist["absld"]
    assert [("pgd20s" in e, "worst_class" in e) for e in h] == [(False, False), (True, True)]
    assert best["absld"]["best"] == pytest.approx(h[1]["pgd20s"] + h[1]["worst_class"])
    h = hist["bmtard"]
    assert all("clean" in e and "pgd20s" in e for e in h) and set(got["bmtard"]) == {"best", "last"}
    assert best["bmtard"]["best"] == pytest.approx(max((e["clean"] + e["pgd20s"]) / 2 for e in h))
    assert set(got["common"]) == {"best", "last"}
    assert all("pgd10" in e for e in hist["common"])
    assert got["common"]["best"]["reported"] and not got["common"]["last"]["reported"]
    # standard training's own rule: the best clean network of every epoch, no attack run
    h = hist[None]
    assert all("clean" in e and "pgd10" not in e for e in h) and len(h) == 2
    assert best[None]["best"] == max(e["clean"] for e in h)
    assert got[None]["best"]["clean"] == pytest.approx(best[None]["best"], abs=1e-9)
    assert set(got[None]) == {"best", "last"} and got[None]["best"]["reported"]


def test_unknown_or_impossible_selection_is_one_line():
    from bench import BenchError
    from bench.train.cells import Cell, resolve

    with pytest.raises(BenchError, match="unknown selection rule 'rsald'.*rslad"):
        resolve(Cell("standard", overrides=(("selection", "rsald"),)))
    with pytest.raises(BenchError, match="keeps an SWA model, but swa is off"):
        resolve(Cell("standard", overrides=(("selection", "saad"),)))


def test_autoattack_runs_on_the_checkpoints_the_rule_reports():
    from bench.train.pipeline import EvalOptions
    from bench.train.selection import RULES

    ev = EvalOptions(attacks=("clean", "aa"))
    assert ev.attacks_for("best") == ("clean", "aa") and ev.attacks_for("last") == ("clean",)
    assert ev.attacks_for("last", RULES["ard"].reported) == ("clean", "aa")
    assert ev.attacks_for("swa_last", RULES["saad"].reported) == ("clean", "aa")
    assert ev.attacks_for("best", RULES["saad"].reported) == ("clean",)


# --- ABSLD end to end: temperatures move, and a run interrupted mid-epoch resumes exactly ------

class _Killed(Exception):
    pass


def _absld_run(out, monkeypatch, kill_at: tuple[int, int] | None):
    """ABSLD for 3 epochs on digits; `kill_at` = (epoch, batch) stops it there once (before
    that batch's step: the epoch's sums and temperatures are lost with the process)."""
    from bench.methods.absld import ABSLD

    from bench.core.store import Store
    from bench.train.cells import Cell
    from bench.train.pipeline import EvalOptions, run_cell
    from bench.train.runner import RunOptions

    cell = Cell("absld", overrides=(("epochs", 3), ("milestones", (1,))))
    opts, ev = RunOptions(out=out, log=lambda *_: None), EvalOptions(attacks=("clean",))
    if kill_at is not None:
        loss = ABSLD.loss

        def dying(self, x, x_adv, y):
            if (self.epoch, self.step) == kill_at:
                raise _Killed
            return loss(self, x, x_adv, y)

        monkeypatch.setattr(ABSLD, "loss", dying)
        with pytest.raises(_Killed):
            run_cell(cell, opts, ev, Store(out))
        monkeypatch.setattr(ABSLD, "loss", loss)
    return {r["checkpoint"]: r for r in run_cell(cell, opts, ev, Store(out))}


def test_absld_resumes_bit_identically_with_its_temperatures(tmp_path, monkeypatch):
    from bench.train.checkpoint import load_file

    ref = _absld_run(tmp_path / "ref", monkeypatch, None)
    shutil.copytree(tmp_path / "ref" / "teachers", tmp_path / "got" / "teachers")  # same bits
    got = _absld_run(tmp_path / "got", monkeypatch, (1, 5))
    d = {k: next((tmp_path / k / "runs").glob("absld-*")) for k in ("ref", "got")}
    a, b = load_file(d["ref"] / "ckpt.pt"), load_file(d["got"] / "ckpt.pt")
    assert a["epoch"] == b["epoch"] == 3
    for k, v in a["models"]["student"].items():
        assert torch.equal(b["models"]["student"][k], v), k
    for key in ("tau_adv", "tau_nat"):
        tau = a["method"][key]
        assert torch.equal(b["method"][key], tau), key
        assert (tau - 1).abs().max() > 1e-3 and tau.min() >= 0.5 and tau.max() <= 5  # moved
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in b["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in a["history"]]
    for name, row in ref.items():
        assert got[name]["clean"] == row["clean"]


# --- fidelity follow-ups: teachers ---------------------------------------------------------

def _zoo_checkpoint(root, dataset: str, name: str):
    """A RobustBench model's freshly initialised weights where RobustBench looks offline."""
    import sys

    import pyautoattack

    sys.modules.setdefault("autoattack", pyautoattack)
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    ref = model_dicts[BenchmarkDataset(dataset)][ThreatModel.Linf][name]["model"]().eval()
    target = root / "robustbench" / dataset / "Linf" / f"{name}.pt"
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, target)
    return ref


def test_teacher_normalize_overrides_a_robustbench_models_own(tmp_path):
    """--teacher-normalize on a RobustBench teacher replaces the model's own normalisation
    (Rebuffi2021Fixing_R18_ddpm normalises with CIFAR-100 statistics inside)."""
    from bench.train.cells import Cell, resolve
    from bench.train.pipeline import teacher_for
    from bench.train.runner import RunOptions
    from bench.train.teachers import NORMALIZATIONS

    name = "Rebuffi2021Fixing_R18_ddpm"
    ref = _zoo_checkpoint(tmp_path, "cifar100", name)
    opts = RunOptions(out=tmp_path, data_root=tmp_path, log=lambda *_: None)
    cells = {n: resolve(Cell("rslad", "cifar100", teacher=f"robustbench:{name}",
                             teacher_normalize=n)) for n in (None, "cifar10")}
    assert cells[None].id != cells["cifar10"].id
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        own = teacher_for(cells[None], opts)(x)
        got = teacher_for(cells["cifar10"], opts)(x)
        torch.testing.assert_close(own, ref(x))
        mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATIONS["cifar10"])
        ref.mean.copy_(mean)
        ref.std.copy_(std)
        torch.testing.assert_close(got, ref(x))
    assert (got - own).abs().max() > 1e-3


def test_teacher_normalize_refused_for_a_zoo_model_without_its_own(tmp_path):
    from bench import BenchError
    from bench.train.cells import Cell, resolve
    from bench.train.pipeline import teacher_for
    from bench.train.runner import RunOptions

    _zoo_checkpoint(tmp_path, "cifar10", "Sehwag2021Proxy_R18")
    r = resolve(Cell("rslad", "cifar10", teacher="robustbench:Sehwag2021Proxy_R18",
                     teacher_normalize="cifar100"))
    with pytest.raises(BenchError) as err:
        teacher_for(r, RunOptions(out=tmp_path, data_root=tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "Sehwag2021Proxy_R18 has no input normalisation" in msg


def test_rslad_paper_cifar100_teacher_normalises_as_rslad_did(tmp_path):
    from bench.train.cells import Cell, resolve

    assert resolve(Cell("rslad", "cifar100", preset="paper")).config["teacher_normalize"] == \
        "cifar10"
    assert resolve(Cell("rslad", "cifar10", preset="paper")).config["teacher_normalize"] is None
    assert resolve(Cell("rslad", "cifar100")).config["teacher_normalize"] is None
    other = resolve(Cell("rslad", "cifar100", preset="paper", teacher="robustbench:Other"))
    assert other.config["teacher_normalize"] is None  # only the preset's own teacher
    mine = resolve(Cell("rslad", "cifar100", preset="paper", teacher_normalize="cifar100"))
    assert mine.config["teacher_normalize"] == "cifar100"


def test_iad_paper_teacher_is_its_own_pgdat_recipe():
    """IAD's paper preset trains its own teacher: PGD-AT ResNet-18, attack in EVAL mode, LR
    decayed at 0-based epochs 99 and 149 (pre_train/AT.py's piecewise schedule)."""
    from bench.train.cells import Cell, resolve

    r = resolve(Cell("iad", "cifar10", preset="paper"))
    assert r.teacher_cell == Cell("pgdat", "cifar10", "resnet18", preset="iad-teacher")
    t = resolve(r.teacher_cell).params
    assert (t.attack_mode, t.milestones, t.epochs, t.eps, t.step) == ("eval", (99, 149), 200,
                                                                      EPS, STEP)
    assert [t.lr_at(e) for e in (98, 99, 148, 149)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    assert resolve(Cell("iad", "cifar10", preset="paper", teacher_method="trades")
                   ).teacher_cell.preset == "faithful"
    # the recipe's attack: eval mode (no BN update), uniform start clamped, CE mean
    for preset, train in (("iad-teacher", False), ("faithful", True)):
        nets = _nets(10, True)
        ref = copy.deepcopy(nets)
        x, _, y = _batch(10)
        m = registry.create("pgdat", student=nets["s"], preset=preset)
        torch.manual_seed(7)
        got = m.attack(x, y)
        S = ref["s"].train(train)
        torch.manual_seed(7)
        want = ref_pgd(lambda xa, S=S, y=y: F.cross_entropy(S(xa), y), x, EPS, STEP, 10,
                       "uniform", True)
        torch.testing.assert_close(got, want, rtol=0, atol=E2E)
        _assert_same_buffers(nets, ref)
        assert (nets["s"].b1.num_batches_tracked.item() > 0) == train
