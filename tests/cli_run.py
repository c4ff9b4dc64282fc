"""`bench ARGV` run in the test's own process (fast, and monkeypatches apply)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from bench.cli import main

ROOT = Path(__file__).resolve().parent.parent


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `bench ARGV`, as the shell would see them."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def run_all_module() -> ModuleType:
    """The repository's run_all.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
