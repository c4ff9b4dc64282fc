"""Every hyper-parameter's valid range, declared beside its field (`bounded`), and the rules
between fields (`Params.check`): the shipped presets lie inside them, and a value outside
them from --set, --sweep or an experiment file is one error line before any work."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path

import pytest
import torch
from cli_run import cli

from bench import BenchError
from bench.core import registry
from bench.core.distiller import Params, Range, RangeError, TeacherTraining, field_range
from bench.data import datasets
from bench.eval.analysis import parse_eps
from bench.models import create_model
from bench.train import experiment
from bench.train.cells import Cell, resolve


def _configurations(cls) -> list[tuple[str, str, str | None]]:
    """(preset, data set, arch) for every preset and data set, with the archs a preset
    names a schedule for ("dataset:arch" keys), as `resolve` reads them."""
    out = []
    for preset in cls.presets:
        for d in datasets.dataset_names():
            archs = {k.split(":", 1)[1] for p in cls.chain(preset) for k in p.per_dataset
                     if k.startswith(f"{d}:")}
            out += [(preset, d, a) for a in (None, *sorted(archs))]
    return out


@pytest.mark.parametrize("name", registry.names())
def test_every_shipped_configuration_is_in_range(name: str) -> None:
    cls = registry.get(name)
    cls.Params().check()  # the defaults too
    for preset, d, arch in _configurations(cls):
        cls.resolve(preset, d, arch=arch, budget=datasets.spec(d).budget).check()


@pytest.mark.parametrize("name", registry.names())
@pytest.mark.parametrize("epochs", [1, 3])
def test_a_shortened_run_stays_in_range(name: str, epochs: int) -> None:
    """Scaled landmarks may meet at the end of a short run: never refused for it."""
    resolve(Cell(name, overrides=(("epochs", epochs),)))


def _numeric(hint) -> bool:
    """An int, float or tuple-of-int field (optional or not); bools are not numbers here."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_numeric(a) for a in args)
    if typing.get_origin(hint) is tuple:
        return _numeric(args[0])
    return hint in (int, float)


def _in_tree() -> list[type]:
    """The base Params and every in-tree method's (a test's plugin may declare none)."""
    own = {registry.get(n).Params for n in registry.names()
           if registry.get(n).__module__.startswith("bench.")}
    return [Params, TeacherTraining, *sorted(own, key=lambda c: c.__name__)]


@pytest.mark.parametrize("params_cls", _in_tree(), ids=lambda c: c.__name__)
def test_every_numeric_field_declares_a_range(params_cls: type) -> None:
    hints = typing.get_type_hints(params_cls)
    numeric = [f.name for f in dataclasses.fields(params_cls) if _numeric(hints[f.name])]
    assert numeric
    assert [n for n in numeric if field_range(params_cls, n) is None] == []


def test_a_subclass_changing_a_default_keeps_the_base_range() -> None:
    cls = registry.get("adaad").Params
    assert "epochs" in vars(cls)["__dataclass_fields__"]  # redeclared: epochs: int = 200
    assert field_range(cls, "epochs") is field_range(Params, "epochs")
    assert cls().epochs == 200 and dataclasses.is_dataclass(cls)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cls().epochs = 3  # type: ignore[misc]


def test_range_reads_as_an_interval_and_refuses_non_finite_numbers() -> None:
    assert str(Range(gt=0, le=1)) == "(0, 1]" and str(Range(ge=1)) == "[1, inf)"
    assert str(Range(ge=0, lt=1)) == "[0, 1)"
    assert not Range(gt=0).admits(math.inf) and not Range().admits(math.nan)
    assert Range(ge=0).admits(None) and Range(ge=0).admits((0, 3))
    assert not Range(ge=0).admits((0, -1)) and not Range(ge=0).admits(True)


# --- refused before any work, in one line -----------------------------------------------------

