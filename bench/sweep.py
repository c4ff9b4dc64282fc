"""Fan cells out through submitit: Slurm on a cluster, local processes on one machine.

No scheduler of our own: submitit submits, Slurm (or the local executor) runs, and the
results store is the only coordination between jobs. Teachers are trained first, one job per
distinct teacher, so that no two jobs ever train the same teacher at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import BenchError
from bench.cells import Cell, resolve
from bench.pipeline import EvalOptions, run_cell, train_teacher
from bench.runner import RunOptions
from bench.store import Store


@dataclass(frozen=True)
class SweepOptions:
    """Where and how the jobs run (submitit's parameters, named as submitit names them)."""

    executor: str = "local"  # "slurm", "local" (subprocesses) or "debug" (in this process)
    timeout_min: int = 24 * 60
    partition: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    parallel: int = 16  # slurm_array_parallelism


def _opts(out: Path, device: str, data_root: Path | None) -> RunOptions:
    return RunOptions(out=out, device=device, data_root=data_root)


def _train_teacher(cell: Cell, out: Path, device: str, data_root: Path | None) -> str:
    """Job: train (or find cached) the teacher cell `cell`; returns the cached file."""
    return str(train_teacher(cell, _opts(out, device, data_root)))


def _run(cell: Cell, out: Path, device: str, data_root: Path | None, ev: EvalOptions,
         redo: bool) -> int:
    """Job: one cell end to end; returns the number of rows it stored."""
    return len(run_cell(cell, _opts(out, device, data_root), ev, Store(out), redo=redo))


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


def sweep(cells: list[Cell], out: Path, device: str, data_root: Path | None,
          ev: EvalOptions, so: SweepOptions, redo: bool = False, log=print) -> int:
    """Run `cells` as submitit jobs (teachers first) and wait; returns rows stored."""
    ex = _executor(out, so)
    teachers: dict[str, Cell] = {}
    for c in cells:
        r = resolve(c)
        for kind, t in (("teacher", r.teacher_cell), ("clean_teacher", r.clean_teacher_cell)):
            if t is not None:
                teachers.setdefault(r.config[kind], t)
    if teachers:
        log(f"submitting {len(teachers)} teacher job(s) to {so.executor}")
        n = len(teachers)
        _wait(ex.map_array(_train_teacher, list(teachers.values()), [out] * n, [device] * n,
                           [data_root] * n), "teacher")
    n = len(cells)
    log(f"submitting {n} cell job(s) to {so.executor}; logs under {out / 'submitit'}")
    jobs = ex.map_array(_run, cells, [out] * n, [device] * n, [data_root] * n, [ev] * n,
                        [redo] * n)
    return sum(_wait(jobs, "cell"))
