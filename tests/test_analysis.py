"""The analyses on the embedded default: tutor accuracy recomputed independently, transfer
matrices, attack-strength curves, per-class accuracies, and their commands' bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.cli import main
from bench.core.store import Store
from bench.data import datasets as data
from bench.eval import analysis
from bench.train.cells import Cell
from bench.train.pipeline import EvalOptions, run_cell
from bench.train.runner import RunOptions, Trainer

EPOCHS = 5
ATTACKED_ALONE: dict[str, list[int]] = {}  # per method and epoch: tutor_alone calls
EPS = data.spec("digits").eps


@pytest.fixture(scope="module")
def results(tmp_path_factory, monkeypatch_module) -> tuple[Path, dict, dict]:
    """standard, pgdat (also RSLAD's teacher), rslad and peeraid, 3 epochs each; the student
    and tutor of every epoch are snapshotted as the runner measures them."""
    out = tmp_path_factory.mktemp("analyses")
    snaps: dict[str, list[tuple[int, torch.nn.Module, torch.nn.Module]]] = {}
    after, alone, calls = Trainer._after_epoch, analysis.tutor_alone, []

    def snapshot(self: Trainer, epoch: int, loss: float, seconds: float) -> None:
        tutor = self.method.peer if self.method.peer is not None else self.method.teacher
        if tutor is not None:
            snaps.setdefault(self.r.cell.method, []).append(
                (epoch, copy.deepcopy(self.method.student), copy.deepcopy(tutor)))
        calls.append([])
        after(self, epoch, loss, seconds)
        ATTACKED_ALONE.setdefault(self.r.cell.method, []).append(len(calls.pop()))

    def counting(*args, **kwargs):
        calls[-1].append(1)
        return alone(*args, **kwargs)

    monkeypatch_module.setattr(Trainer, "_after_epoch", snapshot)
    monkeypatch_module.setattr(analysis, "tutor_alone", counting)
    opts, store = RunOptions(out=out, log=lambda *_: None), Store(out)
    for method in ("standard", "pgdat", "rslad", "peeraid"):
        attacks = ("clean", "pgd20", "aa") if method == "pgdat" else ("clean", "pgd20")
        run_cell(Cell(method, overrides=(("epochs", EPOCHS),)), opts,
                 EvalOptions(attacks=attacks, aa_samples=24), store)
    rows = {(r["method"], r["checkpoint"]): r for r in store.read()[0]}
    return out, rows, snaps


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _own_pgd10(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PGD-10, written out here: uniform start, step eps/4, sign steps, clip to the ball."""
    x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(10):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + EPS / 4 * g.sign(), x - EPS), x + EPS)
        x_adv = x_adv.clamp(0, 1)
    return x_adv.detach()


def _acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum()) / len(y)


@pytest.mark.parametrize("method", ["peeraid", "rslad"])
def test_tutor_accuracy_recorded_every_epoch_and_recomputed(results, method: str) -> None:
    out, rows, snaps = results
    from bench.train import runs

    hist = runs.find(out, f"{method}-").history()
    assert [h["epoch"] for h in hist] == list(range(EPOCHS))
    assert [e for e, *_ in snaps[method]] == list(range(EPOCHS))
    x, y = data.as_tensors(data.load("digits", "test"))  # the selection split (--select test)
    for h, (_, student, tutor) in zip(hist, snaps[method], strict=True):
        student.eval(), tutor.eval()
        torch.manual_seed(0)  # the measurement's seed: the cell's
        on_student = _acc(tutor, _own_pgd10(student, x, y), y)
        torch.manual_seed(0)
        on_self = _acc(tutor, _own_pgd10(tutor, x, y), y)
        # the same seed, the same draws: exactly the same numbers
        assert h["tutor_on_student"] == on_student, h
        assert h["tutor_on_self"] == on_self, h
        assert h["tutor_clean"] == _acc(tutor, x, y)
        assert h["tutor_on_self"] < h["tutor_clean"]  # the attack attacks
    for ckpt in ("best", "last"):  # the final values are in the cell's rows
        assert rows[(method, ckpt)]["tutor_on_student"] == hist[-1]["tutor_on_student"]
    assert "tutor_clean" not in rows[("pgdat", "best")]
    # the peer changes every epoch; the fixed teacher is attacked once, its numbers reused
    assert ATTACKED_ALONE[method] == ([1] * EPOCHS if method == "peeraid"
                                      else [1] + [0] * (EPOCHS - 1))


