"""Options or an experiment file -> the cells of a grid: one public way for `bench run` and
`run_all.py`.

A grid is methods x data sets x architectures x sweep combinations x teachers x clean
teachers x seeds (the teacher axes only for the methods that take such a teacher). An experiment
file is TOML whose keys are a command's long option names (`methods`, `datasets`, `archs`,
`seeds`, `epochs`, `attacks`, `set`, `sweep`, ...), with lists where the command takes comma
lists; it becomes the command's defaults, so flags typed on the command line override it.
"""

from __future__ import annotations

import ast
import itertools
import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from bench import BenchError
from bench.core.distiller import parse_number
from bench.core.suggest import unknown
from bench.train.cells import Cell, literal, overrides


def csv(value: str) -> list[str]:
    """`a, b,c` -> ['a', 'b', 'c'] (empty items dropped)."""
    return [v.strip() for v in value.split(",") if v.strip()]


def seeds(value: str) -> list[int]:
    try:
        out = [int(v) for v in csv(value)]
    except ValueError:
        raise BenchError(f"--seeds takes comma-separated integers, got {value!r}") from None
    if not out or any(s < 0 for s in out):
        raise BenchError(f"--seeds must be non-negative integers, got {value!r}")
    return out


def sweeps(pairs: tuple[str, ...] | list[str]) -> dict[str, list[Any]]:
    """`--sweep key=v1,v2` pairs -> {key: [v1, v2]}; each value parsed as `--set` parses it
    (`[1, 3],[2, 4]` sweeps a list-valued hyper-parameter)."""
    out: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BenchError(f"--sweep takes key=v1,v2,..., got {pair!r}")
        try:
            values = list(ast.literal_eval(f"[{raw}]"))
        except (ValueError, SyntaxError):
            values = [literal(v) for v in csv(raw)]
        if not values:
            raise BenchError(f"--sweep {key}= names no value (give key=v1,v2,...)")
        if key in out:
            raise BenchError(f"--sweep {key} is given twice")
        out[key] = values
    return out


def resolve_device(name: str) -> str:
    """The torch device, checked here: `cuda:banana` or `cuda:7` fail later with a traceback."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise BenchError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise BenchError(f"--device {name}: no such CUDA device here "
                         f"({torch.cuda.device_count()} available)")
    return name


def writable(out: Path) -> Path:
    """`out`, created; a one-line error when it cannot be written to."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BenchError(f"output folder {out} is not writable ({exc.strerror})") from None
    return out


@dataclass(frozen=True)
class Grid:
    """What a command asked for, before any resolving: expands into cells."""

    methods: list[str]
    datasets: list[str] = field(default_factory=lambda: ["digits"])
    archs: list[str | None] = field(default_factory=lambda: [None])  # None: data set's
    seeds: list[int] = field(default_factory=lambda: [0])
    preset: str = "faithful"
    overrides: dict[str, Any] = field(default_factory=dict)  # --set and --epochs
    sweep: dict[str, list[Any]] = field(default_factory=dict)  # --sweep: one cell per combo
    teachers: list[str | None] = field(default_factory=lambda: [None])  # None: the preset's
    clean_teachers: list[str | None] = field(default_factory=lambda: [None])
    cell_fields: dict[str, Any] = field(default_factory=dict)  # teacher arch, peer_arch, ...

    def cells(self) -> list[Cell]:
        """One cell per (data set, arch, method, sweep combination, teacher, clean teacher,
        seed), in that order; a method without a (clean) teacher has one cell where the grid
        names several."""
        from bench.core import registry

        if not self.methods:
            raise BenchError("--methods names no method")
        if not self.datasets:
            raise BenchError("--datasets names no data set")
        clash = sorted(set(self.sweep) & set(self.overrides))
        if clash:
            raise BenchError(f"{clash[0]} is both --set and --sweep: give it once")
        keys = sorted(self.sweep)
        combos = [dict(zip(keys, vals, strict=True))
                  for vals in itertools.product(*(self.sweep[k] for k in keys))]

        def axis(method: str, kind: str) -> list[str | None]:
            values = self.teachers if kind == "teacher" else self.clean_teachers
            return values if getattr(registry.get(method), f"needs_{kind}") else [None]

        return [Cell(m, d, a, s, self.preset, tuple(sorted({**self.overrides, **combo}.items())),
                     teacher=t, clean_teacher=ct, **self.cell_fields)
                for d in self.datasets for a in self.archs for m in self.methods
                for combo in combos for t in axis(m, "teacher")
                for ct in axis(m, "clean_teacher") for s in self.seeds]


def teacher_list(value: str | None, flag: str) -> list[str | None]:
    """`--teachers a,b` -> ['a', 'b'] (repeats dropped); None (not given) -> [None]."""
    if value is None:
        return [None]
    out = list(dict.fromkeys(csv(value)))
    if not out:
        raise BenchError(f"{flag} names no teacher")
    return out


