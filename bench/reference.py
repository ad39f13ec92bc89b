"""Pixel reference, cohort identity and import: what they cost per image.

    .venv/bin/python bench/reference.py           full sizes (minutes on 2 cores; run on an idle machine)
    .venv/bin/python bench/reference.py --quick   small sizes, to check that everything runs

Prints one table and what it implies for a CheXpert-sized cohort (220k images).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHEXPERT = 220_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 300 if args.quick else 2000
    n_import = 20_000 if args.quick else CHEXPERT

    from embedx.data.identity import fingerprints
    from embedx.data.manifest import load_manifest
    from embedx.data.synth import generate_cohort
    from embedx.store.h5store import write_store_from_arrays
    from embedx.store.importer import import_embeddings
    from embedx.store.pixels import encode_pixels

    rows: list[tuple[str, str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        manifest = generate_cohort("cxr", n, tmp / "cohort", size=256, seed=0)
        man = load_manifest(manifest)
        paths = [man.absolute_path(i) for i in range(len(man))]
        start = time.perf_counter()
        fingerprints(paths)
        rate = n / (time.perf_counter() - start)
        rows.append(("content fingerprints (256 px PNG, warm cache)", f"{n} files", rate, "files/s"))
        for size in (64, 128):
            store = tmp / f"px{size}.h5"
            start = time.perf_counter()
            encode_pixels(manifest, store, size=size, pool=32, components=128, workers=2)
            rate = n / (time.perf_counter() - start)
            what = f"encode --pixels at {size} px (fit + encode, 2 workers)"
            rows.append((what, f"{n} images", rate, "img/s"))

        rng = np.random.default_rng(0)
        ids = np.array([f"{i:016x}" for i in range(n_import)], dtype=object)
        sites = pd.DataFrame({"site": rng.choice(["a", "b"], n_import)})
        base = write_store_from_arrays(tmp / "imp.h5", ids, [f"s{i // 2}" for i in range(n_import)], sites,
                                       None, {})
        z = rng.normal(size=(n_import, 512)).astype(np.float32)
        order = rng.permutation(n_import)
        np.savez(tmp / "emb.npz", embeddings=z[order], sample_id=ids[order].astype(str))
        start = time.perf_counter()
        import_embeddings(base, tmp / "emb.npz", "imported")
        rate = n_import / (time.perf_counter() - start)
        rows.append(("store import .npz, 512-d, shuffled keys", f"{n_import:,} rows", rate, "rows/s"))

    print(f"{'what':58s} {'size':>14s} {'rate':>10s}")
    for what, size, rate, unit in rows:
        print(f"{what:58s} {size:>14s} {rate:10.0f} {unit}")
    fp = rows[0][2]
    px = rows[2][2]
    print(f"\nCheXpert-sized (220k): fingerprints ~{CHEXPERT / fp / 60:.1f} min (once, on the first encode), "
          f"pixel reference at 128 px ~{CHEXPERT / px / 60:.0f} min of decoding-bound work, "
          f"import ~{CHEXPERT / rows[3][2]:.0f} s.")


if __name__ == "__main__":
    main()
