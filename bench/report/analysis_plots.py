"""Figures of the analyses: `bench plot tutor | transfer | strength | ablation`.

They read what the analyses stored (epoch histories, `<out>/analyses/transfer-*.json`,
`<run>/strength.json`) and the result rows (ablations), and colour each method as every
other figure does (`figures.method_colors`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bench import BenchError
from bench.report.aggregate import LABELS, Names, display_name, fmt_eps
from bench.report.figures import figure, method_colors
from bench.report.plots import _plt, _save, _slug, stem
from bench.train import runs


def _runs(out: Path) -> list[runs.Run]:
    root = runs.runs_dir(out)
    found = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            found.append(runs.find(out, d.name))
        except BenchError:  # a folder without a readable config: not a run
            continue
    return found


def _setup(config: dict[str, Any], drop: str | None = None) -> str:
    """A short digest of a run's configuration without its seed (and without `drop`)."""
    from bench.report.aggregate import setup_key

    c = {**config, "params": {k: v for k, v in config.get("params", {}).items() if k != drop}}
    return hashlib.sha256(setup_key(c).encode()).hexdigest()[:6]


def _line_labels(configs: list[dict[str, Any]], drop: str | None = None,
                 names: Names | None = None) -> list[str]:
    """display name [preset], plus the epochs / a setup digest where a section needs them."""
    base = [display_name(c["method"], names)
            + ("" if c.get("preset") == "faithful" else f" [{c.get('preset')}]")
            for c in configs]
    epochs = {c.get("params", {}).get("epochs") for c in configs}
    if len(epochs) > 1:
        base = [f"{b} ({c['params']['epochs']} ep)" for b, c in zip(base, configs, strict=True)]
    setups: dict[str, set[str]] = {}
    for b, c in zip(base, configs, strict=True):
        setups.setdefault(b, set()).add(_setup(c, drop))
    return [f"{b} {{{_setup(c, drop)}}}" if len(setups[b]) > 1 else b
            for b, c in zip(base, configs, strict=True)]


# --- tutor accuracy -----------------------------------------------------------------------

@figure("tutor", "tutor accuracy (%) per epoch on PGD-10 examples crafted against the student "
                 "(solid) and against the tutor itself (dashed), every method with a teacher "
                 "or peer: PeerAiD's Figure 1")
def tutor_figure(out: Path, dest: Path, names: Names | None = None) -> list[Path]:
    import pandas as pd

    lines = []
    for r in _runs(out):
        try:
            hist = r.history()
        except BenchError:
            continue
        for h in hist:
            if "tutor_on_student" in h:
                lines.append({"run": r, "epoch": h["epoch"] + 1, **{
                    k: h.get(f"tutor_{k}") for k in ("on_student", "on_self", "clean")}})
    if not lines:
        return []
    df = pd.DataFrame(lines)
    df["dataset"] = [r.config["dataset"] for r in df["run"]]
    df["arch"] = [r.config["arch"] for r in df["run"]]
    plt, _ = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    paths = []
    for (dataset, arch), sec in df.groupby(["dataset", "arch"], sort=True):
        sec = sec.assign(label=_line_labels([r.config for r in sec["run"]], names=names),
                         method=[r.config["method"] for r in sec["run"]],
                         seed=[r.config["seed"] for r in sec["run"]])
        colors = method_colors(sorted(set(sec["method"])))
        fig, ax = plt.subplots(figsize=(8.5, 5))
        for label, g in sec.groupby("label", sort=True):
            color = colors[g["method"].iloc[0]]
            for col, ls in (("on_student", "-"), ("on_self", "--")):
                s = g.groupby("epoch")[col].agg(["mean", "std", "count"])
                ax.plot(s.index, 100 * s["mean"], ls=ls, color=color, lw=1.8, marker=".",
                        label=label if col == "on_student" else None)
                many = s["count"] > 1
                if many.any():
                    ax.fill_between(s.index[many], 100 * (s["mean"] - s["std"])[many],
                                    100 * (s["mean"] + s["std"])[many], color=color,
                                    alpha=0.15, lw=0)
        seeds = sorted({int(s) for s in sec["seed"]})
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("tutor accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{dataset} / {arch}: is the tutor right on the student's adversarial "
                     f"examples?\nPGD-10 at the data set's threat model, selection split; "
                     f"{'mean ± std over seeds ' if len(seeds) > 1 else 'seed '}"
                     f"{', '.join(map(str, seeds))}", fontsize=10)
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=[*handles, Line2D([], [], ls="", label=" "),
                           Line2D([], [], color="0.3", ls="-", label="on the student's examples"),
                           Line2D([], [], color="0.3", ls="--", label="on its own examples")],
                  title="method (tutor: peer or teacher)", bbox_to_anchor=(1.01, 1),
                  loc="upper left", frameon=False)
        paths += _save(fig, dest, stem("tutor", dataset, arch))
    return paths


