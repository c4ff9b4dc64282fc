"""A cell of the benchmark grid: one (method, preset, data set, arch, seed) training run.

Resolving a cell fixes every hyper-parameter; its id is a hash of that resolved config, so
the same experiment always maps to the same checkpoint folder and result rows.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import types
import typing
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench import BenchError
from bench.core import registry
from bench.core.distiller import Distiller, LandmarkError, Params, landmarks, parse_number
from bench.core.suggest import unknown
from bench.data import datasets
from bench.models import model_names
from bench.train import selection
from bench.train.compute import check_precision
from bench.train.teachers import NORMALIZATIONS, ZOO


@dataclass(frozen=True)
class Cell:
    """What the user asked for; `resolve()` turns it into a fully specified experiment."""

    method: str
    dataset: str = "digits"
    arch: str | None = None  # None: the data set's default architecture
    seed: int = 0
    preset: str = "faithful"
    overrides: tuple[tuple[str, Any], ...] = ()
    peer_arch: str | None = None  # PeerAiD's peer; None: same as the student
    # a checkpoint file, "robustbench:NAME", or "train:METHOD[:ARCH][:KEY=VALUE...]" (a teacher
    # bench trains and caches, `train_spec`); None: the preset's teacher, else trained
    teacher: str | None = None
    teacher_arch: str | None = None
    teacher_method: str | None = None  # None: the preset's teacher, else PGD-AT
    select: str = "test"  # model selection split: "test" (as the papers) or "val"
    select_every: int = 1
    teacher_normalize: str | None = None  # the teacher normalises its input with these stats
    clean_teacher: str | None = None  # the non-robust teacher, in the same forms; None
    clean_teacher_arch: str | None = None  # None: the preset's, else the student's
    precision: str = "fp32"  # training precision (bench.train.compute); evaluation is always fp32


@dataclass(frozen=True)
class Resolved:
    """A cell with every choice made: what the runner trains and the store records."""

    cell: Cell
    cls: type[Distiller]
    spec: datasets.DataSpec
    arch: str
    params: Params
    teacher_cell: Cell | None = None
    teacher_file: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    clean_teacher_cell: Cell | None = None  # a cell the harness trains (method `standard`)
    clean_teacher_file: Path | None = None

    @property
    def id(self) -> str:
        """Readable prefix + hash of the config; None-valued keys are left out of the hash,
        so a new optional field does not orphan every stored result."""
        blob = json.dumps(_drop_none(self.config), sort_keys=True, default=str).encode()
        digest = hashlib.sha256(blob).hexdigest()[:10]
        c = self.cell
        return f"{c.method}-{c.preset}-{c.dataset}-{self.arch}-s{c.seed}-{digest}"


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def _check_arch(name: str | None) -> None:
    if name is not None and name not in model_names():
        raise unknown("arch", name, model_names())


def _file_digest(path: Path, kind: str = "teacher") -> str:
    if not path.is_file():
        raise BenchError(f"{kind.replace('_', ' ')} checkpoint {path} does not exist")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


_KINDS = {float: "a number", int: "an integer", bool: "True or False", str: "a string",
          type(None): "None"}


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value` has the annotated type `hint` (the kinds Params fields use)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is tuple:  # `--set milestones=1,3` parses as a tuple; a list is as good
        return isinstance(value, tuple | list) and all(_fits(v, args[0]) for v in value)
    if isinstance(value, bool):  # bool is an int to Python, never to a hyper-parameter
        return hint is bool
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


def _kind(hint: Any) -> str:
    """`hint` in words, for the error message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind(a) for a in args)
    if origin is tuple:
        return f"comma-separated values (a trailing comma for one), each {_kind(args[0])}"
    return _KINDS.get(hint, getattr(hint, "__name__", str(hint)))


def _check_types(params_cls: type, overrides: dict[str, Any]) -> None:
    """`--set` values are parsed as Python literals, or kept as strings: reject the wrong
    kind here, before it fails deep inside training (or, like epochs=2.5, silently runs)."""
    hints = typing.get_type_hints(params_cls)
    for key, value in overrides.items():
        if key in hints and not _fits(value, hints[key]):
            raise BenchError(f"hyper-parameter {key} must be {_kind(hints[key])}, got {value!r}")


TRAIN = "train:"


