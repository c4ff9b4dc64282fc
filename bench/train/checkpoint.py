"""Atomic, verifiable checkpoints loadable with `torch.load(weights_only=True)` only.

A checkpoint is a dict of tensors and plain Python values (no pickled classes), so loading
one can never run code. The latest is `ckpt.pt`, the one before it `ckpt.prev.pt`: a
truncated or corrupt latest file falls back to the previous one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import BenchError
from bench.core.files import atomic_write_bytes, load_file, serialized, write_file

FORMAT = "bench-checkpoint-1"


def save(path: Path, state: dict[str, Any]) -> None:
    """Atomically write `state`, keeping the previous file as `<name>.prev.pt`."""
    blob = serialized({"format": FORMAT, **state})
    if path.exists():
        path.replace(path.with_suffix(".prev.pt"))
    atomic_write_bytes(path, blob)


def save_weights(path: Path, model: torch.nn.Module, **meta: Any) -> None:
    """Atomically write one network's weights as a bench checkpoint (loadable as a teacher)."""
    write_file(path, {"format": FORMAT, "models": {"student": model.state_dict()}, **meta})


def load_latest(path: Path) -> dict[str, Any] | None:
    """The newest intact checkpoint at `path` (or its `.prev.pt`), or None if there is none."""
    for p in (path, path.with_suffix(".prev.pt")):
        if not p.exists():
            continue
        try:
            state = load_file(p)
        except BenchError:
            continue
        if isinstance(state, dict) and state.get("format") == FORMAT:
            return state
    return None


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop draws from, as weights-only-safe values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [py[0], list(py[1]), py[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
