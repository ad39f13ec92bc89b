"""Launcher for a checkout: runs the explorer that ships inside the package (`embedx/dashboard/app.py`).

    streamlit run dashboards/app.py -- --store store.h5
is the same as `embedx dashboard store.h5` (which also sets headless mode, loopback and no usage stats).
"""

from __future__ import annotations

import runpy
from pathlib import Path

import embedx.dashboard

runpy.run_path(str(Path(embedx.dashboard.__file__).resolve().parent / "app.py"), run_name="__main__")
