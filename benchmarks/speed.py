"""`python -m benchmarks.speed`: what each method costs and saves on a multi-screenshot GUI prompt.

Every method runs at every budget on the same prompt (by default 5 screenshots at 1920x1080,
UI-TARS's pixel range), against one full-cache run made in the same process. Reported, never
asserted: KV bytes kept/full, scoring time as a share of prefill time, decode ms/token compressed
and full, and decode FLOPs measured with `FlopCounterMode` beside the analytic count. With
`--batch-sizes 1,4,8` it adds throughput rows (`benchmarks.throughput`): the full cache and every
method at every budget, run as batches of that many prompts. Rows are written to the JSON file as
they are measured; re-running the same command resumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import typer
from PIL import Image
from rich.console import Console
from rich.table import Table

from benchmarks import throughput
from benchmarks.flags import (
    compression_config,
    parse_batch_sizes,
    parse_percentages,
    quiet_transformers,
    run_script,
)
from guikv.agents.family import get_family
from guikv.compressor import compress
from guikv.config import METHODS
from guikv.errors import UserInputError
from guikv.flops import ModelShape, decode_flops, flop_counter
from guikv.models import adapter_for, build_tiny, load
from guikv.models.tiny import cache_root
from guikv.step import run_step

REPO_SCREENS = Path(__file__).resolve().parents[1] / "examples" / "screens"
QWEN7B_ATTENTION = {
    "hidden_size": 3584,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 1024,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
"""Qwen2.5-VL-7B's attention shape (28 query heads, 4 KV heads, head_dim 128, hidden 3584); the MLP
is narrowed so a CPU can run it, which leaves attention and KV costs as in the real model."""

SHAPES = {
    "qwen7b-shape": QWEN7B_ATTENTION,
    "qwen7b-layer": {**QWEN7B_ATTENTION, "intermediate_size": 18944},
}
"""Built-in model shapes: the 7B attention with a narrowed MLP, and the whole 7B decoder layer (MLP
width 18,944 as well), whose prefill time per layer is the real model's, so a method's scoring share
of prefill is measured against the real layer cost (use few layers: the share is per layer)."""

HISTORY = "Thought: The settings icon is at the top right.\nAction: click(start_box='(1650,80)')"


def model_dir(model: str, layers: int) -> str:
    """`tiny`, a directory, or a built-in shape of `SHAPES` (built once into the guikv cache with
    `layers` layers)."""
    if model not in SHAPES:
        return model
    target = cache_root() / f"speed-{model}-{layers}l"
    if not (target / "model.safetensors").exists():
        build_tiny(target, num_hidden_layers=layers, **SHAPES[model])
    return str(target)


def screenshots(folder: Path, count: int, size: tuple[int, int]) -> list[Image.Image]:
    """`count` screenshots from `folder`, cycled and resized to `size`."""
    files = sorted(folder.glob("*.png"))
    if not files:
        raise UserInputError(f"--screens-dir {folder}: no PNG screenshots there")
    return [Image.open(files[i % len(files)]).convert("RGB").resize(size) for i in range(count)]


def measured_decode_flops(model: torch.nn.Module, inputs: Any, config: Any, new_tokens: int) -> int:
    """Decode FLOPs of `new_tokens - 1` decode forwards, counted by FlopCounterMode in one generate:
    the prefill's share is read by a hook at the end of the first forward and subtracted."""
    with flop_counter() as counter:
        after_forward: list[int] = []

        def mark(module: torch.nn.Module, args: tuple, output: Any) -> None:
            after_forward.append(counter.get_total_flops())

        handle = model.register_forward_hook(mark)
        try:
            with compress(model, config):
                model.generate(
                    **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
                )
        finally:
            handle.remove()
    return after_forward[-1] - after_forward[0]