def test_history_command_prints_each_epoch(results, capsys) -> None:
    out, _, _ = results
    main(["history", "peeraid-faithful", "--json", "--out", str(out)])
    hist = json.loads(capsys.readouterr().out)
    assert [h["epoch"] for h in hist] == list(range(1, EPOCHS + 1))
    assert {"loss", "lr", "pgd10", "seconds", "tutor_on_self"} <= set(hist[0])
    main(["history", "rslad", "--out", str(out)])
    text = capsys.readouterr().out
    assert "tutor" in text and "student" in text and "self" in text


def test_transfer_diagonal_is_the_stored_white_box_accuracy(results, tmp_path) -> None:
    out, rows, _ = results
    models = ["standard:best", "pgdat:best", "rslad:best", "peeraid:peer", "rslad:teacher"]
    main(["transfer", *models, "--json", str(tmp_path / "t.json"), "--out", str(out)])
    got = json.loads((tmp_path / "t.json").read_text())
    assert len(got) == 25 and {r["attack"] for r in got} == {"pgd20"}
    acc = {(r["source"].split("-")[0] + ":" + r["source"].rsplit(":", 1)[1],
            r["target"].split("-")[0] + ":" + r["target"].rsplit(":", 1)[1]): r["accuracy"]
           for r in got}
    for m in ("standard", "pgdat", "rslad"):  # same attack, same seed: exactly
        assert acc[(f"{m}:best", f"{m}:best")] == rows[(m, "best")]["pgd20"]
    # RSLAD's teacher is the pgdat cell (same config): the same weights, the same number
    assert acc[("rslad:teacher", "rslad:teacher")] == rows[("pgdat", "best")]["pgd20"]
    # a standard model's examples hurt a robust model less than its own attack does (by how
    # much depends on the run: 9 points against 17 at one thread, under half at two)
    clean = rows[("pgdat", "best")]["clean"]
    own, transferred = acc[("pgdat:best", "pgdat:best")], acc[("standard:best", "pgdat:best")]
    assert clean - transferred < clean - own - 0.05, (clean, own, transferred)
    assert acc[("standard:best", "standard:best")] < transferred - 0.3
    assert list((out / "analyses").glob("transfer-pgd20-*.json"))


def test_strength_curves_fall_with_eps_and_start_at_clean(results, tmp_path) -> None:
    out, rows, _ = results
    main(["eval", "pgdat", "--eps", "0,0.025,0.05,8/255,0.1,0.2", "--steps", "1,10",
          "--json", str(tmp_path / "s.json"), "--out", str(out)])
    points = json.loads((tmp_path / "s.json").read_text())
    one = 1 / 360 + 1e-9
    for attack, steps in (("fgsm", 1), ("pgd", 1), ("pgd", 10)):
        curve = sorted((p["eps"], p["accuracy"]) for p in points
                       if p["attack"] == attack and p["steps"] == steps)
        assert [e for e, _ in curve] == pytest.approx([0, 0.025, 8 / 255, 0.05, 0.1, 0.2])
        assert curve[0][1] == rows[("pgdat", "best")]["clean"]
        assert all(b <= a + one for (_, a), (_, b) in zip(curve, curve[1:], strict=False))
    for attack, steps in (("fgsm", 1), ("pgd", 10)):  # at 0.2 both attacks win
        assert min(p["accuracy"] for p in points
                   if p["attack"] == attack and p["steps"] == steps) < 0.5
    # PGD-10 at the threat model is the suite's PGD-10 (the stored PGD-20 is a bit stronger)
    pgd10 = next(p["accuracy"] for p in points if p["steps"] == 10 and p["eps"] == EPS)
    assert rows[("pgdat", "best")]["pgd20"] <= pgd10 + 3 * one
    stored = json.loads(next((out / "runs").glob("pgdat-*/strength.json")).read_text())
    assert len(stored["points"]) == len(points) and "best" in stored["signs"]


def test_per_class_accuracies_weighted_by_counts_are_the_overall(results) -> None:
    _, rows, _ = results
    from bench.eval.evaluate import subset

    _, y = data.as_tensors(data.load("digits", "test"))
    for (method, ckpt), r in rows.items():
        attacks = [a for a in ("clean", "pgd20", "aa") if a in r]  # AutoAttack: pgdat best
        assert set(r["per_class"]) == set(attacks)
        for a in attacks:
            labels = y[subset(len(y), 24)] if a == "aa" else y
            counts = torch.bincount(labels, minlength=10).tolist()
            accs = r["per_class"][a]
            assert len(accs) == 10
            total = sum(acc * n for acc, n in zip(accs, counts, strict=True) if n)
            assert total / len(labels) == pytest.approx(r[a], abs=1e-12), (method, ckpt, a)
            assert r[f"{a}_worst"] == min(v for v in accs if v is not None) <= r[a]
    assert "aa" in rows[("pgdat", "best")]["per_class"]


