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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import BenchError, __version__
from bench.core import distributed, lock
from bench.core.fingerprint import fingerprint
from bench.core.store import Store
from bench.data import datasets, devicedata
from bench.data.corrupted import corrupted_sets
from bench.eval import analysis
from bench.eval import evaluate as suite
from bench.eval.batching import eval_batch_sizes, eval_precision
from bench.eval.evaluate import DEFAULT_ATTACKS, Threat, evaluate, images_fingerprint, restrict
from bench.train import checkpoint, selection, teacher_rows
from bench.train.cells import Cell, Resolved, resolve
from bench.train.compute import attack_frozen
from bench.train.runner import RunOptions, Trainer, build
from bench.train.teachers import ZOO, load_weights, normalized, renormalized, robustbench_model

EMBEDDED_AA_SAMPLES = 100  # AutoAttack's Square attack dominates a CPU run; seeded subset


AA_ON = ("best", "all", "none")
REPORTED = selection.COMMON.reported  # the common protocol's: best (and swa_best)
LOCK = "cell.lock"  # in a cell's run folder, held while one process trains and evaluates it
MODEL_FILES = ("best", "best_clean", "swa_best")  # the finals kept in files of their own


@dataclass(frozen=True)
class EvalOptions:
    """The evaluation protocol: which attacks, AutoAttack on how many test images and on
    which checkpoints (the cheap attacks run on every checkpoint)."""

    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    aa_samples: int | None = None  # None: the data set's default (all images for real sets)
    aa_on: str = "best"  # "best": the reported checkpoints only; "all"; "none"
    precision: str = "auto"  # fp32, tf32 or auto (torch's defaults): `batching.eval_precision`
    teachers: bool = True  # each fixed teacher evaluated once too (`teacher_rows`)

    def attacks_for(self, checkpoint: str, reported: tuple[str, ...] = REPORTED
                    ) -> tuple[str, ...]:
        """AutoAttack (L-inf and L2), the costly one, only where `aa_on` asks for it
        (`reported`: the checkpoints the cell's selection rule reports)."""
        aa = self.aa_on == "all" or (self.aa_on == "best" and checkpoint in reported)
        return tuple(a for a in self.attacks if a not in suite.AUTOATTACKS or aa)


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
    """The cached weights of the teacher `cell` (its best checkpoint), trained if missing,
    damaged (moved aside first) or made by other code of its method (unless
    `opts.keep_stale`). One process trains it; another waits for it (the cell's lock)."""
    tr = resolve(cell)
    cached = opts.out / "teachers" / f"{tr.id}.pt"
    code = fingerprint(tr.cls)["sha256"]
    if _cache_problem(cached, code, opts.keep_stale) is None:
        return cached
    with _locked(tr, opts, wait=True):
        problem = _cache_problem(cached, code, opts.keep_stale)  # trained while we waited?
        if problem is None:
            return cached
        kind, detail = problem
        trainer = Trainer(tr, opts, None)
        if kind == "damaged":
            _retrain_damaged(trainer, cached, detail)
        else:
            if kind == "stale":
                opts.log(f"retrain teacher {tr.id}: made by other code of {tr.cell.method} "
                         f"({detail})")
                _start_over(trainer)
            opts.log(f"training teacher {tr.id} ({tr.cell.method}, {tr.params.epochs} epochs)")
        best = trainer.train()["best"]
        if distributed.is_main():
            checkpoint.save_weights(cached, best, id=tr.id, code=code)
        distributed.barrier()
    return cached


def _cache_problem(cached: Path, code: str, keep_stale: bool) -> tuple[str, str] | None:
    """Why the cached teacher cannot stand, as (missing | damaged | stale, detail); None: it
    stands."""
    if not cached.exists():
        return "missing", ""
    try:
        then = checkpoint.verified(cached).get("code")
    except BenchError as exc:
        return "damaged", getattr(exc, "reason", str(exc))
    if then != code and not keep_stale:
        return "stale", _code_change(then, code)
    return None