# --- transfer matrices --------------------------------------------------------------------

def _run_label(config: dict[str, Any], names: Names | None = None) -> str:
    """A run as the analyses' figures name it: display name [preset] and seed."""
    preset = "" if config.get("preset") == "faithful" else f" [{config.get('preset')}]"
    return f"{display_name(config.get('method', '?'), names)}{preset} s{config.get('seed', '?')}"


def _short(labels: list[str], key: str, limit: int = 80) -> str:
    """Model labels as one readable file-name part: 'pgdat-s0-best_peeraid-s0-peer'. Longer
    than `limit` characters, it is cut at a model's boundary and ends with the count of the
    rest and the matrix's stored `key` (so two cut names never coincide)."""
    parts = [_slug(lab.replace(" ", "-").replace(":", "-")).replace("_", "-") for lab in labels]
    text = "_".join(parts)
    if len(text) <= limit:
        return text
    kept: list[str] = []
    for p in parts:
        if len("_".join([*kept, p])) > limit - 20:
            break
        kept.append(p)
    return "_".join([*kept, f"and{len(parts) - len(kept)}more-{key}"])


@figure("transfer", "heat map of every stored `bench transfer` matrix: accuracy (%) of the "
                    "target model (column) on examples crafted against the source (row)")
def transfer_figure(out: Path, dest: Path, names: Names | None = None) -> list[Path]:
    """One figure per stored matrix, named `transfer_<attack>_<dataset>_<arch>_<models>` by
    its attack, its models' data set and arch(s) and their labels (run:checkpoint, shortened;
    a matrix whose name would repeat another's gets its stored key appended)."""
    import pandas as pd

    plt, sns = _plt()
    drawn: list[tuple[str, Path, Any]] = []
    for f in sorted((Path(out) / "analyses").glob("transfer-*.json")):
        try:
            stored = json.loads(f.read_text())
            df = pd.DataFrame(stored["rows"])
            labels = stored.get("labels", {})
        except (ValueError, KeyError):
            continue
        order = list(dict.fromkeys(df["source"]))
        configs = {}
        for k in order:  # each model's run: its data set, arch and display name
            try:
                configs[k] = runs.find(Path(out), k.rsplit(":", 1)[0]).config
            except BenchError:
                continue
        shown = {k: f"{_run_label(configs[k], names)}:{k.rsplit(':', 1)[1]}"
                 if k in configs else labels.get(k, k) for k in order}
        if len(set(shown.values())) < len(shown):
            shown = {k: labels.get(k, k) for k in order}
        m = (df.pivot(index="source", columns="target", values="accuracy")
             .reindex(index=order, columns=order) * 100)
        m.index = [shown[k] for k in m.index]
        m.columns = [shown[k] for k in m.columns]
        k = len(order)
        fig, ax = plt.subplots(figsize=(2.2 + 1.1 * k, 1.6 + 0.9 * k))
        sns.heatmap(m, annot=True, fmt=".1f", vmin=0, vmax=100, cmap="viridis", square=True,
                    cbar_kws={"label": "accuracy (%)"}, ax=ax)
        ax.set_xlabel("target: the model evaluated")
        ax.set_ylabel("source: the model attacked")
        cfgs = list(configs.values())
        dataset = "-".join(sorted({str(c.get("dataset")) for c in cfgs})) or "unknown"
        arch = "-".join(sorted({str(c.get("arch")) for c in cfgs})) or "unknown"
        ax.set_title(f"{dataset} / {arch}: {df['attack'].iloc[0]} transfer, L∞ eps "
                     f"{fmt_eps(stored['eps'])}, n={df['n'].iloc[0]}\n(the diagonal is each "
                     f"model's white-box accuracy)", fontsize=10)
        name = stem("transfer", dataset, arch, attack=str(df["attack"].iloc[0]),
                    tag=_short([labels.get(k, k) for k in order], f.stem.rsplit("-", 1)[-1]))
        drawn.append((name, f, fig))
    paths = []
    names_seen = [n for n, _, _ in drawn]
    for name, f, fig in drawn:
        if names_seen.count(name) > 1:  # two matrices, one name: their stored keys tell
            name = f"{name}_{f.stem.rsplit('-', 1)[-1]}"
        paths += _save(fig, dest, name)
    return paths


