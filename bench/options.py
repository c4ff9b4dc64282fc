"""The options of a grid, declared once as data: `bench run` and run_all.py take the same ones
(and so read the same experiment files), and click fills one `GridOptions` from them.

Each field of `GridOptions` (and of `RunControl`, the options only `bench run` has) is also
its click option: `opt(group, *flags, ...)` holds the flags, the help and click's settings,
and `--help` lists the options under their groups' headings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import click

from bench import BenchError
from bench.eval.evaluate import ALL_ATTACKS, CORRUPTIONS, DEFAULT_ATTACKS
from bench.train import experiment
from bench.train.cells import Cell
from bench.train.teachers import NORMALIZATIONS

GRID = "What to train"
TEACHERS = "Teachers and peers"
EVALUATION = "Selection and evaluation"
COMPUTE = "How it computes"
JOBS = "Output and cluster jobs"
RUNNING = "Resuming and debugging"
ON_OFF = click.Choice(["auto", "on", "off"])
FLAG = {"auto": None, "on": True, "off": False}


def opt(group: str, *flags: str, help: str, default: Any = None, **click_kw: Any) -> Any:
    """A dataclass field that is also a click option (its default shown when it has one)."""
    click_kw.setdefault("show_default", default not in (None, ()))
    return field(default=default, metadata={"group": group, "flags": flags, "help": help,
                                            "click": click_kw})


@dataclass(frozen=True)
class GridOptions:
    """Which cells a grid has and how they run, as the command line or a file gave them."""

    methods: str = opt(GRID, "--methods", default="peeraid,rslad",
                       help="Comma-separated method names (see `bench list`), or all.")
    datasets: str = opt(GRID, "--datasets", "--dataset", default="digits",
                        help="Comma-separated data sets; the default is the embedded, offline "
                             "digits set.")
    archs: str | None = opt(GRID, "--archs", "--arch",
                            help="Comma-separated student architectures [default: each data "
                                 "set's].")
    preset: str = opt(GRID, "--preset", default="faithful", help="Hyper-parameter preset.")
    seeds: str = opt(GRID, "--seeds", default="0", help="Comma-separated seeds.")
    epochs: int | None = opt(GRID, "--epochs", type=int,
                             help="Override the preset's epochs; every epoch landmark of its "
                                  "schedule (milestones, SWA start, ...) scales with them.")
    sets: tuple[str, ...] = opt(GRID, "--set", default=(), multiple=True, metavar="KEY=VALUE",
                                help="Override any hyper-parameter (repeatable), e.g. --set t=4.")
    sweep: tuple[str, ...] = opt(GRID, "--sweep", default=(), multiple=True, metavar="KEY=V1,V2",
                                 help="One cell per value (repeatable: one per combination), "
                                      "typed and checked like --set, e.g. --sweep g2=0.01,0.1,1.")
    teachers: str | None = opt(TEACHERS, "--teachers", "--teacher",
                               help="Comma-separated teachers, one cell each (a grid axis): "
                                    "checkpoint files, robustbench:NAME, or "
                                    "train:METHOD[:ARCH][:KEY=VALUE...] for one bench trains and "
                                    "caches [default: the preset's, else trained with "
                                    "--teacher-method].")
    teacher_normalize: str | None = opt(
        TEACHERS, "--teacher-normalize", type=click.Choice(sorted(NORMALIZATIONS)),
        help="The teacher normalises its [0,1] input with these mean/std inside.")
    teacher_arch: str | None = opt(TEACHERS, "--teacher-arch",
                                   help="Teacher architecture [default: student's].")
    teacher_method: str | None = opt(TEACHERS, "--teacher-method",
                                     help="Method that trains the teacher when none is given "
                                          "[default: the preset's teacher, else pgdat].")
    clean_teachers: str | None = opt(TEACHERS, "--clean-teachers", "--clean-teacher",
                                     help="Comma-separated clean (non-robust) teachers of the "
                                          "multi-teacher methods, a grid axis, in the forms "
                                          "--teachers takes [default: the preset's, else trained "
                                          "with standard].")
    clean_teacher_arch: str | None = opt(TEACHERS, "--clean-teacher-arch",
                                         help="Clean teacher architecture [default: the "
                                              "preset's, else student's].")
    peer_arch: str | None = opt(TEACHERS, "--peer-arch",
                                help="PeerAiD's peer architecture [default: student's].")
    select: str = opt(EVALUATION, "--select", type=click.Choice(["test", "val"]), default="test",
                      help="Split for best-checkpoint selection (PGD-10).")
    select_every: int = opt(EVALUATION, "--select-every", type=int, default=1,
                            help="Epochs between selection evaluations (each attacks the "
                                 "whole selection split with PGD-10, per network kept: on "
                                 "CIFAR-10 about a fifth of a PGD-AT epoch, half or more of a "
                                 "cheap method's; its time is each epoch's selection_seconds).")
    attacks: str = opt(EVALUATION, "--attacks", default=",".join(DEFAULT_ATTACKS),
                       help="Evaluation attacks (L-inf); also, opt-in: pgd20_l2 and aa_l2 "
                            "(L2), corruptions (CIFAR-10-C, CIFAR-100-C, Tiny-ImageNet-C "
                            "under --data-root).")
    aa_samples: int | None = opt(EVALUATION, "--aa-samples", type=int,
                                 help="AutoAttack on a fixed seeded subset of N test images "
                                      "[default: 100 on the embedded set, all otherwise].")
    aa_on: str = opt(EVALUATION, "--aa-on", type=click.Choice(["best", "all", "none"]),
                     default="best",
                     help="Checkpoints AutoAttack runs on: best = the ones papers report (best, "
                          "and swa_best for PeerAiD); the other attacks run on every checkpoint.")
    eval_teachers: str = opt(EVALUATION, "--eval-teachers",
                             type=click.Choice(["auto", "yes", "no"]), default="auto",
                             help="Evaluate each fixed teacher once, on the students' images and "
                                  "attacks (a teacher row, for `bench table --teachers`); auto: "
                                  "when the grid names --teachers or --clean-teachers (it costs "
                                  "as much as a student's evaluation).")
    eval_precision: str = opt(EVALUATION, "--eval-precision",
                              type=click.Choice(["fp32", "tf32", "auto"]), default="auto",
                              help="Evaluation and selection attacks' precision, recorded in "
                                   "each row (not part of the cell id): fp32 strict; tf32 matmuls "
                                   "and convolutions; auto = PyTorch's defaults, as the authors' "
                                   "code ran (TF32 cuDNN convolutions, fp32 matmuls). The CPU "
                                   "is fp32 whatever the choice.")
    device: str = opt(COMPUTE, "--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    precision: str = opt(COMPUTE, "--precision",
                         type=click.Choice(["auto", "fp32", "tf32", "bf16"]), default="auto",
                         help="Training precision (part of the cell id): auto = bf16 autocast "
                              "on CUDA, fp32 on the CPU. Evaluation attacks: --eval-precision.")
    data_path: str = opt(COMPUTE, "--data-path", type=click.Choice(["device", "torchvision"]),
                         default="device",
                         help="device: decode each data set once (cached beside it), augment "
                              "whole batches on the device; torchvision: PIL per image in a "
                              "DataLoader.")
    channels_last: str = opt(COMPUTE, "--channels-last", type=ON_OFF, default="auto",
                             help="channels_last memory format [auto: on for CUDA, and on the "
                                  "CPU for images of 32 px or more].")
    compile_: str = opt(COMPUTE, "--compile", type=ON_OFF, default="auto",
                        help="torch.compile the networks [auto: CUDA runs of 30 epochs or "
                             "more].")
    compile_mode: str = opt(COMPUTE, "--compile-mode",
                            type=click.Choice(["default", "reduce-overhead", "max-autotune"]),
                            default="default",
                            help="torch.compile's mode when compiling: reduce-overhead replays "
                                 "CUDA graphs (fewer kernel launches, for small batches); "
                                 "recorded in each row, not part of the cell id.")
    data_root: str | None = opt(COMPUTE, "--data-root", type=click.Path(file_okay=False),
                                help="Folder holding (or receiving) torchvision data sets.")
    threads: int | None = opt(COMPUTE, "--threads", type=int,
                              help="CPU threads for torch (recorded in every row: the count "
                                   "changes the order of the sums) [default: 1 for a CPU grid "
                                   "of embedded data sets, deterministic and fastest on a busy "
                                   "machine; torch's choice otherwise].")
    out: str = opt(JOBS, "--out", type=click.Path(file_okay=False), default="results",
                   help="Results folder (rows, checkpoints, teachers).")
    executor: str = opt(JOBS, "--executor", type=click.Choice(["none", "local", "slurm", "debug"]),
                        default="none",
                        help="Run the cells as submitit jobs: Slurm, local processes, or "
                             "in-process.")
    slurm_partition: str | None = opt(JOBS, "--slurm-partition",
                                      help="Slurm partition for --executor slurm.")
    timeout_min: int = opt(JOBS, "--timeout-min", type=int, default=24 * 60,
                           help="Per-job time limit for --executor.")
    gpus_per_node: int = opt(JOBS, "--gpus-per-node", type=int, default=0,
                             help="GPUs per job for --executor.")
    keep_stale: bool = opt(JOBS, "--keep-stale", default=False, is_flag=True, show_default=False,
                           help="Reuse stored cells made by other code of their method (or "
                                "teacher), marked stale in every table, instead of retraining "
                                "them.")

    def attack_list(self) -> tuple[str, ...]:
        return tuple(experiment.csv(self.attacks))

    def check(self) -> None:
        """The checks a value needs beyond its click type, before any work."""
        attacks = self.attack_list()
        bad = [a for a in attacks if a not in ALL_ATTACKS]
        if bad:
            from bench.core.suggest import unknown

            raise unknown("attack", bad[0], ALL_ATTACKS)
        if not attacks:
            raise BenchError(f"unknown attack {self.attacks!r} (valid: {', '.join(ALL_ATTACKS)})")
        if CORRUPTIONS in attacks:  # files missing or damaged: one line, before training
            from bench.data.corrupted import corrupted_sets

            for dataset in experiment.csv(self.datasets):
                corrupted_sets(dataset, self.data_root)
        if self.aa_samples is not None and self.aa_samples < 1:
            raise BenchError(f"--aa-samples must be >= 1, got {self.aa_samples}")
        if self.threads is not None and self.threads < 1:
            raise BenchError(f"--threads must be >= 1, got {self.threads}")

    def run_device(self) -> str:
        """Where the cells train: the jobs' machines decide under --executor (a GPU job runs
        on cuda), else this machine's device, checked."""
        if self.executor != "none":
            return "cuda" if self.gpus_per_node else "cpu" if self.device == "auto" else self.device
        return experiment.resolve_device(self.device)

    def cells(self, device: str) -> list[Cell]:
        """The grid's cells; precision auto is decided by `device`, as for every command."""
        precision = self.precision
        if precision == "auto":
            from bench.train.compute import default_precision

            precision = default_precision(device)
        return experiment.grid(
            self.methods, self.datasets, self.archs, self.seeds, self.preset, self.epochs,
            self.sets, self.sweep, peer_arch=self.peer_arch, teachers=self.teachers,
            teacher_arch=self.teacher_arch, teacher_method=self.teacher_method,
            select=self.select, select_every=self.select_every,
            teacher_normalize=self.teacher_normalize, clean_teachers=self.clean_teachers,
            clean_teacher_arch=self.clean_teacher_arch, precision=precision).cells()

    def use_threads(self, cells: list[Cell], device: str) -> None:
        """--threads, or its default: one thread when every cell is an embedded set on the CPU
        (torch's default count made the embedded default 11x slower beside two busy
        processes on 2 cores, and its sums depend on the count), else torch's choice."""
        import torch

        from bench.data import datasets

        threads = self.threads
        if threads is None and torch.device(device).type == "cpu" and all(
                datasets.spec(c.dataset).embedded for c in cells):
            threads = 1
        if threads is not None:
            torch.set_num_threads(threads)

    def eval_options(self):
        from bench.train.pipeline import EvalOptions

        return EvalOptions(attacks=self.attack_list(), aa_samples=self.aa_samples,
                           aa_on=self.aa_on, precision=self.eval_precision,
                           teachers=self.eval_teachers == "yes" or (
                               self.eval_teachers == "auto"
                               and (self.teachers or self.clean_teachers) is not None))

    def run_options(self, out: Path, device: str, **more: Any):
        """The runner's options from these (`more`: the caller's own, e.g. its logger)."""
        from bench.train.runner import RunOptions

        return RunOptions(out=out, device=device,
                          data_root=Path(self.data_root) if self.data_root else None,
                          data_path=self.data_path, channels_last=FLAG[self.channels_last],
                          compile=FLAG[self.compile_], keep_stale=self.keep_stale,
                          eval_precision=self.eval_precision,
                          compile_mode=self.compile_mode, **more)

    def sweep_options(self):
        """submitit's options, or None when the cells run in this process."""
        if self.executor == "none":
            return None
        from bench.train.sweep import SweepOptions

        return SweepOptions(executor=self.executor, timeout_min=self.timeout_min,
                            partition=self.slurm_partition, gpus_per_node=self.gpus_per_node)


