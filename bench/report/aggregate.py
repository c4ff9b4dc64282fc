"""Tables from the results store: mean (and std over seeds) per cell, as rich / markdown / LaTeX.

pandas is imported here only, so training and `bench perf` need torch alone.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bench.eval.evaluate import ALL_ATTACKS, PER_CLASS

if TYPE_CHECKING:
    import pandas as pd

TEXT_COLUMNS = ("method", "preset", "dataset", "arch", "checkpoint")
LABELS = {"clean": "Clean", "fgsm": "FGSM", "pgd20": "PGD-20", "pgd20s": "PGD-20 (0.003)",
          "cw": "CW-inf", "aa": "AutoAttack"}
CHECKPOINT_ORDER = {"best": 0, "last": 1, "swa_best": 2, "swa_last": 3}
# The worst class's accuracy under an attack (`bench table --worst`); its image count is the
# attack's.
WORST = tuple(f"{a}_worst" for a in PER_CLASS)
LABELS.update({f"{a}_worst": f"{LABELS[a]} worst class" for a in PER_CLASS})


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no `tabulate` dependency)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def rich_table(table: pd.DataFrame, title: str = "bench results"):
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(title))  # literal: a label may hold brackets
    for c in table.columns:
        t.add_column(str(c), justify="left" if c in TEXT_COLUMNS else "right")
    for _, r in table.iterrows():  # markdown's **bold** becomes rich bold
        t.add_row(*(Text.from_markup(str(r[c]).replace("[", r"\[").replace("**", "[b]", 1)
                                     .replace("**", "[/b]", 1)) for c in table.columns))
    return t


# --- the paper-style report (run_all.py): numeric aggregates, sections, markdown, LaTeX -------

SECTION = ["dataset", "arch"]
# A table line: runs of different lengths (epochs) never average together.
GROUP = ["method", "preset", "dataset", "arch", "epochs", "checkpoint"]
MAIN_METRICS = ("clean", "fgsm", "pgd20", "cw", "aa")  # the paper table and the bar chart
NESTED = ("config", "versions")


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with every column the report reads: absent keys become "?", metrics numbers."""
    import pandas as pd

    df = df.copy()
    for k in [*GROUP, "seed", "eps", "cell_id"]:
        if k not in df:
            df[k] = pd.NA
    for k in ("method", "preset", "dataset", "arch", "checkpoint", "cell_id"):
        df[k] = df[k].astype("object").where(df[k].notna(), "?").astype(str)
    for k in ("epochs", "seed", "eps", "train_seconds", "eval_seconds", *ALL_ATTACKS, *WORST,
              *(f"n_{m}" for m in ALL_ATTACKS)):
        if k in df:
            df[k] = pd.to_numeric(df[k], errors="coerce")
    df["epochs"] = df["epochs"].fillna(-1).astype(int)
    df["setup"] = (df["config"].map(setup_key) if "config" in df else "")
    return df


def _flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat_config(v, f"{prefix}{k}."))
        elif v is not None:  # a key added later with a None default changes nothing
            out[f"{prefix}{k}"] = v
    return out


def setup_key(config: Any) -> str:
    """A cell's configuration without its seed (None-valued keys dropped), as JSON text."""
    if not isinstance(config, dict):
        return ""
    flat_cfg = _flat_config({k: v for k, v in config.items() if k != "seed"})
    return json.dumps(flat_cfg, sort_keys=True, default=str)


