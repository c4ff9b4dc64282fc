"""Tables from the results store: mean (and std over seeds) per cell, as rich / markdown / CSV.

pandas is imported here only, so training and `bench perf` need torch alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.evaluate import ALL_ATTACKS

if TYPE_CHECKING:
    import pandas as pd

KEYS = ["method", "preset", "dataset", "arch", "checkpoint"]
LABELS = {"clean": "Clean", "fgsm": "FGSM", "pgd20": "PGD-20", "pgd20s": "PGD-20 (0.003)",
          "cw": "CW-inf", "aa": "AutoAttack"}
CHECKPOINT_ORDER = {"best": 0, "last": 1, "swa_best": 2, "swa_last": 3}


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One line per (method, preset, data set, arch, checkpoint): accuracies in %, seeds, n."""
    import pandas as pd

    if df.empty:
        return pd.DataFrame()
    metrics = [m for m in ALL_ATTACKS if m in df]
    rows = []
    for key, g in df.groupby(KEYS, sort=False, dropna=False):
        row = dict(zip(KEYS, key, strict=True))
        row["seeds"] = g["seed"].nunique()
        row["epochs"] = int(g["epochs"].max())
        for m in metrics:
            vals = g[m].dropna() * 100
            if vals.empty:
                row[LABELS[m]] = ""
                continue
            std = f" ± {vals.std():.2f}" if len(vals) > 1 else ""
            n = g[f"n_{m}"].dropna()
            row[LABELS[m]] = f"{vals.mean():.2f}{std}"
            row[f"n {LABELS[m]}"] = int(n.iloc[0]) if len(n) else ""
        rows.append(row)
    out = pd.DataFrame(rows)
    order = out["checkpoint"].map(CHECKPOINT_ORDER).fillna(9)
    return out.assign(_o=order).sort_values(["dataset", "arch", "method", "_o"]).drop(columns="_o")


def compact(table: pd.DataFrame) -> pd.DataFrame:
    """The summary with the per-metric image counts folded into the column headers."""
    counts = [c for c in table.columns if c.startswith("n ")]
    renames = {}
    for c in counts:
        metric = c[2:]
        vals = set(table[c].dropna())
        if len(vals) == 1:
            renames[metric] = f"{metric} (n={vals.pop()})"
    return table.drop(columns=[c for c in counts if c[2:] in renames]).rename(columns=renames)


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no `tabulate` dependency)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def rich_table(table: pd.DataFrame, title: str = "bench results"):
    from rich.table import Table

    t = Table(title=title)
    for c in table.columns:
        t.add_column(str(c), justify="right" if c not in KEYS else "left")
    for _, r in table.iterrows():
        t.add_row(*(str(r[c]) for c in table.columns))
    return t
