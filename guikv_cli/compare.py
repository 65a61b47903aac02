"""`guikv compare`: methods x budgets side by side, in two forms.

- `guikv compare RUN_DIR...` reads finished `guikv eval` runs (a folder may also hold run folders
  at any depth) and prints one table per benchmark: accuracy metrics and savings per method and
  budget (a run with failed samples also with its metrics counting them wrong), with
  accuracy-vs-budget and accuracy-vs-KV-memory figures. Re-scored runs (`guikv eval --rescore`)
  show their new numbers: only `summary.json` is read.
- `guikv compare SCREENSHOT... --task TEXT --methods ... --budgets ...` runs one input under every
  (method, budget) pair and measures each output's fidelity to the full cache (run once): token
  agreement, exact match, KL of the first decoding step, oracle recall (the share of the positions
  the full cache's decode steps attended most that the method kept), same parsed action, and the
  costs.
- `guikv compare SCREENSHOT... --task TEXT --carry` plays the screenshots as one trajectory's steps,
  carried (each step prefills only its new turn on the cache cut at earlier steps) and re-prefilled
  (each step's whole prompt), under every pair, and compares the two step by step, with a
  per-step figure (`compare_carry_figure`).

The two forms never mix: this module parses the flags and hands over to `compare_rundirs`,
`compare_live` or `compare_carry`. Definitions of every column: docs/analysis.md.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from benchmarks.flags import check_max_tokens, parse_percentages
from guikv.agents.prompting import TRAJECTORY_SCREENSHOTS
from guikv.config import METHODS
from guikv.errors import UserInputError
from guikv_cli.compare_carry import compare_trajectory
from guikv_cli.compare_live import compare_step
from guikv_cli.compare_rundirs import compare_runs
from guikv_cli.knobs import knob_settings
from guikv_cli.options import ALPHA, ATTN, DEVICE, DTYPE, MAX_TOKENS, MODEL, SET, TEMPERATURE, WINDOW
from guikv_cli.screenshots import check_screenshots

DEFAULT_METHODS = "full,snapkv,pyramidkv,vlcache,gui_kv,st_lite,star_kv"
DEFAULT_BUDGETS = "1,5,10,20,40"
DEFAULT_OUTPUT = Path("guikv-compare")


def parse_methods(text: str) -> list[str]:
    """Comma-separated method names, validated and de-duplicated in order."""
    names = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    if not names:
        raise UserInputError(f"--methods is empty: expected a comma-separated list from {', '.join(METHODS)}")
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise UserInputError(
            f"--methods: unknown method {unknown[0]!r}: expected some of {', '.join(METHODS)}"
        )
    return names


def parse_budgets(text: str) -> list[float]:
    """Comma-separated budgets in percent, each in (0, 100] (read as `eval --budgets` reads them),
    de-duplicated and sorted."""
    return sorted(parse_percentages(text, "--budgets"))


def compare(
    targets: list[Path] = typer.Argument(..., help="Eval run folders (or parents of them), or screenshots."),
    task: str | None = typer.Option(None, "--task", help="Screenshot form: the task text."),
    methods: str | None = typer.Option(
        None,
        "--methods",
        metavar="LIST",
        help=f"Screenshot form: methods, comma-separated (default {DEFAULT_METHODS}).",
    ),
    budgets: str | None = typer.Option(
        None,
        "--budgets",
        metavar="LIST",
        help=f"Screenshot form: budgets in %, comma-separated (default {DEFAULT_BUDGETS}).",
    ),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Screenshot form: tokens to generate."),
    model: str = MODEL,
    family: str | None = typer.Option(None, "--family", help="Agent family (default: from the model)."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    attn: str = ATTN,
    window_size: int = WINDOW,
    alpha: float = ALPHA,
    temperature: float = TEMPERATURE,
    metric: str | None = typer.Option(
        None, "--metric", help="Run form: metric to plot (default: the first)."
    ),
    carry: bool = typer.Option(
        False,
        "--carry",
        help="Screenshot form: play the screenshots as one trajectory's steps, carried against re-prefilled.",
    ),
    max_tokens: int | None = MAX_TOKENS,
    screenshot_window: int | None = typer.Option(
        None,
        "--screenshot-window",
        help=f"With --carry: screenshots each step's prompt shows (default {TRAJECTORY_SCREENSHOTS}).",
    ),
    output: Path = typer.Option(DEFAULT_OUTPUT, "--output", help="Folder for compare.json and figures."),
    html_path: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML report."),
    settings: list[str] | None = SET,
) -> None:
    """Compare methods x budgets: finished eval runs, one input run under every pair, or (--carry) a
    trajectory of the screenshots carried against re-prefilled."""
    console = Console()
    missing = [path for path in targets if not path.exists()]
    if missing:
        raise UserInputError(f"{missing[0]}: no such file or folder")
    folders = [path for path in targets if path.is_dir()]
    files = [path for path in targets if not path.is_dir()]
    if folders and files:
        raise UserInputError(
            f"{folders[0]} is a folder and {files[0]} a file: "
            "compare eval run folders or screenshots, not both"
        )
    if folders:
        given = [
            flag
            for flag, value in (
                ("--task", task),
                ("--methods", methods),
                ("--budgets", budgets),
                ("--set", settings),
                ("--carry", carry),
                ("--max-tokens", max_tokens is not None),
                ("--screenshot-window", screenshot_window is not None),
            )
            if value
        ]
        if given:
            raise UserInputError(f"{', '.join(given)} belong to the screenshot form, not to eval run folders")
        compare_runs(folders, output, metric, html_path, console)
        return
    if metric is not None:
        raise UserInputError("--metric belongs to the eval run form, not to screenshots")
    if not (task and task.strip()):
        raise UserInputError("SCREENSHOT... needs --task TEXT (or pass eval run folders instead)")
    knobs = knob_settings(settings or [], own_flags={"method": "--methods", "budget": "--budgets"})
    method_names = parse_methods(DEFAULT_METHODS if methods is None else methods)
    budget_values = parse_budgets(DEFAULT_BUDGETS if budgets is None else budgets)
    if max_new_tokens < 1:
        raise UserInputError(f"--max-new-tokens {max_new_tokens} is invalid: expected an integer >= 1")
    check_screenshots(files)
    carried = carry_options(carry, max_tokens, screenshot_window, budgets, window_size)
    options = {
        "model": model,
        "family": family,
        "device": device,
        "dtype": dtype,
        "attn": attn,
        "window_size": window_size,
        "alpha": alpha,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "knobs": knobs,
        **carried,
    }
    run_form = compare_trajectory if carry else compare_step
    run_form(
        files,
        task,
        method_names,
        budget_values,
        options=options,
        output=output,
        html_path=html_path,
        console=console,
    )


def carry_options(
    carry: bool, max_tokens: int | None, screenshot_window: int | None, budgets: str | None, window_size: int
) -> dict[str, int | None]:
    """The carried form's settings (`max_tokens`, `screenshot_window`), checked: they need
    `--carry`, `--max-tokens` replaces `--budgets` and must hold the window plus one token."""
    if not carry:
        given = [
            flag
            for flag, value in (("--max-tokens", max_tokens), ("--screenshot-window", screenshot_window))
            if value is not None
        ]
        if given:
            raise UserInputError(f"{', '.join(given)} belong to --carry (a trajectory of the screenshots)")
        return {}
    check_max_tokens(max_tokens, budgets is not None, window_size)
    if screenshot_window is not None and screenshot_window < 1:
        raise UserInputError(f"--screenshot-window {screenshot_window} is invalid: expected an integer >= 1")
    return {
        "max_tokens": max_tokens,
        "screenshot_window": TRAJECTORY_SCREENSHOTS if screenshot_window is None else screenshot_window,
    }


def register(app: typer.Typer) -> None:
    """Add `guikv compare` to the app."""
    app.command("compare")(compare)
