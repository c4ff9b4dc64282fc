"""The `bench` command line (click + rich). Every error is one line and a non-zero exit."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console, ConsoleDimensions

from bench import BenchError
from bench.core import registry
from bench.core.distiller import FAITHFUL, PAPER, Distiller, landmarks, parse_number
from bench.core.suggest import unknown
from bench.data import datasets
from bench.eval.evaluate import ALL_ATTACKS
from bench.models import model_names
from bench.options import GridOptions, GroupedCommand, RunControl, options_of
from bench.train import experiment, runs, selection
from bench.train.cells import Cell, Resolved, budget_note, resolve

UNBOUNDED = 100_000  # columns of a file or pipe: wider than any line bench prints


class _Console(Console):
    """rich's console, as wide as its lines to a file or pipe: a table cell or a long path is
    never wrapped or cut in a cluster log (grep, copy-paste); a terminal's own width there."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(UNBOUNDED, size.height)


console = _Console(highlight=False, soft_wrap=True)  # log lines never wrapped: grep finds them
# Errors and warnings: one line each, however long (never wrapped), and literal (no markup).
err_console = _Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
# What Ctrl-C leaves of a training command, and how it goes on (bench run, run_all.py).
INTERRUPTED = ("interrupted: finished cells' rows are stored, and each unfinished cell is "
               "checkpointed at its last finished epoch",
               "rerun the same command to resume: stored cells are skipped, the others go on "
               "from their last finished epoch")


# The option parsers live in bench.train.experiment (shared with run_all.py).
_csv = experiment.csv
_device, _writable = experiment.resolve_device, experiment.writable


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """bench: train, attack and compare adversarial distillation methods side by side."""


@cli.command(cls=GroupedCommand)
@options_of(GridOptions, methods="peeraid,rslad")
@options_of(RunControl)
@experiment.config_option()
def run(grid: GridOptions, control: RunControl) -> None:
    """Train the grid (data sets x archs x methods x sweeps x seeds), evaluate, store the
    rows and print one table per data set and arch.

    Stored cells are skipped; an interrupted one resumes from its last epoch checkpoint.
    """
    from bench.core.store import Store
    from bench.train.pipeline import missing_package, run_cells

    grid.check()
    if control.num_workers < 0:
        raise BenchError(f"--num-workers must be >= 0, got {control.num_workers}")
    run_device = grid.run_device()
    cells = grid.cells(run_device)
    resolved = [resolve(c) for c in cells]  # every error (teachers' too) before any training
    ev = grid.eval_options()
    if (missing := missing_package(resolved, ev, grid.executor)) is not None:
        raise BenchError(missing)  # an optional package the run needs: before any training
    _check_teacher_files(resolved)
    grid.use_threads(cells, run_device)
    store = Store(_writable(Path(grid.out)))
    base = grid.run_options(store.root, run_device, num_workers=control.num_workers,
                            detect_anomaly=control.detect_anomaly,
                            read_every=control.read_every)
    so = grid.sweep_options()
    if so is not None:
        from bench.train.sweep import sweep

        sweep(cells, base, ev, so, redo=control.redo, log=_plain(console))
        _print_table(store, {r.id for r in resolved})
        return
    from bench.core import distributed

    main_rank = distributed.is_main()  # under torchrun, only rank 0 talks
    with _progress() as bar:
        opts = dataclasses.replace(base, device=distributed.setup(run_device),
                                   log=_plain(bar.console) if main_rank else lambda _: None,
                                   progress=_updater(bar) if main_rank else None)
        by_cell = {id(c): r for c, r in zip(cells, resolved, strict=True)}

        def announce(c: Cell) -> None:
            opts.log(f"{c.method} on {c.dataset}" + (f" / {c.arch}" if c.arch else "")
                     + f", seed {c.seed}")
            if note := budget_note(by_cell[id(c)]):  # e.g. `paper` on the embedded set
                opts.log(note)

        # a cell another process holds is put off to the end, then waited for
        # one cell that stops (a non-finite loss) does not lose the grid's other cells
        failed = run_cells(cells, opts, ev, store, redo=control.redo, resume=control.resume,
                           announce=announce,
                           keep_going=len(cells) > 1 and distributed.world_size() == 1)
    if main_rank:
        _print_table(store, {r.id for r in resolved})
    if failed:
        raise BenchError(f"{len(failed)} of {len(cells)} cells stopped (the others are "
                         f"stored): " + "; ".join(failed))


