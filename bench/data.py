"""Data-core speed: image decoding + preprocessing per format, the loader with workers, manifest loading and
splits at cohort scale. Prints one table. `--quick` uses small sizes.

    .venv/bin/python bench/data.py [--quick]
    .venv/bin/python bench/data.py --manifest [--rows 1000000]

`--manifest` times only `load_manifest` on a typical pooled cohort (path, subject_id, site, sex, age, view,
finding, split; see `typical_manifest`), stage by stage: CSV with inferred kinds, CSV with a sidecar that
declares every column and its missing codes, and Parquet. Files are not checked (`check_files=False`, as
encode and the analyses load it): that stage is one filesystem call per row, whatever the code around it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def typical_manifest(rows: int, seed: int = 0) -> pd.DataFrame:
    """A pooled chest X-ray cohort as users load it: four sources, 4 images per patient in 2 studies, a few
    missing sexes and ages, and the codes 'U' (sex) and -1 (age) in 0.5 % of the rows."""
    rng = np.random.default_rng(seed)
    row = np.arange(rows)
    patient = pd.Series(row // 4)
    site = pd.Series(np.array(["chexpert", "mimic", "nih", "padchest"])[patient % 4], dtype=str)
    path = (site + "/p" + patient.astype(str).str.zfill(7) + "/s" + pd.Series((row // 2) % 2 + 1).astype(str)
            + "/" + pd.Series(row).astype(str).str.zfill(8) + ".png")
    sex = np.array(["F", "M"], dtype=object)[patient % 2]
    sex[rng.random(rows) < 0.01] = None
    sex[rng.random(rows) < 0.005] = "U"
    age = rng.uniform(18, 95, rows).round(0)
    age[rng.random(rows) < 0.02] = np.nan
    age[rng.random(rows) < 0.005] = -1
    return pd.DataFrame({
        "path": path, "subject_id": "S" + patient.astype(str).str.zfill(7), "site": site, "sex": sex,
        "age": age, "view": np.array(["AP", "PA", "lateral"])[rng.integers(0, 3, rows)],
        "finding": rng.integers(0, 2, rows),
        "split": np.array(["train", "val", "test"])[rng.choice(3, rows, p=[0.8, 0.1, 0.1])],
    })


TYPICAL_SCHEMA = {"attributes": {
    "site": {"kind": "categorical", "role": "acquisition"},
    "sex": {"kind": "binary", "role": "demographic", "missing": ["U"]},
    "age": {"kind": "continuous", "role": "demographic", "missing": [-1]},
    "view": {"kind": "categorical", "role": "acquisition"},
    "finding": {"kind": "binary", "role": "clinical"},
    "split": {"kind": "categorical", "role": "clinical"},
}}

# The stages of `load_manifest`, by the functions it calls (module, name, label). Each is timed without the
# stages it calls itself (`_text_to_missing` inside `_check_values`); what is left is "other".
MANIFEST_STAGES = (
    ("embedx.data.manifest_read", "_scan_csv_records", "CSV records: line numbers, field counts"),
    ("embedx.data.manifest_read", "_keep_padded_codes", "CSV zero-padded codes (second read)"),
    ("embedx.data.manifest", "read_table", "read the file (pandas)"),
    ("embedx.data.manifest", "_check_paths", "paths: empty, duplicates (normalised)"),
    ("embedx.data.manifest", "_check_subjects", "subject ids: empty, strip"),
    ("embedx.data.manifest", "_strip_text_values", "spaces around text values"),
    ("embedx.data.manifest", "apply_missing_codes", "declared missing codes"),
    ("embedx.data.manifest", "_check_values", "declared kinds fit the values"),
    ("embedx.data.manifest", "drop_identifier_columns", "identifier (PHI) columns"),
    ("embedx.data.manifest", "resolve_schema", "kind inference (undeclared columns)"),
    ("embedx.data.manifest", "_text_to_missing", "text in continuous columns -> missing"),
    ("embedx.data.manifest", "warn_sentinels", "undeclared missing-code warning"),
    ("embedx.data.manifest", "warn_spelling_variants", "spelling-variant warning"),
    ("embedx.data.manifest", "warn_inconsistent_attributes", "per-subject consistency warning"),
)


@contextmanager
def _stage_timer(times: dict[str, float]) -> Iterator[None]:
    """Wrap each stage function (those this version has) to add its own time, children excluded, to times."""
    import importlib

    stack: list[float] = []  # time spent in children of each open stage
    saved = []
    for module_name, name, label in MANIFEST_STAGES:
        module = importlib.import_module(module_name)
        fn = getattr(module, name, None)
        if fn is None:
            continue

        def timed(*args: object, _fn: Callable = fn, _label: str = label, **kwargs: object) -> object:
            start = time.perf_counter()
            stack.append(0.0)
            try:
                return _fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                children = stack.pop()
                times[_label] = times.get(_label, 0.0) + spent - children
                if stack:
                    stack[-1] += spent

        saved.append((module, name, fn))
        setattr(module, name, timed)
    try:
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


SAMPLE_IDS = "after the load: sample_ids() (store keys)"


def manifest_stages(rows: int) -> None:
    """`--manifest`: one table of seconds per stage of `load_manifest` at `rows` rows."""
    import yaml

    logging.getLogger("embedx").setLevel(logging.ERROR)
    columns = {"CSV": "m.csv", "CSV+sidecar": "declared.csv", "Parquet": "m.parquet"}
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        table = typical_manifest(rows)
        table.to_csv(folder / "m.csv", index=False)
        shutil.copyfile(folder / "m.csv", folder / "declared.csv")
        (folder / "declared.yaml").write_text(yaml.safe_dump(TYPICAL_SCHEMA, sort_keys=False))
        table.to_parquet(folder / "m.parquet", index=False)
        print(f"wrote a {rows:,}-row manifest ({(folder / 'm.csv').stat().st_size / 2**20:.0f} MiB CSV) in "
              f"{time.perf_counter() - start:.1f} s")
        for column, name in columns.items():
            times: dict[str, float] = {}
            with _stage_timer(times):
                start = time.perf_counter()
                loaded = load_manifest(folder / name, check_files=False)
                total = time.perf_counter() - start
            assert len(loaded) == rows
            times["other"] = total - sum(times.values())
            times["total load_manifest"] = total
            start = time.perf_counter()
            loaded.sample_ids(salt="bench")
            times[SAMPLE_IDS] = time.perf_counter() - start
            results[column] = times
    labels = [label for _, _, label in MANIFEST_STAGES] + ["other", "total load_manifest", SAMPLE_IDS]
    width = max(len(label) for label in labels)
    print(f"{f'load_manifest, {rows:,} rows (s)':<{width}}" + "".join(f"  {c:>12}" for c in columns))
    for label in labels:
        cells = [results[c].get(label) for c in columns]
        if all(cell is None for cell in cells):
            continue
        print(f"{label:<{width}}" + "".join("  " + (f"{cell:12.2f}" if cell is not None else f"{'-':>12}")
                                            for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--manifest", action="store_true", help="only load_manifest, stage by stage")
    parser.add_argument("--rows", type=int, default=1_000_000, help="manifest rows for --manifest")
    args = parser.parse_args()
    if args.manifest:
        manifest_stages(args.rows)
        return
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
