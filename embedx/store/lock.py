"""Single-writer lock for a store: `<store>.lock`, held with `flock` and naming the writer's PID and host.

HDF5's own file locking already refuses a second writer while the first is alive, but its message
("unable to lock file, errno 11") does not say who holds the store. The lock file names the holder. The
kernel drops a `flock` the moment its process dies, so a lock left by `kill -9` is free for the next run
with no PID guessing (PIDs are reused, and a killed process can linger for a moment). Where `flock` is not
supported (some network file systems) the PID/host check decides whether the lock is stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from embedx.errors import StoreError


def lock_path(store_path: str | Path) -> Path:
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def writer_active(store_path: str | Path) -> bool:
    """Whether a live process holds the store's writer lock now (a lock file left by a killed one is not)."""
    path = lock_path(store_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no flock here: trust the recorded PID
        try:
            pid = json.loads(path.read_text() or "{}").get("pid")
        except (OSError, ValueError):
            return False
        return isinstance(pid, int) and _pid_alive(pid)
    finally:
        os.close(fd)
    return False


class WriterLock:
    """Held while a store is open for writing; `release` removes the file and drops the flock."""

    def __init__(self, store_path: str | Path) -> None:
        self.path = lock_path(store_path)
        self.store_path = Path(store_path)
        self._fd: int | None = None

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _busy(self, holder: dict) -> StoreError:
        return StoreError(
            f"{self.store_path} is being written by another process (PID {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')} since {holder.get('since', '?')}); wait for it to finish. If no such "
            f"process exists, delete {self.path}."
        )

    def acquire(self) -> None:
        for _attempt in range(5):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy(self._holder()) from None
            except OSError:  # flock unsupported here: fall back to the PID check
                holder = self._holder()
                pid = holder.get("pid")
                if (
                    holder
                    and holder.get("pid") != os.getpid()
                    and isinstance(pid, int)
                    and (holder.get("host") != socket.gethostname() or _pid_alive(pid))
                ):
                    os.close(fd)
                    raise self._busy(holder) from None
            # The file may have been unlinked by the previous holder between our open and our flock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
            os.fsync(fd)
            self._fd = fd
            return
        raise StoreError(f"could not take the writer lock {self.path}; delete it if no process is writing")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
