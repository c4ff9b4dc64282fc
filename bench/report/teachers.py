"""Teacher beside student: the teacher rows a grid's student rows link to, as a table
(`bench table --teachers`) and a figure (`bench plot teachers`).

SAAD's Figure 1 question: does a more robust teacher give a more robust student? One line per
method through its students (mean over seeds) against their teachers' accuracy under the
same attack, on the same images, with Spearman's rank correlation per method (scipy), which
asks only whether the order of the teachers is the order of their students.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bench.report.figures import figure

if TYPE_CHECKING:
    import pandas as pd

    from bench.report.aggregate import Names

TEACHERS_NOTE = ("Each teacher was evaluated once, on the students' test images with the "
                 "students' attacks (AutoAttack on the same subset); a student's accuracy is "
                 "the mean over seeds of its cell's first reported checkpoint. Spearman's rho "
                 "asks whether a method's students are ordered as their teachers are (`bench "
                 "plot teachers` draws it).")
ROBUST = ("aa", "pgd20", "cw", "fgsm")  # the metric a figure uses by default: the first measured
NAMES = {"aa": "AutoAttack", "pgd20": "PGD-20", "cw": "CW-inf", "fgsm": "FGSM", "clean": "clean"}


def beside(df: pd.DataFrame, out: str | Path, metric: str | None = None
           ) -> tuple[pd.DataFrame, str | None]:
    """(one line per data set, arch, method label and teacher: the teacher's accuracy and its
    students' mean / std / seeds, in %; the metric used). Students are each cell's first
    reported checkpoint (best, else swa_best, last), paired with its teacher only where both
    were measured on the same images; labels are the methods' without the teacher (the
    axis). Empty when no student row links a stored teacher row."""
    import pandas as pd

    from bench.report.aggregate import CHECKPOINT_ORDER, display_name, prepare
    from bench.train import teacher_rows

    empty = pd.DataFrame()
    if df.empty or "teacher_row" not in df:
        return empty, None
    teachers = {r["key"]: r for r in teacher_rows.store(out).read()[0] if "key" in r}
    df = prepare(df)
    df = df[df["teacher_row"].isin(teachers)]
    if "reported" in df:
        df = df[df["reported"].fillna(False).astype(bool)]
    if df.empty:
        return empty, None
    order = df["checkpoint"].map(CHECKPOINT_ORDER).fillna(9)
    df = (df.assign(_o=order).sort_values("_o", kind="stable")
          .drop_duplicates("cell_id").drop(columns="_o"))
    candidates = [metric] if metric else ROBUST
    metric = next((m for m in candidates if m in df and df[m].notna().any()
                   and any(teachers[k].get(m) is not None for k in df["teacher_row"])), None)
    if metric is None:
        return empty, None
    lines = []
    keys = ["dataset", "arch", "method", "preset", "epochs", "teacher_row"]
    for (dataset, arch, method, preset, epochs, key), g in df.groupby(keys, sort=True):
        t = teachers[key]
        # side by side only where measured on the same images (and as many for the metric)
        same = (g["test_images"] == t.get("test_images")) if "test_images" in g else False
        g = g[same & (g.get(f"n_{metric}") == t.get(f"n_{metric}"))]
        vals = g[metric].dropna() * 100
        if vals.empty:
            continue
        lines.append({"dataset": dataset, "arch": arch, "method": method, "preset": preset,
                      "epochs": epochs, "label": display_name(method), "teacher": t.get(
                          "teacher_name") or t.get("teacher"),
                      "teacher_acc": 100 * t[metric] if t.get(metric) is not None else None,
                      "student_acc": vals.mean(), "student_std": vals.std(),
                      "seeds": len(vals), "checkpoint": g["checkpoint"].iloc[0]})
    if not lines:
        return empty, None
    out_df = pd.DataFrame(lines).dropna(subset=["teacher_acc", "student_acc"])
    if out_df["preset"].nunique() > 1:  # as the tables label them
        out_df["label"] += " [" + out_df["preset"] + "]"
    if out_df["epochs"].nunique() > 1:
        out_df["label"] += " (" + out_df["epochs"].astype(str) + " ep)"
    return out_df.sort_values(["dataset", "arch", "label", "teacher_acc"]), metric


def compared(lines: pd.DataFrame) -> bool:
    """Whether some method was taught by more than one teacher (a figure has lines)."""
    return not lines.empty and bool((lines.groupby("label")["teacher"].nunique() > 1).any())


def rank_correlation(g: pd.DataFrame) -> tuple[float, float] | None:
    """Spearman's rho and its p-value of students against teachers (None under 3 teachers:
    two points are always perfectly ordered)."""
    from scipy.stats import spearmanr

    if g["teacher"].nunique() < 3:
        return None
    res = spearmanr(g["teacher_acc"], g["student_acc"])
    return float(res.statistic), float(res.pvalue)


def _rho_text(g: pd.DataFrame) -> str:
    rho = rank_correlation(g)
    return "n/a (< 3 teachers)" if rho is None else f"{rho[0]:+.2f} (p = {rho[1]:.2g})"


def tables(df: pd.DataFrame, out: str | Path, metric: str | None = None
           ) -> list[tuple[str, pd.DataFrame]]:
    """(title, table of display strings) per section: each teacher's accuracy beside its
    students', and each method's rank correlation over its teachers."""
    import pandas as pd

    lines, metric = beside(df, out, metric)
    result = []
    if lines.empty:
        return result
    name = NAMES.get(metric, metric)
    for (dataset, arch), sec in lines.groupby(["dataset", "arch"], sort=True):
        body = []
        for label, g in sec.groupby("label", sort=True):
            rho = _rho_text(g)
            for _, r in g.iterrows():
                std = "" if r["seeds"] < 2 else f" ± {r['student_std']:.2f}"
                body.append({"method": label, "teacher": r["teacher"],
                             f"teacher {name}": f"{r['teacher_acc']:.2f}",
                             f"student {name}": f"{r['student_acc']:.2f}{std}",
                             "seeds": int(r["seeds"]), "checkpoint": r["checkpoint"],
                             "Spearman rho (method)": rho})
                rho = ""  # once per method
        result.append((f"{dataset} / {arch}: teacher beside student, {name} accuracy (%)",
                       pd.DataFrame(body)))
    return result


def teacher_plot(lines: pd.DataFrame, metric: str, dest: Path, names: Names | None = None,
                 tag: str | None = None) -> list[Path]:
    """One figure per section: student accuracy against teacher accuracy, one line per method
    through its teachers in the order of their accuracy, rho in the legend."""
    from bench.report.aggregate import display_name
    from bench.report.plots import _plt, _save, _slug, label_colors

    plt, _ = _plt()
    paths = []
    name = NAMES.get(metric, metric)
    for (dataset, arch), sec in lines.groupby(["dataset", "arch"], sort=True):
        labels = [display_name(m, names) + lab.removeprefix(display_name(m))
                  for m, lab in zip(sec["method"], sec["label"], strict=True)]
        sec = sec.assign(label=labels)
        colors = label_colors(list(sec["label"]), list(sec["method"]))
        fig, ax = plt.subplots(figsize=(7.5, 5))
        for label, g in sec.groupby("label", sort=True):
            g = g.sort_values("teacher_acc")
            ax.errorbar(g["teacher_acc"], g["student_acc"],
                        yerr=g["student_std"].where(g["seeds"] > 1), color=colors[label],
                        marker="o", capsize=3, lw=1.6, label=f"{label}: rho {_rho_text(g)}")
        low = ax.get_ylim()[0]
        for teacher, t in sec.groupby("teacher")["teacher_acc"].first().items():
            ax.axvline(t, color="0.8", lw=0.8, ls=":", zorder=0)  # each teacher, named upright
            ax.text(t, low, " " + str(teacher).removeprefix("train:").removeprefix(
                "robustbench:"), rotation=90, fontsize=7, ha="center", va="bottom",
                color="0.35")
        seeds = sorted(set(sec["seeds"]))
        ax.set_xlabel(f"teacher {name} accuracy (%)")
        ax.set_ylabel(f"student {name} accuracy (%)")
        ax.set_title(f"{dataset} / {arch}: does a more robust teacher give a more robust "
                     f"student?\n(students: mean over {'/'.join(map(str, seeds))} seed(s), "
                     "± std; rho: Spearman over each method's teachers)", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        paths += _save(fig, dest, _slug("teachers", dataset, arch, metric,
                                        *([tag] if tag else [])))
    return paths


@figure("teachers", "student accuracy (%) against its teacher's, under the same attack on the "
                    "same images, one line per method, Spearman's rho (--metric, default aa)")
def teachers_figure(out: Path, dest: Path, dataset: str | None = None, arch: str | None = None,
                    methods: str | None = None, metric: str | None = None,
                    names: Names | None = None) -> list[Path]:
    from bench import BenchError
    from bench.report.plots import methods_tag, rows

    lines, used = beside(rows(out, dataset, arch, methods), out, metric)
    if not compared(lines):
        raise BenchError("no method's students link two or more evaluated teachers" +
                         (f" measured under {metric}" if metric else "") +
                         ": run a grid with --teachers A,B,... first")
    return teacher_plot(lines, used, dest, names, methods_tag(methods))
