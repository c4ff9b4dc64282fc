"""What a row records about how it was made, code fingerprints, and stale cells: a stored cell
made by other code of its method is retrained with one line, or kept and marked on request."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cli_run import cli

import bench
from bench.core import registry
from bench.core.fingerprint import fingerprint, modules_of
from bench.options import GridOptions
from bench.train.cells import Cell

QUICK = ["--epochs", "1", "--attacks", "clean,pgd20", "--threads", "1"]
PLUGIN = '''
import torch.nn.functional as F

from bench.core.distiller import Distiller
from fp_helpers import scale


class Probe(Distiller):
    """A probe."""

    def attack(self, x, y):
        return x

    def loss(self, x, x_adv, y):  # LOSS
        return scale() * F.cross_entropy(self.student.train()(x), y)
'''


def _last_row(out: Path, method: str) -> dict:
    (path,) = (out / "rows").glob(f"{method}-*--last.json")
    return json.loads(path.read_text())


def test_a_row_records_what_changes_its_numbers(tmp_path: Path, capsys) -> None:
    code, _, err = cli(["run", "--methods", "pgdat", *QUICK, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    row = _last_row(tmp_path, "pgdat")
    assert row["runtime"]["threads"] == 1 == torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    assert row["runtime"]["deterministic_algorithms"] is deterministic
    assert {"interop_threads", "cudnn_benchmark", "matmul_tf32", "float32_matmul_precision"} \
        <= set(row["runtime"])
    assert row["code"] == fingerprint(registry.get("pgdat"))
    assert row["code"]["modules"] == ["bench.methods.pgdat"]
    assert row["versions"]["torch"] == importlib.metadata.version("torch")
    assert row["versions"]["bench"] == bench.__version__
    assert row["device"].startswith("cpu") and row["precision"] == "fp32"


def test_the_fingerprint_follows_the_code_not_its_comments(tmp_path: Path, monkeypatch) -> None:
    """Another loss changes it; a comment, a docstring or a reformatting do not; a helper
    module of the same package the method uses counts too."""
    pkg = tmp_path / "fpplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (tmp_path / "fp_helpers.py").write_text("def scale():\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def load(source: str) -> dict:
        (pkg / "probe.py").write_text(textwrap.dedent(source))
        sys.modules.pop("fpplug.probe", None)
        importlib.invalidate_caches()
        return fingerprint(importlib.import_module("fpplug.probe").Probe)

    base = load(PLUGIN)
    assert base["modules"] == ["fpplug.probe"]  # fp_helpers is another top-level package
    assert load(PLUGIN.replace("# LOSS", "# the loss, documented")
                .replace('"""A probe."""', '"""A probe, described at length."""\n'
                         '    display_name = "The Probe"')) == base
    assert load(PLUGIN.replace("scale() * F", "0.5 * scale() * F"))["sha256"] != base["sha256"]
    helper = PLUGIN.replace("from fp_helpers import scale", "from fpplug.helpers import scale")
    (pkg / "helpers.py").write_text("def scale():\n    return 1.0\n")
    sys.modules.pop("fpplug.helpers", None)
    with_helper = load(helper)
    assert with_helper["modules"] == ["fpplug.helpers", "fpplug.probe"]
    (pkg / "helpers.py").write_text("def scale():\n    return 2.0\n")
    sys.modules.pop("fpplug.helpers", None)
    assert load(helper)["sha256"] != with_helper["sha256"]


def test_built_in_fingerprints_cover_the_modules_they_use() -> None:
    assert modules_of(registry.get("absld")) == ["bench.methods.absld", "bench.methods.rslad"]
    assert modules_of(registry.get("ciard")) == [
        "bench.methods.ciard", "bench.methods.mtard", "bench.methods.rslad"]
    assert fingerprint(registry.get("mtard"))["distribution"] is None


def test_a_stale_cell_is_retrained_with_one_line_or_kept_and_said(tmp_path: Path,
                                                                   capsys) -> None:
    args = ["run", "--methods", "pgdat", *QUICK, "--out", str(tmp_path)]
    assert cli(args, capsys)[0] == 0
    path = next((tmp_path / "rows").glob("pgdat-*--last.json"))
    row = json.loads(path.read_text())
    current = row["code"]["sha256"]
    path.write_text(json.dumps({**row, "code": {**row["code"], "sha256": "0" * 16}}))
    code, out, _ = cli([*args, "--keep-stale"], capsys)
    assert code == 0 and "kept though stale" in out and "retrain" not in out
    assert json.loads(path.read_text())["code"]["sha256"] == "0" * 16  # nothing retrained
    code, out, _ = cli(args, capsys)
    lines = [line for line in out.splitlines() if line.startswith("retrain ")]
    assert code == 0 and len(lines) == 1 and "fingerprint 0000000000000000" in lines[0]
    assert json.loads(path.read_text())["code"]["sha256"] == current
    code, out, _ = cli(args, capsys)  # current again: reused
    assert code == 0 and "skip " in out and "retrain" not in out


def test_rows_without_a_fingerprint_are_stale_too(tmp_path: Path, capsys) -> None:
    args = ["run", "--methods", "pgdat", *QUICK, "--out", str(tmp_path)]
    assert cli(args, capsys)[0] == 0
    path = next((tmp_path / "rows").glob("pgdat-*--last.json"))
    row = json.loads(path.read_text())
    del row["code"]
    path.write_text(json.dumps(row))
    code, out, _ = cli(args, capsys)
    assert code == 0 and "no code fingerprint recorded" in out


def test_a_cached_teacher_made_by_other_code_is_retrained(tmp_path: Path, capsys) -> None:
    args = ["run", "--methods", "rslad", *QUICK, "--out", str(tmp_path)]
    assert cli(args, capsys)[0] == 0
    (cached,) = (tmp_path / "teachers").glob("*.pt")
    state = torch.load(cached, weights_only=True)
    assert state["code"] == fingerprint(registry.get("pgdat"))["sha256"]
    assert _last_row(tmp_path, "rslad")["teacher_code"] == {"teacher": state["code"]}
    torch.save({**state, "code": "0" * 16}, cached)
    code, out, _ = cli([*args, "--redo"], capsys)
    assert code == 0 and "retrain teacher" in out
    assert torch.load(cached, weights_only=True)["code"] == state["code"]


def test_a_reused_cell_says_how_its_threads_differ(tmp_path: Path, capsys) -> None:
    args = ["run", "--methods", "pgdat", *QUICK[:-2], "--out", str(tmp_path)]
    assert cli([*args, "--threads", "1"], capsys)[0] == 0
    code, out, _ = cli([*args, "--threads", "2"], capsys)
    assert code == 0 and "made with 1 threads, now 2" in out
    torch.set_num_threads(1)


@pytest.mark.parametrize(("datasets", "device", "threads", "want"), [
    ("digits", "cpu", None, 1), ("digits", "cpu", 2, 2), ("cifar10", "cpu", None, "torch")])
def test_the_default_thread_count(datasets: str, device: str, threads: int | None,
                                  want: int | str) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        cells = [Cell("pgdat", d) for d in datasets.split(",")]
        GridOptions(datasets=datasets, threads=threads).use_threads(cells, device)
        assert torch.get_num_threads() == (3 if want == "torch" else want)
    finally:
        torch.set_num_threads(before)
