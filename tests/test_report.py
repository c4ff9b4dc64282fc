"""run_all.py's report from a synthetic store: tables, CSV, LaTeX, figures; no training."""

from __future__ import annotations

import contextlib
import io
import json
import statistics
from pathlib import Path

import pytest
import torch
from cli_run import run_all_module

from bench.core.fingerprint import fingerprint
from bench.core.store import Store
from bench.train.cells import Cell, resolve
from bench.train.pipeline import row_key, teacher_codes

METHODS = ("pgdat", "rslad")
SHOWN = {"pgdat": "PGD-AT", "rslad": "RSLAD"}  # their display names in tables and figures
SEEDS = (0, 1)
CHECKPOINTS = ("best", "last")
EPOCHS = 2
ATTACKS = ("clean", "fgsm", "pgd20", "pgd20s", "cw", "aa")
N_IMAGES = {"clean": 360, "fgsm": 360, "pgd20": 360, "pgd20s": 360, "cw": 360, "aa": 20}
NO_AA = ("rslad", 1, "best")  # this row was evaluated without AutoAttack
NO_HISTORY = ("rslad", 1)  # this cell's checkpoint is gone
BAD_FILES = {"broken.json": "{not json", "notes.txt": "hello", "foreign.json": '{"a": 1}'}
STALE_ID = "pgdat-faithful-digits-small_cnn-s0-0123456789"  # an older run of pgdat seed 0


run_all = run_all_module()


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
                   "attack_seconds": {"clean": 0.5, "pgd20": 1.25},
                   "per_class": {"clean": [0.5, 1.0, 0.25], "pgd20": [0.125, 0.5, 0.0]},
                   "git_commit": "abc", "device": "cpu", "created": "2024-01-01T00:00:00",
                   "code": fingerprint(r.cls), "teacher_code": teacher_codes(r)}
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


FIGURES = ("accuracy_digits_small_cnn_best", "robustness_digits_small_cnn_best",
           "training_digits_small_cnn")  # named for what they show: kind, data, arch, checkpoint


def test_every_file_written(report) -> None:
    rep, out, _ = report
    expected = ["results.md", "results.csv", "results.tex", "index.html"]
    for stem in FIGURES:
        expected += [f"{stem}.png", f"{stem}.pdf"]
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
        assert f"| {SHOWN[m]} |" in md and f"| {m} |" not in md
    for m in METHODS:  # mean ± std over the two seeds, as the test computes it
        for a in ("clean", "pgd20", "cw"):
            vals = [value(m, s, "best", a) * 100 for s in SEEDS]
            assert f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}" in md, (m, a)
    # rslad's best AutoAttack number comes from seed 0 only, and says so
    aa0 = value("rslad", 0, "best", "aa") * 100
    assert f"{aa0:.2f} (1/2 seeds)" in md
    assert "PGD-20 (n=360)" in md and "AutoAttack (n=20)" in md
    assert "eps = 0.1" in md
    for stem in FIGURES:
        assert f"]({stem}.png)" in md
    missing = resolve(cells()[METHODS.index("rslad") * 2 + 1]).id
    assert f"no training history (missing checkpoint) for: `{missing}`" in md
    assert "are left out: a newer cell" in md and f"`{STALE_ID}`" in md


def test_csv_flat(report) -> None:
    import pandas as pd

    df = pd.read_csv(report[0] / "results.csv")
    assert len(df) == len(METHODS) * len(SEEDS) * len(CHECKPOINTS) + len(CHECKPOINTS)
    assert (~df["in_report"]).sum() == len(CHECKPOINTS)
    assert set(df.loc[~df["in_report"], "cell_id"]) == {STALE_ID}
    assert df["aa_pct"].isna().sum() == 1
    for c in df.columns:  # no Python reprs left: every nested value is JSON
        text = df[c].dropna().astype(str)
        assert not text.str.contains("'").any(), c
        for v in text[text.str.startswith(("{", "["))]:
            json.loads(v)
    assert set(df.loc[df["in_report"], "label"]) == set(SHOWN.values())


