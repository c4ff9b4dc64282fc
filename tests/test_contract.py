"""The grown Distiller contract as the runner honours it: hooks, per-class sums, method state
through checkpoints, a teacher that keeps training (own optimizer, schedule, objective, after
the student), per-step LR schedules, SWA from a chosen epoch, clean teachers, the registry's
name clashes and the import layering."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench import BenchError
from bench.cli import main
from bench.core import registry
from bench.core.distiller import Distiller, TeacherTraining, scheduled_lr
from bench.eval.attacks import pgd
from bench.models import create_model
from bench.train import checkpoint
from bench.train.cells import Cell, resolve
from bench.train.compute import Compute
from bench.train.runner import RunOptions, Trainer

BENCH = str(Path(sys.executable).with_name("bench"))
QUICK = (("epochs", 3), ("steps", 2), ("milestones", (2,)))


@dataclass(frozen=True)
class ProbeParams(TeacherTraining):
    teacher_lr: float = 0.02
    teacher_momentum: float = 0.5
    teacher_weight_decay: float = 1e-3
    teacher_from: int = 1  # first 0-based epoch with teacher steps


class Probe(Distiller):
    """Contract probe: PGD-AT whose teacher trains on CE(T(x')) and which records its hooks."""

    needs_teacher = needs_clean_teacher = trains_teacher = True
    Params = ProbeParams

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.events: list[tuple] = []
        self.seen = 0  # method state: batches seen (checkpointed)
        self.epoch_sums: list[dict[str, torch.Tensor]] = []

    def attack(self, x, y):
        s = self.student.eval()
        return pgd(lambda xa: F.cross_entropy(s(xa), y), x, eps=self.p.eps, step=self.p.step,
                   steps=self.p.steps, start="uniform")

    def loss(self, x, x_adv, y):
        self.events.append(("loss", self.epoch, self.step))
        self._student_w = _flat(self.student).clone()
        self._teacher_w = _flat(self.teacher).clone()
        logits = self.student.train()(x_adv)
        self.accumulate("ones", torch.ones(len(y)), y, 10)
        self.accumulate("ce", F.cross_entropy(logits, y, reduction="none"), y, 10)
        return F.cross_entropy(logits, y)

    def teacher_loss(self, x, x_adv, y):
        # the student has stepped, the teacher not yet
        assert not torch.equal(_flat(self.student), self._student_w)
        assert torch.equal(_flat(self.teacher), self._teacher_w)
        self.events.append(("teacher_loss", self.epoch, self.step))
        if self.epoch < self.p.teacher_from:
            return None
        self._teacher_before = [p.detach().clone() for p in self.teacher.parameters()]
        return F.cross_entropy(self.teacher.train()(x_adv), y)

    def after_step(self):
        self.events.append(("after_step", self.epoch, self.step))
        self.seen += 1

    def on_epoch_end(self, sums):
        self.events.append(("epoch_end", self.epoch))
        self.epoch_sums.append({k: v.clone() for k, v in sums.items()})

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


registry.register("contract-probe")(Probe)


def _flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def _teachers():
    torch.manual_seed(5)
    return (create_model("small_cnn", num_classes=10, in_channels=1),
            create_model("small_cnn_nobn", num_classes=10, in_channels=1))


def _trainer(tmp: Path, overrides=QUICK) -> Trainer:
    t, c = _teachers()
    r = resolve(Cell("contract-probe", overrides=overrides))
    return Trainer(r, RunOptions(out=tmp, log=lambda *_: None), t, c)


def test_hooks_state_and_sums(tmp_path: Path) -> None:
    tr = _trainer(tmp_path)
    lrs: list[tuple] = []
    step = Compute.step  # how the runner computes every batch

    def spy(self, method, optims, x, y, loss_fn=None, teacher_optim=None, teacher_weight=1.0):
        optims = list(optims)
        lrs.append((method.epoch, method.step, [o.param_groups[0]["lr"] for o in optims],
                    teacher_optim.param_groups[0]["lr"]))
        return step(self, method, optims, x, y, loss_fn, teacher_optim, teacher_weight)

    Compute.step = spy
    try:
        tr.train()
    finally:
        Compute.step = step
    m, n = tr.method, -(-len(tr.train_set) // 64)
    want = []
    for e in range(3):
        for i in range(n):
            want += [("loss", e, i), ("teacher_loss", e, i), ("after_step", e, i)]
        want.append(("epoch_end", e))
    assert m.events == want
    # per-class sums of the epoch, then cleared: the class counts and the summed CE
    counts = torch.bincount(tr.train_set.y, minlength=10).float()
    assert all(torch.equal(s["ones"], counts) for s in m.epoch_sums) and m.pop_sums() == {}
    assert all(s["ce"].sum() > 0 for s in m.epoch_sums)
    # LR per batch: the student's schedule and the teacher's own, from (epoch, step)
    assert [(e, i) for e, i, _, _ in lrs] == [(e, i) for e in range(3) for i in range(n)]
    p = m.p
    assert all(s == [p.lr_at(e, i, n)] and t == p.teacher_lr_at(e, i, n) for e, i, s, t in lrs)
    assert {s[0] for _, _, s, _ in lrs} == {0.05, 0.05 * 0.1}
    # the method's state and the trained teacher (weights, BN buffers, optimizer) are saved
    state = checkpoint.load_file(tr.ckpt_path)
    assert state["method"] == {"seen": 3 * n}
    assert set(state["models"]) == set(state["optims"]) == {"student", "teacher"}
    for k, v in tr.method.teacher.state_dict().items():
        assert torch.equal(state["models"]["teacher"][k], v), k
    assert state["optims"]["teacher"]["param_groups"][0]["momentum"] == 0.5
    assert state["history"][0]["teacher_lr"] == p.teacher_lr


def test_trained_teacher_steps_after_the_student_with_its_own_sgd(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, (("epochs", 2), ("steps", 2), ("teacher_from", 0)))
    opt = tr.optims["teacher"]
    assert opt is not tr.optims["student"]
    g = opt.param_groups[0]
    assert (g["momentum"], g["weight_decay"]) == (0.5, 1e-3)
    tr._data()
    tr.method.epoch, tr.method.step = 0, 0
    tr._set_lr(0, 0, 1)
    x, y = tr.train_set.x[:32], tr.train_set.y[:32]
    student_before = _flat(tr.method.student).clone()
    tr.compute.step(tr.method, [tr.optims["student"]], x, y, None, opt)
    m = tr.method
    assert not torch.equal(_flat(m.student), student_before)
    # first SGD step with momentum and weight decay: w - lr * (grad + wd * w)
    for before, p in zip(m._teacher_before, m.teacher.parameters(), strict=True):
        want = before - 0.02 * (p.grad + 1e-3 * before)
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-7)
    # the clean teacher is fixed: eval mode, frozen
    assert not m.clean_teacher.training
    assert not any(q.requires_grad for q in m.clean_teacher.parameters())


def test_interrupted_run_resumes_the_method_state_bit_identically(tmp_path: Path,
                                                                  monkeypatch) -> None:
    whole = _trainer(tmp_path / "a")
    whole.train()
    cut = _trainer(tmp_path / "b")
    train_epoch = Trainer._train_epoch

    def die_at_2(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return train_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", die_at_2)
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)
    resumed = _trainer(tmp_path / "b")
    resumed.train()
    assert resumed.method.seen == whole.method.seen
    assert [e for e in resumed.method.events if e[1] != 2] == []  # only epoch 2 retrained
    a, b = checkpoint.load_file(whole.ckpt_path), checkpoint.load_file(resumed.ckpt_path)
    for net in ("student", "teacher"):
        for k, v in a["models"][net].items():
            assert torch.equal(b["models"][net][k], v), f"{net}.{k}"
    assert a["method"] == b["method"]
    assert str(a["optims"]) == str(b["optims"])


def test_swa_from_a_configured_epoch(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, (("epochs", 3), ("steps", 1), ("swa", True), ("swa_start", 1),
                             ("milestones", (10,))))
    assert not tr._swa_averaged(1) and tr._swa_averaged(2)  # epoch 1 (0-based) is the first
    finals = tr.train()
    assert tr.swa.n_averaged.item() == 2 and "swa_last" in finals


def test_schedules() -> None:
    """The cosine-exp rule written out as CIARD's script does it (1-based epochs)."""
    import math

    for e in range(300):
        e1 = e + 1
        want = 0.1 if e1 < 150 else 0.1 * (0.5 + 0.5 * math.cos(math.pi * (e1 - 150) / 150)) \
            * math.exp(-0.01 * (e1 - 150) ** 2 / 150**2)
        assert scheduled_lr("cosine-exp", 0.1, (149,), 0.1, 300, e, 7, 10) == pytest.approx(
            want, abs=1e-15)
        want_t = 0.0 if e1 < 50 else 1e-4 * (0.5 + 0.5 * math.cos(math.pi * (e1 - 50) / 250)) \
            * math.exp(-0.01 * (e1 - 50) ** 2 / 250**2)
        assert scheduled_lr("off-cosine-exp", 1e-4, (49,), 0.1, 300, e) == pytest.approx(
            want_t, abs=1e-18)
    assert scheduled_lr("cosine-exp", 0.1, (149,), 0.1, 300, 299) == pytest.approx(0, abs=1e-18)


def test_clean_teacher_resolution(tmp_path: Path, capsys) -> None:
    r = resolve(Cell("contract-probe"))
    assert r.config["clean_teacher"].startswith("standard-faithful-digits-small_cnn-")
    assert r.config["teacher"].startswith("pgdat-faithful-digits-small_cnn-")
    assert r.clean_teacher_cell.method == "standard"
    other = resolve(Cell("contract-probe", clean_teacher_arch="small_cnn_nobn"))
    assert other.config["clean_teacher_arch"] == "small_cnn_nobn" and other.id != r.id
    path = tmp_path / "clean.pt"
    checkpoint.save_weights(path, _teachers()[1])
    filed = resolve(Cell("contract-probe", clean_teacher=str(path)))
    assert filed.config["clean_teacher"].startswith("file:") and filed.clean_teacher_file == path
    # methods without a clean teacher keep their ids: the key is None and left out
    assert resolve(Cell("rslad")).config["clean_teacher"] is None
    with pytest.raises(BenchError, match="clean teacher checkpoint .* does not exist"):
        resolve(Cell("contract-probe", clean_teacher=str(tmp_path / "missing.pt")))
    main(["show-preset", "contract-probe", "--dataset", "digits"])
    out = capsys.readouterr().out
    assert "  teacher = pgdat-faithful-digits" in out
    assert "  clean_teacher = standard-faithful-digits" in out


def test_second_register_of_a_name_names_both_classes() -> None:
    class Other(Probe):
        pass

    registry.get("pgdat")  # the built-ins loaded, whatever ran before this test
    with pytest.raises(BenchError) as err:
        registry.register("pgdat")(Other)
    msg = str(err.value)
    assert "bench.methods.pgdat.PGDAT" in msg and "test_contract" in msg and "Other" in msg
    assert registry.get("pgdat").__module__ == "bench.methods.pgdat"


@pytest.fixture
def clashing_plugin(tmp_path: Path, monkeypatch) -> Path:
    """An installed plugin (dist-info entry point) that wants the built-in name `pgdat`; its
    module would leave a sentinel file if it were ever imported."""
    site = tmp_path / "site"
    info = site / "clashplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: clashplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bench.methods]\npgdat = clash_mod:Fake\n")
    (site / "clash_mod.py").write_text(textwrap.dedent(f"""
        open({str(tmp_path / "imported")!r}, "w").close()
        from bench.methods.standard import Standard as Fake
        """))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_BROKEN", {})
    return site


def test_plugin_wanting_a_builtin_name_is_refused(clashing_plugin: Path) -> None:
    assert registry.get("pgdat").__module__ == "bench.methods.pgdat"
    why = registry.broken()["pgdat"]
    assert why.startswith("refused: clash_mod.Fake wants the name of bench.methods.pgdat.PGDAT")
    res = subprocess.run([BENCH, "list"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200",
                              "PYTHONPATH": os.pathsep.join(
                                  [str(clashing_plugin), os.environ.get("PYTHONPATH", "")])})
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines() == [f"warning: plugin 'pgdat' {why}"]
    assert "PGD-AT (Madry" in res.stdout
    assert not (clashing_plugin.parent / "imported").exists()  # the plugin's code never ran


REPO = Path(__file__).resolve().parents[1]
# The wings of bench/, bottom to top: a module imports only from its own wing and those below
# (bench/__init__.py, BenchError, is below them all). docs/architecture.md draws the same order.
WINGS = ("core", "data", "models", "eval", "methods", "train", "report", "perf", "cli")
TOP = {"bench.cli": "cli", "bench.options": "cli"}  # the command line: modules, not a package
# The registry loads the in-tree methods on first use, as it loads plugins' entry points.
UPWARD = {("bench.core.registry", "bench.methods")}


def _modules() -> dict[str, Path]:
    """Every module of the installed package by its dotted name; methods/ installs as
    bench.methods (pyproject's package-dir)."""
    out = {}
    for base, prefix in ((REPO / "bench", "bench"), (REPO / "methods", "bench.methods")):
        for f in base.rglob("*.py"):
            name = ".".join((prefix, *f.relative_to(base).with_suffix("").parts))
            out[name.removesuffix(".__init__")] = f
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The bench modules `path` imports, at module level or inside functions
    (`from bench.core import registry` is bench.core.registry)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bench"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("bench.")}
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {k: {d for d in _imports(f, modules) if d in modules and d != k}
            for k, f in modules.items()}


def _wing(module: str) -> str | None:
    """The wing `module` belongs to; None for the package root (bench/__init__.py)."""
    if module == "bench":
        return None
    return TOP.get(module) or module.split(".")[1]


def test_the_layers_read_top_down() -> None:
    """No import cycle among bench's modules, function-level imports included (the teachers
    module once imported the runner and the cells back)."""
    graph = _graph()
    seen, stack = set(), []

    def visit(n: str) -> None:
        assert n not in stack, "import cycle: " + " -> ".join([*stack[stack.index(n):], n])
        if n in seen:
            return
        stack.append(n)
        for d in sorted(graph[n]):
            visit(d)
        stack.pop()
        seen.add(n)

    for n in sorted(graph):
        visit(n)
    assert "bench.train.runner" not in graph["bench.train.teachers"]
    assert "bench.train.cells" not in graph["bench.train.teachers"]


def test_no_wing_imports_one_above_it() -> None:
    """Each module sits in a wing, and imports only from its wing and the wings below."""
    graph = _graph()
    stray = sorted(m for m in graph if m != "bench" and _wing(m) not in WINGS)
    assert not stray, f"modules outside the wings {WINGS}: {stray}"
    upward = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                    if _wing(b) is not None and _wing(a) is not None
                    and WINGS.index(_wing(b)) > WINGS.index(_wing(a)) and (a, b) not in UPWARD)
    assert not upward, "imports up the layers: " + "; ".join(upward)
    for a, b in UPWARD:  # each exception is still needed, or it goes
        assert b in graph[a]


