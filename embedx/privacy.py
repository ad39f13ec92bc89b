"""What never leaves the user's machine in a file embedx writes: paths, which often carry patient names.

Folder and file names of clinical exports are frequently named after the patient ("DOE^JOHN_MRN1234567/
MR_small.dcm"). A store, a report or a JSON result is meant to be shared, so a reason for a failure is
written there with every trace of its file's path replaced by `<file>`; the row is identified by its sample id
(a hash) instead, which the user can look up in their own manifest. The user's terminal still shows the path.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

__all__ = ["PATH_PLACEHOLDER", "scrub_path"]

PATH_PLACEHOLDER = "<file>"
_MIN_PART = 3  # shorter path parts ("a", "01") are too common to be a name and would mangle the reason


def scrub_path(text: str, path: str | Path) -> str:
    """`text` with the path (as written and absolute) and each of its folder and file names replaced."""
    path = Path(str(path))
    variants = {str(path), path.as_posix()}
    with contextlib.suppress(OSError):
        variants.add(str(path.resolve()))
    parts = {p for p in path.parts if len(p) >= _MIN_PART and p not in ("/", "\\")}
    out = text
    for needle in sorted(variants | parts, key=len, reverse=True):
        if needle:
            out = out.replace(needle, PATH_PLACEHOLDER)
    return out