def _check_teacher_files(resolved: list[Resolved]) -> None:
    """Load each --teacher / --clean-teacher file into its architecture now: a wrong file
    fails before any training, not after the methods listed before the one that needs it."""
    from bench.train.runner import build
    from bench.train.teachers import load_weights

    done = set()
    for r in resolved:
        for kind, file in (("teacher", r.teacher_file), ("clean_teacher", r.clean_teacher_file)):
            arch = r.config[f"{kind}_arch"]
            if file is not None and (file, arch) not in done:
                load_weights(build(r, kind, arch), file, f"{kind.replace('_', ' ')} checkpoint")
                done.add((file, arch))


def _plain(out: Console):
    """A logger of plain lines: in `[pgdat] epoch 1` the brackets are text, not rich markup."""
    return lambda line: out.print(line, markup=False)


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    # The label renders itself: a plain string column would take the markup setting of
    # whatever line is printed above the bar (the logger's markup=False showed its tags).
    label = TextColumn("{task.description}", style="progress.description", markup=False)
    return Progress(label, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


def _updater(bar):
    """A progress callback: one bar per training cell (teachers included), batches done, and
    the epoch's mean loss so far where `--read-every` reads it."""
    tasks: dict[str, int] = {}

    def update(label: str, done: int, total: int, loss: float | None = None) -> None:
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total)
        text = {} if loss is None else {"description": f"{label}  loss {loss:.4f}"}
        bar.update(tasks[label], completed=done, total=total, **text)

    return update


def _print_table(store, ids: set[str] | None = None, fmt: str = "rich", opts=None,
                 reported: bool = False, teachers: bool = False) -> None:
    """The stored rows (of `ids` only, if given) as one table per data set and arch."""
    import pandas as pd

    from bench.report import tables
    from bench.report.aggregate import current

    rows, problems = store.read()
    for p in problems:
        err_console.print(f"warning: {p}", markup=False)
    if ids is not None:
        rows = [r for r in rows if r.get("cell_id") in ids]
    if not rows:
        console.print(f"no results in {store.root}", markup=False)
        return
    df, _ = current(pd.DataFrame(rows))
    opts = opts or tables.TableOptions()
    if teachers:
        parts = tables.teacher_view(df, fmt, str(store.root), opts)
        if not parts:
            raise BenchError("no student row links an evaluated teacher: run a grid with "
                             "--teachers A,B,... first")
    else:
        parts = (tables.reported_view if reported else tables.render)(df, fmt, opts)
    from bench.report.aggregate import markdown, rich_table

    for part in parts:
        if isinstance(part, str):
            click.echo(part, nl=False)
            continue
        title, table = part  # drawn once: a box on a terminal, markdown in a log file
        if console.is_terminal:
            console.print(rich_table(table, title))
            console.print()
        else:
            console.print(f"{title}\n\n{markdown(table)}\n", markup=False)


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Results folder.")
@click.option("--format", "fmt", type=click.Choice(["rich", "markdown", "latex", "csv"]),
              default="rich", show_default=True)
@click.option("--dataset", "datasets", default="", help="Only these data sets (comma list).")
@click.option("--arch", "archs", default="", help="Only these student archs (comma list).")
@click.option("--methods", default="", help="Only these methods (comma list).")
@click.option("--checkpoint", "checkpoints", default="",
              help="Only these checkpoints (comma list: "
                   + ", ".join(runs.ROW_CHECKPOINTS) + ").")
@click.option("--time", "hours", is_flag=True, help="Add training GPU-hours per cell.")
@click.option("--ours", default=None,
              help="The method whose margin over the best other method is shown "
                   "[default: each column's best].")
@click.option("--reported", is_flag=True,
              help="Reproduced mean ± std beside the published figures of the same setting.")
@click.option("--worst", is_flag=True,
              help="Add the worst class's accuracy beside clean, PGD-20 and AutoAttack.")
@click.option("--teachers", is_flag=True,
              help="Each teacher's accuracy beside its students', measured on the same images "
                   "(AutoAttack, else PGD-20), with each method's rank correlation over them.")