def _retrain_damaged(trainer: Trainer, cached: Path, why: str) -> None:
    """Move the damaged cached teacher aside (kept for a look, never loaded) and say how it
    comes back: from its run's stored checkpoints if they are intact, else trained again."""
    aside = cached.with_name(cached.name + ".damaged")
    if distributed.is_main():
        cached.replace(aside)
    lost = _lost_files(trainer.dir, ["last", "best"])
    how = (f"training it again ({', '.join(lost)} gone or damaged too)" if lost
           else "rebuilding it from its run's stored checkpoints")
    trainer.opts.log(f"warning: cached teacher {cached} is damaged ({why}); moved to "
                     f"{aside.name}, {how}")
    if lost:
        _start_over(trainer)


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
    if set(suite.AUTOATTACKS) & set(ev.attacks) and ev.aa_on != "none" and not _has("pyautoattack"):
        rest = ",".join(a for a in ev.attacks if a not in suite.AUTOATTACKS) or "clean"
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


def checkpoint_names(r: Resolved) -> list[str]:
    """The checkpoints a finished run of the cell evaluates, one row each: the names
    `Trainer.finals` gives (`last`, and what the selection rule keeps: the SWA ones where SWA
    has averaged by the last epoch), known before any training."""
    p, rule = r.params, selection.rule(r.params.selection)
    start = p.swa_start if p.swa_start is not None else (p.milestones[0] if p.milestones else 0)
    swa = p.swa and p.epochs > start
    kept = (*rule.keep, *(["best_clean"] if rule.best_clean else []))
    return ["last", *(n for n in kept if n in ("best", "best_clean")
                      or (swa and n in ("swa_best", "swa_last")))]


def missing_rows(r: Resolved, store: Store) -> list[str]:
    """The cell's checkpoints whose rows are absent from the store or unreadable."""
    names = checkpoint_names(r)
    gone = set(store.missing([row_key(r, n) for n in names]))
    return [n for n in names if row_key(r, n) in gone]


def stored(r: Resolved, store: Store) -> bool:
    """Whether every row of the cell is in the store, readable."""
    return not missing_rows(r, store)


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


@dataclass(frozen=True)
class _Plan:
    """What `run_cell` does with a cell: skip it (`train` False, `line` says why), or train
    it (from scratch with `redo`; else resuming) and evaluate its checkpoints, `again`
    naming those whose rows are lost from a cell already evaluated in part."""

    train: bool
    line: str | None = None
    redo: bool = False
    again: tuple[str, ...] = ()

    def evaluates(self, name: str) -> bool:
        """Whether checkpoint `name` is evaluated: all of them, unless only rows other than
        `last` are lost (with `last` lost, all again: twins are found as in one pass)."""
        return not self.again or "last" in self.again or name in self.again


def _plan(r: Resolved, store: Store, opts: RunOptions, redo: bool) -> _Plan:
    """Skip a cell whose rows are all stored and current; retrain a stale or redone one;
    evaluate again the checkpoints of one whose rows are partly lost."""
    if redo:
        return _Plan(True, redo=True)
    names, gone = checkpoint_names(r), missing_rows(r, store)
    if "last" in gone:  # written last: a cell never evaluated, or cut short while it was
        return _Plan(True, again=tuple(gone) if len(gone) < len(names) else ())
    last = store.get(row_key(r, "last")) or {}
    why = stale(r, store, last)
    if why is not None and not opts.keep_stale:
        return _Plan(True, f"retrain {r.id}: {why} (--keep-stale keeps such rows)", redo=True)
    if (data := _data_change(r, opts, last)) is not None:
        return _Plan(True, f"retrain {r.id}: {data}", redo=True)
    if gone:
        return _Plan(True, again=tuple(gone))
    return _Plan(False, f"skip {r.id}: already in the store{_differences(last, opts.device)}"
                 + (f"; kept though stale: {why}" if why else "") + " (use --redo to run it again)")


def synthetic_data(r: Resolved, opts: RunOptions) -> bool:
    """Whether the cell's data are bench's synthetic files (bench.data.fake): its rows say so."""
    return datasets.synthetic(r.cell.dataset, opts.data_root) is not None


