"""`bench perf` measures every requested (method, preset) pair side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.perf import throughput as perf


def test_perf_reports_each_pair(tmp_path: Path) -> None:
    out = tmp_path / "perf.json"
    rows = perf.main(["--methods", "peeraid,rslad", "--presets", "faithful,merged",
                      "--arch", "small_cnn", "--shape", "digits", "--batch-size", "16",
                      "--steps", "1", "--rounds", "2", "--warmup", "0", "--device", "cpu",
                      "--json", str(out)])
    # `merged` exists for PeerAiD only; RSLAD has no such preset and is measured once.
    assert [(r["method"], r["preset"]) for r in rows] == [
        ("peeraid", "faithful"), ("peeraid", "merged"), ("rslad", "faithful")]
    assert all(r["img_per_sec"] > 0 for r in rows)
    assert json.loads(out.read_text()) == rows


def test_perf_reference_interleaves_the_authors_loop_and_bench(tmp_path: Path) -> None:
    out = tmp_path / "ref.json"
    rows = perf.main(["--reference", "--synthetic", "--methods", "pgdat", "--arch", "small_cnn",
                      "--shape", "svhn", "--batch-size", "8", "--steps", "2", "--rounds", "2",
                      "--warmup", "1", "--workers", "0", "--device", "cpu", "--json", str(out)])
    assert [(r["loop"], r["precision"]) for r in rows] == [("reference", "fp32"),
                                                           ("bench", "fp32")]
    ref, fast = rows
    assert fast["speedup"] == pytest.approx(ref["sec_per_step"] / fast["sec_per_step"], rel=0.02)
    for r in rows:
        assert r["sec_per_epoch"] == pytest.approx(50_000 / 8 * r["sec_per_step"], abs=0.2)
        assert r["img_per_sec"] > 0 and r["peak_host_mb"] > 0
    assert "PIL" in ref["data"] and fast["data"] == "device data"
    assert json.loads(out.read_text()) == rows


def test_the_reference_loop_runs_under_torchs_default_flags(tmp_path: Path,
                                                           monkeypatch) -> None:
    """The authors' code never touched the TF32 switches: the reference loop runs with
    PyTorch's defaults (TF32 cuDNN convolutions allowed), whatever bench's configurations,
    interleaved in the same process, set."""
    fresh = subprocess.run(
        [sys.executable, "-c", "import json, torch; from bench.perf.throughput import "
         "backend_flags; print(json.dumps(backend_flags()))"],
        capture_output=True, text=True, check=True)
    assert json.loads(fresh.stdout) == perf.TORCH_DEFAULTS  # what a fresh process has
    seen = []
    step = perf.reference_step
    monkeypatch.setattr(perf, "reference_step",
                        lambda *a: (seen.append(perf.backend_flags()), step(*a))[1])
    flags = perf.backend_flags()
    try:  # bench's strict settings, and more, before the run
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        rows = perf.main(["--reference", "--synthetic", "--methods", "pgdat", "--arch",
                          "small_cnn", "--shape", "svhn", "--batch-size", "4", "--steps", "1",
                          "--rounds", "2", "--warmup", "0", "--workers", "0", "--device",
                          "cpu"])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flags["matmul_tf32"]
        torch.backends.cudnn.allow_tf32 = flags["cudnn_tf32"]
        torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    assert len(seen) == 2 and all(f == perf.TORCH_DEFAULTS for f in seen)
    assert rows[0]["loop"] == "reference" and rows[0]["precision"] == "fp32"  # on the CPU
    assert perf.reference_compute("cuda").precision == "cudnn-tf32"


def test_gpu_check_runs_its_steps_on_the_cpu(tmp_path: Path, capsys, monkeypatch) -> None:
    """`bench perf --suite gpu` on a tiny CPU budget: every step runs and the summary shows;
    it needs no pyautoattack (hidden here)."""
    from bench.cli import main

    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    main(["perf", "--suite", "gpu", "--device", "cpu", "--tiny", "--work", str(tmp_path),
          "--json", str(tmp_path / "check.json")])
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["fp32"]["ok"] and report["fp32"]["pixels_equal"]
    assert report["fp32"]["pgdat"]["loss_rel"] == 0  # on the CPU: the same bits
    assert report["bf16"]["ok"]
    assert [(r["method"], r["loop"]) for r in report["perf"]] == [
        (m, loop) for m in ("peeraid", "rslad", "pgdat") for loop in ("reference", "bench")]
    e = report["epoch"]
    assert e["train_s"] > 0 and 0 <= e["clean"] <= 1
    # the epoch's wall time holds its training and its selection, which the check shows
    assert e["epoch_wall_s"] >= e["train_s"] and e["epoch_wall_s"] >= e["selection_s"] > 0
    assert e["compile"] is False and e["graphs_per_network"] == []  # CUDA compiles; the CPU not
    assert e["peak_device_mb"] is None
    out = capsys.readouterr().out
    assert "bench GPU check on cpu" in out and "with selection" in out


@pytest.mark.parametrize("suite", [[], ["--suite", "gpu", "--device", "cpu", "--tiny"]])
def test_perf_json_target_is_checked_before_timing(tmp_path: Path, capsys, monkeypatch,
                                                   suite: list[str]) -> None:
    """A `--json` under a regular file fails in one line before any step is timed."""
    from bench.cli import main
    from bench.perf import gpucheck

    def no_work(*a, **k):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(perf, "run", no_work)
    monkeypatch.setattr(gpucheck, "check_fp32", no_work)
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["perf", *suite, "--json", str(tmp_path / "file" / "rows.json")])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: output folder") and "not writable" in err[0]
