"""The evaluation suite, identical for every method (RobustBench-style protocol).

Clean, FGSM (no random start), PGD-20 (uniform start, step eps/4 = 2/255 at 8/255),
PGD-20 with RSLAD's small step (0.003 at 8/255), CW-inf (PGD-30 on the CW margin) and
AutoAttack "standard" through the real `pyautoattack` code. Models run in eval mode.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.eval.attacks import cw_margin, pgd

ALL_ATTACKS = ("clean", "fgsm", "pgd20", "pgd20s", "cw", "aa")
PER_CLASS = ("clean", "pgd20", "aa")  # attacks whose rows also get per-class accuracies
CPU_SMALL_BATCH_MIN_SIZE = 32  # image size from which CPU evaluation batches are 64, not 128


def eval_batch_sizes(device: str | torch.device, image_size: int) -> tuple[int, int]:
    """(white-box attacks and selection, AutoAttack) batch sizes. On a GPU, large enough to
    fill it with a ResNet-18 or WRN-34-10 at 32 px. On the CPU, small enough that a batch's
    feature maps stay in the caches: a PGD step of 256 images at 32 px ran at 0.6x the speed
    of 64 (small_cnn 635 against 952 img/s, ResNet-18 125 against 196), and of 256 digits at
    8 px at about 0.75x that of 128. There the random starts are drawn in the same order
    whatever the batch, and each image's examples come out bit-identical (a test checks it):
    the choice changes the speed only. AutoAttack keeps 500 (64 gained under 10 %, within
    this machine's noise)."""
    if torch.device(device).type == "cuda":
        return 1024, 1024
    return (64 if image_size >= CPU_SMALL_BATCH_MIN_SIZE else 128), 500


@dataclass(frozen=True)
class Threat:
    """The L-inf threat model of an evaluation; steps scale with eps (2/255 and 0.003 at 8/255)."""

    eps: float

    @property
    def step(self) -> float:
        return self.eps / 4

    @property
    def small_step(self) -> float:
        return 0.003 * self.eps / (8 / 255)


def _ce_sum(model: nn.Module, y: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda xa: F.cross_entropy(model(xa), y, reduction="sum")


def adversarial(model: nn.Module, x: Tensor, y: Tensor, attack: str, threat: Threat) -> Tensor:
    """Adversarial examples of one white-box attack of the suite (AutoAttack aside)."""
    e = threat.eps
    if attack == "clean":
        return x
    if attack == "fgsm":
        return pgd(_ce_sum(model, y), x, eps=e, step=e, steps=1, start="none")
    if attack == "pgd10":
        return pgd(_ce_sum(model, y), x, eps=e, step=threat.step, steps=10, start="uniform")
    if attack == "pgd20":
        return pgd(_ce_sum(model, y), x, eps=e, step=threat.step, steps=20, start="uniform")
    if attack == "pgd20s":
        return pgd(_ce_sum(model, y), x, eps=e, step=threat.small_step, steps=20, start="uniform")
    if attack == "cw":
        return pgd(lambda xa: cw_margin(model(xa), y), x, eps=e, step=threat.step, steps=30,
                   start="uniform")
    raise ValueError(f"unknown attack {attack!r}")


def correct(model: nn.Module, x: Tensor, y: Tensor, attack: str, threat: Threat,
            batch_size: int = 256, device: str | torch.device = "cpu") -> Tensor:
    """Per image (on the CPU), whether `model` (eval mode) classifies it right under `attack`."""
    return judged(model, [model], x, y, attack, threat, batch_size, device)[0]


def judged(source: nn.Module, judges: Sequence[nn.Module], x: Tensor, y: Tensor, attack: str,
           threat: Threat, batch_size: int = 256,
           device: str | torch.device = "cpu") -> list[Tensor]:
    """Per image (on the CPU), whether each of `judges` classifies right `attack`'s examples
    crafted against `source` (all in eval mode): one attack, judged by several networks
    (`correct` is `source` judging its own; a transfer matrix, others judging them)."""
    for m in (source, *judges):
        m.eval()
    out: list[list[Tensor]] = [[] for _ in judges]
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        xa = adversarial(source, xb, yb, attack, threat)
        with torch.no_grad():
            for k, judge in enumerate(judges):
                out[k].append((judge(xa).argmax(1) == yb).cpu())
    return [torch.cat(o) for o in out]


def accuracy(model: nn.Module, x: Tensor, y: Tensor, attack: str, threat: Threat,
             batch_size: int = 256, device: str | torch.device = "cpu") -> float:
    """Accuracy of `model` (eval mode) on (x, y) under `attack`."""
    hits = correct(model, x, y, attack, threat, batch_size, device)
    return hits.sum().item() / len(hits)


def per_class(ok: Tensor, y: Tensor, num_classes: int) -> list[float | None]:
    """Accuracy per class, in class order, from per-image correctness (None: no image)."""
    y = y.cpu()
    return [int(ok[y == c].sum()) / int((y == c).sum()) if (y == c).any() else None
            for c in range(num_classes)]


def worst_class(ok: Tensor, y: Tensor, num_classes: int | None = None) -> float:
    """The lowest per-class accuracy, over the classes present in `y`."""
    accs = per_class(ok, y, num_classes or int(y.max()) + 1)
    return min(v for v in accs if v is not None)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, batch_size: int = 500,
               device: str | torch.device = "cpu", state_path: Path | None = None,
               seed: int = 0) -> tuple[float, list[str]]:
    """AutoAttack standard accuracy and its own warning flags (gradient-masking checks)."""
    robust, flags = autoattack_robust(model, x, y, eps, batch_size=batch_size, device=device,
                                      state_path=state_path, seed=seed)
    return robust.float().mean().item(), flags


def autoattack_robust(model: nn.Module, x: Tensor, y: Tensor, eps: float, *,
                      batch_size: int = 500, device: str | torch.device = "cpu",
                      state_path: Path | None = None, seed: int = 0
                      ) -> tuple[Tensor, list[str]]:
    """Per-image AutoAttack robustness (bool, CPU) and AutoAttack's own warning flags.

    `state_path` is pyautoattack's resumable state file. Its own resume path leaves `y_adv`
    unbound (pyautoattack 0.2.0), so an interrupted evaluation is resumed here instead: the
    attacks not yet finished run, with the standard settings, on the images the state still
    marks robust. (pyautoattack records a finished attack at most once a minute, so after a
    kill an attack may run again on the survivors: never an easier evaluation.)
    """
    from pyautoattack import AutoAttack
    from pyautoattack.state import EvaluationState

    model.eval()
    collect = _Collect()
    logger = logging.getLogger("auto-attack")
    logger.addHandler(collect)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make = partial(AutoAttack, model, eps=eps, norm="Linf", device=device, seed=seed)
            if state_path is not None and state_path.exists():
                state = EvaluationState.from_disk(state_path)
                robust = state.robust_flags.clone()
                todo = [a for a in make(version="standard").attacks_to_run
                        if a not in state.run_attacks]
                idx = robust.nonzero().flatten()
                if todo and len(idx):
                    rest = make(version="standard")  # standard settings (restarts, targets),
                    rest.attacks_to_run = todo  # only the attacks not finished yet
                    _, y_adv = rest.run_standard_evaluation(
                        x[idx].to(device), y[idx].to(device), batch_size=batch_size)
                    robust[idx] = y_adv.cpu() == y[idx].cpu()
            else:
                _, y_adv = make(version="standard").run_standard_evaluation(
                    x.to(device), y.to(device), batch_size=batch_size, state_path=state_path)
                robust = y_adv.cpu() == y.cpu()
    finally:
        logger.removeHandler(collect)
    flags = collect.messages + [str(w.message) for w in caught
                                if "pyautoattack" in (w.filename or "")]
    return robust.bool(), sorted(set(flags))


def subset(n: int, k: int | None, seed: int = 0) -> Tensor:
    """A fixed, seeded, sorted subset of k indices out of n (all of them when k is None)."""
    if k is None or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def evaluate(model: nn.Module, x: Tensor, y: Tensor, threat: Threat, *,
             attacks: tuple[str, ...] = ALL_ATTACKS, aa_samples: int | None = None,
             device: str | torch.device = "cpu", batch_size: int = 256,
             aa_batch_size: int = 500, aa_state: Path | None = None,
             num_classes: int | None = None) -> dict[str, object]:
    """Run the suite; each metric `m` comes with `n_m`, the number of images it was measured
    on, and `attack_seconds[m]`, what it took. Always full precision: autocast is switched off here,
    so a model trained in bf16 is attacked in fp32 (a weaker low-precision attack would
    flatter every method).

    For the attacks of PER_CLASS also `per_class[m]` (accuracy per class, in class order:
    the fairness view) and `m_worst`, the worst class's accuracy.
    """
    out: dict[str, object] = {}
    seconds: dict[str, float] = {}
    classes = num_classes or int(y.max()) + 1
    by_class: dict[str, list[float | None]] = {}
    with torch.autocast(torch.device(device).type, enabled=False):
        for a in attacks:
            t0 = time.perf_counter()
            if a == "aa":
                idx = subset(len(y), aa_samples)
                ok, out["aa_flags"] = autoattack_robust(
                    model, x[idx], y[idx], threat.eps, batch_size=aa_batch_size, device=device,
                    state_path=aa_state)
                labels = y[idx]
            else:
                ok, labels = correct(model, x, y, a, threat, batch_size, device), y
            out[a], out[f"n_{a}"] = ok.sum().item() / len(ok), len(ok)
            if a in PER_CLASS:
                by_class[a] = per_class(ok, labels, classes)
                out[f"{a}_worst"] = min(v for v in by_class[a] if v is not None)
            seconds[a] = round(time.perf_counter() - t0, 2)
    out["attack_seconds"] = seconds
    if by_class:
        out["per_class"] = by_class
    return out


def restrict(metrics: dict[str, Any], attacks: tuple[str, ...]) -> dict[str, Any]:
    """`evaluate`'s metrics cut down to `attacks` (those of a twin checkpoint that ran more)."""
    gone = [a for a in metrics["attack_seconds"] if a not in attacks]
    drop = {k for a in gone for k in (a, f"n_{a}", f"{a}_worst")}
    drop |= {"aa_flags"} if "aa" in gone else set()
    out = {k: copy.deepcopy(v) for k, v in metrics.items() if k not in drop}
    out["attack_seconds"] = {a: s for a, s in metrics["attack_seconds"].items() if a in attacks}
    per = {a: v for a, v in out.pop("per_class", {}).items() if a in attacks}
    return {**out, "per_class": per} if per else out