def _data_change(r: Resolved, opts: RunOptions, row: dict[str, Any]) -> str | None:
    """Why stored rows cannot stand for the cell's data now: made from bench's synthetic
    files where the real ones are now (or the other way round); None when they can."""
    then, now = bool(row.get("synthetic_data")), synthetic_data(r, opts)
    if then == now:
        return None
    return ("its rows were measured on bench's synthetic files, the data here are real" if then
            else "its rows were measured on real files, the data here are bench's synthetic ones")


def _intact(path: Path) -> bool:
    try:
        checkpoint.verified(path)
    except BenchError:
        return False
    return True


def _lost_files(run_dir: Path, names: Sequence[str]) -> list[str]:
    """The stored files of a finished run that `names` need, absent or damaged: its epoch
    checkpoint (both copies) for `last` and `swa_last`, a file of its own for the others."""
    lost = [f"{n}.pt" for n in names if n in MODEL_FILES and not _intact(run_dir / f"{n}.pt")]
    if checkpoint.find(run_dir / "ckpt.pt").state is None:
        lost.insert(0, "ckpt.pt")
    return lost


def _evaluate_again(trainer: Trainer, plan: _Plan) -> _Plan:
    """For a cell whose rows are partly lost: evaluate them again from its stored checkpoint
    files, or, where those are gone too, retrain it from scratch (and evaluate it all)."""
    r, names = trainer.r, checkpoint_names(trainer.r)
    rows = f"{r.id}: row(s) {', '.join(plan.again)} missing or unreadable"
    lost = _lost_files(trainer.dir, names)
    if lost:
        trainer.opts.log(f"{rows}, and its checkpoint file(s) {', '.join(lost)} gone or "
                         "damaged: training it again")
        return _Plan(True, redo=True)
    which = "them" if "last" not in plan.again else "all its checkpoints"
    trainer.opts.log(f"{rows}: evaluating {which} again from its stored checkpoint files")
    return plan


@contextmanager
def _locked(r: Resolved, opts: RunOptions, wait: bool) -> Iterator[None]:
    """The cell's lock held (by the main rank) while it trains and evaluates; every rank
    passes the barrier once it is held, so all decide from the same stored state."""
    if not distributed.is_main():
        distributed.barrier()
        yield
        return
    folder = opts.out / "runs" / r.id
    made = [d for d in (folder.parent, folder) if not d.exists()]
    try:
        with lock.held(folder / LOCK, r.id, opts.log, wait):
            distributed.barrier()
            yield
    finally:  # a cell that failed before writing anything (its data missing) leaves nothing
        for d in reversed(made):
            with suppress(OSError):  # not empty: kept
                d.rmdir()


def run_cell(cell: Cell, opts: RunOptions, ev: EvalOptions, store: Store,
             redo: bool = False, resume: bool = True, wait: bool = True
             ) -> list[dict[str, Any]]:
    """Train and evaluate one cell, unless its rows are already stored; returns new rows.

    An unfinished cell continues from its last epoch checkpoint unless `resume` is False;
    `redo` retrains a stored cell from scratch; a cell whose rows are partly lost has those
    evaluated again from its stored checkpoints. Another process training the cell is waited
    for (`wait`; else `lock.Busy`, but always under torchrun: ranks must agree).
    """
    r = resolve(cell)
    plan = _plan(r, store, opts, redo)
    if not plan.train:
        opts.log(plan.line)
        return []
    with _locked(r, opts, wait or distributed.world_size() > 1):
        plan = _plan(r, store, opts, redo)  # again: another process may have stored rows
        if plan.line:
            opts.log(plan.line)
        return _train_and_store(cell, r, opts, ev, store, plan, resume) if plan.train else []