def literal(raw: str) -> Any:
    """A Python literal (number, tuple, quoted string), a fraction such as 8/255 as its float
    (as `bench eval --eps` takes it), else the text itself."""
    with suppress(ValueError, SyntaxError):
        return ast.literal_eval(raw)
    with suppress(ValueError):
        return parse_number(raw)
    return raw


def overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values are Python literals (numbers, tuples) or strings."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--set takes key=value, got {pair!r}")
        out[key.strip()] = literal(raw)
    return out


@dataclass(frozen=True)
class TrainSpec:
    """A teacher bench trains, as a `--teachers` item names it: train:METHOD[:ARCH][:KEY=VALUE
    ...], where a KEY is a hyper-parameter of METHOD or `preset` (so teachers of different
    strengths are one axis: train:pgdat:epochs=3, train:pgdat, train:trades:small_cnn)."""

    method: str
    arch: str | None = None
    preset: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()


def train_spec(text: str, kind: str = "teacher") -> TrainSpec:
    """`text` (after `train:`) parsed and its method and hyper-parameter names checked, with a
    one-line error naming the form; values are checked when the teacher's cell resolves."""
    parts = [p.strip() for p in text.removeprefix(TRAIN).split(":")]
    form = f"{kind.replace('_', ' ')} {text!r}: the form is train:METHOD[:ARCH][:KEY=VALUE...]"
    if not parts or not parts[0]:
        raise BenchError(f"{form}, and it names no method")
    method, rest = parts[0], parts[1:]
    try:
        registry.get(method)
    except BenchError as e:  # unknown method: one line with a suggestion
        raise BenchError(f"{kind.replace('_', ' ')} {text}: {e}") from None
    arch = rest.pop(0) if rest and "=" not in rest[0] else None
    if any("=" not in p for p in rest):
        raise BenchError(f"{form}; {next(p for p in rest if '=' not in p)!r} is not KEY=VALUE")
    over = overrides(rest)
    preset = over.pop("preset", None)
    return TrainSpec(method, arch, None if preset is None else str(preset),
                     tuple(sorted(over.items())))


def _teacher_id(t_cell: Cell, cell: Cell, kind: str, spec: str | None = None) -> str:
    """The id of `cell`'s teacher cell `t_cell`; its errors say whose teacher it is (and which
    --teachers item, `spec`, named it)."""
    try:
        return resolve(t_cell).id
    except LandmarkError as e:  # say whose schedule it is
        raise LandmarkError(f"{cell.method}'s {kind.replace('_', ' ')} {e}") from None
    except BenchError as e:
        if spec is None:
            raise
        raise BenchError(f"{kind.replace('_', ' ')} {spec}: {e}") from None


@dataclass(frozen=True)
class _Teacher:
    """Where a fixed teacher comes from: its id in the config, and a file or a cell to train."""

    id: str | None = None
    arch: str | None = None
    cell: Cell | None = None
    file: Path | None = None
    prescribed: bool = False  # the preset's own teacher (recipe or zoo model), unchanged


_NO_TEACHER = _Teacher()


def resolve(cell: Cell) -> Resolved:
    """Fix every hyper-parameter of `cell`, with a clear error for anything invalid."""
    cls = registry.get(cell.method)
    spec = datasets.spec(cell.dataset)
    for a in (cell.arch, cell.peer_arch, cell.teacher_arch, cell.clean_teacher_arch):
        _check_arch(a)
    if cell.seed < 0:
        raise BenchError(f"seeds must be >= 0, got {cell.seed}")
    check_precision(cell.precision)
    if cell.select not in ("test", "val"):
        raise BenchError(f"--select must be 'test' or 'val', got {cell.select!r}")
    if cell.select_every < 1:
        raise BenchError(f"--select-every must be >= 1, got {cell.select_every}")
    if cell.teacher_normalize not in (None, *NORMALIZATIONS):
        raise unknown("teacher normalization", cell.teacher_normalize, NORMALIZATIONS)
    arch = cell.arch or spec.default_arch
    _check_types(cls.Params, dict(cell.overrides))
    params = cls.resolve(cell.preset, cell.dataset, arch=arch, budget=spec.budget,
                         **dict(cell.overrides))  # every value in its range (`Params.check`)
    selection.check(params.selection, params.swa)
    teacher = clean = _NO_TEACHER
    norm = cell.teacher_normalize
    if cls.needs_teacher:
        teacher = _teacher(cell, cls, arch, "teacher", cell.teacher, cell.teacher_arch,
                           cell.teacher_method, "pgdat")
        if norm is None and teacher.prescribed:
            norm = cls.preset_teacher(cell.preset, cell.dataset, "teacher_normalize")
    if cls.needs_clean_teacher:
        clean = _teacher(cell, cls, arch, "clean_teacher", cell.clean_teacher,
                         cell.clean_teacher_arch, None, "standard")
    config = {
        "method": cell.method, "preset": cell.preset, "dataset": cell.dataset, "arch": arch,
        "seed": cell.seed, "params": dataclasses.asdict(params),
        "peer_arch": (cell.peer_arch or arch) if cls.needs_peer else None,
        "teacher": teacher.id, "teacher_arch": teacher.arch,
        "teacher_normalize": norm if teacher.id else None,
        "clean_teacher": clean.id, "clean_teacher_arch": clean.arch,
        "select": cell.select, "select_every": cell.select_every,
        # fp32 (the reference) is left out of the hash: existing cell ids stay as they were
        "precision": None if cell.precision == "fp32" else cell.precision,
    }
    return Resolved(cell, cls, spec, arch, params, teacher.cell, teacher.file, config,
                    clean.cell, clean.file)


