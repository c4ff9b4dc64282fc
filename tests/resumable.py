"""A run killed mid-epoch and resumed by a fresh Trainer, against one never interrupted: the
check of exact resume the methods' tests share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.models import create_model
from bench.train import checkpoint
from bench.train.cells import Cell, resolve
from bench.train.compute import Compute
from bench.train.runner import RunOptions, Trainer


def same(a: Any, b: Any, where: str) -> None:
    """a and b equal to the bit, through nested dicts, lists and tensors."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            same(u, v, f"{where}[{i}]")
    else:
        assert a == b, where


def killed_and_resumed(make: Callable[[Path], Any], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch, epoch: int = 1,
                       step: int = 5) -> tuple[dict, dict]:
    """Train `make(folder)`'s Trainer whole; train another killed at batch `step` of `epoch`
    (0-based: its weights, state and RNG already moved on), resumed by a fresh Trainer from
    its last epoch checkpoint. Asserts the two final checkpoints (networks, optimizers, method
    state, best scores, history) are the same bits; returns them (resumed, whole)."""
    whole = make(tmp_path / "whole")
    whole.train()
    real = Compute.step  # how the runner computes every batch

    def killed(self, m, *args, **kw):
        if m.epoch == epoch and m.step == step:
            raise KeyboardInterrupt
        return real(self, m, *args, **kw)

    monkeypatch.setattr(Compute, "step", killed)
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "cut").train()
    monkeypatch.setattr(Compute, "step", real)
    resumed = make(tmp_path / "cut")
    resumed.train()
    got, want = (checkpoint.load_file(t.ckpt_path) for t in (resumed, whole))
    assert got["epoch"] == want["epoch"]
    for key in ("models", "optims", "method", "best"):
        same(got[key], want[key], key)
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in got["history"]] == [
        {k: v for k, v in h.items() if k != "seconds"} for h in want["history"]]
    return got, want


def short_trainer(method: str, out: Path, teacher: bool = False,
                  clean_teacher: bool = False) -> Trainer:
    """A 2-epoch Trainer of `method` on digits (2-step attack, selection every 5 epochs),
    with a small_cnn teacher and a small_cnn_nobn clean teacher where asked: the run the
    methods' resume checks kill and resume."""
    torch.manual_seed(11)
    t = create_model("small_cnn", num_classes=10, in_channels=1) if teacher else None
    c = create_model("small_cnn_nobn", num_classes=10, in_channels=1) if clean_teacher else None
    cell = Cell(method, select_every=5, overrides=(("epochs", 2), ("steps", 2)))
    return Trainer(resolve(cell), RunOptions(out=out, log=lambda *_: None), t, c)
