"""The `guikv` command: a Typer app whose subcommands live one per module.

User mistakes (`UserInputError`, and bad flags or values caught by the parser) become one line on
stderr and exit code 2, never a traceback. Ctrl-C in any command becomes one line saying what was
saved and how to resume, exit code 130 (`guikv_cli.interrupt`).
"""

from __future__ import annotations

import sys
from importlib import import_module

import typer
from rich.console import Console
from rich.markup import escape

from benchmarks.plain_help import PlainHelpCommand, PlainHelpGroup
from guikv import __version__
from guikv.errors import UserInputError
from guikv_cli.interrupt import INTERRUPTED_EXIT_CODE, Interrupted, interruptible, saved_work

COMMAND_MODULES: tuple[str, ...] = (
    "guikv_cli.infer",
    "guikv_cli.eval",
    "guikv_cli.analyze",
    "guikv_cli.compare",
    "guikv_cli.serve",
)
"""Each module defines `register(app)` adding its subcommand."""

app = typer.Typer(
    name="guikv",
    cls=PlainHelpGroup,
    help="GUI-KV: KV-cache compression for GUI agents (UI-TARS, OpenCUA and other Qwen-VL agents).",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"guikv {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    context: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """KV-cache compression for GUI agents: infer, eval, analyze-attention, compare, serve."""
    if context.invoked_subcommand is None:
        typer.echo(context.get_help())


for _module in COMMAND_MODULES:
    import_module(_module).register(app)
for _command in app.registered_commands:
    _command.callback = interruptible(_command.callback)
    _command.cls = PlainHelpCommand


def main() -> None:
    """Entry point of the `guikv` console script."""
    errors = Console(stderr=True)
    saved_work.clear()
    try:
        result = app(standalone_mode=False)
    except (UserInputError, typer.TyperException) as error:
        message = str(error) if isinstance(error, UserInputError) else error.format_message()
        context = getattr(error, "ctx", None)
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        line = escape(" ".join(message.split()) + hint)
        errors.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Interrupted:
        errors.print(saved_work.line(), highlight=False, markup=False, soft_wrap=True)
        sys.exit(INTERRUPTED_EXIT_CODE)
    except typer.Abort:
        errors.print("aborted")
        sys.exit(INTERRUPTED_EXIT_CODE)
    sys.exit(result if isinstance(result, int) else 0)
