"""The explorer in a real browser at cohort scale: how long until the map is drawn, and a lasso's statistics.

Serves a synthetic store with `embedx dashboard`, opens it in Debian's Chromium (headless, software
rendering, as `make test` does) through Playwright and times, per store size:
- first paint: from opening the page to the map drawn (embedx's canvas has drawn its points, and the
  density image of every row when the map draws a sample): in a first browser session opened the moment
  the server accepts connections (while it still prepares the map page), in a first session opened once
  it prints "map page ready" (on a fresh server; the time it took to get ready is printed too), and in a
  second session;
- payload: the points drawn and the bytes the server sent over the websocket until then;
- a lasso dragged over a tenth of the plot, a second after the page is complete: from releasing the mouse
  to the selection's statistics shown; then a second lasso elsewhere, until its statistics replace the
  first's (no element left stale).

    .venv/bin/python bench/dashboard_browser.py                 # 220,000 rows
    .venv/bin/python bench/dashboard_browser.py --rows 20000,220000,1000000
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "dashboard"))

from mouse import drag_lasso  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
MAP = "document.querySelector('.embedx-map')"
DRAWN = (f"() => {{ const root = {MAP}; const m = root && root.embedxMap; "
         "return !!(m && m.n > 0 && (m.density || !m.sampled)); }")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_on_free_port(argv_for_port: Callable[[int], list[str]],
                       log: Path | None = None) -> tuple[str, subprocess.Popen]:
    """Start the server `argv_for_port(port)` on a free local port (its output to `log`); its URL once the
    port accepts."""
    port = _free_port()
    out = log.open("w") if log else subprocess.DEVNULL
    process = subprocess.Popen(argv_for_port(port), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return f"http://127.0.0.1:{port}", process
        time.sleep(0.2)
    process.kill()
    process.wait()
    raise RuntimeError(f"{argv_for_port(port)[2]} did not open port {port} within 120 s")


def _serve(store: Path, log: Path | None = None) -> tuple[str, subprocess.Popen]:
    return serve_on_free_port(
        lambda port: [sys.executable, "-m", "embedx", "dashboard", str(store), "--port", str(port)], log
    )


def _stop(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _prepared_first_paint(browser, store: Path, folder: Path) -> tuple[float, float]:
    """A fresh server, the page opened once it prints that the map page is ready: (seconds the server took
    to prepare it, first paint)."""
    log = folder / "server.log"
    started = time.perf_counter()
    url, process = _serve(store, log)
    try:
        deadline = time.monotonic() + 600
        while "map page ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        ready = time.perf_counter() - started
        paint, _, _ = _first_paint(browser, url)
    finally:
        _stop(process)
    return ready, paint


def _first_paint(browser, url: str) -> tuple[float, int, float]:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    sent = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: sent.append(len(frame))))
    start = time.perf_counter()
    page.goto(url, timeout=300_000)
    page.wait_for_function(DRAWN, timeout=300_000, polling=50)
    took = time.perf_counter() - start
    points = int(page.evaluate(f"() => {MAP}.embedxMap.n"))
    page.close()
    return took, points, sum(sent) / 1e6


SELECTION_HEADER = ("() => [...document.querySelectorAll('h3')].map(h => h.innerText)"
                    ".find(t => t.startsWith('Selection:')) || ''")


def _draw_lasso(page, corners: list[tuple[float, float]]) -> float:
    """Drag a lasso through `corners` (fractions of the plot area); returns the time the mouse is released."""
    drag_lasso(page, page.locator(".embedx-map-overlay").bounding_box(), corners, steps=5, release=False)
    start = time.perf_counter()
    page.mouse.up()
    return start


def _lasso(browser, url: str) -> tuple[float, float]:
    """Seconds from releasing a first lasso, then a second one elsewhere, to the selection's statistics."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url, timeout=300_000)
    page.wait_for_function(DRAWN, timeout=300_000, polling=50)
    page.get_by_text("Trustworthiness", exact=False).first.wait_for(timeout=300_000)  # the run has ended
    # a second, as a user looks at the map before drawing (drawing a lasso by hand takes longer): the map
    # fetches the selection panel's scripts once it is drawn and the browser is idle
    page.wait_for_timeout(1000)
    start = _draw_lasso(page, [(0.40, 0.40), (0.72, 0.40), (0.72, 0.72), (0.40, 0.72), (0.40, 0.41)])
    page.get_by_text("Composition vs the cohort", exact=False).first.wait_for(timeout=300_000)
    first = time.perf_counter() - start
    header = page.evaluate(SELECTION_HEADER)
    page.wait_for_timeout(1000)
    start = _draw_lasso(page, [(0.20, 0.20), (0.45, 0.20), (0.45, 0.45), (0.20, 0.45), (0.20, 0.21)])
    # the new selection's header, and no element left over from the previous run (Streamlit marks those
    # data-stale while a rerun is under way): its statistics are on the page
    page.wait_for_function(f"h => ({SELECTION_HEADER})() !== h && document.body.innerText.includes("
                           "'Composition vs the cohort') && !document.querySelector('[data-stale=\"true\"]')",
                           arg=header, timeout=300_000, polling=20)
    second = time.perf_counter() - start
    page.close()
    return first, second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="220000", help="comma-separated store sizes")
    parser.add_argument("--quick", action="store_true", help="20,000 rows only")
    args = parser.parse_args()
    if args.quick:
        args.rows = "20000"
    from playwright.sync_api import sync_playwright
    from synthstore import make_store

    table = []
    for n in (int(v) for v in args.rows.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            store = Path(folder) / "store.h5"
            make_store(store, n=n, analyses=False, with_thumbnails=n <= 20_000)
            url, process = _serve(store)
            try:
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
                    cold, points, megabytes = _first_paint(browser, url)
                    warm, _, _ = _first_paint(browser, url)
                    lasso = _lasso(browser, url)
                    _stop(process)
                    ready, prepared = _prepared_first_paint(browser, store, Path(folder))
                    browser.close()
            finally:
                if process.poll() is None:
                    _stop(process)
        table.append((n, cold, ready, prepared, warm, points, megabytes, *lasso))

    print(f"\nexplorer in Chromium (headless, software rendering), {os.cpu_count()} CPU cores; first paint = "
          "page opened -> map drawn")
    print(f"{'rows':>10}  {'1st session, at once':>20}  {'server ready':>12}  {'1st session, then':>17}  "
          f"{'2nd session':>11}  {'points drawn':>12}  {'sent':>8}  {'lasso -> statistics':>19}  "
          f"{'next lasso':>10}")
    for n, cold, ready, prepared, warm, points, megabytes, lasso, again in table:
        print(f"{n:>10,}  {cold:>18.1f} s  {ready:>10.1f} s  {prepared:>15.1f} s  {warm:>9.1f} s  "
              f"{points:>12,}  {megabytes:>5.1f} MB  {lasso:>17.1f} s  {again:>8.1f} s")


if __name__ == "__main__":
    main()
