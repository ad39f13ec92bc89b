"""Suite-wide settings: no progress bars, torch threads sized to the workers, artefacts in one folder.

`make test` runs the suite in two pytest-xdist workers, one whole file per worker at a time (`--dist
loadfile`), so that a file's module and session fixtures (the demo, the privacy flow, the trained tiny
models) are built once per worker and never split. On two cores, one process per core beats one process
with two intra-op threads: the suite's models and arrays are small, so a second thread mostly waits on the
first. Each worker therefore gets one OpenMP thread, and the three files that run for minutes start first,
so that they do not leave one core idle at the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
os.environ["OMP_NUM_THREADS"] = "1" if os.environ.get("PYTEST_XDIST_WORKER") else os.environ.get(
    "OMP_NUM_THREADS", "2"
)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# The long poles, measured with `--durations` (fresh clone, 2 cores): started first in collection order.
LONG_FILES = ("test_demo.py", "test_privacy_flow.py", "test_shift_volumes.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the minutes-long files to the front; the order of tests within a file is unchanged."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files for a person to look at (PNG of a loaded DICOM, browser screenshot)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
