"""Tables from the results store: mean (and std over seeds) per cell, as rich / markdown / LaTeX.

pandas is imported here only, so training and `bench perf` need torch alone.
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import BenchError
from bench.eval.evaluate import ALL_ATTACKS, PER_CLASS
from bench.report.stats import MIN_CLASS_IMAGES, SUBSET, accuracy_interval

CORRUPTION_PAIRING = ("corruption_acc", "corruption_images")  # what the paired tests need

if TYPE_CHECKING:
    import pandas as pd

TEXT_COLUMNS = ("method", "preset", "dataset", "arch", "checkpoint")
LABELS = {"clean": "Clean", "fgsm": "FGSM", "pgd20": "PGD-20", "pgd20s": "PGD-20 (0.003)",
          "cw": "CW-inf", "aa": "AutoAttack", "pgd20_l2": "PGD-20 L2", "aa_l2": "AutoAttack L2",
          "corruptions": "Corruptions (mean)"}
CHECKPOINT_ORDER = {"best": 0, "last": 1, "swa_best": 2, "swa_last": 3}
# The worst class's accuracy under an attack (`bench table --worst`); its image count is the
# attack's.
WORST = tuple(f"{a}_worst" for a in PER_CLASS)
LABELS.update({f"{a}_worst": f"{LABELS[a]} worst class" for a in PER_CLASS})
# When AutoAttack ran on a subset, these attacks are shown on its images too (like with like),
# and `robust`, every attack at once per image, is on them as well.
LABELS.update({m: f"{LABELS[m.removesuffix('_on_aa')]} on AA's images" for m in SUBSET})
LABELS["robust"] = "Worst case"
# The opt-in threat models' columns (L2, common corruptions) come last, where measured.
OPT_IN_METRICS = ("pgd20_l2", "aa_l2", "corruptions")
TABLE_METRICS = ("clean", "fgsm", "pgd20", "pgd20s", "cw", *SUBSET, "aa", "robust",
                 *OPT_IN_METRICS)
STALE = " (stale code)"  # a label's mark: rows made by other code of their method
SYNTHETIC = " (synthetic data)"  # rows measured on bench.data.fake's random files


def count_key(m: str) -> str:
    """The row field holding how many images metric `m` was measured on."""
    if m in SUBSET:
        return "n_on_aa"
    return f"n_{m.removesuffix('_worst')}"


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no `tabulate` dependency); a `|` in a cell is
    escaped."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(str(r[c]).replace("|", r"\|") for c in cols) + " |")
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


# --- display names ---------------------------------------------------------------------------

Names = Mapping[str, str]  # method id -> display name, a run's overrides (`--names`)


def display_name(method: str, names: Names | None = None) -> str:
    """How tables and figures name `method`: the run's override (`--names`), else the
    `display_name` its own Distiller class declares (not one inherited from a parent class),
    else its registered name. A method no longer installed shows its id."""
    if names and method in names:
        return names[method]
    from bench.core import registry

    try:
        cls = registry.get(method)
    except BenchError:
        return method
    return cls.__dict__.get("display_name") or method


def parse_names(values: str | Iterable[str] | None, known: Iterable[str] | None = None
                ) -> dict[str, str]:
    """`--names` values as {method: display name}: each value a comma list of METHOD=NAME
    (a NAME may be quoted, as an experiment file's `names = {peeraid = "PeerAiD-ours"}`
    hands it over). With `known`, a METHOD outside it is a one-line error."""
    if values is None:
        return {}
    if isinstance(values, str):
        values = [values]
    out: dict[str, str] = {}
    for value in values:
        for item in _pairs(value):
            method, eq, name = (x.strip() for x in item.partition("="))
            if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
                with contextlib.suppress(ValueError, SyntaxError):
                    name = str(ast.literal_eval(name))
            if not eq or not method or not name:
                raise BenchError(f"--names takes METHOD=NAME pairs (e.g. peeraid=PeerAiD-ours), "
                                 f"got {item.strip()!r}")
            out[method] = name
    if known is not None:
        from bench.core.suggest import unknown

        known = set(known)
        for method in out:
            if method not in known:
                raise unknown("method in --names", method, known)
    return out


def _pairs(text: str) -> list[str]:
    """'a=X,b="Y, z=1"' -> ['a=X', 'b="Y, z=1"']: split at the commas outside quotes that
    start another METHOD=."""
    items, cur, quote = [], "", ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"" and cur.partition("=")[2].strip() == "":
            quote = ch
        elif ch == "," and re.match(r"\s*[\w.-]+\s*=", text[i + 1:]):
            items.append(cur)
            cur = ""
            continue
        cur += ch
    return [x for x in [*items, cur] if x.strip()]


def known_methods(out: str | Path | None = None) -> set[str]:
    """Every registered method, and every method with rows stored under `out`."""
    from bench.core import registry

    have = set(registry.names())
    if out is not None:
        from bench.core.store import Store

        have |= {str(r.get("method")) for r in Store(out).read()[0]}
    return have


# --- the paper-style report (run_all.py): numeric aggregates, sections, markdown, LaTeX -------

SECTION = ["dataset", "arch"]
# A table line: runs of different lengths (epochs) never average together.
GROUP = ["method", "preset", "dataset", "arch", "epochs", "checkpoint"]
MAIN_METRICS = ("clean", "fgsm", "pgd20", "cw", "aa")  # the bar chart
LATEX_METRICS = ("clean", "fgsm", "pgd20", "cw", *SUBSET, "aa", "robust",
                 *OPT_IN_METRICS)  # results.tex


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
              *SUBSET, "robust", "n_on_aa", "n_robust", *(f"n_{m}" for m in ALL_ATTACKS)):
        if k in df:
            df[k] = pd.to_numeric(df[k], errors="coerce")
    df["epochs"] = df["epochs"].fillna(-1).astype(int)
    df["setup"] = (df["config"].map(setup_key) if "config" in df else "")
    df["stale_code"] = stale_code(df)
    df["synthetic_data"] = (df["synthetic_data"].fillna(False).astype(bool)
                            if "synthetic_data" in df else False)
    counts = df["per_class_n"] if "per_class_n" in df else pd.Series(None, index=df.index)
    for w in WORST:  # a worst class of too few images is noise: withheld
        if w in df:
            attack = w.removesuffix("_worst")
            df.loc[[_few_per_class(n, attack) for n in counts], w] = float("nan")
    return df


def _few_per_class(counts: Any, attack: str) -> bool:
    """Whether a row's smallest class under `attack` has under MIN_CLASS_IMAGES images (or
    its counts were not recorded)."""
    return not isinstance(counts, dict) or attack not in counts \
        or min(counts[attack]) < MIN_CLASS_IMAGES


def stale_code(df: pd.DataFrame) -> pd.Series:
    """Per row, whether it records a fingerprint of its method's code other than the installed
    code's. Rows made before bench recorded fingerprints (none) and methods no longer
    installed are not marked."""
    import pandas as pd

    from bench.core import registry
    from bench.core.fingerprint import fingerprint

    now = {}
    for m in df["method"].unique():
        try:
            now[m] = fingerprint(registry.get(m))["sha256"]
        except BenchError:
            now[m] = None
    code = df["code"] if "code" in df else pd.Series(None, index=df.index)
    then = [c.get("sha256") if isinstance(c, dict) else None for c in code]
    return pd.Series([now[m] is not None and t is not None and t != now[m]
                      for m, t in zip(df["method"], then, strict=True)], index=df.index)


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


def labels(df: pd.DataFrame, names: Names | None = None) -> pd.Series:
    """A display label per row: the method's display name (`display_name`), plus the preset
    / epochs where a section mixes them, and the differing settings of one method's setups."""
    shown = {m: display_name(m, names) for m in df["method"].astype(str).unique()}
    out = df["method"].astype(str).map(shown)
    if "stale_code" in df:
        out = out.where(~df["stale_code"].astype(bool), out + STALE)
    if "synthetic_data" in df:
        out = out.where(~df["synthetic_data"].astype(bool), out + SYNTHETIC)
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
            idx = g.index[g["setup"] == x]
            shown = {k: _named(g.loc[idx], k, c.get(k, "-")) for k in keys}
            diff = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in shown.items())
            out.loc[idx] = out.loc[idx] + " {" + (diff[:40] + "…" if len(diff) > 40 else diff) + "}"
    return out


