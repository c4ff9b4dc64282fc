"""Atomic, verifiable checkpoints loadable with `torch.load(weights_only=True)` only.

A checkpoint is a dict of tensors and plain Python values (no pickled classes), so loading
one can never run code. The latest is `ckpt.pt`, the one before it `ckpt.prev.pt`: a
truncated or corrupt latest file falls back to the previous one, and `damage_note` says so.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import BenchError
from bench.core.files import Unreadable, atomic_write_bytes, load_file, serialized, write_file

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


def verified(path: Path) -> dict[str, Any]:
    """The bench checkpoint at `path`; `Unreadable` (with why) for a damaged or foreign file,
    so that no caller takes another program's weights file for one of ours."""
    state = load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise Unreadable(path, "not a bench checkpoint")
    return state


@dataclass(frozen=True)
class Found:
    """What `find` read: the newest intact state and its file (None: none), and the files
    tried before it that could not be read, with why."""

    state: dict[str, Any] | None
    file: Path | None
    damaged: tuple[tuple[Path, str], ...] = ()


def find(path: Path) -> Found:
    """The newest intact checkpoint at `path` or its `.prev.pt`, and the damaged ones tried
    first (a missing file is no damage: a kill between the two renames of `save`)."""
    damaged = []
    for p in (path, path.with_suffix(".prev.pt")):
        if not p.exists():
            continue
        try:
            return Found(verified(p), p, tuple(damaged))
        except BenchError as exc:
            damaged.append((p, exc.reason if isinstance(exc, Unreadable) else str(exc)))
    return Found(None, None, tuple(damaged))


def load_latest(path: Path) -> dict[str, Any] | None:
    """The newest intact checkpoint at `path` (or its `.prev.pt`), or None if there is none."""
    return find(path).state


def damage_note(found: Found, owner: str) -> str | None:
    """One line for the run's log when damaged checkpoints were passed over: which, why, and
    where training resumes (None: nothing was damaged)."""
    if not found.damaged:
        return None
    names = " and ".join(p.name for p, _ in found.damaged)
    why = "; ".join(f"{p.name}: {r}" if len(found.damaged) > 1 else r for p, r in found.damaged)
    verb = "are" if len(found.damaged) > 1 else "is"
    if found.state is None:
        then = "no usable checkpoint: training from epoch 1"
    else:
        epoch = found.state["epoch"]
        then = (f"resuming from epoch {epoch} (the previous checkpoint): epoch {epoch + 1} is "
                "trained again")
    return f"warning: {names} of {owner} {verb} damaged ({why}); {then}"


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
