"""`embedx experiment shift`: seed 001's train-on-one-group / test-on-each detector study (Typer sub-app)."""

from __future__ import annotations

from pathlib import Path

import typer


def _fmt(mean: float | None, sd: float | None) -> str:
    return "-" if mean is None else f"{mean:.2f}±{sd or 0:.2f}"


def register(app: typer.Typer) -> None:
    """Add the `experiment` group to the root app."""
    experiment = typer.Typer(help="Supervised experiments of the seed papers.", no_args_is_help=True)
    app.add_typer(experiment, name="experiment")

    @experiment.command("shift")
    def shift_command(
        manifest: Path = typer.Option(..., "--manifest", "-m", help="Manifest (CSV or Parquet)."),
        by: str = typer.Option("manufacturer", "--by", help="Grouping to train on / test on."),
        target: str = typer.Option("finding", "--target", "-t", help="Binary label the detector learns."),
        task: str = typer.Option("detect", "--task", help="detect (segment is not available yet)."),
        out: Path = typer.Option(Path("shift"), "--out", "-o", help="Folder for shift.json/.csv/.png."),
        difficulty: str = typer.Option("auto", "--difficulty", help="Column with each positive's "
                                       "difficulty (auto: <target>_difficulty if present; none: one tier)."),
        tiers: str | None = typer.Option(None, "--tiers", help="Subset of difficulties, e.g. easy,hard."),
        positive: str | None = typer.Option(None, "--positive", help="Positive value of the target."),
        size: int = typer.Option(64, "--size", help="Image side the detector sees (seed 001: 256)."),
        replicates: int = typer.Option(3, "--replicates", help="Models per condition (mean ± sd)."),
        epochs: int = typer.Option(15, "--epochs"),
        batch_size: int = typer.Option(32, "--batch-size"),
        lr: float = typer.Option(1e-3, "--lr"),
        test_fraction: float = typer.Option(0.3, "--test-fraction", help="Share of subjects held out."),
        workers: int = typer.Option(0, "--workers", help="DataLoader workers for reading the images."),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Train a detector on each group (and all mixed), per lesion difficulty; test it on every group."""
        from embedx.analysis.results import write_json
        from embedx.analysis.shift import ShiftSettings, shift_experiment
        from embedx.errors import EmbedxError
        from embedx.report.control_figures import shift_figure
        from embedx.report.figures import png_bytes

        if task != "detect":
            raise EmbedxError(f"--task {task!r}: only 'detect' is available; segmentation (seed 001's 3-D "
                              "U-Net on lesion masks) is not implemented")
        settings = ShiftSettings(size=size, replicates=replicates, epochs=epochs, batch_size=batch_size,
                                 lr=lr, test_fraction=test_fraction, seed=seed, workers=workers)
        result = shift_experiment(
            manifest, by, target, difficulty=None if difficulty == "none" else difficulty,
            tiers=[t.strip() for t in tiers.split(",") if t.strip()] if tiers else None,
            positive=positive, settings=settings,
        )
        out.mkdir(parents=True, exist_ok=True)
        write_json(result, out / "shift.json")
        import pandas as pd

        pd.DataFrame(result["summary"]).to_csv(out / "shift.csv", index=False)
        (out / "shift_auroc.png").write_bytes(png_bytes(shift_figure(result)))
        groups = result["train_groups"]
        width = max(9, *(len(g) for g in groups)) + 2
        cells = {(r["tier"], r["train"], r["test"]): r for r in result["summary"]}
        for tier in result["tiers"]:
            typer.echo(f"\n{target} AUROC, tier {tier}: rows trained on / columns tested on ({by})")
            typer.echo(" " * width + "".join(f"{g:>{width}}" for g in groups))
            for train in groups:
                row = [cells.get((tier, train, test), {}) for test in groups]
                typer.echo(f"{train:<{width}}" + "".join(
                    f"{_fmt(c.get('auroc_mean'), c.get('auroc_sd')):>{width}}" for c in row))
        for gap in result["gaps"]:
            if gap["train"] != "all":
                typer.echo(f"{gap['tier']}: trained on {gap['train']}: own {gap['auroc_own']:.2f} vs others "
                           f"{gap['auroc_others']:.2f} (gap {gap['gap']:+.2f})")
        for skip in result["skipped"]:
            typer.echo(f"skipped {skip['tier']}/{skip['train']}: {skip['reason']}")
        if result["failed"]:
            typer.echo(f"{len(result['failed'])} unreadable image(s) left out (listed in shift.json)")
        typer.echo(f"wrote {out / 'shift.json'}, {out / 'shift.csv'}, {out / 'shift_auroc.png'}")
