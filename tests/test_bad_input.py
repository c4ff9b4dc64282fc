"""Bad input through the real CLI: one `error:` line naming the problem, a non-zero exit, no
traceback, and nothing trained."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.core import registry
from bench.models import create_model

BENCH = str(Path(sys.executable).with_name("bench"))
SENTINEL = "PWNED"


class _System:
    """Unpickling runs `os.system("touch <sentinel>")`."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


class _Exec:
    """Unpickling runs `exec(...)`, which writes the sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.sentinel)!r}, 'w').write('pwned')",)


def _small(num_classes: int = 10) -> dict[str, torch.Tensor]:
    return create_model("small_cnn", num_classes=num_classes, in_channels=1,
                        image_size=8).state_dict()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Teacher files of every bad kind, a regular file, and an empty data folder."""
    d = tmp_path_factory.mktemp("bad")
    torch.save(torch.nn.Linear(64, 10).state_dict(), d / "wrong_arch.pt")
    torch.save({"state_dict": _small(num_classes=100)}, d / "wrong_classes.pt")
    (d / "random.pt").write_bytes(os.urandom(4096))
    torch.save({"state_dict": _small(), "x": _System(d / SENTINEL)}, d / "evil_zip.pt")
    (d / "evil.pkl").write_bytes(pickle.dumps({"state_dict": _Exec(d / SENTINEL)}, protocol=2))
    (d / "evil4.pkl").write_bytes(pickle.dumps({"state_dict": _Exec(d / SENTINEL)}, protocol=4))
    torch.save(_Exec(d / SENTINEL), d / "evil_torch.pt", _use_new_zipfile_serialization=False)
    (d / "afile").write_text("a regular file\n")
    (d / "empty").mkdir()
    return d


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network: torchvision's download goes through urllib.request.urlopen."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _argv(template: list[str], files: Path, out: Path) -> list[str]:
    argv = [a.format(files=files, out=out) for a in template]
    if argv[0] == "run" and "--out" not in argv:
        argv += ["--out", str(out)]
    return argv


def _one_error_line(code, err: str, needle: str) -> str:
    assert code not in (0, None), f"exit {code}, stderr {err!r}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines[0]
    assert needle in lines[0], lines[0]
    return lines[0]


RUN = ["run", "--methods", "pgdat"]
RSLAD = ["run", "--methods", "rslad", "--teacher"]

CASES = [
    ("method", ["run", "--methods", "peeraidd"],
     "unknown method 'peeraidd'; did you mean 'peeraid'?"),
    ("dataset", [*RUN, "--dataset", "cifar11"], "unknown dataset 'cifar11'; did you mean"),
    ("arch", [*RUN, "--arch", "resnet19"], "unknown arch 'resnet19'; did you mean 'resnet18'"),
    ("peer-arch", ["run", "--methods", "peeraid", "--peer-arch", "vit"], "unknown arch 'vit'"),
    ("preset", [*RUN, "--preset", "fast"], "unknown preset of pgdat 'fast'"),
    ("set-key", [*RUN, "--set", "temperature=4"], "unknown hyper-parameter of"),
    ("set-no-value", [*RUN, "--set", "eps"], "--set takes key=value, got 'eps'"),
    ("eps-high", [*RUN, "--set", "eps=5"], "pgdat: eps=5 is outside its valid range (0, 1]"),
    ("eps-negative", [*RUN, "--set", "eps=-1"], "eps=-1 is outside its valid range (0, 1]"),
    ("eps-text", [*RUN, "--set", "eps=abc"], "eps must be a number, got 'abc'"),
    ("step", [*RUN, "--set", "step=1"], "step=1 is outside its valid range (0, 4*eps]"),
    ("epochs-negative", [*RUN, "--epochs", "-1"], "epochs=-1 is outside its valid range [1,"),
    ("epochs-zero", [*RUN, "--epochs", "0"], "epochs=0 is outside its valid range [1, inf)"),
    ("epochs-float", [*RUN, "--set", "epochs=2.5"], "epochs must be an integer, got 2.5"),
    ("epochs-text", [*RUN, "--epochs", "three"], "'three' is not a valid integer"),
    ("milestones", [*RUN, "--set", "milestones=7"], "milestones must be comma-separated"),
    ("lr-inf", [*RUN, "--set", "lr=1e999"], "lr=inf is outside its valid range (0, inf)"),
    ("lr-decay", [*RUN, "--set", "lr_decay=-1"], "lr_decay=-1 is outside its valid range"),
    ("literal", ["run", "--methods", "peeraid", "--set", "kl_reduction=avg"],
     "kl_reduction must be one of 'mean', 'batchmean', 'sum'"),
    ("seed-negative", [*RUN, "--seeds", "-1"], "--seeds must be non-negative integers"),
    ("seed-text", [*RUN, "--seeds", "0,one"], "--seeds takes comma-separated integers"),
    ("methods-empty", ["run", "--methods", ","], "--methods names no method"),
    ("device", [*RUN, "--device", "tpu"], "--device must be auto, cpu or cuda[:N], got 'tpu'"),
    ("device-index", [*RUN, "--device", "cuda:banana"], "got 'cuda:banana'"),
    ("attack", [*RUN, "--attacks", "clean,pgd21"], "unknown attack 'pgd21'"),
    ("aa-samples", [*RUN, "--aa-samples", "0"], "--aa-samples must be >= 1, got 0"),
    ("select-every", [*RUN, "--select-every", "0"], "--select-every must be >= 1"),
    ("select", [*RUN, "--select", "train"], "'train' is not one of 'test', 'val'"),
    ("teacher-missing", [*RSLAD, "{files}/nope.pt"], "nope.pt does not exist"),
    ("teacher-arch", [*RSLAD, "{files}/wrong_arch.pt"], "does not fit the architecture"),
    ("teacher-classes", [*RSLAD, "{files}/wrong_classes.pt"], "size mismatch for"),
    ("teacher-second-method", ["run", "--methods", "pgdat,rslad", "--teacher",
                               "{files}/wrong_classes.pt"], "size mismatch for fc.weight"),
    ("teacher-bytes", [*RSLAD, "{files}/random.pt"], "random.pt is not a readable checkpoint"),
    ("teacher-evil-zip", [*RSLAD, "{files}/evil_zip.pt"], "system, and a weights file holds"),
    ("teacher-evil-pickle", [*RSLAD, "{files}/evil.pkl"], "it would import exec,"),
    ("teacher-evil-pickle4", [*RSLAD, "{files}/evil4.pkl"], "evil4.pkl is not a readable"),
    ("teacher-evil-legacy", [*RSLAD, "{files}/evil_torch.pt"], "refusing to load"),
    ("teacher-normalize", [*RSLAD, "{files}/wrong_classes.pt", "--teacher-normalize", "imagenet"],
     "'imagenet' is not one of 'cifar10', 'cifar100'"),
    ("data-offline", [*RUN, "--dataset", "cifar10", "--data-root", "{files}/empty"],
     "cifar10: not found or incomplete in"),
    ("out-under-file", [*RUN, "--out", "{files}/afile/results"], "is not writable"),
    ("out-is-file", [*RUN, "--out", "{files}/afile"], "is a file"),
    ("show-preset", ["show-preset", "peeraidd"], "unknown method 'peeraidd'; did you mean"),
    ("show-preset-preset", ["show-preset", "rslad", "--preset", "nope"],
     "unknown preset of rslad 'nope'"),
    ("unknown-option", [*RUN, "--bogus"], "No such option '--bogus'"),
    ("missing-value", ["run", "--out", "{out}", "--methods"],
     "Option '--methods' requires an argument"),
    ("unknown-command", ["trian"], "No such command 'trian'"),
    ("table-format", ["table", "--format", "xml"], "'xml' is not one of"),
    ("table-checkpoint", ["table", "--checkpoint", "bset"],
     "unknown checkpoint 'bset'; did you mean 'best'"),
]


