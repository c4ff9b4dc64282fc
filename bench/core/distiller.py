"""The Distiller contract every method implements, and its typed, preset-driven parameters.

A method file holds only its math: the training-time `attack`, the training `loss`, and its
hyper-parameters as a dataclass with named presets. The runner owns everything else.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from bench import BenchError
from bench.core.suggest import unknown

Schedule = Literal["multistep", "ard", "cosine-exp", "off-cosine-exp"]


def scheduled_lr(kind: Schedule, base: float, milestones: tuple[int, ...], decay: float,
                 epochs: int, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
    """The LR of batch `step` of 0-based `epoch` under schedule `kind` (one mechanism for all).

    "multistep": base * decay ** #{m <= epoch}. "ard": the factor applied to the INITIAL LR
    at each milestone (ARD's script: it stays base * decay after the first). "cosine-exp"
    (CIARD): base until milestones[0] = s, then base * (1/2 + 1/2 cos(pi u)) * exp(-0.01 u^2)
    with u = (epoch - s) / (epochs - 1 - s), so the last epoch runs at LR 0; "off-cosine-exp"
    is 0 before s (CIARD's teacher). The cosine ones change per epoch, as the authors' code
    sets them (every step, from the integer epoch); `step` is there for per-step schedules.
    """
    if kind in ("multistep", "ard"):
        passed = sum(epoch >= m for m in milestones)
        return base * decay ** (min(passed, 1) if kind == "ard" else passed)
    start = milestones[0] if milestones else 0
    if epoch < start:
        return base if kind == "cosine-exp" else 0.0
    u = (epoch - start) / max(epochs - 1 - start, 1)
    return base * (0.5 + 0.5 * math.cos(math.pi * u)) * math.exp(-0.01 * u * u)


class RangeError(BenchError):
    """A hyper-parameter outside its valid range (`bounded`) or breaking a rule between fields
    (`Params.check`)."""


@dataclass(frozen=True)
class Range:
    """The valid values of a Params field (`bounded`): finite numbers within the bounds given,
    every item of a tuple alike; None always passes (it defers to another field)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def admits(self, value: Any) -> bool:
        if value is None:
            return True
        if isinstance(value, tuple | list):
            return all(self.admits(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return math.isfinite(value) and (self.ge is None or value >= self.ge) and (
            self.gt is None or value > self.gt) and (self.le is None or value <= self.le) and (
            self.lt is None or value < self.lt)

    def __str__(self) -> str:
        """Interval notation: (0, 1], [1, inf)."""
        low = f"[{self.ge:g}" if self.ge is not None else (
            f"({self.gt:g}" if self.gt is not None else "(-inf")
        high = f"{self.le:g}]" if self.le is not None else (
            f"{self.lt:g})" if self.lt is not None else "inf)")
        return f"{low}, {high}"


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None) -> Any:
    """A Params field with its valid range beside it, `eps: float = bounded(8 / 255, gt=0,
    le=1)`: `Params.check` refuses a value outside it before any training, where it would
    otherwise train silently to chance. A subclass that only changes the default keeps it."""
    return field(default=default, metadata={"range": Range(ge, gt, le, lt)})


def field_range(params_cls: type, name: str) -> Range | None:
    """The range of field `name`: where the field is declared, else (a subclass that only
    changes its default) where the nearest base class declared it."""
    for c in params_cls.__mro__:
        f = vars(c).get("__dataclass_fields__", {}).get(name)
        if f is not None and "range" in f.metadata:
            return f.metadata["range"]
    return None


def parse_number(text: str) -> float:
    """`0.05`, `1e-3` or a fraction `8/255` (as papers write eps) as a float: one parser for
    `--set`, `--sweep` and `bench eval --eps`. A ValueError for anything else."""
    try:
        return float(Fraction(text.strip()))
    except (ZeroDivisionError, OverflowError) as exc:
        raise ValueError(f"{text!r} is not a finite number ({exc})") from None


@dataclass(frozen=True)
class Params:
    """Training budget shared by every method (CIFAR-10 scale defaults).

    Milestones are 0-based epoch indices at which the LR is multiplied by `lr_decay`
    (epoch e runs at lr * lr_decay ** #{m <= e}); `lr_schedule` names the rule
    (`scheduled_lr`): "ard" reproduces ARD's official script, the cosine ones CIARD's.
    Each numeric field declares its valid range (`bounded`); `check` enforces them.
    """

    eps: float = bounded(8 / 255, gt=0, le=1)  # L-inf radius, pixels in [0, 1]
    step: float = bounded(2 / 255, gt=0, le=1)  # and at most 4 * eps (`check`)
    steps: int = bounded(10, ge=1)
    epochs: int = bounded(200, ge=1)
    batch_size: int = bounded(128, ge=1)
    lr: float = bounded(0.1, gt=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(2e-4, ge=0)
    milestones: tuple[int, ...] = bounded((100, 150), ge=0)
    lr_decay: float = bounded(0.1, gt=0)
    lr_schedule: Schedule = "multistep"
    swa: bool = False  # equal-weight SWA of the student, at the end of every epoch from ...
    swa_start: int | None = bounded(None, ge=0)  # ... this 0-based epoch (None: 1st milestone)
    swa_bn: Literal["batch"] | None = None  # SWA's BN recompute: None weighs each image
    # equally (PeerAiD's code), "batch" each batch (torch's update_bn, SAAD's code)
    selection: str | None = None  # a rule of bench.train.selection (None: the common protocol)
    seed: int | None = bounded(None, ge=0)  # the authors' code's fixed seed (documentation)
    # The fields holding 0-based epochs of the run, which an `epochs` override scales
    # (`scale_landmarks`); a subclass lists only its own, `landmarks()` gathers them all.
    landmarks: ClassVar[tuple[str, ...]] = ("milestones", "swa_start")
    # Pairs of fields (low, high) that must keep low <= high, e.g. a clamp's bounds; a
    # subclass lists only its own, as with `landmarks`.
    ordered: ClassVar[tuple[tuple[str, str], ...]] = ()

    def check(self) -> None:
        """Every field within its range (`bounded`), then the rules between fields: step at
        most 4 eps, each `ordered` pair in order, each epoch landmark at most `epochs` and a
        list of them strictly increasing inside the run (past its end a step never fires:
        TRADES' script keeps two there). A RangeError names the first value that breaks one."""
        for f in dataclasses.fields(self):
            _check_range(f.name, getattr(self, f.name), field_range(type(self), f.name))
        if self.step > 4 * self.eps:
            raise RangeError(f"step={self.step!r} is outside its valid range (0, 4*eps] = "
                             f"(0, {4 * self.eps:g}]")
        for low, high in _declared(type(self), "ordered"):
            if getattr(self, low) > getattr(self, high):
                raise RangeError(f"{low}={getattr(self, low)!r} is above {high}="
                                 f"{getattr(self, high)!r}: valid {low} <= {high}")
        for name in landmarks(type(self)):
            _check_landmark(name, getattr(self, name), self.epochs)

    def lr_at(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """Learning rate of the student (and peer) at batch `step` of 0-based `epoch`."""
        return scheduled_lr(self.lr_schedule, self.lr, self.milestones, self.lr_decay,
                            self.epochs, epoch, step, steps_per_epoch)


@dataclass(frozen=True)
class TeacherTraining(Params):
    """Params of a method whose teacher keeps training (`trains_teacher`): the teacher's own
    SGD settings and LR schedule (`scheduled_lr` with the teacher_* values)."""

    teacher_lr: float = bounded(1e-4, gt=0)
    teacher_momentum: float = bounded(0.9, ge=0, lt=1)
    teacher_weight_decay: float = bounded(2e-4, ge=0)
    teacher_lr_schedule: Schedule = "multistep"
    teacher_milestones: tuple[int, ...] = bounded((), ge=0)
    teacher_lr_decay: float = bounded(0.1, gt=0)
    landmarks: ClassVar[tuple[str, ...]] = ("teacher_milestones",)

    def teacher_lr_at(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        return scheduled_lr(self.teacher_lr_schedule, self.teacher_lr, self.teacher_milestones,
                            self.teacher_lr_decay, self.epochs, epoch, step, steps_per_epoch)


@dataclass(frozen=True)
class Preset:
    """A named set of overrides: `common` for every data set, then `per_dataset[dataset]`.

    Keys of `per_dataset` are data set names or "dataset:arch" for arch-specific schedules.
    A `full_scale` preset ignores the embedded data set's scaled-down budget. `teachers` names
    the teacher a distillation preset uses per data set: "robustbench:NAME", or a
    (method, arch) pair, or (method, arch, preset), that the harness trains and caches; with
    `teacher_normalize[dataset]` the prescribed teacher normalises its input with those
    statistics (overriding a RobustBench model's own); `clean_teachers` likewise names
    the non-robust teacher (e.g. ("standard", "resnet56")) of a multi-teacher method.
    """

    doc: str
    common: dict[str, Any] = field(default_factory=dict)
    per_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)
    base: str | None = None
    full_scale: bool = False
    teachers: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    clean_teachers: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    teacher_normalize: dict[str, str] = field(default_factory=dict)  # per data set, see cells


FAITHFUL = Preset("the authors' code, to the letter (docs/methods.md)")
PAPER = Preset("faithful math with the paper's full schedule, even on the embedded data",
               base="faithful", full_scale=True)


def paper(selection: str | None = None, clean: dict[str, str | tuple[str, ...]] | None = None,
          normalize: dict[str, str] | None = None, **teachers: str | tuple[str, ...]) -> Preset:
    """The `paper` preset of a method: its paper's teacher per data set (and clean teacher per
    data set, `clean`; the statistics a teacher normalises with, `normalize`), and the rule by
    which the paper picked the checkpoints it reported (`bench.train.selection`)."""
    return dataclasses.replace(PAPER, teachers=teachers, clean_teachers=clean or {},
                               teacher_normalize=normalize or {},
                               common=dict(selection=selection) if selection else {})


class Distiller(ABC):
    """One adversarial training / distillation method: attack + loss + hyper-parameters."""

    name: ClassVar[str] = ""
    display_name: ClassVar[str | None] = None  # in tables and figures; None: the registered name
    needs_teacher: ClassVar[bool] = False  # a robust teacher, `self.teacher`
    needs_clean_teacher: ClassVar[bool] = False  # a non-robust teacher, `self.clean_teacher`
    needs_peer: ClassVar[bool] = False
    trains_teacher: ClassVar[bool] = False  # the teacher keeps training (`teacher_loss`)
    # The intermediate features the method reads, per network role ("student", "teacher",
    # ...): "penultimate", "blocks" or a module name, tapped by `bench.models.features.Tap`.
    features: ClassVar[dict[str, str]] = {}
    Params: ClassVar[type] = Params
    presets: ClassVar[dict[str, Preset]] = {"faithful": FAITHFUL, "paper": PAPER}

    def __init__(self, *, student: nn.Module, teacher: nn.Module | None = None,
                 peer: nn.Module | None = None, clean_teacher: nn.Module | None = None,
                 params: Params) -> None:
        if self.needs_teacher and teacher is None:
            raise BenchError(f"method {self.name!r} needs a teacher")
        if self.needs_clean_teacher and clean_teacher is None:
            raise BenchError(f"method {self.name!r} needs a clean (non-robust) teacher")
        if self.needs_peer and peer is None:
            raise BenchError(f"method {self.name!r} needs a peer network")
        self.student, self.teacher, self.peer, self.p = student, teacher, peer, params
        self.clean_teacher = clean_teacher
        self.epoch = 0  # 0-based epoch, set by the runner before each epoch
        self.step = 0  # 0-based batch index within the epoch, set by the runner before each step
        self.shard_weight = 1.0  # this rank's share of the step's batch (torchrun), ditto
        self._sums: dict[str, Tensor] = {}  # per-class sums asked for by `accumulate`
        fixed = [clean_teacher] + ([] if self.trains_teacher else [teacher])
        for net in fixed:  # a fixed teacher: frozen, eval mode, never trained
            if net is not None:
                net.eval().requires_grad_(False)

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
    def preset_teacher(cls, preset: str, dataset: str,
                       kind: str = "teacher") -> str | tuple[str, ...] | None:
        """The teacher (`kind` "teacher" or "clean_teacher") `preset` prescribes on `dataset`,
        or with `kind` "teacher_normalize" the statistics that teacher normalises with."""
        field_ = {"teacher": "teachers", "clean_teacher": "clean_teachers"}.get(kind, kind)
        return next((getattr(p, field_)[dataset] for p in cls.chain(preset)
                     if dataset in getattr(p, field_)), None)

    @classmethod
    def resolve(cls, preset: str = "faithful", dataset: str = "cifar10", arch: str | None = None,
                budget: dict[str, Any] | None = None, **overrides: Any) -> Params:
        """Resolved hyper-parameters: defaults < data set budget < preset chain < overrides.

        `budget` is the embedded data set's scaled-down training budget (eps, epochs, ...).
        An `epochs` override scales every epoch landmark the overrides leave alone
        (`scale_landmarks`), so a shorter run keeps the preset's schedule in proportion.
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
        epochs = overrides.get("epochs")
        if type(epochs) is int and epochs >= 1:  # a wrong one fails in the checks, unscaled
            values.update(scale_landmarks(make_params(cls.Params, values), epochs, overrides,
                                          cls.name))
        values.update(overrides)
        params = make_params(cls.Params, values)
        try:
            params.check()
        except RangeError as exc:
            raise RangeError(f"{cls.name}: {exc}") from None
        return params

    @abstractmethod
    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        """The method's training-time adversarial examples for the clean batch (x, y)."""

    @abstractmethod
    def loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        """The scalar training objective; puts each network in the mode its spec says."""

    def trainable(self) -> list[nn.Module]:
        """The modules `loss()` trains (one SGD per module, stepped together)."""
        return [self.student] if self.peer is None else [self.student, self.peer]

    def networks(self) -> dict[str, nn.Module]:
        """Every network the runner trains and checkpoints, by name: student, peer, and a
        teacher that keeps training (its own optimizer, schedule and `teacher_loss`)."""
        nets = {"student": self.student}
        if self.peer is not None:
            nets["peer"] = self.peer
        if self.trains_teacher and self.teacher is not None:
            nets["teacher"] = self.teacher
        return nets

    # -- state and hooks: no-ops by default, so a first-wave method stays its math alone ------
    def teacher_loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor | None:
        """The objective of a teacher that keeps training (`trains_teacher`), which the runner
        steps AFTER the student's step; None: no teacher step for this batch."""
        raise NotImplementedError(f"method {self.name!r} does not train its teacher")

    def state_dict(self) -> dict[str, Any]:
        """Method state that changes during training (adaptive weights, temperatures, ...):
        tensors and plain Python values, saved in every epoch checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (on resume)."""
        return None

    def after_step(self) -> None:
        """Called by the runner after the optimizer steps of every batch (student, peer and
        trained teacher), with `self.epoch` and `self.step` still those of the batch."""
        return None

    def accumulate(self, name: str, values: Tensor, y: Tensor, num_classes: int) -> None:
        """Add per-sample `values` into per-class sums under `name`, on the device (no host
        sync); the runner hands the epoch's sums to `on_epoch_end` and clears them."""
        v = values.detach().float()
        total = self._sums.get(name)
        if total is None:  # float32 like `v`, whatever torch's default dtype
            total = torch.zeros(num_classes, device=v.device, dtype=v.dtype)
        self._sums[name] = total.index_add(0, y, v)

    def on_epoch_end(self, sums: dict[str, Tensor]) -> None:
        """Called by the runner at the end of every training epoch with the per-class sums
        `accumulate` gathered during it (all-reduced across ranks under DDP)."""
        return None

    def pop_sums(self) -> dict[str, Tensor]:
        """The per-class sums gathered since the last call (the runner's side of `accumulate`)."""
        out, self._sums = self._sums, {}
        return out


def make_params(cls: type, values: dict[str, Any]) -> Params:
    """Build a Params dataclass, with a clear error for an unknown field."""
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise unknown(f"hyper-parameter of {cls.__name__}", key, names)
    if "milestones" in values:
        values = {**values, "milestones": tuple(values["milestones"])}
    return cls(**values)


class LandmarkError(BenchError):
    """An epoch landmark that cannot scale to the run's length (`scale_landmarks`)."""


def landmarks(params_cls: type) -> tuple[str, ...]:
    """Every epoch landmark of `params_cls`: the `landmarks` each class of its MRO lists."""
    return _declared(params_cls, "landmarks")


def _declared(params_cls: type, attr: str) -> tuple[Any, ...]:
    """The items of ClassVar `attr` that each class of `params_cls`'s MRO lists, once each."""
    out: list[Any] = []
    for c in reversed(params_cls.__mro__):
        out += [n for n in vars(c).get(attr, ()) if n not in out]
    return tuple(out)


def _check_range(name: str, value: Any, valid: Range | None) -> None:
    if valid is None or valid.admits(value):
        return
    where = f": every item in {valid}" if isinstance(value, tuple | list) else f" {valid}"
    raise RangeError(f"{name}={value!r} is outside its valid range{where}")


def _check_landmark(name: str, value: int | tuple[int, ...] | None, epochs: int) -> None:
    """An epoch landmark at most `epochs` (there: never reached); a list of them strictly
    increasing while inside the run (scaled to a shorter run, several may meet at its end)."""
    if value is None:
        return
    if isinstance(value, int):
        if value > epochs:
            raise RangeError(f"{name}={value} is outside its valid range [0, epochs] = "
                             f"[0, {epochs}] (past the end of the run)")
        return
    if any(b <= a and min(a, b) < epochs for a, b in itertools.pairwise(value)):
        raise RangeError(f"{name}={tuple(value)!r} must increase strictly within the run "
                         f"(0-based epochs 0 to {epochs - 1})")


def scale_epoch(m: int, old: int, new: int) -> int:
    """Landmark `m` of an `old`-epoch schedule in a run of `new` epochs: round(m * new / old),
    halves up, and never below 1 unless m is 0 (the rule that made the embedded set's
    1/20 landmarks, e.g. CIARD's 149 of 300 -> 7 of 15). One inside the old run stays
    within 1..new (new: the end of the run); one at or past its end stays at or past new."""
    return m if m <= 0 else max(1, (2 * m * new + old) // (2 * old))


def scale_landmarks(params: Params, epochs: int, keep: Collection[str] = (),
                    method: str = "") -> dict[str, Any]:
    """The epoch landmarks of `params` (a schedule of `params.epochs` epochs) scaled by
    `scale_epoch` to a run of `epochs`, except those named in `keep` (the user's own) and
    those left None (they follow another: SWA the first milestone, MTARD's rates the LR's).

    Two landmarks of one field that land on the same epoch inside the run would merge two
    steps of the schedule into one: a LandmarkError that suggests values to set instead.
    """
    old = params.epochs
    out: dict[str, Any] = {}
    if epochs == old or old < 1:
        return out
    for name in landmarks(type(params)):
        value = getattr(params, name, None)
        if name in keep or value is None:
            continue
        if isinstance(value, int):
            out[name] = scale_epoch(value, old, epochs)
            continue
        new = tuple(scale_epoch(m, old, epochs) for m in value)
        for i, j in itertools.combinations(range(len(new)), 2):
            if value[i] != value[j] and new[i] == new[j] < epochs:
                who = f"{method}: " if method else ""
                raise LandmarkError(
                    f"{who}{name} {_literal(value)} of the {old}-epoch schedule cannot scale to "
                    f"{epochs} epochs ({value[i]} and {value[j]} both land on epoch {new[i]}); "
                    f"set them yourself, e.g. --set {name}={_literal(_spread(new, epochs), True)}")
        out[name] = new
    return out


def _spread(new: tuple[int, ...], epochs: int) -> tuple[int, ...]:
    """`new` with its merged landmarks pulled apart (earlier ones moved down, then later ones
    up), kept within 1..epochs: the suggestion of `scale_landmarks`' error."""
    out = list(new)
    for i in range(len(out) - 2, -1, -1):
        if out[i] >= out[i + 1] and out[i] < epochs:
            out[i] = max(1, out[i + 1] - 1)
    for i in range(1, len(out)):
        if out[i] <= out[i - 1] < epochs:
            out[i] = min(epochs, out[i - 1] + 1)
    return tuple(out)


def _literal(value: tuple[int, ...], cli: bool = False) -> str:
    """`value` as `--set` takes it (`cli`: 2,3 or 2, for one) or as Python prints it."""
    if not cli:
        return repr(tuple(value))
    return ",".join(map(str, value)) + ("," if len(value) == 1 else "")

