"""`bench reported --json` against an independent transcription of the published P and S
figures (typed into this file from the pinned artifacts: the review's table images, LISArD's
README, the PeerAiD poster; the test reads nothing outside the repository), and the grades,
pins, metric labels and like-with-like rule of `bench table --reported`."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pytest
from cli_run import cli

from bench.cli import main
from bench.report.reported import (
    GRADES,
    SUITE,
    compare,
    comparison_table,
    likeness,
    not_comparable,
    not_comparable_table,
)

if TYPE_CHECKING:
    import pandas as pd

# RSLAD's white-box tables (S: images of the paper's tables in a course review), best / last
# checkpoint. Columns: clean, FGSM, PGD_SAT, PGD_TRADES, CW-inf (20 steps each), AA.
RSLAD_WHITE_BOX = """
# cifar10 resnet18
Natural | 94.65/94.65 | 19.26/19.26 | 0.0/0.0 | 0.0/0.0 | 0.0/0.0 | 0.0/0.0
SAT | 83.38/84.44 | 56.41/55.37 | 49.11/46.22 | 51.11/48.72 | 48.67/47.14 | 45.83/43.64
TRADES | 81.93/82.20 | 57.49/57.86 | 52.66/52.30 | 53.68/53.66 | 50.58/50.69 | 49.23/49.27
ARD | 83.93/84.23 | 59.31/59.33 | 52.05/51.52 | 54.20/53.74 | 51.22/51.24 | 49.19/48.90
IAD | 83.24/83.90 | 58.60/58.95 | 52.21/51.35 | 54.18/53.15 | 51.25/50.52 | 49.10/48.48
RSLAD | 83.38/83.33 | 60.01/59.90 | 54.24/54.14 | 55.94/55.61 | 53.30/53.22 | 51.49/51.32
# cifar10 mobilenetv2
Natural | 92.95/92.78 | 14.47/14.59 | 0.0/0.0 | 0.0/0.0 | 0.0/0.0 | 0.0/0.0
SAT | 82.48/82.89 | 56.44/56.43 | 50.10/49.71 | 51.74/51.48 | 49.33/49.07 | 46.32/45.92
TRADES | 80.57/80.57 | 56.05/56.05 | 51.06/51.06 | 52.36/52.36 | 49.36/49.36 | 47.17/47.17
ARD | 83.20/83.42 | 58.06/57.94 | 50.86/50.63 | 52.87/52.44 | 50.39/50.09 | 48.34/48.01
IAD | 81.91/83.49 | 57.00/57.44 | 51.88/49.77 | 53.23/51.85 | 50.45/49.41 | 48.40/46.98
RSLAD | 83.40/83.11 | 59.06/59.08 | 53.16/53.04 | 54.78/54.50 | 51.91/51.60 | 50.17/49.90
# cifar100 resnet18
Natural | 75.55/75.39 | 9.48/9.57 | 0.0/0.0 | 0.0/0.0 | 0.0/0.0 | 0.0/0.0
SAT | 57.46/57.51 | 28.56/26.41 | 24.07/21.7 | 25.39/23.30 | 23.68/22.15 | 21.79/20.44
TRADES | 55.23/54.62 | 30.48/30.06 | 27.79/27.35 | 28.53/28.00 | 25.06/24.34 | 23.94/23.42
ARD | 60.64/60.86 | 33.41/32.64 | 29.16/28.15 | 30.30/29.34 | 27.85/26.79 | 25.65/24.74
IAD | 57.66/58.82 | 33.26/33.22 | 29.59/28.50 | 30.58/29.97 | 27.37/26.79 | 25.12/24.79
RSLAD | 57.74/57.82 | 34.20/34.06 | 31.08/30.68 | 31.90/31.57 | 28.34/28.16 | 26.70/26.34
# cifar100 mobilenetv2
Natural | 74.58/74.58 | 7.19/7.19 | 0.0/0.0 | 0.0/0.0 | 0.0/0.0 | 0.0/0.0
SAT | 56.85/58.50 | 31.95/32.05 | 28.33/27.80 | 29.50/28.88 | 26.85/26.74 | 24.71/24.31
TRADES | 56.20/56.56 | 31.37/31.35 | 29.21/28.85 | 29.83/29.38 | 25.06/25.00 | 24.16/24.04
ARD | 59.83/61.66 | 33.05/32.98 | 29.13/27.74 | 30.26/29.33 | 27.86/26.77 | 25.53/24.34
IAD | 56.14/58.07 | 32.81/32.61 | 29.81/27.55 | 30.73/28.81 | 27.99/26.24 | 25.74/23.72
RSLAD | 58.97/58.76 | 34.03/34.02 | 30.40/30.17 | 31.36/31.14 | 28.22/28.10 | 26.12/26.31
"""
# RSLAD's black-box table (S, the same review), CIFAR-10: ResNet-18 then MobileNetV2; transfer
# PGD-20, transfer CW-inf, Square; checkpoint not stated.
RSLAD_BLACK_BOX = """
SAT | 60.84 | 60.52 | 54.27 | 60.46 | 59.83 | 53.94
TRADES | 62.20 | 61.75 | 55.13 | 60.90 | 60.23 | 53.46
ARD | 63.49 | 63.05 | 56.89 | 62.13 | 61.85 | 55.60
IAD | 62.78 | 62.26 | 56.62 | 61.57 | 61.25 | 55.45
RSLAD | 64.11 | 63.84 | 57.90 | 63.30 | 63.20 | 56.70
"""
WHITE = ("clean", "fgsm", "pgd_sat20", "pgd_trades20", "cw_inf20", "aa")
BLACK = ("transfer_pgd20", "transfer_cw_inf20", "square")
PGD = "pgd_steps_unstated"  # LISArD's README: 'PGD', no steps or step size
# (published as, dataset, student arch, checkpoint, metric, value, grade)
OTHERS = [
    # PeerAiD as LISArD's README reports it (S); 29.69 also on the authors' poster, no attack
    ("PeerAiD", "cifar10", "resnet18", "unverified", "clean", 85.01, "S"),
    ("PeerAiD", "cifar10", "resnet18", "unverified", "fgsm", 61.28, "S"),
    ("PeerAiD", "cifar10", "resnet18", "unverified", PGD, 54.36, "S"),
    ("PeerAiD", "cifar10", "resnet18", "unverified", "aa", 52.57, "S"),
    ("PeerAiD", "cifar100", "resnet18", "unverified", "clean", 59.35, "S"),
    ("PeerAiD", "cifar100", "resnet18", "unverified", "fgsm", 34.41, "S"),
    ("PeerAiD", "cifar100", "resnet18", "unverified", PGD, 29.69, "S"),
    ("PeerAiD", "cifar100", "resnet18", "unverified", "aa", 27.33, "S"),
    # the poster's TinyImageNet bars (P)
    ("PeerAiD", "tinyimagenet", "resnet18", "unverified", "clean", 55.19, "P"),
    ("PeerAiD", "tinyimagenet", "resnet18", "unverified", "aa", 21.67, "P"),
    ("PeerAiD", "tinyimagenet", "wrn34_10", "unverified", "clean", 58.07, "P"),
    ("PeerAiD", "tinyimagenet", "wrn34_10", "unverified", "aa", 24.82, "P"),
    # the poster's "characteristic of the peer model" table and clean accuracies (P)
    ("Peer tutor", "cifar100", "resnet18", "unverified", "tutor_on_self", 0.00, "P"),
    ("Peer tutor", "cifar100", "resnet18", "unverified", "tutor_on_student", 69.19, "P"),
    ("Peer tutor", "cifar100", "resnet18", "unverified", "robust_unspecified", 29.69, "P"),
    ("Peer tutor", "cifar100", "resnet18", "unverified", "tutor_clean", 75.63, "P"),
    ("Pretrained teacher", "cifar100", "resnet18", "unverified", "tutor_on_self", 24.15, "P"),
    ("Pretrained teacher", "cifar100", "resnet18", "unverified", "tutor_on_student", 39.46,
     "P"),
    ("Pretrained teacher", "cifar100", "resnet18", "unverified", "robust_unspecified", 24.48,
     "P"),
    ("Naturally trained", "cifar100", "resnet18", "unverified", "clean", 75.48, "P"),
    # AdaAD: LISArD's rows (S) and the maintainer's training log in issue #2 (P)
    ("AdaAD", "cifar10", "resnet18", "unverified", "clean", 85.58, "S"),
    ("AdaAD", "cifar10", "resnet18", "unverified", "fgsm", 60.85, "S"),
    ("AdaAD", "cifar10", "resnet18", "unverified", PGD, 56.40, "S"),
    ("AdaAD", "cifar10", "resnet18", "unverified", "aa", 51.37, "S"),
    ("AdaAD", "cifar10", "resnet18", "epoch 181", "clean", 85.58, "P"),
    ("AdaAD", "cifar10", "resnet18", "epoch 181", "pgd10_2/255", 56.90, "P"),
    ("AdaAD", "cifar100", "resnet18", "unverified", "clean", 62.19, "S"),
    ("AdaAD", "cifar100", "resnet18", "unverified", "fgsm", 35.33, "S"),
    ("AdaAD", "cifar100", "resnet18", "unverified", PGD, 32.52, "S"),
    ("AdaAD", "cifar100", "resnet18", "unverified", "aa", 26.74, "S"),
    # DGAD as LISArD's README reports it (S), architecture not stated
    ("DGAD", "cifar10", "unverified", "unverified", "clean", 85.75, "S"),
    ("DGAD", "cifar10", "unverified", "unverified", "fgsm", 62.28, "S"),
    ("DGAD", "cifar10", "unverified", "unverified", PGD, 58.05, "S"),
    ("DGAD", "cifar10", "unverified", "unverified", "aa", 52.34, "S"),
    ("DGAD", "cifar100", "unverified", "unverified", "clean", 63.24, "S"),
    ("DGAD", "cifar100", "unverified", "unverified", "fgsm", 36.09, "S"),
    ("DGAD", "cifar100", "unverified", "unverified", PGD, 33.68, "S"),
    ("DGAD", "cifar100", "unverified", "unverified", "aa", 27.66, "S"),
    # IGDM's Table 3 as a third party's notes quote it (S: 7i10/ard_codex_bootstrap)
    ("RSLAD + IGDM", "cifar10", "resnet18", "unverified", "aa", 53.10, "S"),
    ("AdaIAD + IGDM", "cifar10", "resnet18", "unverified", "aa", 54.02, "S"),
    # SAAD's Tables 4 / 12, the same third party: SAAD (final SWA model) and its IGDM runs,
    # with the Bartoldson2024 WRN-94-16 and the Gowal2021 WRN-28-10 (DDPM) teacher
    ("SAAD", "cifar10", "resnet18", "swa_last", "clean", 84.27, "S"),
    ("SAAD", "cifar10", "resnet18", "swa_last", PGD, 53.39, "S"),
    ("SAAD", "cifar10", "resnet18", "swa_last", "aa", 50.34, "S"),
    ("SAAD", "cifar10", "resnet18", "swa_last", "aa", 50.35, "S"),
    ("IGDM", "cifar10", "resnet18", "unverified", "aa", 44.94, "S"),
    ("IGDM", "cifar10", "resnet18", "unverified", "aa", 44.76, "S"),
    # CIARD's MobileNetV2 / CIFAR-10 comparison as a paper note quotes it (S: Paper-Notes-en);
    # its 'Robust (%)' names no attack
    ("MTARD", "cifar10", "mobilenetv2", "unverified", "clean", 89.26, "S"),
    ("MTARD", "cifar10", "mobilenetv2", "unverified", "robust_unspecified", 57.84, "S"),
    ("B-MTARD", "cifar10", "mobilenetv2", "unverified", "clean", 89.09, "S"),
    ("B-MTARD", "cifar10", "mobilenetv2", "unverified", "robust_unspecified", 58.79, "S"),
    ("CIARD", "cifar10", "mobilenetv2", "unverified", "clean", 89.51, "S"),
    ("CIARD", "cifar10", "mobilenetv2", "unverified", "robust_unspecified", 59.10, "S"),
    # IAD's Table 2 (AT ResNet-18 teacher) as the same third party quotes it (S): AA only
    ("AKD2", "cifar10", "resnet18", "unverified", "aa", 48.08, "S"),
    ("IAD-II", "cifar10", "resnet18", "unverified", "aa", 48.58, "S"),
    # CAT's README image (P, liuxingbin/CAT 2325fa1): two unlabelled rows each of CAT and
    # CAT+AWP, Clean and AA; no data set (CIFAR-10 inferred) and no network printed
    ("CAT (upper row)", "cifar10", "unverified", "unverified", "clean", 86.22, "P"),
    ("CAT (upper row)", "cifar10", "unverified", "unverified", "aa", 54.11, "P"),
    ("CAT (lower row)", "cifar10", "unverified", "unverified", "clean", 86.51, "P"),
    ("CAT (lower row)", "cifar10", "unverified", "unverified", "aa", 54.20, "P"),
    ("CAT+AWP (upper row)", "cifar10", "unverified", "unverified", "clean", 86.74, "P"),
    ("CAT+AWP (upper row)", "cifar10", "unverified", "unverified", "aa", 56.43, "P"),
    ("CAT+AWP (lower row)", "cifar10", "unverified", "unverified", "clean", 87.01, "P"),
    ("CAT+AWP (lower row)", "cifar10", "unverified", "unverified", "aa", 56.61, "P"),
]
# the poster's "+x" margins over the best baseline (P)
MARGINS = {("tinyimagenet", "resnet18", "clean"): 4.72, ("tinyimagenet", "resnet18", "aa"): 1.66,
           ("tinyimagenet", "wrn34_10", "clean"): 3.25, ("tinyimagenet", "wrn34_10", "aa"): 0.73}


def expected() -> list[tuple]:
    out = list(OTHERS)
    where = None
    for line in RSLAD_WHITE_BOX.strip().splitlines():
        if line.startswith("#"):
            where = line[2:].split()
            continue
        name, *cells = (c.strip() for c in line.split("|"))
        for metric, cell in zip(WHITE, cells, strict=True):
            for ckpt, v in zip(("best", "last"), cell.split("/"), strict=True):
                out.append((name, *where, ckpt, metric, float(v), "S"))
    for line in RSLAD_BLACK_BOX.strip().splitlines():
        name, *cells = (c.strip() for c in line.split("|"))
        for arch, part in (("resnet18", cells[:3]), ("mobilenetv2", cells[3:])):
            for metric, v in zip(BLACK, part, strict=True):
                out.append((name, "cifar10", arch, "unverified", metric, float(v), "S"))
    return out


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> list[dict]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["reported", "--json"])
    return json.loads(buf.getvalue())


def test_every_p_and_s_figure_exactly_as_published(published) -> None:
    got = sorted((f["published_as"], f["dataset"], f["arch"], f["checkpoint"], f["metric"],
                  f["value"], f["grade"]) for f in published if f["grade"] in ("P", "S"))
    want = sorted(expected())
    assert len(want) == 4 * 6 * 6 * 2 + 5 * 6 + len(OTHERS)  # tables x methods x cols x ckpts
    assert got == want


def test_every_figure_has_grade_source_and_setting(published) -> None:
    assert {f["grade"] for f in published} == {"R", "P", "S", "T"}
    for f in published:
        assert f["source"] and f["paper"] and f["table"] and f["dataset"] and f["method"]
        assert f["grade"] != "T" or "third-party" in f["source"]
    margins = {(f["dataset"], f["arch"], f["metric"]): f["margin"] for f in published
               if f["margin"] is not None}
    assert margins == MARGINS


def test_bench_method_names(published) -> None:
    """Published names map to bench's methods where bench has the method."""
    names = {(f["published_as"], f["method"]) for f in published}
    for pub, ours in (("Natural", "standard"), ("SAT", "pgdat"), ("PGD-AT", "pgdat"),
                      ("TRADES", "trades"), ("ARD", "ard"), ("IAD", "iad"),
                      ("RSLAD", "rslad"), ("PeerAiD", "peeraid"), ("AdaAD", "adaad"),
                      ("AKD2", "akd2"), ("IAD-II", "iad2"), ("IAD-I", "iad"), ("CAT", "cat")):
        assert (pub, ours) in names


