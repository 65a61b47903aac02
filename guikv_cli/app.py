"""The `guikv` command: a Typer app whose subcommands live one per module.

User mistakes (`UserInputError`) become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from importlib import import_module

import typer
from rich.console import Console

from guikv import __version__
from guikv.errors import UserInputError

COMMAND_MODULES: tuple[str, ...] = ()
"""Each module defines `register(app)` adding its subcommand."""

app = typer.Typer(
    name="guikv",
    help="GUI-KV: KV-cache compression for GUI agents (UI-TARS, OpenCUA and other Qwen-VL agents).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"guikv {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """KV-cache compression for GUI agents: infer, eval, analyze-attention, compare."""


for _module in COMMAND_MODULES:
    import_module(_module).register(app)


def main() -> None:
    """Entry point of the `guikv` console script."""
    try:
        app()
    except UserInputError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
