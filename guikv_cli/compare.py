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

The two forms never mix: this module parses the flags and hands over to `compare_rundirs` or
`compare_live`. Definitions of every column: docs/analysis.md.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from benchmarks.flags import parse_percentages
from guikv.config import METHODS
from guikv.errors import UserInputError
from guikv_cli.compare_live import compare_step
from guikv_cli.compare_rundirs import compare_runs
from guikv_cli.knobs import knob_settings
from guikv_cli.options import ALPHA, ATTN, DEVICE, DTYPE, MODEL, SET, TEMPERATURE, WINDOW
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
    output: Path = typer.Option(DEFAULT_OUTPUT, "--output", help="Folder for compare.json and figures."),
    html_path: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML report."),
    settings: list[str] | None = SET,
) -> None:
    """Compare methods x budgets: finished eval runs, or one input run under every pair."""
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
    }
    compare_step(
        files,
        task,
        method_names,
        budget_values,
        options=options,
        output=output,
        html_path=html_path,
        console=console,
    )


def register(app: typer.Typer) -> None:
    """Add `guikv compare` to the app."""
    app.command("compare")(compare)
