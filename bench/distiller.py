"""The Distiller contract every method implements, and its typed, preset-driven parameters.

A method file holds only its math: the training-time `attack`, the training `loss`, and its
hyper-parameters as a dataclass with named presets. The runner owns everything else.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from bench import BenchError
from bench.suggest import unknown


@dataclass(frozen=True)
class Params:
    """Training budget shared by every method (CIFAR-10 scale defaults).

    Milestones are 0-based epoch indices at which the LR is multiplied by `lr_decay`
    (epoch e runs at lr * lr_decay ** #{m <= e}). `lr_schedule="ard"` reproduces ARD's
    official script, which applies the factor to the INITIAL LR at every milestone.
    """

    eps: float = 8 / 255
    step: float = 2 / 255
    steps: int = 10
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    milestones: tuple[int, ...] = (100, 150)
    lr_decay: float = 0.1
    lr_schedule: Literal["multistep", "ard"] = "multistep"
    swa: bool = False  # equal-weight SWA of the student from the first milestone on
    seed: int | None = None  # the seed the authors' code fixes, if any (documentation only)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based `epoch` under this schedule."""
        passed = sum(epoch >= m for m in self.milestones)
        if self.lr_schedule == "ard":
            passed = min(passed, 1)
        return self.lr * self.lr_decay**passed


@dataclass(frozen=True)
class Preset:
    """A named set of overrides: `common` for every data set, then `per_dataset[dataset]`.

    Keys of `per_dataset` are data set names or "dataset:arch" for arch-specific schedules.
    A `full_scale` preset ignores the embedded data set's scaled-down budget. `teachers` names
    the teacher a distillation preset uses per data set: "robustbench:NAME", or a
    (method, arch) pair that the harness trains and caches.
    """

    doc: str
    common: dict[str, Any] = field(default_factory=dict)
    per_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)
    base: str | None = None
    full_scale: bool = False
    teachers: dict[str, str | tuple[str, str]] = field(default_factory=dict)


FAITHFUL = Preset("the authors' code, to the letter (../shared/methods.md)")
PAPER = Preset("faithful math with the paper's full schedule, even on the embedded data",
               base="faithful", full_scale=True)


def paper(**teachers: str | tuple[str, str]) -> Preset:
    """The `paper` preset of a distillation method, with its paper's teacher per data set."""
    return dataclasses.replace(PAPER, teachers=teachers)


class Distiller(ABC):
    """One adversarial training / distillation method: attack + loss + hyper-parameters."""

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = False
    needs_peer: ClassVar[bool] = False
    Params: ClassVar[type] = Params
    presets: ClassVar[dict[str, Preset]] = {"faithful": FAITHFUL, "paper": PAPER}

    def __init__(self, *, student: nn.Module, teacher: nn.Module | None = None,
                 peer: nn.Module | None = None, params: Params) -> None:
        if self.needs_teacher and teacher is None:
            raise BenchError(f"method {self.name!r} needs a teacher")
        if self.needs_peer and peer is None:
            raise BenchError(f"method {self.name!r} needs a peer network")
        self.student, self.teacher, self.peer, self.p = student, teacher, peer, params
        self.epoch = 0
        if teacher is not None:  # a fixed teacher: frozen, eval mode, never trained
            teacher.eval().requires_grad_(False)

    @classmethod
    def description(cls) -> str:
        """First line of the class docstring, for `bench list`."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def chain(cls, preset: str) -> list[Preset]:
        """`preset` and its bases, most specific first."""
        if preset not in cls.presets:
            raise unknown(f"preset of {cls.name}", preset, cls.presets)
        out, name = [], preset
        while name is not None:
            out.append(cls.presets[name])
            name = cls.presets[name].base
        return out

    @classmethod
    def preset_teacher(cls, preset: str, dataset: str) -> str | tuple[str, str] | None:
        """The teacher `preset` prescribes on `dataset`, if any."""
        return next((p.teachers[dataset] for p in cls.chain(preset) if dataset in p.teachers),
                    None)

    @classmethod
    def resolve(cls, preset: str = "faithful", dataset: str = "cifar10", arch: str | None = None,
                budget: dict[str, Any] | None = None, **overrides: Any) -> Params:
        """Resolved hyper-parameters: defaults < data set budget < preset chain < overrides.

        `budget` is the embedded data set's scaled-down training budget (eps, epochs, ...).
        """
        chain = cls.chain(preset)
        values: dict[str, Any] = {}
        if budget and not any(p.full_scale for p in chain):
            values.update(budget)
        for p in reversed(chain):
            values.update(p.common)
            values.update(p.per_dataset.get(dataset, {}))
            if arch is not None:
                values.update(p.per_dataset.get(f"{dataset}:{arch}", {}))
        values.update(overrides)
        return make_params(cls.Params, values)

    @abstractmethod
    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        """The method's training-time adversarial examples for the clean batch (x, y)."""

    @abstractmethod
    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        """The scalar training objective; puts each network in the mode its spec says."""

    def trainable(self) -> list[nn.Module]:
        """The modules the runner's optimizers train (one SGD per module)."""
        return [self.student] if self.peer is None else [self.student, self.peer]


def make_params(cls: type, values: dict[str, Any]) -> Params:
    """Build a Params dataclass, with a clear error for an unknown field."""
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise unknown(f"hyper-parameter of {cls.__name__}", key, names)
    if "milestones" in values:
        values = {**values, "milestones": tuple(values["milestones"])}
    return cls(**values)
