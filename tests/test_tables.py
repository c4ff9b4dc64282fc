"""`bench table`: paper-style tables recomputed here with pandas from the stored rows;
formats, filters, bold, margins, the time column and the reported-vs-reproduced view."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess

import pandas as pd
import pytest
from cli_run import cli

from bench.core.store import Store
from bench.train.cells import Cell, resolve
from bench.train.pipeline import row_key

METHODS = ("peeraid", "rslad", "pgdat")
SHOWN = {"peeraid": "PeerAiD", "rslad": "RSLAD", "pgdat": "PGD-AT"}  # display names
METHOD_OF = {v: k for k, v in SHOWN.items()}
SEEDS = (0, 1, 2)
ATTACKS = ("clean", "fgsm", "pgd20", "aa")


def value(method: str, seed: int, ckpt: str, attack: str) -> float:
    base = {"clean": 0.84, "fgsm": 0.60, "pgd20": 0.53, "aa": 0.50}[attack]
    return round(base + 0.013 * METHODS.index(method) * (-1) ** ATTACKS.index(attack)
                 + 0.007 * seed ** 2 - 0.01 * (ckpt == "last"), 4)


def synthetic_rows(root, dataset="cifar10", arch="resnet18", seeds=SEEDS, skip=()):
    """Rows under the real cell ids and configs of the paper presets; no training."""
    st = Store(root)
    for m in METHODS:
        for s in seeds:
            r = resolve(Cell(m, dataset, arch, s, "paper"))
            for ckpt in ("best", "last"):
                row = {"method": m, "preset": "paper", "dataset": dataset, "arch": arch,
                       "seed": s, "epochs": r.params.epochs, "checkpoint": ckpt, "eps": 8 / 255,
                       "train_seconds": 3600.0 * (1 + METHODS.index(m)) + 60 * s,
                       "eval_seconds": 10.0, "cell_id": r.id, "config": r.config,
                       "device": "NVIDIA H100", "created": "2026-01-01T00:00:00"}
                for a in ATTACKS:
                    if (m, s, ckpt, a) in skip:
                        continue
                    row[a] = value(m, s, ckpt, a)
                    row[f"n_{a}"] = 10000
                st.put(row_key(r, ckpt), row)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    synthetic_rows(root, skip={("pgdat", 2, "best", "aa")})
    synthetic_rows(root, "cifar100", "resnet18", seeds=(0,))
    return root


def expected(store) -> pd.DataFrame:
    """The test's own aggregation: mean, sample std and count over seeds, in %."""
    rows = pd.DataFrame(Store(store).read()[0])
    g = rows.groupby(["dataset", "arch", "method", "checkpoint"])
    return pd.concat({f"{a}{suffix}": g[a].agg(fn) for a in ATTACKS
                      for suffix, fn in (("", lambda v: v.mean() * 100),
                                         ("_std", lambda v: v.std(ddof=1) * 100),
                                         ("_count", "count"))}, axis=1)


def test_csv_numbers_are_the_pandas_aggregation_of_the_rows(store, capsys) -> None:
    code, out, err = cli(["table", "--out", str(store), "--format", "csv"], capsys)
    assert code == 0, err
    got = pd.read_csv(io.StringIO(out)).set_index(["dataset", "arch", "method", "checkpoint"])
    want = expected(store)
    assert len(got) == len(want) == 2 * 3 * 2
    for col in want.columns:
        a, b = got[col].sort_index(), want[col].sort_index()
        assert a.to_numpy() == pytest.approx(b.to_numpy(), nan_ok=True), col
    assert got.loc[("cifar10", "resnet18", "pgdat", "best"), "aa_count"] == 2  # a missing AA
    assert got.loc[("cifar10", "resnet18", "pgdat", "best"), "seeds"] == 3


def _md_tables(text: str) -> list[list[list[str]]]:
    tables, cur = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append(cur)
            cur = []
    out = []
    for t in tables:
        assert all(line.endswith("|") for line in t)
        rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])] for line in t]
        assert all(re.fullmatch(r"-{3,}", c) for c in rows[1]), rows[1]  # the separator
        assert {len(r) for r in rows} == {len(rows[0])}  # every line as wide as the header
        out.append([rows[0], *rows[2:]])
    return out