@click.option("--names", multiple=True,
              help="Display names, METHOD=NAME (comma list or repeated; e.g. "
                   "peeraid=PeerAiD-ours) [default: each method's own].")
def table(out: str, fmt: str, datasets: str, archs: str, methods: str, checkpoints: str,
          hours: bool, ours: str | None, reported: bool, worst: bool, teachers: bool,
          names: tuple[str, ...]) -> None:
    """The stored results as paper tables: mean ± std over seeds (with the seed count), the
    a column's best in bold when significantly better than the runner-up (else both marked
    with a tie), the margin of the best method over the best other."""
    from bench.core.store import Store
    from bench.report.aggregate import known_methods, parse_names
    from bench.report.tables import TableOptions

    for name in _csv(checkpoints):
        if name not in runs.ROW_CHECKPOINTS:
            raise unknown("checkpoint", name, runs.ROW_CHECKPOINTS)
    opts = TableOptions(datasets=tuple(_csv(datasets)), archs=tuple(_csv(archs)),
                        methods=tuple(_csv(methods)), checkpoints=tuple(_csv(checkpoints)),
                        hours=hours, ours=ours, metrics=_with_worst() if worst else None,
                        names=parse_names(names, known_methods(out)) if names else None)
    if teachers and (reported or worst):
        raise BenchError("--teachers is a view of its own: give it without --reported/--worst")
    _print_table(Store(out), None, fmt, opts, reported, teachers)


def _with_worst() -> tuple[str, ...]:
    """Every attack column, each worst-class column right after its attack's."""
    from bench.report.aggregate import WORST

    return tuple(c for a in ALL_ATTACKS for c in (a, f"{a}_worst") if c in (a, *WORST))


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Results folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the tests as JSON.")
def compare(a: str, b: str, out: str, as_json: bool) -> None:
    """Is A better than B? Each side is METHOD or CELL_ID, with :CHECKPOINT (default best).

    Per seed and attack, McNemar's exact test on the images A and B were both measured on;
    over seeds, the mean difference with its 95 % t-interval.
    """
    import json

    from bench.core.store import Store
    from bench.report.compare import Side, render
    from bench.report.compare import compare as paired_tests

    sides = Side.parse(a), Side.parse(b)
    per_seed, over = paired_tests(Store(out).read()[0], *sides)
    if as_json:
        click.echo(json.dumps({"per_seed": per_seed.to_dict("records"),
                               "over_seeds": over.to_dict("records")}, indent=1))
        return
    click.echo(render(per_seed, over, *sides))


@cli.command("reported")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per published figure.")
@click.option("--dataset", "datasets", default="", help="Only these data sets (comma list).")
@click.option("--methods", default="", help="Only these methods (comma list).")
@click.option("--grade", "grades", default="", help="Only these grades (comma list of R, P, S, T).")
def reported_(as_json: bool, datasets: str, methods: str, grades: str) -> None:
    """The published numbers bench knows: value, grade (R / P / S / T) and what it rests on,
    pinned source, setting, metric as the source states it, and notes."""
    import json

    from bench.report.aggregate import markdown
    from bench.report.reported import GRADES, evidence, figures, frame, graded

    df = full = frame()
    absent: list[str] = []  # registered methods the table has no figure of
    for col, wanted in (("dataset", _csv(datasets)), ("method", _csv(methods)),
                        ("grade", _csv(grades))):
        # validity against the whole table, so that another filter never makes a name unknown
        valid = set(full[col]) | (set(GRADES) if col == "grade" else set())
        if col == "method":
            from bench.core import registry

            names = set(registry.names())
            absent = sorted((set(wanted) - valid) & names)
            valid |= names
        bad = sorted(set(wanted) - valid)
        if bad:
            raise unknown(f"{col} among the published figures", bad[0], valid)
        if wanted:
            df = df[df[col].isin(wanted)]
    for name in absent:  # on stderr with --json, which must stay one JSON document
        click.echo(f"{name}: no published figures in bench's table (bench/report/"
                   "reported.toml)", err=as_json)
    if as_json:  # from the figures themselves: no NaN where a value is absent
        keep = set(df.index)
        click.echo(json.dumps([f for i, f in enumerate(figures()) if i in keep], indent=1))
        return
    if df.empty:  # unless every method asked for is one without figures (said above)
        if not absent or set(_csv(methods)) - set(absent):
            click.echo("no published figure matches these filters")
        return
    for grade, why in GRADES.items():
        console.print(f"{grade}: {why}", markup=False)
    keys = ["paper", "table", "grade", "evidence", "source", "pin"]
    for (paper, table, *_), g in df.groupby(keys, sort=False):
        t = g.assign(value=[graded(v, gr) for v, gr in zip(g["value"], g["grade"],
                                                           strict=True)],
                     compared=[c or "not comparable" for c in g["column"]])
        t = t[["method", "published_as", "dataset", "arch", "teacher", "checkpoint", "metric",
               "compared", "value"]].rename(columns={"compared": "bench column"})
        f = g.iloc[0]
        click.echo(f"\n### {paper}: {table}\n\ngrade {evidence(f)}\nsource: {f['source']} "
                   f"({f['pin']})\n\n{markdown(t)}\n")
        for m in g[g["column"] == ""].drop_duplicates("metric").itertuples():
            click.echo(f"metric {m.metric}: {m.about}; not comparable: {m.unlike}")
        setting = g["published_as"] + ", " + g["arch"] + ", " + g["checkpoint"]
        rows = g.assign(setting=setting).drop_duplicates(["setting", "note"])
        one = rows["note"].nunique() == 1
        for r in rows[rows["note"] != ""].drop_duplicates("note" if one else "setting") \
                .itertuples():
            click.echo(f"note{'' if one else f' ({r.setting})'}: {r.note}")
        for r in g.assign(setting=setting)[g["figure_note"] != ""].itertuples():
            click.echo(f"note on {r.setting}, {r.metric}: {r.figure_note}")


