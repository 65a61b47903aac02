"""Errors a user can cause and fix: the CLI prints their message as one line and exits with 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserInputError(ValueError):
    """Bad input from the user (a flag, a file, a field): the message names it and what is expected."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`" (did you mean 'budget'?)"` for the known name closest to a mistyped one, or `""` when
    none is close: the hint an unknown-name error adds before listing what is expected."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