def benchmark_row(
    model: Any,
    processor: Any,
    messages: list,
    method: str,
    budget: float,
    new_tokens: int,
    full: dict[str, Any],
    flop_inputs: Any | None,
) -> dict[str, Any]:
    """Measure one (method, budget) pair against the full-cache row; with `flop_inputs` (the
    prompt's generate() inputs) also count its decode FLOPs."""
    config = compression_config(method=method, budget=budget)
    step = run_step(model, processor, messages, config, max_new_tokens=new_tokens)
    shape = ModelShape.from_config(model.config)
    analytic = decode_flops(shape, step.kept_per_layer, new_tokens - 1).total
    row = {
        "method": method,
        "budget": budget,
        "prompt_tokens": step.prompt_tokens,
        "kv_ratio_percent": 100 * step.kv_bytes_kept / step.kv_bytes_full,
        "scoring_seconds": step.scoring_seconds,
        "prefill_seconds": step.prefill_seconds,
        "scoring_share_percent": 100 * step.scoring_seconds / step.prefill_seconds,
        "decode_ms_per_token": step.decode_ms_per_token_median,
        "decode_ms_per_token_full": full["decode_ms_per_token_median"],
        "decode_speedup": full["decode_ms_per_token_median"] / step.decode_ms_per_token_median,
        "decode_flops_analytic": analytic,
        "decode_flops_saved_percent": step.decode_flops_saved_percent,
    }
    if flop_inputs is not None:
        measured = measured_decode_flops(model, flop_inputs, config, new_tokens)
        row["decode_flops_measured"] = measured
        row["flops_measured_over_analytic"] = measured / analytic
    return row


def render(rows: list[dict[str, Any]], title: str) -> Table:
    """The rich table of measured rows."""
    table = Table(title=title)
    for column in (
        "method",
        "budget",
        "KV kept/full",
        "scoring/prefill",
        "decode ms/tok",
        "full ms/tok",
        "decode FLOPs saved",
        "measured/analytic",
    ):
        table.add_column(column, justify="right" if column != "method" else "left")
    for row in rows:
        ratio = row.get("flops_measured_over_analytic")
        table.add_row(
            row["method"],
            f"{row['budget']:g}%",
            f"{row['kv_ratio_percent']:.2f}%",
            f"{row['scoring_share_percent']:.2f}%",
            f"{row['decode_ms_per_token']:.2f}",
            f"{row['decode_ms_per_token_full']:.2f}",
            f"{row['decode_flops_saved_percent']:.1f}%",
            f"{ratio:.4f}" if ratio is not None else "-",
        )
    return table