def test_csv_accuracies_in_percent_and_nested_fields_as_json(report, store) -> None:
    """results.csv says its units: each `<attack>_pct` is the row's fraction x 100, `n_<attack>`
    its image count; config, versions, attack_seconds, per_class, aa_flags parse as JSON."""
    import pandas as pd

    df = pd.read_csv(report[0] / "results.csv")
    text = pd.read_csv(report[0] / "results.csv", dtype=str)
    for a in ATTACKS:
        assert f"{a}_pct" in df and a not in df, a
        assert f"n_{a}" in df and not text[f"n_{a}"].str.contains(".", regex=False).any(), a
    stored = {r["key"]: r for r in Store(store).read()[0]}
    checked = 0
    for _, line in df.iterrows():
        row = stored[f"{line['cell_id']}--{line['checkpoint']}"]
        for a in ATTACKS:
            if a not in row:
                assert pd.isna(line[f"{a}_pct"])
                continue
            assert line[f"{a}_pct"] == pytest.approx(100 * row[a], abs=1e-9), (a, line["key"])
            assert line[f"n_{a}"] == row[f"n_{a}"] == N_IMAGES[a]
            checked += 1
        config = json.loads(line["config"])
        assert config == json.loads(json.dumps(row["config"]))
        assert config["params"]["epochs"] == EPOCHS
        assert json.loads(line["versions"]) == row["versions"]
        assert json.loads(line["attack_seconds"]) == row["attack_seconds"]
        assert json.loads(line["aa_flags"]) == []
        per_class = json.loads(line["per_class_pct"])
        assert per_class == {k: [pytest.approx(100 * v) for v in vs]
                             for k, vs in row["per_class"].items()}
    assert checked == len(df) * len(ATTACKS) - 1  # every number, one AutoAttack missing
    assert "per_class" not in df and "config.params.epochs" not in df


