"""Files bench writes and reads back: atomic (a reader sees the old file or the whole new
one) and, for tensors, loadable with `torch.load(weights_only=True)` only (never runs code).
torch is imported where tensors are handled: the results store writes JSON without it.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from bench import BenchError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def serialized(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_file(path: Path, obj: Any) -> None:
    """Atomically write `obj` as torch.save does (readers never see half a file)."""
    atomic_write_bytes(path, serialized(obj))


class Unreadable(BenchError):
    """A file that exists but cannot be read back (cut short, bit flips, not torch's format):
    `reason` says why in a few words, for callers that say what they do about it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is not a readable checkpoint ({reason})")
        self.path, self.reason = path, reason


def load_file(path: Path) -> Any:
    """`torch.load(weights_only=True)` with every failure turned into one clear line.

    Zip-format files (what torch.save writes) are CRC-checked first: torch itself does not,
    and would load flipped bits as weights. Torch's warnings are silenced: the outcome is
    the value or one BenchError (`Unreadable` for a damaged file), never extra lines on
    stderr.
    """
    import torch

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            if bad is not None:
                raise Unreadable(path, f"CRC mismatch in {bad}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BenchError(f"checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as exc:
        raise _refusal(path, str(exc)) from None
    except BenchError:
        raise
    except Exception as exc:  # arbitrary bytes make the unpickler fail in arbitrary ways
        raise Unreadable(path, _damage(path, exc)) from None


def _damage(path: Path, exc: Exception) -> str:
    """What is wrong with a file torch could not read: empty, cut short, or torch's error."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:  # a folder, say
        return type(exc).__name__
    if not head:
        return "empty file"
    if head == b"PK\3\4":  # a zip archive without its directory, which is written last
        return "truncated"
    return type(exc).__name__


def _refusal(path: Path, why: str) -> BenchError:
    """One line out of torch's long weights-only refusal: the global the file would import
    (never imported: nothing ran), else it is no weights file at all."""
    found = re.search(r"GLOBAL ([\w.]+)", why)
    if found:
        return BenchError(f"refusing to load {path}: it would import {found.group(1)}, and a "
                          f"weights file holds tensors only (nothing was run)")
    op = re.search(r"Unsupported operand \d+", why)
    return Unreadable(path, f"UnpicklingError{': ' + op.group(0) if op else ''}")
