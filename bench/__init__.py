"""bench: train, attack and compare adversarial distillation methods side by side."""

__version__ = "0.1.0"


class BenchError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""
