"""IBD against SkyKuang/IBD's defense/IBD_module.py, and the feature contract it needs.

The reference replays `Dist_Module.train` on tiny float64 BN and no-BN models whose blocks
return their features by hand: x0 = x + 0.001 N (not clamped), the teacher's logits and
features at x0, the attack (S in eval mode, `KLDivLoss(sum)` against softmax(T(x0))), then
S(x) and S(x') in train mode, the AFD module (its `unique_shape`, `Sample`, bilinear key and
`cal_diff` written out as the code has them) on a copy of the method's adaptor weights.
It never calls the method file's helpers, `bench.eval.attacks` or `bench.models.features`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from resumable import killed_and_resumed, short_trainer
from test_methods import EPS, STEP, _batch, assert_same_loss_and_grads, ref_pgd
from torch import nn

from bench.core import registry
from bench.data import datasets
from bench.models import create_model, model_names
from bench.models.features import Tap
from bench.train.cells import Cell, resolve
from bench.train.selection import RULES

# --- tiny models whose blocks are known -----------------------------------------------------


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, bn: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    """Three blocks in one nn.Sequential stage; `feats` returns their outputs by hand."""

    def __init__(self, classes: int, bn: bool, seed: int, widths=(6, 8, 10)) -> None:
        super().__init__()
        torch.manual_seed(seed)
        c, blocks = 3, []
        for i, w in enumerate(widths):
            blocks.append(Block(c, w, 2 if i == 1 else 1, bn))
            c = w
        self.stage = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)
        with torch.no_grad():
            self.fc.weight.mul_(4.0)
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.3, 2.3)
                    m.weight.uniform_(0.5, 1.5)
        self.double()

    def feats(self, x):
        out, fs = x, []
        for b in self.stage:
            out = b(out)
            fs.append(out)
        return self.fc(out.mean((2, 3))), fs

    def forward(self, x):
        return self.feats(x)[0]


def _nets(bn: bool, classes: int = 10) -> dict:
    return {"s": Net(classes, bn, 1), "t": Net(classes, bn, 2, widths=(5, 7, 9))}


def _make(nets: dict, preset: str = "faithful", **kw):
    return registry.create("ibd", student=nets["s"], teacher=nets["t"], preset=preset, **kw)


# --- the authors' formulas, written out --------------------------------------------------------

def unique_shape(s_shapes):
    n_s, unique_shapes, n = [], [], -1
    for s_shape in s_shapes:
        if s_shape not in unique_shapes:
            unique_shapes.append(s_shape)
            n += 1
        n_s.append(n)
    return n_s, unique_shapes


def nn_bn_relu(m, x, relu=True):
    out = m.bn(m.linear(x))
    return F.relu(out) if relu else out


def ref_afd(ad, g_s, g_t, qk_dim=128):
    """IBD_module.py's Attention(LinearTransformStudent, LinearTransformTeacher)."""
    t_shapes = [f.size() for f in g_t]
    n_t, unique_t_shapes = unique_shape(t_shapes)
    bs, s, t = g_s[0].size(0), len(g_s), len(g_t)
    # LinearTransformStudent
    channel_mean = [f_s.mean(3).mean(2) for f_s in g_s]
    spatial_mean = [torch.stack([F.adaptive_avg_pool2d(f_s.pow(2).mean(1, keepdim=True),
                                                       (u[2], u[3])).view(bs, -1)
                                 for f_s in g_s], dim=1) for u in unique_t_shapes]
    key = torch.stack([nn_bn_relu(k, f) for k, f in zip(ad.key, channel_mean, strict=True)],
                      dim=1).view(bs * s, -1)
    bilinear_key = nn_bn_relu(ad.bilinear, key, relu=False).view(bs, s, t, -1)
    value_s = [F.normalize(s_m, dim=2) for s_m in spatial_mean]
    # LinearTransformTeacher
    t_mean = [f_t.mean(3).mean(2) for f_t in g_t]
    t_spatial = [f_t.pow(2).mean(1).view(bs, -1) for f_t in g_t]
    query = torch.stack([nn_bn_relu(q, f, relu=False)
                         for f, q in zip(t_mean, ad.query, strict=True)], dim=1)
    value_t = [F.normalize(f, dim=1) for f in t_spatial]
    p_logit = torch.matmul(ad.p_t, ad.p_s.t())
    logit = torch.add(torch.einsum("bstq,btq->bts", bilinear_key, query), p_logit) / math.sqrt(
        qk_dim)
    atts = F.softmax(logit, dim=2)
    loss = []
    for i, (n, h_t) in enumerate(zip(n_t, value_t, strict=True)):
        diff = (value_s[n] - h_t.unsqueeze(1)).pow(2).mean(2)
        loss.append(torch.mul(diff, atts[:, i]).sum(1).mean())
    return sum(loss)


