"""`embedx data ...`: make or ingest a cohort and write its manifest (argument parsing only)."""

from __future__ import annotations

from pathlib import Path

import typer

from embedx.progress import console

data_app = typer.Typer(
    help="Make or ingest a cohort: synthetic, DICOM/NIfTI/PNG folder, CheXpert, NIH.", no_args_is_help=True
)


@data_app.command("synth")
def synth(
    kind: str = typer.Option(
        "cxr", "--kind", help="cxr (2-D radiograph phantoms, PNG) or mri (brain volumes, NIfTI)."
    ),
    n: int = typer.Option(2000, "--n", help="Number of images (volumes for mri)."),
    out: Path = typer.Option(..., "--out", help="Output folder (images/, manifest.csv, ground_truth.json)."),
    size: int = typer.Option(128, "--size", help="Image side in pixels."),
    strength: float = typer.Option(1.0, "--strength", help="Acquisition-signature strength; 0 removes all."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same bytes."),
    prevalence: str = typer.Option(
        "", "--prevalence", help="Finding prevalence per site, e.g. north=0.5,south=0.05 (default 0.3 each)."
    ),
    lesion_contrast: float = typer.Option(
        1.0, "--lesion-contrast", help="Multiplier on the seed-001 lesion contrasts (1: subtle; 4-8: plain, "
        "for supervised experiments such as `experiment shift`)."
    ),
    spheres: bool = typer.Option(
        False, "--spheres", help="mri: lesion-free phantoms in OUT/phantoms, then seed 001's spheres put in "
        "by `embedx data lesions` (balanced by manufacturer, easy/medium/hard, masks) as OUT/manifest.csv."
    ),
) -> None:
    """Synthetic cohort with known, injected signatures; ground truth written beside it."""
    from embedx.data.synth import generate_cohort, read_ground_truth
    from embedx.data.synth.common import parse_prevalence

    if spheres:
        from embedx.errors import EmbedxError

        if kind != "mri" or prevalence:
            raise EmbedxError("--spheres goes with --kind mri and no --prevalence (the spheres set the "
                              "finding)")
        from embedx.data.lesions import LesionSettings, insert_lesions

        phantoms = generate_cohort(kind, n, out / "phantoms", size=size, strength=strength, seed=seed,
                                   prevalence=0.0)
        written = insert_lesions(phantoms, out, LesionSettings(seed=seed))
        console.print(f"wrote {n} lesion-free mri phantoms to {phantoms.parent}; seed 001's spheres -> "
                      f"{written}")
        typer.echo(str(written))
        return
    manifest = generate_cohort(
        kind, n, out, size=size, strength=strength, seed=seed, prevalence=parse_prevalence(prevalence),
        lesion_contrast=lesion_contrast,
    )
    truth = read_ground_truth(out)
    in_pixels = [k for k, v in truth["attributes"].items() if v["in_pixels"]]
    labels_only = [k for k, v in truth["attributes"].items() if not v["in_pixels"]]
    console.print(f"wrote {n} {kind} images ({truth['n_subjects']} subjects) to {out}")
    console.print(f"  in the pixels: {', '.join(in_pixels)}")
    console.print(f"  labels only (no pixel effect): {', '.join(labels_only)}")
    typer.echo(str(manifest))


@data_app.command("scan")
def scan(
    folder: Path = typer.Argument(
        ..., help="Folder to walk (DICOM with or without suffix, NIfTI, PNG/JPEG/TIFF)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Manifest to write (CSV or .parquet); sidecar YAML beside it."
    ),
    salt: str | None = typer.Option(
        None, "--salt", help="Secret salt for subject ids (else EMBEDX_SALT, else a salt file beside --out)."
    ),
) -> None:
    """DICOM / NIfTI / PNG folder -> manifest; acquisition attributes from headers, no PHI kept."""
    from embedx.data.scan import scan_to_manifest

    result = scan_to_manifest(folder, out, salt=salt)
    # Plain echo (not rich): long paths must not be wrapped or re-styled in the list of skipped files.
    typer.echo(result.summary(), err=True)
    if "institution" in result.table.columns:
        typer.echo(
            "note: 'institution' (InstitutionName) names a hospital; share the manifest accordingly.",
            err=True,
        )
    typer.echo(str(out))


@data_app.command("chexpert")
def chexpert(
    csv: Path = typer.Argument(..., help="CheXpert table (train.csv / valid.csv)."),
    root: Path = typer.Option(..., "--root", help="Folder that the table's Path column is relative to."),
    out: Path = typer.Option(..., "--out", help="Manifest to write (CSV or .parquet)."),
    uncertain: str = typer.Option(
        "ignore", "--uncertain", help="-1 labels: ignore (missing), zeros or ones."
    ),
    blank: str = typer.Option("zeros", "--blank", help="Blank (not mentioned) labels: zeros or missing."),
) -> None:
    """CheXpert-format table -> manifest (subject from patientNNNNN, view AP/PA/lateral, 14 findings)."""
    from embedx.data.tables import write_chexpert

    table = write_chexpert(csv, root, out, uncertain=uncertain, blank=blank)  # type: ignore[arg-type]
    console.print(f"{len(table)} images, {table['subject_id'].nunique()} subjects -> {out}")
    typer.echo(str(out))


@data_app.command("nih")
def nih(
    csv: Path = typer.Argument(..., help="NIH ChestX-ray14 Data_Entry_2017.csv."),
    root: Path = typer.Option(..., "--root", help="Folder holding the PNGs (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Manifest to write (CSV or .parquet)."),
) -> None:
    """NIH ChestX-ray14 table -> manifest (one 0/1 column per finding label)."""
    from embedx.data.tables import write_nih

    table = write_nih(csv, root, out)
    console.print(f"{len(table)} images, {table['subject_id'].nunique()} subjects -> {out}")
    typer.echo(str(out))


@data_app.command("check")
def check(
    manifest: Path = typer.Argument(..., help="Manifest CSV or Parquet (sidecar <stem>.yaml beside it)."),
    schema: Path | None = typer.Option(None, "--schema", help="Schema YAML instead of the sidecar."),
    no_files: bool = typer.Option(
        False, "--no-files", help="Do not look at the image files (that they exist, their headers)."
    ),
    read: bool = typer.Option(
        False, "--read", help="Decode every image in full, as training will (slow: minutes per 10,000 "
        "images); without it only sizes and headers are checked."
    ),
) -> None:
    """Validate a manifest and print its schema (kinds, roles, missing values).

    Every problem is listed at once and makes the exit status 2: bad rows, missing files, and files that
    exist but are no image (empty, truncated, another format; `--read` also finds damaged pixel data).
    """
    from embedx.data.manifest import load_manifest, summarize_manifest

    level = "off" if no_files else ("decode" if read else "header")
    loaded = load_manifest(manifest, schema_file=schema, check_files=not no_files, check_images=level)
    typer.echo(summarize_manifest(loaded))
    if level != "off":
        done = "decoded in full" if read else "exist, sizes and headers readable (--read: decode them too)"
        typer.echo(f"image files: all {len(loaded)} {done}")


@data_app.command("lesions")
def lesions(
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Manifest of NIfTI volumes (a `mask` column "
                                  "optional: one mask NIfTI per row)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder: volumes, masks, manifest.csv, lesions.csv."),
    difficulty: str = typer.Option("easy,medium,hard", "--difficulty", help="Tiers (seed 001): easy = "
                                   "21-26 mm at 50 HU; medium 20 % / hard 35 % of them 13-17 mm at 40 HU."),
    fraction: float = typer.Option(0.5, "--fraction", help="Share of subjects with a lesion per --by group."),
    by: str = typer.Option("manufacturer", "--by", help="Balance the positives within each value of this "
                           "column ('' for none)."),
    blend: str = typer.Option("auto", "--blend", help="replace (voxels set to the lesion's HU, as the "
                              "seed), add (raised by it: for non-HU volumes), auto (replace for CT)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Insert seed 001's synthetic spheres into your volumes, wholly inside the brain (or a given mask)."""
    from embedx.data.lesions import LesionSettings, insert_lesions

    settings = LesionSettings(difficulties=tuple(d.strip() for d in difficulty.split(",") if d.strip()),
                              fraction=fraction, by=by or None, blend=blend, seed=seed)
    written = insert_lesions(manifest, out, settings)
    console.print(f"lesion cohort -> {written} (lesions listed in {out / 'lesions.csv'})")
    typer.echo(str(written))


def register(app: typer.Typer) -> None:
    """Add `embedx data ...` to the root app."""
    app.add_typer(data_app, name="data")
