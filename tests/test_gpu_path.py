"""The GPU path, checked on the CPU: evaluation batches sized from the network and the free
memory, the out-of-memory back-off (same results), evaluation precision as a recorded
choice, the epoch's wall and selection time, and optional packages checked before training."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from test_compile import _batch, _method
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from bench.core import registry
from bench.eval import batching as ev
from bench.eval.evaluate import Threat, adversarial, judged
from bench.models import create_model
from bench.train.compute import Compute, Tally

GiB = 2**30
# the estimate (two small batches, their difference) against the saved storages of a batch of
# 8 less the weights', counted another way: within 1 %
SAVED_RTOL = 0.01


def _saved_without_weights(model: nn.Module, batch: int, size: int) -> int:
    """Bytes of the distinct storages one forward saves for backward, the weights' left out."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in weights:
            seen[st.data_ptr()] = st.nbytes()
        return t

    x = torch.rand(batch, 3, size, size, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        nn.functional.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long),
                                    reduction="sum")
    return sum(seen.values())


@pytest.mark.parametrize("arch", ["resnet18", "wrn34_10"])
def test_saved_activation_estimate_matches_a_measured_batch(arch: str) -> None:
    model = create_model(arch, num_classes=10, image_size=32).eval()
    per = ev.saved_bytes_per_image(model, 32)
    measured = _saved_without_weights(model, 8, 32) / 8
    assert per == pytest.approx(measured, rel=SAVED_RTOL)
    # the figures for 1024 images: ResNet-18 4.5 GiB, WRN-34-10 22 GiB at 32 px
    assert per * 1024 / GiB == pytest.approx({"resnet18": 4.5, "wrn34_10": 22.0}[arch], rel=0.03)
    assert model.training is False and not any(p.grad is not None for p in model.parameters())


def test_cuda_batch_fits_the_free_memory(monkeypatch) -> None:
    """The batch is the largest power of two (<= 1024) whose saved activations fit
    SAFE_FRACTION of the free memory; measured per image once, here faked per network."""
    per_image = {("resnet18", 32): 4.48 * 2**20, ("wrn34_10", 32): 22.0 * 2**20,
                 ("wrn34_10", 64): 88.05 * 2**20}
    free = [80e9]
    monkeypatch.setattr(ev, "saved_bytes_per_image",
                        lambda model, size, channels, device: per_image[(model.arch, size)])
    monkeypatch.setattr(ev, "free_memory", lambda device: free[0])

    def batch(arch: str, size: int) -> int:
        model = nn.Linear(1, 1)
        model.arch = arch
        b, aa = ev.eval_batch_sizes("cuda", size, model)
        assert aa == b
        return b

    assert batch("resnet18", 32) == 1024 and batch("wrn34_10", 32) == 1024
    assert batch("wrn34_10", 64) == 512  # 1024 would need 88 GiB, more than an H100 has
    free[0] = 8 * GiB
    assert batch("wrn34_10", 32) == 128 and batch("resnet18", 32) == 1024
    free[0] = 1
    assert batch("wrn34_10", 64) == 1
    assert ev.eval_batch_sizes("cuda", 32) == (1024, 1024)  # no network given: the cap
    assert ev.eval_batch_sizes("cpu", 32, nn.Linear(1, 1)) == (64, 500)  # the CPU rule stays


class _Small(nn.Module):
    """A network that runs out of memory (the CUDA error, or the text of another device's)
    on batches above `limit`."""

    def __init__(self, limit: int, text: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8).eval()
        self.limit, self.text, self.sizes = limit, text, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > self.limit:
            if self.text:
                raise RuntimeError("MPS backend out of memory (fake)")
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate (fake)")
        return self.net(x)


