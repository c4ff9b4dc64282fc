"""One cell end to end: resolve, get its teachers, train (or resume), evaluate, store rows.

A teacher the harness trains is a cell of its own, trained here once and cached under
`<out>/teachers/`; the teachers module only loads weights into networks.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import __version__
from bench.core import distributed
from bench.core.files import load_file
from bench.core.fingerprint import fingerprint
from bench.core.store import Store
from bench.data import datasets, devicedata
from bench.eval import analysis
from bench.eval.batching import eval_batch_sizes, eval_precision
from bench.eval.evaluate import ALL_ATTACKS, Threat, evaluate, images_fingerprint, restrict
from bench.train import checkpoint, selection
from bench.train.cells import Cell, Resolved, resolve
from bench.train.compute import attack_frozen
from bench.train.runner import RunOptions, Trainer, build
from bench.train.teachers import ZOO, load_weights, normalized, renormalized, robustbench_model

EMBEDDED_AA_SAMPLES = 100  # AutoAttack's Square attack dominates a CPU run; seeded subset


AA_ON = ("best", "all", "none")
REPORTED = selection.COMMON.reported  # the common protocol's: best (and swa_best)


@dataclass(frozen=True)
class EvalOptions:
    """The evaluation protocol: which attacks, AutoAttack on how many test images and on
    which checkpoints (the cheap attacks run on every checkpoint)."""

    attacks: tuple[str, ...] = ALL_ATTACKS
    aa_samples: int | None = None  # None: the data set's default (all images for real sets)
    aa_on: str = "best"  # "best": the reported checkpoints only; "all"; "none"
    precision: str = "auto"  # fp32, tf32 or auto (torch's defaults): `batching.eval_precision`

    def attacks_for(self, checkpoint: str, reported: tuple[str, ...] = REPORTED
                    ) -> tuple[str, ...]:
        """AutoAttack, the costly one, only where `aa_on` asks for it (`reported`: the
        checkpoints the cell's selection rule reports)."""
        aa = self.aa_on == "all" or (self.aa_on == "best" and checkpoint in reported)
        return tuple(a for a in self.attacks if a != "aa" or aa)


def _versions() -> dict[str, str]:
    out = {"bench": __version__, "python": platform.python_version()}
    for pkg in ("torch", "torchvision", "pyautoattack"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


def _git_commit() -> str:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        return res.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def runtime() -> dict[str, Any]:
    """The process's settings that change a run's floats: CPU threads (the order of the sums),
    determinism and TF32 switches."""
    return {
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def _device_name(device: str) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    return f"{d.type} ({platform.processor() or platform.machine()})"


def train_teacher(cell: Cell, opts: RunOptions) -> Path:
    """The cached weights of the teacher `cell` (its best checkpoint), trained if missing or
    made by other code of its method (unless `opts.keep_stale`)."""
    tr = resolve(cell)
    cached = opts.out / "teachers" / f"{tr.id}.pt"
    code = fingerprint(tr.cls)["sha256"]
    then = load_file(cached).get("code") if cached.exists() and not opts.keep_stale else code
    if then != code:
        opts.log(f"retrain teacher {tr.id}: made by other code of {tr.cell.method} "
                 f"({_code_change(then, code)})")
    if then != code or not cached.exists():
        opts.log(f"training teacher {tr.id} ({tr.cell.method}, {tr.params.epochs} epochs)")
        trainer = Trainer(tr, opts, None)
        if then != code:
            _start_over(trainer)
        best = trainer.train()["best"]
        if distributed.is_main():
            checkpoint.save_weights(cached, best, id=tr.id, code=code)
        distributed.barrier()
    return cached


def _start_over(trainer: Trainer) -> None:
    """Delete the run's checkpoints and AutoAttack states: it trains from epoch 1."""
    if distributed.is_main():  # one rank deletes, then all start
        for f in [*trainer.dir.glob("*.pt"), *trainer.dir.glob("aa_state_*.json")]:
            f.unlink()
    distributed.barrier()


def teacher_for(r: Resolved, opts: RunOptions, kind: str = "teacher") -> nn.Module | None:
    """The cell's fixed `kind` teacher ("teacher" or "clean_teacher"): a RobustBench model, a
    file, or trained and cached here; None when the method needs none."""
    source = r.config.get(kind)  # the cell's --teacher / --clean-teacher, or its preset's
    if source is None:
        return None
    norm = r.config["teacher_normalize"] if kind == "teacher" else None
    if source.startswith(ZOO):
        root = opts.data_root or datasets.default_root()
        model = robustbench_model(source[len(ZOO):], r.cell.dataset, root / "robustbench")
        return renormalized(model, norm, source[len(ZOO):]) if norm else model
    file, cell = ((r.teacher_file, r.teacher_cell) if kind == "teacher"
                  else (r.clean_teacher_file, r.clean_teacher_cell))
    what = f"{kind.replace('_', ' ')} checkpoint"
    if file is None:
        file, what = train_teacher(cell, opts), f"cached {kind.replace('_', ' ')}"
    model = load_weights(build(r, kind, r.config[f"{kind}_arch"]), file, what)
    return normalized(model, norm)


def _has(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a package set to None in sys.modules: hidden
        return False


def missing_package(resolved: Sequence[Resolved], ev: EvalOptions,
                    executor: str = "none") -> str | None:
    """The first optional package the run will need and lacks, as one line naming it and the
    flag that avoids it (None: nothing missing); checked before any training, so a run never
    trains fully and then stops at AutoAttack."""
    if "aa" in ev.attacks and ev.aa_on != "none" and not _has("pyautoattack"):
        rest = ",".join(a for a in ev.attacks if a != "aa") or "clean"
        return ("AutoAttack needs the pyautoattack package (pip install pyautoattack), or drop "
                f"it: --attacks {rest}")
    for r in resolved:
        for kind in ("teacher", "clean_teacher"):
            source = r.config.get(kind) or ""
            flag = "--" + kind.replace("_", "-")
            if source.startswith(ZOO) and not (_has("robustbench") and _has("pyautoattack")):
                return (f"RobustBench teachers ({flag} {source}) need the robustbench and "
                        "pyautoattack packages (pip install 'advdistill-bench[robustbench]'), "
                        f"or drop it: {flag} FILE, or no {flag} to train one here")
    if executor != "none" and not _has("submitit"):
        return (f"--executor {executor} needs the submitit package (pip install submitit), or "
                "drop it: --executor none")
    return None


def row_key(r: Resolved, checkpoint: str) -> str:
    return f"{r.id}--{checkpoint}"


def stored(r: Resolved, store: Store) -> bool:
    """Whether the cell's rows are already in the store (its `last` row is written last)."""
    return store.has(row_key(r, "last"))


def teacher_codes(r: Resolved) -> dict[str, str]:
    """The code fingerprints of the teachers the harness trains for the cell, by kind."""
    cells = {"teacher": r.teacher_cell, "clean_teacher": r.clean_teacher_cell}
    return {k: fingerprint(resolve(c).cls)["sha256"] for k, c in cells.items() if c is not None}


def _code_change(then: str | None, now: str) -> str:
    """'fingerprint a, now b', or how it reads when none was recorded."""
    return f"{'fingerprint ' + then if then else 'no code fingerprint recorded'}, now {now}"


def stale(r: Resolved, store: Store, row: dict[str, Any] | None = None) -> str | None:
    """Why the cell's stored rows cannot stand for the current code of its method or of the
    teachers trained for it (another fingerprint, or none recorded), or None when they can.
    `row`: its stored `last` row, when already read."""
    row = row if row is not None else store.get(row_key(r, "last")) or {}
    then = {"method": (row.get("code") or {}).get("sha256"), **(row.get("teacher_code") or {})}
    now = {"method": fingerprint(r.cls)["sha256"], **teacher_codes(r)}
    changed = [k for k in now if then.get(k) != now[k]]
    if not changed:
        return None
    k = changed[0]
    whose = r.cell.method if k == "method" else f"its {k.replace('_', ' ')}'s method"
    return f"its rows were made by other code of {whose} ({_code_change(then.get(k), now[k])})"


def reusable(r: Resolved, store: Store, keep_stale: bool = False) -> bool:
    """Whether the stored rows stand for the cell: stored and current (or kept stale)."""
    return stored(r, store) and (keep_stale or stale(r, store) is None)


def _differences(row: dict[str, Any], device: str) -> str:
    """How the stored run's threads and device differ from this process's, or ''."""
    then = row.get("runtime") or {}
    out = []
    if then.get("threads") != torch.get_num_threads():
        out.append(f"{then.get('threads', 'unrecorded')} threads, now "
                   f"{torch.get_num_threads()}")
    if row.get("device") != _device_name(device):
        out.append(f"device {row.get('device')}, now {_device_name(device)}")
    return f" (made with {'; '.join(out)})" if out else ""


def _aa_state(path: Path) -> Path:
    """The AutoAttack state file, dropped if cut short: pyautoattack rewrites it in place, so
    a kill mid-write leaves truncated JSON, and a kill before its first attack leaves a state
    without robust flags; either would fail every rerun."""
    try:
        if path.exists():
            state = json.loads(path.read_text())
            if not isinstance(state, dict) or state.get("_robust_flags") is None:
                raise ValueError("no robust flags recorded yet")
    except (ValueError, UnicodeDecodeError):
        path.unlink()
    return path


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _twin(finals: dict[str, nn.Module], name: str, attacks: tuple[str, ...],
          done: dict[str, tuple[tuple[str, ...], dict[str, Any]]]) -> str | None:
    """An evaluated checkpoint with the same weights and buffers whose attacks began with
    `attacks`: evaluating `name` afresh would give exactly its numbers (the seed is reset
    per checkpoint and the attacks draw in order), so a short run, or one whose last epoch
    is its best, evaluates once."""
    return next((n for n, (ran, _) in done.items() if ran[:len(attacks)] == attacks
                 and _same_weights(finals[n], finals[name])), None)


def run_cell(cell: Cell, opts: RunOptions, ev: EvalOptions, store: Store,
             redo: bool = False, resume: bool = True) -> list[dict[str, Any]]:
    """Train and evaluate one cell, unless its rows are already stored; returns new rows.

    An unfinished cell continues from its last epoch checkpoint unless `resume` is False;
    `redo` retrains a stored cell from scratch.
    """
    r = resolve(cell)
    if stored(r, store) and not redo:
        last = store.get(row_key(r, "last")) or {}
        why = stale(r, store, last)
        if why is None or opts.keep_stale:
            note = _differences(last, opts.device)
            opts.log(f"skip {r.id}: already in the store{note}"
                     + (f"; kept though stale: {why}" if why else "")
                     + " (use --redo to run it again)")
            return []
        opts.log(f"retrain {r.id}: {why} (--keep-stale keeps such rows)")
        redo = True
    trainer = Trainer(r, opts, teacher_for(r, opts), teacher_for(r, opts, "clean_teacher"))
    if redo or not resume:
        _start_over(trainer)
    t0 = time.perf_counter()
    finals = trainer.train()
    wall = time.perf_counter() - t0
    if not distributed.is_main():  # under torchrun, rank 0 evaluates and stores
        return []
    if opts.data_path == "device":  # decoded once (cached), on the device
        x, y = devicedata.tensors(cell.dataset, "test", opts.data_root)
        x, y = devicedata.to_float(x.to(opts.device)), y.to(opts.device)
    else:
        x, y = datasets.as_tensors(datasets.load(cell.dataset, "test", root=opts.data_root))
    n_aa = ev.aa_samples if ev.aa_samples is not None else (
        EMBEDDED_AA_SAMPLES if r.spec.embedded else None)
    rows = []
    # `last` goes last: its presence marks the whole cell as stored.
    rule = selection.rule(r.params.selection)
    # sized from the network on the device (CUDA); every checkpoint has the same architecture
    batch, aa_batch = eval_batch_sizes(opts.device, r.spec.image_size, finals["last"],
                                       r.spec.channels)
    versions, commit, device = _versions(), _git_commit(), _device_name(opts.device)
    with eval_precision(opts.device, ev.precision) as precision_label:
        pass  # the name the rows record (fp32 on the CPU whatever the choice)
    images = images_fingerprint(x, y)
    done: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {}
    for name in sorted(finals, key=lambda n: n == "last"):
        t1 = time.perf_counter()
        attacks = ev.attacks_for(name, rule.reported)
        twin = _twin(finals, name, attacks, done)
        if twin is not None:
            metrics = {**restrict(done[twin][1], attacks, y, r.spec.num_classes),
                       "same_weights_as": twin}
        else:
            # Random starts drawn afresh per checkpoint: a row depends on its weights only,
            # not on what ran before it (a resumed AutoAttack skips the finished one's draws).
            torch.manual_seed(cell.seed)
            # weights frozen: a compiled network's attack asks for the input's gradient alone
            with eval_precision(opts.device, ev.precision), attack_frozen([finals[name]]):
                metrics = evaluate(finals[name], x, y, Threat(r.spec.eps), attacks=attacks,
                                   aa_samples=n_aa, device=opts.device,
                                   batch_size=batch, aa_batch_size=aa_batch,
                                   aa_state=_aa_state(trainer.dir / f"aa_state_{name}.json"),
                                   num_classes=r.spec.num_classes)
            done[name] = attacks, metrics
        if attacks != ev.attacks:  # a worst case over fewer attacks is another quantity
            metrics = {k: v for k, v in metrics.items() if k not in ("robust", "n_robust")}
        row = {
            "method": cell.method, "preset": cell.preset, "dataset": cell.dataset,
            "arch": r.arch, "seed": cell.seed, "epochs": r.params.epochs, "checkpoint": name,
            "selection": r.params.selection or "common", "reported": name in rule.reported,
            "eps": r.spec.eps, "train_eps": r.params.eps, **metrics, "test_images": images,
            **analysis.final_tutor(trainer.history),  # the last selection epoch's
            "train_seconds": round(trainer.train_seconds, 2),
            "wall_seconds": round(wall, 2), "eval_seconds": round(time.perf_counter() - t1, 2),
            "config_hash": r.id.rsplit("-", 1)[1], "cell_id": r.id, "config": r.config,
            "versions": versions, "git_commit": commit, "code": fingerprint(r.cls),
            "teacher_code": teacher_codes(r),
            "runtime": runtime(),
            "device": device, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "precision": trainer.compute.precision,
            "eval_precision": precision_label, "eval_batch": batch,
            "channels_last": trainer.compute.channels_last,
            "compile": trainer.compute.compile, "data_path": opts.data_path,
            "compile_mode": trainer.compute.compile_mode,
        }
        store.put(row_key(r, name), row)
        rows.append(row)
        opts.log(f"  [{cell.method}] {name}: " + "  ".join(
            f"{a} {metrics[a]:.3f}" for a in ev.attacks if a in metrics))
    return rows