def ref_loss(n: dict, ad, x, xa, t_in, a=0.8, b=0.8):
    """`Dist_Module.train` after the attack: T at t_in (x0), S(x), S(x') train, IBD train."""
    T, S = n["t"].eval(), n["s"].train()
    with torch.no_grad():
        logits_tea, feat_tea = T.feats(t_in)
    ad.train()
    batch_size = len(x)
    kl_sum = torch.nn.KLDivLoss(reduction="sum")
    logits_nat, _ = S.feats(x)
    logits_adv, feat_adv = S.feats(xa)
    loss_ibd = ref_afd(ad, feat_adv, feat_tea)
    loss_nat = (1.0 / batch_size) * kl_sum(F.log_softmax(logits_nat, 1), F.softmax(logits_tea, 1))
    loss_adv = (1.0 / batch_size) * kl_sum(F.log_softmax(logits_adv, 1), F.softmax(logits_tea, 1))
    return loss_nat * (1 - a) + loss_adv * a + loss_ibd * b


def _all_params(m):
    return list(m.student.parameters()) + list(m.adaptor.parameters())


# --- loss, attack, full step ------------------------------------------------------------------

@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("over", [{}, dict(a=0.3, b=2.0)], ids=["faithful", "weights"])
def test_loss_and_grads_match_the_module(bn, over):
    """A loss without an attack before it: the teacher at x (no x0 was drawn)."""
    nets = _nets(bn)
    x, xa, y = _batch(10)
    m = _make(nets, **over)
    ref, ad = copy.deepcopy(nets), copy.deepcopy(m.adaptor)
    nets["s"].eval()  # the loss puts S in train mode itself
    nets["t"].train()  # and keeps the teacher in eval mode
    loss = m.loss(x, xa, y)
    want = ref_loss(ref, ad, x, xa, x, **over)
    assert_same_loss_and_grads(loss, want, _all_params(m),
                               list(ref["s"].parameters()) + list(ad.parameters()))
    for mine, theirs in ((nets["s"], ref["s"]), (m.adaptor, ad)):  # BN statistics: 2 S forwards
        for (k, u), (_, v) in zip(mine.named_buffers(), theirs.named_buffers(), strict=True):
            torch.testing.assert_close(u, v, rtol=0, atol=1e-12, msg=k)
    if bn:
        assert nets["s"].stage[0].bn.num_batches_tracked.item() == 2
        assert nets["t"].stage[0].bn.num_batches_tracked.item() == 0
    assert not any(p.requires_grad for p in nets["t"].parameters())


