"""Progress display shared by every long-running step (rate and ETA on a rich bar)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Progress and status go to stderr so that stdout stays clean for results that scripts parse.
console = Console(stderr=True)


def _disabled() -> bool:
    return os.environ.get("EMBEDX_NO_PROGRESS", "") not in ("", "0")


class RateColumn(TextColumn):
    """Items per second, with the unit of the task (img/s, samples/s)."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[override]
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        text = "?" if speed is None else f"{speed:,.1f}"
        return f"{text} {unit}/s"


@contextmanager
def progress_bar(total: int | None, description: str, unit: str = "it") -> Iterator[Callable[..., None]]:
    """Yield an `advance(n=1)` callable that moves a bar showing count, rate and ETA.

    Disabled (a no-op) when EMBEDX_NO_PROGRESS is set, e.g. in tests, or on non-main processes.
    """
    if _disabled():
        yield lambda n=1, **_: None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=not sys.stderr.isatty(),
    )
    with progress:
        task = progress.add_task(description, total=total, unit=unit)

        def advance(n: int = 1, **fields: object) -> None:
            progress.update(task, advance=n, **fields)

        yield advance
