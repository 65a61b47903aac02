"""A GUI agent loop over a folder of screenshots that carries its compressed KV cache from step to
step: each step feeds only its new screenshot turn, the cache is re-scored and cut, and what was
prefilled and kept is printed.

    python examples/agent_loop.py                                   # tiny random model, the demo screens
    python examples/agent_loop.py SCREENS_DIR --model ByteDance-Seed/UI-TARS-1.5-7B --budget 10

Screenshots are taken in name order, one per step. In a real agent each one would be the screen
after executing the previous step's action; here they stand in for it. The tiny model has random
weights, so its actions are meaningless; token counts, cache sizes and timings are real.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from guikv import CompressionConfig
from guikv.models import load
from guikv.trajectory import Trajectory

SCREENS = Path(__file__).parent / "screens"
TASK = "Search for George Orwell on Goodreads and open his author page."


def main(argv: list[str] | None = None) -> None:
    """Play the folder's screenshots as one trajectory and print each step's costs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("screens", nargs="?", type=Path, default=SCREENS, help="folder of PNG screenshots")
    parser.add_argument("--model", default="tiny", help="tiny, a hub id or a local directory")
    parser.add_argument("--method", default="gui_kv")
    parser.add_argument("--budget", type=float, default=10.0, help="percent of the conversation kept")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="keep this many tokens per layer instead"
    )
    parser.add_argument("--window", type=int, default=5, help="screenshots kept, the current one included")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    shots = sorted(args.screens.glob("*.png"))
    if not shots:
        parser.error(f"{args.screens}: no PNG screenshots there")

    model, processor = load(args.model)
    trajectory = Trajectory(
        model,
        processor,
        CompressionConfig(method=args.method, budget=args.budget),
        TASK,
        max_tokens=args.max_tokens,
        screenshot_window=args.window,
        max_new_tokens=args.max_new_tokens,
    )
    for path in shots:
        with Image.open(path) as image:
            step = trajectory.step(image.convert("RGB"))
        kept = step.kept_per_layer[0]
        print(
            f"step {step.step} ({path.name}): prefilled {step.prefilled_tokens} of {step.prompt_tokens} "
            f"conversation tokens, carried {step.carried_tokens}, kept {kept} per layer "
            f"({step.kv_bytes_stored / 2**20:.2f} MiB), evicted {step.evicted_screenshots} screenshot(s), "
            f"{step.prefill_seconds + step.decode_seconds:.2f} s"
        )
        origins = ", ".join(f"{label} {count:.0f}" for label, count in step.kept_by_origin.items())
        print(f"  kept by origin (mean per layer and head): {origins}")
        print(f"  answer: {step.text[:100]!r}")


if __name__ == "__main__":
    main()