# --- grades, pins, metric labels, and what `--reported` may set side by side --------------

COMMIT = re.compile(r"github:[\w.-]+/[\w.-]+ [0-9a-f]{40}")
ISSUE = re.compile(r"github:[\w.-]+/[\w.-]+ issue #\d+")
ARXIV = re.compile(r"arXiv \d{4}\.\d{4,5}v\d+")


def test_every_figure_graded_pinned_and_labelled(published) -> None:
    for f in published:
        assert f["grade"] in GRADES and f["evidence"], f
        if f["grade"] == "T":
            assert f["pin"].startswith("none:")
        elif f["grade"] == "R":
            assert ARXIV.fullmatch(f["pin"]), f["pin"]
        else:
            assert COMMIT.fullmatch(f["pin"]) or ISSUE.fullmatch(f["pin"]), f["pin"]
        if f["grade"] == "S":  # the third party named, never the authors
            assert "authors" not in f["evidence"] and "maintainer" not in f["evidence"]
        if f["grade"] != "R" and re.search(r"\b(Table|Figure) \d", f["table"]):
            assert "not read" in f["table"], f["table"]  # a number never read is not claimed
        assert f["metric"] and f["attack"] and f["about"]
        # a label that is a bench column is one measured alike; any other label never is
        assert (f["metric"] in SUITE) == (f["column"] == f["metric"]), f
        assert bool(f["column"]) != bool(f["unlike"]), f


