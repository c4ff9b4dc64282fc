"""Closest-name suggestions for user-facing errors."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from bench import BenchError


def unknown(kind: str, name: str, valid: Iterable[str]) -> BenchError:
    """An error for an unknown `kind` name, suggesting the closest valid one."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return BenchError(f"unknown {kind} {name!r}{hint} "
                      + (f"(valid: {', '.join(valid)})" if valid else "(there are none)"))