@dataclass(frozen=True)
class RunControl:
    """Options of `bench run` alone: how its cells resume and what it shows while training."""

    redo: bool = opt(RUNNING, "--redo", default=False, is_flag=True, show_default=False,
                     help="Retrain cells already in the store.")
    resume: bool = opt(RUNNING, "--resume/--restart", default=True,
                       help="Continue an unfinished cell from its last epoch checkpoint, or "
                            "start it over.")
    detect_anomaly: bool = opt(RUNNING, "--detect-anomaly", default=False, is_flag=True,
                               show_default=False, help="torch autograd anomaly detection.")
    num_workers: int = opt(RUNNING, "--num-workers", type=int, default=0,
                           help="DataLoader workers for torchvision data sets.")
    read_every: int = opt(RUNNING, "--read-every", type=click.IntRange(min=0), default=0,
                          help="Read the loss back every N steps (a host-device sync) to show it "
                               "in the progress bar and stop a non-finite run early; 0: once "
                               "per epoch.")


def _group_of() -> dict[str, str]:
    return {f.name: f.metadata["group"] for cls in (GridOptions, RunControl) for f in fields(cls)}


def file_keys(cls: type) -> frozenset[str]:
    """The experiment-file keys of `cls`'s options (every long flag, dashes dropped)."""
    return frozenset(name.lstrip("-") for f in fields(cls) for flag in f.metadata["flags"]
                     for name in flag.split("/"))


def options_of(cls: type, **defaults: Any) -> Callable[[Callable], Callable]:
    """Click options for every field of `cls`; the command receives one `cls` object, after
    those of `options_of` decorators above this one (`defaults` replace the declared ones,
    e.g. the methods a command runs)."""
    names = [f.name for f in fields(cls)]

    def apply(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:  # args: objects of options stacked above
            return fn(*args, cls(**{n: kwargs.pop(n) for n in names}), **kwargs)

        for f in reversed(fields(cls)):
            kw = dict(f.metadata["click"])
            default = defaults.get(f.name, f.default)
            command = click.option(*f.metadata["flags"], f.name, default=default,
                                   help=f.metadata["help"], **kw)(command)
        return command

    return apply


class GroupedCommand(click.Command):
    """A command whose --help lists the declared options under their groups' headings."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        group_of, sections = _group_of(), {}
        for p in self.get_params(ctx):
            record = p.get_help_record(ctx)
            if record:
                sections.setdefault(group_of.get(p.name, "Other options"), []).append(record)
        for title, records in sections.items():
            with formatter.section(title):
                formatter.write_dl(records)