def test_markdown_is_a_valid_table_with_bold_best_and_the_margin(store, capsys) -> None:
    code, out, err = cli(["table", "--out", str(store), "--format", "markdown", "--dataset",
                            "cifar10"], capsys)
    assert code == 0, err
    [table] = _md_tables(out)
    head, *lines = table
    want = expected(store).loc[("cifar10", "resnet18")]
    col = {a: next(i for i, h in enumerate(head) if h.startswith(name)) for a, name in
           (("clean", "Clean"), ("pgd20", "PGD-20"), ("aa", "AutoAttack"))}
    by = {(METHOD_OF.get(r[0].split(" (")[0], r[0]), r[1]): r  # labels add "(300 ep)"
          for r in lines}
    for (m, ck), w in want.iterrows():
        for a, i in col.items():
            text = by[(m, ck)][i]
            assert f"{w[a]:.2f}" in text and f"± {w[f'{a}_std']:.2f}" in text, (m, ck, a, text)
            # rows without per-image outcomes cannot be tested: no bold, and every line of
            # the column ties with the best
            several = want.xs(ck, level="checkpoint")[a].notna().sum() > 1
            assert not text.startswith("**") and text.endswith(" ≈") == several, (m, ck, a)
    margin = by[("margin: best method − best other", "best")]
    for a, i in col.items():
        b = want.xs("best", level="checkpoint")[a].sort_values()
        assert margin[i] == f"{b.iloc[-1] - b.iloc[-2]:+.2f}", a


def test_ours_margin_time_column_and_one_seed(store, capsys) -> None:
    code, out, err = cli(["table", "--out", str(store), "--format", "markdown", "--ours",
                            "pgdat", "--time"], capsys)
    assert code == 0, err
    c10, c100 = _md_tables(out)
    want = expected(store).loc[("cifar10", "resnet18")].xs("best", level="checkpoint")
    head, *lines = c10
    i = head.index("PGD-20 (n=10000)")
    margin = next(r for r in lines if r[0].startswith("margin: PGD-AT − best other"))
    lines = [r for r in lines if r is not margin]
    assert margin[i] == f"{want.loc['pgdat', 'pgd20'] - want['pgd20'].drop('pgdat').max():+.2f}"
    h = head.index("GPU-h/cell")
    rows = pd.DataFrame(Store(store).read()[0])
    hours = rows[(rows.dataset == "cifar10") & (rows.checkpoint == "best")].groupby(
        "method")["train_seconds"].mean() / 3600
    for r in lines:
        if r[1] == "best":
            assert float(r[h]) == pytest.approx(hours[METHOD_OF[r[0].split(" (")[0]]], rel=1e-2)
    assert {r[3] for r in c100[1:-1]} == {"1 (no std)"}  # one seed, shown as such
    assert not any("±" in c for r in c100[1:] for c in r)


