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
            row = json.loads(self.path(key).read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return row if isinstance(row, dict) else None

    def put(self, key: str, row: dict[str, Any]) -> None:
        """Store `row` under `key` (idempotent: the same key is one row, the latest one)."""
        atomic_write_bytes(self.path(key), json.dumps({**row, "key": key}, default=str,
                                                      sort_keys=True).encode())

    def read(self) -> tuple[list[dict[str, Any]], list[str]]:
        """(rows, problems): every readable row, and one line for each damaged/foreign file."""
        rows, problems = [], []
        if not self.rows_dir.is_dir():
            return rows, problems
        for p in sorted(self.rows_dir.iterdir()):
            if p.name.startswith(".") or p.is_dir():
                continue
            if p.suffix != ".json":
                problems.append(f"{p.name}: not a result row (ignored)")
                continue
            try:
                row = json.loads(p.read_text())
                if not isinstance(row, dict) or "method" not in row:
                    raise ValueError("no 'method' field")
                rows.append(row)
            except (ValueError, UnicodeDecodeError) as exc:
                problems.append(f"{p.name}: damaged row ({exc}) (ignored)")
        return rows, problems

    def frame(self):
        """All rows as a pandas DataFrame (pandas imported here: training needs torch only)."""
        import pandas as pd

        return pd.DataFrame(self.read()[0])
