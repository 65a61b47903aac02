"""`python -m benchmarks.capacity`: the largest batch of multi-screenshot prompts UI-TARS-1.5-7B can
hold on one GPU at the full cache and at each KV budget (analytic, `guikv.capacity`).

The prompt is `benchmarks.speed`'s: `--screens` screenshots of `--width` x `--height` (tokens from
the Qwen2.5-VL resize rules) and the UI-TARS computer-use text with one history step per earlier
screenshot. Every assumption is a flag, and printed with the table.
"""

from __future__ import annotations

import torch
import typer
from rich.console import Console
from rich.table import Table

from benchmarks.flags import parse_percentages, run_script
from guikv.capacity import (
    GIB,
    QWEN25_VL_7B_VISION_PARAMETERS,
    UI_TARS_15_7B,
    CapacityRow,
    GpuMemory,
    capacity_table,
    kv_memory_bytes,
    language_model_parameters,
    screenshot_tokens,
)
from guikv.errors import UserInputError

MIB = 2**20

TEXT_TOKENS = 1240
"""The text part of `benchmarks.speed`'s 5-screenshot prompt (system prompt, 4 history steps, the
UI-TARS computer-use prompt and task; 2,904 characters): its tokens through the tiny model's
processor, 14,705 in all, minus 5 x 2,693 image tokens. The tiny model's 640-token BPE splits text
more finely than Qwen's 151k vocabulary, so the real count is lower (about 800 at ~3.6 characters
per token); the screenshots are 91.6% of the prompt either way."""


def markdown(rows: list[CapacityRow]) -> str:
    """The table as Markdown, for the README."""
    full = next((row.largest_batch for row in rows if row.budget >= 100), None)
    lines = [
        "| KV budget | kept prompt tokens | KV per sequence (MiB) | largest batch | vs full cache |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row.largest_batch / full:.1f}x" if full else "-"
        name = "full cache" if row.budget >= 100 else f"{row.budget:g}%"
        lines.append(
            f"| {name} | {row.kept_tokens:,} | {row.sequence_kv_bytes / MIB:,.1f} | "
            f"{row.largest_batch:,} | {ratio} |"
        )
    return "\n".join(lines)


def main(
    screens: int = typer.Option(5, help="Screenshots per prompt."),
    width: int = typer.Option(1920, help="Screenshot width."),
    height: int = typer.Option(1080, help="Screenshot height."),
    text_tokens: int = typer.Option(TEXT_TOKENS, help="Text tokens per prompt (see TEXT_TOKENS)."),
    new_tokens: int = typer.Option(256, help="Tokens each sequence generates (and caches)."),
    budgets: str = typer.Option("1,5,10,20,40", help="Comma-separated KV budgets (percent)."),
    gpu_gib: float = typer.Option(80.0, help="GPU memory in GiB (an 80 GB A100/H100 has 80 GiB)."),
    usable_fraction: float = typer.Option(0.9, help="Share of GPU memory the model may use."),
    activation_gib: float = typer.Option(4.0, help="Headroom for one prompt's prefill activations (GiB)."),
    show_markdown: bool = typer.Option(False, "--markdown", help="Print the table as Markdown."),
) -> None:
    """Print the largest batch that fits at the full cache and at each budget."""
    for flag, value in (("--screens", screens), ("--width", width), ("--height", height)):
        if value < 1:
            raise UserInputError(f"{flag} {value} is invalid: expected an integer >= 1")
    for flag, value in (("--text-tokens", text_tokens), ("--new-tokens", new_tokens)):
        if value < 0:
            raise UserInputError(f"{flag} {value} is invalid: expected an integer >= 0")
    if not 0 < usable_fraction <= 1:
        raise UserInputError(f"--usable-fraction {usable_fraction} is invalid: expected a share in (0, 1]")
    if gpu_gib <= 0 or activation_gib < 0:
        raise UserInputError("--gpu-gib must be > 0 and --activation-gib >= 0")
    budget_list = [100.0, *(budget for budget in parse_percentages(budgets) if budget < 100)]
    dtype = torch.bfloat16
    prompt_tokens = screens * screenshot_tokens(width, height) + text_tokens
    parameters = language_model_parameters(UI_TARS_15_7B) + QWEN25_VL_7B_VISION_PARAMETERS
    memory = GpuMemory(
        total_bytes=int(gpu_gib * GIB),
        usable_fraction=usable_fraction,
        weights_bytes=parameters * dtype.itemsize,
        activation_bytes=int(activation_gib * GIB),
    )
    try:
        rows = capacity_table(memory, UI_TARS_15_7B, prompt_tokens, budget_list, new_tokens, dtype)
    except ValueError as error:
        raise UserInputError(f"--gpu-gib {gpu_gib:g}: {error}") from None
    free = kv_memory_bytes(memory, UI_TARS_15_7B, prompt_tokens, dtype)
    console = Console(width=max(Console().width, 120))
    console.print(
        f"UI-TARS-1.5-7B, bf16, {gpu_gib:g} GiB GPU x {usable_fraction:g} usable = "
        f"{memory.usable_bytes / GIB:.1f} GiB; weights {parameters / 1e9:.2f} B parameters = "
        f"{memory.weights_bytes / 1e9:.2f} GB; activation headroom {activation_gib:g} GiB; "
        f"one uncompressed prompt being prefilled; {free / GIB:.1f} GiB left for the batch's KV cache",
        highlight=False,
    )
    console.print(
        f"prompt: {screens} x {width}x{height} screenshots x {screenshot_tokens(width, height):,} tokens "
        f"+ {text_tokens:,} text tokens = {prompt_tokens:,} tokens; {new_tokens} generated tokens each",
        highlight=False,
    )
    if show_markdown:
        console.print(markdown(rows), highlight=False, markup=False)
        return
    table = Table(title="Largest batch that fits")
    for column in ("KV budget", "kept prompt tokens", "KV per sequence MiB", "largest batch", "vs full"):
        table.add_column(column, justify="right")
    full = rows[0].largest_batch
    for row in rows:
        table.add_row(
            "full cache" if row.budget >= 100 else f"{row.budget:g}%",
            f"{row.kept_tokens:,}",
            f"{row.sequence_kv_bytes / MIB:,.1f}",
            f"{row.largest_batch:,}",
            f"{row.largest_batch / full:.1f}x" if full else "-",
        )
    console.print(table)


if __name__ == "__main__":
    run_script(main)