def _named(rows: pd.DataFrame, key: str, value: Any) -> Any:
    """A setting as a label shows it: a teacher by the name its rows record (the spec a
    --teachers item gives, not its hashed id)."""
    col = f"{key}_name"
    if key in ("teacher", "clean_teacher") and col in rows and rows[col].notna().any():
        return str(rows[col].dropna().iloc[0]).removeprefix("train:")
    return value


def aggregate(df: pd.DataFrame, keys: list[str] | None = None, names: Names | None = None
              ) -> pd.DataFrame:
    """Numeric mean / std (in %) / count over seeds of every metric, one line per `keys`.

    Columns: keys, `label` (`labels`, with the display names and `names`' overrides),
    `m_lo` / `m_hi` (the 95 % interval: bench.report.stats.accuracy_interval),
    `name` (the method's display name), `seeds`, and per metric m present: `m` (mean), `m_std` (NaN
    with one value), `m_count` (how many seeds measured it) and `n_m` (images, the
    smallest count when rows differ, `n_m_max` the largest).
    """
    import pandas as pd

    keys = keys or GROUP
    df = prepare(df)
    if df.empty:
        return pd.DataFrame()
    df = df.assign(label=labels(df, names))
    metrics = [m for m in (*ALL_ATTACKS, *SUBSET, "robust", *WORST)
               if m in df and df[m].notna().any()]
    kept = [c for c in dict.fromkeys(("seed", "outcomes", "test_images", *CORRUPTION_PAIRING,
                                      *(count_key(m) for m in metrics))) if c in df]
    rows = []
    for key, g in df.groupby([*keys, "label"], sort=False, dropna=False):
        row = dict(zip([*keys, "label"], key, strict=True))
        row["name"] = display_name(str(g["method"].iloc[0]), names)
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
            nk = count_key(m)
            n = g.loc[g[m].notna(), nk].dropna() if nk in g else pd.Series([])
            row[f"n_{m}"] = int(n.min()) if len(n) else pd.NA
            row[f"n_{m}_max"] = int(n.max()) if len(n) else pd.NA
            row[f"{m}_lo"], row[f"{m}_hi"] = accuracy_interval(
                list(vals), int(n.min()) if len(n) else None)
            if m in WORST and "per_class_n" in g:  # the fewest images a class had
                attack = m.removesuffix("_worst")
                least = [min(c[attack]) for c in g.loc[g[m].notna(), "per_class_n"]
                         if isinstance(c, dict) and attack in c]
                row[f"{m}_class_n"] = min(least) if least else pd.NA
        row["outcome_rows"] = g[kept].to_dict("records") if "outcomes" in g else []
        rows.append(row)
    out = pd.DataFrame(rows)
    if "checkpoint" in out:
        order = out["checkpoint"].map(CHECKPOINT_ORDER).fillna(9)
        out = (out.assign(_o=order).sort_values([*SECTION, "label", "_o"], kind="stable")
               .drop(columns="_o").reset_index(drop=True))
    return out