BAD = [
    ("pgdat", ["--set", "steps=0"], "pgdat: steps=0 is outside its valid range [1, inf)"),
    ("pgdat", ["--set", "batch_size=0"], "pgdat: batch_size=0 is outside its valid range [1,"),
    ("pgdat", ["--set", "momentum=1"], "pgdat: momentum=1 is outside its valid range [0, 1)"),
    ("pgdat", ["--set", "lr=0"], "pgdat: lr=0 is outside its valid range (0, inf)"),
    ("pgdat", ["--set", "milestones=-1,3"],
     "pgdat: milestones=(-1, 3) is outside its valid range: every item in [0, inf)"),
    ("trades", ["--set", "beta=-1"], "trades: beta=-1 is outside its valid range [0, inf)"),
    ("rslad", ["--set", "w_adv=1.5"], "rslad: w_adv=1.5 is outside its valid range [0, 1]"),
    ("rslad", ["--set", "kl_eps=-1e-5"], "rslad: kl_eps=-1e-05 is outside its valid range"),
    ("ard", ["--set", "t=0"], "ard: t=0 is outside its valid range (0, inf)"),
    ("adaad", ["--sweep", "a=0.5,1.2"], "adaad: a=1.2 is outside its valid range [0, 1]"),
    ("peeraid", ["--sweep", "tp=1,0"], "peeraid: tp=0 is outside its valid range (0, inf)"),
    ("bmtard", ["--set", "weight_rate=2"], "bmtard: weight_rate=2 is outside its valid range"),
    ("ciard", ["--set", "teacher_momentum=1"],
     "ciard: teacher_momentum=1 is outside its valid range [0, 1)"),
    ("saad", ["--set", "w_scale=0"], "saad: w_scale=0 is outside its valid range (0, inf)"),
    ("absld", ["--set", "tau_min=0"], "absld: tau_min=0 is outside its valid range (0, inf)"),
    ("igdm", ["--set", "ramp_epochs=0"], "igdm: ramp_epochs=0 is outside its valid range [1,"),
    ("iad", ["--set", "warmup=16"],
     "iad: warmup=16 is outside its valid range [0, epochs] = [0, 15]"),
    ("pgdat", ["--set", "eps=9/8"], "pgdat: eps=1.125 is outside its valid range (0, 1]"),
]


def _one_line(code, err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert code not in (0, None) and len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]


@pytest.mark.parametrize(("method", "argv", "needle"), BAD,
                         ids=[f"{m}-{a[1]}" for m, a, _ in BAD])
