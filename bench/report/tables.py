"""`bench table`: the stored rows as paper-style tables, one per (data set, arch), in rich,
markdown, LaTeX or CSV; filters; the reported-vs-reproduced view.

The metric columns are a list (`TableOptions.metrics`): a new kind of column (worst class,
tutor accuracy) is one more entry, not a new table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench import BenchError
from bench.core.suggest import unknown

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("rich", "markdown", "latex", "csv")


@dataclass(frozen=True)
class TableOptions:
    datasets: tuple[str, ...] = ()  # empty: all
    archs: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    checkpoints: tuple[str, ...] = ()
    hours: bool = False  # a training-time column (GPU-hours per cell)
    ours: str | None = None  # the method whose margin over the best other is shown
    metrics: tuple[str, ...] | None = None  # None: every attack the rows measured
    names: Mapping[str, str] | None = None  # display-name overrides, method id -> name


def select(df: pd.DataFrame, opts: TableOptions) -> pd.DataFrame:
    """The rows the filters keep; a filter value that names nothing stored is an error."""
    for col, wanted in (("dataset", opts.datasets), ("arch", opts.archs),
                        ("method", opts.methods), ("checkpoint", opts.checkpoints)):
        have = set(df[col]) if col in df else set()
        for w in wanted:
            if w not in have:
                raise unknown(f"{col} in the store", w, have)
        if wanted:
            df = df[df[col].isin(wanted)]
    return df


def resolve_ours(df: pd.DataFrame, opts: TableOptions) -> str | None:
    """The method id `--ours` names (its id, or its display name), or a one-line error when
    the rows the filters keep hold none of it."""
    from bench.report.aggregate import display_name

    if opts.ours is None:
        return None
    have = sorted(set(df["method"])) if "method" in df else []
    if opts.ours in have:
        return opts.ours
    by_name = [m for m in have if display_name(m, opts.names).casefold() == opts.ours.casefold()]
    if len(by_name) == 1:
        return by_name[0]
    raise BenchError(f"--ours {opts.ours}: no stored rows of that method match the filters "
                     f"(methods with rows: {', '.join(have) or 'none'})")


def numeric(agg: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The CSV form: one line per table line, mean / sample std / seed count per metric."""
    import json

    keep = ["dataset", "arch", "method", "name", "preset", "label", "epochs", "checkpoint",
            "seeds", "seed_list", "train_seconds"]
    for m in metrics:
        keep += [m, f"{m}_std", f"{m}_count", f"n_{m}"]
    out = agg[[c for c in keep if c in agg]]
    if "seed_list" in out:
        out = out.assign(seed_list=out["seed_list"].map(json.dumps))
    return out


def sections(df: pd.DataFrame, opts: TableOptions):
    """((dataset, arch), aggregated lines, metrics) per section, after the filters."""
    from bench.report.aggregate import aggregate, metrics_of
    from bench.report.aggregate import sections as by_section

    for key, g in by_section(select(df, opts)):
        agg = aggregate(g, names=opts.names)
        metrics = [m for m in (opts.metrics or metrics_of(agg)) if m in agg]
        yield key, agg, metrics


def render(df: pd.DataFrame, fmt: str, opts: TableOptions = TableOptions()) -> list:
    """Every section in `fmt`: strings (markdown, LaTeX, CSV; rich's notes), and for rich
    (title, table of display strings) pairs that the caller draws once: as a rich table on
    a terminal, as markdown in a file."""
    from bench.report.aggregate import BOLD_NOTE, latex, markdown, paper_table

    if fmt not in FORMATS:
        raise unknown("table format", fmt, FORMATS)
    ours = resolve_ours(select(df, opts), opts)
    out: list = []
    csv_parts = []
    for (dataset, arch), agg, metrics in sections(df, opts):
        title = f"{dataset} / {arch}: accuracy (%) under attack"
        if fmt == "latex":
            out.append(latex(agg, title, ours, metrics) + "\n")
        elif fmt == "csv":
            csv_parts.append(numeric(agg, metrics))
        else:
            table = paper_table(agg, bold=True, hours=opts.hours, ours=ours, metrics=metrics)
            out += ([(title, table), f"{BOLD_NOTE}\n\n"] if fmt == "rich"
                    else [f"### {title}\n\n{markdown(table)}\n\n{BOLD_NOTE}\n"])
    if csv_parts:
        import pandas as pd

        out.append(pd.concat(csv_parts, ignore_index=True).to_csv(index=False))
    if not out:
        raise BenchError("no stored rows match the filters")
    return out


