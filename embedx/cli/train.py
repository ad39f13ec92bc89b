"""`embedx train vae|dae|cnn`: parse arguments, resolve the config, hand over to the training loop."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from embedx.errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add `embedx train` to the root app."""

    @app.command("train")
    def train_command(
        kind: str = typer.Argument(..., help="Model to train: vae, dae or cnn."),
        manifest: Path = typer.Option(..., "--manifest", "-m", help="Manifest (CSV or Parquet)."),
        config: Path | None = typer.Option(None, "--config", "-c",
                                           help="YAML with the settings that differ from the defaults."),
        set_: list[str] = typer.Option([], "--set", help="Override one setting, e.g. --set optim.lr=1e-3 "
                                       "or --set data.label=site (repeatable; applied last)."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default runs/<kind>-<time>)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last "
                                    "checkpoint (its saved config, plus any --set)."),
    ) -> None:
        """Train a VAE, diffusion autoencoder or CNN; runs unchanged under `accelerate launch -m embedx`.

        Prints the run folder (config.yaml, model.safetensors, run.json, metrics.csv, tb/, eval/) at the end.
        """
        from embedx.training.config import KINDS, load_config, merge_config, read_yaml
        from embedx.training.loop import train

        if kind not in KINDS:
            raise ConfigError(f"unknown model {kind!r}; expected one of {', '.join(KINDS)}")
        saved = out / "config.yaml" if out is not None else None
        if resume and config is None and saved is not None and saved.exists():
            # Resuming: the run's own resolved config is the base, so only --set changes need repeating.
            resolved = merge_config(read_yaml(saved), None, set_, kind=kind)
        else:
            resolved = load_config(kind, config, set_)
        run_dir = train(resolved, manifest, out, resume=resume)
        # the launcher's rank, not Accelerate's state: its process group is already torn down here
        if os.environ.get("RANK", "0") == "0":
            typer.echo(str(run_dir))
