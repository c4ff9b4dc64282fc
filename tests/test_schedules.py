"""Shortened (or lengthened) runs keep the preset's schedule in proportion: an `epochs` override
scales every epoch landmark (LR milestones, SWA start, CIARD's teacher and rate landmarks, IAD's
warm-up) by round(m * N / E), halves up, unless the user sets that landmark too; a landmark
that cannot scale fails at resolve time, in one line, before any training."""

from __future__ import annotations

import math

import pytest
from cli_run import cli

from bench import BenchError
from bench.core import registry
from bench.core.distiller import scale_landmarks
from bench.train.cells import Cell, budget_note, resolve


def _up(m: int, n: int, e: int) -> int:
    """round(m * n / e) with halves up, written out for the tests (floor(x + 1/2))."""
    return math.floor(m * n / e + 0.5)


def _params(method: str, dataset: str = "digits", preset: str = "faithful", **over):
    return resolve(Cell(method, dataset, preset=preset, overrides=tuple(over.items()))).params


# --- the rule --------------------------------------------------------------------------------

def test_peeraid_milestones_and_swa_start_scale_on_the_embedded_set() -> None:
    p = _params("peeraid", epochs=3)  # the 15-epoch budget's (10, 13): 2.0 and 2.6
    assert p.milestones == (2, 3) and p.swa_start is None  # SWA from the first milestone
    assert p.lr_at(1) == 0.05 and p.lr_at(2) == pytest.approx(0.005)  # the LR does decay now
    p = _params("peeraid", epochs=8)  # 5.33 and 6.93
    assert p.milestones == (5, 7)
    p = _params("peeraid", epochs=30)  # longer runs stretch the schedule alike
    assert p.milestones == (20, 26)


def test_peeraid_paper_schedule_scales_from_its_300_epochs() -> None:
    p = _params("peeraid", preset="paper", epochs=15)  # (214, 259, 284) of 300
    assert p.milestones == (11, 13, 14)  # 10.7, 12.95, 14.2
    assert p.milestones == tuple(_up(m, 15, 300) for m in (214, 259, 284))
    p = _params("peeraid", "cifar10", epochs=30)
    assert p.milestones == (21, 26, 28) and p.epochs == 30  # 21.4, 25.9, 28.4


def test_saad_explicit_swa_start_scales() -> None:
    p = _params("saad", epochs=6)  # SWA from 7 of 15 -> 2.8; milestones 4.0, 5.2
    assert (p.swa_start, p.milestones) == (3, (4, 5))
    p = _params("saad", "cifar10", epochs=50)  # 94 of 200 -> 23.5: halves go up
    assert (p.swa_start, p.milestones) == (24, (25, 38))


def test_multistep_method_scales_and_a_landmark_past_the_run_stays_past_it() -> None:
    p = _params("pgdat", "cifar10", epochs=20)  # (100, 150) of 200
    assert (p.lr_schedule, p.milestones) == ("multistep", (10, 15))
    assert p.lr_at(9) == 0.1 and p.lr_at(10) == pytest.approx(0.01)
    assert p.lr_at(15) == pytest.approx(0.001)
    # TRADES' script runs 76 epochs with milestones (74, 89, 99): two of them never fire
    p = _params("trades", "cifar10", epochs=38)
    assert p.milestones == (37, 45, 50)  # 37.0, 44.5, 49.5: still one inside, two past
    assert p.lr_at(36) == 0.1 and p.lr_at(37) == pytest.approx(0.01)


def test_ciard_and_iad_landmarks_scale() -> None:
    p = _params("ciard", "cifar10", epochs=30)
    assert (p.milestones, p.teacher_milestones, p.teacher_from) == ((15,), (5,), 5)
    assert p.rate_milestones == (22, 26, 29)  # 21.5, 26, 28.5
    assert _params("iad", "cifar10", epochs=20).warmup == 6  # 60 of 200


def test_the_rule_is_the_one_that_made_the_embedded_landmarks() -> None:
    """CIARD's 300-epoch, IAD's and SAAD's 200-epoch landmarks, scaled to the embedded 15
    epochs by the same rule, are exactly what their faithful presets set on digits."""
    own = {"ciard": ("milestones", "teacher_milestones", "teacher_from", "rate_milestones"),
           "iad": ("warmup",), "saad": ("swa_start",)}  # the LR milestones: the budget's
    for name, keys in own.items():
        cls = registry.get(name)
        scaled = scale_landmarks(cls.Params(), 15)
        digits = cls.resolve("faithful", "digits", budget={"epochs": 15})
        assert {k: getattr(digits, k) for k in keys} == {k: scaled[k] for k in keys}, name
    assert scale_landmarks(registry.get("ciard").Params(), 15)["teacher_from"] == 3  # 2.5 up


