"""The evaluation suite, identical for every method (RobustBench-style protocol).

Clean, FGSM (no random start), PGD-20 (uniform start, step eps/4 = 2/255 at 8/255),
PGD-20 with RSLAD's small step (0.003 at 8/255), CW-inf (PGD-30 on the CW margin) and
AutoAttack "standard" through the real `pyautoattack` code. Models run in eval mode.

Opt-in (not in DEFAULT_ATTACKS, so the default run costs what it did): the L2 threat model
at the data set's `eps_l2`, PGD-20-L2 (`pgd20_l2`) and AutoAttack-L2 standard (`aa_l2`), and
`corruptions`, accuracy on the published common corruptions (bench.data.corrupted).
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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.eval.attacks import cw_margin, pgd
from bench.eval.batching import in_batches

if TYPE_CHECKING:
    from bench.data.corrupted import CorruptedSets

DEFAULT_ATTACKS = ("clean", "fgsm", "pgd20", "pgd20s", "cw", "aa")  # the L-inf suite, run always
L2_ATTACKS = ("pgd20_l2", "aa_l2")
CORRUPTIONS = "corruptions"  # accuracy on the published common corruptions, their mean
ALL_ATTACKS = (*DEFAULT_ATTACKS, *L2_ATTACKS, CORRUPTIONS)  # what --attacks accepts
LINF_ATTACKS = DEFAULT_ATTACKS  # `robust` (the worst case) is over these: one threat model
AUTOATTACKS = {"aa": "Linf", "aa_l2": "L2"}  # on AutoAttack's seeded subset; norm
PER_CLASS = ("clean", "pgd20", "aa")  # attacks whose rows also get per-class accuracies


@dataclass(frozen=True)
class Threat:
    """The threat models of an evaluation: L-inf `eps` (steps scale with it: 2/255 and 0.003
    at 8/255) and L2 `eps_l2` (its PGD step eps_l2/4, the L-inf suite's ratio)."""

    eps: float
    eps_l2: float | None = None

    @property
    def step(self) -> float:
        return self.eps / 4

    @property
    def small_step(self) -> float:
        return 0.003 * self.eps / (8 / 255)

    @property
    def l2(self) -> float:
        """The L2 radius; an L2 attack without one is a caller's error."""
        if self.eps_l2 is None:
            raise ValueError("an L2 attack needs Threat(eps, eps_l2=...)")
        return self.eps_l2


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
    if attack == "pgd20_l2":
        return pgd(_ce_sum(model, y), x, eps=threat.l2, step=threat.l2 / 4, steps=20,
                   start="uniform", norm="L2")
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
                      state_path: Path | None = None, seed: int = 0, norm: str = "Linf"
                      ) -> tuple[Tensor, list[str]]:
    """Per-image AutoAttack robustness (bool, CPU) and AutoAttack's own warning flags, in the
    `norm` ball of radius `eps` ("Linf" or "L2": pyautoattack's standard attacks for it).

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
            make = partial(AutoAttack, model, eps=eps, norm=norm, device=device, seed=seed)
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
             attacks: tuple[str, ...] = DEFAULT_ATTACKS, aa_samples: int | None = None,
             device: str | torch.device = "cpu", batch_size: int = 256,
             aa_batch_size: int = 500, aa_state: Path | None = None,
             num_classes: int | None = None, aa_l2_state: Path | None = None,
             corrupted: CorruptedSets | None = None) -> dict[str, object]:
    """Run the suite; each metric `m` comes with `n_m`, the number of images it was measured
    on, and `attack_seconds[m]`, what it took. Always full precision: autocast is switched off here,
    so a model trained in bf16 is attacked in fp32 (a weaker low-precision attack would
    flatter every method). The per-image outcomes are kept (`outcomes`, see `summarize`).
    `aa_l2_state`: AutoAttack-L2's resumable state file; `corrupted`: the corrupted test sets
    `corruptions` runs through the model (see `corruption_metrics`).
    """
    ok: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    flags: dict[str, list[str]] = {}
    aa_index = subset(len(y), aa_samples) if set(AUTOATTACKS) & set(attacks) else None
    states = {"aa": aa_state, "aa_l2": aa_l2_state}
    extra: dict[str, Any] = {}
    with torch.autocast(torch.device(device).type, enabled=False):
        for a in attacks:
            t0 = time.perf_counter()
            if a in AUTOATTACKS:
                ok[a], flags[a] = autoattack_robust(
                    model, x[aa_index], y[aa_index],
                    threat.eps if a == "aa" else threat.l2, batch_size=aa_batch_size,
                    device=device, state_path=states[a], norm=AUTOATTACKS[a])
            elif a == CORRUPTIONS:
                if corrupted is None:
                    raise ValueError("`corruptions` needs the corrupted test sets (corrupted=)")
                extra = corruption_metrics(model, corrupted, batch_size, device)
            else:
                ok[a] = correct(model, x, y, a, threat, batch_size, device)
            seconds[a] = round(time.perf_counter() - t0, 2)
    out = summarize(ok, y.cpu(), aa_index, num_classes or int(y.max()) + 1)
    if extra:
        out["outcomes"][CORRUPTIONS] = extra.pop("outcomes")
        out.update(extra)
    out["attack_seconds"] = seconds
    for a, f in flags.items():
        out[f"{a}_flags"] = f
    return out


def corruption_metrics(model: nn.Module, corrupted: CorruptedSets, batch_size: int = 256,
                       device: str | torch.device = "cpu") -> dict[str, Any]:
    """Accuracy on every corruption x severity (clean accuracy on each corrupted set, batched
    as the attacks are): `corruption_acc` {corruption: [severity 1..5]}, their mean as
    `corruptions` (RobustBench's number), `n_corruptions` (images per set), a fingerprint of
    all the corrupted images and labels (`corruption_images`: rows pair up only on the same),
    and the per-(image, set) outcomes packed set after set in `corruption_acc`'s order."""
    accs: dict[str, list[float]] = {}
    bits, prints, n = [], [], 0
    for name, severity, xc, yc in corrupted:
        hits = correct(model, xc, yc, "clean", Threat(0.0), batch_size, device)
        accs.setdefault(name, []).append(hits.sum().item() / len(hits))
        bits.append(hits)
        prints.append(f"{name}/{severity}:{images_fingerprint(xc, yc)}")
        n = len(hits)
    every = [v for vs in accs.values() for v in vs]
    return {CORRUPTIONS: sum(every) / len(every), f"n_{CORRUPTIONS}": n,
            "corruption_acc": accs, "corruption_source": corrupted.describe(),
            "corruption_images": hashlib.sha256("|".join(prints).encode()).hexdigest()[:16],
            "outcomes": pack(torch.cat(bits))}


CORRUPTION_FIELDS = (CORRUPTIONS, f"n_{CORRUPTIONS}", "corruption_acc", "corruption_source",
                     "corruption_images")


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
    under every L-inf attack run (one threat model; L2 attacks aside), on the images all of
    them ran on. When AutoAttack ran on a
    subset, every other attack is also given on that subset (`a_on_aa`, `n_on_aa`), so that
    numbers set side by side are measured on the same images. `outcomes` keeps the per-image
    bits (`pack`), with `aa_subset` (the subset's mask over the test set) where there is one.
    """
    out: dict[str, Any] = {}
    by_class, by_class_n = {}, {}
    n = len(y)
    ran_aa = any(a in AUTOATTACKS for a in ok)
    sub = aa_index if aa_index is not None and ran_aa and len(aa_index) < n else None
    for a, hits in ok.items():
        labels = y[aa_index] if a in AUTOATTACKS and aa_index is not None else y
        out[a], out[f"n_{a}"] = hits.sum().item() / len(hits), len(hits)
        if a in PER_CLASS:
            by_class[a] = per_class(hits, labels, num_classes)
            by_class_n[a] = [int((labels == c).sum()) for c in range(num_classes)]
            out[f"{a}_worst"] = min(v for v in by_class[a] if v is not None)
    if by_class:
        out["per_class"], out["per_class_n"] = by_class, by_class_n
    if sub is not None:
        for a, hits in ok.items():
            if a not in AUTOATTACKS:
                out[f"{a}_on_aa"] = hits[sub].sum().item() / len(sub)
        out["n_on_aa"] = len(sub)
    if (worst := linf_worst(ok, sub)) is not None:
        out["robust"], out["n_robust"] = worst[0].sum().item() / len(worst[0]), len(worst[0])
    out["outcomes"] = {a: pack(hits) for a, hits in ok.items()}
    if sub is not None:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[sub] = True
        out["outcomes"]["aa_subset"] = pack(mask)
    return out


def worst_case(ok: dict[str, Tensor], subset: Tensor | None) -> Tensor:
    """Per image, right under every attack of `ok` (RobustBench's robust accuracy), on the
    images all of them ran on: AutoAttack's `subset` when it ran on one."""
    every = [hits[subset] if subset is not None and a not in AUTOATTACKS else hits
             for a, hits in ok.items()]
    return torch.stack(every).all(0)


def outcomes(metrics: dict[str, Any], n: int) -> tuple[dict[str, Tensor], Tensor | None]:
    """The per-image outcomes a row stores (`n` test images), and AutoAttack's subset (the
    corruptions' outcomes, over other images, apart: `corruption_outcomes`)."""
    packed = dict(metrics["outcomes"])
    packed.pop(CORRUPTIONS, None)
    mask = unpack(packed.pop("aa_subset"), n) if "aa_subset" in packed else None
    index = mask.nonzero().flatten() if mask is not None else None
    return {a: unpack(t, int(metrics[f"n_{a}"])) for a, t in packed.items()}, index


def corruption_outcomes(metrics: dict[str, Any]) -> Tensor | None:
    """Per image (rows) and corrupted set (columns, corruption by corruption, severities in
    order), right or wrong; None when the row has no corruption evaluation."""
    text = (metrics.get("outcomes") or {}).get(CORRUPTIONS)
    if text is None:
        return None
    n, sets = int(metrics[f"n_{CORRUPTIONS}"]), sum(map(len, metrics["corruption_acc"].values()))
    return unpack(text, n * sets).view(sets, n).T


def linf_worst(ok: dict[str, Tensor], index: Tensor | None) -> tuple[Tensor, bool] | None:
    """`worst_case` over the L-inf attacks of `ok` (as `summarize` forms `robust`) and whether
    it is on AutoAttack's subset; None without any L-inf attack."""
    linf = {a: hits for a, hits in ok.items() if a in LINF_ATTACKS}
    if not linf:
        return None
    on_subset = "aa" in linf and index is not None
    return worst_case(linf, index if on_subset else None), on_subset


def restrict(metrics: dict[str, Any], attacks: tuple[str, ...], y: Tensor,
             num_classes: int) -> dict[str, Any]:
    """`evaluate`'s metrics cut down to `attacks` (those of a twin checkpoint that ran more),
    computed again from its per-image outcomes."""
    ok, index = outcomes(metrics, len(y))
    out = summarize({a: v for a, v in ok.items() if a in attacks}, y.cpu(),
                    index if set(AUTOATTACKS) & set(attacks) else None, num_classes)
    out["attack_seconds"] = {a: s for a, s in metrics["attack_seconds"].items() if a in attacks}
    for a in AUTOATTACKS:
        if a in attacks and f"{a}_flags" in metrics:
            out[f"{a}_flags"] = copy.deepcopy(metrics[f"{a}_flags"])
    if CORRUPTIONS in attacks and CORRUPTIONS in metrics:
        out["outcomes"][CORRUPTIONS] = metrics["outcomes"][CORRUPTIONS]
        out.update({k: copy.deepcopy(metrics[k]) for k in CORRUPTION_FIELDS})
    return out
