"""What never leaves the user's machine in a file embedx writes: paths, which often carry patient names.

Folder and file names of clinical exports are frequently named after the patient ("DOE^JOHN_MRN1234567/
MR_small.dcm"). A store, a report or a JSON result is meant to be shared, so a reason for a failure is
written there with every trace of its file's path replaced by `<file>`; the row is identified by its sample id
(a hash) instead, which the user can look up in their own manifest. The user's terminal still shows the path.

The reason itself must stay readable, though: a cohort under `/data/images/` must not turn "pixel data" into
"pixel <file>", nor a folder `trunc` "truncated" into "<file>ated". So only path-shaped text is replaced:
- the whole path (as given, absolute, resolved; `/` or `\\` separators), wherever it occurs;
- any run of two or more consecutive components ("DOE^JOHN_4400100/IMG0001.dcm", "images/cut.dcm"), at
  token boundaries (not inside a longer word or file name);
- a single folder name, the file name or its stem on its own, at token boundaries, unless it is a plain
  word (ASCII letters only: "data", "images", "Export"), since such a word also occurs in ordinary
  messages. Patient folders and files carry an ID, a `^`, `_`, a '.', a space or an accented letter; a
  bare surname folder quoted alone, without its file or a neighbouring folder, is the one case left.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

__all__ = ["PATH_PLACEHOLDER", "scrub_path"]

PATH_PLACEHOLDER = "<file>"
_MIN_PART = 3  # shorter path parts ("a", "01") are too common to be a name and would mangle the reason
_SEPARATORS = ("/", "\\")
# A needle counts only as a whole token: not preceded by a word character, '.' or '-', and not followed by
# one (a '.' that ends a sentence is fine, a '.' that starts another suffix is not).
_BEFORE = r"(?<![\w.\-])"
_AFTER = r"(?![\w\-]|\.\w)"


def _is_plain_word(part: str) -> bool:
    """A folder name that is an ordinary word ("data", "Images"): not replaced when it stands alone."""
    return part.isascii() and part.isalpha()


def _components(path: Path) -> list[str]:
    return [p for p in path.parts if p and p.rstrip("/\\") and not p.endswith((":\\", ":/"))]


def _needles(path: Path) -> tuple[set[str], set[str]]:
    """(whole path strings, replaced anywhere; path fragments, replaced as whole tokens only)."""
    forms = [path]
    with contextlib.suppress(OSError, RuntimeError):
        forms.append(path.absolute())
    with contextlib.suppress(OSError, RuntimeError):
        forms.append(path.resolve())
    whole: set[str] = set()
    tokens: set[str] = set()
    for form in forms:
        for text in (str(form), form.as_posix()):
            (whole if any(sep in text for sep in _SEPARATORS) else tokens).add(text)
        parts = _components(form)
        for i in range(len(parts)):
            for j in range(i + 2, len(parts) + 1):
                tokens.update(sep.join(parts[i:j]) for sep in _SEPARATORS)
        if parts:
            singles = {*parts, parts[-1].split(".")[0]}  # every folder, the file name and its stem
            tokens.update(p for p in singles if not _is_plain_word(p))
    return {w for w in whole if w}, {t for t in tokens if len(t) >= _MIN_PART}


def scrub_path(text: str, path: str | Path) -> str:
    """`text` with the path (as written, absolute and resolved) and its patient-named parts replaced.

    Ordinary words survive even when a folder has the same name (see the module docstring for the rules).
    """
    whole, tokens = _needles(Path(str(path)))
    out = text
    for needle in sorted(whole, key=len, reverse=True):
        out = out.replace(needle, PATH_PLACEHOLDER)
    if tokens:
        alternatives = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
        out = re.sub(f"{_BEFORE}(?:{alternatives}){_AFTER}", PATH_PLACEHOLDER, out)
    return out
