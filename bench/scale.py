"""A million images on one machine: each command of the flow on a 1M-row store of 512-d latents, timed, with
its peak memory.

    .venv/bin/python bench/scale.py                        # 1,000,000 rows: about an hour on 2 cores
    .venv/bin/python bench/scale.py --rows 50000           # the same steps, small
    .venv/bin/python bench/scale.py --steps info,reads,probe --keep /tmp/scale   # some steps, keep the store

The store is what the four public CXR sets together would give (~900k images, ~3.4 per patient): rows are
written by the store's array helper (as `embedx encode` writes them, without images), with one model ("vae"),
then a second model ("ext") arrives by `embedx store import` from a .npz keyed by sample id, as embeddings
from someone else's model would. Latents are 512-d, with site, view, manufacturer, sex and age written into
a few directions, a finding at 3 % prevalence weakly, and insurance and a 4-level "batch" not at all (their
probes must come out at chance). Every step after the build is the real CLI in its own process, run under
GNU time for its wall time and peak resident memory (the goal: under 16 GB each).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embedx.data.schema import AttributeSpec  # noqa: E402
from embedx.store.h5store import Store, write_store_from_arrays  # noqa: E402

SCHEMA = {
    "site": AttributeSpec("site", "categorical", "acquisition"),
    "manufacturer": AttributeSpec("manufacturer", "categorical", "acquisition"),
    "view": AttributeSpec("view", "binary", "acquisition"),
    "sex": AttributeSpec("sex", "binary", "demographic"),
    "age": AttributeSpec("age", "continuous", "demographic"),
    "finding": AttributeSpec("finding", "binary", "clinical"),
    "insurance": AttributeSpec("insurance", "categorical", "demographic"),
    "batch": AttributeSpec("batch", "categorical", "acquisition"),
}
STEPS = ("build", "import", "info", "reads", "probe", "clusters", "report", "tsne", "umap")
DIM = 512
SITE_BRAND = {"chexpert": "GE", "mimic": "Philips", "nih": "Siemens", "padchest": "Philips", "local": "Agfa"}


def _cohort(n: int, rng: np.random.Generator) -> tuple[np.ndarray, pd.DataFrame]:
    n_subjects = max(10, int(n / 3.4))
    subject = rng.integers(0, n_subjects, n)

    def per_subject(values: list[str], p: list[float] | None = None) -> np.ndarray:
        return np.asarray(values)[rng.choice(len(values), n_subjects, p=p)][subject]

    site = per_subject(["chexpert", "mimic", "nih", "padchest", "local"], [0.25, 0.4, 0.12, 0.17, 0.06])
    table = pd.DataFrame({
        "site": site,
        # mostly the site's own brand: manufacturer and site overlap, as in real multi-site cohorts
        "manufacturer": np.where(rng.random(n) < 0.8, pd.Series(site).map(SITE_BRAND).to_numpy(),
                                 np.array(sorted(set(SITE_BRAND.values())))[rng.integers(0, 4, n)]),
        "view": np.array(["AP", "PA"])[rng.integers(0, 2, n)],
        "sex": per_subject(["F", "M"]),
        "age": np.round(rng.uniform(18, 90, n_subjects)[subject] + rng.uniform(0, 3, n), 1),
        "finding": (rng.random(n) < 0.03).astype(int).astype(str),
        "insurance": per_subject(["public", "private", "self-pay"]),
        "batch": np.array(["b1", "b2", "b3", "b4"])[rng.integers(0, 4, n)],
    })
    return subject, table


def _latents(table: pd.DataFrame, gain: float, rng: np.random.Generator) -> np.ndarray:
    n = len(table)
    z = rng.standard_normal((n, DIM), dtype=np.float32)
    for j, column in enumerate(("site", "manufacturer")):
        codes = pd.Categorical(table[column]).codes
        z[np.arange(n), 10 * j + codes] += gain
    z[:, 30] += gain * (table["view"].to_numpy() == "AP")
    z[:, 31] += gain * (table["sex"].to_numpy() == "M")
    z[:, 32] += gain * (table["age"].to_numpy() - 54) / 20
    z[:, 33] += 0.5 * gain * (table["finding"].to_numpy() == "1")
    return z


def build(folder: Path, n: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    subject, table = _cohort(n, rng)
    ids = np.array([f"img{i:07d}" for i in range(n)])
    store = write_store_from_arrays(folder / "scale.h5", ids, np.array([f"p{s:07d}" for s in subject]), table,
                                    SCHEMA, {"vae": _latents(table, 1.0, rng)},
                                    embedding_attrs={"vae": {"kind": "vae"}})
    with Store.open(store) as reader:
        stored_ids = reader.sample_ids.copy()
    external = folder / "ext.npz"
    np.savez(external, sample_id=stored_ids.astype(str), embedding=_latents(table, 0.7, rng))
    return store, external


def timed_command(args: list[str], timeout_s: float) -> tuple[float, float, str]:
    """(wall s, peak resident GB, last line of output) of one CLI command in its own process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as stats:
        start = time.perf_counter()
        try:
            done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", stats.name, *args], capture_output=True,
                                  text=True, env={**os.environ, "EMBEDX_NO_PROGRESS": "1"}, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return time.perf_counter() - start, float("nan"), f"stopped after {timeout_s:.0f} s"
        wall = time.perf_counter() - start
        peak_kb = float((stats.read().strip().splitlines() or ["nan"])[-1])
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    tail = (done.stdout.strip().splitlines() or [""])[-1][:70]
    return wall, peak_kb / 2**20, tail


