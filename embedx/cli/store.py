"""`embedx encode`, `embedx project`, `embedx store info`: parse arguments and call `embedx.store`."""

from __future__ import annotations

from pathlib import Path

import typer

MAX_LISTED_FAILURES = 20


def register(app: typer.Typer) -> None:
    """Add `encode`, `project` and the `store` sub-app (`store info`) to the root app."""

    @app.command("encode")
    def encode_command(
        run_dir: Path | None = typer.Argument(
            None, help="Training run folder (not with --pixels or --backbone)."
        ),
        manifest: Path = typer.Option(..., "--manifest", "-m", help="Manifest (CSV or Parquet) to encode."),
        out: Path = typer.Option(..., "--out", "-o", help="Store file (created, or added to)."),
        name: str | None = typer.Option(None, "--name", help="Name in the store (default: run folder)."),
        batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per forward pass."),
        workers: int | None = typer.Option(None, "--workers", "-w", help="DataLoader worker processes."),
        stochastic: bool = typer.Option(False, "--stochastic", help="DAE only: also store x_T by DDIM "
                                        "inversion (slow: --steps UNet calls per image)."),
        steps: int | None = typer.Option(None, "--steps", help="DDIM inversion steps for --stochastic."),
        cohort: str = typer.Option("", "--cohort", help="Name of this cohort, to keep it apart from another "
                                   "cohort in the same store whose manifest writes the same paths."),
        pixels: bool = typer.Option(False, "--pixels", help="Encode the pixel reference (PCA of the pooled "
                                    "image + acquisition statistics; no training) instead of a run."),
        pixel_size: int = typer.Option(128, "--pixel-size", help="--pixels: preprocessed image size."),
        pool: int = typer.Option(32, "--pool", help="--pixels: PCA of the image pooled to POOL²."),
        components: int = typer.Option(128, "--components", help="--pixels: PCA components."),
        fit_rows: int = typer.Option(10_000, "--fit-rows", help="--pixels: images the PCA is fitted on."),
        backbone: Path | None = typer.Option(None, "--backbone", help="A pretrained encoder on disk: a "
                                             "Hugging Face model folder or a TorchScript file (no download)"),
        backbone_size: int | None = typer.Option(None, "--backbone-size", help="--backbone: its input size "
                                                 "(default: its preprocessor_config.json, else 224)."),
    ) -> None:
        """Encode a cohort with a trained VAE / DAE / CNN, the pixel reference (--pixels) or a pretrained
        backbone from local weights (--backbone), into the store.

        Resumable: rerun the same command after an interruption, or with a grown manifest, and only the
        missing rows are encoded. Runs unchanged under `accelerate launch -m embedx encode ...`.
        """
        from accelerate import PartialState

        from embedx.errors import EmbedxError
        from embedx.progress import console
        from embedx.store.encode import encode

        if sum([pixels, run_dir is not None, backbone is not None]) != 1:
            raise EmbedxError("give one of: a run folder, --pixels (the pixel reference), --backbone PATH")
        if backbone is not None:
            from embedx.store.backbone import load_backbone

            encoder = load_backbone(backbone, size=backbone_size)
            result = encode(encoder, manifest, out, name or backbone.name.split(".")[0],
                            batch_size=batch_size, workers=workers, cohort=cohort)
        elif pixels:
            from embedx.store.pixels import encode_pixels

            result = encode_pixels(manifest, out, name or "pixels", size=pixel_size, pool=pool,
                                   components=components, fit_rows=fit_rows, batch_size=batch_size,
                                   workers=workers, cohort=cohort)
        else:
            result = encode(run_dir, manifest, out, name, batch_size=batch_size, workers=workers,
                            stochastic=stochastic, steps=steps, cohort=cohort)
        if not PartialState().is_main_process:
            return
        console.print(
            f"[bold]{result.name}[/] ({result.kind}) -> {result.store}: {result.n_encoded_now} encoded now, "
            f"{result.n_skipped_done} already there, {result.n_new_samples} new samples; "
            f"{result.n_encoded_total}/{result.n_manifest} of the manifest encoded"
        )
        for text in result.warnings:
            console.print(f"[yellow]{text}[/]", highlight=False)
        if result.failed:
            console.print(f"[yellow]{len(result.failed)} image(s) could not be read and were skipped "
                          f"(listed in the store under /embeddings/{result.name}/failed_ids):[/]")
            for sample, reason in result.failed[:MAX_LISTED_FAILURES]:
                console.print(f"  {sample}: {reason}", markup=False, highlight=False)
            if len(result.failed) > MAX_LISTED_FAILURES:
                console.print(f"  ... and {len(result.failed) - MAX_LISTED_FAILURES} more")
        typer.echo(str(result.store))

    @app.command("project")
    def project_command(
        store: Path = typer.Argument(..., help="Store file (.h5)."),
        method: str = typer.Option("tsne", "--method", help="tsne (openTSNE), umap or pca."),
        name: list[str] = typer.Option([], "--name", help="Model(s) to project (default: every model)."),
        perplexity: float = typer.Option(30.0, "--perplexity", help="t-SNE perplexity."),
        n_neighbors: int = typer.Option(15, "--n-neighbors", help="UMAP neighbours."),
        min_dist: float = typer.Option(0.1, "--min-dist", help="UMAP minimum distance."),
        seed: int = typer.Option(0, "--seed", help="Random seed."),
        transform_new: bool = typer.Option(False, "--transform-new", help="Place samples encoded since the "
                                           "map was made into it, without refitting (flagged as placed)."),
        n_jobs: int | None = typer.Option(None, "--jobs", help="Threads (default: all cores)."),
        umap_parallel: bool = typer.Option(False, "--umap-parallel", help="Unseeded UMAP on all cores: "
                                           "several times faster, but the map differs from run to run."),
        pca_dims: int = typer.Option(50, "--pca-dims", help="t-SNE / UMAP on this many principal components "
                                     "of wider latents (0: on the latents themselves)."),
        engine: str = typer.Option("cpu", "--engine", help="cpu (openTSNE / umap-learn) or cuml: t-SNE / "
                                   "UMAP on a GPU with RAPIDS cuML, where it is installed."),
        fit_max: int | None = typer.Option(None, "--fit-max", help="t-SNE / UMAP of more rows: fitted on "
                                           "a seeded sample of this many, the rest placed into it (default "
                                           "250,000 on the CPU, all rows with cuml; 0: fit all)."),
    ) -> None:
        """2-D map of each model's latents, stored with parameters and trustworthiness (k = 10)."""
        from embedx.progress import console
        from embedx.store.project import project

        with console.status(f"{method} projection of {store}"):
            results = project(str(store), method, name or None, perplexity=perplexity,
                              n_neighbors=n_neighbors,
                              min_dist=min_dist, seed=seed, transform_new=transform_new, n_jobs=n_jobs,
                              umap_parallel=umap_parallel, pca_dims=pca_dims, engine=engine,
                              fit_max=fit_max)
        for r in results:
            apart = ", ".join(f"{name.split('_')[1]} {value:.3f}"
                              for name, value in r.trustworthiness_by_status.items())
            console.print(f"[bold]{r.model}[/] {r.method}: {r.n_fitted:,} fitted, {r.n_transformed:,} "
                          f"placed by transform, trustworthiness(k=10) {r.trustworthiness:.3f}"
                          f"{f' ({apart})' if apart else ''}, {r.seconds:.1f} s")

    store_app = typer.Typer(help="Inspect an embedx store.", no_args_is_help=True)
    app.add_typer(store_app, name="store")

    @store_app.command("info")
    def info_command(
        store: Path = typer.Argument(..., help="Store file (.h5)."),
        json_: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Models, attributes (kind, role, missing values), projections and analyses in a store."""
        import json

        from embedx.store.info import render_info, store_summary

        summary = store_summary(store)
        if json_:
            typer.echo(json.dumps(summary, indent=2, default=str))
        else:
            render_info(summary)

    @store_app.command("import")
    def import_command(
        store: Path = typer.Argument(..., help="Store file (.h5) that already holds the cohort's rows."),
        file: Path = typer.Argument(..., help="Embeddings: .npy, .npz, .parquet, .csv or .h5."),
        name: str = typer.Option(..., "--name", "-n", help="Model name in the store."),
        manifest: Path | None = typer.Option(None, "--manifest", "-m", help="Manifest: its folder anchors "
                                             "path keys; its row order aligns a file without keys (.npy)."),
        array: str | None = typer.Option(None, "--array", help="Array / dataset holding the vectors "
                                         "(.npz / .h5 with several)."),
        note: str = typer.Option("", "--note", help="Where the embeddings came from (kept in the store)."),
        replace: bool = typer.Option(False, "--replace", help="Replace a model of the same name."),
        cohort: str = typer.Option("", "--cohort", help="Cohort whose rows path / order keys refer to "
                                   "(as given to `encode --cohort`)."),
    ) -> None:
        """Bring embeddings made elsewhere into the store; every command then treats them like latents.

        Rows are matched by a sample_id or path column / array, or follow --manifest's order; duplicates,
        unknown rows, a length mismatch and NaN are refused with the rows named.
        """
        from embedx.progress import console
        from embedx.store.importer import import_embeddings

        result = import_embeddings(store, file, name, manifest, array, note, replace, cohort)
        console.print(f"[bold]{result.name}[/] (imported, {result.dim}-d, matched by {result.key_kind}): "
                      f"{result.n_rows} rows written to {store}")
        if result.n_store_rows_without:
            from rich.markup import escape

            console.print(f"[yellow]{result.n_store_rows_without} store row(s) have no vector in "
                          f"{escape(file.name)}; they count as not encoded: "
                          f"{escape(result.without_named)}[/]")