def test_every_rslad_and_lisard_figure_names_its_copier(published) -> None:
    by = {f["evidence"] for f in published if f["paper"].startswith("RSLAD")}
    assert by == {"a KAIST course review (awesome-davian/awesome-reviews-kaist), images of the "
                  "tables"}
    lisard = [f for f in published if "LISArD" in f["source"]]
    assert len(lisard) == 6 * 4 and {f["grade"] for f in lisard} == {"S"}
    assert {f["pin"] for f in lisard} == {
        "github:Joana-Cabral/LISArD 198055ea4a66c984ee3a3f74860c72995651ddaf"}
    assert {f["metric"] for f in lisard} == {"clean", "fgsm", PGD, "aa"}


def test_the_poster_disagreement_is_recorded(published) -> None:
    [tutor] = [f for f in published if f["metric"] == "tutor_on_student"
               and f["published_as"] == "Peer tutor"]
    assert tutor["value"] == 69.19 and tutor["grade"] == "P"
    assert "Figure 1" in tutor["figure_note"] and "47 %" in tutor["figure_note"]
    [student] = [f for f in published if f["published_as"] == "Peer tutor"
                 and f["value"] == 29.69]
    assert student["metric"] == "robust_unspecified" and not student["column"]


def test_likeness_needs_attack_steps_and_step() -> None:
    from bench.eval.evaluate import ALL_ATTACKS, Threat

    assert set(SUITE) == set(ALL_ATTACKS)  # every bench column described, none invented
    t = Threat(8 / 255)
    assert round(t.step * 255, 9) == 2 and round(t.small_step, 9) == 0.003
    assert likeness("pgd", 20, "2/255") == ("pgd20", "")
    assert likeness("pgd", 20, "0.003") == ("pgd20s", "")
    assert likeness("cw_inf", 30, "2/255") == ("cw", "")
    col, why = likeness("pgd", 10, "2/255")
    assert not col and why == "10 steps; bench's pgd20 is 20 steps of 2/255"
    assert likeness("pgd", 20, None) == ("", "step size not stated; bench's pgd20 is 20 steps "
                                             "of 2/255")
    assert likeness("pgd", None, None)[0] == ""
    assert likeness("cw_inf", 20, None)[1].startswith("20 steps, step size not stated")
    assert likeness("unspecified", None, None) == ("", "the source names no attack")
    assert likeness("pgd", 20, "2/255", on="a surrogate")[0] == ""
    assert likeness("pgd_trades", 20, None) == ("", "no bench column measures pgd_trades")