def metrics_of(agg: pd.DataFrame, wanted: tuple[str, ...] = TABLE_METRICS) -> list[str]:
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


ALPHA = 0.05  # a best mean is bold when its test against the runner-up gives p below this


@dataclass(frozen=True)
class Best:
    """A column's best mean at one checkpoint, and whether it beats the runner-up: `p` of
    McNemar's exact test (one seed) or a t-test over seeds, on the same images (None when
    they were not); below ALPHA the best is bold, else it ties with `tied`: the lines not
    significantly below it (or not testable against it), itself included."""

    value: float
    label: str
    p: float | None
    tied: frozenset[str] = frozenset()

    @property
    def win(self) -> bool:
        return self.p is not None and self.p < ALPHA


def column_head(agg: pd.DataFrame, m: str) -> str:
    """'PGD-20 (n=360)'; a worst class also says how few images its smallest class had."""
    head = f"{LABELS.get(m, m)} (n={image_counts(agg, m)}"
    least = agg[f"{m}_class_n"].dropna() if f"{m}_class_n" in agg else []
    return head + (f", ≥{int(least.min())} a class)" if len(least) else ")")


def best_means(agg: pd.DataFrame, metrics: list[str]) -> dict[tuple[str, str], Best]:
    """The best line of each (metric, checkpoint) that two or more lines measured (a line
    alone in its checkpoint is best of nothing), tested against the runner-up."""
    from bench.report.stats import line_test

    out = {}
    for m in metrics:
        for ck, g in agg.groupby("checkpoint"):
            g = g[g[m].notna()].sort_values(m, ascending=False, kind="stable")
            if len(g) < 2:
                continue
            first, others = g.iloc[0], [r for _, r in g.iloc[1:].iterrows()]
            mine = first.get("outcome_rows") or []
            tests = [line_test(mine, r.get("outcome_rows") or [], m) for r in others]
            tied = {first["label"], *(r["label"] for r, p in zip(others, tests, strict=True)
                                      if p is None or p >= ALPHA)}
            out[(m, ck)] = Best(first[m], first["label"], tests[0], frozenset(tied))
    return out