@pytest.mark.parametrize("text", [False, True])
def test_out_of_memory_back_off_gives_the_small_batch_results(text: bool) -> None:
    x, y = torch.rand(200, 1, 8, 8), torch.randint(0, 10, (200,))
    threat = Threat(0.1)
    small, big = _Small(10**9), _Small(24, text)
    big.net.load_state_dict(small.net.state_dict())
    want, got = [], []
    for model, batch, out in ((small, 16, want), (big, 64, got)):
        torch.manual_seed(3)
        out.append(judged(model, [model], x, y, "pgd20", threat, batch)[0])
        out.append(torch.rand(3))  # the RNG is where the whole run leaves it
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    assert max(s for s in big.sizes if s <= 24) == 16  # halved 64 -> 32 -> 16, then kept
    # the examples themselves, bit for bit, against the unbatched attack
    torch.manual_seed(4)
    whole = adversarial(small, x, y, "pgd10", threat)
    torch.manual_seed(4)
    parts = ev.in_batches(lambda i, j: [adversarial(big, x[i:j], y[i:j], "pgd10", threat)],
                          len(y), 200)[0]
    assert torch.equal(whole, torch.cat(parts))


def test_back_off_reraises_what_is_not_out_of_memory() -> None:
    def fail(i: int, j: int) -> list[torch.Tensor]:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        ev.in_batches(fail, 10, 4)


def test_a_part_draws_what_the_whole_batch_gives_its_rows() -> None:
    """`_SameDraws` on any device: the second half of a batch gets the whole draw's rows (a
    plain draw from the same state would give the first rows' values, and CUDA's generator
    other values again), and the RNG ends where the whole draw leaves it."""
    torch.manual_seed(5)
    whole_u = torch.empty(8, 3).uniform_(-1, 1)
    whole_n = torch.randn_like(whole_u)
    after = torch.rand(2)
    torch.manual_seed(5)
    with ev._SameDraws(8, 4, 4):
        part_u = torch.empty(4, 3).uniform_(-1, 1)
        part_n = torch.randn_like(part_u)
        other = torch.empty(5, 3).uniform_()  # not shaped like the part: drawn as it is
    torch.manual_seed(5)
    assert torch.equal(part_u, whole_u[4:]) and torch.equal(part_n, whole_n[4:])
    assert other.shape == (5, 3)
    torch.manual_seed(5)
    with ev._SameDraws(8, 4, 4):
        torch.empty(4, 3).uniform_(-1, 1)
        torch.randn_like(part_u)
    assert torch.equal(torch.rand(2), after)


def test_eval_precision_sets_and_restores_the_flags() -> None:
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for choice, want in (("fp32", (False, False)), ("tf32", (True, True)),
                         ("auto", (False, True))):
        with ev.eval_precision("cuda", choice) as label:  # flags only: no GPU needed
            assert (torch.backends.cuda.matmul.allow_tf32,
                    torch.backends.cudnn.allow_tf32) == want
        assert label == {"auto": "cudnn-tf32"}.get(choice, choice)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
        with ev.eval_precision("cpu", choice) as label:
            assert label == "fp32"  # no TF32 on the CPU
    with pytest.raises(ValueError, match="bf16"), ev.eval_precision("cuda", "bf16"):
        pass


def test_eval_precision_is_recorded_not_part_of_the_cell_id() -> None:
    from bench.options import GridOptions

    default, tf32 = GridOptions(), GridOptions(eval_precision="tf32")
    assert [c for c in default.cells("cpu")] == [c for c in tf32.cells("cpu")]
    assert default.eval_options().precision == "auto"  # PyTorch's defaults, as the authors'
    assert tf32.eval_options().precision == "tf32"
    assert tf32.run_options(Path("."), "cpu").eval_precision == "tf32"  # selection's too


