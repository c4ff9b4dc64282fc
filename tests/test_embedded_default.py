"""End to end on the embedded default: every robust method beats standard training under PGD-20."""

from __future__ import annotations

import pytest

from bench.core.store import Store
from bench.train.cells import Cell
from bench.train.pipeline import EvalOptions, run_cell
from bench.train.runner import RunOptions

ROBUST = ["pgdat", "trades", "peeraid", "rslad", "ard", "adaad", "iad", "igdm", "saad", "absld",
          "mtard", "bmtard", "ciard", "akd2", "iad2", "cat", "ibd", "dgad", "fair_ard",
          "fair_iad", "fair_mtard", "fair_rslad:fixed"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[tuple[str, str], dict]:
    out = tmp_path_factory.mktemp("results")
    opts = RunOptions(out=out, log=lambda *_: None)
    store = Store(out)
    # fair_rslad's faithful preset stops at a NaN on this set (the script's 1/Kappa with no
    # epsilon, for a class the untrained student never gets right): its repair runs here
    for name in ["standard", *ROBUST]:
        method, _, preset = name.partition(":")
        run_cell(Cell(method, preset=preset or "faithful"), opts,
                 EvalOptions(attacks=("clean", "pgd20")), store)
    rows, problems = store.read()
    assert not problems
    return {(r["method"], r["checkpoint"]): r for r in rows}


@pytest.mark.parametrize("method", [m.partition(":")[0] for m in ROBUST])
def test_robust_method_beats_standard_training(results, method: str) -> None:
    std = results[("standard", "best")]
    for ckpt in ("best", "last"):
        r = results[(method, ckpt)]
        assert r["pgd20"] > std["pgd20"] + 0.15, (method, ckpt, r["pgd20"], std["pgd20"])
        assert r["pgd20"] < r["clean"]
        assert r["clean"] > 0.6


def test_standard_training_is_accurate_but_not_robust(results) -> None:
    std = results[("standard", "last")]
    assert std["clean"] > 0.9 and std["pgd20"] < 0.5


@pytest.mark.parametrize("method", ["peeraid", "saad"])
def test_swa_students_are_evaluated(results, method: str) -> None:
    for ckpt in ("swa_best", "swa_last"):
        r = results[(method, ckpt)]
        assert r["pgd20"] > results[("standard", "best")]["pgd20"] + 0.15
        assert r["n_pgd20"] == 360
    assert results[("saad", "last")]["config"]["params"]["swa_start"] == 7  # 95 of 200


def test_rows_carry_the_reproducibility_record(results) -> None:
    r = results[("rslad", "best")]
    assert r["config"]["params"]["epochs"] == r["epochs"] == 15
    assert r["config"]["teacher"].startswith("pgdat-faithful-digits")
    assert {"torch", "pyautoattack", "bench"} <= set(r["versions"])
    assert r["git_commit"] and r["device"].startswith("cpu")
    assert r["train_seconds"] > 0 and r["wall_seconds"] >= r["train_seconds"]