def test_out_of_range_value_is_one_line_before_any_work(method, argv, needle, tmp_path: Path,
                                                        capsys, monkeypatch) -> None:
    import bench.train.pipeline

    monkeypatch.setattr(bench.train.pipeline, "run_cell",
                        lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "out"
    code, _, err = cli(["run", "--methods", method, *argv, "--out", str(out)], capsys)
    _one_line(code, err, needle)
    assert not out.exists()  # no results folder, no run folder


@pytest.mark.parametrize(("text", "needle"), [
    ('methods = "rslad"\nset = {kl_eps = -1}\n', "rslad: kl_eps=-1 is outside"),
    ('methods = "pgdat"\nsweep = {eps = ["2/255", 2]}\n',
     "pgdat: eps=2 is outside its valid range (0, 1]"),
    ('methods = "pgdat"\nepochs = 0\n', "pgdat: epochs=0 is outside its valid range [1, inf)"),
], ids=["set", "sweep", "epochs"])
def test_out_of_range_experiment_file_value_is_one_line(text, needle, tmp_path: Path,
                                                        capsys) -> None:
    f = tmp_path / "exp.toml"
    f.write_text(text)
    code, _, err = cli(["run", "--config", str(f), "--out", str(tmp_path / "o")], capsys)
    _one_line(code, err, needle)
    assert not (tmp_path / "o").exists()


# --- fractions --------------------------------------------------------------------------------

def test_set_and_sweep_take_fractions_as_bench_eval_does() -> None:
    assert experiment.overrides(["eps=8/255"]) == {"eps": 8 / 255}
    assert experiment.sweeps(["eps=2/255,8/255"]) == {"eps": [2 / 255, 8 / 255]}
    assert parse_eps("8/255") == [8 / 255]
    cells = experiment.grid("pgdat", "digits", None, "0", sets=("eps=8/255", "step=2/255"),
                            sweep=("lr=1/10,0.05",)).cells()
    params = [resolve(c).params for c in cells]
    assert {(p.eps, p.step) for p in params} == {(8 / 255, 2 / 255)}
    assert sorted(p.lr for p in params) == [0.05, 0.1]
    # not numbers: kept as text for the type check to name
    assert experiment.overrides(["eps=1/0", "lr=fast"]) == {"eps": "1/0", "lr": "fast"}


def test_cli_run_accepts_a_fraction(tmp_path: Path, capsys, monkeypatch) -> None:
    import bench.train.pipeline

    seen = []
    monkeypatch.setattr(bench.train.pipeline, "run_cell", lambda c, *a, **k: seen.append(c))
    code, _, err = cli(["run", "--methods", "pgdat", "--set", "eps=8/255", "--set",
                        "step=2/255", "--out", str(tmp_path)], capsys)
    assert code in (0, None), err
    assert [dict(c.overrides)["eps"] for c in seen] == [8 / 255]


def test_experiment_file_takes_fraction_strings(tmp_path: Path) -> None:
    from bench.cli import run

    f = tmp_path / "exp.toml"
    f.write_text('methods = "pgdat"\nset = {eps = "8/255", selection = "ciard"}\n'
                 'sweep = {step = ["1/255", 0.01]}\n')
    dm = experiment.load(f, run)
    g = experiment.grid(dm["methods"], "digits", None, "0", sets=dm["sets"], sweep=dm["sweep"])
    assert sorted((dict(c.overrides)["eps"], dict(c.overrides)["step"]) for c in g.cells()) == [
        (8 / 255, 1 / 255), (8 / 255, 0.01)]
    assert {dict(c.overrides)["selection"] for c in g.cells()} == {"ciard"}


def test_bench_eval_eps_too_large_for_a_float_is_one_error() -> None:
    with pytest.raises(BenchError, match="--eps takes comma-separated numbers"):
        parse_eps("1e999")  # was an OverflowError traceback


# --- the rules between fields -------------------------------------------------------------------

def _refused(method: str, needle: str, **over) -> None:
    with pytest.raises(RangeError) as e:
        registry.get(method).resolve("faithful", "digits", budget=datasets.spec(
            "digits").budget, **over)
    assert needle in str(e.value) and str(e.value).startswith(f"{method}: ")


def test_step_at_most_four_eps() -> None:
    _refused("pgdat", "step=0.5 is outside its valid range (0, 4*eps] = (0, 0.4]", step=0.5)
    assert registry.get("pgdat").resolve(eps=0.1, step=0.4).step == 0.4


def test_clamp_bounds_in_order() -> None:
    _refused("bmtard", "temp_min=20 is above temp_max=10.0: valid temp_min <= temp_max",
             temp_min=20)
    _refused("ciard", "temp_min=20", temp_min=20)  # inherited from MTARD
    _refused("absld", "tau_min=6 is above tau_max=5.0", tau_min=6)
    assert registry.get("absld").resolve(tau_min=2.0, tau_max=2.0).tau_min == 2.0


def test_epoch_landmarks_within_the_run() -> None:
    _refused("ciard", "teacher_from=16 is outside its valid range [0, epochs] = [0, 15]",
             teacher_from=16)
    _refused("saad", "swa_start=20 is outside its valid range [0, epochs]", swa_start=20)
    _refused("ciard", "teacher_milestones=(3, 2) must increase strictly within the run",
             teacher_milestones=(3, 2))
    _refused("pgdat", "milestones=(5, 5) must increase strictly", milestones=(5, 5))
    _refused("mtard", "rate_milestones=(9, 4)", rate_milestones=(9, 4))
    pgdat = registry.get("pgdat")
    assert pgdat.resolve(epochs=10, milestones=(4, 20, 30)).milestones == (4, 20, 30)
    assert pgdat.resolve(epochs=1, milestones=(1, 1)).milestones == (1, 1)  # met at the end
    assert registry.get("ciard").resolve(epochs=10, teacher_from=10).teacher_from == 10
    trades = registry.get("trades").resolve("faithful", "cifar10")
    assert (trades.epochs, trades.milestones) == (76, (74, 89, 99))  # the script's, kept


# --- accumulate under another default dtype ---------------------------------------------------

@pytest.fixture
def float64_default():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _absld():
    torch.manual_seed(0)

    def net():
        return create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)

    return registry.create("absld", student=net(), teacher=net(), dataset="digits",
                           budget=datasets.spec("digits").budget, steps=2)


def test_absld_loss_under_float64_default_dtype(float64_default) -> None:
    d = _absld()
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 1, 0, 3])
    assert x.dtype == torch.float64
    loss = d.loss(x, d.attack(x, y), y)
    assert torch.isfinite(loss)
    sums = d.pop_sums()
    assert {k: v.dtype for k, v in sums.items()} == {"adv": torch.float32, "nat": torch.float32}
    d.on_epoch_end(sums)
    assert torch.isfinite(d.tau_adv).all()


def test_accumulate_sums_stay_float32_by_default() -> None:
    d = _absld()
    d.accumulate("adv", torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 2, 0]), 3)
    sums = d.pop_sums()["adv"]
    assert sums.dtype == torch.float32 and sums.tolist() == [5.0, 0.0, 2.0]


# --- sweep jobs ---------------------------------------------------------------------------------

def test_sweep_refuses_a_bad_cell_before_submitit_writes_anything(tmp_path: Path) -> None:
    from bench.train.pipeline import EvalOptions
    from bench.train.runner import RunOptions
    from bench.train.sweep import SweepOptions, sweep

    cells = [Cell("standard"), Cell("pgdat", overrides=(("eps", 5),))]
    with pytest.raises(RangeError, match=r"^pgdat: eps=5 is outside its valid range \(0, 1\]$"):
        sweep(cells, RunOptions(out=tmp_path, log=lambda *_: None),
              EvalOptions(attacks=("clean",)), SweepOptions(executor="local"),
              log=lambda *_: None)
    assert not (tmp_path / "submitit").exists()