def test_selection_and_evaluation_attack_frozen_weights_at_the_chosen_precision(
        tmp_path: Path, monkeypatch) -> None:
    """Selection (every epoch) and the final evaluation run under the run's evaluation
    precision, and their attacks' forwards see the weights frozen."""
    import contextlib

    from bench.core.store import Store
    from bench.train import pipeline, runner
    from bench.train.cells import Cell
    from bench.train.runner import RunOptions

    chosen: list[str] = []

    @contextlib.contextmanager
    def spy(device, choice="fp32"):
        chosen.append(choice)
        with ev.eval_precision(device, choice) as label:
            yield label

    monkeypatch.setattr(runner, "eval_precision", spy)
    monkeypatch.setattr(pipeline, "eval_precision", spy)
    forwards: list[tuple[bool, bool]] = []  # (input requires grad, a weight requires grad)
    real = pipeline.evaluate

    def evaluate(model, *args, **kw):
        hook = model.register_forward_pre_hook(lambda m, a: forwards.append(
            (a[0].requires_grad, any(p.requires_grad for p in m.parameters()))))
        try:
            return real(model, *args, **kw)
        finally:
            hook.remove()

    monkeypatch.setattr(pipeline, "evaluate", evaluate)
    cell = Cell("pgdat", overrides=(("epochs", 2),))
    pipeline.run_cell(cell, RunOptions(out=tmp_path, log=lambda s: None, eval_precision="tf32"),
                      pipeline.EvalOptions(("clean", "pgd20"), precision="tf32"),
                      Store(tmp_path))
    assert set(chosen) == {"tf32"} and len(chosen) >= 2 + 2  # 2 epochs' selection, 2 finals
    attacked = [weights for needs_grad, weights in forwards if needs_grad]
    assert attacked and not any(attacked)


def test_epoch_wall_and_selection_seconds_are_recorded_and_logged(tmp_path: Path,
                                                                  capsys) -> None:
    import json

    from bench.cli import main
    from bench.core.store import Store
    from bench.train.cells import Cell
    from bench.train.checkpoint import load_file
    from bench.train.pipeline import EvalOptions, run_cell
    from bench.train.runner import RunOptions

    lines: list[str] = []
    cell = Cell("pgdat", overrides=(("epochs", 2),))
    rows = run_cell(cell, RunOptions(out=tmp_path, log=lines.append),
                    EvalOptions(("clean",), precision="auto"), Store(tmp_path))
    state = load_file(tmp_path / "runs" / rows[-1]["cell_id"] / "ckpt.pt")
    assert [t["epoch"] for t in state["timing"]] == [0, 1]
    for h, t in zip(state["history"], state["timing"], strict=True):
        assert "wall_seconds" not in h  # the history stays the same on every rerun
        assert t["wall_seconds"] >= h["seconds"] and t["wall_seconds"] >= t["selection_seconds"]
        assert t["selection_seconds"] > 0
    epochs = [s for s in lines if "epoch " in s]
    assert len(epochs) == 2 and all("wall" in s and "selection" in s for s in epochs)
    assert {r["eval_precision"] for r in rows} == {"fp32"}  # auto on the CPU: fp32
    assert {r["eval_batch"] for r in rows} == {128}  # the CPU rule at 8 px
    capsys.readouterr()
    main(["history", rows[-1]["cell_id"], "--json", "--out", str(tmp_path)])
    shown = json.loads(capsys.readouterr().out)
    assert [h["wall_seconds"] for h in shown] == [t["wall_seconds"] for t in state["timing"]]
    main(["history", rows[-1]["cell_id"], "--out", str(tmp_path)])
    assert "s wall" in capsys.readouterr().out


@pytest.fixture
def hide(monkeypatch):
    """hide(name): the package looks not installed."""
    real = importlib.util.find_spec

    def hide(*names: str) -> None:
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name in names else real(name, *a))

    return hide


def test_missing_autoattack_fails_before_training(tmp_path: Path, hide, monkeypatch,
                                                  capsys) -> None:
    from bench.cli import main
    from bench.train import runner

    hide("pyautoattack")
    trained = []
    monkeypatch.setattr(runner.Trainer, "train", lambda self: trained.append(1))
    with pytest.raises(SystemExit) as exc:
        main(["run", "--methods", "pgdat", "--out", str(tmp_path / "out")])
    assert exc.value.code == 1 and not trained
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: AutoAttack needs the pyautoattack package (pip install "
                   "pyautoattack), or drop it: --attacks clean,fgsm,pgd20,pgd20s,cw"]
    assert not (tmp_path / "out" / "runs").exists()


