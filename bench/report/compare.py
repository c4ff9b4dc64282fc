"""`bench compare A B`: two methods, cells or checkpoints, measured on the same images.

A side is `METHOD`, a cell id (or its unique prefix), either with `:CHECKPOINT` (default
best). Rows pair up by data set, architecture and seed (and checkpoint) and only when their
per-image outcomes are over the same test images; each attack then gets McNemar's exact
test per seed, and over seeds the mean difference with its 95 % t-interval and a t-test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench import BenchError
from bench.eval.evaluate import ALL_ATTACKS
from bench.report.stats import SUBSET, WORST_CASE, mean_interval, paired, per_image, seeds_test

ALPHA = 0.05


@dataclass(frozen=True)
class Side:
    """One side of a comparison: rows of a method or of a cell, at one checkpoint."""

    name: str
    checkpoint: str

    @classmethod
    def parse(cls, text: str) -> Side:
        name, _, ckpt = text.partition(":")
        if not name:
            raise BenchError(f"compare takes METHOD or CELL_ID[:CHECKPOINT], got {text!r}")
        return cls(name, ckpt or "best")

    def rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Its rows: the method's, else those of the one cell whose id starts with the name."""
        own = [r for r in rows if r.get("method") == self.name]
        if not own:
            cells = {r["cell_id"] for r in rows if r.get("cell_id", "").startswith(self.name)}
            if len(cells) > 1:
                raise BenchError(f"{self.name!r} names {len(cells)} cells: give more of the id")
            own = [r for r in rows if r.get("cell_id") in cells]
        if not own:
            raise BenchError(f"no stored rows for {self.name!r} (a method or a cell id)")
        at = [r for r in own if r["checkpoint"] == self.checkpoint]
        if not at:
            have = ", ".join(sorted({r["checkpoint"] for r in own}))
            raise BenchError(f"{self.name!r} has no {self.checkpoint!r} rows (it has: {have})")
        keys = [(r["dataset"], r["arch"], r["seed"]) for r in at]
        twice = next((k for k in keys if keys.count(k) > 1), None)
        if twice is not None:
            raise BenchError(f"{self.name!r} has several cells for {twice[0]} / {twice[1]} seed "
                             f"{twice[2]}: name one by its cell id")
        missing = [r["cell_id"] for r in at if "outcomes" not in r]
        if missing:
            raise BenchError(f"{missing[0]} was stored without per-image outcomes (an older "
                             f"bench): run it again with --redo to compare it")
        return at


def compare(rows: list[dict[str, Any]], a: Side, b: Side) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per seed, over seeds): McNemar per (data set, arch, seed, attack), then per attack the
    mean difference over seeds. Differences are A minus B, in points."""
    key = ("dataset", "arch", "seed")
    theirs = {tuple(r[k] for k in key): r for r in b.rows(rows)}
    lines = []
    for ra in a.rows(rows):
        rb = theirs.get(tuple(ra[k] for k in key))
        if rb is None or ra is rb:
            continue
        if ra.get("test_images") != rb.get("test_images"):
            raise BenchError(f"{ra['cell_id']} and {rb['cell_id']} were measured on different "
                             f"test images: they cannot be paired")
        oa, ob = per_image(ra), per_image(rb)
        for metric in [*ALL_ATTACKS, *SUBSET, WORST_CASE]:
            if metric not in oa or metric not in ob or oa[metric][0] != ob[metric][0]:
                continue
            t = paired(oa[metric][1], ob[metric][1])
            lines.append({"dataset": ra["dataset"], "arch": ra["arch"], "seed": ra["seed"],
                          "attack": metric, "n": t.n, "A": 100 * t.a_right / t.n,
                          "B": 100 * t.b_right / t.n, "A-B": t.difference,
                          "only A": t.only_a, "only B": t.only_b, "p (McNemar)": t.p})
    if not lines:
        raise BenchError(f"{a.name} and {b.name} share no (data set, arch, seed) measured on "
                         f"the same images")
    per_seed = pd.DataFrame(lines)
    over = []
    for (ds, arch, attack), g in per_seed.groupby(["dataset", "arch", "attack"], sort=False):
        mean, lo, hi = mean_interval(list(g["A-B"]))
        p = seeds_test(list(g["A-B"])) if len(g) > 1 else float(g["p (McNemar)"].iloc[0])
        over.append({"dataset": ds, "arch": arch, "attack": attack, "seeds": len(g),
                     "A-B": mean, "95% CI": None if lo is None else (lo, hi),
                     "p": p, "test": "t over seeds" if len(g) > 1 else "McNemar exact",
                     "verdict": _verdict(mean, p)})
    return per_seed, pd.DataFrame(over)


def _verdict(mean: float, p: float) -> str:
    if p >= ALPHA:
        return f"no significant difference (p >= {ALPHA})"
    return "A better" if mean > 0 else "B better"


def render(per_seed: pd.DataFrame, over: pd.DataFrame, a: Side, b: Side) -> str:
    """Markdown: the per-seed tests, then the summary over seeds."""
    from bench.report.aggregate import markdown

    fmt = per_seed.copy()
    for c in ("A", "B", "A-B"):
        fmt[c] = fmt[c].map(lambda v: f"{v:.2f}")
    fmt["p (McNemar)"] = fmt["p (McNemar)"].map(lambda v: f"{v:.3g}")
    summary = over.copy()
    summary["A-B"] = summary["A-B"].map(lambda v: f"{v:+.2f}")
    summary["95% CI"] = summary["95% CI"].map(
        lambda ci: "– (one seed)" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]")
    summary["p"] = summary["p"].map(lambda v: f"{v:.3g}")
    head = (f"A = {a.name}:{a.checkpoint}, B = {b.name}:{b.checkpoint}; accuracies in %, "
            f"differences A - B in points; `robust` = right under every attack run.")
    return "\n\n".join([head, "Per seed (McNemar's exact test on the images A and B "
                        "disagree on):", markdown(fmt), "Over seeds (mean difference, 95 % "
                        "Student-t interval; with one seed, McNemar's p):", markdown(summary)])