def grid(methods: str, datasets: str, archs: str | None, seeds_: str, preset: str = "faithful",
         epochs: int | None = None, sets: tuple[str, ...] = (), sweep: tuple[str, ...] = (),
         teachers: str | None = None, clean_teachers: str | None = None,
         **cell_fields: Any) -> Grid:
    """A Grid from the command-line forms of the options (comma lists, key=value pairs)."""
    over = overrides(sets)
    if archs is not None and not csv(archs):
        raise BenchError("--archs names no architecture")
    if epochs is not None:
        over["epochs"] = epochs
    names = csv(methods)
    if names == ["all"]:  # every registered method, plugins included
        from bench.core import registry

        names = registry.names()
    return Grid(methods=names, datasets=csv(datasets),
                archs=csv(archs) if archs else [None], seeds=seeds(seeds_),
                preset=preset, overrides=over, sweep=sweeps(sweep),
                teachers=teacher_list(teachers, "--teachers"),
                clean_teachers=teacher_list(clean_teachers, "--clean-teachers"),
                cell_fields=cell_fields)


# --- experiment files ------------------------------------------------------------------------

def _toml_kind(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return "bool"
    if param.multiple:
        return "table"
    t = param.type
    if isinstance(t, click.types.IntParamType):
        return "int"
    if isinstance(t, click.types.FloatParamType):
        return "float"
    if isinstance(t, click.Choice):
        return "choice"
    return "text"


def _key(param: click.Parameter) -> str:
    """A parameter's file key: its first long option name without the dashes."""
    longs = [o for o in param.opts if o.startswith("--")] or param.opts
    return longs[0].lstrip("-")


def _as_cli(param: click.Parameter, key: str, value: Any, where: str) -> Any:
    """A file value checked against the option's kind and turned into the form the command
    line would give it (comma lists joined, `set` / `sweep` tables as key=value pairs)."""
    kind = _toml_kind(param)

    def bad(want: str) -> BenchError:
        return BenchError(f"{where}: {key} must be {want}, got {value!r}")

    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return value
    if kind == "choice":
        if not isinstance(value, str) or value not in param.type.choices:
            raise bad("one of " + ", ".join(map(repr, param.type.choices)))
        return value
    if kind == "table":
        if not isinstance(value, dict):
            raise bad("a table, e.g. {t = 4}")
        pairs = []
        for k, v in value.items():
            if key == "sweep":
                if not isinstance(v, list) or not v:
                    raise BenchError(f"{where}: sweep.{k} must be a non-empty list, got {v!r}")
                pairs.append(f"{k}=" + ",".join(_set_text(x) for x in v))
            else:
                pairs.append(f"{k}={_set_text(v)}")
        return tuple(pairs)
    if isinstance(value, list):  # a comma list
        if not value or not all(isinstance(v, str | int) and not isinstance(v, bool)
                                for v in value):
            raise bad("a non-empty list of names or numbers")
        return ",".join(str(v) for v in value)
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    raise bad("text or a list")


def _set_text(value: Any) -> str:
    """A `set` / `sweep` file value as `--set` takes it: a string naming a number, such as
    "8/255" (TOML has no fractions), as written, so it parses as that number; anything else
    as a Python literal."""
    if isinstance(value, str):
        with suppress(ValueError):
            parse_number(value)  # a number's text: kept as written
            return value
    return repr(value)


# Keys of the report script (run_all.py) that `bench run` reads past, so one experiment file
# serves both; run_all.py reads past the keys of `bench run` it has no option for.
REPORT_KEYS = frozenset({"report-dir", "no-train", "names"})


def load(path: str | Path, command: click.Command,
         ignored: frozenset[str] = frozenset()) -> dict[str, Any]:
    """An experiment file as `command`'s default_map (parameter name -> value), each key and
    value checked against the command's options: one clear line for anything wrong. Keys in
    `ignored` (another command's options) are read past."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
        import tomli as tomllib

    path = Path(path)
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise BenchError(f"experiment file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BenchError(f"experiment file {path} is not valid TOML ({exc})") from None
    params = {}
    for p in command.params:
        if isinstance(p, click.Option) and p.name not in ("config", "help"):
            params[_key(p)] = p
            for o in p.opts:  # `dataset` works as well as `datasets`, `aa_samples` as well
                params.setdefault(o.lstrip("-"), p)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        p = params.get(key) or params.get(key.replace("_", "-"))
        if p is None and (key in ignored or key.replace("_", "-") in ignored):
            continue
        if p is None:
            raise unknown(f"key in {where}", key, {_key(q) for q in params.values()})
        if p.name in out:
            raise BenchError(f"{where}: {key} is given twice (as {_key(p)})")
        out[p.name] = _as_cli(p, key, value, where)
    return out


def config_option(ignored: Callable[[], frozenset[str]] = lambda: REPORT_KEYS
                  ) -> Callable[[Callable], Callable]:
    """`--config FILE.toml`: the file's values become the command's defaults (eager, so
    every flag given on the command line still wins); `ignored()` names keys to read past."""

    def apply(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            ctx.default_map = {**(ctx.default_map or {}),
                               **load(value, ctx.command, ignored())}
        return value

    return click.option("--config", type=click.Path(dir_okay=False), default=None,
                        is_eager=True, expose_value=False, callback=apply,
                        help="Experiment file (TOML): keys are these long option names, "
                             "lists where a comma list is taken; flags override it.")