def test_run_all_checks_packages_before_training(tmp_path: Path, hide, monkeypatch,
                                                 capsys) -> None:
    """run_all.py (the paper's grid) stops before training too, with the same line."""
    from bench.train import runner

    spec = importlib.util.spec_from_file_location(
        "run_all", Path(__file__).resolve().parents[1] / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    hide("pyautoattack")
    trained = []
    monkeypatch.setattr(runner.Trainer, "train", lambda self: trained.append(1))
    rc = run_all.main(["--methods", "pgdat", "--out", str(tmp_path / "out"),
                       "--report-dir", str(tmp_path / "rep")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and not trained, err
    assert err[-1].startswith("error: AutoAttack needs the pyautoattack package")
    assert not (tmp_path / "out" / "runs").exists()


def test_missing_packages_name_the_flag_that_avoids_them(hide, monkeypatch) -> None:
    import sys

    from bench.train.cells import Cell, resolve
    from bench.train.pipeline import EvalOptions, missing_package

    plain = [resolve(Cell("pgdat"))]
    zoo = [resolve(Cell("rslad", "cifar10", teacher="robustbench:Standard"))]
    hide("pyautoattack", "robustbench", "submitit")
    assert missing_package(plain, EvalOptions(("clean", "pgd20"))) is None
    assert missing_package(plain, EvalOptions(aa_on="none")) is None  # AutoAttack never runs
    assert missing_package(plain, EvalOptions(("aa",))).endswith("drop it: --attacks clean")
    assert missing_package(zoo, EvalOptions(("clean",))) == (
        "RobustBench teachers (--teacher robustbench:Standard) need the robustbench and "
        "pyautoattack packages (pip install 'advdistill-bench[robustbench]'), or drop it: "
        "--teacher FILE, or no --teacher to train one here")
    assert missing_package(plain, EvalOptions(("clean",)), "slurm") == (
        "--executor slurm needs the submitit package (pip install submitit), or drop it: "
        "--executor none")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "submitit", None)  # the other way of hiding one
    assert "submitit" in missing_package(plain, EvalOptions(("clean",)), "local")


class HostSyncs(TorchDispatchMode):
    """Records the operators that make the host wait for the device: reading a value back
    (`.item()`, `bool()`, `float()`, a python `if` on a tensor), and those whose output size
    depends on values (`nonzero`, boolean-mask indexing, `masked_select`)."""

    WAITS = {"aten._local_scalar_dense.default", "aten.nonzero.default",
             "aten.masked_select.default", "aten.unique.default"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        boolean_index = name.startswith("aten.index.") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        if name in self.WAITS or boolean_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", registry.names())
def test_no_training_step_waits_for_the_device(name: str) -> None:
    """Every method's step (attack, loss, backward, optimizer steps, a trained teacher's step,
    the loss tally) runs without a host-device sync: MTARD's weights, B-MTARD's temperatures,
    CIARD's push term and SAAD's one-hot stay on the device."""
    c = Compute()
    method = _method(name, c)
    optims = [c.optimizer(n.parameters(), 0.1, 0.9, 0.0) for n in method.trainable()]
    t_optim = (c.optimizer(method.teacher.parameters(), 0.1, 0.9, 0.0)
               if method.trains_teacher else None)
    if method.trains_teacher:
        method.epoch = method.p.teacher_from
    x, y = _batch()
    tally = Tally("cpu")
    for step in range(3):  # the first step (MTARD's reference losses) and later ones
        with HostSyncs() as syncs:
            loss, t_loss = c.step(method, optims, x, y, teacher_optim=t_optim)
            tally.add(loss, len(y), step, t_loss)
        assert syncs.seen == [], (step, syncs.seen)
    assert math.isfinite(tally.read())


def test_the_sync_detector_sees_what_waits() -> None:
    x = torch.arange(6.0)
    with HostSyncs() as syncs:
        x.sum().item()
        _ = x[x > 2]
        if x.max() > 1:
            pass
    assert len(syncs.seen) == 3, syncs.seen
