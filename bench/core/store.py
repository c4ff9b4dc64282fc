"""Results store: one small JSON file per result row, written atomically.

Safe under concurrent writers and crashes with the simplest mechanism that works: every row
has its own file named by its key (cell id + checkpoint), written to a unique temp name and
renamed into place, so a row is complete or absent, and a rewrite replaces, never duplicates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.core.files import atomic_write_bytes

ROWS = "rows"
SHOWN = 5  # unreadable row files named in `read`'s line (the rest are counted)


class Store:
    """The rows under `<root>/rows/`, readable into one pandas DataFrame."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.rows_dir = self.root / ROWS

    def path(self, key: str) -> Path:
        return self.rows_dir / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def get(self, key: str) -> dict[str, Any] | None:
        """The row stored under `key`, or None when it is absent or unreadable."""
        try:
            return _parse(self.path(key))
        except (OSError, ValueError, UnicodeDecodeError):
            return None

    def missing(self, keys: list[str]) -> list[str]:
        """The `keys` whose rows are absent or unreadable: a cell whose other rows are stored
        is not complete (`bench table` would leave these out)."""
        return [k for k in keys if self.get(k) is None]

    def put(self, key: str, row: dict[str, Any]) -> None:
        """Store `row` under `key` (idempotent: the same key is one row, the latest one)."""
        atomic_write_bytes(self.path(key), json.dumps({**row, "key": key}, default=str,
                                                      sort_keys=True).encode())

    def read(self) -> tuple[list[dict[str, Any]], list[str]]:
        """(rows, problems): every readable row, and at most one line saying how many files
        could not be read as rows, where, and which (a long list of lines would hide the
        table; the count and the folder are what a user acts on)."""
        rows, bad = [], []
        if not self.rows_dir.is_dir():
            return rows, []
        for p in sorted(self.rows_dir.iterdir()):
            if p.name.startswith(".") or p.is_dir():
                continue
            if p.suffix != ".json":
                bad.append(f"{p.name} (not a result row)")
                continue
            try:
                rows.append(_parse(p))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                bad.append(f"{p.name} (damaged: {exc})")
        return rows, [self._unread(bad)] if bad else []

    def _unread(self, bad: list[str]) -> str:
        """One line for the files `read` left out, naming the first few."""
        shown = ", ".join(bad[:SHOWN]) + (f", and {len(bad) - SHOWN} more" if len(bad) > SHOWN
                                          else "")
        return (f"{len(bad)} file(s) in {self.rows_dir} could not be read as result rows and "
                f"are left out: {shown}")

    def frame(self):
        """All rows as a pandas DataFrame (pandas imported here: training needs torch only)."""
        import pandas as pd

        return pd.DataFrame(self.read()[0])


def _parse(path: Path) -> dict[str, Any]:
    """The row in `path`; ValueError for one that is not a row (no JSON object, no method)."""
    row = json.loads(path.read_text())
    if not isinstance(row, dict) or "method" not in row:
        raise ValueError("no 'method' field")
    return row
