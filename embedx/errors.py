"""User-facing errors.

Every problem that a user can fix (a bad manifest, a missing file, an unknown config key) is raised as an
`EmbedxError` with a message that names the file, row or field. The CLI prints the message without a
traceback and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EmbedxError(Exception):
    """A problem with the user's input or environment, explained in its message."""


class ManifestError(EmbedxError):
    """The manifest (or its sidecar schema) cannot be used as it is."""


class ImageReadError(EmbedxError):
    """One image file could not be read; carries the path so that callers can skip and list it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ConfigError(EmbedxError):
    """A config file or `--set` override is invalid (unknown key, wrong type)."""


class StoreError(EmbedxError):
    """An HDF5 store is missing, locked, of another schema version or inconsistent."""
