"""`embedx probe`, `embedx fairness` and `embedx calibrate`: parse arguments, call `embedx.analysis`, print.

Tables go to stdout (what a person reads); progress goes to stderr; `--json FILE` writes the design card's
document for scripts. Results are also written into the store unless `--no-write`.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def register(app: typer.Typer) -> None:
    """Add `probe`, `fairness` and `calibrate` to the root app."""

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
            "so that Holm over the whole table can reach p < 0.05).",
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

        Classes: class-balanced linear SVM (balanced accuracy, chance 1/K; macro AUC); continuous: linear SVR
        (MAE against the median baseline, R2). Folds keep each subject on one side; p-values come from
        subject-level permutations on label-free folds; 'encoded' needs the Holm-adjusted p < 0.05 (over the
        whole table printed), the CI clear of chance and a probe that predicts more than one value.
        """
        from embedx.analysis.probes import ProbeConfig, run_probes
        from embedx.analysis.results import build_document, write_json
        from embedx.analysis.tables import family_line, poster_rich_table, probe_rich_table, terminal_console
        from embedx.errors import EmbedxError

        if kernel not in ("linear", "rbf"):
            raise EmbedxError(f"--kernel must be linear or rbf, got {kernel!r}")
        if bootstrap < 1:
            raise EmbedxError("--bootstrap must be at least 1: the verdict needs the confidence interval")
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
        out.print(family_line(results))
        if len({r["model"] for r in results}) > 1:
            out.print(poster_rich_table(results))
        extra = {}
        if json_path is not None:  # before the controls, which take long and can stop on a small site
            write_json(build_document(store, probes=results), json_path)
        if controls:
            from embedx.analysis.combat import run_confound_controls

            perms = permutations or 1000
            cfg = ProbeConfig(folds=folds, n_permutations=perms, n_bootstrap=bootstrap, seed=seed)
            try:
                outputs = run_confound_controls(
                    store,
                    name or None,
                    attribute=control_attribute,
                    within=_split(within) or [],
                    covariates=_split(covariates) or [],
                    config=cfg,
                    write=not no_write,
                )
            except EmbedxError as error:
                kept = f"; the probes above are in {json_path}" if json_path is not None else ""
                raise EmbedxError(f"{error}{kept}") from error
            for o in outputs:
                if o["control"] == "within_strata":
                    out.print(
                        probe_rich_table(
                            o.strata,
                            title=f"{o['model']}: {o['attribute']} within {' x '.join(o['within'])} strata",
                        )
                    )
                    out.print(family_line(o.strata))
                else:
                    out.print(probe_rich_table(o.before, title=f"{o['model']}: before ComBat"))
                    out.print(family_line(o.before))
                    out.print(
                        probe_rich_table(
                            o.after,
                            title=f"{o['model']}: after ComBat by {o['batch']} "
                            f"(fit on training folds, applied blind; keeps {', '.join(o['covariates'])})",
                        )
                    )
                    out.print(family_line(o.after))
                    for value, why in o.excluded_sites.items():
                        left = f"left out of the ComBat control: {o['batch']}={value} ({why})"
                        out.print(left, soft_wrap=True)
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
        min_group_n: int = typer.Option(
            30, "--min-group-n", help="Groups with fewer subjects are marked too small."
        ),
        min_group_class: int = typer.Option(
            20, "--min-group-class", help="Fewer positive or negative subjects: too small for the gaps."
        ),
        intersections: str = typer.Option("pairs", "--intersections", help="pairs, all or none."),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Subject-bootstrap resamples."),
        permutations: int = typer.Option(
            1000, "--resamples", "--permutations",
            help="Subject resamples for each gap's p-value (a Welch bootstrap-t test).",
        ),
        folds: int = typer.Option(5, "--folds", help="Outer folds (grouped by subject)."),
        seed: int = typer.Option(0, "--seed", help="Seed for folds and resampling."),
        no_write: bool = typer.Option(False, "--no-write", help="Do not store the results in the store."),
    ) -> None:
        """Fairness of a probe for TARGET, per sensitive attribute and per intersection.

        Out-of-fold predictions of the target probe, thresholded at an operating point chosen on validation
        folds, go into fairlearn's MetricFrame: per group n (rows and subjects), positives, accuracy, TPR,
        FPR, AUC, selection rate and ECE with subject-bootstrap CIs; the DP / EO / equal-opportunity gaps
        with the signed difference between the two extreme groups, its interval and a p-value for "no gap"
        (Welch's statistic over the groups, bootstrap-t over subjects resampled within each group).
        """
        from embedx.analysis.fairness import FairnessConfig, run_fairness
        from embedx.analysis.fairness_metrics import GroupRules
        from embedx.analysis.probe_core import ProbeConfig
        from embedx.analysis.results import build_document, write_json
        from embedx.analysis.tables import fairness_rich_table, terminal_console
        from embedx.errors import EmbedxError

        if threshold not in ("youden", "fpr"):
            raise EmbedxError(f"--threshold must be youden or fpr, got {threshold!r}")
        if intersections not in ("pairs", "all", "none"):
            raise EmbedxError(f"--intersections must be pairs, all or none, got {intersections!r}")
        cfg = FairnessConfig(
            probe=ProbeConfig(folds=folds, seed=seed),
            threshold_rule=threshold,  # type: ignore[arg-type]
            target_fpr=target_fpr,
            rules=GroupRules(
                min_group_n=min_group_n,
                min_group_class=min_group_class,
                n_bootstrap=bootstrap,
                n_permutations=permutations,
                seed=seed,
            ),
            intersections=intersections,  # type: ignore[arg-type]
        )
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

    @app.command("calibrate")
    def calibrate_command(
        store: Path = typer.Argument(..., help="Store file (.h5)."),
        name: list[str] = typer.Option(
            [], "--name", "-n", help="Model(s) to calibrate (default: every model)."
        ),
        null_labels: int = typer.Option(200, "--null", help="Random labels with no link to the images."),
        planted: int = typer.Option(200, "--planted", help="Labels planted along random latent directions."),
        prevalences: str = typer.Option(
            "0.01,0.05,0.2,0.5", "--prevalences", help="Prevalences of the planted binary labels."
        ),
        effects: str = typer.Option(
            "0.2,0.5,0.8", "--effects", help="Effects (Cohen's d along the direction) of the planted labels."
        ),
        correlations: str = typer.Option(
            "0.1,0.3",
            "--correlations",
            help="Correlations of planted continuous labels with their direction.",
        ),
        null_permutations: int | None = typer.Option(
            None,
            "--null-permutations",
            help="Permutations per null label (>= 2 m / 0.05 measures Holm's rate); default 199, or "
            "2 m / 0.05 - 1 up to 399.",
        ),
        probe_checks: int | None = typer.Option(
            None,
            "--probe-checks",
            help="Planted labels per cell that pass p and are re-run through the probe to apply its CI and "
            "degeneracy criteria (default: all where cheap, at least 4 where each costs seconds).",
        ),
        json_path: Path | None = typer.Option(None, "--json", help="Write the results here."),
        figure: Path | None = typer.Option(None, "--figure", help="Write the power figure (PNG) here."),
        seed: int = typer.Option(0, "--seed", help="Seed for labels, directions and permutations."),
        no_write: bool = typer.Option(False, "--no-write", help="Do not store the results in the store."),
    ) -> None:
        """How often this store's audit calls a label with no link to the images encoded, and how often it
        finds a real one, measured on the store's own latents and subjects (no ground truth needed).

        Null labels re-draw each real attribute's values at random per subject; planted labels follow a
        random latent direction at each prevalence x effect. Both go through the probes' permutation test;
        a planted label is found when `embedx probe` would call it encoded: its p-value clears Holm's
        threshold for this store's probe table and the probe, re-run on it, has its CI clear of chance and is
        not degenerate. A class in fewer subjects than folds is untestable (the probe skips it): power 0.
        """
        from embedx.analysis.calibration import CalibrationSettings, run_calibration
        from embedx.analysis.results import write_json
        from embedx.analysis.tables import calibration_rich_table, terminal_console
        from embedx.errors import EmbedxError

        def floats(text: str, flag: str) -> tuple[float, ...]:
            try:
                return tuple(float(v) for v in _split(text) or [])
            except ValueError as err:
                raise EmbedxError(f"{flag} takes comma-separated numbers, got {text!r}") from err

        settings = CalibrationSettings(
            n_null=null_labels,
            n_planted=planted,
            prevalences=floats(prevalences, "--prevalences"),
            effects=floats(effects, "--effects"),
            correlations=floats(correlations, "--correlations"),
            null_permutations=null_permutations,
            probe_checks=probe_checks,
            seed=seed,
        )
        results = run_calibration(store, name or None, settings, write=not no_write)
        out = terminal_console()
        for r in results:
            out.print(calibration_rich_table(r))
            false_positive = [line for line in r.text if line.startswith("False-positive")]
            caveats = [  # cells whose number alone would mislead: untestable, effect not reached, estimated
                line
                for line, row in zip(r.text[len(false_positive) :], r.power, strict=True)
                if row.get("untestable") or not row.get("effect_reached", True) or row.get("found_estimated")
            ]
            for line in false_positive + caveats:
                out.print(line)
        if figure is not None:
            from embedx.report.figures import calibration_figure, png_bytes

            figure.parent.mkdir(parents=True, exist_ok=True)
            figure.write_bytes(png_bytes(calibration_figure(results)))
            typer.echo(f"wrote {figure}", err=True)
        if json_path is not None:
            write_json({"calibration": [r.to_dict() for r in results]}, json_path)
            typer.echo(f"wrote {json_path}", err=True)
