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


def load_file(path: Path) -> Any:
    """`torch.load(weights_only=True)` with every failure turned into one clear line.

    Zip-format files (what torch.save writes) are CRC-checked first: torch itself does not,
    and would load flipped bits as weights. Torch's warnings are silenced: the outcome is
    the value or one BenchError, never extra lines on stderr.
    """
    import torch

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            if bad is not None:
                raise BenchError(f"{path} is not a readable checkpoint (CRC mismatch in {bad})")
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
        raise BenchError(f"{path} is not a readable checkpoint ({type(exc).__name__})") from None


def _refusal(path: Path, why: str) -> BenchError:
    """One line out of torch's long weights-only refusal: the global the file would import
    (never imported: nothing ran), else it is no weights file at all."""
    found = re.search(r"GLOBAL ([\w.]+)", why)
    if found:
        return BenchError(f"refusing to load {path}: it would import {found.group(1)}, and a "
                          f"weights file holds tensors only (nothing was run)")
    op = re.search(r"Unsupported operand \d+", why)
    return BenchError(f"{path} is not a readable checkpoint "
                      f"(UnpicklingError{': ' + op.group(0) if op else ''})")
