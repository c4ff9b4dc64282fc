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


FIGURE_MODULES: list[str] = ["bench.report.plots", "bench.report.analysis_plots",
                              "bench.report.teachers"]


# The built-in methods in a fixed order: each keeps its colour whatever is installed beside it
# (a test checks this list against the methods bench ships).
BUILTIN_ORDER = ("absld", "adaad", "ard", "bmtard", "ciard", "iad", "igdm", "mtard", "peeraid",
                 "pgdat", "rslad", "saad", "standard", "trades",
                 "akd2", "iad2", "cat", "ibd", "dgad",
                 "fair_ard", "fair_iad", "fair_rslad", "fair_mtard")
# (later methods go at the end, so that the earlier ones keep their colours)


def _palette() -> list[Any]:
    """The colour-blind palette without its yellow and pink (thin lines of them all but vanish
    on white), then seaborn's dark one, then its deep one without those two: the built-ins'
    colours in `BUILTIN_ORDER` (more than the first two hold)."""
    import seaborn as sns

    bright, deep = sns.color_palette("colorblind", 10), sns.color_palette("deep", 10)
    return ([c for i, c in enumerate(bright) if i not in (6, 8)] + sns.color_palette("dark", 10)
            + [c for i, c in enumerate(deep) if i not in (6, 8)])


def plugin_palette() -> list[Any]:
    """The colours plugins draw from: what the built-ins leave of the palette, then twelve
    hues of even lightness (all at least 5:1 in contrast with white)."""
    import seaborn as sns

    return _palette()[len(BUILTIN_ORDER):] + list(sns.husl_palette(12, l=0.45, s=0.9, h=0.05))


def _slot(name: str, size: int) -> int:
    import hashlib

    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % size


def method_colors(methods: list[str]) -> dict[str, Any]:
    """A colour per method, the same in every figure: a built-in's is fixed by its place in
    `BUILTIN_ORDER`; any other method's (a plugin's, or one whose rows outlived its plugin) is
    a function of its name alone (a hash into `plugin_palette`), so installing a plugin never
    changes another method's colour. Only when two such names hash to the same colour does
    the later name, alphabetically, take the next free one."""
    from bench.core import registry

    palette, extra = _palette(), plugin_palette()
    others = sorted((set(registry.names()) | set(methods)) - set(BUILTIN_ORDER))
    taken: dict[str, int] = {}
    for m in others:
        k = _slot(m, len(extra))
        for _ in range(len(extra)):  # more plugins than colours: they share, in turn
            if k not in taken.values():
                break
            k = (k + 1) % len(extra)
        taken[m] = k
    return {m: palette[BUILTIN_ORDER.index(m)] if m in BUILTIN_ORDER else extra[taken[m]]
            for m in methods}
