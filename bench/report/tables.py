"""`bench table`: the stored rows as paper-style tables, one per (data set, arch), in rich,
markdown, LaTeX or CSV; filters; the reported-vs-reproduced view.

The metric columns are a list (`TableOptions.metrics`): a new kind of column (worst class,
tutor accuracy) is one more entry, not a new table.
"""

from __future__ import annotations

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


def numeric(agg: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The CSV form: one line per table line, mean / sample std / seed count per metric."""
    keep = ["dataset", "arch", "method", "preset", "label", "epochs", "checkpoint", "seeds",
            "train_seconds"]
    for m in metrics:
        keep += [m, f"{m}_std", f"{m}_count", f"n_{m}"]
    return agg[[c for c in keep if c in agg]]


def sections(df: pd.DataFrame, opts: TableOptions):
    """((dataset, arch), aggregated lines, metrics) per section, after the filters."""
    from bench.report.aggregate import aggregate, metrics_of
    from bench.report.aggregate import sections as by_section

    for key, g in by_section(select(df, opts)):
        agg = aggregate(g)
        metrics = [m for m in (opts.metrics or metrics_of(agg)) if m in agg]
        yield key, agg, metrics


def render(df: pd.DataFrame, fmt: str, opts: TableOptions = TableOptions()) -> list:
    """Every section in `fmt`: strings (markdown, LaTeX, CSV), or for rich (title, table of
    display strings) pairs that the caller draws as a rich table or as markdown."""
    from bench.report.aggregate import latex, markdown, paper_table

    if fmt not in FORMATS:
        raise unknown("table format", fmt, FORMATS)
    out: list = []
    csv_parts = []
    for (dataset, arch), agg, metrics in sections(df, opts):
        title = f"{dataset} / {arch}: accuracy (%) under attack"
        if fmt == "latex":
            out.append(latex(agg, title, opts.ours, metrics) + "\n")
        elif fmt == "csv":
            csv_parts.append(numeric(agg, metrics))
        else:
            table = paper_table(agg, bold=True, hours=opts.hours, ours=opts.ours,
                                metrics=metrics)
            out.append((title, table) if fmt == "rich"
                       else f"### {title}\n\n{markdown(table)}\n")
    if csv_parts:
        import pandas as pd

        out.append(pd.concat(csv_parts, ignore_index=True).to_csv(index=False))
    if not out:
        raise BenchError("no stored rows match the filters")
    return out


def reported_view(df: pd.DataFrame, fmt: str, opts: TableOptions = TableOptions()) -> list:
    """Reproduced beside published, per section; every published number with its grade."""
    from bench.report.aggregate import markdown
    from bench.report.reported import compare, comparison_table

    cmp = compare(select(df, opts))
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
            from bench.report.aggregate import tex_escape

            cols = ["method", "checkpoint", "attack", "reproduced", "published", "difference"]
            body = [" & ".join(tex_escape(r[c]) for c in cols) + r" \\"
                    for _, r in t.iterrows()]
            out.append("\n".join([f"% {title}", r"\begin{tabular}{llllll}", r"\toprule",
                                  " & ".join(c.capitalize() for c in cols) + r" \\",
                                  r"\midrule", *body, r"\bottomrule", r"\end{tabular}", ""]))
        else:
            out.append(f"### {title}\n\n{markdown(t)}\n")
    return out