class _PlotCommand(click.Command):
    """`bench plot --help` lists every registered figure kind (plugins' and analyses' too)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from bench.report import figures

        with formatter.section("Kinds"):
            formatter.write_dl([(n, figures.get(n).doc) for n in figures.names()])
        formatter.write("\n")


@cli.command(cls=_PlotCommand, context_settings={"ignore_unknown_options": True,
                                                 "allow_extra_args": True})
@click.argument("kind", required=False)
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Results folder (rows, runs, analyses).")
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Where the PNG and PDF files go [default: <out>/figures].")
@click.option("--names", multiple=True,
              help="Display names, METHOD=NAME (comma list or repeated; e.g. "
                   "peeraid=PeerAiD-ours) [default: each method's own].")
@click.pass_context
def plot(ctx: click.Context, kind: str | None, out: str, dest: str | None,
         names: tuple[str, ...]) -> None:
    """Draw one figure KIND from the stored results, as PNG and PDF, named for what it shows
    (kind, data set, arch, checkpoint: e.g. accuracy_cifar10_resnet18_best.png). Other
    options (--dataset, --arch, --methods, --checkpoint, --param, ...) go to the figure."""
    import inspect

    from bench.core.suggest import unknown
    from bench.report import figures
    from bench.report.aggregate import known_methods, parse_names

    if kind is None:
        raise BenchError("bench plot needs a KIND (valid: " + ", ".join(figures.names()) + ")")
    fig = figures.get(kind)
    accepted = [p for p in inspect.signature(fig.fn).parameters][2:]
    options: dict[str, Any] = {}
    if names:
        if "names" not in accepted:
            raise BenchError(f"bench plot {kind} takes no --names")
        options["names"] = parse_names(names, known_methods(out))
        accepted.remove("names")
    args = list(ctx.args)
    while args:
        flag = args.pop(0)
        name, eq, value = flag.removeprefix("--").partition("=")
        name = name.replace("-", "_")
        if not flag.startswith("--") or name not in accepted:
            raise unknown(f"option of bench plot {kind}", flag, [f"--{a.replace('_', '-')}"
                                                               for a in accepted])
        if not eq:
            if not args:
                raise BenchError(f"{flag} needs a value")
            value = args.pop(0)
        options[name] = value
    target = Path(dest) if dest else Path(out) / "figures"
    paths = fig.fn(Path(out), _writable(target), **options)
    if not paths:
        raise BenchError(f"nothing to draw for {kind} from {out}")
    for p in paths:
        click.echo(str(p))


# --- analyses: measurements on stored runs (bench.train.runs, bench.eval.analysis) ----------

_OUT = click.option("--out", type=click.Path(file_okay=False), default="results",
                    show_default=True, help="Results folder (rows, runs, analyses).")
_DEVICE = click.option("--device", default="auto", show_default=True,
                       help="auto, cpu, cuda or cuda:N.")
_DATA_ROOT = click.option("--data-root", type=click.Path(file_okay=False), default=None,
                          help="Folder holding torchvision data sets.")


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _test_set(config: dict[str, Any], data_root: str | None):
    return datasets.as_tensors(datasets.load(config["dataset"], "test", root=data_root))


def _json_target(path: str | None) -> None:
    """A `--json FILE`'s folder, created and probed before any work: a path under a file or
    in a read-only folder fails in one line, not after the attacks."""
    if path is not None:
        _writable(Path(path).parent)


def _write_json(path: str | None, obj: Any) -> None:
    import json

    if path is not None:
        from bench.core.files import atomic_write_bytes

        try:
            atomic_write_bytes(Path(path), json.dumps(obj, indent=1).encode())
        except OSError as exc:
            raise BenchError(f"cannot write {path} ({exc.strerror})") from None


def _models_help(fn: Callable[..., None]) -> Callable[..., None]:
    """Fill `{models}` in a command's help: the MODEL forms, with the checkpoint names the
    code accepts (runs.CHECKPOINTS, one list for both)."""
    fn.__doc__ = fn.__doc__.replace("{models}", (
        "MODEL is RUN or RUN:CHECKPOINT. RUN is a cell id or a unique prefix of one (the "
        "folders under OUT/runs/); alone, it means the checkpoint its selection rule reports "
        "first (best under the common protocol). CHECKPOINT is one of "
        + ", ".join(runs.CHECKPOINTS) + "."))
    return fn


def _reported(config: dict[str, Any]) -> str:
    """The checkpoint a bare RUN names: the first its selection rule reports (best under the
    common protocol; last for a rule without selection, swa_last for SAAD's)."""
    return selection.rule(config["params"].get("selection")).reported[0]


def _model(out: str, spec: str) -> tuple[runs.Run, str]:
    """MODEL (RUN or RUN:CHECKPOINT) -> (its run, the checkpoint), or a one-line error."""
    if ":" not in spec:
        r = runs.find(Path(out), spec)
        return r, _reported(r.config)
    run, ckpt = runs.parse_model(spec)
    return runs.find(Path(out), run), ckpt


def _settings(config: dict[str, Any]) -> str:
    """What makes a stored run's cell: method, preset, data set, arch, seed, and the
    hyper-parameters set apart from its preset's (a sweep's cells differ only there)."""
    c = config
    text = f"{c['method']} {c['preset']} on {c['dataset']} / {c['arch']}, seed {c['seed']}"
    own = ", ".join(f"{k}={v}" for k, v in _set_params(c).items())
    return f"{text}; {own}" if own else text


def _set_params(config: dict[str, Any]) -> dict[str, Any]:
    """The stored hyper-parameters that differ from the preset's own at the run's length
    (landmarks scale with epochs); none when the method or data set is no longer known."""
    import contextlib
    import json

    stored = config.get("params", {})
    try:
        cls = registry.get(config["method"])
        kw = {"arch": config["arch"], "budget": datasets.spec(config["dataset"]).budget}
        base = preset = cls.resolve(config["preset"], config["dataset"], **kw)
    except (BenchError, KeyError):
        return {}
    resized = stored.get("epochs") != preset.epochs
    if resized:  # a landmark that cannot scale (one set with --set): the unscaled preset
        with contextlib.suppress(BenchError):
            base = cls.resolve(config["preset"], config["dataset"], epochs=stored["epochs"],
                               **kw)
    own = json.loads(json.dumps(dataclasses.asdict(base), default=str))  # as config.json
    diff = {k: v for k, v in stored.items() if own.get(k) != v}
    return {"epochs": stored["epochs"], **diff} if resized else diff


@cli.command()
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per epoch.")
@_OUT
def history(run: str, as_json: bool, out: str) -> None:
    """A run's per-epoch log: LR, loss, selection and tutor accuracies (%), seconds; the
    title names the cell (method, preset, data set, arch, seed, hyper-parameters set).

    RUN is a cell id or a unique prefix of one (the folders under OUT/runs/).
    """
    import json

    from rich.table import Table
    from rich.text import Text

    r = runs.find(Path(out), run)
    timing = {t["epoch"]: t for t in r.state().get("timing", [])}  # wall, selection seconds
    hist = [{**h, **timing.get(h["epoch"], {})} for h in r.history()]
    if as_json:
        click.echo(json.dumps([{**h, "epoch": h["epoch"] + 1} for h in hist], indent=1))
        return
    secs = ("seconds", "selection_seconds", "wall_seconds")  # the last two: --json, title
    cols = [c for c in dict.fromkeys(k for h in hist for k in h) if c not in ("epoch", *secs)]
    cols = [c for c in cols if isinstance(next(h[c] for h in hist if c in h), int | float)]
    cols.append("seconds")
    wall = [h for h in hist if "wall_seconds" in h]
    took = (f"; selection {sum(h['selection_seconds'] for h in wall):.1f} s of "
            f"{sum(h['wall_seconds'] for h in wall):.1f} s wall" if wall else "")
    t = Table(title=Text(f"{r.id} ({_settings(r.config)}): {len(hist)} epoch(s); accuracies "
                         f"in % (selection split, PGD-10){took}"))
    for c in ("epoch", *cols):
        t.add_column(c.replace("_", " "), justify="right")  # headers wrap at the spaces
    for h in hist:
        cells = []
        for c in cols:
            v = h.get(c)
            cells.append("–" if v is None else f"{v:.4g}" if c in ("lr", "loss")
                         else f"{v:.1f}" if c == "seconds" else _pct(v))
        t.add_row(str(h["epoch"] + 1), *cells)
    console.print(t)


@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--attack", type=click.Choice(["pgd10", "pgd20", "fgsm"]), default="pgd20",
              show_default=True, help="The attack crafted against each source model.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the rows {source, target, attack, accuracy, n} to FILE.")
