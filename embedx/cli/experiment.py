"""`embedx experiment shift`: seed 001's train-on-one-group / test-on-each study, in 2-D or 3-D (Typer
sub-app)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

# Options a --config YAML may set (the command line still wins over it).
CONFIG_KEYS = (
    "by",
    "target",
    "task",
    "dims",
    "difficulty",
    "tiers",
    "train_on",
    "positive",
    "size",
    "shape",
    "spacing",
    "window",
    "width",
    "augment",
    "replicates",
    "epochs",
    "batch_size",
    "lr",
    "test_fraction",
    "min_lesion_ml",
    "mixed_precision",
    "bootstrap",
    "workers",
    "seed",
)


INT_KEYS = ("dims", "size", "replicates", "epochs", "batch_size", "bootstrap", "workers", "seed")
FLOAT_KEYS = ("spacing", "width", "lr", "test_fraction", "min_lesion_ml")


def _fmt(mean: float | None, sd: float | None) -> str:
    """mean±sd; no ± when the sd is undefined (one replicate)."""
    return "-" if mean is None else f"{mean:.2f}" + ("" if sd is None else f"±{sd:.2f}")


def _apply_config(ctx: typer.Context, values: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """Values from `--config` for every option left at its default on the command line."""
    if path is None:
        return values
    import yaml

    from embedx.errors import EmbedxError

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise EmbedxError(f"--config {path}: {err}") from None
    if not isinstance(loaded, dict):
        raise EmbedxError(f"--config {path}: expected a mapping of option: value")
    unknown = sorted(set(loaded) - set(CONFIG_KEYS))
    if unknown:
        raise EmbedxError(
            f"--config {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(CONFIG_KEYS)})"
        )
    out = dict(values)
    for key, value in loaded.items():
        source = ctx.get_parameter_source(key)  # typer vendors click: compare the enum by name
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            value = ",".join(map(str, value)) if isinstance(value, list) else value
            cast = int if key in INT_KEYS else float if key in FLOAT_KEYS else None
            if cast is not None and value is not None:  # the type the command line would have checked
                try:
                    if isinstance(value, bool) or (cast is int and float(value) != int(float(value))):
                        raise ValueError
                    value = cast(float(value)) if cast is int else cast(value)
                except (TypeError, ValueError):
                    kind = "a whole number" if cast is int else "a number"
                    raise EmbedxError(f"--config {path}: {key}: expected {kind}, got {value!r}") from None
            out[key] = value
    return out


def _ci_text(ci: list[float] | None) -> str:
    return "" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _print_matrix(result: dict[str, Any]) -> None:
    """Cells with both uncertainties, then the paired contrasts that test the seed's finding.

    A cell's sd is over training replicates only; its bracket is the 95 % subject-bootstrap interval (the
    test set's uncertainty, usually the larger). Whether a group's own model is better is read from the
    contrasts (same test subjects on both sides), never from two cells of different test groups.
    """
    from embedx.analysis.shift_contrasts import describe

    metric = result["headline"]
    groups = result["train_groups"]
    width = max(14, *(len(g) for g in groups)) + 2
    cells = {(r["tier"], r["train"], r["test"]): r for r in result["summary"]}
    reps = result["settings"].get("replicates")
    for tier in result["tiers"]:
        typer.echo(
            f"\n{result['target']} {metric}, tier {tier}: rows trained on / columns tested on "
            f"({result['by']}); mean±sd over {reps} training replicate(s), [95 % CI over test subjects]"
        )
        typer.echo(" " * width + "".join(f"{g:>{width}}" for g in groups))
        for train in groups:
            row = [cells.get((tier, train, test), {}) for test in groups]
            typer.echo(
                f"{train:<{width}}"
                + "".join(f"{_fmt(c.get(f'{metric}_mean'), c.get(f'{metric}_sd')):>{width}}" for c in row)
            )
            typer.echo(" " * width + "".join(f"{_ci_text(c.get(f'{metric}_ci')):>{width}}" for c in row))
    contrasts = result.get("contrasts")
    if contrasts is None:  # a result written before the paired contrasts: say what its gaps are
        typer.echo("(no paired contrasts in this result; its own-vs-other-groups gaps are confounded with "
                   "how hard each group's test images are, and are not shown)")
        return
    for shown in dict.fromkeys([metric, "specificity"]):
        for tier in result["tiers"]:
            rows = [c for c in contrasts if c["metric"] == shown and c["tier"] == tier]
            if not rows:
                continue
            typer.echo(
                f"\n{shown}, tier {tier}: own-group model minus another's, on the same test subjects "
                "(difference [95 % CI], bootstrap p; Holm over the headline contrasts)"
            )
            for c in rows:
                typer.echo(("  " if c["headline"] else "    ") + describe(c))


def register(app: typer.Typer) -> None:
    """Add the `experiment` group to the root app."""
    experiment = typer.Typer(help="Supervised experiments of the seed papers.", no_args_is_help=True)
    app.add_typer(experiment, name="experiment")

    @experiment.command("shift")
    def shift_command(
        ctx: typer.Context,
        manifest: Path = typer.Option(..., "--manifest", "-m", help="Manifest (CSV or Parquet)."),
        by: str = typer.Option("manufacturer", "--by", help="Grouping to train on / test on."),
        target: str = typer.Option("finding", "--target", "-t", help="Binary label the models learn."),
        dims: int = typer.Option(
            2,
            "--dims",
            help="2: seed 000's CNN on images; 3: MONAI 3-D networks on "
            "whole NIfTI volumes, as seed 001 did.",
        ),
        task: str = typer.Option(
            "classify",
            "--task",
            help="classify (detect a lesion) or segment (outline "
            "it; 3-D only, needs a lesion_mask column). 'detect' = classify.",
        ),
        out: Path = typer.Option(
            Path("shift"),
            "--out",
            "-o",
            help="Folder for shift.json/.csv/.png (and, in 3-D, the progress a re-run resumes from).",
        ),
        config: Path | None = typer.Option(
            None,
            "--config",
            help="YAML of these options (e.g. the seed's "
            "scale: configs/seed001_shift3d.yaml); the command line wins.",
        ),
        difficulty: str = typer.Option(
            "auto",
            "--difficulty",
            help="Column with each positive's "
            "difficulty (auto: <target>_difficulty if present; none: one tier).",
        ),
        tiers: str | None = typer.Option(None, "--tiers", help="Subset of difficulties, e.g. easy,hard."),
        train_on: str | None = typer.Option(None, "--train-on", help="Train only these groups, e.g. GE,all "
                                            "(default: each group and all mixed); every model is still "
                                            "tested on every group. A later run with other groups may "
                                            "reuse --out."),
        positive: str | None = typer.Option(None, "--positive", help="Positive value of the target."),
        size: int = typer.Option(64, "--size", help="2-D: image side the detector sees (seed 001: 256)."),
        shape: str = typer.Option(
            "48", "--shape", help="3-D: the voxel grid, one size or three (seed 001: 256,256,32)."
        ),
        spacing: float | None = typer.Option(
            None,
            "--spacing",
            help="3-D: resample to this isotropic spacing (mm) and pad/crop to --shape, instead of resizing.",
        ),
        window: str = typer.Option(
            "auto",
            "--window",
            help="3-D intensities: auto (CT: the seed's HU "
            "window 50,100; else percentile), percentile, or LEVEL,WIDTH.",
        ),
        width: float = typer.Option(1.0, "--width", help="3-D: channels relative to the seed's networks."),
        augment: str = typer.Option(
            "flip", "--augment", help="3-D: none, flip, or affine (flip + small rotations, shifts, zooms)."
        ),
        replicates: int = typer.Option(3, "--replicates", help="Models per condition (mean ± sd)."),
        epochs: int = typer.Option(15, "--epochs"),
        batch_size: int = typer.Option(32, "--batch-size", help="Global batch (3-D: over all processes)."),
        lr: float | None = typer.Option(
            None,
            "--lr",
            help="Learning rate (default: 2-D 1e-3; 3-D the seed's, 5e-5 classify / 1e-4 segment).",
        ),
        test_fraction: float = typer.Option(0.3, "--test-fraction", help="Share of subjects held out."),
        min_lesion_ml: float = typer.Option(
            1.0,
            "--min-lesion-ml",
            help="segment: a volume is called positive when the predicted lesion covers this many mL.",
        ),
        mixed_precision: str = typer.Option(
            "auto", "--mixed-precision", help="3-D: auto (bf16 on a GPU), no, bf16, fp16."
        ),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Subject-bootstrap resamples per cell."),
        restart: bool = typer.Option(False, "--restart", help="3-D: discard the progress in --out."),
        store: Path | None = typer.Option(
            None,
            "--store",
            help="Also write the result into this store "
            "(the report and the dashboard's Controls page show it).",
        ),
        workers: int = typer.Option(0, "--workers", help="2-D: DataLoader workers for reading the images."),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Train a model on each group (and all mixed), per lesion difficulty; test it on every group.

        Run it under `accelerate launch` to train each 3-D model on several GPUs or CPU processes.
        """
        from embedx.errors import EmbedxError

        o = _apply_config(ctx, dict(locals()), config)
        task_name = "classify" if o["task"] == "detect" else o["task"]
        if task_name not in ("classify", "segment"):
            raise EmbedxError(f"--task {o['task']!r}: use classify (or detect) or segment")
        if int(o["dims"]) not in (2, 3):
            raise EmbedxError(f"--dims {o['dims']}: use 2 or 3")
        tier_list = [t.strip() for t in str(o["tiers"]).split(",") if t.strip()] if o["tiers"] else None
        train_list = ([g.strip() for g in str(o["train_on"]).split(",") if g.strip()] if o["train_on"]
                      else None)
        diff = None if o["difficulty"] == "none" else o["difficulty"]
        request = {"difficulty": diff, "tiers": tier_list, "positive": o["positive"], "train_on": train_list}
        shared = {key: int(o[key]) for key in ("replicates", "epochs", "batch_size", "bootstrap", "seed")}
        shared["test_fraction"] = float(o["test_fraction"])
        if int(o["dims"]) == 2:
            if task_name == "segment":
                raise EmbedxError("--task segment runs on volumes: add --dims 3 (seed 001's 3-D U-Net)")
            from embedx.analysis.shift import ShiftSettings, shift_experiment

            settings = ShiftSettings(size=int(o["size"]), lr=float(o["lr"] or 1e-3),
                                     workers=int(o["workers"]), **shared)
            result = shift_experiment(o["manifest"], o["by"], o["target"], settings=settings, **request)
        else:
            from embedx.analysis.shift_volumes import VolumeShiftSettings, shift_volumes
            from embedx.data.volumes import VolumeGrid, parse_shape

            grid = VolumeGrid(
                shape=parse_shape(str(o["shape"])),
                spacing_mm=None if o["spacing"] is None else float(o["spacing"]),
                window=str(o["window"]),
            )
            settings3 = VolumeShiftSettings(
                task=task_name, grid=grid, width=float(o["width"]),
                lr=None if o["lr"] is None else float(o["lr"]),
                augment=str(o["augment"]), min_lesion_ml=float(o["min_lesion_ml"]),
                mixed_precision=str(o["mixed_precision"]), **shared,
            )
            result = shift_volumes(o["manifest"], o["by"], o["target"], o["out"], settings=settings3,
                                   restart=bool(o["restart"]), **request)
        _write_outputs(result, Path(o["out"]), store)


