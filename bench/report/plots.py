"""The report's figures (matplotlib, Agg backend, seaborn style), one file set per section.

Every function takes the results rows as a DataFrame (what `Store.frame()` returns), writes
PNG and PDF files under `out_dir`, and returns the paths written. matplotlib, seaborn and
pandas are imported inside the functions, so `import bench` needs torch only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.report.aggregate import (
    CHECKPOINT_ORDER,
    LABELS,
    MAIN_METRICS,
    aggregate,
    fmt_eps,
    image_counts,
    labels,
    metrics_of,
    prepare,
    sections,
)
from bench.report.figures import figure, method_colors

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("png", "pdf")
MARKERS = {"best": "o", "last": "s", "swa_best": "^", "swa_last": "D"}
SIZES = {"best": 12, "last": 8, "swa_best": 10, "swa_last": 6}  # coinciding points stay visible


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _slug(*parts: Any) -> str:
    return "_".join("".join(ch if ch.isalnum() or ch in "-._" else "-" for ch in str(p))
                    for p in parts)


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FORMATS:
        p = out_dir / f"{stem}.{ext}"
        fig.savefig(p, dpi=150, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def label_colors(labels: list[str], methods: list[str]) -> dict[str, Any]:
    """A colour per line label: its method's colour from `method_colors` (the same in every
    figure); a second or third setup of one method gets a lighter shade of it."""
    from matplotlib.colors import to_rgb

    base = method_colors(list(dict.fromkeys(methods)))
    seen: dict[str, int] = {}
    out = {}
    for label, method in dict(zip(labels, methods, strict=True)).items():
        k = seen.get(method, 0)
        seen[method] = k + 1
        mix = min(0.6, 0.3 * k)  # towards white
        out[label] = tuple(c + (1 - c) * mix for c in to_rgb(base[method]))
    return out


def _eps_text(agg: pd.DataFrame) -> str:
    eps = agg["eps"].dropna().unique()
    return "eps " + (fmt_eps(float(eps[0])) if len(eps) == 1 else "mixed")


def _seed_text(agg: pd.DataFrame) -> str:
    seeds = sorted({s for lst in agg["seed_list"] for s in lst})
    if len(seeds) > 1:
        return f"mean ± std over seeds {', '.join(map(str, seeds))}"
    return f"seed {seeds[0]}" if seeds else "seed ?"


def _pick_checkpoint(agg: pd.DataFrame, wanted: str = "best") -> str:
    have = sorted(agg["checkpoint"].unique(), key=lambda c: CHECKPOINT_ORDER.get(c, 9))
    return wanted if wanted in have else have[0]


def accuracy_bars(df: pd.DataFrame, out_dir: str | Path, checkpoint: str = "best"
                  ) -> list[Path]:
    """Grouped bars: accuracy per method (colour) under each attack (group), one checkpoint.

    Error bars are the std over seeds where a method has several.
    """
    plt, _ = _plt()
    import numpy as np

    out_dir, paths = Path(out_dir), []
    for (dataset, arch), rows in sections(prepare(df)):
        agg = aggregate(rows)
        ckpt = _pick_checkpoint(agg, checkpoint)
        agg = agg[agg["checkpoint"] == ckpt].reset_index(drop=True)
        metrics = metrics_of(agg, MAIN_METRICS)
        if agg.empty or not metrics:
            continue
        methods = list(agg["label"])
        colors = label_colors(methods, list(agg["method"]))
        n_m, n_g = len(methods), len(metrics)
        width = 0.8 / n_m
        fig, ax = plt.subplots(figsize=(min(16, max(8, 1.6 + 0.22 * n_m * n_g)), 4.8))
        x = np.arange(n_g)
        for i, (_, r) in enumerate(agg.iterrows()):
            means = [r[m] for m in metrics]
            stds = [r[f"{m}_std"] for m in metrics]
            ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(means), width * 0.92,
                   yerr=[s if s == s else 0 for s in stds], capsize=2 if any(
                       s == s for s in stds) else 0, error_kw={"elinewidth": 1},
                   color=colors[r["label"]], label=r["label"], edgecolor="white",
                   linewidth=0.5)
            for j, mean in enumerate(means):
                if mean != mean:  # not measured: say so instead of a silent zero bar
                    ax.text(x[j] - 0.4 + width * (i + 0.5), 1, "n/a", rotation=90,
                            ha="center", va="bottom", fontsize=7, color="0.4")
        ax.set_xticks(x, [f"{LABELS[m]}\n(n={image_counts(agg, m)})" for m in metrics])
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_xlabel("attack (n = test images per number)")
        ax.set_title(f"{dataset} / {arch}: accuracy under attack, checkpoint '{ckpt}'\n"
                     f"L∞ {_eps_text(agg)}; {_seed_text(agg)}", fontsize=11)
        ax.legend(title="method", bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
        paths += _save(fig, out_dir, _slug("accuracy", dataset, arch))
    return paths


def robustness_scatter(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Clean vs AutoAttack accuracy per method (colour) and checkpoint (marker).

    A line without AutoAttack falls back to PGD-20 and is drawn hollow (the axis says so).
    """
    plt, _ = _plt()
    import pandas as pd
    from matplotlib.lines import Line2D

    out_dir, paths = Path(out_dir), []
    for (dataset, arch), rows in sections(prepare(df)):
        agg = aggregate(rows)
        if agg.empty or "clean" not in agg or agg["clean"].isna().all():
            continue
        none = pd.Series(False, index=agg.index)
        has_aa = agg["aa"].notna() if "aa" in agg else none
        has_pgd = agg["pgd20"].notna() if "pgd20" in agg else none
        agg = agg[agg["clean"].notna() & (has_aa | has_pgd)].reset_index(drop=True)
        if agg.empty:
            continue
        has_aa = agg["aa"].notna() if "aa" in agg else pd.Series(False, index=agg.index)
        methods = list(dict.fromkeys(agg["label"]))
        colors = label_colors(list(agg["label"]), list(agg["method"]))
        fig, ax = plt.subplots(figsize=(7.5, 5.5))
        for i, r in agg.iterrows():
            y_m = "aa" if has_aa[i] else "pgd20"
            c, ck = colors[r["label"]], r["checkpoint"]
            ax.errorbar(r["clean"], r[y_m],
                        xerr=r["clean_std"] if r["clean_std"] == r["clean_std"] else None,
                        yerr=r[f"{y_m}_std"] if r[f"{y_m}_std"] == r[f"{y_m}_std"] else None,
                        fmt=MARKERS.get(ck, "X"), ms=SIZES.get(ck, 6), color=c,
                        mfc=c if y_m == "aa" else "white", mec="white" if y_m == "aa" else c,
                        mew=1.2, elinewidth=1, capsize=2,
                        zorder=3 + CHECKPOINT_ORDER.get(ck, 4))
        if has_aa.all():
            ylab = f"AutoAttack accuracy (%, n={image_counts(agg, 'aa')})"
        elif not has_aa.any():
            ylab = f"PGD-20 accuracy (%, n={image_counts(agg, 'pgd20')}; no AutoAttack)"
        else:
            ylab = (f"AutoAttack accuracy (%, n={image_counts(agg[has_aa], 'aa')})\n"
                    "hollow: PGD-20 (no AutoAttack for that line)")
        ax.set_xlabel(f"clean accuracy (%, n={image_counts(agg, 'clean')})")
        ax.set_ylabel(ylab)
        ax.set_title(f"{dataset} / {arch}: robustness vs accuracy\n"
                     f"L∞ {_eps_text(agg)}; {_seed_text(agg)}", fontsize=11)
        lo_x, hi_x = agg["clean"].min(), agg["clean"].max()
        pad = max(2.0, (hi_x - lo_x) * 0.1)
        ax.set_xlim(max(0, lo_x - pad), min(100, hi_x + pad))
        ys = [agg.at[i, "aa" if has_aa[i] else "pgd20"] for i in agg.index]
        pad = max(2.0, (max(ys) - min(ys)) * 0.1)
        ax.set_ylim(max(0, min(ys) - pad), min(100, max(ys) + pad))
        method_handles = [Line2D([], [], ls="", marker="o", color=colors[m], ms=8, label=m)
                          for m in methods]
        ckpts = sorted(agg["checkpoint"].unique(), key=lambda c: CHECKPOINT_ORDER.get(c, 9))
        ckpt_handles = [Line2D([], [], ls="", marker=MARKERS.get(c, "X"), color="0.3", ms=8,
                               label=c) for c in ckpts]
        gap = Line2D([], [], ls="", label=" ")
        head = Line2D([], [], ls="", label="checkpoint")
        leg = ax.legend(handles=[*method_handles, gap, head, *ckpt_handles], title="method",
                        bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
        for text in leg.get_texts():
            if text.get_text() == "checkpoint":
                text.set_fontweight("bold")
        paths += _save(fig, out_dir, _slug("robustness", dataset, arch))
    return paths


def load_history(run_dir: Path) -> list[dict[str, Any]] | None:
    """A cell's per-epoch history from its checkpoint (or the previous one), or None."""
    import torch

    for p in (run_dir / "ckpt.pt", run_dir / "ckpt.prev.pt"):
        if not p.is_file():
            continue
        try:
            state = torch.load(p, weights_only=True, map_location="cpu")
        except Exception:  # truncated, foreign or unsafe file: try the previous one
            continue
        if isinstance(state, dict) and isinstance(state.get("history"), list):
            return [h for h in state["history"] if isinstance(h, dict) and "epoch" in h]
    return None


def histories(df: pd.DataFrame, runs_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """(one line per cell and epoch: label, seed, epoch, loss, pgd10, swa_pgd10; missing ids)."""
    import pandas as pd

    df = prepare(df)
    if not df.empty:  # labels as each section's tables and figures name the lines
        df = df.assign(label=pd.concat([labels(g) for _, g in sections(df)]))
    lines, missing = [], []
    for cell_id, g in df.groupby("cell_id", sort=True):
        r = g.iloc[0]
        hist = load_history(Path(runs_dir) / cell_id)
        if not hist:
            missing.append(cell_id)
            continue
        for h in hist:
            lines.append({"dataset": r["dataset"], "arch": r["arch"], "label": r["label"],
                          "method": r["method"],
                          "seed": r["seed"], "cell_id": cell_id, "epoch": int(h["epoch"]) + 1,
                          "loss": h.get("loss"), "pgd10": h.get("pgd10"),
                          "swa_pgd10": h.get("swa_pgd10")})
    out = pd.DataFrame(lines, columns=["dataset", "arch", "label", "method", "seed", "cell_id",
                                       "epoch", "loss", "pgd10", "swa_pgd10"])
    for c in ("loss", "pgd10", "swa_pgd10"):
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out, missing


def _band(ax, g, col: str, color, scale: float, ls: str, label: str | None) -> None:
    s = g.dropna(subset=[col]).groupby("epoch")[col].agg(["mean", "std", "count"])
    if s.empty:
        return
    ax.plot(s.index, s["mean"] * scale, ls=ls, color=color, label=label, lw=1.8,
            marker="." if len(s) < 30 else None)
    several = s["count"] > 1
    if several.any():
        ax.fill_between(s.index[several], (s["mean"] - s["std"])[several] * scale,
                        (s["mean"] + s["std"])[several] * scale, color=color, alpha=0.15,
                        lw=0)


def training_curves(df: pd.DataFrame, runs_dir: str | Path, out_dir: str | Path
                    ) -> list[Path]:
    """Per-epoch PGD-10 selection accuracy (SWA's dashed) and training loss per method.

    Read from each cell's `runs_dir/<cell_id>/ckpt.pt` history; cells without a readable
    checkpoint are left out (and named in the figure's footnote).
    """
    plt, _ = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    out_dir, paths = Path(out_dir), []
    hist, missing = histories(df, runs_dir)
    rows = prepare(df)
    for (dataset, arch), sec_rows in sections(rows):
        h = hist[(hist["dataset"] == dataset) & (hist["arch"] == arch)]
        if h.empty:
            continue
        methods = list(dict.fromkeys(sorted(h["label"])))
        pairs = h.drop_duplicates("label").set_index("label")["method"]
        colors = label_colors(methods, [pairs[m] for m in methods])
        fig, (ax_a, ax_l) = plt.subplots(1, 2, figsize=(13, 4.8))
        for m in methods:
            g = h[h["label"] == m]
            _band(ax_a, g, "pgd10", colors[m], 100, "-", m)
            _band(ax_a, g, "swa_pgd10", colors[m], 100, "--", None)
            _band(ax_l, g, "loss", colors[m], 1, "-", m)
        sel = "test"
        if "config" in sec_rows:
            s = {c.get("select") for c in sec_rows["config"] if isinstance(c, dict)} - {None}
            sel = "/".join(sorted(s)) or sel
        n_sel = image_counts(aggregate(sec_rows), "clean") if sel == "test" else "?"
        swa = "; dashed: SWA model" if h["swa_pgd10"].notna().any() else ""
        ax_a.set_title(f"PGD-10 accuracy on the {sel} split (n={n_sel})\n"
                       f"used to pick 'best'{swa}", fontsize=10)
        ax_a.set_xlabel("epoch")
        ax_a.set_ylabel("PGD-10 accuracy (%)")
        ax_l.set_title("training loss (each method's own objective)", fontsize=10)
        ax_l.set_xlabel("epoch")
        ax_l.set_ylabel("mean loss per image")
        loss = h["loss"].dropna()
        if len(loss) and loss.min() > 0 and loss.max() / loss.min() > 30:
            ax_l.set_yscale("log")
            ax_l.set_ylabel("mean loss per image (log scale)")
        for ax in (ax_a, ax_l):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        seeds = sorted({int(s) for s in h["seed"].dropna()})
        seed_text = (f"mean ± std over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1
                     else f"seed {seeds[0] if seeds else '?'}")
        agg = aggregate(sec_rows)
        fig.suptitle(f"{dataset} / {arch}: training curves (L∞ {_eps_text(agg)}; {seed_text})",
                     fontsize=12)
        ax_l.legend(title="method", bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
        if h["swa_pgd10"].notna().any():
            ax_a.legend(handles=[Line2D([], [], color="0.3", ls="-", label="student"),
                                 Line2D([], [], color="0.3", ls="--", label="SWA average")],
                        loc="best", fontsize=8)
        gone = [c for c in missing if c in set(sec_rows["cell_id"])]
        if gone:
            fig.text(0.01, -0.02, f"no checkpoint history for {len(gone)} cell(s): "
                     + ", ".join(gone[:4]) + (" ..." if len(gone) > 4 else ""),
                     fontsize=8, color="0.4", ha="left", va="top")
        fig.tight_layout()
        paths += _save(fig, out_dir, _slug("training", dataset, arch))
    return paths


# --- the figure kinds of `bench plot` --------------------------------------------------------

def rows(out: str | Path, dataset: str | None = None, arch: str | None = None,
         methods: str | None = None) -> pd.DataFrame:
    """The current stored rows under `out`, filtered; a one-line error when none are left."""
    import pandas as pd

    from bench import BenchError
    from bench.core.store import Store
    from bench.report.aggregate import current
    from bench.train.experiment import csv

    df, _ = current(pd.DataFrame(Store(out).read()[0]))
    for col, want in (("dataset", dataset), ("arch", arch), ("method", methods)):
        if want:
            df = df[df[col].isin(csv(want))]
    if df.empty:
        raise BenchError(f"no stored rows under {Path(out) / 'rows'} match")
    return df


@figure("accuracy", "grouped bars: accuracy (%) of each method under each attack, "
                    "one checkpoint (--checkpoint, default best)")
def accuracy_figure(out: Path, dest: Path, dataset: str | None = None, arch: str | None = None,
                    methods: str | None = None, checkpoint: str = "best") -> list[Path]:
    return accuracy_bars(rows(out, dataset, arch, methods), dest, checkpoint)


@figure("robustness", "clean vs AutoAttack (else PGD-20) accuracy (%) per method and "
                      "checkpoint")
def robustness_figure(out: Path, dest: Path, dataset: str | None = None,
                      arch: str | None = None, methods: str | None = None) -> list[Path]:
    return robustness_scatter(rows(out, dataset, arch, methods), dest)


@figure("training", "PGD-10 selection accuracy (%) and training loss per epoch, per method")
def training_figure(out: Path, dest: Path, dataset: str | None = None, arch: str | None = None,
                    methods: str | None = None) -> list[Path]:
    return training_curves(rows(out, dataset, arch, methods), Path(out) / "runs", dest)


GRADE_MARKERS = {"P": "o", "S": "s", "T": "^"}


@figure("reported", "reproduced (%) against published (%) figures of the same setting, one "
                    "panel per data set / arch; marker = the published figure's grade")
def reported_figure(out: Path, dest: Path, dataset: str | None = None, arch: str | None = None,
                    methods: str | None = None) -> list[Path]:
    """Reproduced mean ± std (y) against every matching published figure (x): points on the
    diagonal reproduce; the grey band is ±1 point. T figures are hollow triangles, so a
    tertiary number is never shown as the paper's own."""
    plt, _ = _plt()
    from matplotlib.lines import Line2D

    from bench import BenchError
    from bench.report.reported import compare

    cmp = compare(rows(out, dataset, arch, methods))
    if cmp.empty:
        raise BenchError(f"no published figure matches the rows under {Path(out) / 'rows'}")
    paths = []
    for (ds, ar), g in cmp.groupby(["dataset", "arch"], sort=True):
        colors = method_colors(list(dict.fromkeys(g["method"])))
        fig, ax = plt.subplots(figsize=(7.5, 6))
        for _, r in g.iterrows():
            c = colors[r["method"]]
            ax.errorbar(r["published"], r["reproduced"],
                        yerr=r["std"] if r["std"] == r["std"] else None,
                        fmt=GRADE_MARKERS[r["grade"]], color=c, ms=8, capsize=2,
                        mfc="white" if r["grade"] == "T" else c, mec=c)
        lo = min(g["published"].min(), g["reproduced"].min()) - 3
        hi = max(g["published"].max(), g["reproduced"].max()) + 3
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=1)
        ax.fill_between([lo, hi], [lo - 1, hi - 1], [lo + 1, hi + 1], color="0.5", alpha=0.15,
                        lw=0)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("published accuracy (%)")
        ax.set_ylabel("reproduced accuracy (%), mean ± std over seeds")
        ax.set_title(f"{ds} / {ar}: reproduced vs published (all attacks)\n"
                     "diagonal: equal; band: ±1 point", fontsize=11)
        handles = [Line2D([], [], ls="", marker="o", color=colors[m], ms=8, label=m)
                   for m in colors]
        handles += [Line2D([], [], ls="", label=" ")]
        handles += [Line2D([], [], ls="", marker=mk, color="0.3", ms=8,
                           mfc="white" if gr == "T" else "0.3", label=f"grade {gr}")
                    for gr, mk in GRADE_MARKERS.items() if gr in set(g["grade"])]
        ax.legend(handles=handles, title="method", bbox_to_anchor=(1.01, 1), loc="upper left",
                  frameon=False)
        paths += _save(fig, Path(dest), _slug("reported", ds, ar))
    return paths