def is_best(r: pd.Series, m: str, best: dict[tuple[str, str], Best]) -> bool:
    """Whether line `r` holds its column's best mean and beats the runner-up significantly."""
    b = best.get((m, r["checkpoint"]))
    return b is not None and b.win and r["label"] == b.label


def tie_mark(r: pd.Series, m: str, best: dict[tuple[str, str], Best]) -> str:
    """"≈" on a column's best and every line not significantly below it, when the best does
    not beat the runner-up."""
    b = best.get((m, r["checkpoint"]))
    return " ≈" if b is not None and not b.win and r["label"] in b.tied else ""


BOLD_NOTE = ("Bold: a column's best mean (per checkpoint), significantly better than the "
             "runner-up: McNemar's exact test on the same test images with one seed, a t-test "
             f"of the per-seed differences with more, p < {ALPHA}; otherwise ≈ marks the best "
             "and every line not significantly below it (or not measured on the same images).")


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
    who = "best method"
    if ours is not None:
        mine = agg.loc[agg["method"] == ours, "name"] if "name" in agg else []
        who = mine.iloc[0] if len(mine) else display_name(ours)
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
    heads = {m: column_head(agg, m) for m in metrics}
    lines = []
    for _, r in agg.iterrows():
        line = {"method": r["label"], "checkpoint": r["checkpoint"], "epochs": r["epochs"],
                "seeds": r["seeds"] if r["seeds"] != 1 else "1 (no std)"}
        for m in metrics:
            text = cell_text(r, m, r["seeds"])
            if bold and is_best(r, m, best):
                mean = f"{r[m]:.2f}"
                text = text.replace(mean, f"**{mean}**", 1)
            elif bold:
                text += tie_mark(r, m, best)
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
    """0.1 -> '0.1'; 8/255 -> '8/255 (0.0314)'; 0.2 (= 51/255) stays '0.2': a fraction of
    255 only where the decimal a user would type is not short."""
    if eps != eps:
        return "mixed"
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0 and len(repr(float(eps))) > 8:
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
    l2 = sorted(rows["eps_l2"].dropna().unique()) if "eps_l2" in rows else []
    if l2:
        aa_text += (f" L2 (opt-in): PGD-20-L2 (random start in the ball, step eps/4) and "
                    f"AutoAttack-L2 standard at eps = {', '.join(f'{e:.4g}' for e in l2)}.")
    if "corruptions" in rows and rows["corruptions"].notna().any():
        aa_text += (" Corruptions: the mean accuracy over the 15 common corruptions x 5 "
                    "severities of the published corrupted test sets (RobustBench's number).")
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


# Row fields that are accuracies (fractions in the rows): percent in results.csv, `_pct`.
PERCENT = (*ALL_ATTACKS, *WORST, "tutor_clean", "tutor_on_student", "tutor_on_self")
PERCENT_NESTED = ("per_class", "corruption_acc")  # {name: [accuracies]}: percent too


def _pct(v: Any) -> Any:
    """Fractions to percent, inside lists and dicts too (10 decimals: no float noise)."""
    if isinstance(v, dict):
        return {k: _pct(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_pct(x) for x in v]
    if isinstance(v, int | float) and not isinstance(v, bool):
        return round(v * 100, 10) if v == v else v
    return v


def to_json(v: Any) -> str:
    """A nested value as strict JSON text (NaN becomes null)."""
    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): clean(y) for k, y in x.items()}
        if isinstance(x, list | tuple):
            return [clean(y) for y in x]
        if isinstance(x, float) and x != x:
            return None
        return x

    return json.dumps(clean(v), default=str, allow_nan=False)


