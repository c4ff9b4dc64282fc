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
    Names,
    aggregate,
    display_name,
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
# The robustness figure: one marker per attack, all on one checkpoint.
ATTACK_MARKERS = {"fgsm": "v", "pgd20": "s", "pgd20s": "P", "cw": "D", "aa": "o"}


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


def stem(kind: str, dataset: str, arch: str, checkpoint: str | None = None,
         attack: str | None = None, tag: str | None = None) -> str:
    """A figure's file name (without suffix), named for what it shows: kind, data set, arch,
    then the checkpoint and the attack where the figure has one, then `tag` (the methods a
    `bench plot --methods` filter kept), e.g. `accuracy_cifar10_resnet18_best`."""
    return _slug(*(p for p in (kind, dataset, arch, checkpoint, attack, tag) if p))


def methods_tag(methods: str | None) -> str | None:
    """`--methods a,b` as a file-name part, 'a-b' (None without the filter)."""
    from bench.train.experiment import csv

    return "-".join(csv(methods)) if methods else None


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


def pick_checkpoint(agg: pd.DataFrame, wanted: str | None = "best") -> str | None:
    """`wanted` if the section has it (else None: the section is left out); with None, best
    where the section has it, else its first checkpoint."""
    have = sorted(agg["checkpoint"].unique(), key=lambda c: CHECKPOINT_ORDER.get(c, 9))
    if wanted is not None:
        return wanted if wanted in have else None
    return "best" if "best" in have else (have[0] if have else None)


