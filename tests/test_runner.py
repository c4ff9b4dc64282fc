"""The runner: LR schedule, SWA as PeerAiD specifies it, a peer of another architecture."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.core.store import Store
from bench.data import datasets as data
from bench.eval.evaluate import Threat, evaluate
from bench.train.cells import Cell, resolve
from bench.train.checkpoint import load_latest
from bench.train.pipeline import EvalOptions, _twin, run_cell
from bench.train.runner import RunOptions, Trainer


def _quiet(out: Path) -> RunOptions:
    return RunOptions(out=out, log=lambda *_: None)


def test_swa_averages_parameters_and_recomputes_bn(tmp_path: Path, monkeypatch) -> None:
    cell = Cell("peeraid", overrides=(("epochs", 4), ("milestones", (2,))))
    trainer = Trainer(resolve(cell), _quiet(tmp_path), None)
    snapshots: list[dict[str, torch.Tensor]] = []
    train_epoch = Trainer._train_epoch

    def record(self: Trainer, epoch: int) -> float:
        loss = train_epoch(self, epoch)
        if epoch >= 2:  # SWA from the first milestone on, after each epoch
            snapshots.append({k: v.detach().clone()
                              for k, v in self.method.student.named_parameters()})
        return loss

    monkeypatch.setattr(Trainer, "_train_epoch", record)
    finals = trainer.train()
    swa = finals["swa_last"]
    assert len(snapshots) == 2
    for name, value in swa.named_parameters():
        expected = torch.stack([s[name] for s in snapshots]).mean(0)
        assert torch.allclose(value, expected, atol=1e-6), name
    # BN statistics: recomputed over the training loader in train mode, each IMAGE weighing
    # the same (PeerAiD's utils/SWA.py), not each batch (torch's update_bn): the last batch
    # of 1437 images in 64s has 29.
    train = data.load("digits", "train")
    conv, bn = swa.features[0], swa.features[1]
    with torch.no_grad():
        feats = [conv(x) for x, _ in data.batches(train, 64, shuffle=False)]
    sizes = torch.tensor([len(f) for f in feats], dtype=torch.float32)[:, None]
    means = torch.stack([f.mean((0, 2, 3)) for f in feats])
    assert sizes[-1].item() == 29
    per_image = (sizes * means).sum(0) / sizes.sum()
    assert torch.allclose(bn.running_mean, per_image, atol=1e-6)
    assert not torch.allclose(bn.running_mean, means.mean(0), atol=1e-6)
    assert not torch.allclose(bn.running_mean, trainer.method.student.features[1].running_mean)
    assert set(finals) == {"best", "last", "swa_best", "swa_last"}


def test_lr_schedule_is_the_presets(tmp_path: Path) -> None:
    cell = Cell("ard", overrides=(("epochs", 4), ("milestones", (1, 3))))
    r = resolve(cell)
    assert r.params.lr_schedule == "ard"
    trainer = Trainer(resolve(Cell("pgdat", overrides=(("epochs", 4), ("milestones", (1, 3))))),
                      _quiet(tmp_path), None)
    trainer.train()
    lrs = [h["lr"] for h in load_latest(trainer.ckpt_path)["history"]]
    assert lrs == pytest.approx([0.05, 0.005, 0.005, 0.0005])
    assert [r.params.lr_at(e) for e in range(4)] == pytest.approx([0.05, 0.005, 0.005, 0.005])


def test_peer_of_another_architecture(tmp_path: Path) -> None:
    cell = Cell("peeraid", peer_arch="small_cnn_nobn", overrides=(("epochs", 2),))
    rows = run_cell(cell, _quiet(tmp_path), EvalOptions(attacks=("clean",)), Store(tmp_path))
    # two epochs: the scaled first milestone (10 of 15 -> 1) starts SWA after epoch 1
    assert {r["checkpoint"] for r in rows} == {"best", "last", "swa_best", "swa_last"}
    state = load_latest(tmp_path / "runs" / rows[0]["cell_id"] / "ckpt.pt")
    assert not any("running_mean" in k for k in state["models"]["peer"])
    assert any("running_mean" in k for k in state["models"]["student"])
    assert rows[0]["config"]["peer_arch"] == "small_cnn_nobn"


def test_select_on_held_out_validation_split(tmp_path: Path) -> None:
    cell = Cell("pgdat", select="val", overrides=(("epochs", 2),))
    trainer = Trainer(resolve(cell), _quiet(tmp_path), None)
    trainer.train()
    assert len(trainer.train_set) + len(trainer.sel_y) == len(data.load("digits", "train"))


def test_show_preset_prints_resolved_paper_configuration(capsys) -> None:
    main(["show-preset", "peeraid", "--dataset", "tinyimagenet", "--preset", "paper"])
    out = capsys.readouterr().out
    for line in ("epochs = 200", "milestones = (99, 149)", "l2 = 35.0", "g2 = 100.0",
                 "t = 1.0", "eps = 0.03137"):
        assert line in out, line


def test_paper_preset_ignores_the_embedded_budget() -> None:
    faithful = resolve(Cell("peeraid")).params
    paper = resolve(Cell("peeraid", preset="paper")).params
    assert (faithful.epochs, faithful.eps) == (15, 0.1)
    assert (paper.epochs, paper.milestones, paper.eps) == (300, (214, 259, 284), 8 / 255)


def test_evaluation_uses_the_data_sets_threat_model_not_the_training_radius(tmp_path) -> None:
    cell = Cell("trades", preset="eps8", overrides=(("epochs", 1),))
    rows = run_cell(cell, _quiet(tmp_path), EvalOptions(attacks=("clean", "pgd20")),
                    Store(tmp_path))
    assert rows[0]["train_eps"] == pytest.approx(8 / 255)
    assert rows[0]["eps"] == data.spec("digits").eps == 0.1


def test_restart_trains_an_unfinished_cell_from_scratch(tmp_path) -> None:
    lines: list[str] = []
    opts = RunOptions(out=tmp_path, log=lines.append)
    cell, ev, store = Cell("pgdat", overrides=(("epochs", 2),)), EvalOptions(("clean",)), Store(
        tmp_path)
    run_cell(cell, opts, ev, store)
    for row in (tmp_path / "rows").iterdir():  # an evaluation cut short: no rows stored yet
        row.unlink()
    lines.clear()
    run_cell(cell, opts, ev, store)  # resume: both epochs are done, nothing retrains
    assert not any("epoch" in line for line in lines)
    for row in (tmp_path / "rows").iterdir():
        row.unlink()
    lines.clear()
    run_cell(cell, opts, ev, store, resume=False)
    assert sum("epoch" in line for line in lines) == 2


@pytest.mark.parametrize(("method", "dataset", "teacher"), [
    ("rslad", "cifar10", "trades-faithful-cifar10-wrn34_10-"),
    ("rslad", "cifar100", "robustbench:Gowal2020Uncovering"),
    ("adaad", "cifar10", "robustbench:Chen2021LTD_WRN34_20"),
    ("adaad", "cifar100", "robustbench:Chen2021LTD_WRN34_10"),
    ("ard", "cifar10", "trades-faithful-cifar10-wrn34_10-"),
])
def test_paper_presets_carry_the_papers_teachers(method: str, dataset: str,
                                                 teacher: str) -> None:
    assert resolve(Cell(method, dataset, preset="paper")).config["teacher"].startswith(teacher)
    # faithful (the authors' math on any budget) trains a PGD-AT teacher of the student's arch
    assert resolve(Cell(method, dataset)).config["teacher"].startswith(
        f"pgdat-faithful-{dataset}-resnet18-")
    # an explicit --teacher-arch keeps the preset's training method, or PGD-AT for zoo teachers
    explicit = resolve(Cell(method, dataset, preset="paper", teacher_arch="resnet34"))
    assert explicit.config["teacher_arch"] == "resnet34"


def test_autoattack_runs_on_the_reported_checkpoints_only(tmp_path) -> None:
    cell = Cell("peeraid", overrides=(("epochs", 2), ("milestones", (1,))))
    rows = run_cell(cell, _quiet(tmp_path), EvalOptions(attacks=("clean", "aa"), aa_samples=8),
                    Store(tmp_path))
    by = {r["checkpoint"]: r for r in rows}
    assert set(by) == {"best", "last", "swa_best", "swa_last"}
    assert {k for k, r in by.items() if "aa" in r} == {"best", "swa_best"}  # what papers report
    for r in rows:
        assert set(r["attack_seconds"]) == ({"clean", "aa"} if "aa" in r else {"clean"})
        assert all(s >= 0 for s in r["attack_seconds"].values())
    assert EvalOptions(aa_on="all").attacks_for("swa_last")[-1] == "aa"
    assert "aa" not in EvalOptions(aa_on="none").attacks_for("best")


def test_a_checkpoint_with_its_twins_weights_reuses_its_numbers_exactly(tmp_path) -> None:
    """One epoch: best is last, so last's row is best's (restricted to last's attacks) and
    equals what evaluating last afresh gives; differing weights are evaluated themselves."""
    cell = Cell("pgdat", overrides=(("epochs", 1),))
    attacks = ("clean", "pgd20", "aa")
    opts, store = _quiet(tmp_path), Store(tmp_path)
    rows = {r["checkpoint"]: r for r in run_cell(cell, opts, EvalOptions(attacks, aa_samples=8),
                                                 store)}
    best, last = rows["best"], rows["last"]
    assert "same_weights_as" not in best and last["same_weights_as"] == "best"
    assert "aa" in best and "aa" not in last and "aa_flags" not in last
    assert set(last["attack_seconds"]) == set(last["per_class"]) == {"clean", "pgd20"}
    model = Trainer(resolve(cell), opts, None).train()["last"]  # resumed: nothing to train
    x, y = data.as_tensors(data.load("digits", "test"))
    torch.manual_seed(cell.seed)
    fresh = evaluate(model, x, y, Threat(data.spec("digits").eps), attacks=attacks[:2])
    for a in attacks[:2]:
        assert last[a] == fresh[a] == best[a] and last[f"n_{a}"] == fresh[f"n_{a}"]
        assert last["per_class"][a] == fresh["per_class"][a]
    assert last["pgd20_worst"] == fresh["pgd20_worst"]

    # a twin needs equal weights and buffers and attacks that begin with the asked ones
    other = copy.deepcopy(model)
    done = {"best": (attacks, best)}
    assert _twin({"best": model, "x": other}, "x", ("clean", "pgd20"), done) == "best"
    assert _twin({"best": model, "x": other}, "x", ("pgd20",), done) is None
    other.features[1].running_mean += 1e-6
    assert _twin({"best": model, "x": other}, "x", ("clean",), done) is None


def test_read_every_shows_the_running_loss_and_changes_no_weight(tmp_path) -> None:
    cell = Cell("standard", overrides=(("epochs", 1),))
    seen: list[tuple[int, float | None]] = []
    opts = RunOptions(out=tmp_path / "a", log=lambda *_: None, read_every=3,
                      progress=lambda label, done, total, loss: seen.append((done, loss)))
    read = Trainer(resolve(cell), opts, None).train()["last"].state_dict()
    plain = Trainer(resolve(cell), _quiet(tmp_path / "b"), None).train()["last"].state_dict()
    assert all(torch.equal(v, plain[k]) for k, v in read.items())
    assert len(seen) > 6 and [d for d, loss in seen if loss is not None] == [
        d for d, _ in seen if d % 3 == 0]
    assert all(0 < loss < 10 for _, loss in seen if loss is not None)


def test_selecting_never_moves_the_training_runs_random_draws(tmp_path) -> None:
    """Selection attacks on their own seeded RNG state: how often a run selects (and the
    tutor's measurements with it) leaves the trained weights bit-identical."""
    weights = []
    for every in (1, 3):
        cell = Cell("peeraid", select_every=every, overrides=(("epochs", 3),
                                                              ("milestones", (2,))))
        last = Trainer(resolve(cell), _quiet(tmp_path / str(every)), None).train()["last"]
        weights.append(last.state_dict())
    assert all(torch.equal(v, weights[1][k]) for k, v in weights[0].items())