def budget_note(r: Resolved) -> str | None:
    """One line when the preset, not the user, runs a data set for other than its budget's
    epochs (`paper` on the embedded set: the paper's full schedule), for `bench run` to say
    before it trains; None otherwise."""
    budget, c = r.spec.budget.get("epochs"), r.cell
    if budget is None or r.params.epochs == budget or "epochs" in dict(c.overrides):
        return None
    whose = "the paper's" if c.preset == "paper" else f"the {c.preset} preset's"
    where = "the embedded set's" if r.spec.embedded else f"{c.dataset}'s"
    return (f"{c.method} {c.preset} on {c.dataset}: {r.params.epochs} epochs ({whose} budget, "
            f"not {where} {budget})")


def _teacher(cell: Cell, cls: type[Distiller], arch: str, kind: str, source: str | None,
             t_arch: str | None, t_method: str | None, default_method: str) -> _Teacher:
    """`source` (--teacher / --clean-teacher), else the preset's teacher of this `kind` (a zoo
    model only when no --teacher-method or arch asks for a trained one), else one trained
    with `default_method` (PGD-AT for the robust teacher, standard for the clean one) and
    the student's arch."""
    prescribed = None
    if source is None:
        prescribed = cls.preset_teacher(cell.preset, cell.dataset, kind)
        if isinstance(prescribed, str) and not (t_method or t_arch):
            source = prescribed
    trained = prescribed if isinstance(prescribed, tuple) else (default_method, arch)
    if source and source.startswith(ZOO):
        return _Teacher(source, prescribed=source == prescribed)
    if source and source.startswith(TRAIN):  # the spec says it all: no --teacher-method,
        spec = train_spec(source, kind)  # --teacher-arch or run length of the student's
        t_cell = Cell(spec.method, cell.dataset, spec.arch or arch, seed=0,
                      preset=spec.preset or "faithful", overrides=spec.overrides,
                      precision=cell.precision)
        return _Teacher(_teacher_id(t_cell, cell, kind, source), t_cell.arch, t_cell)
    if source:
        path = Path(source)
        return _Teacher(f"file:{_file_digest(path, kind)}", t_arch or arch, file=path)
    t_arch = t_arch or trained[1]
    mine = dict(cell.overrides)
    epochs = mine.get("epochs")
    recipe = trained[2] if len(trained) > 2 and not t_method else "faithful"
    method = t_method or trained[0]
    over: tuple[tuple[str, Any], ...] = (("epochs", epochs),) if epochs else ()
    if epochs:  # the run's length, and the landmarks set with it where the teacher has them
        t_cls = registry.get(method)
        own = t_cls.resolve(recipe, cell.dataset, arch=t_arch,
                            budget=datasets.spec(cell.dataset).budget)
        over += tuple((k, mine[k]) for k in landmarks(t_cls.Params)
                      if k in mine and getattr(own, k) is not None)
    t_cell = Cell(method, cell.dataset, t_arch, seed=0, preset=recipe, overrides=over,
                  precision=cell.precision)
    t_id = _teacher_id(t_cell, cell, kind)
    return _Teacher(t_id, t_arch, t_cell,
                    prescribed=isinstance(prescribed, tuple) and not t_method and
                    t_arch == prescribed[1])
