"""Single-writer lock for a store: `<store>.lock`, a POSIX record lock naming the writer's PID and host.

HDF5's own file locking already refuses a second writer while the first is alive, but its message
("unable to lock file, errno 11") does not say who holds the store. The lock file names the holder.

Why a POSIX (`fcntl`/`lockf`) lock and not `flock`: a `flock` belongs to the open file description, which
every forked child shares. DataLoader workers are forked while the lock is held, so after `kill -9` of an
encode its orphaned workers kept the store locked for seconds, and an immediate re-run was refused in the
name of a dead PID. A POSIX lock belongs to the process that took it: forked children do not hold it, and
the kernel drops it the moment that process dies, with no PID guessing (PIDs are reused).

The price of POSIX locks, handled here:
- closing *any* descriptor of the lock file in the holding process drops its lock. So the lock file is
  opened only in this module, and never re-opened by the process that holds it (`_HELD` answers for it,
  and the holder's record is read through the held descriptor);
- a process never conflicts with itself, so a second writer in the same process is refused through
  `_HELD`, as `flock` did.
Where locking is not supported at all (some network file systems) the PID/host check decides.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from embedx.errors import StoreError

# Lock files (st_dev, st_ino) this process holds -> (fd, pid). The pid tells a forked child, which inherits
# this table but holds no POSIX lock, that an entry is not its own.
_HELD: dict[tuple[int, int], tuple[int, int]] = {}
_MUTEX = threading.Lock()


def _new_mutex_in_child() -> None:
    """A child forked while another thread held `_MUTEX` would otherwise deadlock on its first lock call."""
    global _MUTEX
    _MUTEX = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_mutex_in_child)

_BUSY = (errno.EAGAIN, errno.EACCES)  # lockf's "held by another process"
_BUSY_RETRIES = 5  # a reader's short probe (writer_active) can collide with an acquire: look again
_BUSY_PAUSE_S = 0.05


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


def _key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _held_here(key: tuple[int, int] | None) -> int | None:
    """The descriptor through which this very process holds the lock file `key`, if it does."""
    entry = _HELD.get(key) if key is not None else None
    return entry[0] if entry is not None and entry[1] == os.getpid() else None


def _read_record(fd: int) -> dict:
    """The holder's record, read through an open descriptor (never a new open: see the module docstring)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _recorded_holder_alive(record: dict) -> bool:
    pid = record.get("pid")
    if not isinstance(pid, int):
        return False
    return record.get("host") != socket.gethostname() or _pid_alive(pid)


def writer_active(store_path: str | Path) -> bool:
    """Whether a live process holds the store's writer lock now (a lock file left by a killed one is not)."""
    path = lock_path(store_path)
    with _MUTEX:
        key = _key(path)
        if key is None:
            return False
        if _held_here(key) is not None:  # ours: probing would open and close the file, dropping the lock
            return True
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in _BUSY:
                return True
            return _recorded_holder_alive(_read_record(fd))  # no locking here: trust the recorded PID
        finally:
            os.close(fd)  # also drops the probe's shared lock
    return False


class WriterLock:
    """Held while a store is open for writing; `release` removes the file and drops the lock."""

    def __init__(self, store_path: str | Path) -> None:
        self.path = lock_path(store_path)
        self.store_path = Path(store_path)
        self._fd: int | None = None
        self._pid: int | None = None

    def _busy(self, holder: dict) -> StoreError:
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        since = holder.get("since", "?")
        if isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid):
            # The kernel freed the killed run's own lock; whoever holds it now is a process it left behind
            # or a run that has just taken the lock and not yet written its record.
            return StoreError(
                f"{self.store_path} is locked, but the run recorded in {self.path} (PID {pid} on this host, "
                f"since {since}) no longer exists: a previous run was killed, and a process it left behind "
                f"or a run starting right now holds the lock. Retry in a few seconds; if it persists, "
                f"`fuser -v {self.path}` names the holder."
            )
        return StoreError(
            f"{self.store_path} is being written by another process (PID {pid} on host {host} since "
            f"{since}); wait for it to finish. If no such process exists, delete {self.path}."
        )

    def acquire(self) -> None:
        with _MUTEX:
            for _attempt in range(_BUSY_RETRIES):
                held = _held_here(_key(self.path))
                if held is not None:  # a second writer in this process (a POSIX lock never conflicts)
                    raise self._busy(_read_record(held))
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)  # close-on-exec (PEP 446)
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as err:
                    if err.errno in _BUSY:
                        holder = _read_record(fd)
                        os.close(fd)
                        if _attempt + 1 < _BUSY_RETRIES and not _recorded_holder_alive(holder):
                            time.sleep(_BUSY_PAUSE_S)  # a reader's probe, or a holder not yet recorded
                            continue
                        raise self._busy(holder) from None
                    holder = _read_record(fd)  # no locking here: fall back to the PID check
                    if holder and holder.get("pid") != os.getpid() and _recorded_holder_alive(holder):
                        os.close(fd)
                        raise self._busy(holder) from None
                # The file may have been unlinked by the previous holder between our open and our lock.
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
                os.pwrite(fd, json.dumps(info).encode(), 0)
                os.fsync(fd)
                st = os.fstat(fd)
                _HELD[(st.st_dev, st.st_ino)] = (fd, os.getpid())
                self._fd, self._pid = fd, os.getpid()
                return
        raise StoreError(f"could not take the writer lock {self.path}; delete it if no process is writing")

    def release(self) -> None:
        """Remove the lock file and drop the lock; in a forked child (which never held it) only close."""
        if self._fd is None:
            return
        with _MUTEX:
            with contextlib.suppress(OSError):
                st = os.fstat(self._fd)
                if _HELD.get((st.st_dev, st.st_ino), (None, None))[1] == os.getpid():
                    del _HELD[(st.st_dev, st.st_ino)]
            if self._pid == os.getpid():
                with contextlib.suppress(OSError):
                    self.path.unlink()
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