@_OUT
@_DEVICE
@_DATA_ROOT
@_models_help
def transfer(models: tuple[str, ...], attack: str, json_file: str | None, out: str,
             device: str, data_root: str | None) -> None:
    """Transfer matrix: accuracy (%) of every MODEL (columns) on the attack crafted against
    every MODEL (rows), on the test set at the data set's threat model.

    {models} The diagonal is each model's own white-box accuracy; the matrix is also stored
    under OUT/analyses/ for `bench plot transfer`.
    """
    from rich.table import Table

    from bench.eval import analysis
    from bench.eval.evaluate import Threat

    picked = [_model(out, m) for m in models]
    sets = {r.config["dataset"] for r, _ in picked}
    if len(sets) > 1:
        raise BenchError(f"models of different data sets cannot attack each other: "
                         f"{', '.join(sorted(sets))}")
    _writable(Path(out) / "analyses")  # where it stores, before any attack
    _json_target(json_file)
    dev = _device(device)
    nets = {f"{r.id}:{ck}": (runs.load(Path(out), r, ck), int(r.config["seed"]))
            for r, ck in picked}
    x, y = _test_set(picked[0][0].config, data_root)
    eps = datasets.spec(sets.pop()).eps
    rows = analysis.transfer_matrix(nets, x, y, attack, Threat(eps), device=dev)
    labels = {f"{r.id}:{ck}": f"{r.label}:{ck}" for r, ck in picked}
    if len(set(labels.values())) < len(labels):
        labels = {k: k for k in labels}
    stored = analysis.save_transfer(Path(out), rows, eps, labels)
    _write_json(json_file, rows)
    t = Table(title=f"{attack} transfer (eps {eps:.4g}, n={len(y)}): accuracy (%) of the "
                    f"column model on examples crafted against the row model")
    t.add_column("source \\ target")
    for k in nets:
        t.add_column(labels[k], justify="right")
    for src in nets:
        t.add_row(labels[src], *(_pct(r["accuracy"]) for r in rows if r["source"] == src))
    console.print(t)
    console.print(f"stored {stored}", markup=False)