def test_an_explicit_landmark_wins() -> None:
    p = _params("peeraid", epochs=3, milestones=(1,))
    assert p.milestones == (1,)
    p = _params("saad", epochs=6, swa_start=1)
    assert (p.swa_start, p.milestones) == (1, (4, 5))  # the others still scale
    p = _params("ciard", "cifar10", epochs=4, rate_milestones=(1, 2, 3))  # would collapse
    assert (p.rate_milestones, p.milestones, p.teacher_from) == ((1, 2, 3), (2,), 1)
    # the same epochs as the preset's: nothing scales
    assert _params("pgdat", epochs=15).milestones == (10, 13)


def test_a_collapse_is_one_clear_error_naming_the_landmark_and_the_fix() -> None:
    with pytest.raises(BenchError) as e:
        resolve(Cell("pgdat", overrides=(("epochs", 4),)))  # 2.67 and 3.47: both 3
    msg = str(e.value)
    assert msg == ("pgdat: milestones (10, 13) of the 15-epoch schedule cannot scale to 4 "
                   "epochs (10 and 13 both land on epoch 3); set them yourself, e.g. "
                   "--set milestones=2,3")
    assert "\n" not in msg
    assert resolve(Cell("pgdat", overrides=(("epochs", 4), ("milestones", (2, 3))))).params
    with pytest.raises(BenchError, match=r"ciard: rate_milestones \(11, 13, 14\) .* 8 epochs "
                                         r"\(13 and 14 both land on epoch 7\).*"
                                         r"--set rate_milestones=5,6,7$"):
        resolve(Cell("ciard", overrides=(("epochs", 8),)))


# --- cell ids ----------------------------------------------------------------------------------

FIXED_IDS = {  # computed before landmarks scaled: a run without --epochs keeps its id
    Cell("peeraid"): "peeraid-faithful-digits-small_cnn-s0-172765db92",
    Cell("pgdat"): "pgdat-faithful-digits-small_cnn-s0-7aa49dd566",
    Cell("saad"): "saad-faithful-digits-small_cnn-s0-f4f3034593",
    Cell("iad"): "iad-faithful-digits-small_cnn-s0-99758d3554",
    Cell("peeraid", preset="paper"): "peeraid-paper-digits-small_cnn-s0-8c29b28480",
    # (their clean teacher, a `standard` cell, is selected by clean accuracy since 2026-12-07:
    # a new teacher id, so new ids; --epochs still changes nothing else)
    Cell("ciard", "cifar10"): "ciard-faithful-cifar10-resnet18-s0-4b3b841c72",
    Cell("mtard", "cifar10"): "mtard-faithful-cifar10-resnet18-s0-479c1117b5",
    Cell("iad", "cifar10", preset="paper"): "iad-paper-cifar10-resnet18-s0-f2ff4e4ee9",
    # every landmark set by the user: nothing to scale, the id as before
    Cell("peeraid", overrides=(("epochs", 4), ("milestones", (2,)))):
        "peeraid-faithful-digits-small_cnn-s0-4573b54a74",
    # the preset's own epochs: nothing scales, the same id as no override at all
    Cell("pgdat", overrides=(("epochs", 15),)): "pgdat-faithful-digits-small_cnn-s0-7aa49dd566",
}


@pytest.mark.parametrize("cell", list(FIXED_IDS), ids=lambda c: f"{c.method}-{c.overrides}")
def test_unscaled_cell_ids_are_unchanged(cell: Cell) -> None:
    assert resolve(cell).id == FIXED_IDS[cell]


def test_scaled_values_are_in_the_recorded_config_and_the_id() -> None:
    r = resolve(Cell("peeraid", overrides=(("epochs", 3),)))
    assert r.config["params"]["milestones"] == (2, 3) and r.params.milestones == (2, 3)
    assert r.id != "peeraid-faithful-digits-small_cnn-s0-0da2cbc816"  # the unscaled (10, 13)
    same = resolve(Cell("peeraid", overrides=(("epochs", 3), ("milestones", (2, 3)))))
    assert same.id == r.id  # scaled or set by hand, the same run is the same cell