def _rows(settings: set[tuple[str, str, str, str]]) -> pd.DataFrame:
    """Two seeds x best / last of every (method, data set, student, teacher key), every
    attack of the suite measured, at eps 8/255: no training."""
    import pandas as pd

    def config(key: str) -> dict:
        return {"peer_arch": "x"} if key == "peer" else {} if key in ("none", "") else {
            "teacher": key}

    rows = []
    for i, (method, dataset, arch, key) in enumerate(sorted(settings)):
        for seed in (0, 1):
            for ck in ("best", "last"):
                rows.append({"method": method, "preset": "paper", "dataset": dataset,
                             "arch": arch, "epochs": 10, "checkpoint": ck, "seed": seed,
                             "eps": 8 / 255, "cell_id": f"c{i}-{seed}", "config": config(key),
                             **{a: 0.4 + 0.01 * seed for a in SUITE}})
    return pd.DataFrame(rows)


def _key(paper, table, published_as, dataset, arch, checkpoint, metric) -> tuple:
    return paper, table, published_as, dataset, arch, checkpoint, metric


@pytest.fixture(scope="module")
def everything(published):
    """A reproduction of every published setting, its comparison and what it leaves out."""
    rows = _rows({(f["method"], f["dataset"], f["arch"], f["teacher_key"]) for f in published})
    return compare(rows), not_comparable(rows)


