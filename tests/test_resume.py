"""Reliability of a run: SIGKILL at random points resumes to bit-identical results, a corrupt
latest checkpoint falls back to the previous one, and a NaN loss stops the cell cleanly."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.core.store import Store
from bench.train import checkpoint

BENCH = str(Path(sys.executable).with_name("bench"))
# One thread: the thread count changes float summation order, hence the bits of the weights.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}
# PeerAiD: two networks, two optimizers, SWA from epoch 1 on, and AutoAttack in evaluation.
RUN = ["run", "--methods", "peeraid", "--epochs", "4", "--set", "milestones=1,3",
       "--attacks", "clean,pgd20,aa", "--aa-samples", "20", "--device", "cpu"]
CHECKPOINTS = {"best", "last", "swa_best", "swa_last"}
VOLATILE = {"train_seconds", "wall_seconds", "eval_seconds", "attack_seconds", "created"}


def _cmd(out: Path) -> list[str]:
    return [BENCH, *RUN, "--out", str(out)]


def _run_dir(out: Path) -> Path | None:
    dirs = sorted((out / "runs").glob("peeraid-*"))
    return dirs[0] if dirs else None


def _epoch(out: Path) -> int:
    """The epoch of the newest intact checkpoint (0: none yet)."""
    d = _run_dir(out)
    state = checkpoint.load_latest(d / "ckpt.pt") if d else None
    return state["epoch"] if state else 0


def _new_row(out: Path, since: float) -> bool:
    """Whether a result row was (re)written after `since`: evaluation is under way."""
    rows = out / "rows"
    return rows.is_dir() and any(p.stat().st_mtime > since for p in rows.glob("*.json"))


def _kill_when(out: Path, log: Path, trigger, delay: float) -> int | None:
    """Start the run; SIGKILL it `delay` s after `trigger(started)` holds. None: killed."""
    with log.open("a") as f:
        proc = subprocess.Popen(_cmd(out), stdout=f, stderr=subprocess.STDOUT, env=ENV)
    started = time.time()
    try:
        while proc.poll() is None:
            if trigger(started):
                time.sleep(delay)
                if proc.poll() is not None:
                    break
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return None
            time.sleep(0.02)
        return proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _rows(out: Path) -> dict[str, dict]:
    """The row files (a writer killed mid-put may leave a hidden temp file: never a row)."""
    return {p.name: json.loads(p.read_text()) for p in (out / "rows").iterdir()
            if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same command, never interrupted."""
    out = tmp_path_factory.mktemp("reference")
    res = subprocess.run(_cmd(out), capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def _assert_same_results(out: Path, ref: Path) -> None:
    """Bit-identical final networks (student, peer, SWA, best files) and result rows."""
    d, ref_d = _run_dir(out), _run_dir(ref)
    assert d.name == ref_d.name
    got, want = checkpoint.load_file(d / "ckpt.pt"), checkpoint.load_file(ref_d / "ckpt.pt")
    assert got["epoch"] == want["epoch"] == 4
    assert set(got["models"]) == {"student", "peer"}
    for net in ("student", "peer"):
        for k, v in want["models"][net].items():
            assert torch.equal(got["models"][net][k], v), f"{net}.{k} differs"
    for k, v in want["swa"].items():
        assert torch.equal(got["swa"][k], v), f"swa.{k} differs"
    assert got["best"] == want["best"]
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in got["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in want["history"]]
    for name in ("best", "swa_best"):
        a = checkpoint.load_file(d / f"{name}.pt")["models"]["student"]
        b = checkpoint.load_file(ref_d / f"{name}.pt")["models"]["student"]
        assert all(torch.equal(a[k], b[k]) for k in b), f"{name}.pt differs"
    rows, ref_rows = _rows(out), _rows(ref)
    assert sorted(rows) == sorted(f"{d.name}--{c}.json" for c in CHECKPOINTS)  # no duplicates
    assert len(Store(out).read()[0]) == len(CHECKPOINTS)
    for name, want_row in ref_rows.items():
        clean = {k: v for k, v in want_row.items() if k not in VOLATILE}
        assert {k: v for k, v in rows[name].items() if k not in VOLATILE} == clean, name


def test_sigkill_at_random_points_resumes_bit_identically(tmp_path, reference):
    out, log = tmp_path / "out", tmp_path / "log.txt"
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    # Kill points, in order: anywhere early (imports or epoch 1), inside epoch 2 (or its
    # checkpoint write), inside epoch 4, and during the evaluation of the four checkpoints.
    triggers = [
        (lambda t0: time.time() - t0 > rng.uniform(1.0, 3.5), 0.0),
        (lambda t0: _epoch(out) >= 1, rng.uniform(0.0, 0.6)),
        (lambda t0: _epoch(out) >= 3, rng.uniform(0.0, 0.6)),
        (lambda t0: _new_row(out, t0), rng.uniform(0.0, 0.2)),
    ]
    kills = []
    for i, (trigger, delay) in enumerate(triggers):
        rc = _kill_when(out, log, trigger, delay)
        assert rc in (None, 0), f"run {i} failed (seed {seed}):\n{log.read_text()}"
        if rc is None:
            kills.append(i)
    assert len(kills) >= 3, f"only killed runs {kills} (seed {seed}):\n{log.read_text()}"
    for _ in range(3):  # rerun the same command until it completes
        res = subprocess.run(_cmd(out), capture_output=True, text=True, env=ENV, timeout=300)
        log.write_text(log.read_text() + res.stdout + res.stderr)
        if res.returncode == 0:
            break
    assert res.returncode == 0, f"seed {seed}:\n{log.read_text()}"
    text = log.read_text()
    assert "resuming" in text and "Traceback" not in text
    assert "[peeraid] epoch 4/4" in text and "[peeraid] last: clean" in text  # not rich markup
    _assert_same_results(out, reference)


def _save(path: Path, epoch: int) -> None:
    w = torch.full((4096,), float(epoch))  # most of the file: a flipped bit lands in it
    checkpoint.save(path, {"epoch": epoch, "models": {"student": {"w": w}}})


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "bitflip", "foreign",
                                    "missing"])
