"""run_all.py's report from a synthetic store: tables, CSV, LaTeX, figures; no training."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import statistics
from pathlib import Path

import pytest
import torch

from bench.core.store import Store
from bench.train.cells import Cell, resolve
from bench.train.pipeline import row_key

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("pgdat", "rslad")
SEEDS = (0, 1)
CHECKPOINTS = ("best", "last")
EPOCHS = 2
ATTACKS = ("clean", "fgsm", "pgd20", "pgd20s", "cw", "aa")
N_IMAGES = {"clean": 360, "fgsm": 360, "pgd20": 360, "pgd20s": 360, "cw": 360, "aa": 20}
NO_AA = ("rslad", 1, "best")  # this row was evaluated without AutoAttack
NO_HISTORY = ("rslad", 1)  # this cell's checkpoint is gone
BAD_FILES = {"broken.json": "{not json", "notes.txt": "hello", "foreign.json": '{"a": 1}'}
STALE_ID = "pgdat-faithful-digits-small_cnn-s0-0123456789"  # an older run of pgdat seed 0


def _load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


run_all = _load_run_all()


def value(method: str, seed: int, ckpt: str, attack: str) -> float:
    """A distinct, plausible accuracy for every (method, seed, checkpoint, attack)."""
    base = {"clean": 0.90, "fgsm": 0.60, "pgd20": 0.45, "pgd20s": 0.47, "cw": 0.43, "aa": 0.40}
    return round(base[attack] + 0.03 * METHODS.index(method) + 0.02 * seed
                 - 0.01 * (ckpt == "last") + 0.001 * ATTACKS.index(attack), 4)


def cells() -> list[Cell]:
    return [Cell(m, "digits", seed=s, overrides=(("epochs", EPOCHS),))
            for m in METHODS for s in SEEDS]


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_all.main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store with 8 rows under the real cell ids, 3 histories, and 3 foreign files."""
    root = tmp_path_factory.mktemp("store")
    st = Store(root)
    for c in cells():
        r = resolve(c)
        for ckpt in CHECKPOINTS:
            row = {"method": c.method, "preset": c.preset, "dataset": c.dataset,
                   "arch": r.arch, "seed": c.seed, "epochs": EPOCHS, "checkpoint": ckpt,
                   "eps": r.params.eps, "aa_flags": [], "train_seconds": 12.5,
                   "wall_seconds": 13.0, "eval_seconds": 2.0,
                   "config_hash": r.id.rsplit("-", 1)[1], "cell_id": r.id, "config": r.config,
                   "versions": {"bench": "0.1.0", "torch": torch.__version__},
                   "git_commit": "abc", "device": "cpu", "created": "2024-01-01T00:00:00"}
            for a in ATTACKS:
                if a == "aa" and (c.method, c.seed, ckpt) == NO_AA:
                    continue
                row[a] = value(c.method, c.seed, ckpt, a)
                row[f"n_{a}"] = N_IMAGES[a]
            st.put(row_key(r, ckpt), row)
            if (c.method, c.seed) == ("pgdat", 0):  # the same cell stored by older code
                stale = {**row, "cell_id": STALE_ID, "created": "2023-01-01T00:00:00",
                         "config": {**r.config, "added_later": None}, "pgd20": 0.0}
                st.put(f"{STALE_ID}--{ckpt}", stale)
        if (c.method, c.seed) == NO_HISTORY:
            continue
        hist = [{"epoch": e, "lr": 0.05, "loss": 2.0 / (e + 1) + 0.1 * c.seed,
                 "pgd10": 0.3 + 0.05 * e + 0.01 * c.seed, "seconds": 1.0}
                for e in range(EPOCHS)]
        if c.method == "pgdat":
            hist[-1]["swa_pgd10"] = 0.42
        run_dir = root / "runs" / r.id
        run_dir.mkdir(parents=True)
        torch.save({"format": "bench-checkpoint-1", "epoch": EPOCHS, "history": hist},
                   run_dir / "ckpt.pt")
    for name, text in BAD_FILES.items():
        (st.rows_dir / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def report(store: Path) -> tuple[Path, str, str]:
    rc, out, err = run(["--no-train", "--out", str(store)])
    assert rc == 0, err
    return store / "report", out, err


def test_every_file_written(report) -> None:
    rep, out, _ = report
    expected = ["results.md", "results.csv", "results.tex", "index.html"]
    for kind in ("accuracy", "robustness", "training"):
        expected += [f"{kind}_digits_small_cnn.png", f"{kind}_digits_small_cnn.pdf"]
    for name in expected:
        assert (rep / name).is_file() and (rep / name).stat().st_size > 0, name
        assert name in out


def test_pngs_are_images(report) -> None:
    import matplotlib.image

    pngs = sorted(report[0].glob("*.png"))
    assert len(pngs) == 3
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert img.shape[2] in (3, 4)
        assert img[..., :3].std() > 0.01  # not a blank canvas


def test_markdown_numbers(report) -> None:
    md = (report[0] / "results.md").read_text()
    assert "**" in md  # the best of each column in bold; compared without it below
    md = md.replace("**", "")
    assert "## digits / small_cnn" in md and "How measured" in md
    for m in METHODS:
        assert f"| {m} |" in md
    for m in METHODS:  # mean ± std over the two seeds, as the test computes it
        for a in ("clean", "pgd20", "cw"):
            vals = [value(m, s, "best", a) * 100 for s in SEEDS]
            assert f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}" in md, (m, a)
    # rslad's best AutoAttack number comes from seed 0 only, and says so
    aa0 = value("rslad", 0, "best", "aa") * 100
    assert f"{aa0:.2f} (1/2 seeds)" in md
    assert "PGD-20 (n=360)" in md and "AutoAttack (n=20)" in md
    assert "eps = 0.1" in md
    for p in ("accuracy", "robustness", "training"):
        assert f"]({p}_digits_small_cnn.png)" in md
    missing = resolve(cells()[METHODS.index("rslad") * 2 + 1]).id
    assert f"no training history (missing checkpoint) for: `{missing}`" in md
    assert "are left out: a newer cell" in md and f"`{STALE_ID}`" in md