def run_cells(cells: Sequence[Cell], opts: RunOptions, ev: EvalOptions, store: Store,
              redo: bool = False, resume: bool = True,
              announce: Callable[[Cell], None] = lambda c: None,
              keep_going: bool = False) -> list[str]:
    """`run_cell` over `cells`, in order; a cell another process is training is put off
    until the others are done, then waited for (its rows are then stored: no retraining).
    `announce` is called before each cell is taken up. With `keep_going`, a cell that stops
    (a non-finite loss, a teacher that cannot load) is logged and the others still run; its
    one-line reason is returned, one per cell (else the first one is raised)."""
    later, failed = [], []

    def run(c: Cell, wait: bool) -> None:
        try:
            run_cell(c, opts, ev, store, redo=redo, resume=resume, wait=wait)
        except lock.Busy:
            raise
        except BenchError as exc:
            if not keep_going:
                raise
            failed.append(f"{c.method} seed {c.seed}: {exc}")
            opts.log(f"  stopped: {exc}")

    for c in cells:
        announce(c)
        try:
            run(c, wait=False)
        except lock.Busy as busy:
            opts.log(f"{busy}: moving on, back to it at the end")
            later.append(c)
    for c in later:
        announce(c)
        run(c, wait=True)
    return failed


def _train_and_store(cell: Cell, r: Resolved, opts: RunOptions, ev: EvalOptions,
                     store: Store, plan: _Plan, resume: bool) -> list[dict[str, Any]]:
    """Train (or resume) the cell as `plan` says, evaluate its checkpoints and store rows."""
    trainer = Trainer(r, opts, teacher_for(r, opts), teacher_for(r, opts, "clean_teacher"))
    if plan.again:
        plan = _evaluate_again(trainer, plan)
    if plan.redo or not resume:
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
    images, synthetic = images_fingerprint(x, y), synthetic_data(r, opts)
    corrupted = (corrupted_sets(cell.dataset, opts.data_root) if suite.CORRUPTIONS in ev.attacks
                 else None)  # checked before training too (GridOptions.check)
    l2 = {"eps_l2": r.spec.eps_l2} if set(suite.L2_ATTACKS) & set(ev.attacks) else {}
    threat = Threat(r.spec.eps, r.spec.eps_l2)  # one for the students and their teachers
    done: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {}
    for name in sorted(filter(plan.evaluates, finals), key=lambda n: n == "last"):
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
                metrics = evaluate(finals[name], x, y, threat, attacks=attacks,
                                   aa_samples=n_aa, device=opts.device,
                                   batch_size=batch, aa_batch_size=aa_batch,
                                   aa_state=_aa_state(trainer.dir / f"aa_state_{name}.json"),
                                   num_classes=r.spec.num_classes,
                                   aa_l2_state=_aa_state(trainer.dir / f"aa_state_l2_{name}.json"),
                                   corrupted=corrupted)
            done[name] = attacks, metrics
        if attacks != ev.attacks:  # a worst case over fewer attacks is another quantity
            metrics = {k: v for k, v in metrics.items() if k not in ("robust", "n_robust")}
        row = {
            "method": cell.method, "preset": cell.preset, "dataset": cell.dataset,
            "arch": r.arch, "seed": cell.seed, "epochs": r.params.epochs, "checkpoint": name,
            "selection": r.params.selection or "common", "reported": name in rule.reported,
            "eps": r.spec.eps, **l2, "train_eps": r.params.eps, **metrics, "test_images": images,
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
            "synthetic_data": synthetic, **teacher_rows.links(r),
        }
        store.put(row_key(r, name), row)
        rows.append(row)
        opts.log(f"  [{cell.method}] {name}: " + "  ".join(
            f"{a} {metrics[a]:.3f}" for a in ev.attacks if a in metrics))
    if not ev.teachers:
        return rows
    with eval_precision(opts.device, ev.precision):  # each fixed teacher once, as the students
        teacher_rows.evaluate_teachers(
            # a teacher is attacked as a reported checkpoint is (AutoAttack unless --aa-on none)
            r, lambda kind: teacher_for(r, opts, kind), x, y, ev.attacks_for("best", ("best",)),
            out=opts.out, threat=threat, n_aa=n_aa,
            device=opts.device, batch_size=batch, aa_batch_size=aa_batch, log=opts.log,
            corrupted=corrupted,
            row_fields={"versions": versions, "git_commit": commit, "device": device,
                        "eval_precision": precision_label, "synthetic_data": synthetic})
    return rows