def main(
    model: str = typer.Option(
        "tiny",
        help="tiny, qwen7b-shape (7B attention, narrow MLP), qwen7b-layer (whole 7B layers), or a model dir.",
    ),
    layers: int = typer.Option(2, help="Decoder layers of the qwen7b-shape model."),
    methods: str = typer.Option(",".join(m for m in METHODS if m != "full"), help="Comma-separated methods."),
    budgets: str = typer.Option("1,5,10,20,40", help="Comma-separated budgets (percent)."),
    screens: int = typer.Option(5, help="Screenshots in the prompt (the last is the current one)."),
    width: int = typer.Option(1920, help="Screenshot width."),
    height: int = typer.Option(1080, help="Screenshot height."),
    new_tokens: int = typer.Option(32, help="Tokens generated per run (decode forwards = this - 1)."),
    screens_dir: Path = typer.Option(REPO_SCREENS, help="Folder of PNG screenshots to use."),
    output: Path = typer.Option(None, help="JSON results file (default speed-<model>.json)."),
    flops: bool = typer.Option(
        True, help="Also count decode FLOPs with FlopCounterMode (one more run per row)."
    ),
    warmup: bool = typer.Option(
        True, help="Run the prompt once, untimed, before measuring (throughput: before every method)."
    ),
    batch_sizes: str = typer.Option(
        "",
        help="Comma-separated batch sizes for throughput rows, e.g. 1,4,8 (batch 1, the baseline, is "
        "always added); empty: none.",
    ),
) -> None:
    """Run every method x budget on one multi-screenshot prompt and report costs against the full cache."""
    console = Console(width=max(Console().width, 170))
    quiet_transformers()
    torch.manual_seed(0)
    output = output or Path(f"speed-{Path(model).name}.json")
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    budget_list = parse_percentages(budgets)
    batch_list = sorted({1, *parse_batch_sizes(batch_sizes)}) if batch_sizes.strip() else []
    settings = {
        "model": model,
        "layers": layers,
        "screens": screens,
        "size": [width, height],
        "new_tokens": new_tokens,
        "threads": torch.get_num_threads(),
        "cpu": os.cpu_count(),
    }
    done: list[dict[str, Any]] = []
    batch_done: list[throughput.BatchRun] = []
    if output.exists():
        previous = json.loads(output.read_text())
        if previous.get("settings") == settings:
            done = previous["rows"]
            batch_done = [throughput.BatchRun.from_row(row) for row in previous.get("throughput", [])]
            console.print(
                f"resuming {output}: {len(done)} rows and {len(batch_done)} throughput rows already measured"
            )

    def save(rows: list[dict[str, Any]], runs: list[throughput.BatchRun]) -> None:
        document: dict[str, Any] = {"settings": settings, "rows": rows}
        if runs:
            document["throughput"] = throughput.throughput_rows(runs)
        output.write_text(json.dumps(document, indent=2))

    loaded, processor = load(model_dir(model, layers))
    family = get_family("ui-tars")
    images = screenshots(screens_dir, screens, (width, height))
    messages = throughput.batch_conversations(family, images, HISTORY, 1)[0]
    if warmup:
        run_step(loaded, processor, messages, compression_config(method="full", budget=100), max_new_tokens=2)
    full = next((row for row in done if row["method"] == "full"), None)
    if full is None:
        full_step = run_step(
            loaded,
            processor,
            messages,
            compression_config(method="full", budget=100),
            max_new_tokens=new_tokens,
        )
        full = {"method": "full", "budget": 100.0, **full_step.to_dict()}
        done.append(full)
    rows = [row for row in done if row["method"] != "full"]
    flop_inputs = adapter_for(loaded).build_inputs(processor, messages).to(loaded.device) if flops else None
    for method in method_list:
        for budget in budget_list:
            if any(r["method"] == method and r["budget"] == budget for r in rows):
                continue
            try:
                rows.append(
                    benchmark_row(loaded, processor, messages, method, budget, new_tokens, full, flop_inputs)
                )
            except (ValueError, UserInputError) as error:
                console.print(f"[yellow]{method} at {budget:g}%: not runnable ({error})[/]")
                continue
            save([full, *rows], batch_done)
    save([full, *rows], batch_done)
    title = (
        f"{model}: {screens} x {width}x{height}, {full['prompt_tokens']} prompt tokens; "
        f"full cache prefill {full['prefill_seconds']:.2f} s, "
        f"decode {full['decode_ms_per_token_median']:.2f} ms/token (medians)"
    )
    console.print(render(rows, title))
    if batch_list:
        conversations = throughput.batch_conversations(family, images, HISTORY, max(batch_list))
        pairs = [
            ("full", 100.0),
            *((method, budget) for method in method_list if method != "full" for budget in budget_list),
        ]
        runs = throughput.measure(
            loaded,
            processor,
            conversations,
            pairs,
            batch_list,
            new_tokens,
            done=batch_done,
            warmup=warmup,
            on_run=lambda runs: save([full, *rows], runs),
            on_skip=lambda method, budget, error: console.print(
                f"[yellow]{method} at {budget:g}% batched: not runnable ({error})[/]"
            ),
        )
        save([full, *rows], runs)
        batch_title = (
            f"{model}: throughput, batches of {screens} x {width}x{height} prompts, {new_tokens} new tokens; "
            "samples/s and tokens/s over prefill + decode time, against the full cache at batch 1 (full b1) "
            "and the same method at batch 1 (own b1)"
        )
        console.print(throughput.render(throughput.throughput_rows(runs), batch_title))
    console.print(f"wrote {output}")


if __name__ == "__main__":
    run_script(main)
