"""Sweeps through submitit's local executor: cells as jobs, teachers trained once, first."""

from __future__ import annotations

from pathlib import Path

from bench.core.store import Store
from bench.train.cells import Cell
from bench.train.pipeline import EvalOptions
from bench.train.runner import RunOptions
from bench.train.sweep import SweepOptions, sweep


def test_local_sweep_stores_every_cell_and_trains_the_teacher_once(tmp_path: Path,
                                                                    monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # three job processes share two cores
    quick = (("epochs", 1),)
    cells = [Cell("standard", seed=1, overrides=quick), Cell("rslad", overrides=quick),
             Cell("ard", overrides=quick)]
    opts = RunOptions(out=tmp_path, channels_last=True, log=lambda *_: None)
    n = sweep(cells, opts, EvalOptions(attacks=("clean",)),
              SweepOptions(executor="local", timeout_min=10), log=lambda *_: None)
    rows, problems = Store(tmp_path).read()
    assert not problems and n == len(rows) == 6  # best + last for each cell
    assert sorted((r["method"], r["seed"]) for r in rows if r["checkpoint"] == "last") == [
        ("ard", 0), ("rslad", 0), ("standard", 1)]
    # rslad and ard share one PGD-AT teacher: trained by one job, before both.
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 1
    assert {r["config"]["teacher"] for r in rows if r["method"] in ("rslad", "ard")} == {
        next(iter(tmp_path.glob("teachers/*.pt"))).stem}
    assert all(r["channels_last"] for r in rows)  # the jobs run with the sweep's options
    assert list((tmp_path / "submitit").iterdir())  # submitit's own job folders and logs
