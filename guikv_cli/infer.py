"""`guikv infer`: one GUI-agent step on a screenshot history, with KV-cache compression, explained.

The last screenshot is the current screen; the others are its history, oldest first. The prompt is
`AgentFamily.one_step_messages` (the family's computer-use prompt; the same for `guikv compare` and
`guikv analyze-attention`): a one-off step has no earlier model outputs, so each history screenshot
is its own user turn with no assistant turn after it; the current screenshot comes with the
instruction.

Everything a user can get wrong (files, flags, the output path) is checked before torch is even
imported, so mistakes cost a fraction of a second and read as one line.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from PIL import Image, UnidentifiedImageError
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from benchmarks.flags import quiet_transformers
from guikv.agents import (
    FAMILY_NAMES,
    Action,
    detect_family,
    get_family,
)
from guikv.agents.resize import MAX_ASPECT_RATIO
from guikv.config import CompressionConfig, changed_knobs
from guikv.errors import UserInputError
from guikv_cli.knobs import config_with_knobs, knob_settings
from guikv_cli.options import (
    ALPHA,
    ATTN,
    BUDGET,
    DEVICE,
    DTYPE,
    METHOD,
    MODEL,
    SET,
    TEMPERATURE,
    WINDOW,
)
from guikv_cli.progress import status, step_status

HISTORY_ORDERS = ("name", "mtime")
TINY_PARAMETERS = 10_000_000
"""Below this many parameters a model is a random test model, never a trained agent."""
GPU_MODEL = "ByteDance-Seed/UI-TARS-1.5-7B"
RAW_PREVIEW_CHARS = 400
MIB = 2**20

HELP = (
    "Run one GUI-agent step: screenshots and a task in, the model's action out, with the KV cache "
    "compressed; shows what compression kept and saved.\n\n"
    "The LAST screenshot given is the current screen; the others are its history, oldest first, in the "
    "order given (a shell glob like step*.png expands in name order, so step10 comes before step2). "
    "--history-order sorts them first: name (natural sort of the file names, step2 before step10) or "
    "mtime (oldest file first). History screenshots enter the prompt as earlier user turns without the "
    "agent's earlier answers (a one-off step has none).\n\n"
    "With --model tiny (built in, random weights) the action is meaningless and only the token counts, "
    f"cache sizes and timings are real. On a GPU use --model {GPU_MODEL} --device cuda."
)


@dataclass(frozen=True)
class Screenshot:
    """A checked screenshot: its path and original (width, height)."""

    path: Path
    size: tuple[int, int]


def register(app: typer.Typer) -> None:
    """Add the `infer` subcommand to the guikv app."""
    app.command("infer", help=HELP)(infer)


def infer(
    screenshots: list[str] | None = typer.Argument(
        None, metavar="SCREENSHOT", show_default=False, help="Image files; the last is the current screen."
    ),
    task: str | None = typer.Option(None, "--task", help="The instruction, e.g. 'Open the settings'."),
    model: str = MODEL,
    family: str = typer.Option("auto", "--family", help="auto (from the model config), ui-tars or opencua."),
    method: str = METHOD,
    budget: float = BUDGET,
    alpha: float = ALPHA,
    temperature: float = TEMPERATURE,
    window_size: int = WINDOW,
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Most tokens to generate."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    attn: str = ATTN,
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object instead of the panel."),
    show_kept: str | None = typer.Option(
        None, "--show-kept", metavar="PNG", help="Write a picture of the kept image tokens to this PNG file."
    ),
    history_order: str | None = typer.Option(
        None,
        "--history-order",
        metavar="name|mtime",
        show_default=False,
        help="Sort the screenshots first: name (natural sort) or mtime (oldest first); default: as given.",
    ),
    settings: list[str] | None = SET,
) -> None:
    """Run one agent step and print what it did and what compression kept (see HELP)."""
    instruction = check_task(task)
    shots = order_screenshots([check_screenshot(path) for path in screenshots or []], history_order)
    config = config_with_knobs(
        knob_settings(settings or []),
        method=method,
        budget=budget,
        alpha=alpha,
        temperature=temperature,
        window_size=window_size,
    )
    if family != "auto" and family not in FAMILY_NAMES:
        raise UserInputError(f"--family {family!r} is unknown: expected auto, {', '.join(FAMILY_NAMES)}")
    picture = check_output_png(show_kept)
    if max_new_tokens < 1:
        raise UserInputError(f"--max-new-tokens {max_new_tokens} is invalid: expected an integer >= 1")
    with status(Console(stderr=True), f"loading {model}") as show:
        report = run_infer(
            shots,
            instruction,
            config,
            model_name=model,
            family_name=family,
            max_new_tokens=max_new_tokens,
            device=device,
            dtype=dtype,
            attn=attn,
            picture=picture,
            show_status=show,
        )
    if json_output:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        Console().print(render(report))


def check_task(task: str | None) -> str:
    """The instruction, stripped; a missing or blank one is a one-line error."""
    if task is None or not task.strip():
        raise UserInputError(
            "--task is empty: expected the instruction, e.g. --task 'Open the settings menu'"
        )
    return task.strip()


def check_screenshot(name: str) -> Screenshot:
    """A readable image file, opened and decoded once so a broken file fails here, not in the model
    (without torch: the processor's aspect-ratio limit is checked from the size alone)."""
    path = Path(name).expanduser()
    if not path.exists():
        raise UserInputError(f"screenshot {name}: no such file (expected a PNG or JPEG screenshot)")
    if not path.is_file():
        raise UserInputError(f"screenshot {name}: not a file (expected a PNG or JPEG screenshot)")
    try:
        with Image.open(path) as image:
            image.load()
            size = image.size
    except PermissionError:
        raise UserInputError(
            f"screenshot {name}: permission denied (expected a readable image file)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        reason = (
            "not an image" if isinstance(error, UnidentifiedImageError) else f"unreadable image ({error})"
        )
        raise UserInputError(f"screenshot {name}: {reason} (expected a PNG or JPEG screenshot)") from None
    if max(size) / min(size) > MAX_ASPECT_RATIO:
        raise UserInputError(
            f"screenshot {name}: {size[0]}x{size[1]} has an aspect ratio above {MAX_ASPECT_RATIO} "
            "(the Qwen-VL image processor cannot take it)"
        )
    return Screenshot(path=path, size=size)


def _natural_key(path: Path) -> list[Any]:
    """Sort key reading digit runs as numbers: step2 < step10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def order_screenshots(shots: list[Screenshot], history_order: str | None) -> list[Screenshot]:
    """Screenshots oldest first (the current one last): as given (`history_order` None, so the
    last argument is the current screen), or sorted by natural file name or by mtime."""
    if not shots:
        raise UserInputError("no screenshot given: expected one or more image files, the current one last")
    if history_order is None:
        return list(shots)
    if history_order == "name":
        return sorted(shots, key=lambda shot: (_natural_key(shot.path), str(shot.path)))
    if history_order == "mtime":
        return sorted(shots, key=lambda shot: (shot.path.stat().st_mtime, _natural_key(shot.path)))
    raise UserInputError(
        f"--history-order {history_order!r} is unknown: expected one of {', '.join(HISTORY_ORDERS)}"
    )


def check_output_png(show_kept: str | None) -> Path | None:
    """The `--show-kept` path: a .png file in an existing directory (checked before any model work)."""
    if show_kept is None:
        return None
    path = Path(show_kept).expanduser()
    if path.suffix.lower() != ".png":
        raise UserInputError(f"--show-kept {show_kept}: expected a path ending in .png")
    if not path.parent.is_dir():
        raise UserInputError(
            f"--show-kept {show_kept}: directory {path.parent} does not exist (create it first)"
        )
    if path.is_dir():
        raise UserInputError(f"--show-kept {show_kept}: is a directory (expected a .png file path)")
    return path


def run_infer(
    shots: list[Screenshot],
    task: str,
    config: CompressionConfig,
    *,
    model_name: str,
    family_name: str,
    max_new_tokens: int,
    device: str,
    dtype: str,
    attn: str,
    picture: Path | None,
    show_status: Callable[[str], None] = lambda _text: None,
) -> dict[str, Any]:
    """Load the model, run the step under `config`, parse the action; everything as one report.
    `show_status` is told what is happening (loading, encoding, prefilling, decoding, drawing).

    A budget too small to hold the observation window for this prompt is the user's to fix, so it
    becomes a one-line `UserInputError`; any other engine error keeps its traceback.
    """
    quiet_transformers()
    from guikv.agents.resize import MAX_PIXELS, MIN_PIXELS
    from guikv.models import load
    from guikv.step import run_step

    show_status(f"loading {model_name}")
    model, processor = load(model_name, dtype=dtype, attn_implementation=attn, device=device)
    family = get_family(detect_family(model.config) if family_name == "auto" else family_name)
    paths = [str(shot.path) for shot in shots]
    messages = family.one_step_messages(task, paths)
    try:
        result = run_step(
            model,
            processor,
            messages,
            config,
            max_new_tokens=max_new_tokens,
            record_positions=picture is not None,
            progress=lambda progress: show_status(step_status(progress)),
        )
    except ValueError as error:
        if "window_size" not in str(error):
            raise
        raise UserInputError(f"--budget {config.budget:g} is too small for this prompt: {error}") from None
    current = shots[-1].size
    actions = family.parse(result.text, current, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    if picture is not None:
        from guikv.viz.kept import save_kept_picture

        show_status(f"drawing {picture}")
        images = [Image.open(shot.path).convert("RGB") for shot in shots]
        labels = [f"{role}: {shot.path.name}" for role, shot in zip(_roles(len(shots)), shots, strict=True)]
        save_kept_picture(
            picture,
            images,
            labels,
            prompt_tokens=result.prompt_tokens,
            image_spans=result.layout.image_spans,
            image_grids=result.image_grids,
            kept_positions=result.kept_positions,
            method=config.method,
            budget=config.budget,
            knobs=changed_knobs(config.to_dict()),
        )
    parameters = sum(parameter.numel() for parameter in model.parameters())
    tiny = model_name == "tiny" or parameters < TINY_PARAMETERS
    spans = result.layout.image_spans
    return {
        "model": model_name,
        "parameters": parameters,
        "tiny_model": tiny,
        "family": family.name,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "attn": model.config._attn_implementation,
        "task": task,
        "screenshots": [
            {
                "path": str(shot.path),
                "role": role,
                "width": shot.size[0],
                "height": shot.size[1],
                "tokens": e - s,
            }
            for shot, role, (s, e) in zip(shots, _roles(len(shots)), spans, strict=True)
        ],
        "config": config.to_dict(),
        "actions": [_action_dict(action, current) for action in actions],
        **result.to_dict(),
        "text_tokens": result.prompt_tokens - result.layout.num_image_tokens,
        "kv_mib_full": result.kv_bytes_full / MIB,
        "kv_mib_kept": result.kv_bytes_kept / MIB,
        "show_kept": str(picture) if picture is not None else None,
        "note": _tiny_note(parameters, paths, task) if tiny else None,
    }


def _roles(count: int) -> list[str]:
    """`history 1 .. history n-1`, then `current`."""
    return [f"history {index + 1}" for index in range(count - 1)] + ["current"]


def _action_dict(action: Action, size: tuple[int, int]) -> dict[str, Any]:
    """An action as JSON, with its points also in pixels of the current screenshot."""
    end = action.end_point
    return {
        **{key: value for key, value in action.to_dict().items() if key != "raw"},
        "parsed": action.parsed,
        "point_px": list(action.pixel_point(*size) or ()) or None,
        "end_point_px": [round(end[0] * size[0]), round(end[1] * size[1])] if end is not None else None,
    }


def _shell_word(word: str) -> str:
    """`word` quoted for a POSIX shell, preferring double quotes over shlex's `'"'"'` for text
    with apostrophes (e.g. a task naming a button)."""
    quoted = shlex.quote(word)
    if quoted == word or "'" not in word:
        return quoted
    return '"' + re.sub(r'([\\"$`])', r"\\\1", word) + '"'


def _tiny_note(parameters: int, paths: list[str], task: str) -> str:
    """Plain words for a random-weight model, and the command that runs a real agent on a GPU."""
    words = ["guikv", "infer", *paths, "--task", task, "--model", GPU_MODEL, "--device", "cuda"]
    command = " ".join(_shell_word(word) for word in words)
    return (
        f"This is the tiny test model ({parameters / 1e6:.1f} M parameters, random weights): its output "
        "and action are meaningless; the token counts, KV sizes, FLOPs and timings are real. "
        f"For a real agent step on a GPU: {command}"
    )


def _describe_action(action: dict[str, Any]) -> str:
    """One line for a parsed action: type, pixel point(s), text, keys, direction."""
    if not action["parsed"]:
        return "unparsed: no action could be read from the output above"
    parts = [action["type"]]
    if action["point_px"] is not None:
        parts.append(f"at ({action['point_px'][0]}, {action['point_px'][1]}) px of the current screenshot")
    if action["end_point_px"] is not None:
        parts.append(f"to ({action['end_point_px'][0]}, {action['end_point_px'][1]}) px")
    if action["text"] is not None:
        parts.append(f"text {action['text']!r}")
    if action["keys"]:
        parts.append(f"keys {'+'.join(action['keys'])}")
    if action["direction"]:
        parts.append(f"direction {action['direction']}")
    return " ".join(parts)


def _kept_summary(report: dict[str, Any]) -> str:
    """Kept tokens per layer: one number when uniform, else min-max and mean."""
    kept = report["kept_per_layer"]
    layers, prompt = len(kept), report["prompt_tokens"]
    if min(kept) == max(kept):
        count = f"{kept[0]:,} per layer"
    else:
        count = f"{min(kept):,}–{max(kept):,} per layer (mean {sum(kept) / layers:,.0f})"
    share = 100 * sum(kept) / (layers * prompt)
    return f"{count} × {layers} layers, {share:.1f}% of the prompt"


def render(report: dict[str, Any]) -> Panel:
    """The rich panel: output, action, tokens, cache, FLOPs and times of one step."""
    config = report["config"]
    shots = report["screenshots"]
    current = shots[-1]
    raw = report["text"]
    preview = (
        raw if len(raw) <= RAW_PREVIEW_CHARS else f"{raw[:RAW_PREVIEW_CHARS]}… ({len(raw):,} chars; --json)"
    )
    actions = report["actions"]
    action_line = _describe_action(actions[0])
    if len(actions) > 1:
        action_line += f" (+{len(actions) - 1} more)"
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("model", f"{report['model']} ({report['family']}, {report['device']}, {report['dtype']})")
    table.add_row(
        "screenshots",
        f"{len(shots)}: {len(shots) - 1} history + current {Path(current['path']).name} "
        f"({current['width']}x{current['height']})",
    )
    table.add_row("output", Text(preview))
    table.add_row("action", Text(action_line))
    table.add_row(
        "prompt tokens",
        f"{report['prompt_tokens']:,} ({report['image_tokens']:,} image in {report['num_images']} "
        f"screenshots, {report['text_tokens']:,} text)",
    )
    table.add_row("kept tokens", _kept_summary(report))
    table.add_row(
        "KV cache",
        f"{report['kv_mib_full']:.2f} MiB → {report['kv_mib_kept']:.2f} MiB "
        f"({report['kv_saved_percent']:.1f}% freed)",
    )
    table.add_row(
        "decode FLOPs",
        f"{report['decode_flops_saved_percent']:.1f}% saved ({report['generated_tokens']} tokens)",
    )
    table.add_row(
        "time",
        f"prefill {report['prefill_seconds']:.2f} s · decode {report['decode_seconds']:.2f} s "
        f"({report['decode_ms_per_token']:.1f} ms/token) · scoring {report['scoring_seconds']:.3f} s",
    )
    if report["show_kept"]:
        table.add_row("kept picture", escape(report["show_kept"]))
    parts: list[Any] = [table]
    if report["note"]:
        parts.append(Text("\n" + report["note"], style="yellow"))
    title = f"guikv infer · {config['method']} @ {config['budget']:g}% · {report['family']}"
    return Panel(Group(*parts), title=title, title_align="left", expand=False)