def test_the_feature_term_and_its_weight_matter():
    """Negative control: without the AFD term (b = 0) the student's gradient changes."""
    nets = _nets(True)
    x, xa, y = _batch(10)
    m, m0 = _make(copy.deepcopy(nets)), _make(copy.deepcopy(nets), b=0.0)
    g = torch.autograd.grad(m.loss(x, xa, y), list(m.student.parameters()))
    g0 = torch.autograd.grad(m0.loss(x, xa, y), list(m0.student.parameters()))
    assert max((u - v).abs().max().item() for u, v in zip(g, g0, strict=True)) > 1e-6


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
def test_full_step_replays_the_module(bn):
    """attack() then loss(): x0 drawn once, the teacher's soft labels and features at x0, S in
    eval mode for the attack; the same examples, loss, gradients."""
    nets = _nets(bn)
    x, _, y = _batch(10)
    m = _make(nets, steps=3)
    ref, ad = copy.deepcopy(nets), copy.deepcopy(m.adaptor)
    torch.manual_seed(7)
    xa = m.attack(x, y)
    loss = m.loss(x, xa, y)
    torch.manual_seed(7)
    x0 = x + 0.001 * torch.randn_like(x)
    with torch.no_grad():
        t = ref["t"].eval()(x0)
    S = ref["s"].eval()
    torch.manual_seed(7)
    want_xa = ref_pgd(lambda z: F.kl_div(F.log_softmax(S(z), 1), F.softmax(t, 1),
                                         reduction="sum"), x, EPS, STEP, 3, "normal", False)
    torch.testing.assert_close(xa, want_xa, rtol=0, atol=1e-12)
    want = ref_loss(ref, ad, x, want_xa, x0)
    assert_same_loss_and_grads(loss, want, _all_params(m),
                               list(ref["s"].parameters()) + list(ad.parameters()))
    # negative controls: a student in train mode, or the teacher at x, give other examples
    S2 = copy.deepcopy(nets["s"]).train()
    torch.manual_seed(7)
    other = ref_pgd(lambda z: F.kl_div(F.log_softmax(S2(z), 1), F.softmax(t, 1),
                                       reduction="sum"), x, EPS, STEP, 3, "normal", False)
    assert not bn or (other - xa).abs().max() > 1e-6
    assert (ref_loss(copy.deepcopy(nets), copy.deepcopy(ad), x, want_xa, x) - want).abs() > 1e-9


def test_first_blocks_only():
    """faithful keeps the code's first 8 student and 15 teacher blocks; a count below the
    network's own takes the first k (here 2 of 3)."""
    nets = _nets(True)
    m = _make(nets, student_blocks=2, teacher_blocks=1)
    assert (len(m.adaptor.key), len(m.adaptor.query)) == (2, 1)
    x, xa, y = _batch(10)
    ref, ad = copy.deepcopy(nets), copy.deepcopy(m.adaptor)
    loss = m.loss(x, xa, y)
    T, S = ref["t"].eval(), ref["s"].train()
    with torch.no_grad():
        t, ft = T.feats(x)
    s_nat = S(x)
    s_adv, fs = S.feats(xa)
    ad.train()
    want = (0.2 * F.kl_div(F.log_softmax(s_nat, 1), F.softmax(t, 1), reduction="batchmean")
            + 0.8 * F.kl_div(F.log_softmax(s_adv, 1), F.softmax(t, 1), reduction="batchmean")
            + 0.8 * ref_afd(ad, fs[:2], ft[:1]))
    torch.testing.assert_close(loss, want, rtol=1e-7, atol=1e-9)


# --- the feature contract on every architecture ------------------------------------------------

# the blocks each architecture stacks: the counts of AFD's LAYER table where it has one
BLOCKS = {"resnet18": 8, "resnet34": 16, "resnet56": 27, "wrn34_10": 15, "wrn28_10": 12,
          "preact_resnet18": 8, "mobilenetv2": 17, "small_cnn": 3, "small_cnn_nobn": 3}


