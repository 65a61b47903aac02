"""Turning command-line values into validated objects, for every command line of the project:
the `guikv` subcommands and `python -m benchmarks.speed`.

A bad value becomes a `UserInputError` naming the command-line flag (not the Python field), so
the user sees e.g. `--budget 0 is invalid: expected a percentage in (0, 100]`. It lives here, below
`guikv_cli`, so that the benchmark scripts can use it without importing upward.
"""

from __future__ import annotations

import re
from typing import Any

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
