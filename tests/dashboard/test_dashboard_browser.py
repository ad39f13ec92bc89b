"""The whole path in a real browser: `embedx dashboard` serving a synthetic store, Debian's chromium driven by
Playwright — map drawn, colour switched, a lasso dragged with the mouse, thumbnails shown, a click on one
point, zoom and reset, screenshot saved.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mouse import drag_lasso

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAP = "document.querySelector('.embedx-map')"


def when_drawn(expression: str) -> str:
    """A wait predicate over what the map drew last (`m`), false (not an error) until it has drawn."""
    return f"() => {{ const r = {MAP}; const m = r && r.embedxMap; return !!(m && ({expression})); }}"


def drawn(page) -> dict:
    return dict(page.evaluate(f"() => {{ const m = {{...{MAP}.embedxMap}}; delete m.locate; return m; }}"))


def selected_heading(page) -> int:
    heading = page.get_by_text("Selection:", exact=False).first.inner_text()
    return int(heading.split(":")[1].split("images")[0].replace(",", "").strip())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def server(store: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`embedx dashboard` on a free loopback port; stopped by its PID afterwards, also on failure."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    env = dict(os.environ, EMBEDX_NO_PROGRESS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "embedx", "dashboard", str(store), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"dashboard exited early: {(tmp_path / 'server.log').read_text()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("dashboard did not open its port within 60 s")
        printed = (tmp_path / "server.log").read_text()
        assert f"URL: http://127.0.0.1:{port}" in printed, printed
        yield f"http://127.0.0.1:{port}", process
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        log.close()


@pytest.mark.browser
@pytest.mark.slow
def test_map_colour_lasso_and_thumbnails_in_chromium(server, artifacts_dir: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            "Debian's chromium is missing at /usr/bin/chromium: install it with "
            "`apt-get install -y chromium` (make test runs scripts/ensure-chromium.sh)"
        )
    from playwright.sync_api import sync_playwright

    url, process = server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(url, timeout=60_000)
            page.wait_for_function(when_drawn("m.n > 0"), timeout=60_000)
            assert drawn(page)["n"] == 300 and drawn(page)["shown"] == 300
            assert drawn(page)["legend"] == ["east", "north", "south"]
            # the map is drawn first; the run ends with the map-quality panel: interact once it is there
            page.get_by_text("Trustworthiness", exact=False).first.wait_for(timeout=60_000)
            # nothing on the page needs the data grid yet, and the map has asked for its scripts, so that the
            # first lasso's tables need not wait for them
            deadline = time.monotonic() + 20
            while not any("/static/js/DataFrame." in u for u in requested) and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            assert any("/static/js/DataFrame." in u for u in requested), "no prefetch of the panel scripts"

            # switch the colour attribute through the sidebar select box
            page.get_by_role("combobox", name="Colour by").click()
            page.get_by_role("option", name="sex", exact=True).click()
            page.wait_for_function(when_drawn("m.legend.join(',') === 'F,M'"), timeout=30_000)
            assert drawn(page)["n"] == 300

            # lasso with the real mouse around the left part of the plot area (the "north" cluster)
            area = page.locator(".embedx-map-overlay").bounding_box()
            assert area is not None
            x0, y0, w, h = area["x"], area["y"], area["width"], area["height"]
            drag_lasso(page, area, [(0.02, 0.02), (0.42, 0.02), (0.42, 0.98), (0.02, 0.98), (0.02, 0.03)])

            page.get_by_text("Selection:", exact=False).first.wait_for(timeout=60_000)
            selected = selected_heading(page)
            assert 50 < selected < 300
            # the browser's own count inside the outline equals the server's, which tests every row
            assert drawn(page)["selected"] == selected
            shown = min(selected, 48)  # every thumbnail of the selection, up to the cap
            page.wait_for_function(
                f"() => document.querySelectorAll('[data-testid=stImage] img').length >= {shown}",
                timeout=60_000,
            )
            page.get_by_text("Composition vs the cohort", exact=False).first.wait_for(timeout=30_000)
            # Streamlit sends the panel element by element: the heading can be drawn before its tables.
            page.wait_for_function(  # the composition table and the rows table
                "() => document.querySelectorAll('[data-testid=stDataFrame]').length >= 2", timeout=60_000
            )
            page.screenshot(path=str(artifacts_dir / "dashboard-map-selection.png"), full_page=True)

            # a lasso around nothing (inside the map's padding) changes nothing, in the browser or the server
            corner = [(0.003, 0.003), (0.015, 0.003), (0.015, 0.015), (0.003, 0.015), (0.003, 0.004)]
            drag_lasso(page, area, corner)
            page.wait_for_timeout(1500)
            assert drawn(page)["selected"] == selected and selected_heading(page) == selected

            # recolour: a new drawing, with the kept selection baked in
            page.get_by_role("combobox", name="Colour by").click()
            page.get_by_role("option", name="site", exact=True).click()
            page.wait_for_function(when_drawn("m.legend.join(',') === 'east,north,south'"), timeout=30_000)
            page.wait_for_function(when_drawn(f"m.selected === {selected}"), timeout=30_000)
            assert page.get_by_text(f"Selection: {selected} images", exact=False).count() == 1

            # a click on one point selects it alone; after "Clear selection" the same click selects it again
            for attempt in range(2):
                where = page.evaluate(f"() => {MAP}.embedxMap.locate(250)")
                assert where is not None
                page.mouse.click(*where)
                page.get_by_text("Selection: 1 images", exact=False).first.wait_for(timeout=60_000)
                page.get_by_text("Row 250 and its", exact=False).first.wait_for(timeout=60_000)
                if attempt == 0:
                    page.get_by_role("button", name="Clear selection").click()
                    page.get_by_text("Select points on the map", exact=False).first.wait_for(timeout=60_000)
                    page.wait_for_function(when_drawn("m.selected === 0"), timeout=30_000)  # nothing kept

            # the wheel zooms in around the cursor; "Reset view" shows the whole map again
            whole = drawn(page)["view"]
            page.mouse.move(x0 + w / 2, y0 + h / 2)
            page.mouse.wheel(0, -400)
            page.wait_for_function(when_drawn(f"m.view[1] - m.view[0] < {0.8 * (whole[1] - whole[0])}"))
            assert drawn(page)["shown"] < 300
            page.get_by_role("button", name="Reset view").click()
            page.wait_for_function(when_drawn(f"m.view[0] === {whole[0]} && m.shown === 300"))
            # nothing left the machine: no CDN script, font or icon (a hospital network would block it,
            # and it would tell a third party that someone is auditing a cohort)
            outside = [u for u in requested if not u.startswith((url, "data:", "blob:"))]
            assert not outside, outside
        finally:
            browser.close()
    assert process.poll() is None  # the server stayed up through the whole session
