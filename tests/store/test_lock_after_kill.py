"""The writer lock dies with the process that took it, not with the last process that inherited its files.

`kill -9` of an encode used to leave its forked DataLoader workers holding the lock for seconds, so the
re-run the README prescribes was refused in the name of a dead PID (review item 5).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from embedx.errors import StoreError
from embedx.store.lock import WriterLock, lock_path, writer_active

# The child takes the lock, forks a grandchild that inherits every descriptor (as a DataLoader worker
# does) and sleeps, then reports both PIDs and waits to be killed.
HOLDER = """
import os, sys, time
from embedx.store.lock import WriterLock
lock = WriterLock(sys.argv[1])
lock.acquire()
grandchild = os.fork()
if grandchild == 0:
    time.sleep(60)
    os._exit(0)
print(os.getpid(), grandchild, flush=True)
time.sleep(60)
"""

# Takes the lock and says so; used to check that a lock is (or is not) free from another process.
TRY_LOCK = """
import sys
from embedx.errors import StoreError
from embedx.store.lock import WriterLock
try:
    WriterLock(sys.argv[1]).acquire()
except StoreError as err:
    print("refused:", err)
else:
    print("acquired")
"""


def _python(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_lock_is_free_at_once_after_kill_even_while_a_forked_child_lives(tmp_path: Path) -> None:
    store = tmp_path / "store.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdout=subprocess.PIPE, text=True)
    grandchild = None
    try:
        assert holder.stdout is not None
        child, grandchild = (int(x) for x in holder.stdout.readline().split())
        assert writer_active(store)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert _alive(grandchild), "the grandchild must still hold the inherited descriptors"
        assert not writer_active(store)
        lock = WriterLock(store)
        lock.acquire()  # immediately: no waiting for the orphan to exit
        try:
            assert json.loads(lock_path(store).read_text())["pid"] == os.getpid() != child
        finally:
            lock.release()
    finally:
        holder.kill()
        if grandchild is not None and _alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_a_dead_recorded_holder_is_reported_as_a_killed_run(tmp_path: Path) -> None:
    """The lock is busy but the PID in the lock file is dead on this host: say a run was killed."""
    store = tmp_path / "store.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdout=subprocess.PIPE, text=True)
    grandchild = None
    try:
        assert holder.stdout is not None
        _child, grandchild = (int(x) for x in holder.stdout.readline().split())
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        record = {"pid": gone.pid, "host": socket.gethostname(), "since": "2024-01-01T00:00:00+00:00"}
        lock_path(store).write_text(json.dumps(record))  # this process holds no lock: writing is safe
        with pytest.raises(StoreError) as info:
            WriterLock(store).acquire()
        message = str(info.value)
        assert "previous run was killed" in message and str(gone.pid) in message
        assert "being written by another process" not in message
    finally:
        holder.kill()
        holder.wait(timeout=30)
        if grandchild is not None and _alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_the_holder_keeps_its_lock_through_its_own_checks(tmp_path: Path) -> None:
    """A POSIX lock is dropped when its process closes any descriptor of the file: the holder's own
    `writer_active` and a refused second writer in the same process must not open (and close) it."""
    store = tmp_path / "store.h5"
    lock = WriterLock(store)
    lock.acquire()
    try:
        assert writer_active(store)
        with pytest.raises(StoreError, match=r"being written by another process \(PID \d+"):
            WriterLock(store).acquire()
        result = _python(TRY_LOCK, str(store))
        assert result.stdout.startswith("refused:"), result.stdout + result.stderr
        assert str(os.getpid()) in result.stdout
    finally:
        lock.release()
    assert not lock_path(store).exists()
    assert _python(TRY_LOCK, str(store)).stdout.strip() == "acquired"


def test_a_forked_child_releasing_its_copy_leaves_the_parent_locked(tmp_path: Path) -> None:
    """A worker that inherited the lock object and closes it must neither unlink the file nor unlock."""
    store = tmp_path / "store.h5"
    lock = WriterLock(store)
    lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            lock.release()
            os._exit(0)
        os.waitpid(pid, 0)
        assert lock_path(store).exists()
        assert _python(TRY_LOCK, str(store)).stdout.startswith("refused:")
    finally:
        lock.release()