def test_a_trained_teacher_scales_with_its_student() -> None:
    r = resolve(Cell("rslad", overrides=(("epochs", 3),)))
    assert r.teacher_cell is not None
    assert resolve(r.teacher_cell).params.milestones == (2, 3)
    # CIARD's own landmarks set, its trained teachers' (10, 13) still collapse at 4 epochs
    over = (("epochs", 4), ("rate_milestones", (2, 3, 4)))
    with pytest.raises(BenchError, match=r"^ciard's teacher pgdat: milestones \(10, 13\) .*"
                                         r"--set milestones=2,3$"):
        resolve(Cell("ciard", overrides=over))
    r = resolve(Cell("ciard", overrides=(*over, ("milestones", (2, 3)))))  # the fix given
    assert r.params.milestones == (2, 3)  # the student's cosine-exp from epoch 2
    for t in (r.teacher_cell, r.clean_teacher_cell):  # the landmarks set go with the epochs
        assert resolve(t).params.milestones == (2, 3) and resolve(t).params.epochs == 4


# --- the command line ------------------------------------------------------------------------

@pytest.fixture
def no_training(monkeypatch):
    import bench.train.pipeline
    import bench.train.runner

    def refuse(*_a, **_k):
        raise AssertionError("trained")

    monkeypatch.setattr(bench.train.runner.Trainer, "train", refuse)
    monkeypatch.setattr(bench.train.pipeline, "run_cell", refuse)


def test_cli_refuses_a_landmark_that_cannot_scale_before_training(tmp_path, capsys,
                                                                  no_training) -> None:
    code, out, err = cli(["run", "--methods", "peeraid,pgdat", "--epochs", "4", "--attacks",
                          "clean", "--out", str(tmp_path)], capsys)
    assert code == 1
    assert err == ("error: peeraid: milestones (10, 13) of the 15-epoch schedule cannot scale "
                   "to 4 epochs (10 and 13 both land on epoch 3); set them yourself, e.g. "
                   "--set milestones=2,3\n")
    f = tmp_path / "grid.toml"  # an experiment file's epochs is the same override
    f.write_text('methods = ["pgdat"]\nepochs = 4\nattacks = ["clean"]\n')
    code, _, err = cli(["run", "--config", str(f), "--out", str(tmp_path)], capsys)
    assert code == 1 and err.count("\n") == 1 and "--set milestones=2,3" in err
    code, _, err = cli(["run", "--methods", "pgdat", "--set", "epochs=4", "--out",
                        str(tmp_path)], capsys)
    assert code == 1 and "pgdat: milestones (10, 13)" in err


def test_show_preset_shows_the_scaled_landmarks(capsys) -> None:
    code, out, err = cli(["show-preset", "peeraid", "--dataset", "digits", "--epochs", "3"],
                         capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert "  scaled from 15 to 3 epochs: milestones (10, 13) -> (2, 3)" in lines
    assert "  epochs = 3" in lines and "  milestones = (2, 3)" in lines
    code, out, _ = cli(["show-preset", "peeraid", "--dataset", "digits"], capsys)
    assert "  milestones = (10, 13)" in out.splitlines() and "scaled" not in out
    code, out, _ = cli(["show-preset", "ciard", "--epochs", "30"], capsys)  # cifar10, 300
    assert ("  scaled from 300 to 30 epochs: milestones (149,) -> (15,), teacher_milestones "
            "(49,) -> (5,), rate_milestones (215, 260, 285) -> (22, 26, 29), teacher_from 50 "
            "-> 5") in out.splitlines()
    code, _, err = cli(["show-preset", "pgdat", "--dataset", "digits", "--epochs", "4"], capsys)
    assert code == 1 and "--set milestones=2,3" in err


def test_paper_preset_on_the_embedded_set_says_its_budget_before_training(
        tmp_path, capsys, monkeypatch) -> None:
    import bench.train.pipeline

    def fake_run_cell(cell, *_a, **_k):
        print(f"TRAINING {cell.method} {cell.preset}")
        return []

    monkeypatch.setattr(bench.train.pipeline, "run_cell", fake_run_cell)
    code, out, err = cli(["run", "--methods", "peeraid,pgdat", "--preset", "paper", "--attacks",
                          "clean", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    flat = " ".join(out.split())  # the console wraps long lines
    note = "peeraid paper on digits: 300 epochs (the paper's budget, not the embedded set's 15)"
    assert note in flat and flat.index(note) < flat.index("TRAINING peeraid paper")
    assert ("pgdat paper on digits: 200 epochs (the paper's budget, not the embedded set's 15)"
            in flat)
    code, out, err = cli(["run", "--methods", "peeraid", "--attacks", "clean", "--out",
                          str(tmp_path)], capsys)
    assert code == 0, err
    assert "budget" not in out  # faithful: the embedded set's own budget, no note
    r = resolve(Cell("peeraid", preset="paper", overrides=(("epochs", 15),)))
    assert budget_note(r) is None  # the user chose the length
    assert r.params.milestones == (11, 13, 14)