def current(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows to report, superseded rows): of cells that repeat the same setup and seed
    (e.g. retrained after the cell id changed with the code), only the newest cell is kept.
    """
    df = prepare(df)
    if df.empty:
        return df, df
    created = df["created"].astype(str) if "created" in df else ""
    cells = (df.assign(_c=created).groupby("cell_id", sort=False)
             .agg(_c=("_c", "max"), **{k: (k, "first") for k in
                                       [*GROUP[:5], "seed", "setup"]}))
    cells = cells.sort_values("_c", kind="stable")
    old = cells.index[cells.duplicated([*GROUP[:5], "seed", "setup"], keep="last")]
    gone = df["cell_id"].isin(old) & (df["cell_id"] != "?")
    return df[~gone], df[gone]


def sections(df: pd.DataFrame):
    """((dataset, arch), rows) per section of the report, in a stable order."""
    for key, g in df.groupby(SECTION, sort=True, dropna=False):
        yield tuple(key), g


def labels(df: pd.DataFrame) -> pd.Series:
    """A display name per row: the method, plus the preset / epochs where a section mixes them."""
    out = df["method"].astype(str)
    if df["preset"].nunique() > 1:
        out = out + " [" + df["preset"].astype(str) + "]"
    if df["epochs"].nunique() > 1:
        out = out + " (" + df["epochs"].astype(str) + " ep)"
    if "setup" not in df:
        return out
    for _, g in df.groupby(out, sort=False):  # one method, several setups: name the diffs
        setups = [x for x in g["setup"].unique() if x]
        if len(setups) < 2:
            continue
        cfgs = {x: json.loads(x) for x in setups}
        keys = sorted({k for c in cfgs.values() for k in c
                       if len({json.dumps(c2.get(k), default=str) for c2 in cfgs.values()}) > 1
                       and k != "params.epochs"})
        for x, c in cfgs.items():
            diff = ", ".join(f"{k.rsplit('.', 1)[-1]}={c.get(k, '-')}" for k in keys)
            idx = g.index[g["setup"] == x]
            out.loc[idx] = out.loc[idx] + " {" + (diff[:40] + "…" if len(diff) > 40 else diff) + "}"
    return out


def aggregate(df: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """Numeric mean / std (in %) / count over seeds of every metric, one line per `keys`.

    Columns: keys, `label`, `seeds`, and per metric m present: `m` (mean), `m_std` (NaN
    with one value), `m_count` (how many seeds measured it) and `n_m` (images, the
    smallest count when rows differ, `n_m_max` the largest).
    """
    import pandas as pd

    keys = keys or GROUP
    df = prepare(df)
    if df.empty:
        return pd.DataFrame()
    df = df.assign(label=labels(df))
    metrics = [m for m in (*ALL_ATTACKS, *WORST) if m in df and df[m].notna().any()]
    rows = []
    for key, g in df.groupby([*keys, "label"], sort=False, dropna=False):
        row = dict(zip([*keys, "label"], key, strict=True))
        row["seeds"] = g["seed"].nunique()
        row["seed_list"] = sorted(int(s) for s in g["seed"].dropna().unique())
        row["duplicates"] = int(g.duplicated("seed").sum())
        row["eps"] = g["eps"].iloc[0] if g["eps"].nunique() <= 1 else float("nan")
        row["devices"] = sorted(g["device"].dropna().astype(str).unique()) \
            if "device" in g else []
        for col in ("train_seconds", "eval_seconds"):  # per cell / per checkpoint, mean
            row[col] = g[col].mean() if col in g else float("nan")
        for m in metrics:
            vals = g[m].dropna() * 100
            row[m] = vals.mean() if len(vals) else float("nan")
            row[f"{m}_std"] = vals.std() if len(vals) > 1 else float("nan")
            row[f"{m}_count"] = len(vals)
            nk = f"n_{m.removesuffix('_worst')}"
            n = g.loc[g[m].notna(), nk].dropna() if nk in g else pd.Series([])
            row[f"n_{m}"] = int(n.min()) if len(n) else pd.NA
            row[f"n_{m}_max"] = int(n.max()) if len(n) else pd.NA
        rows.append(row)
    out = pd.DataFrame(rows)
    if "checkpoint" in out:
        order = out["checkpoint"].map(CHECKPOINT_ORDER).fillna(9)
        out = (out.assign(_o=order).sort_values([*SECTION, "label", "_o"], kind="stable")
               .drop(columns="_o").reset_index(drop=True))
    return out


def metrics_of(agg: pd.DataFrame, wanted: tuple[str, ...] = ALL_ATTACKS) -> list[str]:
    """The metrics of `wanted` that hold at least one number in `agg`."""
    return [m for m in wanted if m in agg and agg[m].notna().any()]


def cell_text(r: pd.Series, m: str, seeds: int) -> str:
    """'mean ± std'; marks numbers measured on fewer seeds than the line."""
    if m not in r or r[m] != r[m]:  # NaN: not measured
        return "–"
    text = f"{r[m]:.2f}"
    if r[f"{m}_count"] > 1:
        text += f" ± {r[f'{m}_std']:.2f}"
    if r[f"{m}_count"] < seeds:
        text += f" ({r[f'{m}_count']}/{seeds} seeds)"
    return text


def image_counts(agg: pd.DataFrame, m: str) -> str:
    """'360' or '20–100' images behind metric m in a table."""
    lo, hi = agg[f"n_{m}"].dropna(), agg[f"n_{m}_max"].dropna()
    if lo.empty:
        return "?"
    a, b = int(lo.min()), int(hi.max())
    return f"{a}" if a == b else f"{a}–{b}"


def best_means(agg: pd.DataFrame, metrics: list[str]) -> dict[tuple[str, str], float]:
    """The best mean of each (metric, checkpoint) that two or more lines measured: what a
    paper table sets in bold (a line alone in its checkpoint is best of nothing)."""
    return {(m, ck): g[m].max() for m in metrics for ck, g in agg.groupby("checkpoint")
            if g[m].notna().sum() > 1}


def is_best(r: pd.Series, m: str, best: dict[tuple[str, str], float]) -> bool:
    b = best.get((m, r["checkpoint"]))
    return b is not None and r[m] == r[m] and abs(r[m] - b) < 1e-9


def margins(agg: pd.DataFrame, metrics: list[str], ours: str | None = None
            ) -> tuple[str, str, dict[str, float]] | None:
    """The paper's "+x / +y": on the main checkpoint, `ours` (default: the best line of
    each column) minus the best line of any other method. (checkpoint, label, {metric: x})."""
    if agg.empty or agg["method"].nunique() < 2:
        return None
    have = sorted(agg["checkpoint"].unique(), key=lambda c: CHECKPOINT_ORDER.get(c, 9))
    g = agg[agg["checkpoint"] == have[0]]
    out = {}
    for m in metrics:
        col = g.dropna(subset=[m])
        if col["method"].nunique() < 2:
            continue
        me = ours if ours is not None else col.loc[col[m].idxmax(), "method"]
        mine, others = col[col["method"] == me], col[col["method"] != me]
        if not mine.empty:
            out[m] = mine[m].max() - others[m].max()
    who = ours or "best method"
    return (have[0], f"margin: {who} − best other", out) if out else None


def _hours_label(agg: pd.DataFrame) -> str:
    """'GPU-h/cell' when every line trained on a GPU, else what the devices were."""
    devices = {d for ds in agg["devices"] for d in ds} if "devices" in agg else set()
    if devices and not any(d.startswith("cpu") for d in devices):
        return "GPU-h/cell"
    return "CPU-h/cell" if devices and all(d.startswith("cpu") for d in devices) \
        else "device-h/cell"


def paper_table(agg: pd.DataFrame, bold: bool = False, hours: bool = False,
                ours: str | None = None, metrics: list[str] | None = None) -> pd.DataFrame:
    """One section's lines as strings: method, checkpoint, epochs, seeds, metric columns.

    Image counts are folded into the headers ("PGD-20 (n=360)"); dataset / arch are the
    section's title, so they are left out. `bold`: the best mean of each column and
    checkpoint as **markdown bold**, and a last line with the margin of `ours` (or of each
    column's best method) over the best other method. `hours`: training time per cell.
    """
    import pandas as pd

    metrics = metrics or metrics_of(agg)
    best = best_means(agg, metrics)
    heads = {m: f"{LABELS.get(m, m)} (n={image_counts(agg, m)})" for m in metrics}
    lines = []
    for _, r in agg.iterrows():
        line = {"method": r["label"], "checkpoint": r["checkpoint"], "epochs": r["epochs"],
                "seeds": r["seeds"] if r["seeds"] != 1 else "1 (no std)"}
        for m in metrics:
            text = cell_text(r, m, r["seeds"])
            if bold and is_best(r, m, best):
                mean = f"{r[m]:.2f}"
                text = text.replace(mean, f"**{mean}**", 1)
            line[heads[m]] = text
        for col, name in (("train_seconds", "train (s)"), ("eval_seconds", "eval (s)")):
            t = r.get(col, float("nan"))
            line[name] = "–" if t != t else f"{t:.1f}" if t < 100 else f"{t:.0f}"
        if hours:
            t = r.get("train_seconds", float("nan"))
            line[_hours_label(agg)] = "–" if t != t else f"{t / 3600:.3g}"
        lines.append(line)
    table = pd.DataFrame(lines)
    margin = margins(agg, metrics, ours) if bold else None
    if margin is not None and not table.empty:
        ck, label, vals = margin
        extra = {c: "" for c in table.columns}
        extra.update({"method": label, "checkpoint": ck})
        extra.update({heads[m]: f"{v:+.2f}" for m, v in vals.items()})
        table = pd.concat([table, pd.DataFrame([extra])], ignore_index=True)
    return table


def fmt_eps(eps: float) -> str:
    """0.1 -> '0.1'; 8/255 -> '8/255 (0.0314)'."""
    if eps != eps:
        return "mixed"
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}/255 ({eps:.4f})"
    return f"{eps:g}"


def how_measured(rows: pd.DataFrame) -> str:
    """The protocol behind a section's numbers, from its rows, as a markdown paragraph."""
    rows = prepare(rows)
    eps_vals = sorted(rows["eps"].dropna().unique())
    eps_text = ", ".join(fmt_eps(e) for e in eps_vals) or "unknown"
    eps = eps_vals[0] if len(eps_vals) == 1 else None
    step = f"{eps / 4:.4g}" if eps else "eps/4"
    small = f"{0.003 * eps / (8 / 255):.4g}" if eps else "0.003 scaled with eps"
    seeds = sorted(int(s) for s in rows["seed"].dropna().unique())
    epochs = sorted(int(e) for e in rows["epochs"].unique() if e >= 0)
    selects = set()
    if "config" in rows:
        selects = {c.get("select") for c in rows["config"] if isinstance(c, dict)} - {None}
    select = "/".join(sorted(selects)) or "test"
    if len(seeds) > 1:
        seed_text = (f"mean ± sample std over seeds {', '.join(map(str, seeds))} (a line "
                     f"marked 'k/n seeds' has that number from k of its n seeds only)")
    else:
        seed_text = f"from seed {seeds[0] if seeds else '?'} (a single seed: no std)"
    devices = ", ".join(sorted(map(str, rows["device"].dropna().unique()))) \
        if "device" in rows else ""
    aa = rows["n_aa"].dropna() if "n_aa" in rows else []
    aa_text = ""
    if len(aa):
        lo, hi = int(min(aa)), int(max(aa))
        aa_text = (f" AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square, through "
                   f"`pyautoattack`) runs on a fixed, seeded subset of "
                   f"{lo if lo == hi else f'{lo}–{hi}'} test images.")
    return (
        f"**How measured.** White-box L∞ attacks at eps = {eps_text} on test images in "
        f"[0, 1], models in eval mode: FGSM (one step of size eps, no random start), PGD-20 "
        f"(uniform random start, step eps/4 = {step}), PGD-20 (0.003) (the same with RSLAD's "
        f"small step, 0.003 at 8/255, here {small}), CW-inf (PGD-30 on the CW margin loss, "
        f"step eps/4).{aa_text} Accuracies are in %, {seed_text}; `n=` in a header is "
        f"the number of test images behind each number of that column; times are per cell "
        f"(train) and per checkpoint (eval, all attacks), in seconds on "
        f"{devices or 'an unrecorded device'}. Training: {', '.join(map(str, epochs)) or '?'} "
        f"epochs; `best` is the epoch with the highest PGD-10 accuracy on the {select} split, "
        f"`last` the final epoch, `swa_*` their stochastic weight averages (when the method "
        f"uses SWA).")


def flat(df: pd.DataFrame) -> pd.DataFrame:
    """Every row flat for CSV: nested dicts become dotted columns, lists '; '-joined text."""
    import pandas as pd

    if df.empty:
        return df
    nested = [c for c in NESTED if c in df]
    parts = [df.drop(columns=nested).reset_index(drop=True)]
    for c in nested:
        vals = [v if isinstance(v, dict) else {} for v in df[c]]
        parts.append(pd.json_normalize(vals, sep=".").add_prefix(f"{c}."))
    out = pd.concat(parts, axis=1)
    first = [*GROUP[:4], "seed", "epochs", "checkpoint", "eps", *ALL_ATTACKS,
             *(f"n_{m}" for m in ALL_ATTACKS)]
    first = [c for c in first if c in out]
    out = out[first + [c for c in out.columns if c not in first]]
    for c in out.columns:
        if out[c].map(lambda v: isinstance(v, list | tuple | dict)).any():
            out[c] = out[c].map(lambda v: "; ".join(map(str, v)) if isinstance(v, list | tuple)
                                else (str(v) if isinstance(v, dict) else v))
    return out


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
        "−": r"$-$", "±": r"$\pm$", "–": "--", "…": r"\ldots{}"}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def latex(agg: pd.DataFrame, caption: str, ours: str | None = None,
          metrics: list[str] | None = None) -> str:
    """A booktabs tabular: one line per method, mean $\\pm$ std and the seed count, the
    best mean per column bold, and the margin of `ours` (or the best) over the best other."""
    metrics = metrics or metrics_of(agg, MAIN_METRICS)
    best = best_means(agg, metrics)
    lines = [f"% {caption}", r"\begin{tabular}{lc" + "c" * len(metrics) + "}", r"\toprule",
             " & ".join(["Method", "Seeds", *(tex_escape(LABELS.get(m, m)) for m in metrics)])
             + r" \\", r"\midrule"]
    partial = False
    for _, r in agg.iterrows():
        cells = [tex_escape(r["label"]), str(r["seeds"])]
        for m in metrics:
            if r[m] != r[m]:
                cells.append("--")
                continue
            text = f"{r[m]:.2f}"
            if is_best(r, m, best):
                text = rf"\textbf{{{text}}}"
            if r[f"{m}_count"] > 1:
                text += rf" $\pm$ {r[f'{m}_std']:.2f}"
            if r[f"{m}_count"] < r["seeds"]:
                text += r"$^\dagger$"
                partial = True
            cells.append(text)
        lines.append(" & ".join(cells) + r" \\")
    margin = margins(agg, metrics, ours)
    if margin is not None:
        _, label, vals = margin
        lines.append(r"\midrule")
        lines.append(" & ".join([tex_escape(label), "",
                                 *(f"{vals[m]:+.2f}" if m in vals else "" for m in metrics)])
                     + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if partial:
        lines.append(r"% $^\dagger$: measured on fewer seeds than the line's other numbers")
    return "\n".join(lines)
