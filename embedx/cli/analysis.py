"""`embedx probe` and `embedx fairness`: parse arguments, call `embedx.analysis`, print tables.

Tables go to stdout (what a person reads); progress goes to stderr; `--json FILE` writes the design card's
document for scripts. Results are also written into the store unless `--no-write`.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def register(app: typer.Typer) -> None:
    """Add `probe` and `fairness` to the root app."""

    @app.command("probe")
    def probe_command(
        store: Path = typer.Argument(..., help="Store file (.h5)."),
        attributes: str | None = typer.Option(
            None,
            "--attributes",
            "-a",
            help="Comma-separated attributes (default: every attribute in the store).",
        ),
        name: list[str] = typer.Option([], "--name", "-n", help="Model(s) to probe (default: every model)."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the results document here."),
        folds: int = typer.Option(5, "--folds", help="Outer cross-validation folds (grouped by subject)."),
        permutations: int | None = typer.Option(
            None,
            "--permutations",
            help="Permutations per probe (default: max(1000, 40 x number of probes), "
            "so that Holm can reach p < 0.05).",
        ),
        bootstrap: int = typer.Option(
            2000, "--bootstrap", help="Subject-bootstrap resamples for the 95% CI."
        ),
        kernel: str = typer.Option(
            "linear", "--kernel", help="linear (default) or rbf (Nystroem above 10k)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed for folds, subsamples, permutations, bootstrap."),
        controls: bool = typer.Option(
            False,
            "--controls",
            help="Also run the confound controls of the "
            "--control-attribute probe: within strata and after ComBat.",
        ),
        control_attribute: str = typer.Option(
            "site", "--control-attribute", help="Attribute the controls target (default site)."
        ),
        within: str = typer.Option(
            "sex,age",
            "--within",
            help="Strata for the within-strata control "
            "(continuous ones in bands: age <40, 40-59, 60-79, 80+).",
        ),
        covariates: str = typer.Option("sex,age", "--covariates", help="Covariates ComBat preserves."),
        no_write: bool = typer.Option(False, "--no-write", help="Do not store the results in the store."),
    ) -> None:
        """Probe each attribute from each model's latents: score, 95% CI, chance, Holm-corrected verdict.

        Classes: scaled linear SVM (balanced accuracy, macro AUC); continuous: linear SVR (MAE, R2). Folds
        keep each subject on one side; chance is a Dummy baseline on the same folds; p-values come from
        subject-level permutations; 'encoded' needs Holm-adjusted p < 0.05 and the CI clear of chance.
        """
        from embedx.analysis.probes import ProbeConfig, run_probes
        from embedx.analysis.results import (
            build_document,
            poster_rich_table,
            probe_rich_table,
            terminal_console,
            write_json,
        )
        from embedx.errors import EmbedxError

        if kernel not in ("linear", "rbf"):
            raise EmbedxError(f"--kernel must be linear or rbf, got {kernel!r}")
        results = run_probes(
            store,
            models=name or None,
            attributes=_split(attributes),
            folds=folds,
            n_permutations=permutations,
            n_bootstrap=bootstrap,
            seed=seed,
            kernel=kernel,
            write=not no_write,
        )  # type: ignore[arg-type]
        out = terminal_console()
        out.print(probe_rich_table(results, title=f"Probes of {store.name}"))
        if len({r["model"] for r in results}) > 1:
            out.print(poster_rich_table(results))
        extra = {}
        if controls:
            from embedx.analysis.combat import run_confound_controls

            perms = permutations or 1000
            cfg = ProbeConfig(folds=folds, n_permutations=perms, n_bootstrap=bootstrap, seed=seed)
            outputs = run_confound_controls(
                store,
                name or None,
                attribute=control_attribute,
                within=_split(within) or [],
                covariates=_split(covariates) or [],
                config=cfg,
                write=not no_write,
            )
            for o in outputs:
                if o["control"] == "within_strata":
                    out.print(
                        probe_rich_table(
                            o["strata"],
                            title=f"{o['model']}: {o['attribute']} within {' x '.join(o['within'])} strata",
                        )
                    )
                else:
                    out.print(probe_rich_table(o["before"], title=f"{o['model']}: before ComBat"))
                    out.print(
                        probe_rich_table(
                            o["after"],
                            title=f"{o['model']}: after ComBat by {o['batch']} "
                            f"(fit on training folds; keeps {', '.join(o['covariates'])})",
                        )
                    )
            extra["controls"] = outputs
        if json_path is not None:
            write_json(build_document(store, probes=results, **extra), json_path)
            typer.echo(f"wrote {json_path}", err=True)

    @app.command("fairness")
    def fairness_command(
        store: Path = typer.Argument(..., help="Store file (.h5)."),
        target: str = typer.Option(..., "--target", "-t", help="Attribute to predict (e.g. finding)."),
        sensitive: str | None = typer.Option(
            None,
            "--sensitive",
            "-s",
            help="Comma-separated sensitive attributes (default: every demographic attribute).",
        ),
        model: str | None = typer.Option(
            None, "--model", "--name", "-n", help="Model (default: every model)."
        ),
        json_path: Path | None = typer.Option(None, "--json", help="Write the results document here."),
        positive: str | None = typer.Option(
            None, "--positive", help="Positive class of the target (needed when it has more than two values)."
        ),
        threshold: str = typer.Option(
            "youden", "--threshold", help="Operating point rule on validation folds: youden or fpr."
        ),
        target_fpr: float = typer.Option(0.2, "--target-fpr", help="FPR for --threshold fpr."),
        min_group_n: int = typer.Option(30, "--min-group-n", help="Smaller groups are marked too small."),
        min_group_class: int = typer.Option(
            5, "--min-group-class", help="Fewer positives or negatives: too small."
        ),
        intersections: str = typer.Option("pairs", "--intersections", help="pairs, all or none."),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Subject-bootstrap resamples."),
        folds: int = typer.Option(5, "--folds", help="Outer folds (grouped by subject)."),
        seed: int = typer.Option(0, "--seed", help="Seed for folds and resampling."),
        no_write: bool = typer.Option(False, "--no-write", help="Do not store the results in the store."),
    ) -> None:
        """Fairness of a probe for TARGET, per sensitive attribute and per intersection.

        Out-of-fold predictions of the target probe, thresholded at an operating point chosen on validation
        folds, go into fairlearn's MetricFrame: per group n, positives, accuracy, TPR, FPR, AUC, selection
        rate and ECE with subject-bootstrap CIs, and the DP / EO / equal-opportunity gaps.
        """
        from embedx.analysis.fairness import FairnessConfig, run_fairness
        from embedx.analysis.results import build_document, fairness_rich_table, terminal_console, write_json
        from embedx.errors import EmbedxError

        if threshold not in ("youden", "fpr"):
            raise EmbedxError(f"--threshold must be youden or fpr, got {threshold!r}")
        if intersections not in ("pairs", "all", "none"):
            raise EmbedxError(f"--intersections must be pairs, all or none, got {intersections!r}")
        cfg = FairnessConfig(
            folds=folds,
            threshold_rule=threshold,
            target_fpr=target_fpr,  # type: ignore[arg-type]
            min_group_n=min_group_n,
            min_group_class=min_group_class,
            n_bootstrap=bootstrap,
            intersections=intersections,
            seed=seed,
        )  # type: ignore[arg-type]
        results = run_fairness(
            store, target, _split(sensitive), model, write=not no_write, positive=positive, config=cfg
        )
        out = terminal_console()
        for r in results:
            out.print(fairness_rich_table(r))
            out.print()
        if json_path is not None:
            write_json(build_document(store, fairness=results), json_path)
            typer.echo(f"wrote {json_path}", err=True)
