"""`embedx clusters` and `embedx report`: describe the latents' clusters; write the HTML/JSON report."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `clusters` and `report` to the root app."""

    @app.command("clusters")
    def clusters_command(
        store: Path = typer.Argument(..., help="Store (HDF5) with latents."),
        model: str | None = typer.Option(
            None, "--model", "--name", help="Model in the store (default: first)."
        ),
        method: str = typer.Option("kmeans", "--method", help="kmeans (k by silhouette) or hdbscan."),
        k: int | None = typer.Option(None, "--k", help="Fix k for k-means instead of choosing it."),
        min_cluster_size: int | None = typer.Option(
            None, "--min-cluster-size", help="HDBSCAN's minimum size."
        ),
        json_path: Path | None = typer.Option(None, "--json", help="Write the result (without labels) here."),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Cluster the latents and name each cluster by its over-represented attribute values."""
        from embedx.analysis.cluster_structure import structure_sentence
        from embedx.analysis.clusters import run_clusters
        from embedx.errors import EmbedxError

        if method not in ("kmeans", "hdbscan"):
            raise EmbedxError(f"--method {method!r}: use kmeans or hdbscan")
        result = run_clusters(
            store,
            model,
            method=method,
            k=k,
            min_cluster_size=min_cluster_size,  # type: ignore[arg-type]
            seed=seed,
        )
        sil = result["silhouette"]
        groups = "groups" if result["structure"] is False else "clusters"  # k-means slices of one cloud
        typer.echo(
            f"{result['n_clusters']} {groups} ({result['method']}, model {result['model']}, n={result['n']}"
            + (f", silhouette {sil:.2f}" if sil is not None else "")
            + (f", {result['n_noise']} noise" if result["n_noise"] else "")
            + "), written to the store:"
        )
        sentence = structure_sentence(result)
        if sentence is not None:
            typer.echo(f"  {sentence}")
        if result["n_clusters"] == 0:
            typer.echo("  no dense cluster found: every sample is noise (try --method kmeans or a smaller "
                       "--min-cluster-size)")
        for c in result["clusters"]:
            typer.echo(f"  [{c['id']:>2}] {c['size']:>7} ({100 * c['fraction']:4.1f} %)  {c['name']}")
        if json_path is not None:
            from embedx.analysis.results import write_json

            write_json({k_: v for k_, v in result.items() if k_ != "labels"}, json_path)
            typer.echo(f"wrote {json_path}")

    @app.command("report")
    def report_command(
        store: Path = typer.Argument(..., help="Store (HDF5) with latents."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for report.html, report.json, figures/."),
        target: str | None = typer.Option(
            None,
            "--target",
            "-t",
            help="Clinical target for fairness and the "
            "cross-site matrix (default: 'finding' or the first clinical binary).",
        ),
        no_run: bool = typer.Option(False, "--no-run", help="Only show analyses already in the store."),
        permutations: int | None = typer.Option(
            None, "--permutations", help="Permutations for probes run here."
        ),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Self-contained HTML report + report.json + PNG figures; runs missing analyses with defaults."""
        from embedx.report.builder import build_report

        options = {} if permutations is None else {"n_permutations": permutations}
        document = build_report(
            store, out, target=target, run_missing=not no_run, seed=seed, probe_options=options
        )
        typer.echo(
            f"wrote {out / 'report.html'}, {out / 'report.json'} and {len(document['figures'])} figure(s)"
        )
        for note in document["notes"]:
            typer.echo(f"  note: {note}")
