"""Where the quick demo's time goes: `embedx demo --quick` in a fresh folder, one row per stage.

    .venv/bin/python bench/demo.py            # run it once (about 2 minutes on 2 cores)
    .venv/bin/python bench/demo.py --quick    # the same (the demo has one size here)

Runs the demo in its own process, as a user does, so imports count; prints the stage table, the total and
whether every finding still agrees with the cohort's ground truth.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="accepted for bench/run; the demo has one size")
    parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "demo"
        env = {**os.environ, "EMBEDX_NO_PROGRESS": "1"}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "embedx", "demo", "--quick", "--out", str(out)],
                              capture_output=True, text=True, env=env)
        total = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"the demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        summary = json.loads((out / "demo_summary.json").read_text(encoding="utf-8"))
    stages = summary["timings_s"]
    width = max(len(name) for name in stages)
    print(f"\nembedx demo --quick, {os.cpu_count()} CPU cores")
    print(f"{'stage':<{width}}  {'seconds':>7}")
    for name, seconds in stages.items():
        print(f"{name:<{width}}  {seconds:>7.1f}")
    print(f"{'all stages':<{width}}  {sum(stages.values()):>7.1f}")
    print(f"{'whole command (imports, start-up)':<{width}}  {total:>7.1f}")
    print(f"every finding agrees with the ground truth: {summary['all_agree']}")


if __name__ == "__main__":
    main()