def test_csv_flat(report) -> None:
    import pandas as pd

    df = pd.read_csv(report[0] / "results.csv")
    assert len(df) == len(METHODS) * len(SEEDS) * len(CHECKPOINTS) + len(CHECKPOINTS)
    assert (~df["in_report"]).sum() == len(CHECKPOINTS)
    assert set(df.loc[~df["in_report"], "cell_id"]) == {STALE_ID}
    assert "config" not in df and "versions" not in df
    assert "config.params.epochs" in df and (df["config.params.epochs"] == EPOCHS).all()
    assert df["aa"].isna().sum() == 1
    for c in df.columns:  # no dict / list reprs left
        assert not df[c].astype(str).str.startswith(("{", "[")).any(), c


def test_latex(report) -> None:
    tex = (report[0] / "results.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 1 and r"\end{tabular}" in tex
    assert "pgdat &" in tex and "rslad &" in tex and r"$\pm$" in tex
    best_pgd = max(statistics.mean(value(m, s, "best", "pgd20") * 100 for s in SEEDS)
                   for m in METHODS)
    assert rf"\textbf{{{best_pgd:.2f}}}" in tex


def test_foreign_files_reported_not_fatal(report) -> None:
    rep, _, err = report
    md = (rep / "results.md").read_text()
    assert "## Skipped files" in md
    for name in BAD_FILES:
        assert name in err and name in md


def test_stored_cells_are_reused_not_trained(store: Path, tmp_path: Path,
                                             monkeypatch) -> None:
    import bench.train.pipeline

    def no_training(*a, **k):
        raise AssertionError("run_all trained a stored cell")

    reports = []
    monkeypatch.setattr(bench.train.pipeline, "run_cell", no_training)
    monkeypatch.setattr(run_all, "write_report", lambda *a: reports.append(a) or [])
    rc, out, err = run(["--methods", ",".join(METHODS), "--seeds", "0,1", "--epochs",
                        str(EPOCHS), "--out", str(store), "--device", "cpu",
                        "--report-dir", str(tmp_path / "rep")])
    assert rc == 0, err
    assert out.count("reuse ") == len(METHODS) * len(SEEDS)
    assert "4 cell(s) reused" in out and "0 to train" in out
    assert reports == [(store, tmp_path / "rep")]


def test_empty_store_and_bad_options(tmp_path: Path) -> None:
    rc, _, err = run(["--no-train", "--out", str(tmp_path)])
    assert rc == 0, err
    assert "No result rows" in (tmp_path / "report" / "results.md").read_text()
    rc, _, err = run(["--no-train", "--out", str(tmp_path), "--methods", "nosuch"])
    assert rc == 1 and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_setups_split_and_stale_cells_dropped() -> None:
    import pandas as pd

    from bench.report.aggregate import aggregate, current

    def row(cell, seed, t, created, pgd):
        return {"method": "rslad", "preset": "faithful", "dataset": "digits", "arch": "a",
                "epochs": 2, "checkpoint": "best", "seed": seed, "cell_id": cell,
                "created": created, "pgd20": pgd, "n_pgd20": 10, "eps": 0.1,
                "config": {"seed": seed, "params": {"t": t, "lr": 0.1}}}

    df = pd.DataFrame([row("a0", 0, 1, "2", 0.5), row("a1", 1, 1, "2", 0.7),
                       row("old", 0, 1, "1", 0.0), row("b0", 0, 4, "2", 0.3)])
    kept, old = current(df)
    assert list(old["cell_id"]) == ["old"]
    agg = aggregate(kept).set_index("label")
    assert sorted(agg.index) == ["rslad {t=1}", "rslad {t=4}"]
    assert agg.loc["rslad {t=1}", "pgd20"] == pytest.approx(60.0)
    assert agg.loc["rslad {t=1}", "seeds"] == 2 and agg.loc["rslad {t=4}", "seeds"] == 1


def test_every_figure_kind_is_a_real_image_naming_every_method(store: Path, tmp_path: Path,
                                                               monkeypatch, capsys) -> None:
    """`bench plot KIND` for each report figure: PNG + PDF, every method in the legend, the
    same colour for a method in every figure, labelled axes."""
    import matplotlib.image

    import bench.report.plots
    from bench.cli import main
    from bench.report.figures import method_colors

    seen: dict[str, list] = {}
    save = bench.report.plots._save

    def spy(fig, out_dir, stem):
        seen[stem] = fig
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel(), (stem, ax.get_title())
        legend = {t.get_text(): h for ax in fig.axes if ax.get_legend()
                  for t, h in zip(ax.get_legend().get_texts(),
                                  ax.get_legend().legend_handles, strict=True)}
        for m, color in method_colors(list(METHODS)).items():
            assert m in legend, (stem, sorted(legend))
            h = legend[m]
            got = h.get_facecolor() if hasattr(h, "get_facecolor") else h.get_color()
            got = got[0] if hasattr(got, "ndim") and got.ndim == 2 else got
            assert tuple(got)[:3] == pytest.approx(tuple(color)[:3], abs=1e-6), (stem, m)
        return save(fig, out_dir, stem)

    monkeypatch.setattr(bench.report.plots, "_save", spy)
    for kind in ("accuracy", "robustness", "training"):
        main(["plot", kind, "--out", str(store), "--dest", str(tmp_path), "--dataset", "digits"])
        printed = capsys.readouterr().out.split()
        assert sorted(Path(p).name for p in printed) == [f"{kind}_digits_small_cnn.pdf",
                                                        f"{kind}_digits_small_cnn.png"]
        png = tmp_path / f"{kind}_digits_small_cnn.png"
        img = matplotlib.image.imread(png)
        assert img.ndim == 3 and img.shape[0] > 200 and img[..., :3].std() > 0.01
        assert (tmp_path / f"{kind}_digits_small_cnn.pdf").read_bytes()[:5] == b"%PDF-"
    assert len(seen) == 3


def test_method_colours_are_distinct_and_visible_on_white() -> None:
    """Every built-in method its own colour, each at least 2:1 in contrast with a white
    background (WCAG's relative luminance; the colour-blind palette's yellow has 1.4:1, its
    pink 1.7:1)."""
    from bench.core import registry
    from bench.report.figures import method_colors

    colours = method_colors(registry.names())
    assert len({tuple(c) for c in colours.values()}) == len(colours)

    def luminance(rgb) -> float:
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    for m, c in colours.items():
        assert 1.05 / (luminance(c) + 0.05) >= 2.0, (m, c)


def test_plot_lists_kinds_and_rejects_bad_ones(store: Path, capsys) -> None:
    from bench.cli import main

    main(["plot", "--help"])
    out = capsys.readouterr().out
    for kind in ("accuracy", "robustness", "training"):
        assert f"  {kind} " in out
    for argv, needle in ((["plot", "acuracy"], "unknown figure 'acuracy'; did you mean"),
                         (["plot", "accuracy", "--datset", "x"], "did you mean '--dataset'"),
                         (["plot", "accuracy", "--dataset", "cifar10"], "no stored rows"),
                         (["plot"], "bench plot needs a KIND (valid: ")):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--out", str(store)])
        err = capsys.readouterr().err
        assert exc.value.code == 1 and err.count("\n") == 1 and needle in err, err
