"""Stored runs under `<out>/runs/<cell id>/`: find one by id prefix, read its per-epoch
history, and load any of its networks (the analyses' way into a finished or running cell).

A run folder holds `config.json` (the resolved config), `ckpt.pt` (the latest epoch: every
trained network, SWA, history) and `best.pt` / `swa_best.pt` (the selected students).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from bench import BenchError
from bench.core.suggest import unknown
from bench.data import datasets
from bench.models import create_model
from bench.train import checkpoint

CHECKPOINTS = ("best", "last", "swa_best", "swa_last", "best_clean", "peer", "teacher",
               "teacher_best", "clean_teacher")
STUDENT_FILES = ("best", "swa_best", "best_clean")  # selected students, one file each
ROW_CHECKPOINTS = ("best", "last", "swa_best", "swa_last", "best_clean")  # rows are of these


@dataclass(frozen=True)
class Run:
    """One stored run: its folder and resolved config."""

    dir: Path
    config: dict[str, Any]

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def label(self) -> str:
        """A short display name: method, preset (when not faithful), seed."""
        c = self.config
        preset = "" if c.get("preset") == "faithful" else f" [{c.get('preset')}]"
        return f"{c.get('method', '?')}{preset} s{c.get('seed', '?')}"

    def state(self) -> dict[str, Any]:
        """The latest epoch checkpoint (or the one before it, if the latest is damaged)."""
        state = checkpoint.load_latest(self.dir / "ckpt.pt")
        if state is None:
            raise BenchError(f"run {self.id} has no readable epoch checkpoint yet")
        return state

    def history(self) -> list[dict[str, Any]]:
        """One dict per finished epoch: epoch (0-based), lr, loss, selection and tutor
        accuracies, seconds."""
        return [h for h in self.state().get("history", []) if isinstance(h, dict)]


def runs_dir(out: Path) -> Path:
    return Path(out) / "runs"


def find(out: Path, run: str) -> Run:
    """The run whose id is `run` or starts with it (a unique prefix), or a one-line error."""
    root = runs_dir(out)
    names = sorted(p.name for p in root.iterdir() if (p / "config.json").is_file()) \
        if root.is_dir() else []
    if not names:
        raise BenchError(f"no stored runs in {root}")
    hits = [run] if run in names else [n for n in names if n.startswith(run)] if run else []
    if len(hits) > 1:
        shown = ", ".join(hits[:4]) + (f" and {len(hits) - 4} more" if len(hits) > 4 else "")
        raise BenchError(f"run prefix {run!r} is ambiguous: it matches {shown}")
    if not hits and len(names) > 8:  # a long store: name the closest, not every run
        close = difflib.get_close_matches(run, names, n=1, cutoff=0.3)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise BenchError(f"unknown run {run!r}{hint} ({len(names)} runs in {root})")
    if not hits:
        raise unknown("run", run, names)
    try:
        config = json.loads((root / hits[0] / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"run {hits[0]} has an unreadable config.json ({exc})") from None
    return Run(root / hits[0], config)


def parse_model(spec: str, default: str | None = None) -> tuple[str, str]:
    """`RUN:CHECKPOINT` -> (run, checkpoint); a bare RUN takes `default`."""
    run, sep, ckpt = spec.rpartition(":")
    if not sep:
        if default is None:
            raise BenchError(f"model {spec!r} must be RUN:CHECKPOINT "
                             f"(checkpoints: {', '.join(CHECKPOINTS)})")
        run, ckpt = spec, default
    if ckpt not in CHECKPOINTS:
        raise unknown("checkpoint", ckpt, CHECKPOINTS)
    if not run:
        raise BenchError(f"model {spec!r} names no run")
    return run, ckpt


def _net(run: Run, arch: str) -> nn.Module:
    s = datasets.spec(run.config["dataset"])
    return create_model(arch, num_classes=s.num_classes, in_channels=s.channels,
                        image_size=s.image_size)


def _missing(run: Run, ckpt: str, why: str) -> BenchError:
    return BenchError(f"run {run.id} has no {ckpt!r} checkpoint ({why})")


def load(out: Path, run: Run, ckpt: str) -> nn.Module:
    """Network `ckpt` of `run` (CHECKPOINTS), on the CPU in eval mode.

    `last`, `swa_last` and `peer` come from the latest epoch checkpoint; `teacher` and
    `clean_teacher` from it when they train, else from the harness's cache or RobustBench.
    """
    from bench.train.teachers import load_weights

    c = run.config
    if ckpt not in CHECKPOINTS:
        raise unknown("checkpoint", ckpt, CHECKPOINTS)
    if ckpt in STUDENT_FILES:
        path = run.dir / f"{ckpt}.pt"
        if not path.is_file():
            raise _missing(run, ckpt, "not kept by this method's selection rule, or no "
                           "selection epoch finished yet")
        return load_weights(_net(run, c["arch"]), path, f"{ckpt} checkpoint").eval()
    if ckpt in ("teacher", "clean_teacher"):
        return _teacher(out, run, ckpt).eval()
    if ckpt == "teacher_best":  # a trained teacher's best (CIARD's rule), in its architecture
        from bench.train.teachers import normalized

        path = run.dir / "teacher_best.pt"
        if not path.is_file():
            raise _missing(run, ckpt, "the method trains no teacher, or its selection rule "
                           "keeps no best teacher, or no selection epoch finished yet")
        model = load_weights(_net(run, c["teacher_arch"]), path, f"{ckpt} checkpoint")
        return normalized(model, c.get("teacher_normalize")).eval()
    state = run.state()
    if ckpt == "swa_last":
        swa = state.get("swa")
        if not swa or int(swa.get("n_averaged", 0)) == 0:
            raise _missing(run, ckpt, "no SWA average yet")
        weights = {k.removeprefix("module."): v for k, v in swa.items() if k != "n_averaged"}
        arch = c["arch"]
    else:
        name = "student" if ckpt == "last" else "peer"
        if name not in state["models"]:
            raise _missing(run, ckpt, "the method trains no peer")
        weights, arch = state["models"][name], c["peer_arch"] if name == "peer" else c["arch"]
    model = _net(run, arch)
    model.load_state_dict(weights)
    return model.eval()


def _teacher(out: Path, run: Run, kind: str) -> nn.Module:
    """The run's `kind` teacher: its latest weights if it trains, else the harness's cache
    or RobustBench (a teacher from a user's file is that file: bench keeps no copy)."""
    from bench.train.teachers import ZOO, load_weights, normalized, robustbench_model

    c = run.config
    source = c.get(kind)
    if not source:
        raise _missing(run, kind, f"the method has no {kind.replace('_', ' ')}")
    state = checkpoint.load_latest(run.dir / "ckpt.pt")
    if state is not None and kind in state.get("models", {}):  # a teacher that trains
        model = _net(run, c[f"{kind}_arch"])
        model.load_state_dict(state["models"][kind])
    elif source.startswith(ZOO):
        model = robustbench_model(source[len(ZOO):], c["dataset"],
                                  datasets.default_root() / "robustbench")
    elif source.startswith("file:"):
        raise BenchError(f"the {kind.replace('_', ' ')} of run {run.id} was loaded from a "
                         f"file, which bench does not copy: analyse that file's own run")
    else:
        model = load_weights(_net(run, c[f"{kind}_arch"]), Path(out) / "teachers" /
                             f"{source}.pt", f"cached {kind.replace('_', ' ')}")
    return normalized(model, c.get("teacher_normalize")) if kind == "teacher" else model
