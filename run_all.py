"""Regenerate the paper-style report from the stored results, training only what is missing.

    python run_all.py                      # the default grid on the embedded digits set
    python run_all.py --no-train           # only rebuild the report from <out>/rows
    python run_all.py --methods standard,pgdat --epochs 3 --aa-samples 20 --out /tmp/ra
    python run_all.py --config experiments/peeraid_table1_cifar10.toml --data-root /data

Cells come from bench.train.experiment, as for `bench run`: the same options (or the same
experiment file) give the same cells, and stored cells are reused.

The report (<out>/report by default) covers every row in the store: results.md (tables per
data set / architecture, image counts, how measured), results.csv (every row: accuracies in
percent, nested fields as JSON), results.tex (the main table as a LaTeX tabular) and the
figures as PNG and PDF. `--names peeraid=PeerAiD-ours` renames a method in all of them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from bench import BenchError
from bench.cli import INTERRUPTED
from bench.options import GridOptions, GroupedCommand, RunControl, file_keys, options_of
from bench.train import experiment

DEFAULT_METHODS = "standard,pgdat,trades,peeraid,rslad,ard,adaad,iad"
PLOT_KINDS = ("accuracy", "robustness", "training")


def say(msg: str = "", err: bool = False) -> None:
    click.echo(msg, err=err)


# --- training ---------------------------------------------------------------------------

def train_grid(cells: list, out: Path, device: str, ev, no_train: bool, so=None,
               grid: GridOptions | None = None) -> list[str]:
    """Train and evaluate the cells whose rows are not stored; returns one line per failure.
    With sweep options `so`, the missing cells run as submitit jobs (Slurm or local); `grid`
    gives the runner's options (data path, memory format, compile), defaults without it."""
    from bench.core.store import Store
    from bench.train.cells import resolve
    from bench.train.pipeline import missing_package, reusable, run_cell, stored

    store = Store(out)
    resolved = [resolve(c) for c in cells]  # every config error before any training
    grid = grid or GridOptions()
    todo = [r for r in resolved if not reusable(r, store, grid.keep_stale)]
    todo_ids = {r.id for r in todo}
    for r in resolved:
        state = ("reuse" if r.id not in todo_ids else "stale" if stored(r, store)
                 else "MISSING" if no_train else "train")
        say(f"  {state:7s} {r.cell.method:8s} {r.cell.dataset}/{r.arch} seed {r.cell.seed}  "
            f"({r.id})")
    say(f"{len(resolved) - len(todo)} cell(s) reused from {out}, "
        + (f"{len(todo)} missing (--no-train: not trained)" if no_train
           else f"{len(todo)} to train"))
    if no_train or not todo:
        return []
    executor = grid.executor if so is not None else "none"
    if (missing := missing_package(todo, ev, executor)) is not None:
        raise BenchError(missing)  # an optional package the cells need: before any training
    opts = grid.run_options(out, device, log=say)
    if so is not None:
        from bench.train.sweep import sweep

        try:
            sweep([r.cell for r in todo], opts, ev, so, log=say)
        except BenchError as exc:  # a failed job names its log; the report still follows
            return [str(exc)]
        return [f"{r.id}: no rows after its job" for r in todo if not stored(r, store)]
    failures = []
    for i, r in enumerate(todo, 1):
        say(f"[{i}/{len(todo)}] training {r.cell.method} seed {r.cell.seed} ({r.id})")
        t0 = time.perf_counter()
        try:
            run_cell(r.cell, opts, ev, store)
        except BenchError as exc:  # one broken cell must not lose the others' report
            failures.append(f"{r.id}: {exc}")
            say(f"  failed: {exc}", err=True)
            continue
        say(f"  done in {time.perf_counter() - t0:.0f}s")
    return failures


# --- report -----------------------------------------------------------------------------