@pytest.mark.parametrize("arch", model_names())
def test_features_of_every_architecture(arch):
    """Asking for features changes no logit (eval and train mode, BN statistics alike); the
    blocks come in forward order, 4-D; the penultimate feature is the last Linear's input."""
    torch.manual_seed(0)
    net = create_model(arch, num_classes=10, in_channels=3, image_size=32)
    x = torch.rand(2, 3, 32, 32)
    for train in (False, True):
        net.train(train)
        plain = copy.deepcopy(net)
        logits, feats = Tap(net, "blocks")(x)
        assert torch.equal(logits, plain(x))
        for (k, u), (_, v) in zip(net.named_buffers(), plain.named_buffers(), strict=True):
            assert torch.equal(u, v), k
    assert len(feats) == BLOCKS[arch]
    assert all(f.dim() == 4 and len(f) == 2 for f in feats)
    assert feats[-1].shape[2] <= feats[0].shape[2]
    net.eval()
    logits, (pen,) = Tap(net, "penultimate")(x)
    fc = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    assert pen.shape == (2, fc.in_features)
    torch.testing.assert_close(fc(pen), logits)
    name = next(n for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    _, (first,) = Tap(net, name)(x)
    assert first.shape[:2] == (2, dict(net.named_modules())[name].out_channels)
    with pytest.raises(ValueError, match="no module"):
        Tap(net, "no.such.layer")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_every_registered_method_declares_points_that_resolve():
    """A method's `features` resolve on every architecture (the methods without features,
    every existing one, declare none)."""
    for name in registry.names():
        points = registry.get(name).features
        assert set(points) <= {"student", "teacher", "peer", "clean_teacher"}, name
        for arch in model_names():
            net = create_model(arch, num_classes=10, in_channels=3, image_size=32)
            for point in points.values():
                assert Tap(net, point).modules, (name, arch)
    assert registry.get("ibd").features == {"student": "blocks", "teacher": "blocks"}


# --- presets, selection, resume ------------------------------------------------------------------

def _p(preset: str = "faithful", dataset: str = "cifar10", **over):
    return registry.get("ibd").resolve(preset, dataset, budget=datasets.spec(dataset).budget,
                                       **over)


def test_presets_are_the_script():
    p = _p()
    assert (p.epochs, p.milestones, p.lr, p.momentum, p.weight_decay, p.seed) == (
        151, (100, 125), 0.1, 0.9, 5e-4, 111)
    assert (p.eps, p.step, p.steps, p.a, p.b, p.qk_dim) == (EPS, STEP, 10, 0.8, 0.8, 128)
    assert (p.student_blocks, p.teacher_blocks, p.selection) == (8, 15, None)
    # piecewise: 0.1 until decay_epoch1, 0.01 until decay_epoch2, then 0.001 (decay_epoch3=220
    # lies past the run)
    assert [p.lr_at(e) for e in (99, 100, 124, 125, 150)] == pytest.approx(
        [0.1, 0.01, 0.01, 0.001, 0.001])
    f = _p("fixed")
    assert (f.student_blocks, f.teacher_blocks) == (None, None)
    r = resolve(Cell("ibd", "cifar10", preset="paper"))
    assert r.teacher_cell is None and r.params.selection == "ibd"
    assert registry.get("ibd").preset_teacher("paper", "cifar10") == (
        "robustbench:Zhang2019Theoretically")


def test_selection_rule_is_train_py():
    """train.py evaluates at 0-based epochs 0, 10, ... and every epoch past decay_epoch1 - 5."""
    rule = RULES["ibd"]
    due = [e for e in range(151) if rule.due(e, 151, 1)]
    assert due[:2] == [0, 9] and 95 not in due and all(e in due for e in range(96, 151))
    assert rule.keep == ("best", "last") and rule.attack == "pgd10"


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path, monkeypatch) -> None:
    """Killed at batch 6 of the second epoch, resumed: the student, the adaptor and both
    their optimizers end the same bits."""
    got, want = killed_and_resumed(
        lambda out: short_trainer("ibd", out, teacher=True), tmp_path, monkeypatch)
    assert set(want["models"]) == set(want["optims"]) == {"student", "adaptor"}
