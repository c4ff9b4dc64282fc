"""Teacher rows: each fixed teacher of a grid evaluated once, on the students' images and attacks.

SAAD's finding (a student's robustness moves with its teacher more than with the method) can
only be checked when the teacher's own numbers sit beside the student's, measured the same
way. A teacher row lives under `<out>/teachers/rows/`, apart from the students' rows (which
every table reads as methods); a student row names its teachers' rows (`teacher_row`,
`clean_teacher_row`) and their specs (`teacher_name`, `clean_teacher_name`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.core.store import Store
from bench.data.corrupted import CorruptedSets
from bench.eval.evaluate import Threat, evaluate, images_fingerprint
from bench.train.cells import Resolved
from bench.train.compute import attack_frozen
from bench.train.teachers import ZOO

KINDS = ("teacher", "clean_teacher")


def store(out: Path) -> Store:
    """The teacher rows of the results folder `out`."""
    return Store(Path(out) / "teachers")


def key(dataset: str, teacher_id: str) -> str:
    """A teacher row's key: its data set and its id (a RobustBench name's id is per data set)."""
    return f"{dataset}--" + re.sub(r"[^A-Za-z0-9_.=+-]+", "_", teacher_id)


def name(r: Resolved, kind: str) -> str | None:
    """The cell's `kind` teacher as a --teachers item names it: robustbench:NAME, file:NAME, or
    train:METHOD:ARCH[:preset=P][:KEY=VALUE...]; None when the cell has none."""
    teacher_id = r.config.get(kind)
    if teacher_id is None:
        return None
    if teacher_id.startswith(ZOO):
        return teacher_id
    file = r.teacher_file if kind == "teacher" else r.clean_teacher_file
    if file is not None:
        return f"file:{file.name}"
    c = r.teacher_cell if kind == "teacher" else r.clean_teacher_cell
    preset = [f"preset={c.preset}"] if c.preset != "faithful" else []
    return ":".join(["train", c.method, str(c.arch), *preset,
                     *(f"{k}={v}" for k, v in c.overrides)])


def links(r: Resolved) -> dict[str, str]:
    """What a student row records of its teachers: each one's row key and name."""
    out = {}
    for kind in KINDS:
        if r.config.get(kind) is not None:
            out[f"{kind}_row"] = key(r.cell.dataset, r.config[kind])
            out[f"{kind}_name"] = name(r, kind)
    return out


def _current(row: dict[str, Any] | None, attacks: tuple[str, ...], images: str,
             n_aa: int | None) -> bool:
    """Whether a stored teacher row already measured `attacks` on these images (and
    AutoAttack on as many of them)."""
    return (row is not None and set(attacks) <= set(row.get("attacks") or ())
            and row.get("test_images") == images
            and ("aa" not in attacks or row.get("aa_samples") == n_aa))


def evaluate_teachers(r: Resolved, load: Callable[[str], nn.Module | None], x: Tensor,
                      y: Tensor, attacks: tuple[str, ...], *, out: Path, threat: Threat,
                      n_aa: int | None, device: str, batch_size: int, aa_batch_size: int,
                      log: Callable[[str], None], row_fields: dict[str, Any],
                      corrupted: CorruptedSets | None = None) -> list[str]:
    """Evaluate each fixed teacher of the cell whose row is missing or measured otherwise
    (`load(kind)` gives the network, loaded only then) with the students' `attacks`, threat
    models and corrupted sets on the same images, seeded as a seed-0 student is; returns
    the keys written."""
    rows, images, written = store(out), images_fingerprint(x, y), []
    for kind in KINDS:
        teacher_id = r.config.get(kind)
        if teacher_id is None:
            continue
        k = key(r.cell.dataset, teacher_id)
        if _current(rows.get(k), attacks, images, n_aa):
            continue
        model = load(kind)
        if model is None:
            continue
        model.eval()
        log(f"  [teacher] {name(r, kind)}: evaluating it on the students' images")
        t0 = time.perf_counter()
        torch.manual_seed(0)
        with attack_frozen([model]):
            metrics = evaluate(model, x, y, threat, attacks=attacks, aa_samples=n_aa,
                               device=device, batch_size=batch_size,
                               aa_batch_size=aa_batch_size, num_classes=r.spec.num_classes,
                               corrupted=corrupted)
        cell = r.teacher_cell if kind == "teacher" else r.clean_teacher_cell
        rows.put(k, {
            "method": cell.method if cell is not None else teacher_id.split(":", 1)[0],
            "role": kind, "teacher": teacher_id, "teacher_name": name(r, kind),
            "dataset": r.cell.dataset, "arch": r.config.get(f"{kind}_arch") or teacher_id,
            "eps": threat.eps, "eps_l2": threat.eps_l2, "attacks": list(attacks),
            "aa_samples": n_aa, **metrics, "test_images": images,
            "eval_seconds": round(time.perf_counter() - t0, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **row_fields})
        written.append(k)
    return written
