"""Store benchmark: encode vs bare forward, openTSNE vs sklearn t-SNE, UMAP, HDF5 random-subset reads.

    .venv/bin/python bench/store.py           full sizes (tens of minutes on 2 cores; run on an idle machine)
    .venv/bin/python bench/store.py --quick   small sizes, to check that everything runs

Prints one table, then what the figures imply for a CheXpert-sized cohort (220k images).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHEXPERT = 220_000


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3.0, (20, dim))
    return (centres[rng.integers(0, 20, n)] + rng.normal(0, 1.0, (n, dim))).astype(np.float32)


def bench_encode(tmp: Path, n: int, size: int, batch: int) -> list[tuple[str, str, float, str]]:
    import torch

    from embedx.data.dataset import ImageDataset
    from embedx.data.manifest import load_manifest
    from embedx.data.synth import generate_cohort
    from embedx.store.encode import encode
    from embedx.training.checkpoint import load_trained
    from embedx.training.config import load_config
    from embedx.training.loop import train

    manifest = generate_cohort("cxr", n, tmp / "cohort", size=size, seed=0)
    config = load_config("vae", None, [
        f"data.preprocess.size={size}", "optim.batch_size=16", "optim.total_samples=16",
        "optim.eval_every_samples=16", "optim.checkpoint_every_samples=16", "optim.log_every_samples=16",
        "optim.warmup_samples=0", "eval.images=2", "eval.max_val_samples=16",
    ])
    run_dir = train(config, manifest, tmp / "run")
    run = load_trained(run_dir)
    data = ImageDataset(load_manifest(manifest), run.preprocess)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    with torch.no_grad():
        run.model.embed(images[:batch])  # warm-up
        start = time.perf_counter()
        for i in range(0, n, batch):
            run.model.embed(images[i : i + batch])
        bare = n / (time.perf_counter() - start)
    # Fixed costs (loading the run, the trial read, worker start-up, creating the store) are measured on a
    # 16-image manifest and subtracted, so the ratio compares the streaming rates themselves.
    from embedx.data.manifest import write_manifest

    small = load_manifest(manifest)
    small_path = write_manifest(small.table.iloc[:16], manifest.parent / "small.csv", small.schema)
    start = time.perf_counter()
    encode(run_dir, small_path, tmp / "small.h5", batch_size=batch)
    fixed = time.perf_counter() - start
    start = time.perf_counter()
    encode(run_dir, manifest, tmp / "store.h5", batch_size=batch)
    took = time.perf_counter() - start
    full = n / took
    streaming = (n - 16) / max(took - fixed, 1e-9)
    label = f"{n} x {size}px VAE, batch {batch}"
    return [
        ("encode: bare model forward", label, bare, "img/s"),
        ("encode: embedx encode, end to end", label, full, f"img/s, ratio {full / bare:.2f}"),
        ("encode: embedx encode, streaming", label, streaming,
         f"img/s, ratio {streaming / bare:.2f} (fixed set-up {fixed:.1f} s excluded)"),
    ]


def bench_tsne(sizes_open: list[int], sizes_sk: list[int], dim: int) -> list[tuple[str, str, float, str]]:
    import openTSNE
    import sklearn.manifold

    from embedx.store.project import FFT_FROM

    jobs = os.cpu_count() or 1
    rows, open_times = [], {}
    for n in sizes_open:
        X = _clustered(n, dim)
        start = time.perf_counter()
        openTSNE.TSNE(n_jobs=jobs, initialization="pca", random_state=0,
                 negative_gradient_method="fft" if n >= FFT_FROM else "bh").fit(X)
        open_times[n] = time.perf_counter() - start
        rows.append(("openTSNE", f"{n} x {dim}, n_jobs={jobs}", open_times[n], "s"))
    for n in sizes_sk:
        X = _clustered(n, dim)
        start = time.perf_counter()
        sklearn.manifold.TSNE(n_jobs=jobs, init="pca", random_state=0).fit_transform(X)
        took = time.perf_counter() - start
        ratio = f"s, {took / open_times[n]:.1f}x openTSNE" if n in open_times else "s"
        rows.append(("sklearn TSNE", f"{n} x {dim}, n_jobs={jobs}", took, ratio))
    return rows


def bench_umap(n: int, dim: int) -> list[tuple[str, str, float, str]]:
    import umap

    start = time.perf_counter()
    umap.UMAP(n_neighbors=15).fit_transform(_clustered(500, dim, seed=1))  # numba compile
    compile_s = time.perf_counter() - start
    X = _clustered(n, dim)
    start = time.perf_counter()
    umap.UMAP(n_neighbors=15, min_dist=0.1).fit_transform(X)
    took = time.perf_counter() - start
    return [("UMAP (numba compiled first)", f"{n} x {dim}", took, f"s (+{compile_s:.0f} s compile/process)")]


def bench_hdf5(tmp: Path, n: int, dim: int, subset: int) -> list[tuple[str, str, float, str]]:
    import pandas as pd

    from embedx.store.h5store import Store, write_store_from_arrays

    z = _clustered(n, dim)
    ids = [f"s{i}" for i in range(n)]
    start = time.perf_counter()
    attrs = pd.DataFrame({"site": ["a"] * n})
    path = write_store_from_arrays(tmp / "read.h5", ids, ids, attrs, None, {"m": z})
    write_s = time.perf_counter() - start
    rows = np.random.default_rng(0).choice(n, subset, replace=False)
    with Store.open(path) as store:
        start = time.perf_counter()
        got = store.latents("m", rows)
        read_s = time.perf_counter() - start
        assert np.array_equal(got, z[rows])
        start = time.perf_counter()
        store.thumbnails(rows[:64])
        thumbs_s = time.perf_counter() - start
    size_mb = path.stat().st_size / 1e6
    return [
        ("HDF5 write store from arrays", f"{n} x {dim} f4 + ids ({size_mb:.0f} MB)", write_s, "s"),
        ("HDF5 read random rows", f"{subset} of {n} x {dim}", read_s, "s"),
        ("HDF5 read 64 random thumbnails", f"of {n}", thumbs_s, "s"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    args = parser.parse_args()
    if args.quick:
        enc, tsne_open, tsne_sk, umap_n, h5 = (256, 64, 32), [1000], [1000], 2000, (20_000, 512, 2000)
    else:
        enc, tsne_open, tsne_sk = (4096, 64, 64), [5000, 20_000, 50_000], [5000, 20_000]
        umap_n, h5 = 50_000, (100_000, 512, 10_000)
    rows: list[tuple[str, str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows += bench_encode(tmp, *enc)
        rows += bench_hdf5(tmp, *h5)
    rows += bench_tsne(tsne_open, tsne_sk, 512)
    rows += bench_umap(umap_n, 512)

    width = max(len(r[0]) for r in rows)
    setting = max(len(r[1]) for r in rows)
    print(f"{'what':<{width}}  {'setting':<{setting}}  {'value':>10}  unit")
    for what, where, value, unit in rows:
        print(f"{what:<{width}}  {where:<{setting}}  {value:>10.2f}  {unit}")

    rate = rows[2][2]
    big_open = [r for r in rows if r[0] == "openTSNE"][-1]
    n_big = int(big_open[1].split(" x ")[0])
    per_row = 512 * 4 + 64 * 64 + 64  # latents + thumbnail + ids/attributes, bytes
    print()
    print(f"CheXpert-sized cohort ({CHEXPERT:,} images), from these figures"
          + (" (quick sizes: extrapolations are rough):" if args.quick else ":"))
    print(f"- encode at {rate:,.0f} img/s (this model/size/machine): {CHEXPERT / rate / 60:,.0f} min; "
          "resumable, so it can run in pieces; with N processes under accelerate about N times faster")
    print(f"- store size: ~{CHEXPERT * per_row / 1e9:.1f} GB per 512-d model incl. thumbnails "
          f"(+{CHEXPERT * 512 * 4 / 1e9:.2f} GB per extra model)")
    print(f"- openTSNE scales ~n log n: {big_open[2]:.0f} s at {n_big:,} -> roughly "
          f"{big_open[2] * CHEXPERT / n_big * np.log(CHEXPERT) / np.log(n_big) / 60:.0f} min for all rows "
          "(FFT gradients); sklearn's TSNE is not an option at that size")
    print("- trustworthiness is computed on a 5k sample (O(n^2) memory), so its cost does not grow with N")


if __name__ == "__main__":
    main()
