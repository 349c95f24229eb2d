"""One owner per output: an exclusive lock that dies with its process.

The lock is a POSIX record lock (``fcntl.lockf``) on ``.<output name>.lock`` beside the output.
The kernel drops it when the owning process ends in any way (``kill -9`` included), and NFS
(v3 with lockd, v4) carries it between hosts.  POSIX locks belong to a process, not a thread,
so locks held in this process are also kept in a table: two runs of one process (napari, the
service, a batch) exclude each other too.  The lock file holds who owns the output (pid, host,
run id, start time, command) for the message a refused run prints.

When chunks run on a Dask cluster the lock stays with the process that owns the run (the one
that called ``run_slide``); workers only write chunks of it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Self

from .errors import OutputError, OutputInUseError
from .provenance import now

_held: dict[str, OutputLock] = {}
_held_lock = threading.Lock()


def lock_path(output: Path) -> Path:
    """Where the lock of ``output`` lives: a hidden file beside it (so replacing the output
    never removes the lock)."""
    return output.parent / f".{output.name}.lock"


class OutputLock:
    """Exclusive ownership of one output path for one run (a context manager)."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = lock_path(output)
        self.run_id = uuid.uuid4().hex
        self._fd: int | None = None
        self._key = ""
        self._started = ""

    @property
    def owner(self) -> dict[str, Any]:
        """What the lock file says about this owner."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "run_id": self.run_id,
                "started": self._started, "command": " ".join(sys.argv)[:500]}

    def acquire(self) -> Self:
        """Take the lock, or raise :class:`OutputInUseError` naming the owner."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.output}: cannot create output: {exc}") from exc
        key = str(self.path.parent.resolve() / self.path.name)
        with _held_lock:
            holder = _held.get(key)
            if holder is not None:
                raise OutputInUseError(f"{self.output}: in use by another run in this process "
                                       f"({_describe(holder.owner)}); wait for it to finish")
            self._fd = self._lock_file()
            self._key = key
            _held[key] = self
        return self

    def _lock_file(self) -> int:
        self._started = now()
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"{self.output}: cannot create output (its lock file "
                                  f"{self.path.name}): {exc}") from exc
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = _read_owner(fd)
                os.close(fd)
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise OutputError(f"{self.output}: cannot lock the output: {exc}") from exc
                raise OutputInUseError(
                    f"{self.output}: in use by another run ({_describe(owner)}); wait for it to "
                    "finish, or stop it (its output can then be resumed)") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the previous owner removed the file after we opened it: retry
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(self.owner).encode())
        except OSError as exc:
            os.close(fd)
            raise OutputError(f"{self.output}: cannot write its lock file: {exc}") from exc
        return fd

    def still_owned(self) -> bool:
        """Whether this run still holds the lock on the file that is now at the lock path."""
        return self._fd is not None and _same_file(self._fd, self.path)

    def check(self) -> None:
        """Raise :class:`OutputError` if this run no longer owns its output."""
        if not self.still_owned():
            raise OutputError(f"{self.output}: this run no longer owns the output (its lock file "
                              f"{self.path.name} was removed or replaced); not marking it complete")

    def release(self) -> None:
        """Give the output up (remove the lock file, then drop the lock)."""
        with _held_lock:
            if self._fd is None:
                return
            if self.still_owned():
                try:
                    self.path.unlink()
                except OSError:
                    pass  # a read-only folder: the lock still dies with the descriptor
            os.close(self._fd)
            self._fd = None
            if _held.get(self._key) is self:
                del _held[self._key]

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "owner unknown"
    parts = [f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"]
    if owner.get("started"):
        parts.append(f"since {owner['started']}")
    if owner.get("command"):
        parts.append(f"command: {owner['command']}")
    return ", ".join(parts)