def _write_outputs(result: dict[str, Any], out: Path, store: Path | None) -> None:
    """shift.json / .csv / heat-maps (main process only), the store entry, and the printed matrix."""
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    import pandas as pd

    from embedx.analysis.results import write_json
    from embedx.report.control_figures import shift_figure
    from embedx.report.figures import png_bytes

    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / "shift.json")
    frame = pd.DataFrame(result["summary"])
    for column in [c for c in frame.columns if c.endswith("_ci")]:  # one number per CSV cell
        frame[f"{column}_low"] = [None if v is None else v[0] for v in frame[column]]
        frame[f"{column}_high"] = [None if v is None else v[1] for v in frame[column]]
        frame = frame.drop(columns=column)
    frame.to_csv(out / "shift.csv", index=False)
    written = [out / "shift.json", out / "shift.csv"]
    for metric in dict.fromkeys([result["headline"], "specificity"]):
        path = out / f"shift_{metric}.png"
        path.write_bytes(png_bytes(shift_figure(result, metric=metric)))
        written.append(path)
    if store is not None:
        from embedx.store.h5store import Store

        with Store.open(store, "a") as handle:
            handle.write_analysis(
                "controls",
                f"shift__{result['dims']}d__{result['task']}__{result['target']}__{result['by']}",
                {**result, "control": "shift"},
            )
        written.append(store)
    _print_matrix(result)
    for skip in result["skipped"]:
        typer.echo(f"skipped {skip['tier']}/{skip['train']}: {skip['reason']}")
    if result["failed"]:
        typer.echo(f"{len(result['failed'])} unreadable file(s) left out (listed in shift.json)")
    typer.echo("wrote " + ", ".join(str(p) for p in written))
