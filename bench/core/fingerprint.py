"""A fingerprint of a method's code, so that a stored cell trained by other code is never
reused silently (its id hashes the configuration, not the code that ran it).

The fingerprint hashes every module of the method's own package that its class depends
on: the modules of its class and base classes, and those whose functions or classes its
modules use (transitively: ABSLD's file uses RSLAD's loss, so RSLAD's code counts for
ABSLD). What is hashed is each module's syntax tree without docstrings and display
names: a comment, a docstring, a display name or a reformatting does not make stored cells
stale. The harness (bench.core, bench.eval, ...) is not part of it: the bench version and
git commit of each row record it. A plugin's fingerprint also names its distribution and
version.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import sys
from importlib.metadata import packages_distributions, version
from types import ModuleType
from typing import Any

from bench.core.distiller import Distiller


def _package(name: str) -> str:
    """A module's own package: `bench.methods` for the built-ins, else its top level."""
    return "bench.methods" if name.startswith("bench.methods") else name.split(".")[0]


def _used_modules(module: ModuleType, package: str) -> set[str]:
    """Modules of `package` whose functions, classes or submodules `module` refers to."""
    out = set()
    for value in vars(module).values():
        name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        if isinstance(name, str) and _package(name) == package and name in sys.modules:
            out.add(name)
    return out


def modules_of(cls: type[Distiller]) -> list[str]:
    """The modules of `cls`'s package that its code depends on, sorted."""
    package = _package(cls.__module__)
    todo = {c.__module__ for c in cls.__mro__ if _package(c.__module__) == package}
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo |= _used_modules(sys.modules[name], package) - seen
    return sorted(seen)


def _distribution(package: str) -> str | None:
    """`name version` of the installed distribution that ships a plugin's package."""
    if package == "bench.methods":
        return None
    names = packages_distributions().get(package, [])
    return f"{names[0]} {version(names[0])}" if names else None


COSMETIC = frozenset({"display_name"})  # class attributes that change no number


def _cosmetic(node: ast.stmt) -> bool:
    """A docstring, or an assignment of a COSMETIC class attribute."""
    if isinstance(node, ast.Expr):
        return isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    targets = node.targets if isinstance(node, ast.Assign) else (
        [node.target] if isinstance(node, ast.AnnAssign) else [])
    return bool(targets) and all(isinstance(t, ast.Name) and t.id in COSMETIC for t in targets)


def _code(module: ModuleType) -> str:
    """The module's syntax tree without comments, docstrings and display names."""
    tree = ast.parse(inspect.getsource(module))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body:
            kept = [b for i, b in enumerate(body) if not (
                _cosmetic(b) and (i == 0 or isinstance(node, ast.ClassDef)))]
            node.body = kept or [ast.Pass()]
    return ast.dump(tree)


@functools.cache
def fingerprint(cls: type[Distiller]) -> dict[str, Any]:
    """{"sha256": 16 hex digits over the modules' sources, "modules": [...],
    "distribution": "name version" for a plugin, else None}."""
    digest = hashlib.sha256()
    modules = modules_of(cls)
    for name in modules:
        digest.update(f"{name}\0{_code(sys.modules[name])}\0".encode())
    return {"sha256": digest.hexdigest()[:16], "modules": modules,
            "distribution": _distribution(_package(cls.__module__))}
