"""Two processes never train one cell: the lock file in its run folder (bench.core.lock), held
by one `bench run`, waited for or put off by another, taken over when its owner is gone, and
released on every exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_run import cli

from bench import BenchError
from bench.core import lock
from bench.core.store import Store
from bench.train.cells import Cell, resolve
from bench.train.pipeline import LOCK, EvalOptions, run_cell, run_cells
from bench.train.runner import RunOptions, Trainer

BENCH = str(Path(sys.executable).with_name("bench"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}
RUN = ["run", "--methods", "pgdat", "--epochs", "2", "--attacks", "clean"]
CELL = Cell("pgdat", overrides=(("epochs", 2),))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(path: Path, host: str, pid: int, age: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "theirs",
                                "heartbeat": time.time() - age}))


def _owner_started(out: Path, timeout: float = 120) -> subprocess.Popen:
    """`bench run` in another process, once it holds the cell's lock."""
    proc = subprocess.Popen([BENCH, *RUN, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)
    t0 = time.time()
    while not list((out / "runs").glob(f"*/{LOCK}")):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() - t0 < timeout, "the owner never took the lock"
        time.sleep(0.05)
    return proc


def _finished(proc: subprocess.Popen) -> str:
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log
    return log


# -- two processes --------------------------------------------------------------------------
def test_a_second_process_waits_and_does_not_train_the_cell(tmp_path, capsys):
    out = tmp_path / "out"
    owner = _owner_started(out)
    code, log, err = cli([*RUN, "--out", str(out)], capsys)  # the second process: this one
    first = _finished(owner)
    assert code == 0, log + err
    r = resolve(CELL)
    assert first.count("[pgdat] epoch") == 2
    assert log.count("[pgdat] epoch") == 0
    assert f"waiting for {r.id}: locked by {lock.HOST} pid {owner.pid}, heartbeat" in log
    assert f"skip {r.id}: already in the store" in log
    assert not (out / "runs" / r.id / LOCK).exists()
    assert len(Store(out).read()[0]) == 2


def test_a_locked_cell_is_put_off_to_the_end(tmp_path):
    """`run_cells` (bench run's loop): the locked cell after the others, then waited for."""
    out = tmp_path / "out"
    owner = _owner_started(out)
    lines: list[str] = []
    other = Cell("pgdat", seed=1, overrides=(("epochs", 2),))
    run_cells([CELL, other], RunOptions(out=out, log=lines.append),
              EvalOptions(attacks=("clean",)), Store(out))
    first = _finished(owner)
    locked, mine = resolve(CELL).id, resolve(other).id
    put_off = next(i for i, ln in enumerate(lines) if ln.startswith(f"{locked} is locked by "
                                                                     f"{lock.HOST} pid "))
    assert lines[put_off].endswith(": moving on, back to it at the end")
    trained = [i for i, ln in enumerate(lines) if "[pgdat] epoch" in ln]
    assert len(trained) == 2 and put_off < trained[0]  # only the other cell, after it
    assert lines[-1].startswith(f"skip {locked}: already in the store")
    assert first.count("[pgdat] epoch") == 2
    assert {r["cell_id"] for r in Store(out).read()[0]} == {locked, mine}


# -- taking over, releasing ---------------------------------------------------------------
def test_a_dead_owners_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    r = resolve(CELL)
    path = out / "runs" / r.id / LOCK
    pid = _dead_pid()
    _write_lock(path, lock.HOST, pid, age=1)
    code, log, err = cli([*RUN, "--out", str(out)], capsys)
    assert code == 0, log + err
    assert (f"warning: taking over the lock of {r.id} from {lock.HOST} pid {pid}, heartbeat "
            in log)
    assert "that process is gone" in log
    assert log.count("[pgdat] epoch") == 2
    assert not path.exists()


@pytest.mark.parametrize("error", [BenchError("stop"), KeyboardInterrupt(), RuntimeError("x")])
def test_the_lock_is_released_on_every_exit(tmp_path, monkeypatch, error):
    def fail(self, epoch):
        assert (self.dir / LOCK).exists()  # held while it trains
        raise error

    monkeypatch.setattr(Trainer, "_train_epoch", fail)
    out = tmp_path / "out"
    with pytest.raises(type(error)):
        run_cell(CELL, RunOptions(out=out, log=lambda _: None), EvalOptions(attacks=("clean",)),
                 Store(out))
    assert not (out / "runs" / resolve(CELL).id / LOCK).exists()


def test_a_stale_heartbeat_of_another_host_is_taken_over(tmp_path):
    path, lines = tmp_path / LOCK, []
    _write_lock(path, "node-17", 4242, age=1000)
    held = lock.Lock(path, "cell", lines.append, stale_after=600)
    held.acquire(wait=False)
    assert lines == ["warning: taking over the lock of cell from node-17 pid 4242, heartbeat "
                     "1000s ago: no heartbeat for 1000s (stale after 600s)"]
    assert json.loads(path.read_text())["token"] == held.token
    held.release()
    assert not path.exists()


def test_a_live_lock_is_busy_and_kept(tmp_path):
    path = tmp_path / LOCK
    _write_lock(path, "node-17", 4242, age=5)
    with pytest.raises(lock.Busy, match="cell is locked by node-17 pid 4242, heartbeat 5s"):
        lock.Lock(path, "cell", lambda _: None).acquire(wait=False)
    assert json.loads(path.read_text())["token"] == "theirs"


def test_the_heartbeat_is_refreshed_and_a_lost_lock_said(tmp_path):
    path, lines = tmp_path / LOCK, []
    held = lock.Lock(path, "cell", lines.append, heartbeat=0.02)
    held.acquire()
    first = json.loads(path.read_text())["heartbeat"]
    time.sleep(0.3)
    assert json.loads(path.read_text())["heartbeat"] > first
    _write_lock(path, "node-17", 4242, age=0)  # taken over by another (we were too slow)
    time.sleep(0.3)
    held.release()
    assert lines[0].startswith("warning: the lock of cell was taken over by node-17 pid 4242")
    assert json.loads(path.read_text())["token"] == "theirs"  # not ours to delete


def test_without_hard_links_the_lock_is_an_exclusive_create(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / LOCK
    first = lock.Lock(path, "cell", lambda _: None)
    first.acquire(wait=False)
    with pytest.raises(lock.Busy):
        lock.Lock(path, "cell", lambda _: None).acquire(wait=False)
    first.release()
    assert not path.exists() and not list(tmp_path.iterdir())  # no temp files left
