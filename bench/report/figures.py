"""Named figures for `bench plot KIND`: one registry, one colour per method everywhere.

A figure kind is a function `(out, dest, **options) -> list[Path]`: it reads what it needs
under the results folder `out` (rows, runs, analyses), writes PNG and PDF files under
`dest`, and returns the paths written. Register one with `@figure("name", "what it shows")`.
matplotlib / seaborn / pandas are imported inside the figure functions only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.suggest import unknown

FigureFn = Callable[..., list[Path]]


@dataclass(frozen=True)
class Figure:
    name: str
    doc: str
    fn: FigureFn


FIGURES: dict[str, Figure] = {}


def figure(name: str, doc: str) -> Callable[[FigureFn], FigureFn]:
    """Decorator: make `fn` available as `bench plot NAME`."""

    def deco(fn: FigureFn) -> FigureFn:
        if name in FIGURES:
            raise ValueError(f"figure {name!r} is registered twice")
        FIGURES[name] = Figure(name, doc, fn)
        return fn

    return deco


def get(name: str) -> Figure:
    """The figure kind `name` (its modules imported first), or a one-line error."""
    _load()
    if name not in FIGURES:
        raise unknown("figure", name, FIGURES)
    return FIGURES[name]


def names() -> list[str]:
    _load()
    return sorted(FIGURES)


def _load() -> None:
    """Import the modules that register figures (they import matplotlib lazily)."""
    import importlib

    for mod in FIGURE_MODULES:
        importlib.import_module(mod)


FIGURE_MODULES: list[str] = ["bench.report.plots", "bench.report.analysis_plots"]


def method_colors(methods: list[str]) -> dict[str, Any]:
    """A colour per method, the same in every figure: a colour-blind-safe palette indexed by
    the method's place among all registered methods (plugins after the built-ins). The
    palette's yellow and pink are left out: thin lines of them all but vanish on white."""
    import seaborn as sns

    from bench.core import registry

    known = registry.names()
    order = known + sorted(m for m in set(methods) if m not in known)
    bright = sns.color_palette("colorblind", 10)
    palette = [c for i, c in enumerate(bright) if i not in (6, 8)] + sns.color_palette("dark", 10)
    return {m: palette[order.index(m) % len(palette)] for m in methods}