def test_load_latest_falls_back_to_prev(tmp_path, damage):
    path = tmp_path / "ckpt.pt"
    _save(path, 1)
    _save(path, 2)
    assert checkpoint.load_latest(path)["epoch"] == 2
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(blob)))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "bitflip":  # torch.load alone would return the flipped weight
        flipped = bytearray(blob)
        flipped[len(blob) // 2] ^= 0x10
        path.write_bytes(bytes(flipped))
    elif damage == "foreign":  # a readable weights file that is no bench checkpoint
        torch.save({"w": torch.zeros(3)}, path)
    else:  # killed between moving ckpt.pt to ckpt.prev.pt and writing the new one
        path.unlink()
    state = checkpoint.load_latest(path)
    assert state["epoch"] == 1
    assert torch.equal(state["models"]["student"]["w"], torch.full((4096,), 1.0))


def test_load_latest_none_when_both_damaged(tmp_path):
    path = tmp_path / "ckpt.pt"
    assert checkpoint.load_latest(path) is None
    _save(path, 1)
    _save(path, 2)
    path.write_bytes(b"\0" * 10)
    path.with_suffix(".prev.pt").write_bytes(b"PK\3\4 truncated")
    assert checkpoint.load_latest(path) is None


def test_rerun_with_truncated_checkpoint_uses_prev(tmp_path, reference):
    """A finished run whose rows are lost and whose ckpt.pt is cut in half: the rerun
    resumes from ckpt.prev.pt (epoch 3), retrains epoch 4 and reproduces the same bits.
    An AutoAttack state file cut short (pyautoattack writes it in place) is started over."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "rows")
    d = _run_dir(out)
    for f in d.glob("aa_state_*.json"):  # they name their folder: a moved one is flagged
        if f.name != "aa_state_best.json":
            f.unlink()
    state = d / "aa_state_best.json"
    state.write_text(state.read_text()[:50])
    ckpt = d / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    res = subprocess.run(_cmd(out), capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (f"warning: ckpt.pt of {d.name} is damaged (truncated); resuming from epoch 3 (the "
            "previous checkpoint): epoch 4 is trained again") in res.stdout
    assert "epoch 4/4" in res.stdout and "epoch 3/4" not in res.stdout
    _assert_same_results(out, reference)


def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path):
    """lr_decay=1e30 from epoch 2 on: the first epoch is fine, the second blows up."""
    out = tmp_path / "out"
    cmd = [BENCH, "run", "--methods", "pgdat", "--epochs", "3", "--set", "lr_decay=1e30",
           "--set", "milestones=1,", "--attacks", "clean", "--out", str(out)]
    for _ in range(2):  # the rerun resumes from the good checkpoint and stops again
        res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert lines[0].startswith("error: loss is nan at epoch 2"), lines[0]
        assert lines[0].endswith(f"last good checkpoint kept at {out / 'runs'}/"
                                 f"{next((out / 'runs').glob('pgdat-*')).name}/ckpt.pt (epoch 1)")
        state = checkpoint.load_file(next((out / "runs").glob("pgdat-*")) / "ckpt.pt")
        assert state["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in state["models"]["student"].values()
                   if v.is_floating_point())
        assert not (out / "rows").exists() or not any((out / "rows").iterdir())


def test_an_autoattack_state_killed_before_its_first_attack_is_dropped(tmp_path: Path) -> None:
    """pyautoattack writes its state file before any robust flag exists; a kill then left a
    file that failed every rerun (found by the random-kill test above)."""
    from bench.train.pipeline import _aa_state

    path = tmp_path / "aa_state_best.json"
    path.write_text(json.dumps({"_robust_flags": None, "_run_attacks": []}))
    assert not _aa_state(path).exists()
    path.write_text(json.dumps({"_robust_flags": [True, False], "_run_attacks": ["apgd-ce"]}))
    assert _aa_state(path).exists()
    path.write_text('{"_robust_flags": [tr')
    assert not _aa_state(path).exists()
