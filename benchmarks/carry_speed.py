"""`python -m benchmarks.carry_speed`: what carrying the compressed cache saves an agent loop.

One synthetic trajectory (the example screenshots, cycled, at 1080p by default) is played twice in
the same process, step by step: carried (`guikv.Trajectory`: each step feeds only its new turn on
the cut cache) and re-prefilled (`run_step` on the same step's native conversation, the carried
run's own answers as history, the same screenshot window). Per step it records the tokens each
path prefilled, the step's wall time (inputs built, prefill, scoring, decode) and the KV bytes the
carried cache holds; with `--max-tokens` the carried cache is cut to a fixed count instead of the
budget's share. The summary takes the steady state (steps after the window filled): prefilled
tokens per step and step time, re-prefilled over carried. Reported, never asserted. Rows are
written to the JSON file as they are measured; a trajectory cannot be resumed half-way, so a re-run
measures it again.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from benchmarks.flags import compression_config, quiet_transformers, run_script
from benchmarks.speed import REPO_SCREENS, model_dir, screenshots
from guikv.agents.prompting import TRAJECTORY_SCREENSHOTS
from guikv.models import load
from guikv.step import run_step
from guikv.trajectory import Trajectory

TASK = "Open the display settings and turn on night light"


def play(
    model: Any,
    processor: Any,
    images: list[Any],
    method: str,
    budget: float,
    window: int,
    max_tokens: int | None,
    new_tokens: int,
    on_row: Any = None,
) -> list[dict[str, Any]]:
    """Both paths over `images`, interleaved per step; one row per step."""
    config = compression_config(method=method, budget=budget)
    trajectory = Trajectory(
        model,
        processor,
        config,
        TASK,
        screenshot_window=window,
        max_tokens=max_tokens,
        max_new_tokens=new_tokens,
    )
    rows: list[dict[str, Any]] = []
    for index, image in enumerate(images):
        began = time.perf_counter()
        carried = trajectory.step(image)
        carried_seconds = time.perf_counter() - began
        messages = trajectory.messages
        began = time.perf_counter()
        again = run_step(model, processor, messages, config, max_new_tokens=new_tokens)
        again_seconds = time.perf_counter() - began
        rows.append(
            {
                "step": index,
                "carried_prefilled_tokens": carried.prefilled_tokens,
                "carried_prompt_tokens": carried.prompt_tokens,
                "carried_kept_tokens": carried.kept_per_layer[0],
                "carried_kv_bytes_stored": carried.kv_bytes_stored,
                "carried_step_seconds": carried_seconds,
                "carried_prefill_seconds": carried.prefill_seconds,
                "carried_scoring_seconds": carried.scoring_seconds,
                "reprefill_prompt_tokens": again.prompt_tokens,
                "reprefill_kv_bytes_stored": again.kv_bytes_stored,
                "reprefill_step_seconds": again_seconds,
                "reprefill_prefill_seconds": again.prefill_seconds,
                "evicted_screenshots": carried.evicted_screenshots,
            }
        )
        if on_row is not None:
            on_row(rows)
    return rows


def steady_summary(rows: list[dict[str, Any]], window: int) -> dict[str, float]:
    """Means over the steps after the screenshot window filled (step >= window), and their ratios."""
    steady = [row for row in rows if row["step"] >= window] or rows

    def mean(key: str) -> float:
        return statistics.fmean(row[key] for row in steady)

    held = [row["carried_kv_bytes_stored"] for row in steady]
    return {
        "steady_steps": len(steady),
        "carried_prefilled_tokens": mean("carried_prefilled_tokens"),
        "reprefill_prefilled_tokens": mean("reprefill_prompt_tokens"),
        "prefilled_tokens_ratio": mean("reprefill_prompt_tokens") / mean("carried_prefilled_tokens"),
        "carried_step_seconds": mean("carried_step_seconds"),
        "reprefill_step_seconds": mean("reprefill_step_seconds"),
        "step_time_ratio": mean("reprefill_step_seconds") / mean("carried_step_seconds"),
        "carried_kv_bytes_min": float(min(held)),
        "carried_kv_bytes_max": float(max(held)),
    }


def render(rows: list[dict[str, Any]], summary: dict[str, float], title: str) -> Table:
    """The per-step table, then the steady-state line as its caption."""
    table = Table(title=title)
    for column in (
        "step",
        "prefilled",
        "re-prefilled",
        "kept/layer",
        "KV held MiB",
        "step s",
        "re-prefill s",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["step"]),
            str(row["carried_prefilled_tokens"]),
            str(row["reprefill_prompt_tokens"]),
            str(row["carried_kept_tokens"]),
            f"{row['carried_kv_bytes_stored'] / 2**20:.2f}",
            f"{row['carried_step_seconds']:.2f}",
            f"{row['reprefill_step_seconds']:.2f}",
        )
    table.caption = (
        f"steady state ({summary['steady_steps']} steps): {summary['prefilled_tokens_ratio']:.1f}x fewer "
        f"tokens prefilled, step time {summary['step_time_ratio']:.2f}x lower"
    )
    return table


def main(
    model: str = typer.Option("tiny", help="tiny, qwen7b-shape (7B attention, narrow MLP), or a model dir."),
    layers: int = typer.Option(2, help="Decoder layers of a built-in shape."),
    steps: int = typer.Option(10, help="Agent steps in the trajectory."),
    method: str = typer.Option("gui_kv", help="Compression method."),
    budget: float = typer.Option(10.0, help="Budget (percent of the conversation kept per layer)."),
    max_tokens: int = typer.Option(None, help="Cut the carried cache to this many tokens per layer instead."),
    window: int = typer.Option(
        TRAJECTORY_SCREENSHOTS, help="Screenshots in the window, the current one included."
    ),
    width: int = typer.Option(1920, help="Screenshot width."),
    height: int = typer.Option(1080, help="Screenshot height."),
    new_tokens: int = typer.Option(16, help="Tokens generated per step."),
    screens_dir: Path = typer.Option(REPO_SCREENS, help="Folder of PNG screenshots, cycled."),
    output: Path = typer.Option(None, help="JSON results file (default carry-<model>-<steps>.json)."),
) -> None:
    """Play one trajectory carried and re-prefilled, step by step, and report what carrying saves."""
    console = Console(width=max(Console().width, 120))
    quiet_transformers()
    torch.manual_seed(0)
    output = output or Path(f"carry-{Path(model).name}-{steps}.json")
    settings = {
        "model": model,
        "layers": layers,
        "steps": steps,
        "method": method,
        "budget": budget,
        "max_tokens": max_tokens,
        "window": window,
        "size": [width, height],
        "new_tokens": new_tokens,
        "threads": torch.get_num_threads(),
        "cpu": os.cpu_count(),
    }
    loaded, processor = load(model_dir(model, layers))
    images = screenshots(screens_dir, steps, (width, height))
    play(loaded, processor, images[:2], method, budget, window, max_tokens, 2)

    def save(rows: list[dict[str, Any]]) -> None:
        document = {"settings": settings, "rows": rows, "summary": steady_summary(rows, window)}
        output.write_text(json.dumps(document, indent=2))

    rows = play(loaded, processor, images, method, budget, window, max_tokens, new_tokens, on_row=save)
    save(rows)
    summary = steady_summary(rows, window)
    title = f"{model}: {steps} steps of {width}x{height} screenshots, {method} at " + (
        f"{max_tokens} tokens" if max_tokens else f"{budget:g}%"
    )
    console.print(render(rows, summary, title))
    console.print(f"wrote {output}")


if __name__ == "__main__":
    run_script(main)