def write_report(out: Path, report_dir: Path, names: dict[str, str] | None = None,
                 stopped: list[str] | None = None) -> list[Path]:
    """Every table and figure of the report from the rows stored under `out`; `names`
    overrides methods' display names (method id -> name); `stopped`: the grid's cells without
    rows (stopped, or not trained), one line each, said in the report."""
    import pandas as pd

    from bench.core.store import Store
    from bench.report import html, plots
    from bench.report.aggregate import (
        BOLD_NOTE,
        aggregate,
        current,
        flat,
        how_measured,
        labels,
        latex,
        margins,
        markdown,
        metrics_of,
        paper_table,
        sections,
    )
    from bench.report.reported import (
        GRADES_NOTE,
        compare,
        comparison_table,
        not_comparable,
        not_comparable_table,
    )

    rows, problems = Store(out).read()
    for p in problems:
        say(f"warning: {out / 'rows' / p}", err=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    written: list[Path] = []

    def put(name: str, text: str) -> None:
        path = report_dir / name
        path.write_text(text)
        written.append(path)

    if df.empty:
        put("results.csv", "")
        put("results.md", f"# Results\n\nNo result rows in `{out / 'rows'}`.\n"
            + _problems_md(problems))
        put("results.tex", "% no results\n")
        put("index.html", html.page("Results", f"No result rows in {out / 'rows'}.", [], ""))
        return written

    df, old = current(df)  # a cell re-run under a new id replaces the old one, not averaged
    table = flat(pd.concat([df.assign(in_report=True), old.assign(in_report=False)])
                 .sort_index().drop(columns=["setup"]), names)
    put("results.csv", table.to_csv(index=False))
    from bench.report import figures as kinds

    for kind in {*PLOT_KINDS, *kinds.names()}:  # figures no longer drawn must not linger
        for stale in report_dir.glob(f"{kind}_*"):  # (transfer-*: their former names)
            if stale.suffix in (".png", ".pdf", ".txt"):
                stale.unlink()
    for stale in [*report_dir.glob("transfer-*.png"), *report_dir.glob("transfer-*.pdf")]:
        stale.unlink()
    figures = {}  # per section: the accuracy and robustness figures of its main checkpoint
    for key, sec in sections(df):  # (best where it has it), and its training curves
        figures[key] = {
            "accuracy": plots.accuracy_bars(sec, report_dir, None, names),
            "robustness": plots.robustness_scatter(sec, report_dir, None, names),
            "training": plots.training_curves(sec, out / "runs", report_dir, names),
        }
        written += [p for ps in figures[key].values() for p in ps]
    analyses = _analysis_figures(out, report_dir, names)
    written += [p for _, ps in analyses for p in ps]
    _, missing_hist = plots.histories(df, out / "runs")

    intro = (f"Generated {time.strftime('%Y-%m-%d %H:%M')} by run_all.py from the "
             f"{len(df) + len(old)} rows in {out / 'rows'}. Accuracy (%) under attack; mean ± "
             f"sample std over seeds. {BOLD_NOTE}")
    md = ["# Results: adversarial distillation benchmark\n",
          intro.replace(str(out / "rows"), f"`{out / 'rows'}`")
          + " Every row, with its full configuration, is in `results.csv`; `index.html` is "
            "the same report as one self-contained, sortable page.\n"]
    pages = []
    if len(old):
        md.append(f"{len(old)} row(s) of {old['cell_id'].nunique()} older cell(s) are left "
                  f"out: a newer cell has the same method, configuration and seed (typically "
                  f"retrained after a code change gave it a new id); `in_report` is False for "
                  f"them in `results.csv`: " + ", ".join(
                      f"`{c}`" for c in sorted(old["cell_id"].unique())) + ".\n")
    tex = ["% Main table (checkpoint 'best'): accuracy (%) under attack, mean $\\pm$ std "
           "over seeds.", "% Generated by run_all.py; needs \\usepackage{booktabs}.", ""]
    for (dataset, arch), sec in sections(df):
        agg = aggregate(sec, names=names)
        md.append(f"## {dataset} / {arch}\n")
        md.append(markdown(paper_table(agg, bold=True)) + "\n")
        how = how_measured(sec)
        md.append(how + "\n")
        notes = _notes(sec, agg, missing_hist)
        if notes:
            md.append("Notes:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
        pngs = []
        for kind, what in (("accuracy", "Accuracy under each attack"),
                           ("robustness", "Clean vs robust accuracy"),
                           ("training", "Training curves")):
            for p in figures[(dataset, arch)][kind]:
                if p.suffix != ".png":
                    continue
                ck = plots.pick_checkpoint(agg, None) if kind != "training" else ""
                alt = f"{what}, {dataset} / {arch}" + (f", checkpoint '{ck}'" if ck else "")
                md.append(f"![{alt}]({p.name})\n")
                pngs.append((p, alt))
        metrics = metrics_of(agg)
        pages.append({"title": f"{dataset} / {arch}", "how": how,
                      "notes": notes, "figures": pngs,
                      "table": html.section_table(agg, sec.assign(label=labels(sec, names)),
                                                  metrics, margins(agg, metrics))})
        best = agg[agg["checkpoint"] == "best"]
        main = best if not best.empty else agg
        ckpt = "best" if not best.empty else "all checkpoints"
        tex.append(latex(main, f"{dataset} / {arch}, checkpoint: {ckpt}"))
        tex.append("")
    appendix = _teachers_section(df, out, md)
    cmp = compare(df)
    md.append("## Reproduced vs published\n")
    md.append("Published numbers come from `bench/report/reported.toml` (`bench reported` lists "
              f"them). {GRADES_NOTE} Difference = reproduced − published (points); `!` marks "
              "one larger than max(1 pp, 2 std over seeds).\n")
    if cmp.empty:
        md.append("No published figure matches the stored settings (data set, student, "
                  "teacher where known, checkpoint).\n")
    for (dataset, arch), g in cmp.groupby(["dataset", "arch"], sort=True):
        md.append(f"### {dataset} / {arch}\n\n{markdown(comparison_table(g))}\n")
    apart = not_comparable(df)
    if not apart.empty:
        md.append("### Published figures of these settings that are not comparable\n\n"
                  + markdown(not_comparable_table(apart)) + "\n")
    if analyses:
        md.append("## Analyses\n")
        appendix += '<section id="analyses"><h2>Analyses</h2>'
        for doc, ps in analyses:
            md.append(f"{doc[0].upper()}{doc[1:]}.\n")
            appendix += f'<p class="note">{html.inline_markdown(doc)}</p>'
            for p in ps:
                if p.suffix == ".png":
                    md.append(f"![{doc}]({p.name})\n")
                    appendix += html.image(p, doc)
                elif p.suffix == ".txt":  # what the figure's reader must know (masking signs)
                    md.append(p.read_text())
                    appendix += f'<p class="note">{html.esc(p.read_text())}</p>'
        appendix += "</section>"
    if stopped:
        note = ("These cells of the grid have no rows here; each line says why (a rerun "
                "resumes a stopped one from its last good checkpoint):")
        md.append("## Cells without rows\n\n" + note + "\n\n"
                  + "\n".join(f"- {line}" for line in stopped) + "\n")
        appendix += ('<section id="stopped"><h2>Cells without rows</h2><p class="note">'
                     + html.esc(note) + "</p><ul>"
                     + "".join(f"<li>{html.esc(line)}</li>" for line in stopped)
                     + "</ul></section>")
    md.append(_problems_md(problems))
    put("results.md", "\n".join(md))
    put("results.tex", "\n".join(tex))
    reported = html.reported_table(cmp) if not cmp.empty else (
        "<p>No published figure matches the stored settings (data set, student, teacher "
        "where known, checkpoint).</p>")
    if not apart.empty:
        reported += html.not_comparable_table(apart)
    put("index.html", html.page("Results: adversarial distillation benchmark", intro, pages,
                                reported, appendix))
    return written


def _without_rows(cells: list, out: Path, failures: list[str]) -> list[str]:
    """A line for each cell of the grid with no rows stored that did not fail this time (not
    trained here, or stopped in an earlier run): the report says it is missing."""
    from bench.core.store import Store
    from bench.train.cells import resolve
    from bench.train.pipeline import stored

    store, said = Store(out), {f.split(":", 1)[0] for f in failures}
    return [f"{r.id}: no rows (not trained by this run; `bench history {r.id}` shows how far "
            "an earlier run got)" for r in map(resolve, cells)
            if r.id not in said and not stored(r, store)]


def _teachers_section(df, out: Path, md: list[str]) -> str:
    """Where a grid taught a method with several teachers: each teacher's accuracy beside its
    students' (appended to `md`), and the same as HTML, returned."""
    from bench.report import html
    from bench.report.aggregate import markdown
    from bench.report.teachers import TEACHERS_NOTE, beside, compared, tables

    if not compared(beside(df, out)[0]):
        return ""
    md.append(f"## Teacher beside student\n\n{TEACHERS_NOTE}\n")
    page = f'<section id="teachers"><h2>Teacher beside student</h2><p class="note">' \
           f"{html.esc(TEACHERS_NOTE)}</p>"
    for title, t in tables(df, out):
        md.append(f"### {title}\n\n{markdown(t)}\n")
        page += f"<h3>{html.esc(title)}</h3>" + html.text_table(t)
    return page + "</section>"


def _analysis_figures(out: Path, report_dir: Path, names: dict[str, str] | None = None
                      ) -> list[tuple[str, list[Path]]]:
    """Every other registered figure kind that draws from the store without options (the
    analyses: tutor accuracy, transfer, attack strength, ...): (its description, files)."""
    import inspect

    from bench.report import figures

    drawn = []
    for name in figures.names():
        fig = figures.get(name)
        params = list(inspect.signature(fig.fn).parameters.values())[2:]
        if name in PLOT_KINDS or any(p.default is p.empty for p in params):
            continue
        given = {"names": names} if names and any(p.name == "names" for p in params) else {}
        try:
            paths = fig.fn(out, report_dir, **given)
        except BenchError:  # nothing of that kind stored (or it needs an option)
            continue
        if paths:
            drawn.append((fig.doc, paths))
    return drawn


def _notes(sec, agg, missing_hist: list[str]) -> list[str]:
    """What a reader must know about a section: mixed configs, AA flags, missing histories."""
    notes = []
    for _, r in agg[agg["duplicates"] > 0].iterrows():
        notes.append(f"{r['label']} / {r['checkpoint']}: {r['duplicates']} extra row(s) for "
                     f"the same seed are averaged into this line (rows without a recorded "
                     f"configuration cannot be told apart).")
    if "aa_flags" in sec:
        for _, r in sec.iterrows():
            flags = r["aa_flags"]
            if isinstance(flags, list) and flags:
                notes.append(f"AutoAttack flags for {r['method']} seed {r['seed']} "
                             f"{r['checkpoint']}: " + "; ".join(map(str, flags)))
    gone = sorted(set(missing_hist) & set(sec["cell_id"]))
    if gone:
        notes.append("no training history (missing checkpoint) for: "
                     + ", ".join(f"`{g}`" for g in gone))
    return notes


def _problems_md(problems: list[str]) -> str:
    if not problems:
        return ""
    return ("\n## Skipped files\n\nThese files in `rows/` are not result rows and were "
            "ignored:\n\n" + "\n".join(f"- {p}" for p in problems) + "\n")


# --- command line -------------------------------------------------------------------------

@click.command(cls=GroupedCommand, context_settings={"help_option_names": ["-h", "--help"]})
@options_of(GridOptions, methods=DEFAULT_METHODS)
@click.option("--report-dir", type=click.Path(file_okay=False), default=None,
              help="Where the report goes [default: <out>/report].")
@click.option("--no-train", is_flag=True, help="Train nothing: only rebuild the report.")
@click.option("--names", "names", multiple=True,
              help="Display names in the report's tables and figures, METHOD=NAME (comma list "
                   "or repeated; e.g. peeraid=PeerAiD-ours) [default: each method's own].")
# `bench run`'s own options (how its cells resume) may stand in a file: read past here.
@experiment.config_option(lambda: file_keys(RunControl))
def cli(grid: GridOptions, report_dir: str | None, no_train: bool,
        names: tuple[str, ...]) -> None:
    """Train what is missing of the grid, then write every table and figure of the report."""
    from bench.report.aggregate import known_methods, parse_names

    grid.check()
    out_dir = Path(grid.out)
    renames = parse_names(names, known_methods(out_dir if out_dir.is_dir() else None)) \
        if names else {}
    device = grid.run_device()
    cells = grid.cells(device)  # precision auto as bench run decides it: the same cells
    if not no_train:
        grid.use_threads(cells, device)
    out_path = experiment.writable(Path(grid.out))
    # where the report goes, before any training (not a traceback after hours of it)
    report = experiment.writable(Path(report_dir) if report_dir else out_path / "report")
    say(f"grid: {len(cells)} cell(s) on {grid.datasets}, results in {out_path}")
    failures = train_grid(cells, out_path, device, grid.eval_options(), no_train,
                          grid.sweep_options(), grid)
    written = write_report(out_path, report, renames or None,
                           failures + _without_rows(cells, out_path, failures))
    say(f"report in {report}:")
    for p in written:
        say(f"  {p.name}")
    if failures:
        raise BenchError(f"{len(failures)} cell(s) failed: " + " | ".join(failures))


def main(argv: list[str] | None = None) -> int:
    """Run the script; returns the exit status (every failure is one line on stderr)."""
    try:
        cli.main(args=argv, prog_name="run_all.py", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        say(f"error: {exc.format_message()}".splitlines()[0], err=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        for line in INTERRUPTED:
            say(line, err=True)
        return 130
    except BenchError as exc:
        say(f"error: {exc}".splitlines()[0], err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
