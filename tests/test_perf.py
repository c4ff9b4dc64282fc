"""`bench perf` measures every requested (method, preset) pair side by side."""

from __future__ import annotations

import json
from pathlib import Path

from bench import perf


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