# --- attack-strength curves ---------------------------------------------------------------

@figure("strength", "accuracy (%) against eps (PGD with the most steps, FGSM dotted) and "
                    "against PGD steps, from `bench eval`; gradient-masking signs beside it")
def strength_figure(out: Path, dest: Path, names: Names | None = None) -> list[Path]:
    from bench.data import datasets
    from bench.eval import analysis

    curves = []
    for r in _runs(out):
        stored = analysis.load_strength(r.dir)
        for ckpt in sorted({p["checkpoint"] for p in stored.get("points", [])}):
            pts = [p for p in stored["points"] if p["checkpoint"] == ckpt]
            curves.append((r, ckpt, pts, stored.get("signs", {}).get(ckpt, [])))
    if not curves:
        return []
    plt, _ = _plt()
    paths = []
    sections = sorted({(r.config["dataset"], r.config["arch"]) for r, *_ in curves})
    for dataset, arch in sections:
        sec = [c for c in curves if (c[0].config["dataset"], c[0].config["arch"]) ==
               (dataset, arch)]
        colors = method_colors(sorted({r.config["method"] for r, *_ in sec}))
        threat = datasets.spec(dataset).eps
        fig, (ax_e, ax_s) = plt.subplots(1, 2, figsize=(13, 4.8))
        notes = []
        for r, ckpt, pts, signs in sec:
            color, label = colors[r.config["method"]], f"{_run_label(r.config, names)}:{ckpt}"
            pgd = [p for p in pts if p["attack"] == "pgd"]
            most = max(p["steps"] for p in pgd)
            e_curve = sorted((p["eps"], p["accuracy"]) for p in pgd if p["steps"] == most)
            ax_e.plot([e for e, _ in e_curve], [100 * a for _, a in e_curve], "-o", ms=4,
                      color=color, label=f"{label} PGD-{most}")
            f_curve = sorted((p["eps"], p["accuracy"]) for p in pts if p["attack"] == "fgsm")
            ax_e.plot([e for e, _ in f_curve], [100 * a for _, a in f_curve], ":", color=color)
            radii = sorted({p["eps"] for p in pgd if p["eps"] > 0})
            if radii:
                eps = min(radii, key=lambda e: abs(e - threat))
                s_curve = sorted((p["steps"], p["accuracy"]) for p in pgd if p["eps"] == eps)
                ax_s.plot([s for s, _ in s_curve], [100 * a for _, a in s_curve], "-o", ms=4,
                          color=color, label=f"{label} (eps {eps:.4g})")
            notes += [f"{label}: {s}" for s in signs]
        ax_e.set_xlabel("L∞ radius eps (pixels in [0, 1])")
        ax_e.set_ylabel("accuracy (%)")
        ax_e.set_title("accuracy against the radius (dotted: FGSM)", fontsize=10)
        ax_e.axvline(threat, color="0.6", lw=0.8, ls="--")
        ax_s.set_xlabel("PGD steps (step size eps/4)")
        ax_s.set_ylabel("accuracy (%)")
        ax_s.set_xscale("log")
        ax_s.set_title(f"accuracy against PGD steps, at the radius nearest the threat model "
                       f"({fmt_eps(threat)})", fontsize=10)
        for ax in (ax_e, ax_s):
            ax.set_ylim(0, 100)
        ax_s.legend(bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False, fontsize=8)
        n = sec[0][2][0]["n"]
        fig.suptitle(f"{dataset} / {arch}: attack strength (test set, n={n})", fontsize=12)
        text = ("gradient-masking signs:\n\n" + "\n".join(f"- {n}" for n in notes)) if notes else \
            "no gradient-masking sign: accuracy falls with eps and with steps, PGD beats FGSM"
        fig.text(0.01, -0.02, text, fontsize=8, color="firebrick" if notes else "0.35",
                 ha="left", va="top")
        fig.tight_layout()
        name = stem("strength", dataset, arch)
        paths += _save(fig, dest, name)
        side = Path(dest) / f"{name}.txt"
        side.write_text(text + "\n")
        paths.append(side)
    return paths


