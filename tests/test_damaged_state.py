"""Damaged state is handled loudly: corrupt epoch checkpoints, a corrupt cached teacher, lost
result rows and a first epoch with a non-finite loss each say in one line what was lost and
what bench does about it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_run import cli, run_all_module

from bench import BenchError
from bench.cli import main
from bench.core.store import Store
from bench.train import checkpoint
from bench.train.cells import Cell, resolve
from bench.train.pipeline import checkpoint_names
from bench.train.runner import RunOptions, Trainer
from bench.train.teachers import robustbench_model

# RSLAD: a teacher (PGD-AT) trained and cached here, then the student; two epochs each.
RUN = ["run", "--methods", "rslad", "--epochs", "2", "--attacks", "clean"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished run, copied by each test that damages it."""
    out = tmp_path_factory.mktemp("trained")
    main([*RUN, "--out", str(out)])
    return out


def _copy(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    return out


def _run_dir(out: Path, method: str) -> Path:
    (d,) = (out / "runs").glob(f"{method}-*")
    return d


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _rerun(out: Path, capsys) -> str:
    code, stdout, stderr = cli([*RUN, "--out", str(out)], capsys)
    assert code == 0, stdout + stderr
    return stdout


def _no_training(monkeypatch) -> None:
    def fail(self, epoch):
        raise AssertionError(f"epoch {epoch + 1} of {self.r.id} was trained")

    monkeypatch.setattr(Trainer, "_train_epoch", fail)


# -- epoch checkpoints -----------------------------------------------------------------
def test_a_corrupt_checkpoint_resumes_from_the_previous_one_with_a_line(trained, tmp_path,
                                                                        capsys):
    out = _copy(trained, tmp_path)
    shutil.rmtree(out / "rows")
    d = _run_dir(out, "rslad")
    _truncate(d / "ckpt.pt")
    log = _rerun(out, capsys)
    assert (f"warning: ckpt.pt of {d.name} is damaged (truncated); resuming from epoch 1 (the "
            "previous checkpoint): epoch 2 is trained again") in log
    assert "[rslad] epoch 2/2" in log and "[rslad] epoch 1/2" not in log
    assert f"resuming {d.name}" not in log  # one line, not two
    assert checkpoint.load_latest(d / "ckpt.pt")["epoch"] == 2


def test_two_corrupt_checkpoints_train_from_epoch_1_with_a_line(trained, tmp_path, capsys):
    out = _copy(trained, tmp_path)
    shutil.rmtree(out / "rows")
    d = _run_dir(out, "rslad")
    _truncate(d / "ckpt.pt")
    (d / "ckpt.prev.pt").write_bytes(b"")
    log = _rerun(out, capsys)
    assert (f"warning: ckpt.pt and ckpt.prev.pt of {d.name} are damaged (ckpt.pt: truncated; "
            "ckpt.prev.pt: empty file); no usable checkpoint: training from epoch 1") in log
    assert "[rslad] epoch 1/2" in log and "[rslad] epoch 2/2" in log
    assert len(Store(out).read()[0]) == 2


@pytest.mark.parametrize(("damage", "note"), [
    ("latest", "ckpt.pt of c is damaged (truncated); resuming from epoch 1"),
    ("prev-only", "ckpt.prev.pt of c is damaged (truncated); no usable checkpoint"),
    ("foreign", "ckpt.pt of c is damaged (not a bench checkpoint); resuming from epoch 1"),
    ("missing", None),  # killed between save's two renames: no damage, a plain resume
])
def test_damage_note(tmp_path, damage, note):
    path = tmp_path / "ckpt.pt"
    for epoch in (1, 2):
        checkpoint.save(path, {"epoch": epoch, "w": torch.zeros(1000)})
    if damage == "latest":
        _truncate(path)
    elif damage == "prev-only":
        path.unlink()
        _truncate(path.with_suffix(".prev.pt"))
    elif damage == "foreign":
        torch.save({"w": torch.zeros(3)}, path)
    else:
        path.unlink()
    found = checkpoint.find(path)
    got = checkpoint.damage_note(found, "c")
    assert got == note if note is None else got.startswith(f"warning: {note}")


# -- the non-finite loss stop ------------------------------------------------------------
def test_a_first_epoch_with_a_nan_loss_names_no_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = cli(["run", "--methods", "pgdat", "--epochs", "2", "--set", "lr=1e30",
                        "--attacks", "clean", "--out", str(out)], capsys)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("error: loss is nan at epoch 1"), line
    assert line.endswith("stopped; no epoch finished, so no checkpoint was kept"), line
    assert not list((out / "runs").glob("*/ckpt*.pt"))


def test_a_cell_that_stops_does_not_lose_the_grids_other_cells(tmp_path, capsys):
    out = tmp_path / "out"
    code, text, err = cli(["run", "--methods", "pgdat", "--epochs", "1", "--sweep",
                           "lr=1e30,0.05", "--attacks", "clean", "--out", str(out)], capsys)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("error: 1 of 2 cells stopped (the others are stored): pgdat seed 0: "
                           "loss is nan at epoch 1"), line
    rows = [json.loads(p.read_text()) for p in (out / "rows").glob("*.json")]
    assert {r["config"]["params"]["lr"] for r in rows} == {0.05}  # the other cell, stored
    assert "PGD-AT" in text  # and its table printed


# -- teachers -----------------------------------------------------------------------------
def _cached_teacher(out: Path) -> Path:
    (t,) = (out / "teachers").glob("*.pt")
    return t


def test_a_corrupt_cached_teacher_is_rebuilt_from_its_run(trained, tmp_path, capsys,
                                                          monkeypatch):
    out = _copy(trained, tmp_path)
    shutil.rmtree(out / "rows")
    cached = _cached_teacher(out)
    _truncate(cached)
    _no_training(monkeypatch)  # the teacher's run and the student's are both finished
    log = _rerun(out, capsys)
    assert (f"warning: cached teacher {cached} is damaged (truncated); moved to "
            f"{cached.name}.damaged, rebuilding it from its run's stored checkpoints") in log
    assert checkpoint.verified(cached)["id"] == cached.stem
    assert cached.with_name(cached.name + ".damaged").exists()
    assert len(Store(out).read()[0]) == 2


def test_a_corrupt_cached_teacher_without_its_run_is_retrained(trained, tmp_path, capsys):
    out = _copy(trained, tmp_path)
    shutil.rmtree(out / "rows")
    cached = _cached_teacher(out)
    cached.write_bytes(b"\0" * 100)
    (_run_dir(out, "pgdat") / "best.pt").unlink()
    log = _rerun(out, capsys)
    assert (f"warning: cached teacher {cached} is damaged (UnpicklingError: Unsupported operand "
            f"0); moved to "
            f"{cached.name}.damaged, training it again (best.pt gone or damaged too)") in log
    assert "[pgdat] epoch 1/2" in log and "[pgdat] epoch 2/2" in log
    assert "[rslad] epoch" not in log  # the student's own run is finished
    assert checkpoint.verified(cached)["id"] == cached.stem


def test_a_corrupt_teacher_file_given_is_one_line_naming_it_and_the_remedy(trained, tmp_path,
                                                                           capsys):
    given = tmp_path / "my_teacher.pt"
    shutil.copy(_cached_teacher(trained), given)
    _truncate(given)
    code, _, err = cli([*RUN, "--teacher", str(given), "--out", str(tmp_path / "out")], capsys)
    assert code == 1
    assert err.strip() == (f"error: teacher checkpoint {given} is not a readable checkpoint "
                           "(truncated); replace it with an intact copy")


def test_a_corrupt_downloaded_robustbench_teacher_names_the_file_and_the_remedy(tmp_path):
    name = "Sehwag2021Proxy_R18"  # a CIFAR ResNet-18 in RobustBench's Linf zoo
    target = tmp_path / "cifar10" / "Linf" / f"{name}.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"PK\3\4 cut short")
    with pytest.raises(BenchError) as err:
        robustbench_model(name, "cifar10", tmp_path)
    assert str(err.value).endswith(f"; {target} may be damaged: delete it to download it "
                                   "again, or put an intact copy there")


# -- result rows --------------------------------------------------------------------------
def _rows(out: Path) -> dict[str, Path]:
    return {p.name.rsplit("--", 1)[1].removesuffix(".json"): p for p in (out / "rows").iterdir()}


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_lost_row_is_evaluated_again_without_training(trained, tmp_path, capsys,
                                                        monkeypatch, damage):
    out = _copy(trained, tmp_path)
    rows = _rows(out)
    last = rows["last"].read_text()
    if damage == "deleted":
        rows["best"].unlink()
    else:
        _truncate(rows["best"])
    _no_training(monkeypatch)
    log = _rerun(out, capsys)
    d = _run_dir(out, "rslad")
    assert (f"{d.name}: row(s) best missing or unreadable: evaluating them again from its "
            "stored checkpoint files") in log
    assert "[rslad] best: clean" in log and "[rslad] last: clean" not in log
    assert rows["last"].read_text() == last  # the intact row is left as it was
    got, problems = Store(out).read()
    assert not problems and {r["checkpoint"] for r in got} == {"best", "last"}
    again = Store(out).get(f"{d.name}--best")
    before = Store(trained).get(f"{d.name}--best")
    assert again["clean"] == before["clean"] and again["outcomes"] == before["outcomes"]


def test_a_damaged_last_row_evaluates_the_cell_again_without_training(trained, tmp_path,
                                                                     capsys, monkeypatch):
    """`last` is written last: with it lost, every checkpoint is evaluated again (as after a
    kill during the evaluation), from the stored files."""
    out = _copy(trained, tmp_path)
    _truncate(_rows(out)["last"])
    _no_training(monkeypatch)
    log = _rerun(out, capsys)
    d = _run_dir(out, "rslad")
    assert (f"{d.name}: row(s) last missing or unreadable: evaluating all its checkpoints "
            "again from its stored checkpoint files") in log
    assert "[rslad] best: clean" in log and "[rslad] last: clean" in log
    assert Store(out).get(f"{d.name}--last")["clean"] == Store(trained).get(
        f"{d.name}--last")["clean"]


def test_a_lost_row_whose_checkpoint_file_is_gone_retrains(trained, tmp_path, capsys):
    out = _copy(trained, tmp_path)
    _rows(out)["best"].unlink()
    d = _run_dir(out, "rslad")
    (d / "best.pt").unlink()
    log = _rerun(out, capsys)
    assert (f"{d.name}: row(s) best missing or unreadable, and its checkpoint file(s) best.pt "
            "gone or damaged: training it again") in log
    assert "[rslad] epoch 1/2" in log and "[rslad] last: clean" in log
    assert {r["checkpoint"] for r in Store(out).read()[0]} == {"best", "last"}


def test_a_complete_cell_is_still_skipped(trained, tmp_path, capsys, monkeypatch):
    out = _copy(trained, tmp_path)
    _no_training(monkeypatch)
    assert "already in the store" in _rerun(out, capsys)


@pytest.mark.parametrize(("selection", "swa"), [
    (None, False), (None, True), ("peeraid", True), ("adaad", False), ("saad", True),
    ("ard", False), ("ciard", False)])
def test_checkpoint_names_are_the_finals(selection, swa):
    """The rows a finished cell must have, known before training, are `Trainer.finals`."""
    over = (("swa", swa), ("milestones", (1,)), *((("selection", selection),) if selection
                                                   else ()))
    r = resolve(Cell("pgdat", "digits", None, overrides=over))
    trainer = Trainer(r, RunOptions(), None)
    trainer.epoch = r.params.epochs
    trainer._load = lambda name: trainer.method.student
    assert list(trainer.finals()) == checkpoint_names(r)


def test_the_report_names_the_cells_that_stopped(tmp_path, capsys):
    run_all = run_all_module()
    out, report = tmp_path / "out", tmp_path / "report"
    code = run_all.main(["--methods", "pgdat", "--epochs", "1", "--sweep", "lr=1e30,0.05",
                         "--attacks", "clean", "--out", str(out), "--report-dir", str(report)])
    assert code == 1
    assert "1 cell(s) failed" in capsys.readouterr().err
    md = (report / "results.md").read_text()
    stopped = md.split("## Cells without rows")[1]
    assert "loss is nan at epoch 1" in stopped
    assert '<section id="stopped">' in (report / "index.html").read_text()
    # rebuilt without training: the stopped cell is still named as missing, and it exits 0
    assert run_all.main(["--methods", "pgdat", "--epochs", "1", "--sweep", "lr=1e30,0.05",
                         "--attacks", "clean", "--out", str(out), "--report-dir", str(report),
                         "--no-train"]) == 0
    missing = (report / "results.md").read_text().split("## Cells without rows")[1]
    assert "no rows (not trained by this run" in missing and "bench history pgdat-" in missing
