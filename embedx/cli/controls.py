"""`embedx control background|cross-site|distribution`: the seeds' control experiments (a Typer sub-app)."""

from __future__ import annotations

from pathlib import Path

import typer


def _emit(result: dict, json_path: Path | None) -> None:
    """Write the full result as JSON when asked (strict JSON, no NaN); the summary goes to stdout."""
    if json_path is not None:
        from embedx.analysis.results import write_json

        write_json(result, json_path)
        typer.echo(f"wrote {json_path}")


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def register(app: typer.Typer) -> None:
    """Add the `control` group with its three commands to the root app."""
    control = typer.Typer(
        help="Control experiments: background patches, cross-site matrix, KS tests.", no_args_is_help=True
    )
    app.add_typer(control, name="control")

    @control.command("background")
    def background_command(
        manifest: Path = typer.Option(
            ..., "--manifest", "-m", help="Manifest (CSV or Parquet) of the images."
        ),
        attribute: str = typer.Option(
            "site", "--attribute", "-a", help="Attribute to read from the background."
        ),
        patch: int = typer.Option(20, "--patch", help="Patch side in pixels at the preprocessed size."),
        size: int = typer.Option(
            128, "--size", help="Preprocessed image size (square) the patches are cut at."
        ),
        auto: bool = typer.Option(
            False, "--auto", help="Pick the darkest, flattest grid cells instead of the four corners."
        ),
        features: str = typer.Option(
            "stats", "--features", help="stats (patch statistics), pixels, or both."
        ),
        permutations: int = typer.Option(200, "--permutations", help="Permutations for the p-value."),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Subject-bootstrap resamples for the CI."),
        max_images: int | None = typer.Option(None, "--max-images", help="Use a random subset of this many."),
        cnn: bool = typer.Option(False, "--cnn", help="Also train the step-2 CNN on the stacked patches."),
        cnn_epochs: int = typer.Option(30, "--cnn-epochs", help="Epochs per fold for --cnn."),
        store: Path | None = typer.Option(None, "--store", help="Also write the result into this store."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the full result as JSON here."),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Dhar & Shamir's control: probe the attribute from blank background patches only.

        Above-chance balanced accuracy means the images carry an acquisition signature outside the anatomy.
        """
        from embedx.analysis.background import background_control

        result = background_control(
            manifest,
            attribute,
            patch,
            size=size,
            auto=auto,
            features=features,
            n_permutations=permutations,
            n_bootstrap=bootstrap,
            max_images=max_images,
            cnn=cnn,
            cnn_epochs=cnn_epochs,
            store_path=store,
            seed=seed,
        )
        ci = result["ci"]
        typer.echo(
            f"background control, {attribute} from {len(result['positions'])} patches of {patch} px "
            f"({result['selection']}), {result.get('n_subjects', '?')} subjects ({result['n']} images): "
            f"balanced accuracy {result['score']:.3f} "
            f"[{ci[0]:.3f}, {ci[1]:.3f}], chance {result['chance']:.3f}, p={result['p_value']:.4f}"
        )
        if "cnn" in result:
            c = result["cnn"]
            typer.echo(
                f"  CNN on patches: balanced accuracy {c['score']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]"
            )
        if result["n_failed"]:
            failed = result.get("failed") or []
            typer.echo(f"  {result['n_failed']} image(s) could not be read and were skipped"
                       + (f" (the first {len(failed)} listed in {json_path})" if json_path else ":"))
            if not json_path:  # the user's own terminal, where paths and reasons may be shown
                for item in failed[:5]:
                    where = f"row {item.get('row')}" + (f", line {item['line']}" if item.get("line") else "")
                    typer.echo(f"    {where}: {item.get('reason')}")
                if len(failed) > 5 or result["n_failed"] > len(failed):
                    typer.echo("    ... (--json FILE lists up to 100)")
        typer.echo(f"verdict: {result['verdict']}")
        _emit(result, json_path)

    @control.command("cross-site")
    def cross_site_command(
        store: Path = typer.Argument(..., help="Store (HDF5) with latents."),
        target: str = typer.Option(..., "--target", "-t", help="Binary target, e.g. finding."),
        site: str = typer.Option("site", "--site", "-s", help="Grouping to cross: site, manufacturer, ..."),
        model: str | None = typer.Option(
            None, "--model", "--name", help="Model in the store (default: first)."
        ),
        positive: str | None = typer.Option(
            None,
            "--positive",
            help="Positive value of the target (default 1/true/yes, else the second value in sorted order).",
        ),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Subject-bootstrap resamples."),
        folds: int = typer.Option(5, "--folds"),
        json_path: Path | None = typer.Option(None, "--json", help="Write the full result as JSON here."),
        png: Path | None = typer.Option(None, "--png", help="Write the AUC heatmap here."),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Train the target's probe on each site, test on every site; pooled and leave-one-site-out."""
        from embedx.analysis.cross_site import cross_site

        result = cross_site(
            store, target, site, model, positive=positive, folds=folds, n_bootstrap=bootstrap, seed=seed
        )
        sites = result["sites"]
        width = max(8, *(len(s) for s in sites))
        typer.echo(f"{target} AUC, rows trained on / columns tested on ({site}; model {result['model']}):")
        typer.echo(" " * (width + 2) + "".join(f"{s:>{width + 2}}" for s in sites) + "   subjects (positive)")
        for s, row in zip(sites, result["matrix"], strict=True):
            cells = "".join(f"{'-' if v is None else f'{v:.3f}':>{width + 2}}" for v in row)
            positive = result["positive_subjects"][s]
            counts = f"{result['subjects'][s]} ({positive}, {result['prevalence'][s]:.0%})"
            typer.echo(f"{s:<{width + 2}}{cells}   {counts}")
        head = result["internal_vs_external"]
        ci = head["ci"]
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else ""
        if head.get("widening"):
            ci_text += f" (widened x{head['widening']['factor']:.2f} by site-permuted refits)"
        typer.echo(
            f"leave-one-site-out: internal {head['internal_auc']:.3f} vs external "
            f"{head['external_auc']:.3f}, difference {head['difference']:.3f}{ci_text}"
        )
        typer.echo(f"verdict: {head['verdict']}")
        if result["skipped_sites"]:
            typer.echo("skipped: " + "; ".join(f"{k} ({v})" for k, v in result["skipped_sites"].items()))
        if png is not None:
            from embedx.report.control_figures import cross_site_heatmap
            from embedx.report.figures import png_bytes

            png.parent.mkdir(parents=True, exist_ok=True)
            png.write_bytes(png_bytes(cross_site_heatmap(result)))
            typer.echo(f"wrote {png}")
        _emit(result, json_path)

    @control.command("distribution")
    def distribution_command(
        store: Path = typer.Argument(..., help="Store (HDF5) with latents."),
        model: str | None = typer.Option(
            None, "--model", "--name", help="Model in the store (default: first)."
        ),
        attributes: str | None = typer.Option(None, "--attributes", "-a", help="Comma-separated attributes."),
        modes: int = typer.Option(10, "--modes", help="Leading PCA modes to test."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the full result as JSON here."),
    ) -> None:
        """KS test of each leading PCA mode between every pair of groups, Benjamini-Yekutieli corrected."""
        from embedx.analysis.distribution import distribution_tests

        result = distribution_tests(store, model, _split(attributes), n_modes=modes)
        n_sig = sum(t["significant"] for t in result["tests"])
        typer.echo(
            f"{len(result['tests'])} KS tests on {result['n_modes']} modes ({result['model']}), "
            f"{n_sig} significant after Benjamini-Yekutieli:"
        )
        for line in result["text"]:
            typer.echo(f"  {line}")
        if result["small_groups"]:
            typer.echo(
                "  not tested (n < 10): "
                + ", ".join(f"{g['attribute']}={g['group']} ({g['n']})" for g in result["small_groups"])
            )
        _emit(result, json_path)
