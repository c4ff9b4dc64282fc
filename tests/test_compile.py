"""The compiled path (bench.train.compute): what torch.compile computes, and how many graphs.

On the CPU (inductor with gcc) as on CUDA: an attack's compiled backward asks for the input's
gradient alone, and each network holds a small, known set of graphs of its own.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import torch._dynamo
import torch._inductor.config as inductor_config
from cli_run import cli

from bench.core import registry
from bench.data import datasets as data
from bench.models import create_model
from bench.train import compute as compute_mod
from bench.train.compute import Compute


def _method(name: str, c: Compute):
    torch.manual_seed(0)
    cls = registry.get(name)

    def net():
        return c.prepare(create_model("small_cnn", num_classes=10, in_channels=1, image_size=8))

    return registry.create(name, student=net(), teacher=net() if cls.needs_teacher else None,
                           peer=net() if cls.needs_peer else None,
                           clean_teacher=net() if cls.needs_clean_teacher else None,
                           dataset="digits", budget=data.spec("digits").budget)


def _batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    ds = data.load("digits", "train")
    return ds.x[:n], ds.y[:n]


def _step(method, c: Compute, x: torch.Tensor, y: torch.Tensor):
    """One `Compute.step` of `method`: (its examples, its loss, its networks' gradients)."""
    seen = {}
    attack = method.attack
    method.attack = lambda *a: seen.setdefault("x_adv", attack(*a))
    optims = [c.optimizer(n.parameters(), 0.1, 0.9, 0.0) for n in method.trainable()]
    t_optim = (c.optimizer(method.teacher.parameters(), 0.1, 0.9, 0.0)
               if method.trains_teacher else None)
    torch.manual_seed(1)
    loss, t_loss = c.step(method, optims, x, y, teacher_optim=t_optim)
    grads = [p.grad for n in method.networks().values() for p in n.parameters()]
    return seen["x_adv"], loss, t_loss, grads


@pytest.mark.parametrize("name", registry.names())
def test_freezing_for_the_attack_changes_no_bit_in_eager_mode(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same examples, losses and gradients with the attack's weights frozen as without
    (CIARD's S(x), computed in its attack and reused by its loss, keeps its gradients), and
    every parameter trains again after the attack."""
    c = Compute()
    x, y = _batch()
    method = _method(name, c)
    plain = copy.deepcopy(method)
    frozen = _step(method, c, x, y)
    assert all(p.requires_grad for n in method.networks().values() for p in n.parameters())
    monkeypatch.setattr(compute_mod, "attack_frozen", lambda nets: contextlib.nullcontext())
    unfrozen = _step(plain, c, x, y)
    assert torch.equal(frozen[0], unfrozen[0])
    assert torch.equal(frozen[1], unfrozen[1])
    assert (frozen[2] is None) == (unfrozen[2] is None)
    if frozen[2] is not None:
        assert torch.equal(frozen[2], unfrozen[2])
    for a, b in zip(frozen[3], unfrozen[3], strict=True):
        assert (a is None) == (b is None)
        assert a is None or torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["peeraid", "pgdat"])
def test_a_compiled_attack_asks_for_the_inputs_gradient_alone(name: str) -> None:
    """The output masks of every convolution_backward in the compiled graphs: the attack's
    ask for the input's gradient alone ([True, False, False]); without the freezing they
    were [True, True, False], the weights' gradient too (a third of a PGD step's cost)."""
    masks: dict[str, list[tuple[bool, ...]]] = {"attack": [], "loss": []}
    phase = ["loss"]

    def record(graph: torch.fx.Graph) -> None:
        for n in graph.nodes:
            if n.target == torch.ops.aten.convolution_backward.default:
                masks[phase[0]].append(tuple(n.args[-1]))

    # every graph lowered here (no cache), through `record`
    lowered = inductor_config.patch(post_grad_custom_post_pass=record, fx_graph_cache=False)
    torch._dynamo.reset()
    c = Compute(compile=True)
    method = _method(name, c)
    attack = method.attack

    def attacking(*a):
        phase[0] = "attack"
        try:
            return attack(*a)
        finally:
            phase[0] = "loss"

    method.attack = attacking
    x, y = _batch()
    optims = [c.optimizer(n.parameters(), 0.1, 0.9, 0.0) for n in method.trainable()]
    with lowered:
        c.step(method, optims, x, y)
    assert masks["attack"] and set(masks["attack"]) == {(True, False, False)}, masks
    # the loss's backward does compute the weights' gradients (the first conv: not the input's)
    assert masks["loss"] and all(m[1] for m in masks["loss"]), masks
    torch._dynamo.reset()


@pytest.mark.slow
def test_each_network_holds_a_known_set_of_graphs(tmp_path: Path, capsys,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """RSLAD (its teacher of the student's class, trained first) and PeerAiD for 2 epochs on
    the embedded set, compiled: each network compiles its own graphs, one per mode it runs in
    (train or eval, grad or not, an attack's input gradient or not), whatever the batch size
    (the last partial batch, the evaluation's) and never near the recompile limit.

    Measured before: the five networks (the teacher cell's student, RSLAD's student and
    teacher, PeerAiD's student and peer) shared the 8 slots of SmallCNN.forward; the ninth
    graph hit the limit and ran eagerly ever after. Now: 15 graphs, 1 to 4 a network."""
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    torch._dynamo.reset()
    with compute_mod.counting_graphs() as made:
        code, _, err = cli(["run", "--methods", "rslad,peeraid", "--teacher-arch", "small_cnn",
                            "--epochs", "2", "--compile", "on", "--attacks", "clean",
                            "--out", str(tmp_path)], capsys)
        graphs = [compute_mod.graphs_of(m) for m in made]
    assert code == 0, err[-2000:]
    torch._dynamo.reset()
    # five networks compiled (SWA's and the kept checkpoints' copies are plain networks)
    assert len(made) == 5
    assert sum(graphs) == 15 and max(graphs) <= 4, graphs


@pytest.mark.slow
def test_a_compiled_step_computes_the_eager_steps_math() -> None:
    """CIARD compiled (its S(x) crafted in the attack and trained by its loss, its teacher
    trained too) against eager: the same losses and gradients to float rounding."""
    x, y = _batch()
    got = []
    for compiled in (False, True):
        torch._dynamo.reset()
        c = Compute(compile=compiled)
        method = _method("ciard", c)
        method.epoch = method.p.teacher_from  # the teacher steps too
        got.append(_step(method, c, x, y))
    torch._dynamo.reset()
    (x_e, loss_e, t_e, grads_e), (x_c, loss_c, t_c, grads_c) = got
    assert torch.equal(x_e, x_c)  # the sign steps agree here (they may not everywhere)
    assert loss_c.item() == pytest.approx(loss_e.item(), rel=1e-5)
    assert t_c.item() == pytest.approx(t_e.item(), rel=1e-5)
    for a, b in zip(grads_c, grads_e, strict=True):
        assert (a - b).norm() <= 1e-4 * b.norm() + 1e-8


def test_compiled_networks_inside_ddp_get_bucketed_graphs(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """DDP wraps the loss over networks compiled one by one: each graph the loss compiles is
    traced inside DDP's forward, where dynamo's DDPOptimizer splits it at DDP's gradient
    buckets (their all-reduce overlaps the backward, as compiling the DDP module would);
    the attack's graphs (frozen weights, outside DDP's forward) are compiled plainly."""
    import torch.distributed as dist
    from torch._dynamo.backends.distributed import DDPOptimizer

    from bench.core import distributed

    caps: list[int] = []
    real = DDPOptimizer.compile_fn

    def spy(self, gm, inputs):
        caps.append(self.bucket_bytes_cap)
        return real(self, gm, inputs)

    monkeypatch.setattr(DDPOptimizer, "compile_fn", spy)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        torch._dynamo.reset()
        monkeypatch.setattr(distributed, "world_size", lambda: 2)  # wrap as torchrun would
        c = Compute(compile=True)
        method = _method("pgdat", c)
        ddp = distributed.wrap(method, torch.device("cpu"))
        assert ddp is not None
        x, y = _batch()
        optims = [c.optimizer(n.parameters(), 0.1, 0.9, 0.0) for n in method.trainable()]
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        c.step(method, optims, x, y, loss_fn=lambda *a: ddp(*a, weight=1.0))
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames
    finally:
        torch._dynamo.reset()
        dist.destroy_process_group()
    assert caps and set(caps) == {ddp.bucket_bytes_cap}  # the loss's graph(s), bucketed
    assert graphs == 2 and len(caps) == 1  # the attack's graph compiled outside DDP


def test_compile_mode_reaches_torch_compile_and_marks_each_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile-mode reduce-overhead (CUDA graphs): each network is compiled in that mode,
    and every step starts a new CUDA-graph generation (a step's outputs are read before the
    next one overwrites them); the default mode passes no mode. Wiring only: the graphs
    themselves exist on CUDA alone."""
    from bench.options import GridOptions

    modes: list[object] = []
    monkeypatch.setattr(compute_mod.torch, "compile",
                        lambda fn, mode=None: modes.append(mode) or fn)
    marks: list[int] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    x, y = _batch()
    for mode, want in (("default", None), ("reduce-overhead", "reduce-overhead")):
        modes.clear()
        marks.clear()
        c = Compute.for_run("cpu", compile=True, compile_mode=mode)
        method = _method("peeraid", c)
        optims = [c.optimizer(n.parameters(), 0.1, 0.9, 0.0) for n in method.trainable()]
        for _ in range(2):
            c.step(method, optims, x, y)
        assert modes == [want, want]  # student and peer
        assert len(marks) == (2 if want else 0)
    with pytest.raises(Exception, match="compile mode"):
        Compute.for_run("cpu", compile_mode="fastest")
    (declared,) = (f for f in dataclasses.fields(GridOptions) if f.name == "compile_mode")
    assert tuple(declared.metadata["click"]["type"].choices) == compute_mod.COMPILE_MODES
