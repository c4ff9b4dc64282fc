"""Noise: intervals for accuracies and tests for differences, from the per-image outcomes
that rows store (bench.eval.evaluate.pack), with statsmodels' and scipy's distributions.

- An accuracy of k right out of n images gets Wilson's 95 % score interval.
- Two models evaluated on the same images (same test-set fingerprint, same AutoAttack
  subset) are compared per attack with McNemar's exact test: only the images on which they
  disagree carry information, and under "no difference" each disagreement falls either way
  with probability 1/2 (a two-sided binomial test on the discordant pairs).
- The corruptions' mean accuracy (each image seen under every corruption and severity) is
  compared per image: its share of right sets under A against under B, and the exact sign
  test on the images where they differ (McNemar's test is this sign test when each image
  has one outcome). Its interval takes n = the test images, not images x sets: an image's
  share of right sets varies no more than one right-or-wrong outcome, so this is
  conservative where the sets of one image are correlated (they are).
- Over seeds, the mean of the per-seed differences with its 95 % Student-t interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as st
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from bench.eval.evaluate import (
    ALL_ATTACKS,
    AUTOATTACKS,
    CORRUPTIONS,
    corruption_outcomes,
    linf_worst,
    outcomes,
)

LEVEL = 0.95
# Per-class accuracies are withheld below this many images in the smallest class: one image
# moves a class of 25 by 4 points, and Wilson's 95 % interval around 50 % spans 31-69 %; the
# 10 classes of a 100-image AutoAttack subset hold 3 to 7 images each (interval at 5 images:
# 24-76 %), while the embedded test set's smallest class has 28 and CIFAR-10's 1,000.
MIN_CLASS_IMAGES = 25
# Attacks also given on AutoAttack's subset when it ran on one (like with like), and the
# per-image worst case over every attack run (RobustBench's robust accuracy).
SUBSET = ("clean_on_aa", "pgd20_on_aa")
WORST_CASE = "robust"


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson's score interval for k right out of n (as fractions)."""
    lo, hi = proportion_confint(k, n, alpha=1 - level, method="wilson")
    return float(lo), float(hi)


@dataclass(frozen=True)
class Paired:
    """McNemar's exact test of A against B on the same n images."""

    n: int
    a_right: float  # images right (summed shares of right sets, for the corruptions)
    b_right: float
    only_a: int  # images A gets right and B wrong (a larger share of right sets)
    only_b: int
    p: float

    @property
    def difference(self) -> float:
        """A's accuracy minus B's, in points."""
        return 100 * (self.a_right - self.b_right) / self.n


def paired(a_ok: np.ndarray, b_ok: np.ndarray) -> Paired:
    """McNemar's exact test on two models' per-image outcomes over the same images; with
    several outcomes an image (rows: images, columns: corrupted sets), the exact sign test on
    each image's share of right sets, McNemar's test generalised."""
    a_ok, b_ok = np.asarray(a_ok, bool), np.asarray(b_ok, bool)
    if a_ok.shape != b_ok.shape:
        raise ValueError(f"outcomes over {a_ok.shape} and {b_ok.shape} images do not pair up")
    if a_ok.ndim == 2:
        sa, sb = a_ok.mean(1), b_ok.mean(1)
        only_a, only_b = int((sa > sb).sum()), int((sa < sb).sum())
        p = 1.0 if only_a + only_b == 0 else float(
            mcnemar([[0, only_a], [only_b, 0]], exact=True).pvalue)
        return Paired(len(sa), float(sa.sum()), float(sb.sum()), only_a, only_b, p)
    only_a, only_b = int((a_ok & ~b_ok).sum()), int((~a_ok & b_ok).sum())
    both, neither = int((a_ok & b_ok).sum()), int((~a_ok & ~b_ok).sum())
    p = 1.0 if only_a + only_b == 0 else float(
        mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue)
    return Paired(len(a_ok), int(a_ok.sum()), int(b_ok.sum()), only_a, only_b, p)


def mean_interval(values: list[float], level: float = LEVEL
                  ) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the Student-t interval of the mean; no interval from one value."""
    x = np.asarray(values, float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None, None
    half = float(st.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def accuracy_interval(values: list[float], n: int | None) -> tuple[float, float]:
    """A table line's 95 % interval, in the unit of `values` (percent): Wilson's for one seed
    (k = value x n / 100 right of n images), the Student-t interval of the mean over several;
    NaNs where there is none (no values, or one without its image count)."""
    nan = float("nan")
    if len(values) > 1:
        _, lo, hi = mean_interval(values)
        return lo, hi
    if len(values) == 1 and n:
        lo, hi = wilson(round(values[0] * n / 100), n)
        return 100 * lo, 100 * hi
    return nan, nan


def seeds_test(values: list[float]) -> float | None:
    """Two-sided p of the one-sample t-test that the per-seed differences average to 0 (None
    when it is undefined: one value, or equal nonzero values)."""
    x = np.asarray(values, float)
    if len(x) < 2:
        return None
    if np.all(x == x[0]):  # no spread: the t statistic is undefined
        return 1.0 if x[0] == 0 else None
    return float(st.ttest_1samp(x, 0.0).pvalue)


def per_image(row: dict[str, Any]) -> dict[str, tuple[str, np.ndarray]]:
    """metric -> (the images it was measured on, right or wrong per image) of a stored row:
    every attack, each of SUBSET on AutoAttack's subset, and the per-image worst case. Two
    rows' outcomes pair up only under the same first element (test set, and subset)."""
    n = int(row["n_clean"] if "n_clean" in row else max(
        (row[f"n_{a}"] for a in ALL_ATTACKS if f"n_{a}" in row
         and a not in (*AUTOATTACKS, CORRUPTIONS)), default=0))
    ok, index = outcomes(row, n)
    whole = str(row.get("test_images"))
    part = f"{whole}:{row['outcomes'].get('aa_subset')}" if index is not None else whole
    out = {a: (part if a in AUTOATTACKS else whole, v.numpy()) for a, v in ok.items()}
    if index is not None:
        out.update({m: (part, ok[m.removesuffix("_on_aa")][index].numpy()) for m in SUBSET
                    if m.removesuffix("_on_aa") in ok})
    if (worst := linf_worst(ok, index)) is not None:
        out[WORST_CASE] = (part if worst[1] else whole, worst[0].numpy())
    corrupted = corruption_outcomes(row)
    if corrupted is not None:  # other images: the corrupted sets' own fingerprint
        out[CORRUPTIONS] = (f"corrupted:{row.get('corruption_images')}", corrupted.numpy())
    return out


def line_test(a: list[dict[str, Any]], b: list[dict[str, Any]], metric: str) -> float | None:
    """p of "two lines of a table differ in `metric`", from their rows' per-image outcomes
    (`a`, `b`: each line's rows): McNemar's exact test with one shared seed, a t-test of the
    per-seed differences with more; None when no seed was measured on the same images."""
    theirs = {r["seed"]: per_image(r) for r in b if isinstance(r.get("outcomes"), dict)}
    tests = []
    for r in a:
        other = theirs.get(r["seed"])
        if other is None or not isinstance(r.get("outcomes"), dict):
            continue
        mine = per_image(r)
        if metric in mine and metric in other and mine[metric][0] == other[metric][0]:
            tests.append(paired(mine[metric][1], other[metric][1]))
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0].p
    return seeds_test([t.difference for t in tests])
