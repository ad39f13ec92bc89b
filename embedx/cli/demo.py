"""`embedx demo`: the whole flow on the built-in synthetic cohort."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(
            Path("embedx-demo"), "--out", help="Folder for the cohort, runs, store and report."
        ),
        quick: bool = typer.Option(False, "--quick", help="Small cohort and images: a few CPU minutes."),
        kind: str = typer.Option("cxr", "--kind", help="Synthetic cohort: cxr (chest X-ray) or mri (brain)."),
        seed: int = typer.Option(0, "--seed", help="Seed for the cohort and every model."),
    ) -> None:
        """Synthesise a cohort with known signatures, train VAE/DAE/CNN, encode, project, probe, run the
        fairness and control analyses, write the report, and compare what was found with what was injected."""
        from embedx.demo import run_demo

        summary = run_demo(out, quick=quick, kind=kind, seed=seed)
        if not summary["all_agree"]:
            raise typer.Exit(code=1)