@cli.command("eval")
@click.argument("model")
@click.option("--eps", "eps_text", required=True,
              help="Comma-separated radii, as fractions or k/255 (e.g. 0,2/255,8/255).")
@click.option("--steps", "steps_text", default="1,5,10,20", show_default=True,
              help="Comma-separated PGD step counts (step size eps/4).")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the points {eps, steps, attack, accuracy, n} to FILE.")
@_OUT
@_DEVICE
@_DATA_ROOT
@_models_help
def eval_(model: str, eps_text: str, steps_text: str, json_file: str | None, out: str,
          device: str, data_root: str | None) -> None:
    """Attack-strength curves of a stored model: accuracy (%) under PGD-k at every eps and k,
    and FGSM at every eps; stored beside the run for `bench plot strength`.

    {models} Signs of gradient masking (PGD not improving with steps, FGSM beating PGD,
    AutoAttack's own flags) are printed.
    """
    from rich.table import Table

    from bench.eval import analysis

    eps_list, steps_list = analysis.parse_eps(eps_text), analysis.parse_steps(steps_text)
    r, ck = _model(out, model)
    _writable(r.dir)  # strength.json goes beside the run: checked before any attack
    _json_target(json_file)
    net = runs.load(Path(out), r, ck)
    x, y = _test_set(r.config, data_root)
    points = analysis.strength(net, x, y, eps_list, steps_list, seed=int(r.config["seed"]),
                               device=_device(device))
    stored, signs = analysis.save_strength(r.dir, ck, points, _aa_flags(Path(out), r.id, ck))
    _write_json(json_file, points)
    t = Table(title=f"{r.id}:{ck}: accuracy (%) by radius and attack (n={len(y)})")
    shown = _eps_labels(eps_text)
    attacks = ["fgsm", *(f"pgd{k}" for k in steps_list)]
    for c in ("eps", *attacks):
        t.add_column(c, justify="right")
    for e in eps_list:
        by = {("fgsm" if p["attack"] == "fgsm" else f"pgd{p['steps']}"): p["accuracy"]
              for p in points if p["eps"] == e}
        t.add_row(shown[e], *(_pct(by.get(a)) for a in attacks))
    console.print(t)
    for line in signs:
        console.print(f"gradient-masking sign: {line}", markup=False)
    if not signs:
        console.print("no sign of gradient masking in this model's stored curves", markup=False)
    console.print(f"stored {stored}", markup=False)


