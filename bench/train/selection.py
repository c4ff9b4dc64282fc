"""Model selection rules: which checkpoints a run reports, and how the best one is picked.

The common protocol (PGD-10 on the selection split every epoch, best and last) is right for
a fair comparison and every `faithful` preset uses it. A `paper` preset names the rule its
paper used itself (`Params.selection`); the runner interprets the rule, a method file never
sees it. Epoch numbers in a rule are 1-based, as the authors' scripts count them. `last` is
always kept: it is the final network, and its stored row marks the cell as complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from bench import BenchError
from bench.core.suggest import unknown
from bench.eval.evaluate import worst_class


@dataclass(frozen=True)
class Rule:
    """How one paper picked the networks it reported."""

    doc: str
    attack: str = "pgd10"  # the selection attack (an attack of bench.eval.evaluate, eval mode)
    # acc+worst: + the worst class's accuracy; clean+adv: (clean acc + attack acc) / 2
    score: Literal["acc", "acc+worst", "clean+adv"] = "acc"
    every: int | None = None  # evaluate at 1-based epochs every, 2 every, ...; None: the cell's
    dense_from: int | None = None  # ... and at every 1-based epoch from this one on
    first: bool = False  # ... and at the first epoch (the scripts' `or epoch == 1`)
    # the swa_* where SWA runs; teacher_best: the best of a teacher that trains (saved to
    # disk for resuming from it or analysing it, never evaluated as a student)
    keep: tuple[str, ...] = ("best", "last", "swa_best", "swa_last")
    best_clean: bool = False  # also keep the best clean-accuracy network (`best_clean`)
    reported: tuple[str, ...] = ("best", "swa_best")  # the networks the paper's tables show

    def due(self, epoch: int, epochs: int, select_every: int) -> bool:
        """Whether 0-based `epoch` is evaluated (the last one always is)."""
        if epoch == epochs - 1:
            return True
        if self.every is None:
            return epoch % select_every == 0
        e = epoch + 1
        return (e % self.every == 0 or (self.first and e == 1)
                or (self.dense_from is not None and e >= self.dense_from))

    def tracks_best(self) -> bool:
        return any(k.endswith("best") for k in self.keep) or self.best_clean


def score(rule: Rule, correct: Tensor, y: Tensor, clean: float | None = None) -> float:
    """The rule's score of one network from its per-image correctness under the rule's attack
    on the selection split (and its clean accuracy, for "clean+adv")."""
    acc = correct.sum().item() / len(correct)
    if rule.score == "acc":
        return acc
    if rule.score == "clean+adv":
        if clean is None:
            raise ValueError("the clean+adv score needs the clean accuracy")
        return (clean + acc) / 2
    return acc + worst_class(correct, y)


COMMON = Rule("the common protocol: PGD-10 (step eps/4) on the selection split every "
              "--select-every epochs; best and last (SWA: best and last too)")
RULES: dict[str, Rule] = {
    "common": COMMON,
    "rslad": Rule("RSLAD: PGD-20 with step 0.003 at 1-based epochs 20, 40, ... before 215 and "
                  "every epoch from 215; best and last", attack="pgd20s", every=20,
                  dense_from=215, keep=("best", "last"), reported=("best", "last")),
    "ard": Rule("ARD: no selection, the last epoch", keep=("last",), reported=("last",)),
    # A non-robust network's robust accuracy is near 0 at every epoch, so the best of it is
    # noise: standard training keeps the best clean network, as IAD's pre_train/ST.py does.
    "clean": Rule("standard training: best clean accuracy every epoch (IAD's pre_train/ST.py); "
                  "and last", attack="clean", every=1, keep=("best", "last")),
    "adaad": Rule("AdaAD: best PGD-10 every epoch, also the best clean accuracy; and last",
                  every=1, keep=("best", "last"), best_clean=True),
    "peeraid": Rule("PeerAiD: best PGD-10 every epoch, of the student and of the SWA model",
                    every=1, keep=("best", "swa_best", "last")),
    "igdm": Rule("IGDM: the last epoch", keep=("last",), reported=("last",)),
    "saad": Rule("SAAD: the final SWA model", keep=("swa_last", "last"), reported=("swa_last",)),
    "absld": Rule("ABSLD: best (PGD-20 acc + worst-class PGD-20 acc), PGD-20 with step 0.003, "
                  "at 1-based epochs 10, 20, ... before 215 and every epoch from 215; and last",
                  attack="pgd20s", score="acc+worst", every=10, dense_from=215,
                  keep=("best", "last")),
    "mtard": Rule("MTARD: no selection, the last epoch", keep=("last",), reported=("last",)),
    "bmtard": Rule("B-MTARD: best (clean + PGD-20 accuracy) / 2, PGD-20 with step 0.003, at "
                   "1-based epoch 1, every 20 epochs before 215 and every epoch from 215; and "
                   "last", attack="pgd20s", score="clean+adv", every=20, dense_from=215,
                   first=True, keep=("best", "last")),
    "ciard": Rule("CIARD: best (clean + PGD-20 accuracy) / 2 of the student and of the trained "
                  "teacher, PGD-20 with step 0.003, at 1-based epoch 1, every 10 epochs and "
                  "every epoch from 250; and last", attack="pgd20s", score="clean+adv",
                  every=10, dense_from=250, first=True, keep=("best", "last", "teacher_best")),
    # train.py tests at 0-based epochs 0, 10, 20, ... and every epoch past decay_epoch1 - 5
    # (1-based 97 on); `every` counts 1-based (10, 20, ...): one epoch earlier, before the decay
    "ibd": Rule("IBD: best PGD-10 (step 2/255) at 1-based epoch 1, every 10 epochs and every "
                "epoch from 97; and last", every=10, dense_from=97, first=True,
                keep=("best", "last"), reported=("best",)),
    "fair": Rule("Fair-ARD family: no selection in the scripts (every epoch saved, eval.py "
                 "takes one file); the last epoch", keep=("last",), reported=("last",)),
}


def rule(name: str | None) -> Rule:
    """The rule called `name` (None: the common protocol)."""
    if name is None:
        return COMMON
    if name not in RULES:
        raise unknown("selection rule", name, RULES)
    return RULES[name]


def check(name: str | None, swa: bool) -> None:
    """A rule that keeps an SWA network needs SWA."""
    r = rule(name)
    if r is not COMMON and not swa and any(k.startswith("swa") for k in r.keep):
        raise BenchError(f"selection rule {name!r} keeps an SWA model, but swa is off")