def flat(df: pd.DataFrame, names: Names | None = None) -> pd.DataFrame:
    """Every row for CSV, units in the column names: accuracies in percent as `<metric>_pct`
    (`n_<attack>`: the test images behind it), `per_class_pct` and every other nested field
    (config, versions, attack_seconds, aa_flags, ...) as JSON text; `label` is the line's
    label in the tables (display names, `names`' overrides)."""
    import pandas as pd

    if df.empty:
        return df
    df = df.reset_index(drop=True)
    if {"method", "dataset", "arch"} <= set(df.columns):
        parts = [labels(prepare(g), names) for _, g in df.groupby(SECTION, sort=False,
                                                                  dropna=False)]
        df = df.assign(label=pd.concat(parts).reindex(df.index))
    renamed = {}
    for c in df.columns:
        if c in PERCENT:
            df[c] = (pd.to_numeric(df[c], errors="coerce") * 100).round(10)
            renamed[c] = f"{c}_pct"
        elif c in PERCENT_NESTED:
            df[c] = df[c].map(_pct)
            renamed[c] = f"{c}_pct"
    df = df.rename(columns=renamed)
    for c in df.columns:
        if c.startswith("n_"):  # image counts: integers, empty where not measured
            df[c] = pd.to_numeric(df[c], errors="coerce").round().astype("Int64")
    for c in df.columns:
        if df[c].map(lambda v: isinstance(v, list | tuple | dict)).any():
            df[c] = df[c].map(lambda v: to_json(v) if isinstance(v, list | tuple | dict)
                              else v)
    first = ["method", "label", *GROUP[1:4], "seed", "epochs", "checkpoint", "eps",
             *(f"{m}_pct" for m in ALL_ATTACKS), *(f"n_{m}" for m in ALL_ATTACKS)]
    first = [c for c in first if c in df]
    return df[first + [c for c in df.columns if c not in first]]


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
        "−": r"$-$", "±": r"$\pm$", "–": "--", "…": r"\ldots{}"}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def latex(agg: pd.DataFrame, caption: str, ours: str | None = None,
          metrics: list[str] | None = None) -> str:
    """A booktabs tabular: one line per method and checkpoint, the seed count, mean $\\pm$ std
    per metric (the number of test images behind each column under its header), the best
    mean per column and checkpoint bold, and the margin of `ours` (or the best) over the best
    other."""
    metrics = metrics or metrics_of(agg, LATEX_METRICS)
    best = best_means(agg, metrics)
    lines = [f"% {caption}", r"\begin{tabular}{llc" + "c" * len(metrics) + "}", r"\toprule",
             " & ".join(["Method", "Checkpoint", "Seeds",
                         *(tex_escape(LABELS.get(m, m)) for m in metrics)]) + r" \\",
             " & ".join(["", "", "", *(f"($n$={tex_escape(image_counts(agg, m))})"
                                       for m in metrics)]) + r" \\", r"\midrule"]
    partial = False
    for _, r in agg.iterrows():
        cells = [tex_escape(r["label"]), tex_escape(r["checkpoint"]), str(r["seeds"])]
        for m in metrics:
            if r[m] != r[m]:
                cells.append("--")
                continue
            text = f"{r[m]:.2f}"
            if is_best(r, m, best):
                text = rf"\textbf{{{text}}}"
            elif tie_mark(r, m, best):
                text += r"$\approx$"
            if r[f"{m}_count"] > 1:
                text += rf" $\pm$ {r[f'{m}_std']:.2f}"
            if r[f"{m}_count"] < r["seeds"]:
                text += r"$^\dagger$"
                partial = True
            cells.append(text)
        lines.append(" & ".join(cells) + r" \\")
    margin = margins(agg, metrics, ours)
    if margin is not None:
        ck, label, vals = margin
        lines.append(r"\midrule")
        lines.append(" & ".join([tex_escape(label), tex_escape(ck), "",
                                 *(f"{vals[m]:+.2f}" if m in vals else "" for m in metrics)])
                     + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", "% " + BOLD_NOTE.replace("≈", r"$\approx$")]
    if partial:
        lines.append(r"% $^\dagger$: measured on fewer seeds than the line's other numbers")
    return "\n".join(lines)
