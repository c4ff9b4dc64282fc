"""Method registry, timm-style: `@register` in-tree, plus the `bench.methods` entry points.

A plugin package declares, in its own pyproject:
    [project.entry-points."bench.methods"]
    mymethod = "my_package.my_module:MyDistiller"

A name belongs to one class: a second `@register` of a name is an error naming both classes
(as torchvision's model registry does), and a plugin that wants a name already taken (by a
built-in method or an earlier plugin) is refused, the first owner kept, with one line in
`bench list` (`broken()`).
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from bench import BenchError
from bench.core.distiller import Distiller
from bench.core.suggest import unknown

_METHODS: dict[str, type[Distiller]] = {}
_BROKEN: dict[str, str] = {}  # plugin name -> why it was not loaded ("failed to load: ...")
_loaded = False


def register(name: str):
    """Class decorator: make a Distiller available under `name`."""

    def deco(cls: type[Distiller]) -> type[Distiller]:
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise TypeError(f"{cls!r} is not a Distiller subclass")
        old = _METHODS.get(name)
        if old is not None and _source(old) != _source(cls):
            raise BenchError(f"method name {name!r} is taken twice: by {_source(old)} and by "
                             f"{_source(cls)}")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def _source(cls: type) -> str:
    """Where a class comes from, as a clash message names it: module.QualName."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _load() -> None:
    """Import the in-tree methods package and every `bench.methods` entry point, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from bench import methods  # the one import up the layers: built-ins load on first use

    for mod in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"bench.methods.{mod.name}")
    for ep in entry_points(group="bench.methods"):
        if ep.name in _METHODS:  # refused before loading: the plugin's code never runs
            taken = _source(_METHODS[ep.name])
            if taken != ep.value.replace(":", "."):
                _BROKEN[ep.name] = (f"refused: {ep.value.replace(':', '.')} wants the name of "
                                    f"{taken}, which is kept")
            continue
        try:
            register(ep.name)(ep.load())
        except Exception as exc:  # a broken plugin must not take the others down
            _BROKEN[ep.name] = f"failed to load: {type(exc).__name__}: {exc}".splitlines()[0]


def names() -> list[str]:
    """Every registered method name, sorted."""
    _load()
    return sorted(_METHODS)


def broken() -> dict[str, str]:
    """Plugins not loaded, with the reason: "failed to load: ..." or "refused: ..."."""
    _load()
    return dict(_BROKEN)


def get(name: str) -> type[Distiller]:
    """The Distiller class registered under `name`."""
    _load()
    if name not in _METHODS:
        if name in _BROKEN:
            raise BenchError(f"method plugin {name!r} {_BROKEN[name]}")
        raise unknown("method", name, _METHODS)
    return _METHODS[name]


def create(name: str, *, student: nn.Module, teacher: nn.Module | None = None,
           peer: nn.Module | None = None, clean_teacher: nn.Module | None = None,
           dataset: str = "cifar10", preset: str = "faithful", arch: str | None = None,
           budget: dict[str, Any] | None = None, **overrides: Any) -> Distiller:
    """A ready Distiller with its preset for `dataset` resolved and `overrides` applied."""
    cls = get(name)
    params = cls.resolve(preset, dataset, arch=arch, budget=budget, **overrides)
    if not cls.needs_teacher:
        teacher = None
    if not cls.needs_clean_teacher:
        clean_teacher = None
    return cls(student=student, teacher=teacher, peer=peer, clean_teacher=clean_teacher,
               params=params)