def accuracy_bars(df: pd.DataFrame, out_dir: str | Path, checkpoint: str | None = "best",
                  names: Names | None = None, tag: str | None = None) -> list[Path]:
    """Grouped bars: accuracy per method (colour) under each attack (group), one checkpoint
    (`pick_checkpoint`; a section without it is left out).

    Error bars are 95 % intervals: Wilson's with one seed, Student t over several.
    """
    plt, _ = _plt()
    import numpy as np

    out_dir, paths = Path(out_dir), []
    for (dataset, arch), rows in sections(prepare(df)):
        agg = aggregate(rows, names=names)
        ckpt = pick_checkpoint(agg, checkpoint)
        if ckpt is None:
            continue
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
            below = [r[m] - r[f"{m}_lo"] if r[f"{m}_lo"] == r[f"{m}_lo"] else 0 for m in metrics]
            above = [r[f"{m}_hi"] - r[m] if r[f"{m}_hi"] == r[f"{m}_hi"] else 0 for m in metrics]
            ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(means), width * 0.92,
                   yerr=[below, above], capsize=2, error_kw={"elinewidth": 1},
                   color=colors[r["label"]], label=r["label"], edgecolor="white",
                   linewidth=0.5)
            for j, mean in enumerate(means):
                if mean != mean:  # not measured: say so instead of a silent zero bar
                    ax.text(x[j] - 0.4 + width * (i + 0.5), 1, "n/a", rotation=90,
                            ha="center", va="bottom", fontsize=7, color="0.4")
        ax.set_xticks(x, [f"{LABELS[m]}\n(n={image_counts(agg, m)})" for m in metrics])
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_xlabel("attack (n = test images per number); error bars: 95 % interval "
                      "(Wilson with one seed, Student t over seeds)")
        ax.set_title(f"{dataset} / {arch}: accuracy under attack, checkpoint '{ckpt}'\n"
                     f"L∞ {_eps_text(agg)}; {_seed_text(agg)}", fontsize=11)
        ax.legend(title="method", bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
        paths += _save(fig, out_dir, stem("accuracy", dataset, arch, ckpt, tag=tag))
    return paths


def robustness_scatter(df: pd.DataFrame, out_dir: str | Path, checkpoint: str | None = "best",
                       names: Names | None = None, tag: str | None = None) -> list[Path]:
    """Clean accuracy (x) against the accuracy under every attack (y; one marker per attack,
    a method's points joined by a thin line) per method (colour), all of one checkpoint
    (`pick_checkpoint`; a section without it is left out): like is compared with like.
    """
    plt, _ = _plt()
    from matplotlib.lines import Line2D

    out_dir, paths = Path(out_dir), []
    for (dataset, arch), rows in sections(prepare(df)):
        agg = aggregate(rows, names=names)
        ckpt = pick_checkpoint(agg, checkpoint) if not agg.empty else None
        if ckpt is None or "clean" not in agg:
            continue
        agg = agg[(agg["checkpoint"] == ckpt) & agg["clean"].notna()].reset_index(drop=True)
        attacks = [m for m in metrics_of(agg, MAIN_METRICS) if m != "clean"]
        agg = agg[agg[attacks].notna().any(axis=1)].reset_index(drop=True) if attacks else agg
        if agg.empty or not attacks:
            continue
        methods = list(dict.fromkeys(agg["label"]))
        colors = label_colors(list(agg["label"]), list(agg["method"]))
        fig, ax = plt.subplots(figsize=(7.5, 5.5))
        ys = []
        for _, r in agg.iterrows():
            c, x = colors[r["label"]], r["clean"]
            xerr = _interval_err(r, "clean")
            pts = [(m, r[m]) for m in attacks if r[m] == r[m]]
            ys += [y for _, y in pts]
            if len(pts) > 1:  # one method's attacks, from its weakest to its strongest
                ax.plot([x, x], [min(y for _, y in pts), max(y for _, y in pts)], color=c,
                        lw=1, alpha=0.6, zorder=2)
            for m, y in pts:
                ax.errorbar(x, y, xerr=xerr, yerr=_interval_err(r, m),
                            fmt=ATTACK_MARKERS.get(m, "X"), ms=8, color=c, mec="white",
                            mew=1, elinewidth=1, capsize=2, zorder=3)
        ax.set_xlabel(f"clean accuracy (%, n={image_counts(agg, 'clean')})")
        ax.set_ylabel("accuracy under attack (%): one marker per attack\n"
                      "bars: 95 % interval (Wilson, one seed; Student t over seeds)")
        ax.set_title(f"{dataset} / {arch}: robustness vs accuracy, checkpoint '{ckpt}'\n"
                     f"L∞ {_eps_text(agg)}; {_seed_text(agg)}", fontsize=11)
        for lo, hi, set_lim in ((agg["clean"].min(), agg["clean"].max(), ax.set_xlim),
                                (min(ys), max(ys), ax.set_ylim)):
            pad = max(2.0, (hi - lo) * 0.1)  # a point at 0 or 100 % stays whole
            set_lim(max(-pad / 2, lo - pad), min(100 + pad / 2, hi + pad))
        method_handles = [Line2D([], [], ls="", marker="o", color=colors[m], ms=8, label=m)
                          for m in methods]
        attack_handles = [Line2D([], [], ls="", marker=ATTACK_MARKERS.get(m, "X"), color="0.3",
                                 ms=8, label=f"{LABELS.get(m, m)} (n={image_counts(agg, m)})")
                          for m in attacks]
        gap = Line2D([], [], ls="", label=" ")
        head = Line2D([], [], ls="", label="attack")
        leg = ax.legend(handles=[*method_handles, gap, head, *attack_handles], title="method",
                        bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
        for text in leg.get_texts():
            if text.get_text() == "attack":
                text.set_fontweight("bold")
        paths += _save(fig, out_dir, stem("robustness", dataset, arch, ckpt, tag=tag))
    return paths


def _interval_err(r: pd.Series, m: str) -> list[list[float]] | None:
    """matplotlib's asymmetric error of line `r`'s metric `m`: its 95 % interval."""
    lo, hi = r.get(f"{m}_lo", float("nan")), r.get(f"{m}_hi", float("nan"))
    if lo != lo or hi != hi:
        return None
    return [[max(r[m] - lo, 0.0)], [max(hi - r[m], 0.0)]]


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


def histories(df: pd.DataFrame, runs_dir: str | Path, names: Names | None = None
              ) -> tuple[pd.DataFrame, list[str]]:
    """(one line per cell and epoch: label, seed, epoch, loss, pgd10, swa_pgd10; missing ids)."""
    import pandas as pd

    df = prepare(df)
    if not df.empty:  # labels as each section's tables and figures name the lines
        df = df.assign(label=pd.concat([labels(g, names) for _, g in sections(df)]))
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


def training_curves(df: pd.DataFrame, runs_dir: str | Path, out_dir: str | Path,
                    names: Names | None = None, tag: str | None = None) -> list[Path]:
    """Per-epoch PGD-10 selection accuracy (SWA's dashed) and training loss per method.

    Read from each cell's `runs_dir/<cell_id>/ckpt.pt` history; cells without a readable
    checkpoint are left out (and named in the figure's footnote).
    """
    plt, _ = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    out_dir, paths = Path(out_dir), []
    hist, missing = histories(df, runs_dir, names)
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
        paths += _save(fig, out_dir, stem("training", dataset, arch, tag=tag))
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


def _drawn(paths: list[Path], df: pd.DataFrame, checkpoint: str | None) -> list[Path]:
    """`paths`, or a one-line error when no section had the checkpoint asked for."""
    from bench import BenchError

    if not paths and checkpoint is not None and checkpoint not in set(df["checkpoint"]):
        have = sorted(set(df["checkpoint"]), key=lambda c: CHECKPOINT_ORDER.get(c, 9))
        raise BenchError(f"no stored rows of checkpoint {checkpoint!r} match (stored: "
                         f"{', '.join(have)}); pick one with --checkpoint")
    return paths


@figure("accuracy", "grouped bars: accuracy (%) of each method under each attack, "
                    "one checkpoint (--checkpoint, default best)")
def accuracy_figure(out: Path, dest: Path, dataset: str | None = None, arch: str | None = None,
                    methods: str | None = None, checkpoint: str = "best",
                    names: Names | None = None) -> list[Path]:
    df = rows(out, dataset, arch, methods)
    return _drawn(accuracy_bars(df, dest, checkpoint, names, methods_tag(methods)), df,
                  checkpoint)


@figure("robustness", "clean accuracy (%) against the accuracy (%) under every attack, per "
                      "method, one checkpoint (--checkpoint, default best)")
def robustness_figure(out: Path, dest: Path, dataset: str | None = None,
                      arch: str | None = None, methods: str | None = None,
                      checkpoint: str = "best", names: Names | None = None) -> list[Path]:
    df = rows(out, dataset, arch, methods)
    return _drawn(robustness_scatter(df, dest, checkpoint, names, methods_tag(methods)), df,
                  checkpoint)


@figure("training", "PGD-10 selection accuracy (%) and training loss per epoch, per method")
def training_figure(out: Path, dest: Path, dataset: str | None = None, arch: str | None = None,
                    methods: str | None = None, names: Names | None = None) -> list[Path]:
    return training_curves(rows(out, dataset, arch, methods), Path(out) / "runs", dest, names,
                           methods_tag(methods))


GRADE_MARKERS = {"R": "D", "P": "o", "S": "s", "T": "^"}


@figure("reported", "reproduced (%) against published (%) figures of the same setting, one "
                    "panel per data set / arch; marker = the published figure's grade")
def reported_figure(out: Path, dest: Path, dataset: str | None = None, arch: str | None = None,
                    methods: str | None = None, names: Names | None = None) -> list[Path]:
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
        shown = {m: display_name(m, names) for m in colors}
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
        handles = [Line2D([], [], ls="", marker="o", color=colors[m], ms=8, label=shown[m])
                   for m in colors]
        handles += [Line2D([], [], ls="", label=" ")]
        handles += [Line2D([], [], ls="", marker=mk, color="0.3", ms=8,
                           mfc="white" if gr == "T" else "0.3", label=f"grade {gr}")
                    for gr, mk in GRADE_MARKERS.items() if gr in set(g["grade"])]
        ax.legend(handles=handles, title="method", bbox_to_anchor=(1.01, 1), loc="upper left",
                  frameon=False)
        paths += _save(fig, Path(dest), stem("reported", ds, ar, tag=methods_tag(methods)))
    return paths
