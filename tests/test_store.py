"""The results store under concurrent writer processes, and `bench table` over damaged rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.core.store import Store

WRITERS, ROWS = 8, 50
# A writer process: waits for the start signal, then puts its rows (each one rewritten once,
# the rewrite last) and the same contested key as every other writer, interleaved.
WRITER = """
import sys, time
from pathlib import Path
from bench.core.store import Store

root, w = Path(sys.argv[1]), int(sys.argv[2])
while not (root / "go").exists():
    time.sleep(0.005)
store = Store(root)
pad = "x" * 4000  # rows of a few KB: a torn write could not go unnoticed
print(time.time())
for j in range(ROWS):
    store.put(f"w{w}-r{j}", {"method": "m", "writer": w, "row": j, "version": 1, "pad": pad})
    store.put("contested", {"method": "m", "writer": w, "row": j, "pad": pad})
for j in range(ROWS):
    store.put(f"w{w}-r{j}", {"method": "m", "writer": w, "row": j, "version": 2, "pad": pad})
print(time.time())
""".replace("ROWS", str(ROWS))


def test_concurrent_writer_processes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(w)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(WRITERS)]
    time.sleep(0.3)  # let every interpreter start, so the writes overlap
    (tmp_path / "go").touch()
    while any(p.poll() is None for p in procs):  # a reader never sees a partial row
        rows, problems = store.read()
        assert problems == []
        assert all(len(r["pad"]) == 4000 for r in rows)
    spans = []
    for p in procs:
        stdout, stderr = p.communicate()
        assert p.returncode == 0, stderr
        spans.append([float(t) for t in stdout.split()])
    assert max(s for s, _ in spans) < min(e for _, e in spans), "the writers did not overlap"
    rows, problems = store.read()
    assert problems == []
    assert len(rows) == WRITERS * ROWS + 1  # 400 rows + the one contested key
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(keys)
    mine = [r for r in rows if r["key"] != "contested"]
    assert {(r["writer"], r["row"]) for r in mine} == {(w, j) for w in range(WRITERS)
                                                        for j in range(ROWS)}
    assert all(r["version"] == 2 and r["key"] == f"w{r['writer']}-r{r['row']}" for r in mine)
    (contested,) = [r for r in rows if r["key"] == "contested"]
    assert contested["row"] == ROWS - 1  # some writer's last put, whole
    files = list(store.rows_dir.iterdir())
    assert len(files) == WRITERS * ROWS + 1 and all(f.suffix == ".json" for f in files)
    assert not [f for f in files if f.name.startswith(".")]  # no temp file left behind
    for f in files:
        json.loads(f.read_text())


def test_rewrite_is_one_row(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for i in range(5):
        store.put("cell--last", {"method": "m", "i": i})
    rows, problems = store.read()
    assert problems == [] and [r["i"] for r in rows] == [4]
    assert [p.name for p in store.rows_dir.iterdir()] == ["cell--last.json"]


def _row(method: str, seed: int, clean: float) -> dict:
    return {"method": method, "preset": "faithful", "dataset": "digits", "arch": "small_cnn",
            "checkpoint": "last", "seed": seed, "epochs": 3, "eps": 0.1, "clean": clean,
            "n_clean": 360, "pgd20": clean / 2, "n_pgd20": 360,
            "cell_id": f"{method}-faithful-digits-small_cnn-s{seed}-0123456789",
            "created": "2026-01-01T00:00:00"}


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, list[str]]:
    """A store of three good rows, a foreign file, and damaged rows of several kinds."""
    store = Store(tmp_path)
    for method, seed, clean in (("pgdat", 0, 0.5), ("pgdat", 1, 0.7), ("rslad", 0, 0.9)):
        store.put(f"{method}-s{seed}--last", _row(method, seed, clean))
    rows = store.rows_dir
    (rows / "notes.txt").write_text("my notes\n")
    good = store.path("pgdat-s0--last").read_text()
    (rows / "truncated.json").write_text(good[: len(good) // 2])
    (rows / "binary.json").write_bytes(os.urandom(64) + b"\xff\xfe")
    (rows / "list.json").write_text("[1, 2, 3]")
    (rows / ".rows.json.abc123.tmp").write_text('{"method": "partial')  # a killed writer's
    return tmp_path, ["notes.txt", "truncated.json", "binary.json", "list.json"]


def _one_warning(err: str, out: Path, bad: list[str]) -> None:
    """One line on stderr: how many files could not be read, where, and which."""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"warning: {len(bad)} file(s) in {out / 'rows'} could not be read")
    for name in bad:
        assert line.count(name) == 1, (name, line)


def test_table_with_damaged_rows_subprocess(damaged) -> None:
    """The real entry point: exit 0, the good rows' table, one warning line for the bad
    files."""
    out, bad = damaged
    res = subprocess.run([sys.executable, "-m", "bench.cli", "table", "--out", str(out),
                          "--format", "csv"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    _one_warning(res.stderr, out, bad)
    assert ".tmp" not in res.stderr  # a writer's temp file is no result and no problem
    import io

    import pandas as pd

    t = pd.read_csv(io.StringIO(res.stdout)).set_index("method")
    assert len(t) == 2  # pgdat (2 seeds, one line) + rslad
    assert t.loc["pgdat", "seeds"] == 2 and t.loc["pgdat", "clean"] == pytest.approx(60.0)
    assert t.loc["pgdat", "clean_std"] == pytest.approx(14.1421356)
    assert t.loc["rslad", "seeds"] == 1 and t.loc["rslad", "clean"] == pytest.approx(90.0)


def test_table_with_damaged_rows_markdown(damaged, capsys) -> None:
    out, bad = damaged
    main(["table", "--out", str(out), "--format", "markdown"])
    captured = capsys.readouterr()
    # no per-image outcomes in these rows: the best is not tested, so a tie, not bold
    assert "| PGD-AT | last | 3 | 2 | 60.00 ± 14.14 ≈ |" in captured.out
    assert "| RSLAD | last | 3 | 1 (no std) | 90.00 ≈ |" in captured.out
    _one_warning(captured.err, out, bad)


def test_many_unreadable_rows_are_counted_on_one_line(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.put("good--last", _row("pgdat", 0, 0.5))
    for i in range(12):
        store.path(f"bad{i:02d}--last").write_text("{")
    rows, problems = store.read()
    assert len(rows) == 1 and len(problems) == 1
    assert problems[0].startswith(f"12 file(s) in {store.rows_dir} could not be read")
    assert "bad04--last.json" in problems[0] and "bad05" not in problems[0]
    assert problems[0].endswith("and 7 more")
