"""Noise: Wilson intervals, McNemar's exact test and the over-seeds interval against formulas
and a worked example written out here; per-image outcomes, subset columns and the worst case;
`bench compare` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import cli
from scipy.stats import binomtest

from bench.eval.evaluate import outcomes, pack, summarize, unpack
from bench.report.stats import mean_interval, paired, seeds_test, wilson

Z = 1.959963984540054  # the standard normal's 97.5 % quantile


def test_wilson_is_the_score_interval_written_out() -> None:
    for k, n in ((7, 10), (0, 20), (100, 100), (91, 360)):
        p = k / n
        centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
        half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
        assert wilson(k, n) == pytest.approx((centre - half, centre + half), abs=1e-12)
        assert wilson(k, n) == pytest.approx(tuple(binomtest(k, n).proportion_ci(
            method="wilson")), abs=1e-12)


def test_mcnemar_exact_on_a_worked_example() -> None:
    """20 images; A and B agree on 10, A alone is right on 1, B alone on 9: under "no
    difference" the 10 disagreements are fair coin flips, so p = 2 P(X <= 1), X ~ Bin(10, 1/2)
    = 2 (1 + 10) / 1024."""
    a = np.array([1] * 6 + [0] * 4 + [1] + [0] * 9, bool)
    b = np.array([1] * 6 + [0] * 4 + [0] + [1] * 9, bool)
    t = paired(a, b)
    assert (t.n, t.a_right, t.b_right, t.only_a, t.only_b) == (20, 7, 15, 1, 9)
    assert t.p == pytest.approx(22 / 1024, abs=1e-15)
    assert t.p == pytest.approx(binomtest(1, 10).pvalue, abs=1e-15)
    assert t.difference == pytest.approx(-40.0)
    assert paired(a, a).p == 1.0  # no disagreement: nothing to tell them apart
    with pytest.raises(ValueError):
        paired(a, b[:5])


def test_the_mean_over_seeds_and_its_t_interval() -> None:
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert mean_interval([1.5]) == (1.5, None, None)
    t = 2.0 / (1.0 / math.sqrt(3))  # the t statistic of [1, 2, 3] against 0
    from scipy.stats import t as student

    assert seeds_test([1.0, 2.0, 3.0]) == pytest.approx(2 * student.sf(t, 2))
    assert seeds_test([0.5]) is None


def test_outcomes_pack_into_an_eighth_of_a_byte_an_image() -> None:
    ok = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) > 0.4
    text = pack(ok)
    assert len(text) == 1668  # CIFAR-10's test set: 1,250 bytes, base64'd
    assert torch.equal(unpack(text, 10_000), ok)
    assert torch.equal(unpack(pack(ok[:13]), 13), ok[:13])  # a partial last byte


def test_subset_columns_and_the_worst_case_compare_like_with_like() -> None:
    """AutoAttack on 4 of 8 images: the other attacks are given on those 4 too, and `robust`
    counts the images right under every attack, on those 4."""
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    index = torch.tensor([1, 2, 5, 6])
    clean = torch.tensor([1, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    pgd = torch.tensor([1, 0, 1, 1, 0, 1, 0, 0], dtype=torch.bool)
    aa = torch.tensor([0, 1, 1, 0], dtype=torch.bool)  # over images 1, 2, 5, 6
    m = summarize({"clean": clean, "pgd20": pgd, "aa": aa}, y, index, 2)
    assert (m["clean"], m["n_clean"], m["pgd20"], m["aa"], m["n_aa"]) == (7 / 8, 8, 4 / 8, 2 / 4, 4)
    assert (m["clean_on_aa"], m["pgd20_on_aa"], m["n_on_aa"]) == (4 / 4, 2 / 4, 4)
    # images 1, 2, 5, 6: clean all right; pgd right on 2, 5; aa right on 2, 5 -> 2, 5
    assert (m["robust"], m["n_robust"]) == (2 / 4, 4)
    assert m["per_class_n"]["aa"] == [2, 2] and m["per_class_n"]["clean"] == [4, 4]
    ok, got_index = outcomes(m, 8)
    assert torch.equal(got_index, index) and torch.equal(ok["aa"], aa)
    whole = summarize({"clean": clean, "pgd20": pgd}, y, None, 2)
    assert "clean_on_aa" not in whole and "aa_subset" not in whole["outcomes"]
    assert whole["robust"] == 4 / 8  # images 0, 2, 3, 5


def test_bench_compare_on_stored_rows(tmp_path: Path, capsys) -> None:
    args = ["run", "--methods", "standard,pgdat", "--epochs", "1", "--seeds", "0,1",
            "--attacks", "clean,pgd20", "--threads", "1", "--out", str(tmp_path)]
    assert cli(args, capsys)[0] == 0
    code, out, err = cli(["compare", "pgdat", "standard", "--out", str(tmp_path), "--json"],
                         capsys)
    assert code == 0, err
    got = json.loads(out)
    rows = {(json.loads(p.read_text())["method"], json.loads(p.read_text())["seed"]):
            json.loads(p.read_text()) for p in (tmp_path / "rows").glob("*--best.json")}
    for line in got["per_seed"]:
        if line["attack"] == "robust":
            continue
        a, b = rows["pgdat", line["seed"]], rows["standard", line["seed"]]
        want = paired(unpack(a["outcomes"][line["attack"]], 360).numpy(),
                      unpack(b["outcomes"][line["attack"]], 360).numpy())
        assert line["p (McNemar)"] == pytest.approx(want.p)
        assert line["A"] == pytest.approx(100 * a[line["attack"]])
    summary = {s["attack"]: s for s in got["over_seeds"]}
    diffs = [x["A-B"] for x in got["per_seed"] if x["attack"] == "clean"]
    assert summary["clean"]["A-B"] == pytest.approx(np.mean(diffs))
    assert summary["clean"]["seeds"] == 2 and summary["clean"]["test"] == "t over seeds"
    code, out, _ = cli(["compare", "pgdat", "standard:last", "--out", str(tmp_path)], capsys)
    assert code == 0 and "McNemar" in out and "| digits | small_cnn | clean | 2 |" in out

    bad = next((tmp_path / "rows").glob("standard-*s1*--best.json"))
    row = json.loads(bad.read_text())
    bad.write_text(json.dumps({**row, "test_images": "0" * 16}))
    code, _, err = cli(["compare", "pgdat", "standard", "--out", str(tmp_path)], capsys)
    assert code != 0 and "different test images" in err and len(err.strip().splitlines()) == 1
    del row["outcomes"]
    bad.write_text(json.dumps(row))
    code, _, err = cli(["compare", "pgdat", "standard", "--out", str(tmp_path)], capsys)
    assert code != 0 and "without per-image outcomes" in err
    code, _, err = cli(["compare", "standard", "nope", "--out", str(tmp_path)], capsys)
    assert code != 0 and "no stored rows for 'nope'" in err


def _row(method: str, seed: int, clean: torch.Tensor, **extra) -> dict:
    """A stored row of the digits' small_cnn with per-image clean outcomes."""
    n = len(clean)
    return {"method": method, "preset": "faithful", "dataset": "digits", "arch": "small_cnn",
            "epochs": 15, "checkpoint": "best", "seed": seed, "cell_id": f"{method}-s{seed}",
            "eps": 0.1, "clean": clean.float().mean().item(), "n_clean": n,
            "outcomes": {"clean": pack(clean)}, "test_images": "t" * 16, **extra}