@pytest.mark.parametrize(("argv", "needle"), [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_bad_input(argv, needle, files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(_argv(argv, files, out))
    err = capsys.readouterr().err
    _one_error_line(exc.value.code, err, needle)
    assert not (out / "runs").exists() and not (out / "teachers").exists()  # nothing trained
    assert not (files / SENTINEL).exists()


def test_malicious_teacher_really_is_malicious(files, tmp_path) -> None:
    """The control: a plain `torch.load(weights_only=False)` would run the payload."""
    sentinel = files / SENTINEL
    try:
        torch.load(files / "evil_zip.pt", weights_only=False)
        assert sentinel.exists()
    finally:
        sentinel.unlink(missing_ok=True)


@pytest.mark.parametrize(("argv", "needle"), [
    (["run", "--methods", "peeraidd"], "did you mean 'peeraid'?"),
    (["run", "--methods", "pgdat", "--seeds", "1", "--bogus"], "No such option '--bogus'"),
], ids=["unknown-method", "unknown-option"])
def test_bad_input_real_entry_point(argv, needle, tmp_path) -> None:
    res = subprocess.run([BENCH, *argv, "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "60"})
    _one_error_line(res.returncode, res.stderr, needle)


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch) -> Path:
    """A `bench.methods` entry point whose module raises ImportError, on sys.path."""
    site = tmp_path / "site"
    (site / "brokenplug-0.1.dist-info").mkdir(parents=True)
    (site / "brokenplug-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (site / "brokenplug-0.1.dist-info" / "entry_points.txt").write_text(
        "[bench.methods]\nbrokenmeth = broken_plugin_mod:Broken\n")
    (site / "broken_plugin_mod.py").write_text(textwrap.dedent("""
        raise ImportError("needs the missing package foolib")
        """))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_loaded", False)  # rescan the entry points
    monkeypatch.setattr(registry, "_BROKEN", {})
    return site


def test_broken_plugin_run_fails_naming_it(broken_plugin, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--methods", "brokenmeth", "--out", str(tmp_path)])
    line = _one_error_line(exc.value.code, capsys.readouterr().err, "'brokenmeth' failed to load")
    assert "needs the missing package foolib" in line
    assert "peeraid" in registry.names()


def test_broken_plugin_list_still_lists_the_others(broken_plugin) -> None:
    res = subprocess.run([BENCH, "list"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(broken_plugin),
                              "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    for name in ("peeraid", "rslad", "pgdat", "digits", "small_cnn"):
        assert name in res.stdout
    assert "brokenmeth" not in res.stdout
    warnings = res.stderr.strip().splitlines()
    assert len(warnings) == 1 and "Traceback" not in res.stderr, res.stderr
    assert warnings[0].startswith("warning: plugin 'brokenmeth' failed to load: ImportError")
