"""Turning command-line values into validated objects, for every command line of the project:
the `guikv` subcommands and `python -m benchmarks.speed`.

A bad value becomes a `UserInputError` naming the command-line flag (not the Python field), so
the user sees e.g. `--budget 0 is invalid: expected a percentage in (0, 100]`. It lives here, below
`guikv_cli`, so that the benchmark scripts can use it without importing upward.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import typer

from benchmarks.plain_help import PlainHelpCommand
from guikv.config import CompressionConfig
from guikv.errors import UserInputError

FIELD_FLAGS = {
    "method": "--method",
    "budget": "--budget",
    "window_size": "--window-size",
    "alpha": "--alpha",
    "temperature": "--temperature",
    "kernel_size": "--kernel-size",
    "rank": "--rank",
}
"""The command-line flag of each `CompressionConfig` field that has one."""


def compression_config(**fields: Any) -> CompressionConfig:
    """A CompressionConfig from CLI values; a bad value is a one-line error naming its flag."""
    try:
        return CompressionConfig(**fields)
    except ValueError as error:
        message = str(error)
        match = re.match(r"CompressionConfig\.(\w+)=(.*?) is invalid: (.*)", message)
        if match and match.group(1) in FIELD_FLAGS:
            flag, value, expected = FIELD_FLAGS[match.group(1)], match.group(2), match.group(3)
            raise UserInputError(f"{flag} {value} is invalid: {expected}") from None
        raise UserInputError(message) from None


def quiet_transformers() -> None:
    """Silence transformers' progress bars and info logs, which would drown the rich output."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def parse_batch_sizes(text: str, flag: str = "--batch-sizes") -> list[int]:
    """Comma-separated batch sizes (integers >= 1), de-duplicated and sorted; empty text gives []."""
    sizes = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if not item.isdigit() or int(item) < 1:
            raise UserInputError(
                f"{flag}: {item!r} is invalid: expected comma-separated integers >= 1, e.g. 1,4,8"
            )
        sizes.append(int(item))
    return sorted(set(sizes))


def parse_percentages(text: str, flag: str = "--budgets") -> list[float]:
    """Comma-separated percentages in (0, 100], in the order given, duplicates dropped."""
    values: list[float] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise UserInputError(
                f"{flag}: {item!r} is not a number: expected percentages in (0, 100]"
            ) from None
        if not 0 < value <= 100:
            raise UserInputError(
                f"{flag}: {item} is outside (0, 100]: a budget is a percentage of the prompt"
            )
        if value not in values:
            values.append(value)
    if not values:
        raise UserInputError(
            f"{flag} is empty: expected comma-separated percentages in (0, 100], e.g. 1,5,10"
        )
    return values


def check_max_tokens(max_tokens: int | None, budgets_given: bool, window_size: int) -> None:
    """Check `--max-tokens` (a carried cache's fixed capacity per layer): it replaces `--budgets`
    and must hold the `--window-size` trailing tokens plus one."""
    if max_tokens is None:
        return
    if budgets_given:
        raise UserInputError("--max-tokens sets every step's capacity: give it or --budgets, not both")
    if max_tokens < window_size + 1:
        raise UserInputError(
            f"--max-tokens {max_tokens} is invalid: expected an integer >= --window-size + 1 "
            f"({window_size + 1})"
        )


def run_script(function: Callable[..., Any], args: Sequence[str] | None = None) -> None:
    """Run `function` as a Typer command line (a `python -m benchmarks.X` script) on `args` (default
    sys.argv): a user mistake (`UserInputError`, a bad flag) is one line on stderr and exit code 2;
    `--help` shows the same plain metavars as guikv's own commands."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(cls=PlainHelpCommand)(function)
    try:
        app(args=list(args) if args is not None else None, standalone_mode=False)
    except (UserInputError, typer.TyperException) as error:
        message = str(error) if isinstance(error, UserInputError) else error.format_message()
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(2)
