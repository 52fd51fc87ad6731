"""One run per work dir: a lock file holding the owner's pid, host and start time.

A second run into a live run's work dir would overwrite its checkpoints and config, so it is refused.
A lock whose process is gone (a run killed with kill -9, a lost machine on the same host) is stale:
it is replaced, with a note. A lock from another host cannot be checked from here; the message says
how to remove it when that run is known to be dead.

``O_CREAT | O_EXCL`` makes taking the lock atomic, also on NFS (v3 and later).
"""

import json
import os
import socket
import sys
import time
from pathlib import Path

from xtune.errors import XtuneError

LOCK_NAME = ".xtune.lock"


class WorkDirBusy(XtuneError):
    """Another live run holds the work dir."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return start is None or _start_time(pid) in (None, start)


class WorkDirLock:
    """The lock of one work dir, taken by :meth:`acquire` and given back by :meth:`release`."""

    def __init__(self, work_dir: str | Path) -> None:
        self.path = Path(work_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a stale lock was replaced.

        Raises:
            WorkDirBusy: A live run (or one on another host) holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _start_time(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        note = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                note = self._check_holder()  # raises unless the holder is gone
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle)
            self.held = True
            return note
        raise WorkDirBusy(f"could not lock {self.path.parent}: another run took it at the same moment.")

    def _check_holder(self) -> str:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = {}, -1, "?"
        where = self.path.parent
        if host == socket.gethostname() and pid > 0 and _alive(pid, holder.get("start")):
            raise WorkDirBusy(
                f"work dir {where} is in use by a running training (pid {pid}, started {holder.get('started')}): "
                "a second run would overwrite its checkpoints. Use another --work-dir, or stop that run first."
            )
        if host != socket.gethostname() and pid > 0:
            raise WorkDirBusy(
                f"work dir {where} is locked by pid {pid} on host {host} (started {holder.get('started')}). "
                f"If that run has ended, delete {self.path} and start again; otherwise use another --work-dir."
            )
        self.path.unlink(missing_ok=True)
        return f"removed a stale lock of pid {pid} ({self.path}): that run is no longer running"

    def release(self) -> None:
        """Give the lock back (only if this object took it)."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
