"""What a newcomer meets in the terminal: tables drawn once, progress labels, unwrapped logs,
Ctrl-C, the help's model forms and checkpoint names, cell settings in `history`, preset
claims, eps labels, and output paths checked before any work."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from bench.methods.standard import Standard
from cli_run import cli, run_all_module
from rich.console import Console

import bench.cli
from bench.core import registry
from bench.eval import analysis
from bench.train import pipeline, runs

FAST = ["--epochs", "1", "--attacks", "clean"]
BOX = "┃"  # a rich table's header rule: absent from markdown


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, list[str]]:
    """Two sweep cells (lr 0.02, 0.03; one epoch), stored under a long path: their ids
    differ only in the hash, as do their labels in the transfer matrix."""
    out = tmp_path_factory.mktemp("sweep") / ("long_" + "x" * 70) / "results"
    bench.cli.main(["run", "--methods", "standard", "--sweep", "lr=0.02,0.03", *FAST,
                    "--out", str(out)])
    ids = sorted(p.name for p in (out / "runs").iterdir())
    assert len(ids) == 2, ids
    return out, ids


def _terminal(monkeypatch) -> None:
    """The CLI's console as on a terminal (no colours: the text alone)."""
    monkeypatch.setattr(bench.cli, "console", Console(force_terminal=True, color_system=None,
                                                      width=160, highlight=False,
                                                      soft_wrap=True))


