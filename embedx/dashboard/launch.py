"""Start Streamlit on the packaged app: headless, no usage statistics, bound to loopback unless told.

The store path travels both as the script argument (`-- --store S`) and in $EMBEDX_STORE, so the app finds
it whichever way Streamlit passes arguments; the app file is located through the installed package, so this
works from a non-editable install too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from embedx.dashboard.data import STORE_ENV

APP = Path(__file__).resolve().parent / "app.py"


def command(store: Path, port: int, host: str) -> list[str]:
    """The `streamlit run` command line (a separate function so tests can check it without a server)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.headless", "true",
        "--server.address", host,
        "--server.port", str(port),
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--global.developmentMode", "false",
        "--", "--store", str(store),
    ]


def launch(store: Path, port: int = 8501, host: str = "127.0.0.1") -> int:
    """Run the server in the foreground until interrupted; returns Streamlit's exit status."""
    store = Path(store).resolve()
    env = dict(os.environ, **{STORE_ENV: str(store)})
    print(f"embedx explorer for {store}\n  URL: http://{host}:{port}\n  (Ctrl+C to stop)", flush=True)
    try:
        return subprocess.call(command(store, port, host), env=env)
    except KeyboardInterrupt:
        return 0