def _first_clean_cell(rows: list[dict]) -> dict[str, str]:
    import pandas as pd

    from bench.report.aggregate import aggregate, paper_table

    table = paper_table(aggregate(pd.DataFrame(rows)), bold=True, metrics=["clean"])
    return dict(zip(table["method"], table[table.columns[4]], strict=True))


def test_bold_only_when_the_best_beats_the_runner_up() -> None:
    """One seed, 100 images: 90 against 70 right with 20 discordant images all one way is
    a win (McNemar p = 2 / 2^20); 72 against 70 is a tie, marked on both lines."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(100, generator=g) > 0.3
    better = base.clone()
    better[(~base).nonzero().flatten()[:20]] = True
    slightly = base.clone()
    slightly[(~base).nonzero().flatten()[:2]] = True
    third = base & (torch.rand(100, generator=g) > 0.5)
    cells = _first_clean_cell([_row("pgdat", 0, better), _row("trades", 0, base),
                               _row("standard", 0, third)])
    assert cells["PGD-AT"].startswith("**") and "≈" not in cells["TRADES"]
    cells = _first_clean_cell([_row("pgdat", 0, slightly), _row("trades", 0, base),
                               _row("standard", 0, third)])
    assert cells["PGD-AT"].endswith(" ≈") and cells["TRADES"].endswith(" ≈")
    assert not cells["Standard"].endswith(" ≈") and "**" not in "".join(cells.values())


def test_each_line_carries_its_95_percent_interval() -> None:
    import pandas as pd

    from bench.report.aggregate import aggregate

    one = aggregate(pd.DataFrame([_row("pgdat", 0, torch.arange(40) < 30)]))
    lo, hi = wilson(30, 40)
    assert (one["clean_lo"][0], one["clean_hi"][0]) == pytest.approx((100 * lo, 100 * hi))
    three = aggregate(pd.DataFrame([_row("pgdat", s, torch.arange(40) < k)
                                    for s, k in enumerate((30, 32, 34))]))
    _, lo, hi = mean_interval([75.0, 80.0, 85.0])
    assert (three["clean_lo"][0], three["clean_hi"][0]) == pytest.approx((lo, hi))


def test_a_worst_class_of_too_few_images_is_withheld_and_stale_code_marked() -> None:
    import pandas as pd

    from bench.core import registry
    from bench.core.fingerprint import fingerprint
    from bench.report.aggregate import aggregate
    from bench.report.stats import MIN_CLASS_IMAGES

    now = fingerprint(registry.get("pgdat"))
    ok = torch.ones(60, dtype=torch.bool)
    few = _row("pgdat", 0, ok, clean_worst=0.5, per_class_n={"clean": [MIN_CLASS_IMAGES - 1, 31]},
               code=now)
    enough = _row("trades", 0, ok, clean_worst=0.5, per_class_n={"clean": [30, 30]},
                  code={"sha256": "0" * 16})
    agg = aggregate(pd.DataFrame([few, enough])).set_index("method")
    assert agg.loc["pgdat", "clean_worst"] != agg.loc["pgdat", "clean_worst"]  # NaN: withheld
    assert agg.loc["trades", "clean_worst"] == 50.0
    assert agg.loc["trades", "label"] == "TRADES (stale code)"
    assert agg.loc["pgdat", "label"] == "PGD-AT"