def _eps_labels(text: str) -> dict[float, str]:
    """Each radius as `--eps` gave it, a fraction with its decimal: 0.2 stays 0.2 though it
    equals 51/255, and 8/255 reads 8/255 (0.0314); the first spelling of a value wins."""
    spelled = {parse_number(p): p for p in reversed(_csv(text))}
    return {v: f"{p} ({v:.4f})" if "/" in p else p for v, p in spelled.items()}


def _aa_flags(out: Path, cell_id: str, ckpt: str) -> list[str]:
    """AutoAttack's own flags from the run's stored row for `ckpt`, if it ran."""
    from bench.core.store import Store

    store = Store(out)
    if not store.has(f"{cell_id}--{ckpt}"):
        return []
    import json

    row = json.loads(store.path(f"{cell_id}--{ckpt}").read_text())
    return list(row.get("aa_flags") or [])


@cli.command("list")
def list_() -> None:
    """Methods (with their presets and what each changes), data sets and architectures."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title="methods")
    for col in ("name", "trains with", "presets", "description"):
        t.add_column(col)
    for name in registry.names():
        cls = registry.get(name)
        extra = ", ".join(k for k, needed in (
            ("trained teacher" if cls.trains_teacher else "teacher", cls.needs_teacher),
            ("clean teacher", cls.needs_clean_teacher), ("peer", cls.needs_peer)) if needed)
        presets = Text("\n".join(f"{p}: {_preset_doc(cls, p)}" for p in cls.presets))
        t.add_row(name, extra, presets, cls.description())
    console.print(t)
    for name, why in registry.broken().items():
        err_console.print(f"warning: plugin {name!r} {why}")
    d = Table(title="datasets")
    for col in ("name", "classes", "shape", "default arch", "description"):
        d.add_column(col)
    for name in datasets.dataset_names():
        s = datasets.spec(name)
        d.add_row(name, str(s.num_classes), f"{s.channels}x{s.image_size}x{s.image_size}",
                  s.default_arch, s.doc)
    console.print(d)
    console.print("archs: " + ", ".join(model_names()))


def _preset_doc(cls: type[Distiller], preset: str) -> str:
    """What a preset is. Only the built-in methods' faithful presets were checked against
    the authors' code: a plugin's preset is its own, whatever wording it inherits."""
    doc = cls.presets[preset].doc
    if cls.__module__.startswith("bench.methods."):
        return doc
    own = "" if doc in (FAITHFUL.doc, PAPER.doc) else f": {doc}"
    return f"the plugin's own preset{own} (not checked by bench against any authors' code)"


@cli.command("show-preset")
@click.argument("method")
@click.option("--dataset", default="cifar10", show_default=True)
@click.option("--preset", default="faithful", show_default=True)
@click.option("--arch", default=None)
@click.option("--epochs", type=int, default=None,
              help="A run of this length: the preset's epoch landmarks scale with it.")
def show_preset(method: str, dataset: str, preset: str, arch: str | None,
                epochs: int | None) -> None:
    """Print a method's fully resolved hyper-parameters for a data set and preset, its
    checkpoint rule, and the teachers it uses: each one's id and architecture, and for a
    teacher bench trains, its method, preset and resolved hyper-parameters too."""
    from rich.markup import escape

    cell = Cell(method, dataset, arch, preset=preset)
    base = resolve(cell)
    over = () if epochs is None else (("epochs", epochs),)
    r = resolve(dataclasses.replace(cell, overrides=over)) if over else base
    console.print(f"[bold]{method}[/] preset {preset!r} on {dataset} ({r.arch}): "
                  f"{escape(_preset_doc(r.cls, preset))}")
    scaled = [f"{k} {getattr(base.params, k)!r} -> {getattr(r.params, k)!r}"
              for k in landmarks(type(r.params)) if getattr(base.params, k) != getattr(r.params, k)]
    if scaled:
        console.print(f"  scaled from {base.params.epochs} to {r.params.epochs} epochs: "
                      + ", ".join(scaled), markup=False, soft_wrap=True)
    for k, v in dataclasses.asdict(r.params).items():
        console.print(f"  {k} = {v!r}", markup=False)
    console.print(f"  checkpoints: {selection.rule(r.params.selection).doc}", markup=False)
    for kind, needed in (("teacher", r.cls.needs_teacher),
                         ("clean_teacher", r.cls.needs_clean_teacher)):
        if needed:
            _show_teacher(r, kind)


def _show_teacher(r: Resolved, kind: str) -> None:
    """A teacher's id and architecture; for one bench trains, its recipe: method, preset and
    every resolved hyper-parameter (a RobustBench model is its published weights)."""
    arch = r.config[f"{kind}_arch"]
    norm = r.config["teacher_normalize"] if kind == "teacher" else None
    console.print(f"  {kind} = {r.config[kind]}" + (f" ({arch})" if arch else "")
                  + (f", normalising with {norm} mean/std" if norm else ""), markup=False)
    cell = r.teacher_cell if kind == "teacher" else r.clean_teacher_cell
    if cell is None:
        return
    t = resolve(cell)
    console.print(f"    trained by {cell.method}, preset {cell.preset!r} ({t.arch}): "
                  f"{_preset_doc(t.cls, cell.preset)}", markup=False)
    for k, v in dataclasses.asdict(t.params).items():
        console.print(f"    {k} = {v!r}", markup=False)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                               "help_option_names": []})
@click.pass_context
def perf(ctx: click.Context) -> None:
    """Training throughput of methods/presets side by side (see `bench perf --help`)."""
    args = list(ctx.args)
    if args[:2] == ["--suite", "gpu"] or "--suite=gpu" in args[:1]:
        from bench.perf import gpucheck  # the GPU check: its own options (--device, --tiny, ...)

        gpucheck.main(args[1 if "=" in args[0] else 2:])
        return
    from bench.perf import throughput as perf_mod

    perf_mod.main(args)


def main(argv: list[str] | None = None) -> None:
    """Entry point: click without its tracebacks; every failure is one line on stderr."""
    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=args, prog_name="bench", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        err_console.print(f"error: {exc.format_message()}".splitlines()[0], markup=False)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        for line in INTERRUPTED if args[:1] == ["run"] else ("interrupted",):
            err_console.print(line, markup=False)
        sys.exit(130)
    except BenchError as exc:
        err_console.print(f"error: {exc}".splitlines()[0], markup=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
