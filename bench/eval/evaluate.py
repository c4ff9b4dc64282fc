"""The evaluation suite, identical for every method (RobustBench-style protocol).

Clean, FGSM (no random start), PGD-20 (uniform start, step eps/4 = 2/255 at 8/255),
PGD-20 with RSLAD's small step (0.003 at 8/255), CW-inf (PGD-30 on the CW margin) and
AutoAttack "standard" through the real `pyautoattack` code. Models run in eval mode.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.eval.attacks import cw_margin, pgd
from bench.eval.batching import in_batches

ALL_ATTACKS = ("clean", "fgsm", "pgd20", "pgd20s", "cw", "aa")
PER_CLASS = ("clean", "pgd20", "aa")  # attacks whose rows also get per-class accuracies


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

    def batch(i: int, j: int) -> list[Tensor]:
        xb, yb = x[i:j].to(device), y[i:j].to(device)
        xa = adversarial(source, xb, yb, attack, threat)
        with torch.no_grad():
            return [(judge(xa).argmax(1) == yb).cpu() for judge in judges]

    out = in_batches(batch, len(y), batch_size, device)  # an out-of-memory batch is halved
    return [torch.cat(o) for o in out] if out else [torch.zeros(0, dtype=torch.bool)
                                                     for _ in judges]


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
    flatter every method). The per-image outcomes are kept (`outcomes`, see `summarize`).
    """
    ok: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    flags: list[str] | None = None
    aa_index = subset(len(y), aa_samples) if "aa" in attacks else None
    with torch.autocast(torch.device(device).type, enabled=False):
        for a in attacks:
            t0 = time.perf_counter()
            if a == "aa":
                ok[a], flags = autoattack_robust(
                    model, x[aa_index], y[aa_index], threat.eps, batch_size=aa_batch_size,
                    device=device, state_path=aa_state)
            else:
                ok[a] = correct(model, x, y, a, threat, batch_size, device)
            seconds[a] = round(time.perf_counter() - t0, 2)
    out = summarize(ok, y.cpu(), aa_index, num_classes or int(y.max()) + 1)
    out["attack_seconds"] = seconds
    if flags is not None:
        out["aa_flags"] = flags
    return out


def images_fingerprint(x: Tensor, y: Tensor) -> str:
    """16 hex digits of the test images and labels: two rows' per-image outcomes pair up
    only when they were measured on the same images."""
    digest = hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(y.cpu().to(torch.int64).numpy().tobytes())
    return digest.hexdigest()[:16]


def pack(ok: Tensor) -> str:
    """Per-image booleans as base64 of their bits (an eighth of a byte an image, plus base64's
    third): 1,668 bytes for CIFAR-10's 10,000 test images."""
    return base64.b64encode(np.packbits(ok.cpu().numpy().astype(bool)).tobytes()).decode()


def unpack(text: str, n: int) -> Tensor:
    """The `n` booleans `pack` wrote."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n]
    return torch.from_numpy(bits.astype(bool))


def summarize(ok: dict[str, Tensor], y: Tensor, aa_index: Tensor | None,
              num_classes: int) -> dict[str, Any]:
    """The metrics of per-image outcomes (`ok[attack]`: right or wrong per image; AutoAttack's
    on the images of `aa_index` alone, all of them when None).

    Each attack gives its accuracy and `n_`; those of PER_CLASS also `per_class[a]` and
    `per_class_n[a]` (accuracy and images per class, in class order) and `a_worst`.
    `robust` is RobustBench's robust accuracy: an image counts when it is classified right
    under every attack run, on the images all of them ran on. When AutoAttack ran on a
    subset, every other attack is also given on that subset (`a_on_aa`, `n_on_aa`), so that
    numbers set side by side are measured on the same images. `outcomes` keeps the per-image
    bits (`pack`), with `aa_subset` (the subset's mask over the test set) where there is one.
    """
    out: dict[str, Any] = {}
    by_class, by_class_n = {}, {}
    n = len(y)
    sub = aa_index if aa_index is not None and "aa" in ok and len(aa_index) < n else None
    for a, hits in ok.items():
        labels = y[aa_index] if a == "aa" and aa_index is not None else y
        out[a], out[f"n_{a}"] = hits.sum().item() / len(hits), len(hits)
        if a in PER_CLASS:
            by_class[a] = per_class(hits, labels, num_classes)
            by_class_n[a] = [int((labels == c).sum()) for c in range(num_classes)]
            out[f"{a}_worst"] = min(v for v in by_class[a] if v is not None)
    if by_class:
        out["per_class"], out["per_class_n"] = by_class, by_class_n
    if sub is not None:
        for a, hits in ok.items():
            if a != "aa":
                out[f"{a}_on_aa"] = hits[sub].sum().item() / len(sub)
        out["n_on_aa"] = len(sub)
    if ok:
        worst = worst_case(ok, sub)
        out["robust"], out["n_robust"] = worst.sum().item() / len(worst), len(worst)
    out["outcomes"] = {a: pack(hits) for a, hits in ok.items()}
    if sub is not None:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[sub] = True
        out["outcomes"]["aa_subset"] = pack(mask)
    return out


def worst_case(ok: dict[str, Tensor], subset: Tensor | None) -> Tensor:
    """Per image, right under every attack of `ok` (RobustBench's robust accuracy), on the
    images all of them ran on: AutoAttack's `subset` when it ran on one."""
    every = [hits[subset] if subset is not None and a != "aa" else hits
             for a, hits in ok.items()]
    return torch.stack(every).all(0)


def outcomes(metrics: dict[str, Any], n: int) -> tuple[dict[str, Tensor], Tensor | None]:
    """The per-image outcomes a row stores (`n` test images), and AutoAttack's subset."""
    packed = dict(metrics["outcomes"])
    mask = unpack(packed.pop("aa_subset"), n) if "aa_subset" in packed else None
    index = mask.nonzero().flatten() if mask is not None else None
    return {a: unpack(t, int(metrics[f"n_{a}"])) for a, t in packed.items()}, index


def restrict(metrics: dict[str, Any], attacks: tuple[str, ...], y: Tensor,
             num_classes: int) -> dict[str, Any]:
    """`evaluate`'s metrics cut down to `attacks` (those of a twin checkpoint that ran more),
    computed again from its per-image outcomes."""
    ok, index = outcomes(metrics, len(y))
    out = summarize({a: v for a, v in ok.items() if a in attacks}, y.cpu(),
                    index if "aa" in attacks else None, num_classes)
    out["attack_seconds"] = {a: s for a, s in metrics["attack_seconds"].items() if a in attacks}
    if "aa" in attacks and "aa_flags" in metrics:
        out["aa_flags"] = copy.deepcopy(metrics["aa_flags"])
    return out