# --- ablation sweeps ----------------------------------------------------------------------

ABLATION_METRICS = ("clean", "pgd20", "aa")


def ablation_points(out: Path, param: str, checkpoint: str = "best",
                    names: Names | None = None):
    """The ablation's numbers: one line per (section, method line, value of `param`, metric)
    with the mean and sample std (in %) over seeds, and the seed count. Only lines that
    swept `param` over two values or more; a hyper-parameter nothing swept is an error."""
    import pandas as pd

    from bench.core.store import Store
    from bench.report.aggregate import current

    df, _ = current(Store(out).frame())
    configs = list(df["config"]) if "config" in df else []
    values = [c.get("params", {}).get(param) if isinstance(c, dict) else None for c in configs]
    df = df.assign(value=[tuple(v) if isinstance(v, list) else v for v in values]) \
        if len(df) else df
    if len(df):
        df = df[df["value"].notna() & (df["checkpoint"] == checkpoint)]
    if len(df):
        df = df.assign(label=_line_labels(list(df["config"]), drop=param, names=names))
        swept = df.groupby(["dataset", "arch", "label"])["value"].transform("nunique")
        df = df[swept > 1]
    if not len(df):
        known = sorted({k for c in configs if isinstance(c, dict) for k in c.get("params", {})})
        raise BenchError(f"no stored {checkpoint!r} rows sweep hyper-parameter {param!r} over "
                         f"two values or more (hyper-parameters: {', '.join(known) or 'none'})")
    lines = []
    for m in [m for m in ABLATION_METRICS if m in df and df[m].notna().any()]:
        for key, g in df.dropna(subset=[m]).groupby(["dataset", "arch", "label", "method",
                                                     "value"], sort=True):
            vals = 100 * g[m].astype(float)
            lines.append(dict(zip(["dataset", "arch", "label", "method", "value"], key,
                                  strict=True), metric=m, mean=vals.mean(),
                              std=vals.std() if len(vals) > 1 else float("nan"),
                              seeds=g["seed"].nunique()))
    return pd.DataFrame(lines)


@figure("ablation", "accuracy (%) against a swept hyper-parameter (--param P; --checkpoint, "
                    "default best), mean ± std over seeds, one line per method and setup")
def ablation_figure(out: Path, dest: Path, param: str | None = None,
                    checkpoint: str = "best", names: Names | None = None) -> list[Path]:
    if not param:
        raise BenchError("bench plot ablation needs --param P (the swept hyper-parameter)")
    pts = ablation_points(out, param, checkpoint, names)
    plt, _ = _plt()
    paths = []
    for (dataset, arch), sec in pts.groupby(["dataset", "arch"], sort=True):
        metrics = [m for m in ABLATION_METRICS if m in set(sec["metric"])]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool)
                      for v in sec["value"])
        order = sorted(set(sec["value"]), key=lambda v: (v if numeric else str(v)))
        colors = method_colors(sorted(set(sec["method"])))
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.5),
                                 squeeze=False)
        for ax, m in zip(axes[0], metrics, strict=True):
            for label, g in sec[sec["metric"] == m].groupby("label", sort=True):
                g = g.set_index("value").reindex([v for v in order if v in set(g["value"])])
                x = list(g.index) if numeric else [order.index(v) for v in g.index]
                ax.errorbar(x, g["mean"], yerr=g["std"].fillna(0), capsize=3, marker="o",
                            color=colors[g["method"].iloc[0]], label=label)
            if numeric and min(order) > 0 and max(order) / min(order) >= 10:
                ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(range(len(order)), [str(v) for v in order])
            ax.set_xlabel(param)
            ax.set_ylabel(f"{LABELS.get(m, m)} accuracy (%)")
            ax.set_title(f"{LABELS.get(m, m)} ({checkpoint} checkpoint)", fontsize=10)
        lo, hi = int(sec["seeds"].min()), int(sec["seeds"].max())
        per = f"{lo}" if lo == hi else f"{lo}–{hi}"
        fig.suptitle(f"{dataset} / {arch}: ablation of {param}; "
                     + (f"error bars: std over {per} seeds per point" if hi > 1
                        else "one seed per point: no error bars"), fontsize=11)
        axes[0][-1].legend(bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
        fig.tight_layout()
        paths += _save(fig, dest, stem(f"ablation_{param}", dataset, arch, checkpoint))
    return paths

