"""A lock file per cell: two `bench run` processes never train one cell at once, on one
machine or on a cluster's shared file system.

fcntl/flock locks are unreliable on NFS, so the lock is a file made atomically: a complete
temp file hard-linked to the lock's name (atomic on NFS too; an O_CREAT|O_EXCL create where
the file system has no hard links). It holds the owner's host, pid and a heartbeat time that
a thread refreshes. A lock whose owner is gone (this host, no such pid) or whose heartbeat is
older than `stale_after` (a crashed node) is taken over, and the taker says so. Heartbeats
are compared with this host's clock: hosts' clocks must agree to well within `stale_after`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import BenchError

HEARTBEAT = 60.0  # seconds between heartbeats
STALE = 600.0  # a heartbeat older than this: the owner is taken for dead
POLL = 2.0  # seconds between looks at a lock being waited for
HOST = socket.gethostname()


class Busy(BenchError):
    """The lock is held by a live owner: for a caller that moves on rather than wait."""


@dataclass(frozen=True)
class Owner:
    """Who holds a lock, as its file says."""

    host: str
    pid: int
    token: str  # this holder's, unique: a lock made again by the same pid is another lock
    heartbeat: float  # time.time() of its last heartbeat

    def describe(self) -> str:
        age = time.time() - self.heartbeat
        if not self.pid:
            return f"an unknown owner (an unreadable lock file, {age:.0f}s old)"
        return f"{self.host} pid {self.pid}, heartbeat {age:.0f}s ago"


def _alive(pid: int) -> bool:
    """Whether a process `pid` runs on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _read(path: Path) -> Owner | None:
    """The owner in the lock file at `path`, None if there is none. A file being written
    (the O_EXCL path) or damaged stands for an unknown owner whose heartbeat is its mtime."""
    try:
        text, mtime = path.read_text(), path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        d = json.loads(text)
        return Owner(str(d["host"]), int(d["pid"]), str(d["token"]), float(d["heartbeat"]))
    except (ValueError, KeyError, TypeError):
        return Owner("?", 0, "", mtime)


class Lock:
    """The lock file at `path` for `what` (a cell id, in the lines it logs)."""

    def __init__(self, path: Path, what: str, log: Callable[[str], None] = print, *,
                 stale_after: float = STALE, heartbeat: float = HEARTBEAT,
                 poll: float = POLL) -> None:
        self.path, self.what, self.log = path, what, log
        self.stale_after, self.heartbeat, self.poll = stale_after, heartbeat, poll
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def acquire(self, wait: bool = True) -> None:
        """Take the lock; while a live owner holds it, wait (saying so once) or raise `Busy`."""
        waited = False
        while (owner := self._take()) is not None:
            if not wait:
                raise Busy(f"{self.what} is locked by {owner.describe()}")
            if not waited:
                self.log(f"waiting for {self.what}: locked by {owner.describe()}")
            waited = True
            time.sleep(self.poll)
        self._beating = threading.Thread(target=self._beat_until_stopped, daemon=True,
                                         name=f"lock heartbeat {self.what}")
        self._beating.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lock file, if it is still this holder's."""
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
        owner = _read(self.path)
        if owner is not None and owner.token == self.token:
            self.path.unlink(missing_ok=True)

    # -- taking ------------------------------------------------------------------------
    def _take(self) -> Owner | None:
        """Make the lock file, taking over a stale one; the live owner if another holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while not self._create():
            owner = _read(self.path)
            if owner is None:  # released since: try again
                continue
            why = self._stale(owner)
            if why is None:
                return owner
            self.log(f"warning: taking over the lock of {self.what} from {owner.describe()}: "
                     f"{why}")
            self._break(owner)
        return None

    def _stale(self, owner: Owner) -> str | None:
        """Why `owner` no longer holds the lock (None: it does)."""
        if owner.host == HOST and owner.pid and not _alive(owner.pid):
            return "that process is gone"
        age = time.time() - owner.heartbeat
        if age > self.stale_after:
            return f"no heartbeat for {age:.0f}s (stale after {self.stale_after:.0f}s)"
        return None

    def _content(self) -> str:
        return json.dumps({"host": HOST, "pid": os.getpid(), "token": self.token,
                           "heartbeat": time.time(), "what": self.what})

    def _create(self) -> bool:
        """Make the lock file, complete, unless one exists: a hard link of a temp file."""
        tmp = self.path.with_name(f".{self.path.name}.{self.token}.tmp")
        tmp.write_text(self._content())
        try:
            os.link(tmp, self.path)
        except FileExistsError:  # NFS: a retried link whose first try had made it
            return tmp.stat().st_nlink == 2
        except OSError:  # no hard links on this file system
            return tmp.stat().st_nlink == 2 or self._create_exclusive()
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _create_exclusive(self) -> bool:
        """O_CREAT|O_EXCL: atomic too, but readers may see the file before its content."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self._content())
        return True

    def _break(self, owner: Owner) -> None:
        """Remove the stale lock of `owner`: renamed aside first (one taker wins), and put
        back if what was moved is a fresh lock made since `owner` was read."""
        aside = self.path.with_name(f".{self.path.name}.{self.token}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another taker was first
            return
        moved = _read(aside)
        if moved is not None and moved.token != owner.token:
            with contextlib.suppress(OSError):  # not over a lock made meanwhile
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    # -- heartbeat ---------------------------------------------------------------------
    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if not self._beat():
                return

    def _beat(self) -> bool:
        """Refresh the heartbeat; False (and one line) when another process took the lock."""
        owner = _read(self.path)
        if owner is None or owner.token != self.token:
            who = owner.describe() if owner is not None else "nobody (its file is gone)"
            self.log(f"warning: the lock of {self.what} was taken over by {who}: another "
                     "process may be training it too")
            return False
        tmp = self.path.with_name(f".{self.path.name}.{self.token}.beat")
        tmp.write_text(self._content())
        os.replace(tmp, self.path)
        return True


@contextlib.contextmanager
def held(path: Path, what: str, log: Callable[[str], None] = print,
         wait: bool = True) -> Iterator[None]:
    """The lock at `path` held for the block, released on every exit (errors, Ctrl-C)."""
    lock = Lock(path, what, log)
    lock.acquire(wait)
    try:
        yield
    finally:
        lock.release()