def test_only_like_with_like_is_compared(published, everything) -> None:
    cmp, nc = everything
    figs = {_key(*(f[k] for k in ("paper", "table", "published_as", "dataset", "arch",
                                  "checkpoint", "metric"))): f for f in published}
    assert len(figs) == len(published)
    shown = {_key(*r) for r in cmp[["paper", "table", "published_as", "dataset", "arch",
                                    "published_checkpoint", "published_metric"]].itertuples(
        index=False)}
    for k in shown:  # never a label that no bench column measures alike
        assert figs[k]["column"], k
    assert (cmp["metric"] == cmp["published_metric"]).all()  # clean, fgsm, aa: the same names
    unlike = {k for k, f in figs.items() if not f["column"]}
    assert unlike and not unlike & shown
    listed = set(zip(nc["paper"], nc["table"], nc["published_as"], nc["published_metric"],
                     nc["published"], strict=True))
    for k in unlike:  # each listed as not comparable, with its reason first
        f = figs[k]
        assert (f["paper"], f["table"], f["published_as"], f["metric"], f["value"]) in listed
        why = nc[(nc.published_metric == f["metric"]) & (nc.published == f["value"])
                 & (nc.table == f["table"])]["reason"]
        assert (why.str.split(" | ", regex=False).str[0] == f["unlike"]).all()
    # and every figure bench measures alike, at a reproduced checkpoint, is compared
    for k, f in figs.items():
        if f["column"] and f["checkpoint"] in ("best", "last", "unverified"):
            assert k in shown, k


