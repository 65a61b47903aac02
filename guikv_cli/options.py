"""Typer options shared by several subcommands (one definition each, so the flags read the same
everywhere). Turning their values into validated objects is `benchmarks.flags`'s job.
"""

from __future__ import annotations

import typer

from guikv.config import METHODS

MODEL = typer.Option("tiny", "--model", help="tiny (built-in random model), a hub id, or a model directory.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
DTYPE = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")
ATTN = typer.Option("auto", "--attn", help="auto (flash_attention_2 when installed, else sdpa), sdpa, eager.")
METHOD = typer.Option("gui_kv", "--method", help=f"Compression method: {', '.join(METHODS)}.")
BUDGET = typer.Option(10.0, "--budget", help="Percent of the prompt's tokens kept per layer, in (0, 100].")
ALPHA = typer.Option(2.0, "--alpha", help="GUI-KV spatial saliency weight.")
TEMPERATURE = typer.Option(3.5, "--temperature", help="GUI-KV saliency softmax temperature.")
WINDOW = typer.Option(8, "--window-size", help="Trailing tokens always kept and scored from.")
MAX_TOKENS = typer.Option(
    None,
    "--max-tokens",
    metavar="N",
    help="With --carry: cut the carried cache to N tokens per layer at every step, window included "
    "(bounded memory however long the trajectory), instead of --budgets.",
)
SET = typer.Option(
    None,
    "--set",
    metavar="KNOB=VALUE",
    help="Any other compression knob (a CompressionConfig field), e.g. st_lite_variant=paper or "
    "star_kv_prior_lambda=0.3; repeat for several.",
)