@pytest.mark.parametrize(("args", "says"), [
    (["history", "nosuchrun"], "unknown run 'nosuchrun'"),
    (["history", "p"], "ambiguous"),
    (["eval", "pgdat", "--eps", "8/0"], "k/255"),
    (["eval", "pgdat:bestt", "--eps", "0.1"], "unknown checkpoint 'bestt'"),
    (["eval", "pgdat", "--eps", "0.1", "--steps", "0"], "--steps"),
    (["transfer", "rslad:peer"], "no 'peer' checkpoint"),
    (["transfer", "pgdat:teacher"], "no 'teacher' checkpoint"),
    (["transfer", "pgdat:bestt"], "unknown checkpoint 'bestt'"),
])
def test_bad_input_is_one_line(results, capsys, args: list[str], says: str) -> None:
    out, _, _ = results
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(out)])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and says in err, err


def test_worst_class_columns_in_tables(results, capsys) -> None:
    out, rows, _ = results
    import csv
    import io

    main(["table", "--worst", "--format", "csv", "--methods", "pgdat", "--out", str(out)])
    lines = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    best = next(r for r in lines if r["checkpoint"] == "best")
    stored = rows[("pgdat", "best")]
    for a in ("clean", "pgd20"):  # the whole test set: 28 images or more a class
        assert float(best[f"{a}_worst"]) == pytest.approx(100 * min(stored["per_class"][a]))
    # AutoAttack's 100-image subset leaves 3 to 7 images a class: its worst class is withheld
    assert min(stored["per_class_n"]["aa"]) < 25 and "aa_worst" not in best
    main(["table", "--format", "csv", "--out", str(out)])
    assert "clean_worst" not in capsys.readouterr().out  # only when asked for


def test_figures_of_the_analyses(results, tmp_path, capsys) -> None:
    out, _, _ = results
    main(["transfer", "standard:best", "pgdat:best", "--attack", "fgsm", "--out", str(out)])
    main(["eval", "rslad:best", "--eps", "0,0.05,0.1", "--steps", "1,10", "--out", str(out)])
    capsys.readouterr()
    for kind in ("tutor", "transfer", "strength"):
        main(["plot", kind, "--out", str(out), "--dest", str(tmp_path)])
        written = [Path(p) for p in capsys.readouterr().out.split()]
        pngs = [p for p in written if p.suffix == ".png"]
        assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs), kind
    side = (tmp_path / "strength_digits_small_cnn.txt").read_text()
    assert "gradient-masking" in side


def test_masking_signs_fire_on_masked_curves_only() -> None:
    from bench.eval.analysis import masking_signs

    def pts(fgsm: float, by_steps: dict[int, float]) -> list[dict]:
        return [{"eps": 0.1, "steps": 1, "attack": "fgsm", "accuracy": fgsm, "n": 100},
                *({"eps": 0.1, "steps": k, "attack": "pgd", "accuracy": a, "n": 100}
                  for k, a in by_steps.items())]

    assert masking_signs(pts(0.6, {1: 0.7, 10: 0.5, 20: 0.45})) == []
    flat = masking_signs(pts(0.6, {1: 0.7, 10: 0.7, 20: 0.7}))
    assert len(flat) == 2 and "no stronger" in flat[0] and "FGSM beats" in flat[1]
    assert masking_signs([], ["flag: suspicious"]) == ["AutoAttack flagged: flag: suspicious"]


def test_ablation_points_are_seed_means_of_the_swept_rows(tmp_path, capsys) -> None:
    from bench.report.analysis_plots import ablation_points

    main(["run", "--methods", "standard", "--sweep", "lr=0.01,0.1", "--seeds", "0,1",
          "--epochs", "1", "--attacks", "clean,pgd20", "--threads", "1", "--out", str(tmp_path)])
    rows = [r for r in Store(tmp_path).read()[0] if r["checkpoint"] == "best"]
    pts = ablation_points(tmp_path, "lr")
    assert len(pts) == 4 and set(pts["seeds"]) == {2}
    for lr in (0.01, 0.1):
        accs = torch.tensor([100 * r["clean"] for r in rows if r["config"]["params"]["lr"] == lr],
                            dtype=torch.float64)
        p = pts[(pts["value"] == lr) & (pts["metric"] == "clean")].iloc[0]
        assert p["mean"] == pytest.approx(accs.mean().item())
        assert p["std"] == pytest.approx(accs.std().item())
    capsys.readouterr()
    main(["plot", "ablation", "--param", "lr", "--out", str(tmp_path)])
    assert "ablation_lr_digits_small_cnn_best.png" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["plot", "ablation", "--param", "momentum", "--out", str(tmp_path)])
    assert "no stored 'best' rows sweep hyper-parameter 'momentum'" in capsys.readouterr().err