def test_a_pgd10_figure_is_not_compared_with_pgd20(everything) -> None:
    cmp, nc = everything
    assert not (cmp["published"] == 56.90).any()
    [why] = nc[(nc.published_metric == "pgd10_2/255") & (nc.published == 56.90)]["reason"]
    assert why.startswith("10 steps; bench's pgd20 is 20 steps of 2/255")
    assert "checkpoint: published epoch 181" in why
    # LISArD's 'PGD' (its evaluator: PGD-10) is never set beside bench's pgd20
    for value in (54.36, 29.69, 56.40, 32.52):
        assert not (cmp["published"] == value).any()
        assert "steps not stated" in nc[nc.published == value]["reason"].iloc[0]


def test_the_grade_stands_beside_each_difference(everything) -> None:
    cmp, _ = everything
    t = comparison_table(cmp)
    cols = list(t.columns)
    assert cols.index("grade") == cols.index("difference") + 1
    assert len(t) == len(cmp) > 0
    for (_, r), (_, c) in zip(t.iterrows(), cmp.iterrows(), strict=True):
        assert r["published"].endswith(f"({c['grade']})")
        assert r["grade"] == f"{c['grade']}: {c['evidence']}"
    lisard = t[t["source"].str.contains("LISArD")]
    assert len(lisard) and lisard["grade"].str.startswith("S: LISArD's README").all()
    unstated = t[cmp["published_checkpoint"].eq("unverified").to_numpy()]
    assert unstated["checkpoint"].str.endswith("(published: not stated)").all()


def test_not_comparable_table_gives_each_reason(everything) -> None:
    _, nc = everything
    t = not_comparable_table(nc)
    assert len(t) == len(nc) > 0 and (t["not comparable"] != "").all()
    row = t[t["published"] == "54.36 (S)"].iloc[0]
    assert row["metric"] == PGD and row["grade"].startswith("S: LISArD's README")


