"""guikv's library API in one agent step: load a model, build the family's prompt from a screenshot
history, generate under GUI-KV compression, parse the action.

    python examples/quickstart.py                       # the tiny random model, CPU, ~30 s
    python examples/quickstart.py ByteDance-Seed/UI-TARS-1.5-7B   # a real agent (GPU advised)

The tiny model has random weights, so its action is meaningless; the token counts, KV-cache sizes
and timings are real.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image

from guikv import CompressionConfig, compress
from guikv.agents import detect_family, get_family
from guikv.models import adapter_for, load
from guikv.step import run_step

SCREENS = sorted((Path(__file__).parent / "screens").glob("*.png"))
TASK = "Search for George Orwell on Goodreads and open his author page."


def main(model_name: str = "tiny") -> None:
    """Run one compressed agent step on the demo screenshots and print what happened."""
    model, processor = load(model_name)
    family = get_family(detect_family(model.config))

    # The last screenshot is the current screen; the earlier ones go in as history turns. A
    # one-off step has no earlier model answers, so the history text window is 0.
    history = len(SCREENS) - 1
    messages = family.computer_use_messages(
        TASK, SCREENS, [""] * history, max_history_screenshots=history, history_window=0
    )
    config = CompressionConfig(method="gui_kv", budget=10.0)

    # run_step: generate greedily under `config` and measure tokens, cache bytes, FLOPs and time.
    result = run_step(model, processor, messages, config, max_new_tokens=32)
    print(f"output: {result.text[:120]!r}")
    print(f"prompt: {result.prompt_tokens} tokens, {result.layout.num_images} screenshots")
    print(f"kept per layer: {result.kept_per_layer}; KV cache freed: {result.kv_saved_percent:.1f}%")
    print(f"decode FLOPs saved: {result.decode_flops_saved_percent:.1f}%")

    # Parse the answer into an Action; points are relative to the current screenshot.
    width, height = Image.open(SCREENS[-1]).size
    action = family.parse(result.text, (width, height))[0]
    print(f"action: {action.type.value}, point in pixels: {action.pixel_point(width, height)}")

    # The lower-level API: compress() arms hooks around any generate() call.
    inputs = adapter_for(model).build_inputs(processor, messages).to(model.device)
    with torch.no_grad(), compress(model, config) as report:
        model.generate(**inputs, max_new_tokens=8, do_sample=False)
    print(f"compress(): kept {report.kept_per_layer[0]} of {report.prompt_tokens} prompt tokens per layer")


if __name__ == "__main__":
    main(*sys.argv[1:2])
