"""`embedx dashboard store.h5`: start the Streamlit explorer that ships inside the package."""

from __future__ import annotations

from pathlib import Path

import typer

from embedx.errors import EmbedxError


def register(app: typer.Typer) -> None:
    """Add `dashboard` to the root app."""

    @app.command("dashboard")
    def dashboard(
        store: Path = typer.Argument(..., help="The store (HDF5) to explore."),
        port: int = typer.Option(8501, "--port", "-p", help="Port to serve on."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    ) -> None:
        """Explore a store in the browser: maps, selections, neighbours, clusters, probes, fairness."""
        from embedx.dashboard.launch import launch
        from embedx.store.h5store import Store

        if not store.exists():
            raise EmbedxError(f"store {store} does not exist (create it with `embedx encode`)")
        with Store.open(store, "r"):  # a file that is not a readable store fails here, not in the browser
            pass
        raise typer.Exit(launch(store, port=port, host=host))