def test_latex(report) -> None:
    tex = (report[0] / "results.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 1 and r"\end{tabular}" in tex
    assert "PGD-AT & best & 2 &" in tex and "RSLAD & best & 2 &" in tex and r"$\pm$" in tex
    head = tex.splitlines()[tex.splitlines().index(r"\toprule") + 1:][:2]
    assert head[0].startswith("Method & Checkpoint & Seeds & Clean & FGSM & PGD-20")
    assert "($n$=360) & ($n$=360)" in head[1] and head[1].rstrip(" \\").endswith("($n$=20)")
    best_pgd = max(statistics.mean(value(m, s, "best", "pgd20") * 100 for s in SEEDS)
                   for m in METHODS)
    # these rows keep no per-image outcomes: no test is possible, so no bold, a tie mark
    assert r"\textbf" not in tex and rf"{best_pgd:.2f}$\approx$" in tex


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
    monkeypatch.setattr(run_all, "write_report", lambda *a: reports.append(a[:2]) or [])
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
    assert sorted(agg.index) == ["RSLAD {t=1}", "RSLAD {t=4}"]
    assert agg.loc["RSLAD {t=1}", "pgd20"] == pytest.approx(60.0)
    assert agg.loc["RSLAD {t=1}", "seeds"] == 2 and agg.loc["RSLAD {t=4}", "seeds"] == 1


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
            assert SHOWN[m] in legend and m not in legend, (stem, sorted(legend))
            h = legend[SHOWN[m]]
            got = h.get_facecolor() if hasattr(h, "get_facecolor") else h.get_color()
            got = got[0] if hasattr(got, "ndim") and got.ndim == 2 else got
            assert tuple(got)[:3] == pytest.approx(tuple(color)[:3], abs=1e-6), (stem, m)
        return save(fig, out_dir, stem)

    monkeypatch.setattr(bench.report.plots, "_save", spy)
    for stem in FIGURES:
        kind = stem.split("_")[0]
        main(["plot", kind, "--out", str(store), "--dest", str(tmp_path), "--dataset", "digits"])
        printed = capsys.readouterr().out.split()
        assert sorted(Path(p).name for p in printed) == [f"{stem}.pdf", f"{stem}.png"]
        img = matplotlib.image.imread(tmp_path / f"{stem}.png")
        assert img.ndim == 3 and img.shape[0] > 200 and img[..., :3].std() > 0.01
        assert (tmp_path / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
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


# --- paper-ready figures: one checkpoint each, named for what they show, fixed colours ------

def _points(fig) -> set[tuple[float, float]]:
    """Every data point drawn with an attack's marker (not error-bar caps, not the legend)."""
    from bench.report.plots import ATTACK_MARKERS

    return {(float(x), float(y)) for ax in fig.axes for line in ax.lines
            if line.get_marker() in ATTACK_MARKERS.values()
            for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)}


def _mean(method: str, ckpt: str, attack: str) -> float:
    vals = [value(method, s, ckpt, attack) * 100 for s in SEEDS
            if attack != "aa" or (method, s, ckpt) != NO_AA]
    return statistics.mean(vals)


@pytest.mark.parametrize("ckpt", ["best", "last"])
def test_robustness_points_all_from_one_checkpoint(store: Path, tmp_path: Path, monkeypatch,
                                                   capsys, ckpt: str) -> None:
    """Every point of the robustness figure is (clean, attack) of the checkpoint asked for,
    every attack of it is there, and none of another checkpoint's numbers is drawn."""
    import bench.report.plots
    from bench.cli import main

    figs = {}
    save = bench.report.plots._save

    def spy(fig, out_dir, stem):
        figs[stem] = _points(fig)
        return save(fig, out_dir, stem)

    monkeypatch.setattr(bench.report.plots, "_save", spy)
    args = ["--checkpoint", ckpt] if ckpt != "best" else []
    main(["plot", "robustness", "--out", str(store), "--dest", str(tmp_path), *args])
    assert capsys.readouterr().out.split() == [
        str(tmp_path / f"robustness_digits_small_cnn_{ckpt}.{e}") for e in ("png", "pdf")]
    [(stem, got)] = figs.items()
    want = {(round(_mean(m, ckpt, "clean"), 6), round(_mean(m, ckpt, a), 6)) for m in METHODS
            for a in ("fgsm", "pgd20", "cw", "aa")}
    other = "last" if ckpt == "best" else "best"
    wrong = {(round(_mean(m, other, "clean"), 6), round(_mean(m, other, a), 6))
             for m in METHODS for a in ("fgsm", "pgd20", "cw", "aa")}
    got = {(round(x, 6), round(y, 6)) for x, y in got}
    assert got == want, (stem, sorted(got ^ want))
    assert not got & wrong


def test_a_checkpoint_figure_never_overwrites_another(store: Path, tmp_path: Path,
                                                      capsys) -> None:
    from bench.cli import main

    for kind in ("accuracy", "robustness"):
        for ckpt in ("best", "last"):
            main(["plot", kind, "--out", str(store), "--dest", str(tmp_path), "--checkpoint",
                  ckpt])
        main(["plot", kind, "--out", str(store), "--dest", str(tmp_path), "--methods", "rslad"])
    capsys.readouterr()
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["accuracy_digits_small_cnn_best.png",
                     "accuracy_digits_small_cnn_best_rslad.png",
                     "accuracy_digits_small_cnn_last.png",
                     "robustness_digits_small_cnn_best.png",
                     "robustness_digits_small_cnn_best_rslad.png",
                     "robustness_digits_small_cnn_last.png"]
    best, last = (tmp_path / f"accuracy_digits_small_cnn_{c}.png" for c in ("best", "last"))
    assert best.read_bytes() != last.read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["plot", "accuracy", "--out", str(store), "--checkpoint", "swa_best"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.count("\n") == 1
    assert "no stored rows of checkpoint 'swa_best' match (stored: best, last)" in err


def _fake_transfer(root: Path, models: list[tuple[str, str, int, str]], attack: str,
                   key: str) -> None:
    """A stored transfer matrix over runs (method, id, seed, checkpoint) with config.json."""
    ids = []
    for method, run_id, seed, ck in models:
        d = root / "runs" / run_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({
            "method": method, "preset": "faithful", "seed": seed, "dataset": "digits",
            "arch": "small_cnn"}))
        ids.append(f"{run_id}:{ck}")
    rows = [{"source": s, "target": t, "attack": attack, "accuracy": 0.5, "n": 360}
            for s in ids for t in ids]
    labels = {i: f"{m} s{seed}:{ck}" for i, (m, _, seed, ck) in zip(ids, models, strict=True)}
    (root / "analyses").mkdir(exist_ok=True)
    (root / "analyses" / f"transfer-{attack}-{key}.json").write_text(
        json.dumps({"eps": 0.1, "labels": labels, "rows": rows}))


def test_transfer_figures_are_named_by_their_models(tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    import bench.report.analysis_plots as analysis_plots
    from bench.cli import main

    two = [("pgdat", "pgdat-x-s0", 0, "best"), ("peeraid", "peeraid-x-s0", 0, "peer")]
    _fake_transfer(tmp_path, two, "pgd20", "aaaaaaaaaa")
    _fake_transfer(tmp_path, two, "fgsm", "bbbbbbbbbb")
    many = [("pgdat", f"pgdat-y-s{s}", s, ck) for s in range(6) for ck in ("best", "last")]
    _fake_transfer(tmp_path, many, "pgd20", "cccccccccc")
    ticks = {}
    save = analysis_plots._save

    def spy(fig, out_dir, stem):
        ticks[stem] = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        return save(fig, out_dir, stem)

    monkeypatch.setattr(analysis_plots, "_save", spy)
    main(["plot", "transfer", "--out", str(tmp_path), "--dest", str(tmp_path / "f"),
          "--names", "peeraid=PeerAiD (ours)"])
    names = sorted(Path(p).name for p in capsys.readouterr().out.split() if p.endswith(".png"))
    long = [n for n in names if "pgdat-s0-best_pgdat-s0-last" in n]
    assert len(names) == 3 and len(long) == 1
    assert {n for n in names if n not in long} == {
        "transfer_digits_small_cnn_fgsm_pgdat-s0-best_peeraid-s0-peer.png",
        "transfer_digits_small_cnn_pgd20_pgdat-s0-best_peeraid-s0-peer.png"}
    assert long[0].endswith("more-cccccccccc.png") and len(long[0]) < 130
    assert ticks["transfer_digits_small_cnn_fgsm_pgdat-s0-best_peeraid-s0-peer"] == [
        "PGD-AT s0:best", "PeerAiD (ours) s0:peer"]


def test_builtin_colour_order_is_every_shipped_method() -> None:
    from bench.core import registry
    from bench.report.figures import BUILTIN_ORDER

    shipped = {m for m in registry.names()
               if registry.get(m).__module__.startswith("bench.methods.")}
    assert set(BUILTIN_ORDER) == shipped and len(BUILTIN_ORDER) == len(shipped)


def _fake_plugin(monkeypatch, name: str, parent=None):
    """Register a Distiller as a plugin would (no display_name of its own)."""
    from bench.core import registry

    parent = parent or registry.get("pgdat")
    cls = type(f"Fake_{name}", (parent,), {"__module__": "my_plugin.fake"})
    monkeypatch.setattr(cls, "name", name, raising=False)
    monkeypatch.setitem(registry._METHODS, name, cls)
    return cls


def test_colours_do_not_change_when_a_plugin_is_installed(monkeypatch) -> None:
    """A built-in's colour is fixed, a plugin's a function of its name: installing another
    plugin (even one sorting before every built-in) changes no other method's colour."""
    from bench.core import registry
    from bench.report.figures import BUILTIN_ORDER, method_colors, plugin_palette

    _fake_plugin(monkeypatch, "zz_first")
    everyone = [*registry.names(), "gone_plugin"]  # rows of a plugin no longer installed
    before = method_colors(everyone)
    for name in ("aaa_new", "mmm_new"):
        _fake_plugin(monkeypatch, name)
        after = method_colors(everyone)
        assert after == before, name
        both = method_colors([*everyone, name])
        assert {m: both[m] for m in everyone} == before
        assert len({tuple(c) for c in both.values()}) == len(both)  # still one colour each
    # and the built-ins' colours are exactly the colour-blind palette's, in the fixed order
    assert method_colors(["absld", "pgdat"])["pgdat"] == before["pgdat"]
    assert all(tuple(before[m]) not in {tuple(c) for c in plugin_palette()}
               for m in everyone if m in BUILTIN_ORDER)  # other tests register methods too


def test_plugin_colours_are_visible_on_white() -> None:
    from bench.report.figures import plugin_palette

    def luminance(rgb) -> float:
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    pal = plugin_palette()
    assert len({tuple(c) for c in pal}) == len(pal) >= 12
    assert all(1.05 / (luminance(c) + 0.05) >= 2.0 for c in pal)


def test_display_names_declared_inherited_never_and_overridable(monkeypatch) -> None:
    from bench.core import registry
    from bench.core.distiller import Distiller
    from bench.report.aggregate import display_name, parse_names

    want = {"peeraid": "PeerAiD", "rslad": "RSLAD", "pgdat": "PGD-AT", "trades": "TRADES",
            "ard": "ARD", "adaad": "AdaAD", "iad": "IAD", "igdm": "IGDM", "saad": "SAAD",
            "absld": "ABSLD", "mtard": "MTARD", "bmtard": "B-MTARD", "ciard": "CIARD",
            "standard": "Standard"}
    assert {m: display_name(m) for m in want} == want
    assert Distiller.display_name is None
    _fake_plugin(monkeypatch, "myplug", registry.get("peeraid"))  # a subclass of PeerAiD
    assert display_name("myplug") == "myplug"  # not the parent's "PeerAiD"
    assert display_name("uninstalled") == "uninstalled"
    names = parse_names(["peeraid=PeerAiD-ours,rslad='RSLAD, T=4'", "pgdat = Madry"])
    assert names == {"peeraid": "PeerAiD-ours", "rslad": "RSLAD, T=4", "pgdat": "Madry"}
    assert display_name("peeraid", names) == "PeerAiD-ours"
    from bench import BenchError

    with pytest.raises(BenchError, match="did you mean 'peeraid'"):
        parse_names("peeraidd=X", registry.names())
    with pytest.raises(BenchError, match="METHOD=NAME"):
        parse_names("peeraid")


def test_names_override_the_report(store: Path, tmp_path: Path) -> None:
    import pandas as pd

    rc, _, err = run(["--no-train", "--out", str(store), "--report-dir", str(tmp_path),
                      "--names", "pgdat=Madry-AT"])
    assert rc == 0, err
    md = (tmp_path / "results.md").read_text()
    assert "| Madry-AT |" in md and "| RSLAD |" in md and "PGD-AT" not in md
    assert "Madry-AT & best &" in (tmp_path / "results.tex").read_text()
    assert "Madry-AT" in (tmp_path / "index.html").read_text()
    csv = pd.read_csv(tmp_path / "results.csv")
    assert set(csv.loc[csv["method"] == "pgdat", "label"]) == {"Madry-AT"}
    rc, _, err = run(["--no-train", "--out", str(store), "--report-dir", str(tmp_path),
                      "--names", "pgdatt=X"])
    assert rc == 1 and "did you mean 'pgdat'" in err and err.count("\n") == 1


def test_ablation_figures_of_two_checkpoints_do_not_overwrite(tmp_path: Path, capsys) -> None:
    from bench.cli import main

    st = Store(tmp_path)
    for lr in (0.01, 0.1):
        for ck in ("best", "last"):
            cell = f"standard-faithful-digits-small_cnn-s0-{int(lr * 100):04d}"
            st.put(f"{cell}--{ck}", {
                "method": "standard", "preset": "faithful", "dataset": "digits",
                "arch": "small_cnn", "epochs": 1, "checkpoint": ck, "seed": 0, "eps": 0.1,
                "cell_id": cell, "created": "2026-01-01", "clean": 0.5 + lr, "n_clean": 360,
                "config": {"method": "standard", "preset": "faithful", "seed": 0,
                           "params": {"lr": lr, "epochs": 1}}})
    for args in ([], ["--checkpoint", "last"]):
        main(["plot", "ablation", "--param", "lr", "--out", str(tmp_path), *args])
    printed = [Path(p).name for p in capsys.readouterr().out.split()]
    assert printed == [f"ablation_lr_digits_small_cnn_{ck}.{e}" for ck in ("best", "last")
                       for e in ("png", "pdf")]