def test_bench_reported_shows_grades_pins_and_notes(capsys) -> None:
    code, out, err = cli(["reported", "--methods", "peeraid", "--dataset", "cifar100"], capsys)
    assert code == 0, err
    assert "R: read" in out and "S: secondary: a third party's copy" in out
    assert "grade P: the authors' CVPR 2024 poster" in out
    assert "cd12e9210ceb43a68c104f3c4ca281ea991880b8" in out
    assert "grade S: LISArD's README" in out and "198055ea4a66c984ee3a3f74860c72995651ddaf" in out
    line = next(x for x in out.splitlines() if x.startswith("note on Peer tutor")
                and "tutor_on_student" in x)
    assert "Figure 1" in line and "47 %" in line
    assert "| pgd_steps_unstated | not comparable | 29.69 (S) |" in out
    assert "metric robust_unspecified: " in out and "the source names no attack" in out
    code, out, err = cli(["reported", "--grade", "R", "--json"], capsys)
    # the only figures read from a paper itself: IGDM's abstract (arXiv v2)
    assert code == 0 and sorted((f["method"], f["dataset"], f["arch"], f["metric"], f["value"],
                                 f["pin"]) for f in json.loads(out)) == [
        ("igdm", "cifar100", "mobilenetv2", "aa", 29.32, "arXiv 2312.03286v2"),
        ("igdm", "cifar100", "resnet18", "aa", 30.32, "arXiv 2312.03286v2")]


# --- IGDM, SAAD, ABSLD, MTARD, B-MTARD, CIARD; methods without published figures ------------

SIX = ("igdm", "saad", "absld", "mtard", "bmtard", "ciard")


def test_the_six_methods_have_graded_pinned_labelled_rows() -> None:
    """Each row of the six (read from the data file itself) names its grade, evidence, a pin
    and only metric labels the file defines; ABSLD's tables could not be reached, so it has no
    row, and the file says so."""
    from bench.report.reported import DATA

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    text = DATA.read_text()
    doc = tomllib.loads(text)
    by = {m: [r for r in doc["row"] if r["method"] == m] for m in SIX}
    for method, rows in by.items():
        if method == "absld":
            assert not rows and "ABSLD: no figure found anywhere (no row)" in text
            continue
        assert rows, method
        for r in rows:
            assert r["grade"] in GRADES and r["evidence"] and r["pin"] and r["source"], r
            assert r["values"] and set(r["values"]) <= set(doc["metric"]), r
            assert r.get("checkpoint") and r.get("teacher"), r
    # the R figures are the paper's own, pinned to the arXiv version read
    assert {r["pin"] for r in by["igdm"] if r["grade"] == "R"} == {"arXiv 2312.03286v2"}
    saad = {r["teacher_key"]: r["values"]["aa"] for r in by["saad"]}
    assert saad == {"robustbench:Bartoldson2024Adversarial_WRN-94-16": 50.34,
                    "robustbench:Gowal2021Improving_28_10_ddpm_100m": 50.35}


def test_bench_reported_lists_saad(capsys) -> None:
    code, out, err = cli(["reported", "--methods", "saad"], capsys)
    assert code == 0, err
    assert "### SAAD (Lee & Chung, TMLR 2026)" in out and "| saad | SAAD |" in out
    assert "50.34 (S)" in out and "50.35 (S)" in out and "unknown" not in out + err


def test_a_registered_method_without_figures_is_not_unknown(capsys, monkeypatch) -> None:
    import bench.report.reported as rep

    whole = rep.frame()
    monkeypatch.setattr(rep, "frame", lambda: whole[whole["method"] != "rslad"])
    code, out, err = cli(["reported", "--methods", "rslad"], capsys)
    assert code == 0, err
    assert out.strip() == ("rslad: no published figures in bench's table "
                           "(bench/report/reported.toml)")
    assert "unknown" not in out + err
    # beside a method with figures: the line, then that method's tables
    code, out, err = cli(["reported", "--methods", "rslad,saad"], capsys)
    assert code == 0 and out.startswith("rslad: no published figures") and "| saad |" in out
    # --json stays one JSON document; the line goes to stderr
    code, out, err = cli(["reported", "--methods", "rslad", "--json"], capsys)
    assert code == 0 and json.loads(out) == [] and "rslad: no published figures" in err
    # a name that is neither registered nor published is still unknown
    code, out, err = cli(["reported", "--methods", "rslda"], capsys)
    assert code != 0 and "unknown method" in out + err and "'rslad'" in out + err


def test_another_filter_never_makes_a_method_unknown(capsys) -> None:
    code, out, err = cli(["reported", "--methods", "saad", "--dataset", "cifar100"], capsys)
    assert code == 0, err
    assert out.strip() == "no published figure matches these filters"