def test_each_wing_is_an_installed_package_that_says_what_it_may_import() -> None:
    """pyproject lists every wing (a new one left out would be missing from a wheel), and each
    wing's __init__ docstring says what it may import."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {m for m, f in _modules().items() if f.name == "__init__.py"}
    assert set(setup["packages"]) == packages
    assert setup["package-dir"] == {"bench.methods": "methods"}
    for pkg in packages - {"bench"}:
        doc = ast.get_docstring(ast.parse(_modules()[pkg].read_text())) or ""
        assert "May import:" in doc or "Imports nothing" in doc, pkg



def test_wrong_clean_teacher_file_is_one_line_before_training(tmp_path: Path, capsys) -> None:
    path = tmp_path / "clean.pt"
    checkpoint.save_weights(path, _teachers()[1])  # small_cnn_nobn weights
    with pytest.raises(SystemExit) as exc:  # the clean teacher's arch defaults to the student's
        main(["run", "--methods", "mtard", "--clean-teacher", str(path), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: clean teacher checkpoint {path} does not fit")
    assert not (tmp_path / "runs").exists()
    r = resolve(Cell("mtard", clean_teacher=str(path), clean_teacher_arch="small_cnn_nobn"))
    assert r.config["clean_teacher_arch"] == "small_cnn_nobn"


def test_installed_names(tmp_path: Path) -> None:
    """Outside the checkout, the methods import as bench.methods and never as a top-level
    `methods`; the distribution is advdistill-bench (`bench` on the index is another)."""
    probe = ("import importlib.metadata as m, importlib.util as u\n"
             "print(u.find_spec('methods') is None, u.find_spec('bench.methods').origin)\n"
             "print(m.distribution('advdistill-bench').entry_points['bench'].value)\n")
    res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": ""})
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.splitlines()
    top_level_absent, origin = first.split(" ", 1)
    assert top_level_absent == "True" and origin.endswith(os.path.join("methods", "__init__.py"))
    assert second == "bench.cli:main"