def _error_line(code, err: str, needle: str) -> None:
    assert code not in (0, None), (code, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


# --- 1. one table, once --------------------------------------------------------------------

@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """Rows of the CIFAR-10 paper presets (no training), which published figures match."""
    from test_tables import synthetic_rows

    root = tmp_path_factory.mktemp("published")
    synthetic_rows(root, seeds=(0,))
    return root


def test_table_on_a_terminal_is_drawn_once_as_a_rich_table(published, capsys,
                                                            monkeypatch) -> None:
    code, out, err = cli(["table", "--out", str(published)], capsys)  # a pipe: markdown
    assert code == 0, err
    assert out.count("cifar10 / resnet18: accuracy") == 1 and "|---" in out and BOX not in out
    _terminal(monkeypatch)
    for argv in ([], ["--reported"]):
        code, out, err = cli(["table", "--out", str(published), *argv], capsys)
        assert code == 0, err
        assert BOX in out and "|---" not in out, argv  # no markdown copy after the boxes
        assert out.count("cifar10 / resnet18: ") == 1, argv
    assert "Bold:" not in out  # the reported view marks nothing bold: no note about it
    assert "not comparable" in out


# --- 2. the progress bar's label ------------------------------------------------------------

def test_progress_label_renders_beside_the_epoch_log(tmp_path, capsys, monkeypatch) -> None:
    _terminal(monkeypatch)
    code, out, err = cli(["run", "--methods", "standard", *FAST, "--out", str(tmp_path)],
                         capsys)
    assert code == 0, err
    assert "[standard] epoch 1/1" in out
    assert "standard seed 0" in out and "[progress.description]" not in out


# --- 3. a file or pipe gets whole lines -----------------------------------------------------

def test_output_to_a_file_is_never_wrapped(sweep, tmp_path, capsys) -> None:
    out, ids = sweep
    code, text, err = cli(["list"], capsys)
    assert code == 0, err
    assert any(line.count("ABSLD (Zhao et al. 2024): RSLAD with per-class teacher "
                          "temperatures set for fairness.") for line in text.splitlines())
    code, text, err = cli(["transfer", *(f"{i}:last" for i in ids), "--attack", "fgsm",
                           "--out", str(out)], capsys)
    assert code == 0, err
    lines = text.splitlines()
    for i in ids:  # both labels are the full ids (same method and seed): each whole
        assert sum(f"{i}:last" in line for line in lines) == 2, text  # column and row
    stored = next((out / "analyses").glob("transfer-fgsm-*.json"))
    assert f"stored {stored}" in lines


# --- 4. Ctrl-C -----------------------------------------------------------------------------

def _interrupt(*_a, **_k):
    raise KeyboardInterrupt


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "run_cell", _interrupt)
    code, _, err = cli(["run", "--methods", "standard", *FAST, "--out", str(tmp_path)], capsys)
    assert code == 130 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("interrupted: "), lines
    assert "checkpointed" in err and "rows" in err and "rerun the same command" in err
    assert "last finished epoch" in err
    run_all = run_all_module()
    assert run_all.main([*FAST, "--methods", "standard", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip().splitlines() == lines  # the same words


def test_ctrl_c_outside_training_claims_nothing(sweep, capsys, monkeypatch) -> None:
    monkeypatch.setattr(analysis, "strength", _interrupt)
    code, _, err = cli(["eval", sweep[1][0], "--eps", "0.1", "--out", str(sweep[0])], capsys)
    assert code == 130 and err.strip() == "interrupted", err




# --- 5, 6. the same MODEL forms, every checkpoint name --------------------------------------

def test_eval_and_transfer_help_list_every_checkpoint(capsys) -> None:
    for command in ("transfer", "eval"):
        code, out, err = cli([command, "--help"], capsys)
        assert code == 0, err
        flat = " ".join(out.split())
        assert "MODEL is RUN or RUN:CHECKPOINT" in flat, flat
        for name in runs.CHECKPOINTS:
            assert f" {name}," in flat or f" {name}." in flat, (command, name)


def test_eval_and_transfer_take_the_same_model_forms(sweep, tmp_path, capsys) -> None:
    out, ids = sweep
    code, _, err = cli(["transfer", ids[0], f"{ids[1]}:best", "--attack", "fgsm", "--json",
                        str(tmp_path / "t.json"), "--out", str(out)], capsys)
    assert code == 0, err
    assert '"source": "' + ids[0] + ':best"' in (tmp_path / "t.json").read_text()
    for model in (ids[0], f"{ids[0]}:last"):
        code, text, err = cli(["eval", model, "--eps", "0.1", "--steps", "1", "--out",
                               str(out)], capsys)
        assert code == 0, err
        assert f"{ids[0]}:{'last' if ':' in model else 'best'}: accuracy" in text


@pytest.mark.parametrize(("rule", "checkpoint"), [(None, "best"), ("peeraid", "best"),
                                                  ("ard", "last"), ("saad", "swa_last")])
def test_a_bare_run_means_its_reported_checkpoint(rule, checkpoint) -> None:
    assert bench.cli._reported({"params": {"selection": rule}}) == checkpoint


# --- 7. history names the cell -------------------------------------------------------------

def test_history_of_a_sweep_cell_names_what_makes_it(sweep, capsys) -> None:
    out, ids = sweep
    seen = set()
    for i in ids:
        code, text, err = cli(["history", i, "--out", str(out)], capsys)
        assert code == 0, err
        title = text.splitlines()[0]
        assert title.startswith(f"{i} (standard faithful on digits / small_cnn, seed 0; "
                                "epochs=1, lr=0.0"), title
        seen.add(re.search(r"lr=([0-9.]+)", title).group(1))
    assert seen == {"0.02", "0.03"}


# --- 8. show-preset: whose claim, and the teacher's own hyper-parameters ---------------------

class _Plugin(Standard):
    """A plugin method: a subclass from outside bench.methods with bench's default presets."""


def test_show_preset_claims_the_authors_code_for_built_ins_only(capsys, monkeypatch) -> None:
    registry.names()  # built-ins and entry points loaded before the plugin is added
    monkeypatch.setitem(registry._METHODS, "outprobe", _Plugin)
    monkeypatch.setattr(_Plugin, "name", "outprobe")
    code, out, err = cli(["show-preset", "standard", "--dataset", "digits"], capsys)
    assert code == 0 and "the authors' code, to the letter" in out.splitlines()[0], err
    code, out, err = cli(["show-preset", "outprobe", "--dataset", "digits"], capsys)
    assert code == 0, err
    assert "to the letter" not in out and "the plugin's own preset" in out.splitlines()[0]
    code, out, err = cli(["list"], capsys)
    line = next(ln for ln in out.splitlines() if ln.startswith("│ outprobe"))
    assert "plugin's own" in line and "to the letter" not in line


def test_show_preset_shows_the_teachers_own_hyper_parameters(capsys) -> None:
    code, out, err = cli(["show-preset", "rslad", "--dataset", "digits"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("  teacher = pgdat-faithful-"))
    assert lines[at + 1].startswith("    trained by pgdat, preset 'faithful' (small_cnn): ")
    assert "    epochs = 15" in lines[at + 2:] and "    steps = 10" in lines[at + 2:]
    code, out, err = cli(["show-preset", "--help"], capsys)
    assert "the teacher" in " ".join(out.split())


# --- 9. eps as the user wrote it --------------------------------------------------------------

def test_eval_prints_each_eps_as_given(sweep, capsys) -> None:
    out, ids = sweep
    code, text, err = cli(["eval", ids[0], "--eps", "0.2,8/255", "--steps", "1", "--out",
                           str(out)], capsys)
    assert code == 0, err
    rows = {ln.split("│")[1].strip() for ln in text.splitlines() if ln.startswith("│")}
    assert rows == {"0.2", "8/255 (0.0314)"}, rows


# --- 10. list says what each preset changes -------------------------------------------------

def test_list_shows_each_presets_description(capsys) -> None:
    code, out, err = cli(["list"], capsys)
    assert code == 0, err
    assert "paper: faithful math with the paper's full schedule, even on the embedded data" \
        in out
    assert "fixed: " in out


# --- 11. where it writes, checked before any work ---------------------------------------------

def _no(what: str):
    def refuse(*_a, **_k):
        raise AssertionError(f"{what} ran before the output path was checked")

    return refuse


@pytest.fixture
def no_work(monkeypatch) -> None:
    monkeypatch.setattr(analysis, "strength", _no("the evaluation"))
    monkeypatch.setattr(analysis, "transfer_matrix", _no("the transfer attack"))
    monkeypatch.setattr(pipeline, "run_cell", _no("training"))


@pytest.mark.parametrize("argv", [
    ["eval", "{run}", "--eps", "0.1", "--json", "{file}/s.json"],
    ["transfer", "{run}:best", "--json", "{file}/t.json"],
    ["transfer", "{run}:best", "--out", "{copy}"],
    ["plot", "accuracy", "--dest", "{file}/figures"],
    ["run", "--methods", "standard", *FAST, "--out", "{file}/results"],
], ids=["eval-json", "transfer-json", "transfer-analyses", "plot-dest", "run-out"])
def test_unwritable_target_fails_before_any_work(argv, sweep, tmp_path, capsys,
                                                 no_work) -> None:
    out, ids = sweep
    regular = tmp_path / "afile"
    regular.write_text("a file, not a folder\n")
    copy = tmp_path / "copy"
    if "{copy}" in argv:  # the store, with a file where its analyses folder goes
        shutil.copytree(out, copy, ignore=shutil.ignore_patterns("analyses"))
        (copy / "analyses").write_text("a file, not a folder\n")
    argv = [a.format(run=ids[0], file=regular, copy=copy) for a in argv]
    code, _, err = cli(argv if "--out" in argv else [*argv, "--out", str(out)], capsys)
    _error_line(code, err, "is not writable")


def test_run_all_checks_the_report_folder_before_training(tmp_path, capsys, no_work) -> None:
    regular = tmp_path / "afile"
    regular.write_text("a file, not a folder\n")
    code = run_all_module().main(["--methods", "standard", *FAST, "--out", str(tmp_path / "r"),
                            "--report-dir", str(regular / "report")])
    _error_line(code, capsys.readouterr().err, "is not writable")
    assert not (tmp_path / "r" / "runs").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_eval_in_a_read_only_run_folder_fails_before_attacking(sweep, tmp_path, capsys,
                                                              no_work) -> None:
    out, ids = sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "runs" / ids[0]).chmod(0o500)
    try:
        code, _, err = cli(["eval", ids[0], "--eps", "0.1", "--out", str(copy)], capsys)
    finally:
        (copy / "runs" / ids[0]).chmod(0o700)
    _error_line(code, err, "is not writable")