# --- AKD2, IAD-II and CAT; the baselines of PeerAiD's Table 1 ---------------------------------

THREE = ("akd2", "iad2", "cat")
# PeerAiD's Table 1 as the authors' poster labels it, in bench's names; "IAD" alone may be
# IAD-I (bench's iad) or IAD-II (iad2), so the experiment files run both
TABLE1 = {"PGD-AT": ("pgdat",), "TRADES": ("trades",), "AKD2": ("akd2",), "RSLAD": ("rslad",),
          "IAD": ("iad", "iad2"), "CAT": ("cat",), "AdaAD": ("adaad",),
          "PeerAiD": ("peeraid",)}


def _data() -> tuple[str, dict]:
    from bench.report.reported import DATA

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    text = DATA.read_text()
    return text, tomllib.loads(text)


def test_akd2_iad2_and_cat_have_graded_pinned_labelled_rows() -> None:
    """Each row of the three names its grade, evidence, a pin of the grade's form and only
    metric labels the file defines; what could not be reached is said in the file."""
    text, doc = _data()
    by = {m: [r for r in doc["row"] if r["method"] == m] for m in THREE}
    for method, rows in by.items():
        assert rows, method
        for r in rows:
            assert r["grade"] in GRADES and r["evidence"] and r["source"], r
            assert r["values"] and set(r["values"]) <= set(doc["metric"]), r
            assert r.get("checkpoint") and r.get("teacher"), r
            if r["grade"] == "T":
                assert r["pin"].startswith("none:") and "third-party" in r["source"], r
            elif r["grade"] == "R":
                assert ARXIV.fullmatch(r["pin"]), r
            else:
                assert COMMIT.fullmatch(r["pin"]), r
            if r["grade"] != "R":  # no table of a paper read: its number is never claimed
                assert "not read" in r["table"], r
    # IAD's Table 2 (AT ResNet-18 teacher), quoted by a named third party (S), AA only
    iad_table2 = {(r["method"], r["published_as"]): (r["values"], r["grade"], r["teacher_key"])
                  for r in by["akd2"] + by["iad2"]}
    assert iad_table2 == {("akd2", "AKD2"): ({"aa": 48.08}, "S", "pgdat:resnet18"),
                          ("iad2", "IAD-II"): ({"aa": 48.58}, "S", "pgdat:resnet18")}
    assert {r["pin"] for r in by["akd2"] + by["iad2"]} == {
        "github:7i10/ard_codex_bootstrap 616163bfa15308ad525609f9d6b889bdf2f23621"}
    # CAT's own README image (P): two unlabelled CAT rows, no network printed
    readme = [r for r in by["cat"] if r["grade"] == "P"]
    assert sorted(tuple(r["values"].values()) for r in readme) == [(86.22, 54.11),
                                                                   (86.51, 54.2)]
    assert {(r["arch"], r["pin"]) for r in readme} == {
        ("unverified", "github:liuxingbin/CAT 2325fa16af644c1a6e83bf4761d4a8dece86763d")}
    # nothing was found for these three in PeerAiD's Table 1, nor in AKD2's own paper
    assert "PeerAiD's Table 1 rows for AKD2, IAD and CAT: no figure found" in text
    assert "AKD2's own paper" in text and "no figure found" in text


def test_peeraid_table1_experiments_name_every_baseline() -> None:
    """The Table 1 experiment files run every method of the table, each registered."""
    from pathlib import Path

    from bench.core import registry

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    files = sorted((Path(__file__).parents[1] / "experiments").glob("peeraid_table1_*.toml"))
    assert [f.stem for f in files] == ["peeraid_table1_cifar10", "peeraid_table1_cifar100",
                                       "peeraid_table1_tinyimagenet"]
    want = {m for names in TABLE1.values() for m in names}
    for f in files:
        text = f.read_text()
        methods = tomllib.loads(text)["methods"]
        assert set(methods) == want and len(methods) == len(want), f
        assert want <= set(registry.names()), want - set(registry.names())
        assert "not in bench" not in text
        for name in TABLE1:  # the comment names each baseline as the table does
            assert name in text, (f, name)
        assert "IAD-I" in text and "IAD-II" in text  # which IAD: said, with why both run
