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

STORE_ENV = "EMBEDX_STORE"
APP = Path(__file__).resolve().parent / "app.py"


def command(store: Path, port: int, host: str) -> list[str]:
    """The `streamlit run` command line, through `serve` (a separate function so tests can check it without a
    server)."""
    return [
        sys.executable,
        "-m",
        "embedx.dashboard.serve",  # `streamlit run`, with the map page's data made before the first session
        "run",
        str(APP),
        "--server.headless",
        "true",
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "viewer",
        "--",
        "--store",
        str(store),
    ]


def exposure_warning(host: str) -> str:
    """A warning when the server would answer other machines: the explorer shows every image's thumbnail
    and the cohort's attributes, with no login."""
    if host in ("127.0.0.1", "localhost", "::1") or host.startswith("127."):
        return ""
    return (f"warning: --host {host} lets other machines on the network open this explorer, with no login: "
            "it shows every image's thumbnail and the cohort's attributes. Use 127.0.0.1 (the default) and "
            "an SSH tunnel unless the network is trusted.")


def launch(store: Path, port: int = 8501, host: str = "127.0.0.1") -> int:
    """Print the URL, then become the Streamlit server (exec), so the PID the user sees is the server's.

    Where exec is unavailable (Windows), run it as a child and return its exit status.
    """
    store = Path(store).resolve()
    env = dict(os.environ, **{STORE_ENV: str(store)})
    print(f"embedx explorer for {store}\n  URL: http://{host}:{port}\n  (Ctrl+C to stop)", flush=True)
    warning = exposure_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    argv = command(store, port, host)
    if hasattr(os, "execve") and sys.platform != "win32":
        os.execve(argv[0], argv, env)
    try:
        return subprocess.call(argv, env=env)
    except KeyboardInterrupt:
        return 0