def test_filters(store, capsys) -> None:
    code, out, _ = cli(["table", "--out", str(store), "--format", "csv", "--dataset",
                          "cifar10", "--methods", "rslad,pgdat", "--checkpoint", "last",
                          "--arch", "resnet18"], capsys)
    got = pd.read_csv(io.StringIO(out))
    assert code == 0 and sorted(got["method"]) == ["pgdat", "rslad"]
    assert set(got["checkpoint"]) == {"last"} and set(got["dataset"]) == {"cifar10"}
    code, _, err = cli(["table", "--out", str(store), "--methods", "peeraidd"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "unknown method in the store 'peeraidd'; did you mean 'peeraid'?" in err


def test_latex_compiles(store, capsys, tmp_path) -> None:
    code, out, err = cli(["table", "--out", str(store), "--format", "latex"], capsys)
    assert code == 0, err
    assert out.count(r"\begin{tabular}") == 2 and r"$\approx$" in out and r"$\pm$" in out
    engine = shutil.which("pdflatex") or shutil.which("lualatex")
    if engine is None:
        pytest.skip("no TeX engine (pdflatex / lualatex) on this machine")
    doc = tmp_path / "t.tex"
    doc.write_text("\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{booktabs}"
                   "\\usepackage{textcomp}\\begin{document}\n" + out + "\n\\end{document}\n")
    res = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", doc.name],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000


def test_reported_view_puts_published_beside_reproduced(store, capsys) -> None:
    code, out, err = cli(["table", "--out", str(store), "--reported", "--format", "csv"],
                           capsys)
    assert code == 0, err
    cmp = pd.read_csv(io.StringIO(out))
    want = expected(store)
    # PeerAiD CIFAR-10 ResNet-18, published 85.01 clean / 54.36 PGD (S), checkpoint unstated:
    # compared with the reproduced `best`
    line = cmp[(cmp.method == "peeraid") & (cmp.dataset == "cifar10") & (cmp.metric == "clean")
               & (cmp.published == 85.01)].iloc[0]
    w = want.loc[("cifar10", "resnet18", "peeraid", "best")]
    assert line.checkpoint == "best" and line.grade == "S"
    assert line.reproduced == pytest.approx(w["clean"])
    assert line.difference == pytest.approx(w["clean"] - 85.01)
    assert line.flag == (abs(w["clean"] - 85.01) > max(1, 2 * w["clean_std"]))
    assert "LISArD" in line.source
    assert set(cmp["grade"]) <= {"P", "S", "T"} and cmp["flag"].any() and not cmp["flag"].all()
    # RSLAD's own paper used its TRADES WRN-34-10 teacher, as bench's paper preset does
    rs = cmp[(cmp.method == "rslad") & cmp.paper.str.startswith("RSLAD")
             & (cmp.dataset == "cifar10")]
    # clean, fgsm and aa: the review gives PGD_SAT 20 steps but no step size, not comparable
    assert set(rs["checkpoint"]) == {"best", "last"} and len(rs) == 2 * 3
    assert set(rs["reproduced_teacher"]) == {"trades:wrn34_10"}
    # a published figure of another teacher is not compared (AdaAD's LTD-teacher RSLAD)
    assert not ((cmp.method == "rslad") & (cmp.published == 48.66)).any()


def test_reported_view_never_shows_a_figure_without_its_grade(store, capsys) -> None:
    code, out, err = cli(["table", "--out", str(store), "--reported", "--format",
                            "markdown"], capsys)
    assert code == 0, err
    tables = _md_tables(out)
    assert tables
    for head, *lines in tables:
        i = head.index("published")
        for r in lines:
            assert re.fullmatch(r"\d+\.\d\d \([PST]\)", r[i]), r[i]
        assert any(r[i].endswith("(T)") for r in lines) or "cifar100" in out
    assert "(T)" in out  # PGD-AT's PeerAiD Table 1 numbers are T: shown graded


def test_reported_lists_what_is_known(capsys) -> None:
    code, out, err = cli(["reported", "--json", "--grade", "T", "--dataset", "cifar10"],
                           capsys)
    assert code == 0, err
    figs = json.loads(out)
    assert figs and {f["grade"] for f in figs} == {"T"} and {f["dataset"] for f in figs} == {
        "cifar10"}
    code, out, err = cli(["reported"], capsys)
    assert code == 0 and "P: primary" in out and "54.36 (S)" in out and "46.79 (T)" in out
    code, _, err = cli(["reported", "--grade", "X"], capsys)
    assert code == 1 and err.startswith("error: unknown grade") and err.count("\n") == 1


def test_reported_figure_names_every_method_and_grade(store, tmp_path, capsys,
                                                      monkeypatch) -> None:
    import matplotlib.image

    from bench.report import plots

    legends = {}
    save = plots._save

    def spy(fig, out_dir, stem):
        legends[stem] = [t.get_text() for ax in fig.axes if ax.get_legend()
                         for t in ax.get_legend().get_texts()]
        return save(fig, out_dir, stem)

    monkeypatch.setattr(plots, "_save", spy)
    code, out, err = cli(["plot", "reported", "--out", str(store), "--dest", str(tmp_path)],
                           capsys)
    assert code == 0, err
    png = tmp_path / "reported_cifar10_resnet18.png"
    assert png.is_file() and (tmp_path / "reported_cifar10_resnet18.pdf").is_file()
    assert matplotlib.image.imread(png)[..., :3].std() > 0.01
    labels = legends["reported_cifar10_resnet18"]
    assert {"PeerAiD", "RSLAD", "PGD-AT", "grade S", "grade T"} <= set(labels)
    assert not set(METHODS) & set(labels)


def _latex_rows(tex: str) -> list[list[str]]:
    """Each tabular's body lines (between the first and the last rule) as cells."""
    out = []
    for block in tex.split(r"\begin{tabular}")[1:]:
        lines = block.split(r"\bottomrule")[0].splitlines()
        body = lines[lines.index(r"\midrule") + 1:]
        out.append([[c.strip() for c in line.removesuffix(r" \\").split(" & ")]
                    for line in body if line != r"\midrule"])
    return out


def test_latex_lines_carry_checkpoint_seeds_and_image_counts(store, capsys) -> None:
    """Every line names its checkpoint (no two lines alike), its seed count, and every column
    the number of test images behind it; the numbers are the rows' means."""
    code, out, err = cli(["table", "--out", str(store), "--format", "latex", "--dataset",
                          "cifar10"], capsys)
    assert code == 0, err
    head = out.splitlines()
    i = head.index(r"\toprule")
    assert head[i + 1] == r"Method & Checkpoint & Seeds & Clean & FGSM & PGD-20 & AutoAttack \\"
    assert head[i + 2].split(" & ")[3:] == ["($n$=10000)"] * 3 + [r"($n$=10000) \\"]
    [lines] = _latex_rows(out)
    *lines, margin = lines
    want = expected(store).loc[("cifar10", "resnet18")]
    assert len(lines) == len(want) == len({(r[0], r[1]) for r in lines})
    for r in lines:
        m, ck = METHOD_OF[r[0].split(" (")[0]], r[1]  # labels add "(300 ep)"
        assert ck in ("best", "last") and r[2] == "3"
        clean = r[3].replace(r"\textbf{", "").replace("}", "")
        assert clean.startswith(f"{want.loc[(m, ck), 'clean']:.2f}"), (m, ck, r[3])
    assert margin[:2] == ["margin: best method $-$ best other", "best"]


def test_csv_and_markdown_carry_checkpoint_seeds_and_image_counts(store, capsys) -> None:
    code, out, err = cli(["table", "--out", str(store), "--format", "csv"], capsys)
    assert code == 0, err
    got = pd.read_csv(io.StringIO(out))
    for col in ("checkpoint", "seeds", "seed_list", "n_clean", "n_aa", "name", "label"):
        assert col in got, col
    assert set(got["n_clean"]) == {10000} and set(got["checkpoint"]) == {"best", "last"}
    assert {tuple(json.loads(s)) for s in got["seed_list"]} == {(0, 1, 2), (0,)}
    assert set(zip(got["method"], got["name"], strict=True)) == set(SHOWN.items())
    code, out, err = cli(["table", "--out", str(store), "--format", "markdown"], capsys)
    for head, *_ in _md_tables(out):
        assert head[:4] == ["method", "checkpoint", "epochs", "seeds"]
        assert all(h.endswith("(n=10000)") for h in head[4:8]), head


def test_ours_without_rows_is_one_clear_error(store, capsys) -> None:
    for argv in (["--ours", "missing"], ["--ours", "rslad", "--methods", "pgdat,peeraid"]):
        for fmt in ("markdown", "latex", "csv", "rich"):
            code, out, err = cli(["table", "--out", str(store), "--format", fmt, *argv], capsys)
            assert code == 1 and out == "" and err.count("\n") == 1, (argv, fmt, out, err)
            assert err.startswith(f"error: --ours {argv[1]}: no stored rows of that method")
            assert "(methods with rows: " in err
    code, out, err = cli(["table", "--out", str(store), "--format", "markdown", "--ours",
                          "PGD-AT"], capsys)  # a display name names its method too
    assert code == 0 and "margin: PGD-AT − best other" in out, err


def test_names_override_display_names(store, capsys) -> None:
    code, out, err = cli(["table", "--out", str(store), "--format", "markdown", "--names",
                          "peeraid=PeerAiD-ours", "--ours", "peeraid"], capsys)
    assert code == 0, err
    [c10, c100] = _md_tables(out)
    shown = {r[0].split(" (")[0] for r in c10[1:]}
    assert shown == {"PeerAiD-ours", "RSLAD", "PGD-AT", "margin: PeerAiD-ours − best other"}
    code, out, err = cli(["table", "--out", str(store), "--format", "latex", "--names",
                          "pgdat=Madry"], capsys)
    assert code == 0 and "Madry (200 ep) & best & 3 &" in out and "PGD-AT" not in out, err
    code, out, err = cli(["table", "--out", str(store), "--reported", "--format", "csv",
                          "--names", "peeraid=PeerAiD-ours"], capsys)
    cmp = pd.read_csv(io.StringIO(out))
    assert set(cmp.loc[cmp.method == "peeraid", "label"].str.split(" ").str[0]) == {
        "PeerAiD-ours"}
    code, _, err = cli(["table", "--out", str(store), "--names", "peeraidd=X"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "unknown method in --names 'peeraidd'; did you mean 'peeraid'?" in err


def test_eps_labels_keep_what_a_user_typed() -> None:
    from bench.report.aggregate import fmt_eps

    assert fmt_eps(8 / 255) == "8/255 (0.0314)" and fmt_eps(16 / 255) == "16/255 (0.0627)"
    assert fmt_eps(0.2) == "0.2"  # exactly 51/255, but typed as 0.2
    assert fmt_eps(0.1) == "0.1" and fmt_eps(float("nan")) == "mixed"
