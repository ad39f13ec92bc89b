"""Unreadable image files, remembered so that each is read once and warned about once.

Training draws every image once per epoch. Before this module, a corrupt file was decoded again and warned
about again each epoch (the review counted 78 multi-line warnings for 3 bad files in a 63-step run), and the
same file was warned about again by each later dataset of the process (the DAE's latent statistics,
encode's trial read and then its run). Two memories fix that:

* `remember` / `known_reason`: a process-wide record of failed paths with their reason. A path is trusted
  only while its size and modification time are unchanged, so a file repaired during a long session is read
  again. DataLoader workers are forked processes: each starts with what its parent knew at the fork and
  then keeps its own record, so a bad file is read at most once per worker.
* `WarnedFlags`: one flag per dataset position in shared memory, set by whichever process warns first, so
  the other workers of the same loader skip the warning (they still read the file once, to get its reason).
  Where shared memory is not available the flags are private and the warning comes once per worker.
"""

from __future__ import annotations

import contextlib
import os

import torch

_Signature = tuple[int, int] | None
_FAILED: dict[str, tuple[_Signature, str]] = {}


def _signature(path: str) -> _Signature:
    """(size, mtime) of the file, or None when it cannot be stat'ed (missing: the failure still holds)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (int(stat.st_size), int(stat.st_mtime_ns))


def known_reason(path: str) -> str | None:
    """Why `path` could not be read, if this process already tried and the file has not changed since."""
    entry = _FAILED.get(path)
    if entry is None:
        return None
    signature, reason = entry
    if _signature(path) != signature:
        del _FAILED[path]  # changed on disk (repaired, replaced): read it again
        return None
    return reason


def remember(path: str, reason: str) -> None:
    """Record that reading `path` failed with `reason` (an `ImageReadError.reason`)."""
    _FAILED[path] = (_signature(path), reason)


def forget_all() -> None:
    """Drop the record (tests; a caller that knows files were repaired in bulk)."""
    _FAILED.clear()


class WarnedFlags:
    """Whether a dataset position was already warned about, visible to every DataLoader worker.

    The tensor is moved to shared memory before any worker starts, so a flag set in one worker is seen by the
    others and by the parent (fork and spawn alike: torch shares the storage instead of copying it).
    """

    def __init__(self, n: int) -> None:
        flags = torch.zeros(max(int(n), 1), dtype=torch.bool)
        # no shared memory (a locked-down container): private flags, a warning once per worker
        with contextlib.suppress(RuntimeError, OSError):
            flags.share_memory_()
        self._flags = flags

    def first(self, index: int) -> bool:
        """True the first time any process asks about `index` (then it should warn); False afterwards.

        Two workers failing on the same file at the same instant may both warn; that costs one extra line.
        """
        if bool(self._flags[index]):
            return False
        self._flags[index] = True
        return True
