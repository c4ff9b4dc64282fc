"""Fan cells out through submitit: Slurm on a cluster, local processes on one machine.

No scheduler of our own: submitit submits, Slurm (or the local executor) runs, and the
results store is the only coordination between jobs. Teachers are trained first, one job per
distinct teacher, so that no two jobs ever train the same teacher at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from bench import BenchError
from bench.core.store import Store
from bench.train.cells import Cell, resolve
from bench.train.pipeline import EvalOptions, run_cell, train_teacher
from bench.train.runner import RunOptions


@dataclass(frozen=True)
class SweepOptions:
    """Where and how the jobs run (submitit's parameters, named as submitit names them)."""

    executor: str = "local"  # "slurm", "local" (subprocesses) or "debug" (in this process)
    timeout_min: int = 24 * 60
    partition: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    parallel: int = 16  # slurm_array_parallelism


def _train_teacher(cell: Cell, opts: RunOptions) -> str:
    """Job: train (or find cached) the teacher cell `cell`; returns the cached file."""
    return str(train_teacher(cell, opts))


def _run(cell: Cell, opts: RunOptions, ev: EvalOptions, redo: bool) -> int:
    """Job: one cell end to end; returns the number of rows it stored."""
    return len(run_cell(cell, opts, ev, Store(opts.out), redo=redo))


def _executor(out: Path, so: SweepOptions):
    import submitit

    ex = submitit.AutoExecutor(folder=out / "submitit" / "%j", cluster=so.executor)
    params = dict(timeout_min=so.timeout_min, gpus_per_node=so.gpus_per_node,
                  cpus_per_task=so.cpus_per_task, slurm_array_parallelism=so.parallel,
                  name="bench")
    if so.partition:
        params["slurm_partition"] = so.partition
    ex.update_parameters(**params)
    return ex


def _wait(jobs: list, what: str) -> list:
    """Every job's result; a failed job is one line naming its log, not a remote traceback."""
    import submitit

    results = []
    for job in jobs:
        try:
            results.append(job.result())
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError):
            raise BenchError(f"{what} job {job.job_id} failed; its log: "
                             f"{job.paths.stderr}") from None
    return results


def sweep(cells: list[Cell], opts: RunOptions, ev: EvalOptions, so: SweepOptions,
          redo: bool = False, log=print) -> int:
    """Run `cells` as submitit jobs (teachers first) and wait; returns rows stored. Every job
    runs with `opts` (device, data path, kernels), logging to its own submitit log."""
    out = opts.out
    resolved = [resolve(c) for c in cells]  # every error before submitit writes anything
    ex = _executor(out, so)
    job = replace(opts, log=print, progress=None)  # no handle on this process's console
    teachers: dict[str, Cell] = {}
    for r in resolved:
        for kind, t in (("teacher", r.teacher_cell), ("clean_teacher", r.clean_teacher_cell)):
            if t is not None:
                teachers.setdefault(r.config[kind], t)
    if teachers:
        log(f"submitting {len(teachers)} teacher job(s) to {so.executor}")
        _wait(ex.map_array(_train_teacher, list(teachers.values()), [job] * len(teachers)),
              "teacher")
    n = len(cells)
    log(f"submitting {n} cell job(s) to {so.executor}; logs under {out / 'submitit'}")
    jobs = ex.map_array(_run, cells, [job] * n, [ev] * n, [redo] * n)
    return sum(_wait(jobs, "cell"))
