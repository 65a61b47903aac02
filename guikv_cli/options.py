"""Options shared by several subcommands, and turning them into validated objects.

A bad value becomes a `UserInputError` naming the command-line flag (not the Python field), so
the user sees e.g. `--budget 0 is invalid: expected a percentage in (0, 100]`.
"""

from __future__ import annotations

import re
from typing import Any

import typer

from guikv.config import METHODS, CompressionConfig
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

MODEL = typer.Option("tiny", "--model", help="tiny (built-in random model), a hub id, or a model directory.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
DTYPE = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")
ATTN = typer.Option("auto", "--attn", help="auto (flash_attention_2 when installed, else sdpa), sdpa, eager.")
METHOD = typer.Option("gui_kv", "--method", help=f"Compression method: {', '.join(METHODS)}.")
BUDGET = typer.Option(10.0, "--budget", help="Percent of the prompt's tokens kept per layer, in (0, 100].")
ALPHA = typer.Option(2.0, "--alpha", help="GUI-KV spatial saliency weight.")
TEMPERATURE = typer.Option(3.5, "--temperature", help="GUI-KV saliency softmax temperature.")
WINDOW = typer.Option(8, "--window-size", help="Trailing tokens always kept and scored from.")


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
