"""One writer per run folder: `sjc generate`, `--resume`, the page and the batch take the folder's lock before
they touch it, and a second writer is refused with a message that names the first.

The lock is `<run>/.lock`, held with an exclusive `flock` for as long as the writer runs and holding its pid,
host and start time for the messages. The kernel drops a `flock` when its process dies, however it dies, so a lock
left by a dead process is simply taken by the next writer (which says so); threads of one process (the page's
runs) are kept apart by a registry of the folders this process holds. Where `fcntl` is missing (Windows) only
that registry guards the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ...core.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"
_held: set[str] = set()  # the run folders this process writes now (resolved paths)
_guard = threading.Lock()


class RunBusy(UserError, RuntimeError):
    """The run folder is being written by another run (another process, or another thread of this one)."""


@dataclass(frozen=True)
class Holder:
    """Who writes a run folder: process id, host name, and when it took the folder (seconds since the epoch)."""

    pid: int
    host: str
    since: float

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        here = "this machine" if self.host == socket.gethostname() else f"host {self.host}"
        return f"process {self.pid} on {here}, since {started}"


def _read(path: Path) -> Holder | None:
    try:
        data = json.loads(path.read_text() or "null")
        return Holder(int(data["pid"]), str(data["host"]), float(data["since"])) if data else None
    except (OSError, ValueError, TypeError, KeyError):
        return None


class RunLock:
    """The lock of one run folder; `with RunLock(run_dir):` writes in it, or raises RunBusy. `took_over` is the
    holder recorded by a writer that died without releasing it (None when the folder was free)."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.took_over: Holder | None = None
        self._fd: int | None = None
        self._key = ""

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._key = str(self.run_dir.resolve())
        with _guard:
            if self._key in _held:
                raise self._busy(_read(self.path))
            fd = self._flock() if fcntl is not None else None
            self.took_over = _read(self.path)  # left by a writer that died (a live one holds the flock)
            mine = Holder(os.getpid(), socket.gethostname(), time.time())
            record = json.dumps({"pid": mine.pid, "host": mine.host, "since": mine.since})
            if fd is None:
                self.path.write_text(record)
            else:
                os.ftruncate(fd, 0)
                os.pwrite(fd, record.encode(), 0)
            self._fd = fd
            _held.add(self._key)
        return self

    def _flock(self) -> int:
        """An open descriptor of the lock file, holding its exclusive flock."""
        tries = 0
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                tries += 1
                if tries >= 5:  # not `holder()` glancing at it for a moment: a writer
                    raise self._busy(_read(self.path)) from None
                time.sleep(0.02)
                continue
            except OSError as err:  # a file system without locks (some network mounts): this process guards alone
                print(f"warning: {self.run_dir} cannot be locked ({err.strerror}); keep to one writer", file=sys.stderr)
                return fd
            try:  # the file may have been released (unlinked) between our open and our flock: then again
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _busy(self, holder: Holder | None) -> RunBusy:
        who = holder.describe() if holder is not None else "another run"
        return RunBusy(
            f"{self.run_dir} is being written by {who}; wait for that run to end or stop it, "
            "or write this one to another --out"
        )

    def release(self) -> None:
        with _guard:
            if self._key not in _held:
                return
            with contextlib.suppress(OSError):
                self.path.unlink()  # still holding the flock: no other writer can be between
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            _held.discard(self._key)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(run_dir: Path | str) -> Holder | None:
    """Who writes `run_dir` now (a run of this process or of another), or None when nobody does."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    with _guard:
        if str(run_dir.resolve()) in _held:
            return _read(path) or Holder(os.getpid(), socket.gethostname(), time.time())
    if fcntl is None or not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read(path) or Holder(0, "", 0.0)
    finally:
        os.close(fd)  # closing drops the shared flock we may have taken
    return None
