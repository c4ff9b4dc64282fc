"""Which teacher, not only which method: the teacher axis of a grid, teacher rows that the
students' rows link to, the teacher-beside-student table and `bench plot teachers`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_run import cli, run_all_module

from bench import BenchError
from bench.train.cells import Cell, resolve, train_spec
from bench.train.experiment import grid, load


def test_teachers_are_a_grid_axis_for_the_methods_that_take_one():
    g = grid("rslad,pgdat,akd2", "digits", None, "0",
             teachers="train:pgdat:epochs=2,train:standard", clean_teachers="train:standard")
    cells = g.cells()
    by_method = {m: [c for c in cells if c.method == m] for m in ("rslad", "pgdat", "akd2")}
    assert [c.teacher for c in by_method["rslad"]] == ["train:pgdat:epochs=2", "train:standard"]
    assert [(c.teacher, c.clean_teacher) for c in by_method["pgdat"]] == [(None, None)]
    assert [c.clean_teacher for c in by_method["akd2"]] == ["train:standard"] * 2
    ids = {resolve(c).id for c in by_method["rslad"]}
    assert len(ids) == 2  # the teacher is part of the cell's identity
    with pytest.raises(BenchError, match="--teachers names no teacher"):
        grid("rslad", "digits", None, "0", teachers=" , ")


def test_an_experiment_file_takes_a_teachers_list(tmp_path: Path):
    from bench.cli import run

    f = tmp_path / "e.toml"
    f.write_text('methods = ["rslad"]\nteachers = ["train:pgdat", "train:trades:small_cnn"]\n')
    assert load(f, run)["teachers"] == "train:pgdat,train:trades:small_cnn"


def test_a_train_spec_names_method_arch_preset_and_hyper_parameters():
    s = train_spec("train:pgdat:small_cnn:preset=paper:epochs=3:eps=0.05")
    assert (s.method, s.arch, s.preset) == ("pgdat", "small_cnn", "paper")
    assert dict(s.overrides) == {"epochs": 3, "eps": 0.05}
    r = resolve(Cell("rslad", teacher="train:pgdat:epochs=3:eps=0.05"))
    assert r.teacher_cell.method == "pgdat" and dict(r.teacher_cell.overrides) == {
        "epochs": 3, "eps": 0.05}
    assert r.teacher_cell.arch == r.arch  # no arch: the student's
    # the student's run length does not leak into a spec that says it all
    r2 = resolve(Cell("rslad", overrides=(("epochs", 5),), teacher="train:pgdat:epochs=3"))
    assert dict(r2.teacher_cell.overrides) == {"epochs": 3}


@pytest.mark.parametrize("spec, message", [
    ("train:pgdt", "teacher train:pgdt: unknown method 'pgdt'; did you mean 'pgdat'"),
    ("train:pgdat:banana", "unknown arch 'banana'"),
    ("train:pgdat:small_cnn:x", "'x' is not KEY=VALUE"),
    ("train:pgdat:epochs=0", "teacher train:pgdat:epochs=0: pgdat: epochs=0 is outside"),
    ("train:pgdat:foo=1", "unknown hyper-parameter of PGDATParams 'foo'"),
    ("train:", "names no method"),
])
def test_a_bad_train_spec_is_one_line_before_any_work(spec, message, tmp_path, capsys):
    code, out, err = cli(["run", "--methods", "rslad", "--teachers", spec, "--out",
                          str(tmp_path)], capsys)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory):
    """RSLAD on digits from two teachers bench trains, 2 epochs each: two cells."""
    out = tmp_path_factory.mktemp("teachers")
    from bench.cli import main

    args = ["run", "--methods", "rslad", "--teachers",
            "train:pgdat:epochs=2,train:standard:epochs=1", "--epochs", "2",
            "--attacks", "clean,pgd20", "--out", str(out), "--threads", "1"]
    try:
        main(args)
    except SystemExit as done:
        assert done.code in (0, None)
    return out, args


def test_a_two_teacher_grid_gives_two_cells_and_two_teacher_rows(two_teachers):
    out, _ = two_teachers
    students = [json.loads(p.read_text()) for p in (out / "rows").glob("*.json")]
    teachers = {p.stem: json.loads(p.read_text())
                for p in (out / "teachers" / "rows").glob("*.json")}
    assert len({r["cell_id"] for r in students}) == 2 and len(teachers) == 2
    assert {r["teacher_row"] for r in students} == set(teachers)
    assert {r["teacher_name"] for r in students} == {
        "train:pgdat:small_cnn:epochs=2", "train:standard:small_cnn:epochs=1"}
    images = {r["test_images"] for r in students}
    assert {t["test_images"] for t in teachers.values()} == images  # the same images
    for t in teachers.values():
        assert t["role"] == "teacher" and t["attacks"] == ["clean", "pgd20"]
        assert {"clean", "pgd20", "n_clean", "outcomes"} <= set(t)


def test_a_teacher_row_is_the_teacher_evaluated_as_a_student_is(two_teachers):
    from bench.data import datasets
    from bench.eval.evaluate import Threat, correct
    from bench.models import create_model
    from bench.train.teachers import load_weights

    out, _ = two_teachers
    x, y = datasets.as_tensors(datasets.load("digits", "test"))
    spec = datasets.spec("digits")
    for p in (out / "teachers" / "rows").glob("*.json"):
        row = json.loads(p.read_text())
        net = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
        load_weights(net, out / "teachers" / f"{row['teacher']}.pt", "teacher").eval()
        torch.manual_seed(0)
        clean = correct(net, x, y, "clean", Threat(spec.eps))
        pgd = correct(net, x, y, "pgd20", Threat(spec.eps))
        assert row["clean"] == pytest.approx(clean.sum().item() / len(clean), abs=1e-12)
        assert row["pgd20"] == pytest.approx(pgd.sum().item() / len(pgd), abs=1e-12)
        assert row["pgd20"] < row["clean"]


def test_each_teacher_is_evaluated_once(two_teachers, capsys):
    out, args = two_teachers
    stamps = {p: p.stat().st_mtime_ns for p in (out / "teachers" / "rows").glob("*.json")}
    # another method from the same teachers: its own cells, the teachers' rows as they were
    code, log, err = cli([*args[:2], "ard", *args[3:]], capsys)
    assert code == 0, err
    assert "training teacher" not in log + err and "evaluating it" not in log + err
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    students = [json.loads(p.read_text()) for p in (out / "rows").glob("ard-*.json")]
    assert {r["teacher_row"] for r in students} == {p.stem for p in stamps}


def test_tables_set_each_teacher_beside_its_students(two_teachers, capsys):
    out, _ = two_teachers
    code, text, err = cli(["table", "--teachers", "--out", str(out), "--format", "markdown",
                           "--methods", "rslad"], capsys)
    assert code == 0, err
    teachers = [json.loads(p.read_text()) for p in (out / "teachers" / "rows").glob("*.json")]
    for t in teachers:  # PGD-20 (no AutoAttack ran): the teacher's own number, in %
        line = next(ln for ln in text.splitlines() if t["teacher_name"] in ln)
        assert f"| {100 * t['pgd20']:.2f} |" in line
    assert "n/a (< 3 teachers)" in text
    code, text, _ = cli(["table", "--out", str(out), "--format", "markdown"], capsys)
    assert "{teacher=pgdat:small_cnn:epochs=2}" in text  # labels name a teacher by its spec


def test_plot_teachers_draws_one_line_per_method(two_teachers, capsys, tmp_path):
    out, _ = two_teachers
    code, text, err = cli(["plot", "teachers", "--out", str(out), "--dest", str(tmp_path)],
                          capsys)
    assert code == 0, err
    assert (tmp_path / "teachers_digits_small_cnn_pgd20.png").stat().st_size > 10_000
    code, _, err = cli(["plot", "teachers", "--out", str(out), "--dest", str(tmp_path),
                        "--metric", "aa"], capsys)
    assert code != 0 and "two or more evaluated teachers measured under aa" in err


def test_rank_correlation_is_spearmans_rho():
    from bench.report.teachers import rank_correlation

    teacher = [40.0, 50.0, 60.0, 70.0, 80.0]
    student = [30.0, 45.0, 41.0, 47.0, 44.0]  # ranks 1 4 2 5 3
    g = pd.DataFrame({"teacher": list("abcde"), "teacher_acc": teacher, "student_acc": student})
    d = [1 - 1, 2 - 4, 3 - 2, 4 - 5, 5 - 3]
    n = len(d)
    rho, p = rank_correlation(g)
    assert rho == pytest.approx(1 - 6 * sum(x * x for x in d) / (n * (n * n - 1)))
    assert 0 < p < 1
    assert rank_correlation(g.iloc[:2]) is None  # two teachers are always in order


def test_the_report_has_the_teacher_section_when_a_method_had_two_teachers(two_teachers,
                                                                            tmp_path):
    out, _ = two_teachers
    run_all_module().write_report(out, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "## Teacher beside student" in md
    assert "train:standard:small_cnn:epochs=1" in md.split("## Teacher beside student")[1]
    page = (tmp_path / "index.html").read_text()
    assert '<section id="teachers">' in page
    assert (tmp_path / "teachers_digits_small_cnn_pgd20.png").exists()


def test_eval_teachers_no_writes_no_teacher_row(tmp_path, capsys):
    code, _, err = cli(["run", "--methods", "rslad", "--teachers", "train:standard:epochs=1",
                        "--epochs", "1", "--attacks", "clean", "--eval-teachers", "no",
                        "--out", str(tmp_path), "--threads", "1"], capsys)
    assert code == 0, err
    assert list((tmp_path / "rows").glob("rslad-*.json"))
    assert not (tmp_path / "teachers" / "rows").exists()


def test_teacher_rows_by_default_only_where_the_grid_names_teachers(tmp_path, capsys):
    from bench.options import GridOptions

    assert not GridOptions(methods="rslad").eval_options().teachers  # the embedded default
    assert GridOptions(methods="rslad", teachers="train:pgdat").eval_options().teachers
    assert GridOptions(methods="rslad", eval_teachers="yes").eval_options().teachers
    assert not GridOptions(methods="rslad", teachers="x.pt",
                           eval_teachers="no").eval_options().teachers


def test_a_teacher_measured_on_other_images_is_not_set_beside_its_students(two_teachers,
                                                                            tmp_path):
    import shutil

    from bench.report.teachers import beside

    out = tmp_path / "copy"
    shutil.copytree(two_teachers[0], out)
    df = pd.DataFrame([json.loads(p.read_text()) for p in (out / "rows").glob("rslad-*.json")])
    assert len(beside(df, out)[0]) == 2
    moved = next((out / "teachers" / "rows").glob("*.json"))
    row = json.loads(moved.read_text())
    moved.write_text(json.dumps({**row, "test_images": "0" * 16}))
    lines, _ = beside(df, out)
    assert len(lines) == 1 and row["teacher_name"] not in set(lines["teacher"])
