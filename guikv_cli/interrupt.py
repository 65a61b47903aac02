"""Ctrl-C, the same for every command: one line saying what was saved and how to resume, exit 130.

A command tells `saved_work` what it has written so far as it goes (a function, asked only when
Ctrl-C comes, so the line counts what is on disk at that moment). `interruptible` wraps every
command so that Ctrl-C reaches `guikv_cli.app.main` as `Interrupted` (typer would turn a
KeyboardInterrupt into a silent exit 130), and `interrupted_line` is the line `main` prints.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

NOTHING_SAVED = "nothing was saved yet; re-run the same command to start again"
INTERRUPTED_EXIT_CODE = 130
"""128 + SIGINT, what shells report for a program stopped by Ctrl-C."""


class Interrupted(BaseException):
    """Ctrl-C inside a command, carried past typer to `main` (a BaseException, like
    KeyboardInterrupt, so that no `except Exception` records it as a failed sample)."""


class SavedWork:
    """What the running command has saved so far and how to resume it, as a function of nothing
    that returns that text (None: nothing saved yet)."""

    def __init__(self) -> None:
        self._describe: Callable[[], str | None] = lambda: None

    def set(self, describe: Callable[[], str | None]) -> None:
        """From now on Ctrl-C reports `describe()` (called when Ctrl-C comes)."""
        self._describe = describe

    def clear(self) -> None:
        """Nothing saved (a new command starts)."""
        self._describe = lambda: None

    def line(self) -> str:
        """The one line Ctrl-C prints."""
        return f"interrupted: {self._describe() or NOTHING_SAVED}"


saved_work = SavedWork()
"""The running command's saved work (one command runs per process)."""


def interruptible(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` with Ctrl-C (KeyboardInterrupt) raised as `Interrupted`; typer still reads the
    wrapped function's parameters (functools.wraps keeps its signature and annotations)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted from None

    return run
