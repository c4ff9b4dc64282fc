"""Grids, sweeps and experiment files: options -> cells, the same from the CLI, a TOML file
and run_all.py; stored cells are never trained twice."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cli_run import cli, run_all_module

from bench import BenchError
from bench.cli import main, run
from bench.core.store import Store
from bench.train import experiment
from bench.train.cells import resolve

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--methods", "standard,pgdat", "--archs", "small_cnn,small_cnn_nobn", "--seeds", "0,1",
        "--epochs", "1", "--attacks", "clean,pgd20", "--threads", "1"]
GRID_TOML = """\
methods = ["standard", "pgdat"]
archs = ["small_cnn", "small_cnn_nobn"]
seeds = [0, 1]
epochs = 1
attacks = ["clean", "pgd20"]
threads = 1
"""
SWEEP = ["--methods", "pgdat", "--sweep", "lr=0.05,0.1", "--sweep", "steps=1,2", "--seeds",
         "0,1", "--epochs", "1", "--attacks", "clean", "--threads", "1"]


def _cells(out: Path) -> dict[str, dict]:
    """cell id -> its `last` row (one per finished cell)."""
    rows, problems = Store(out).read()
    assert not problems
    return {r["cell_id"]: r for r in rows if r["checkpoint"] == "last"}


@pytest.fixture
def no_training(monkeypatch):
    import bench.train.runner

    def refuse(self):
        raise AssertionError(f"trained {self.r.id} again")

    monkeypatch.setattr(bench.train.runner.Trainer, "train", refuse)


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grid")
    main(["run", *GRID, "--out", str(out)])  # one command, the whole grid
    return out


def test_grid_is_one_command_with_one_cell_per_combination(grid_store: Path) -> None:
    cells = _cells(grid_store)
    assert len(cells) == 8
    assert sorted((r["method"], r["arch"], r["seed"]) for r in cells.values()) == sorted(
        (m, a, s) for m in ("standard", "pgdat") for a in ("small_cnn", "small_cnn_nobn")
        for s in (0, 1))
    assert {r["epochs"] for r in cells.values()} == {1}


def test_same_grid_from_a_toml_file_has_the_same_cells_and_trains_nothing(
        grid_store: Path, tmp_path: Path, capsys, no_training) -> None:
    f = tmp_path / "grid.toml"
    f.write_text(GRID_TOML)
    dm = experiment.load(f, run)
    from_file = experiment.grid(dm["methods"], "digits", dm["archs"], dm["seeds"],
                                epochs=dm["epochs"]).cells()
    assert {resolve(c).id for c in from_file} == set(_cells(grid_store))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (grid_store / "rows").iterdir())
    code, out, err = cli(["run", "--config", str(f), "--out", str(grid_store)], capsys)
    assert code == 0, err
    assert out.count("skip ") == 8  # every cell found in the store
    assert sorted((p.name, p.stat().st_mtime_ns)
                  for p in (grid_store / "rows").iterdir()) == before
    for arch in ("small_cnn", "small_cnn_nobn"):  # one table per (data set, arch)
        assert out.count(f"digits / {arch}: accuracy") == 1


def test_flags_override_the_file(grid_store: Path, tmp_path: Path, capsys,
                                 no_training) -> None:
    f = tmp_path / "grid.toml"
    f.write_text(GRID_TOML)
    code, out, err = cli(["run", "--config", str(f), "--seeds", "1", "--archs", "small_cnn",
                             "--out", str(grid_store)], capsys)
    assert code == 0, err
    assert out.count("skip ") == 2 and "-small_cnn-s1-" in out and "-s0-" not in out


def test_run_all_takes_the_same_file(grid_store: Path, tmp_path: Path, capsys,
                                     no_training) -> None:
    run_all = run_all_module()
    f = tmp_path / "grid.toml"
    f.write_text(GRID_TOML.replace("threads = 1\n", ""))
    rc = run_all.main(["--config", str(f), "--out", str(grid_store), "--report-dir",
                       str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "8 cell(s) reused" in out and "0 to train" in out
    assert (tmp_path / "rep" / "results.md").is_file()


def test_run_all_fans_out_through_submitit(tmp_path: Path, capsys) -> None:
    run_all = run_all_module()
    rc = run_all.main(["--methods", "standard", "--epochs", "1", "--attacks", "clean",
                       "--executor", "debug", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "1 to train" in out and "submitting 1 cell job(s) to debug" in out
    assert len(_cells(tmp_path)) == 1 and (tmp_path / "report" / "index.html").is_file()


def test_sweep_2x2_over_2_seeds_is_8_cells_and_a_rerun_trains_nothing(
        tmp_path: Path, capsys, monkeypatch) -> None:
    code, _, err = cli(["run", *SWEEP, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    cells = _cells(tmp_path)
    assert len(cells) == 8
    got = sorted((r["config"]["params"]["lr"], r["config"]["params"]["steps"], r["seed"])
                 for r in cells.values())
    assert got == sorted((lr, st, s) for lr in (0.05, 0.1) for st in (1, 2) for s in (0, 1))
    import bench.train.runner

    monkeypatch.setattr(bench.train.runner.Trainer, "train",
                        lambda self: pytest.fail(f"trained {self.r.id} again"))
    code, out, err = cli(["run", *SWEEP, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert out.count("skip ") == 8 and _cells(tmp_path).keys() == cells.keys()


@pytest.mark.parametrize(("argv", "needle"), [
    (["--sweep", "lrr=0.1,0.2"], "of PGDATParams 'lrr'; did you mean 'lr'?"),
    (["--sweep", "epochs=1,2.5"], "hyper-parameter epochs must be an integer, got 2.5"),
    (["--sweep", "lr=0.1,fast"], "hyper-parameter lr must be a number, got 'fast'"),
    (["--sweep", "lr="], "--sweep lr= names no value"),
    (["--sweep", "lr"], "--sweep takes key=v1,v2"),
    (["--sweep", "lr=0.1", "--set", "lr=0.2"], "lr is both --set and --sweep"),
    (["--archs", ","], "--archs names no architecture"),
], ids=["unknown-key", "wrong-type", "wrong-type-text", "empty", "no-equals", "set-and-sweep",
        "archs-empty"])
def test_bad_sweep_is_one_line(argv, needle, tmp_path: Path, capsys) -> None:
    code, _, err = cli(["run", "--methods", "pgdat", *argv, "--out", str(tmp_path)], capsys)
    lines = err.strip().splitlines()
    assert code not in (0, None) and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    if "did you mean" in needle:  # an unknown key names the valid ones
        assert "(valid: " in lines[0] and "steps" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("text", "needle"), [
    ("epoch = 3\n", "unknown key in {f} 'epoch'; did you mean 'epochs'?"),
    ("epochs = \"three\"\n", "{f}: epochs must be an integer, got 'three'"),
    ("epochs = 2.5\n", "{f}: epochs must be an integer, got 2.5"),
    ("methods = []\n", "{f}: methods must be a non-empty list"),
    ("select = \"train\"\n", "{f}: select must be one of 'test', 'val'"),
    ("redo = 1\n", "{f}: redo must be true or false"),
    ("sweep = {lr = []}\n", "{f}: sweep.lr must be a non-empty list"),
    ("set = 4\n", "{f}: set must be a table"),
    ("methods = [\"pgdat\"\n", "is not valid TOML"),
    ("dataset = \"digits\"\ndatasets = [\"digits\"]\n", "datasets is given twice"),
], ids=["unknown-key", "text-for-int", "float-for-int", "empty-list", "choice", "flag",
        "empty-sweep", "set-not-table", "not-toml", "alias-twice"])
def test_bad_experiment_file_is_one_line(text, needle, tmp_path: Path, capsys) -> None:
    f = tmp_path / "exp.toml"
    f.write_text(text)
    code, _, err = cli(["run", "--config", str(f), "--out", str(tmp_path / "o")], capsys)
    lines = err.strip().splitlines()
    assert code not in (0, None) and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle.format(f=f) in lines[0], lines[0]
    assert not (tmp_path / "o").exists()


def test_all_methods_and_report_keys(tmp_path: Path, capsys) -> None:
    from bench.core import registry

    assert experiment.grid("all", "digits", None, "0").methods == registry.names()
    f = tmp_path / "exp.toml"
    f.write_text('methods = "pgdat"\nreport-dir = "rep"\nexecutor = "local"\n')
    assert experiment.load(f, run, experiment.REPORT_KEYS)["executor"] == "local"
    with pytest.raises(BenchError, match="unknown key in .* 'report-dir'"):
        experiment.load(f, run)


def test_missing_experiment_file(tmp_path: Path, capsys) -> None:
    code, _, err = cli(["run", "--config", str(tmp_path / "nope.toml")], capsys)
    assert code not in (0, None) and "nope.toml" in err and len(err.strip().splitlines()) == 1


def test_file_set_and_sweep_tables_become_cell_overrides(tmp_path: Path) -> None:
    f = tmp_path / "exp.toml"
    f.write_text('methods = "peeraid"\nset = {t = 4, kl_reduction = "sum"}\n'
                 'sweep = {g2 = [0.01, 1], milestones = [[1, 3], [2]]}\n')
    dm = experiment.load(f, run)
    g = experiment.grid(dm["methods"], "digits", None, "0", sets=dm["sets"],
                        sweep=dm["sweep"])
    cells = g.cells()
    assert len(cells) == 4
    params = [resolve(c).params for c in cells]
    assert {(p.t, p.kl_reduction) for p in params} == {(4, "sum")}
    assert sorted((p.g2, tuple(p.milestones)) for p in params) == sorted(
        (g2, m) for g2 in (0.01, 1) for m in ((1, 3), (2,)))
    assert len({resolve(c).id for c in cells}) == 4


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_shipped_experiments_resolve(path: Path) -> None:
    dm = experiment.load(path, run, experiment.REPORT_KEYS)
    cells = experiment.grid(dm["methods"], dm.get("datasets", "digits"), dm.get("archs"),
                            dm.get("seeds", "0"), dm.get("preset", "faithful")).cells()
    ids = {resolve(c).id for c in cells}
    assert len(ids) == len(cells) > 0
    if path.stem.startswith("peeraid_table1"):
        # Table 1's baselines and PeerAiD (IAD as iad and iad2) x two students x three seeds
        assert len(cells) == 9 * 2 * 3
        assert {c.arch for c in cells} == {"resnet18", "wrn34_10"}
        assert {c.preset for c in cells} == {"paper"}


def test_bench_run_and_run_all_take_one_declared_option_list() -> None:
    """Both commands' grid options come from GridOptions' fields: the same names, flags and
    defaults (but the methods each runs), listed under their groups' headings."""
    import click

    from bench.options import GridOptions, RunControl

    def options(command: click.Command) -> dict[str, tuple]:
        return {p.name: (tuple(p.opts), p.default) for p in command.params
                if isinstance(p, click.Option)}

    ours, report = options(run), options(run_all_module().cli)
    fields = [f.name for f in dataclasses.fields(GridOptions)]
    assert all(ours[n] == report[n] for n in fields if n != "methods")
    assert set(ours) - set(fields) == {f.name for f in dataclasses.fields(RunControl)} | {"config"}
    assert set(report) - set(fields) == {"report_dir", "no_train", "names", "config"}
    ctx = click.Context(run)
    text = run.get_help(ctx)
    for heading in ("What to train:", "Teachers and peers:", "Selection and evaluation:",
                    "How it computes:", "Output and cluster jobs:", "Resuming and debugging:"):
        assert heading in text
    assert text.index("--teacher-arch") > text.index("Teachers and peers:") > text.index(
        "--sweep")


def test_run_all_reads_past_every_option_of_bench_run_alone(tmp_path: Path, capsys) -> None:
    """An experiment file written for `bench run` (resume, read-every, ...) serves run_all.py
    too: its keys are read past there, not rejected."""
    f = tmp_path / "exp.toml"
    f.write_text('methods = "pgdat"\nread-every = 5\nnum-workers = 0\nrestart = true\n'
                 'redo = true\ndetect-anomaly = false\n')
    rc = run_all_module().main(["--config", str(f), "--out", str(tmp_path / "o"), "--no-train"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "1 missing (--no-train: not trained)" in out
    (tmp_path / "bad.toml").write_text('methods = "pgdat"\nread-evry = 5\n')
    assert run_all_module().main(["--config", str(tmp_path / "bad.toml"), "--no-train",
                            "--out", str(tmp_path / "o")]) != 0
    assert "read-evry" in capsys.readouterr().err