READS = """
import sys, time, numpy as np
from embedx.store.h5store import Store
with Store.open(sys.argv[1]) as s:
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(20):
        s.latents("ext", rows=np.sort(rng.choice(s.n, 1000, replace=False)))
    per_1000 = (time.perf_counter() - start) / 20
    start = time.perf_counter(); z = s.latents("ext"); whole = time.perf_counter() - start
    start = time.perf_counter(); t = s.attributes(); table = time.perf_counter() - start
print(f"1,000 random rows {per_1000 * 1000:.0f} ms; all {z.shape[0]:,} x {z.shape[1]} {whole:.1f} s; "
      f"attribute table {table:.1f} s")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--steps", default=",".join(STEPS), help=f"any of {','.join(STEPS)}")
    parser.add_argument("--keep", type=Path, default=None, help="folder to build in and keep (reused)")
    parser.add_argument("--quick", action="store_true", help="20,000 rows")
    parser.add_argument("--step-timeout", type=float, default=3600.0, help="seconds before a step is stopped")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.rows
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="embedx-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    store, external = folder / "scale.h5", folder / "ext.npz"
    cli = [sys.executable, "-m", "embedx"]
    print(f"{n:,} rows x {DIM}-d, {os.cpu_count()} cores; store in {folder}")
    print(f"{'step':<10}{'seconds':>9}{'peak GB':>9}  result")
    rows = []

    def show(step: str, seconds: float, peak: float, note: str) -> None:
        rows.append((step, seconds, peak, note))
        print(f"{step:<10}{seconds:>9.1f}{peak:>9.2f}  {note}", flush=True)

    if "build" in steps or not store.exists():
        start = time.perf_counter()
        build(folder, n)
        show("build", time.perf_counter() - start, float("nan"),
             f"rows + model vae ({store.stat().st_size / 1e9:.1f} GB), ext.npz to import")
    if "import" in steps:
        show("import", *timed_command([*cli, "store", "import", str(store), str(external), "--name", "ext",
                                       "--array", "embedding", "--replace"], args.step_timeout))
    commands = {
        "info": [*cli, "store", "info", str(store)],
        "reads": [sys.executable, "-c", READS, str(store)],
        "probe": [*cli, "probe", str(store), "--name", "ext"],
        "clusters": [*cli, "clusters", str(store), "--model", "ext"],
        "report": [*cli, "report", str(store), "--out", str(folder / "report"), "--no-run"],
        "tsne": [*cli, "project", str(store), "--method", "tsne", "--name", "ext"],
        "umap": [*cli, "project", str(store), "--method", "umap", "--name", "ext", "--umap-parallel"],
    }
    for step in steps:
        if step in commands:
            show(step, *timed_command(commands[step], args.step_timeout))
    print("\n| step | seconds | peak GB |\n|---|---|---|")
    for step, seconds, peak, _ in rows:
        print(f"| {step} | {seconds:.0f} | {peak:.1f} |")


if __name__ == "__main__":
    main()
