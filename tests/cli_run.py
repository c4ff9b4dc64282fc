"""`bench ARGV` run in the test's own process (fast, and monkeypatches apply)."""

from __future__ import annotations

from bench.cli import main


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `bench ARGV`, as the shell would see them."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err
