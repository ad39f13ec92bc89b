"""Data-core speed: image decoding + preprocessing per format, the loader with workers, manifest loading and
splits at cohort scale. Prints one table. `--quick` uses small sizes.

    .venv/bin/python bench/data.py [--quick]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd

from embedx.data.dataset import ImageDataset, make_loader
from embedx.data.images import NiftiSelection, read_image
from embedx.data.manifest import load_manifest
from embedx.data.preprocess import PreprocessConfig, preprocess
from embedx.data.splits import subject_kfold, train_val_test_split


def _rate(fn: Callable[[], object], n: int) -> float:
    fn()  # warm-up (imports, caches)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def _write_files(folder: Path) -> dict[str, Path]:
    import nibabel as nib
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(0)
    files: dict[str, Path] = {}
    files["PNG 8-bit 256 px"] = folder / "a.png"
    Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)).save(files["PNG 8-bit 256 px"])
    files["PNG 16-bit 1024 px"] = folder / "b.png"
    Image.fromarray(rng.integers(0, 60000, (1024, 1024), dtype=np.uint16)).save(files["PNG 16-bit 1024 px"])
    files["JPEG 8-bit 512 px"] = folder / "c.jpg"
    Image.fromarray(rng.integers(0, 255, (512, 512), dtype=np.uint8)).save(files["JPEG 8-bit 512 px"])
    files["DICOM CT 512 px (uncompressed)"] = Path(get_testdata_file("693_UNCR.dcm"))
    files["DICOM CR 1955x1841 MONOCHROME1"] = Path(get_testdata_file("RG1_UNCR.dcm"))
    files["DICOM CR 1955x1841 JPEG 2000"] = Path(get_testdata_file("RG1_J2KR.dcm"))
    vol = rng.normal(100, 20, (128, 128, 64)).astype(np.float32)
    files["NIfTI 128x128x64 (gz)"] = folder / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), files["NIfTI 128x128x64 (gz)"])
    assert pydicom  # imported for the side effect of checking that it is there
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    logging.getLogger("embedx").setLevel(logging.ERROR)  # keep the table clean of inference notes
    reps = 5 if args.quick else 30
    cohort_rows = 20_000 if args.quick else 200_000
    rows: list[tuple[str, str, str]] = []

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = _write_files(folder)
        cfg = PreprocessConfig(size=256)
        for name, path in files.items():
            is_slow = "JPEG 2000" in name or "1955" in name
            n = max(2, reps // 5) if is_slow else reps
            rate = _rate(lambda p=path: preprocess(read_image(p), cfg), n)
            rows.append((f"read + preprocess to 256 px: {name}", f"{rate:,.1f}", "img/s"))
        triplet = NiftiSelection("random_triplet")
        nifti = files["NIfTI 128x128x64 (gz)"]
        rng = np.random.default_rng(0)
        rate = _rate(lambda: read_image(nifti, nifti=triplet, rng=rng), reps)
        rows.append(("read NIfTI random slice triplet", f"{rate:,.1f}", "vol/s"))

        # Loader: 64 px PNGs, as in the CPU training runs.
        n_images = 256 if args.quick else 1024
        from PIL import Image

        img_rng = np.random.default_rng(1)
        for i in range(n_images):
            Image.fromarray(img_rng.integers(0, 255, (128, 128), dtype=np.uint8)).save(folder / f"p{i}.png")
        pd.DataFrame({"path": [f"p{i}.png" for i in range(n_images)]}).to_csv(folder / "m.csv", index=False)
        manifest = load_manifest(folder / "m.csv")
        for workers in (0, 2):
            dataset = ImageDataset(manifest, PreprocessConfig(size=64, flip=True), train=True)
            loader = make_loader(dataset, batch_size=32, shuffle=True, workers=workers)
            next(iter(loader))  # start the workers
            start = time.perf_counter()
            seen = sum(len(batch["row"]) for batch in loader)
            rate = seen / (time.perf_counter() - start)
            rows.append((f"DataLoader 128->64 px PNG, batch 32, {workers} workers", f"{rate:,.0f}", "img/s"))

        # Manifest and splits at cohort scale (paths need not exist with check_files=False).
        big = pd.DataFrame(
            {
                "path": [f"patient{i // 3:06d}/study1/view{i % 3}.png" for i in range(cohort_rows)],
                "subject_id": [f"patient{i // 3:06d}" for i in range(cohort_rows)],
                "sex": np.where(np.arange(cohort_rows) % 2, "F", "M"),
                "age": np.random.default_rng(2).uniform(18, 90, cohort_rows).round(1),
                "manufacturer": np.array(["GE", "Siemens", "Philips"])[np.arange(cohort_rows) % 3],
                "finding": np.random.default_rng(3).integers(0, 2, cohort_rows),
            }
        )
        big.to_csv(folder / "big.csv", index=False)
        big.to_parquet(folder / "big.parquet", index=False)
        for name in ("big.csv", "big.parquet"):
            start = time.perf_counter()
            m = load_manifest(folder / name, check_files=False)
            rows.append(
                (f"load_manifest {name} {cohort_rows:,} rows", f"{time.perf_counter() - start:.2f}", "s")
            )
        start = time.perf_counter()
        train_val_test_split(m.table, stratify=["manufacturer", "finding"], seed=0)
        rows.append(
            (
                f"train_val_test_split {cohort_rows:,} rows, 2 strata cols",
                f"{time.perf_counter() - start:.2f}",
                "s",
            )
        )
        start = time.perf_counter()
        for _ in subject_kfold(m.table, 5, stratify=["manufacturer", "finding"], seed=0):
            pass
        rows.append((f"subject_kfold k=5 {cohort_rows:,} rows", f"{time.perf_counter() - start:.2f}", "s"))

    width = max(len(r[0]) for r in rows)
    print(f"{'data core':<{width}}  {'value':>10}  unit")
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>10}  {unit}")


if __name__ == "__main__":
    main()
