"""Logging set-up for the CLI: quiet by default, `-v` for info, `-vv` for debug."""

from __future__ import annotations

import logging

from rich.logging import RichHandler

from embedx.progress import console


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=verbosity > 1, rich_tracebacks=True)],
        force=True,
    )
    # Third-party libraries are chatty at INFO; keep them at WARNING unless -vv.
    for name in ("numba", "matplotlib", "PIL", "h5py", "urllib3", "diffusers", "accelerate"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
