"""What a Streamlit page costs a browser before embedx draws anything: the floor under the explorer's paint.

The explorer's map is drawn about 4 s after the page opens in headless Chromium on 2 cores, whatever the
cohort size (bench/dashboard_browser.py: 3.8 s at 2,000 rows). This separates what Streamlit itself costs
from what the chart library costs, with four one-element pages served by `streamlit run`:

- bare: a title and a line of text (Streamlit's own bundle, websocket and first script run);
- plotly: `st.plotly_chart` of 2,000 WebGL points with selection on, as the explorer draws its map;
- component: a Streamlit v2 custom component (inline JS, no iframe) drawing 30,000 points on a canvas;
- html: `components.html` (an iframe) drawing the same 30,000 points.

Each page is opened in three browser sessions against one server; the first pays the server's warm-up.

    .venv/bin/python bench/dashboard_floor.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dashboard_browser import ARGS, CHROMIUM, serve_on_free_port  # the same browser and server start

SESSIONS = 3
POINTS = 30_000

PAGES = {
    "bare": (
        "import streamlit as st\nst.title('Map')\nst.write('drawn')\n",
        "() => document.body.innerText.includes('drawn')",
    ),
    "plotly": (
        "import numpy as np, plotly.graph_objects as go, streamlit as st\n"
        "st.title('Map')\n"
        "xy = np.random.default_rng(0).normal(size=(2000, 2))\n"
        "st.plotly_chart(go.Figure(go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode='markers')), "
        "on_select='rerun', key='map')\n",
        "() => { const g = document.querySelector('.js-plotly-plot'); "
        "return !!(g && g._fullData && g.querySelector('canvas')); }",
    ),
    "component": (
        "import streamlit as st\n"
        "st.title('Map')\n"
        "JS = '''\n"
        "export default function (component) {\n"
        "  const { data, parentElement } = component;\n"
        "  const canvas = document.createElement('canvas');\n"
        "  canvas.width = 800; canvas.height = 560;\n"
        "  parentElement.replaceChildren(canvas);\n"
        "  const g = canvas.getContext('2d');\n"
        "  for (let i = 0; i < data.n; i++) g.fillRect(Math.random() * 800, Math.random() * 560, 2, 2);\n"
        "  document.body.dataset.drawn = '1';\n"
        "}\n"
        "'''\n"
        "st.components.v2.component('floor_map', html='<div></div>', js=JS)"
        f"(data={{'n': {POINTS}}}, key='map')\n",
        "() => document.body.dataset.drawn === '1'",
    ),
    "html": (
        "import streamlit as st\nimport streamlit.components.v1 as components\n"
        "st.title('Map')\n"
        "components.html(\"<canvas id=c width=800 height=560></canvas><script>"
        "const g = document.getElementById('c').getContext('2d');"
        f"for (let i = 0; i < {POINTS}; i++) g.fillRect(Math.random() * 800, Math.random() * 560, 2, 2);"
        "document.title = 'drawn'</script>\", height=580)\n",
        "() => { const f = document.querySelector('iframe'); "
        "return !!(f && f.contentDocument && f.contentDocument.title === 'drawn'); }",
    ),
}


def _serve(script: Path) -> tuple[str, subprocess.Popen]:
    return serve_on_free_port(
        lambda port: [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
                      "--server.address", "127.0.0.1", "--server.headless", "true",
                      "--browser.gatherUsageStats", "false"]
    )


def main() -> None:
    from playwright.sync_api import sync_playwright

    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        for name, (source, drawn) in PAGES.items():
            script = Path(tmp) / f"{name}.py"
            script.write_text(source, encoding="utf-8")
            url, server = _serve(script)
            times = []
            try:
                for _ in range(SESSIONS):
                    page = browser.new_page(viewport={"width": 1400, "height": 1100})
                    start = time.perf_counter()
                    page.goto(url, timeout=120_000)
                    page.wait_for_function(drawn, polling=50, timeout=120_000)
                    times.append(time.perf_counter() - start)
                    page.close()
            finally:
                server.kill()
                server.wait()
            rows.append((name, times))
        browser.close()
    print(f"\nStreamlit page in Chromium (headless, software rendering), {os.cpu_count()} CPU cores: "
          "page opened -> element drawn")
    print(f"{'page':>10}  " + "  ".join(f"{f'session {i + 1}':>10}" for i in range(SESSIONS)))
    for name, times in rows:
        print(f"{name:>10}  " + "  ".join(f"{t:>8.2f} s" for t in times))


if __name__ == "__main__":
    main()
