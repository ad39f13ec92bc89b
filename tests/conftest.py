"""Suite-wide settings: no progress bars, two torch threads, artefacts in one folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files for a person to look at (PNG of a loaded DICOM, browser screenshot)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