def reported_view(df: pd.DataFrame, fmt: str, opts: TableOptions = TableOptions()) -> list:
    """Reproduced beside published, per section; every published number with its grade.
    Parts as `render`'s: for rich, every table a (title, table) pair, drawn once."""
    from bench.report.aggregate import markdown
    from bench.report.reported import (
        compare,
        comparison_table,
        not_comparable,
        not_comparable_table,
    )

    cmp = compare(select(df, opts))
    if opts.names and not cmp.empty:  # compare() labels with the declared display names
        from bench.report.aggregate import display_name

        cmp = cmp.assign(label=[
            display_name(m, opts.names) + lab.removeprefix(display_name(m))
            if lab.startswith(display_name(m)) else lab
            for m, lab in zip(cmp["method"], cmp["label"], strict=True)])
    if cmp.empty:
        return ["No published figure matches the stored settings (data set, student, "
                "teacher where known, checkpoint); `bench reported` lists what is known.\n"]
    if fmt == "csv":
        return [cmp.to_csv(index=False)]
    out: list = []
    for (dataset, arch), g in cmp.groupby(["dataset", "arch"], sort=True):
        t = comparison_table(g)
        title = (f"{dataset} / {arch}: reproduced vs published (%; ! marks a difference "
                 f"larger than max(1 pp, 2 std))")
        if fmt == "rich":
            out.append((title, t))
        elif fmt == "latex":
            cols = ["method", "checkpoint", "attack", "reproduced", "published", "difference"]
            out.append(tabular(title, t[cols].rename(columns=str.capitalize)))
        else:
            out.append(f"### {title}\n\n{markdown(t)}\n")
    apart = not_comparable(select(df, opts))
    if fmt in ("rich", "markdown") and not apart.empty:
        title, t = ("Published figures of these settings that are not comparable",
                    not_comparable_table(apart))
        out.append((title, t) if fmt == "rich" else f"### {title}\n\n{markdown(t)}\n")
    return out


def tabular(title: str, t: pd.DataFrame) -> str:
    """A table of display strings as a booktabs LaTeX tabular, its title as a comment."""
    from bench.report.aggregate import tex_escape

    body = [" & ".join(tex_escape(str(v)) for v in r) + r" \\" for r in t.values]
    return "\n".join([f"% {title}", r"\begin{tabular}{" + "l" * t.shape[1] + "}", r"\toprule",
                      " & ".join(tex_escape(str(c)) for c in t.columns) + r" \\",
                      r"\midrule", *body, r"\bottomrule", r"\end{tabular}", ""])


def teacher_view(df: pd.DataFrame, fmt: str, out: str, opts: TableOptions = TableOptions()
                 ) -> list:
    """Each teacher's accuracy beside its students' (`bench.report.teachers`), per section;
    parts as `render`'s."""
    from bench.report.aggregate import markdown
    from bench.report.teachers import beside, tables

    kept = select(df, opts)
    if fmt == "csv":
        lines, _ = beside(kept, out, (opts.metrics or (None,))[0])
        return [lines.to_csv(index=False)] if not lines.empty else []
    out_parts: list = []
    for title, t in tables(kept, out, (opts.metrics or (None,))[0]):
        if fmt == "rich":
            out_parts.append((title, t))
        elif fmt == "latex":
            out_parts.append(tabular(title, t))
        else:
            out_parts.append(f"### {title}\n\n{markdown(t)}\n")
    return out_parts
