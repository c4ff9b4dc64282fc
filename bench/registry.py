"""Method registry, timm-style: `@register` in-tree, plus the `bench.methods` entry points.

A plugin package declares, in its own pyproject:
    [project.entry-points."bench.methods"]
    mymethod = "my_package.my_module:MyDistiller"
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from bench import BenchError
from bench.distiller import Distiller
from bench.suggest import unknown

_METHODS: dict[str, type[Distiller]] = {}
_BROKEN: dict[str, str] = {}  # plugin name -> why it failed to load
_loaded = False


def register(name: str):
    """Class decorator: make a Distiller available under `name`."""

    def deco(cls: type[Distiller]) -> type[Distiller]:
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise TypeError(f"{cls!r} is not a Distiller subclass")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def _load() -> None:
    """Import the in-tree methods package and every `bench.methods` entry point, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import methods

    for mod in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"methods.{mod.name}")
    for ep in entry_points(group="bench.methods"):
        try:
            cls = ep.load()
            if ep.name not in _METHODS or _METHODS[ep.name] is not cls:
                register(ep.name)(cls)
        except Exception as exc:  # a broken plugin must not take the others down
            _BROKEN[ep.name] = f"{type(exc).__name__}: {exc}".splitlines()[0]


def names() -> list[str]:
    """Every registered method name, sorted."""
    _load()
    return sorted(_METHODS)


def broken() -> dict[str, str]:
    """Plugins whose entry point failed to load, with the reason."""
    _load()
    return dict(_BROKEN)


def get(name: str) -> type[Distiller]:
    """The Distiller class registered under `name`."""
    _load()
    if name not in _METHODS:
        if name in _BROKEN:
            raise BenchError(f"method plugin {name!r} failed to load: {_BROKEN[name]}")
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
