"""The `embedx` command line: a thin Typer layer over the library.

Each area registers its own commands from its module here (data, train, store, analysis, dashboard,
demo) so that the command modules stay small and parse arguments only; the work lives in the library.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from embedx._version import __version__
from embedx.errors import EmbedxError
from embedx.logs import configure_logging
from embedx.progress import console

app = typer.Typer(
    name="embedx",
    help="Show what medical images carry besides anatomy and disease: site, scanner, view, sex, age.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"embedx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging (-v info, -vv debug)."),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    configure_logging(verbose)


def _register_all() -> None:
    from embedx.cli import analysis, controls, dashboard, data, demo, experiment, report, store, train

    for module in (data, train, store, analysis, controls, experiment, report, dashboard, demo):
        module.register(app)


_register_all()


def main() -> None:
    """Entry point: user errors print one clear message and exit 2, bugs keep their traceback."""
    try:
        app(standalone_mode=False)
        _exit_launched_process(0)
    except EmbedxError as error:  # soft_wrap: a path in the message stays whole, to be copied
        console.print(f"[bold red]error:[/] {error}", soft_wrap=True)
        sys.exit(2)
    except OSError as error:  # a path the user gave cannot be written or read: theirs to fix, not a bug
        where = f"{error.filename}: " if error.filename else ""
        hint = " (the disk is full)" if error.errno == 28 else ""
        console.print(f"[bold red]error:[/] {where}{error.strerror or error}{hint}", soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as error:  # click usage errors arrive here in standalone_mode=False
        if isinstance(error, _usage_error_types()):
            error.show()  # type: ignore[attr-defined]
            sys.exit(error.exit_code)  # type: ignore[attr-defined]
        raise


def _exit_launched_process(code: int) -> None:
    """Leave a process started by `accelerate launch` / torchrun without the interpreter's C++ teardown.

    After a finished multi-process run, about 2 exits in 100 abort a non-main rank with "terminate called
    without an active exception" (SIGABRT, no Python frame; pytorch/pytorch#190489): a joinable C++ thread
    meets its destructor during static teardown. The launcher then reports the whole run as failed although
    every file was written. All files are closed by now, so flushing the streams and the log handlers and
    calling `os._exit` loses nothing and skips the teardown that aborts. A single process exits as usual.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    logging.shutdown()
    os._exit(code)


def _usage_error_types() -> tuple[type, ...]:
    """Click's exception base class: typer >= 0.2x vendors its own click, which `import click` misses."""
    found = [cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"]
    try:
        import click

        found.append(click.exceptions.ClickException)
    except ImportError:
        pass
    return tuple(found)
