"""`guikv eval`: run a model (or the oracle) on GUI-agent benchmarks under KV-cache compression.

Settings come from the flags (with `--set KNOB=VALUE` for any other compression knob), then a
`--config` YAML, then the defaults (flags given explicitly win). An unknown YAML key is refused with
the closest known one. Every (benchmark, budget) pair gets its own run directory
(`benchmarks.rundir`), which a re-run resumes, retrying the samples that failed. Under `accelerate
launch` (or torchrun) the samples are sharded over the processes and the main process merges the
traces. `--batch-size N` runs independent samples in batches (`benchmarks.runner`,
`benchmarks.batching`). A rich progress bar runs on stderr (plain progress lines when stderr is not a
terminal); one results table per benchmark is printed at the end, and a warning for every run with
failed samples. Ctrl-C says which run holds how many samples and that the same command resumes it.
`guikv eval --rescore RUN_DIR...` re-scores finished runs with today's parsers and metrics instead
(`benchmarks.rescore`), loading no model. See docs/eval.md.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from benchmarks import BENCHMARKS, agentnetbench, androidcontrol, get_benchmark
from benchmarks.carried import CarriedPlayer, CarriedResponder
from benchmarks.common import BenchmarkSpec, LoadResult
from benchmarks.flags import check_max_tokens, parse_percentages, quiet_transformers
from benchmarks.locations import data_paths
from benchmarks.rescore import rescore
from benchmarks.rundir import capacity_text, count_records, method_label, run_directory
from benchmarks.runner import (
    ORACLE,
    ModelResponder,
    OracleResponder,
    Player,
    Responder,
    RunEvents,
    Shard,
    model_can_batch,
    run,
)
from guikv.agents import FAMILY_NAMES, AgentFamily, detect_family, get_family
from guikv.config import FULL_BUDGET, CompressionConfig
from guikv.errors import UserInputError, did_you_mean
from guikv_cli import options
from guikv_cli.interrupt import saved_work
from guikv_cli.knobs import config_with_knobs, knob_settings
from guikv_cli.progress import PlainProgress, status
from guikv_cli.report import compact_table, metric_cell, metric_header, print_tables

INSTRUCTION_LEVELS = ("high", "low")
DEFAULT_OUTPUT = Path("runs")
BENCHMARK_HELP = (
    f"One or more of: {', '.join(BENCHMARKS)} (or `benchmark:` in --config); with --rescore, "
    "run directories (or folders holding them)."
)
MISSING_SHOWN = 3
"""How many missing screenshot paths a skip notice names before it only counts the rest."""

_FLAG_FIELDS = ("method", "alpha", "temperature", "window_size")
_EXTRA_COMPRESSION = {
    f.name: type(f.default)
    for f in dataclasses.fields(CompressionConfig)
    if f.name not in (*_FLAG_FIELDS, "budget")
}
"""CompressionConfig fields without a flag of their own, settable from `--config` (and written to
every run's config.yaml, so a run's config.yaml can be passed back as `--config`)."""

_KEY_TYPES: dict[str, str] = {
    "benchmark": "names",
    "data": "text",
    "images": "text",
    "model": "text",
    "family": "text",
    "method": "text",
    "budgets": "numbers",
    "screenshots": "int",
    "limit": "int",
    "split": "text",
    "instruction_level": "text",
    "max_new_tokens": "int",
    "output": "text",
    "resume": "bool",
    "retry_failed": "bool",
    "batch_size": "int",
    "carry": "bool",
    "max_tokens": "int",
    "device": "text",
    "dtype": "text",
    "attn": "text",
    "alpha": "float",
    "temperature": "float",
    "window_size": "int",
    **{
        name: {bool: "bool", int: "int", float: "float", str: "text"}[kind]
        for name, kind in _EXTRA_COMPRESSION.items()
    },
}
"""Every key a `--config` YAML may hold (flag names, `-` or `_`), with the kind of value expected."""

_KEY_ALIASES = {"budget": "budgets"}
"""YAML keys read as another: a run's config.yaml holds its one `budget`, and is a valid `--config`."""

_EXPECTED = {
    "text": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "numbers": "a number or a list of numbers",
    "names": "a name or a list of names",
}
"""How a `--config` error describes each kind of value."""


@dataclasses.dataclass(frozen=True)
class EvalRequest:
    """Everything one `guikv eval` invocation was asked to do, validated."""

    benchmarks: tuple[BenchmarkSpec, ...]
    data: Path | None
    images: Path | None
    model: str
    family: str
    configs: tuple[CompressionConfig, ...]
    screenshots: int
    limit: int | None
    split: str | None
    instruction_level: str
    max_new_tokens: int | None
    output: Path
    resume: bool
    retry_failed: bool
    batch_size: int
    carry: bool
    max_tokens: int | None
    device: str
    dtype: str
    attn: str


def register(app: typer.Typer) -> None:
    """Add the `eval` subcommand to the guikv app."""
    app.command("eval")(eval_command)


def eval_command(
    ctx: typer.Context,
    benchmark: list[str] | None = typer.Argument(None, help=BENCHMARK_HELP),
    data: Path | None = typer.Option(None, "--data", help="Benchmark data directory (else its env var)."),
    images: Path | None = typer.Option(None, "--images", help="Screenshot directory (else its env var)."),
    model: str = typer.Option(
        "tiny", "--model", help="tiny, a hub id, a model directory, or oracle (answers the ground truth)."
    ),
    family: str = typer.Option("auto", "--family", help=f"auto, {', '.join(FAMILY_NAMES)}."),
    method: str = options.METHOD,
    budgets: str | None = typer.Option(
        None,
        "--budgets",
        metavar="LIST",
        help="Percentages of the prompt's tokens kept, comma-separated, one run each, e.g. 1,5,10 "
        "(default 10).",
    ),
    screenshots: int = typer.Option(5, "--screenshots", help="AgentNetBench: screenshots per prompt."),
    limit: int | None = typer.Option(
        None, "--limit", help="First N records of each benchmark file (AgentNetBench: trajectories)."
    ),
    split: str | None = typer.Option(None, "--split", help="Benchmark split (default: all)."),
    instruction_level: str = typer.Option("high", "--instruction-level", help="AndroidControl: high|low."),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="Generation cap (default: the benchmark's own)."
    ),
    output: Path = typer.Option(DEFAULT_OUTPUT, "--output", help="Root of the run directories."),
    config: Path | None = typer.Option(None, "--config", help="YAML with the same keys as the flags."),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Skip samples already scored (--no-resume: start afresh)."
    ),
    retry_failed: bool = typer.Option(
        True, "--retry-failed/--keep-failed", help="On resume, run the samples that failed again."
    ),
    batch_size: int = typer.Option(
        1,
        "--batch-size",
        help="Samples per batched model call (independent samples only: AgentNetBench batches "
        "steps of different trajectories); halved on out of memory. Not a run setting.",
    ),
    carry: bool = typer.Option(
        False,
        "--carry",
        help="AgentNetBench: carry each trajectory's compressed cache from step to step. The prompt is "
        "the native multi-turn layout (instruction first, each screenshot and the model's own answer "
        "as turns, the --screenshots most recent screenshots kept) instead of the paper's; each step "
        "prefills only its new turn; records add the tokens prefilled. A run of its own (directory "
        "...-carry-...). Not with --batch-size > 1, the oracle or OpenCUA.",
    ),
    max_tokens: int | None = options.MAX_TOKENS,
    rescore_runs: bool = typer.Option(
        False,
        "--rescore",
        help="Re-score the finished run directories given as arguments with today's parsers and "
        "metrics (no model is loaded).",
    ),
    device: str = options.DEVICE,
    dtype: str = options.DTYPE,
    attn: str = options.ATTN,
    alpha: float = options.ALPHA,
    temperature: float = options.TEMPERATURE,
    window_size: int = options.WINDOW,
    settings: list[str] | None = options.SET,
) -> None:
    """Evaluate a model on GUI-agent benchmarks with a compressed KV cache (resumable, shardable), or
    re-score finished runs with --rescore."""
    values = dict(ctx.params)
    explicit = {name for name in values if _given(ctx, name)}
    if rescore_runs:
        flags = {param.name: param.opts[0] for param in ctx.command.params}
        execute_rescore(benchmark or [], {flags[name] for name in explicit - {"benchmark", "rescore_runs"}})
        return
    if config is not None:
        for key, value in read_config(config).items():
            if key not in explicit:
                values[key] = value
    knobs = knob_settings(values.pop("settings") or [], own_flags={"budget": "--budgets"})
    execute(build_request(values, knobs))


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the flag `name` was typed on the command line (compared by name: typer ships its own
    copy of click, whose ParameterSource enum is not click's)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def read_config(path: Path) -> dict[str, Any]:
    """The settings of a `--config` YAML, keys normalised to flag names with `_`; an unknown key, a
    value of the wrong kind or an unreadable file is a one-line `UserInputError`."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserInputError(f"--config {path}: cannot read it ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserInputError(f"--config {path}{where}: expected a YAML mapping of settings") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserInputError(
            f"--config {path}: expected a YAML mapping of settings, got {type(data).__name__}"
        )
    settings: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        key = _KEY_ALIASES.get(key, key)
        if key not in _KEY_TYPES:
            hint = did_you_mean(str(raw_key), [*_KEY_TYPES, *_KEY_ALIASES])
            raise UserInputError(
                f"--config {path}: unknown key '{raw_key}'{hint}; expected some of: {', '.join(_KEY_TYPES)}"
            )
        if value is not None:
            settings[key] = _coerce(path, str(raw_key), _KEY_TYPES[key], value)
    return settings


def _is_number(value: Any) -> bool:
    """Whether a YAML value is a number (booleans are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _coerce(path: Path, key: str, kind: str, value: Any) -> Any:
    """A YAML value checked, and normalised, for the kind its key expects."""
    items = value if isinstance(value, list) else [value]
    if kind == "text" and (isinstance(value, str) or _is_number(value)):
        return str(value)
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and _is_number(value):
        return float(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "numbers" and items and all(_is_number(item) for item in items):
        return [float(item) for item in items]
    if kind == "names" and items and all(isinstance(item, str) for item in items):
        return items
    raise UserInputError(f"--config {path}: key '{key}': expected {_EXPECTED[kind]}, got {value!r}")


def build_request(values: dict[str, Any], knobs: dict[str, Any] | None = None) -> EvalRequest:
    """Validate merged settings and the `--set` knobs into an `EvalRequest`; each problem is a
    one-line error naming the flag."""
    names = values.get("benchmark") or []
    if not names:
        raise UserInputError(f"benchmark: missing; expected one or more of: {', '.join(BENCHMARKS)}")
    specs = tuple(get_benchmark(name) for name in dict.fromkeys(names))
    if len(specs) > 1:
        for flag in ("data", "images", "split"):
            if values.get(flag) is not None:
                raise UserInputError(
                    f"--{flag} applies to one benchmark; with several, set each one's environment "
                    f"variables ({', '.join(s.data_env + '/' + s.images_env for s in specs)})"
                )
    _positive(values.get("limit"), "--limit", allow_none=True)
    _positive(values.get("screenshots"), "--screenshots")
    _positive(values.get("max_new_tokens"), "--max-new-tokens", allow_none=True)
    _positive(values.get("batch_size"), "--batch-size")
    level = values["instruction_level"]
    if level not in INSTRUCTION_LEVELS:
        raise UserInputError(f"--instruction-level {level} is invalid: expected high or low")
    family = str(values["family"]).strip().lower()
    if family != "auto":
        get_family(family)
    knobs = knobs or {}
    compression = {
        name: values[name]
        for name in (*_FLAG_FIELDS, *_EXTRA_COMPRESSION)
        if name in values and name not in knobs
    }
    budgets = values.get("budgets") or "10"
    if isinstance(budgets, str):
        budgets = parse_percentages(budgets, "--budgets")
    else:
        budgets = parse_percentages(",".join(f"{budget:g}" for budget in budgets), "--config budgets")
    oracle = str(values["model"]) == ORACLE
    carry = bool(values.get("carry"))
    if carry:
        check_carry_request(specs, values["batch_size"], oracle)
    if oracle and compression.get("method") == ORACLE:
        del compression["method"]  # an oracle run's own config.yaml, passed back as --config
    configs = tuple(dict.fromkeys(config_with_knobs(knobs, **compression, budget=b) for b in budgets))
    if oracle:
        configs = configs[:1]  # the oracle compresses nothing: one run, whatever the budgets
    max_tokens = values.get("max_tokens")
    check_carry_capacity(max_tokens, carry, configs[0], values.get("budgets") is not None)
    return EvalRequest(
        benchmarks=specs,
        data=_path(values.get("data")),
        images=_path(values.get("images")),
        model=str(values["model"]),
        family=family,
        configs=configs,
        screenshots=values["screenshots"],
        limit=values.get("limit"),
        split=values.get("split"),
        instruction_level=level,
        max_new_tokens=values.get("max_new_tokens"),
        output=Path(values["output"]),
        resume=values["resume"],
        retry_failed=values["retry_failed"],
        batch_size=values["batch_size"],
        carry=carry,
        max_tokens=max_tokens,
        device=values["device"],
        dtype=values["dtype"],
        attn=values["attn"],
    )


def check_carry_capacity(
    max_tokens: int | None, carry: bool, config: CompressionConfig, budgets_given: bool
) -> None:
    """Check `--max-tokens`: a carried trajectory's fixed capacity per layer, so it needs `--carry`,
    replaces `--budgets`, holds the window plus one token, and has nothing to cut under `full`."""
    if max_tokens is None:
        return
    if not carry:
        raise UserInputError(
            f"--max-tokens {max_tokens} is a carried trajectory's capacity: add --carry, or drop it and "
            "give --budgets"
        )
    if config.method == "full":
        raise UserInputError(f"--max-tokens {max_tokens}: --method full keeps every token; drop --max-tokens")
    check_max_tokens(max_tokens, budgets_given, config.window_size)


def check_carry_request(specs: Sequence[BenchmarkSpec], batch_size: int, oracle: bool) -> None:
    """Refuse `--carry` where no cache can be carried: a benchmark without trajectories, a batch
    (a trajectory's steps run one after another, one trajectory at a time), the oracle (no model)."""
    others = [spec.name for spec in specs if spec.name != agentnetbench.SPEC.name]
    if others:
        raise UserInputError(
            f"--carry: {others[0]} has no trajectories to carry a cache through; only agentnetbench does "
            "(drop --carry or the benchmark)"
        )
    if batch_size > 1:
        raise UserInputError(
            f"--carry runs one step of one trajectory at a time (each step continues its trajectory's "
            f"cache); expected --batch-size 1, got {batch_size}"
        )
    if oracle:
        raise UserInputError("--carry: the oracle runs no model, so it has no cache to carry (drop --carry)")


def _positive(value: Any, flag: str, *, allow_none: bool = False) -> None:
    """Check a count flag: a positive integer (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserInputError(f"{flag} {value} is invalid: expected a positive integer")


def _path(value: Any) -> Path | None:
    """A path setting, None when absent."""
    return None if value is None else Path(value)


def load_benchmark(
    spec: BenchmarkSpec, request: EvalRequest, notes: Callable[[str], None]
) -> tuple[LoadResult[Any], Path, Path]:
    """Load a benchmark's samples; say which were skipped (missing screenshots) or excluded, and fail
    when nothing is left to run (the screenshot directory is most likely wrong)."""
    data, images = data_paths(spec, request.data, request.images)
    extra = {"instruction_level": request.instruction_level} if spec.name == androidcontrol.SPEC.name else {}
    loaded = spec.load(data, images, request.split, limit=request.limit, **extra)
    missing = [str(path) for skipped in loaded.skipped for path in skipped.missing]
    if loaded.skipped and not loaded.samples:
        raise UserInputError(
            f"{spec.name}: none of the {len(loaded.skipped)} samples has its screenshot under {images} "
            f"(first missing: {missing[0] if missing else loaded.skipped[0].sample_id}); "
            f"expected --images or {spec.images_env} to point at the screenshots"
        )
    if not loaded.samples:
        raise UserInputError(
            f"{spec.name}: {data} holds no sample to evaluate (split {request.split or 'all'})"
        )
    if loaded.skipped:
        shown = ", ".join(missing[:MISSING_SHOWN])
        more = f" (+{len(missing) - MISSING_SHOWN} more)" if len(missing) > MISSING_SHOWN else ""
        notes(
            f"{spec.name}: {len(loaded.skipped)} of {len(loaded.skipped) + len(loaded.samples)} samples "
            f"skipped, screenshot missing: {shown}{more}; counted as skipped in the summary"
        )
    if loaded.excluded:
        reason = loaded.excluded[0].reason
        notes(
            f"{spec.name}: {len(loaded.excluded)} records excluded by the benchmark's rules ({reason}, ...)"
        )
    return loaded, data, images


def make_shard(device: str) -> tuple[Shard, str]:
    """This process's shard and the device it should use: under `accelerate launch`/torchrun
    (WORLD_SIZE > 1) accelerate's PartialState gives the rank, the barrier and a per-process device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard(), device
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available(), timeout=timedelta(hours=24))
    chosen = str(state.device) if device in ("auto", "cuda") else device
    return Shard(state.process_index, state.num_processes, state.wait_for_everyone), chosen


@dataclasses.dataclass(frozen=True)
class _Agent:
    """What answers the benchmarks: its model id for settings, family, resolved dtype/attention (None
    for the oracle), whether it can answer a batch of prompts at once and carry a cache over a
    trajectory, and a factory of responders per compression config and token cap (carried ones
    with `--carry`)."""

    model_id: str
    family: AgentFamily
    dtype: str | None
    attn: str | None
    can_batch: bool
    can_carry: bool
    responder: Callable[[CompressionConfig, int], Responder]


def make_agent(request: EvalRequest, device: str) -> _Agent:
    """The oracle, or the model loaded once for every benchmark and budget."""
    if request.model == ORACLE:
        oracle = OracleResponder(get_family("ui-tars" if request.family == "auto" else request.family))
        return _Agent(ORACLE, oracle.family, None, None, True, False, lambda config, tokens: oracle)
    from guikv.models import adapter_for, load
    from guikv.models.loading import DTYPES, resolve_attention, resolve_device, resolve_dtype

    quiet_transformers()
    torch_device = resolve_device(device)
    dtype = next(
        name for name, value in DTYPES.items() if value == resolve_dtype(request.dtype, torch_device)
    )
    attn = resolve_attention(request.attn, torch_device)
    model, processor = load(request.model, dtype=dtype, attn_implementation=attn, device=str(torch_device))
    family = get_family(detect_family(model.config) if request.family == "auto" else request.family)
    path = Path(request.model).expanduser()
    model_id = str(path.resolve()) if path.is_dir() else request.model

    def responder(config: CompressionConfig, tokens: int) -> Responder:
        """The model's responder for one run: carried over each trajectory with `--carry`."""
        if request.carry:
            return CarriedResponder(
                model, processor, config, tokens, family, request.screenshots, request.max_tokens
            )
        return ModelResponder(model, processor, config, tokens)

    can_carry = adapter_for(model).carrying is not None
    return _Agent(model_id, family, dtype, attn, model_can_batch(model), can_carry, responder)


def check_batch_size(request: EvalRequest, agent: _Agent) -> None:
    """Refuse `--batch-size` above 1 for a model whose prompts cannot be batched (OpenCUA), before
    any run directory is touched: quietly running at 1 would take many times longer than asked."""
    if request.batch_size > 1 and not agent.can_batch:
        raise UserInputError(
            f"--batch-size {request.batch_size}: {request.model} cannot run several prompts in one batch "
            "under compression (the model expands its image placeholders itself); expected --batch-size 1"
        )


def check_carry(request: EvalRequest, agent: _Agent) -> None:
    """Refuse `--carry` for a model whose cache cannot be carried (OpenCUA), before any run directory
    is touched."""
    if request.carry and not agent.can_carry:
        raise UserInputError(
            f"--carry: {request.model} cannot carry its cache from step to step (the model expands its "
            "image placeholders itself, so a new turn cannot be fed on a cache); drop --carry"
        )


def run_settings(
    spec: BenchmarkSpec,
    request: EvalRequest,
    agent: _Agent,
    config: CompressionConfig,
    paths: tuple[Path, Path],
) -> dict[str, Any]:
    """Every setting of one run, in the order config.yaml shows them; their hash names the directory.
    The oracle compresses nothing: its method is `oracle` and its budget 100 (its knobs are the
    defaults, whatever the flags say, so they never make a second oracle run directory). A carried
    run (`--carry`) ends with `carry: true`, and with `--max-tokens N` then `max_tokens: N` and a
    null budget (no share of the prompt sets its capacity); a re-prefilled one has neither key, so
    its directory is the one it had before carrying existed."""
    oracle = agent.model_id == ORACLE
    compression = (CompressionConfig() if oracle else config).to_dict()
    method, budget = compression.pop("method"), float(compression.pop("budget"))
    if oracle:
        method, budget = ORACLE, FULL_BUDGET
    knobs = {
        "alpha": float(compression.pop("alpha")),
        "temperature": float(compression.pop("temperature")),
        "window_size": compression.pop("window_size"),
    }
    return {
        "benchmark": spec.name,
        "split": request.split or spec.default_split,
        "data": str(paths[0]),
        "images": str(paths[1]),
        "model": agent.model_id,
        "family": agent.family.name,
        "method": method,
        "budget": None if request.max_tokens is not None else budget,
        **knobs,
        "screenshots": request.screenshots if spec.name == agentnetbench.SPEC.name else None,
        "limit": request.limit,
        "max_new_tokens": request.max_new_tokens or spec.max_new_tokens,
        "dtype": agent.dtype,
        "attn": agent.attn,
        "instruction_level": request.instruction_level if spec.name == androidcontrol.SPEC.name else None,
        **compression,
        **({"carry": True} if request.carry else {}),
        **({"max_tokens": request.max_tokens} if request.max_tokens is not None else {}),
    }


class _Display:
    """The rich side of a run on stderr: notices, and progress (main process only): a bar per run
    on a terminal, plain progress lines at a steady rate otherwise (nohup, CI, `| tee`), where a
    live bar would only show once finished."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        plain = shard.is_main and not self.console.is_terminal
        self.plain = PlainProgress(self._plain_line) if plain else None
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not shard.is_main or plain,
        )
        self.task: TaskID | None = None
        self.live = False

    def _plain_line(self, text: str) -> None:
        """One plain progress line."""
        self.console.print(text, markup=False)

    def note(self, text: str) -> None:
        """Print one notice line from the run (a resume, a dropped line, a failed generation); other
        processes' notices carry their rank."""
        prefix = f"[rank {self.shard.index}] " if self.shard.count > 1 else ""
        self.progress.console.print(prefix + text, style="yellow", markup=False)

    def main_note(self, text: str) -> None:
        """Print a notice every process would give alike (skipped screenshots) from the main one only."""
        if self.shard.is_main:
            self.progress.console.print(text, style="yellow", markup=False)

    def start(self, label: str, total: int) -> None:
        """A new progress bar for one run (the display goes live with the first one, so an error
        before any sample runs prints only its own line), or its first plain line."""
        if self.plain is not None:
            self.plain.start(label, total)
            return
        if not self.live:
            self.progress.start()
            self.live = True
        self.task = self.progress.add_task(label, total=total)

    def stop(self) -> None:
        """End the live display, leaving the finished bars on screen."""
        if self.live:
            self.progress.stop()
            self.live = False

    def advance(self) -> None:
        """One sample done."""
        if self.plain is not None:
            self.plain.advance()
        elif self.task is not None:
            self.progress.advance(self.task)

    def events(self) -> RunEvents:
        """The runner callbacks bound to this display."""
        return RunEvents(note=self.note, start=self.start, advance=self.advance)


def execute(request: EvalRequest) -> None:
    """Load every benchmark (fail fast on bad data), load the model once, run each (benchmark, budget)
    into its run directory and print one table per benchmark."""
    shard, device = make_shard(request.device)
    display = _Display(shard)
    loaded = [(spec, *load_benchmark(spec, request, display.main_note)) for spec in request.benchmarks]
    with status(display.console, f"loading {request.model}"):
        agent = make_agent(request, device)
    check_batch_size(request, agent)
    check_carry(request, agent)
    tables: list[Table] = []
    warnings: list[dict[str, Any]] = []
    finished = 0
    try:
        for spec, samples, data, images in loaded:
            summaries: list[dict[str, Any]] = []
            for config in request.configs:
                settings = run_settings(spec, request, agent, config, (data, images))
                run_dir = run_directory(request.output, settings)
                saved_work.set(partial(saved_samples, run_dir, len(samples.samples), finished))
                responder = agent.responder(config, settings["max_new_tokens"])
                summary = run(
                    spec,
                    samples,
                    settings,
                    run_dir,
                    responder,
                    agent.family,
                    screenshots=request.screenshots,
                    resume=request.resume,
                    retry_failed=request.retry_failed,
                    shard=shard,
                    events=display.events(),
                    batch_size=request.batch_size,
                    player=CarriedPlayer if request.carry else Player,
                )
                finished += 1
                if summary is not None:
                    summaries.append({**summary, "run_dir": str(run_dir)})
                    if summary["samples_failed"]:
                        warnings.append(summaries[-1])
            if summaries:
                tables.append(results_table(spec, summaries))
    finally:
        display.stop()
    if shard.is_main:
        print_tables(Console(), tables)
        for summary in warnings:
            display.console.print(failure_line(summary), style="yellow", markup=False)


def saved_samples(run_dir: Path, total: int, finished: int) -> str:
    """What Ctrl-C leaves: the records of the run in progress (and the runs finished before it),
    and that the same command resumes."""
    earlier = f" ({finished} earlier run{'s' if finished != 1 else ''} finished)" if finished else ""
    return (
        f"{run_dir} holds {count_records(run_dir)} of {total} samples{earlier}; re-run the same "
        "command to resume (finished samples are kept)"
    )


def failure_line(summary: dict[str, Any]) -> str:
    """One line about a run with failed samples: which failed, what its numbers are over, and what
    they become when the failed samples count as wrong."""
    failed = summary["failed"]
    shown = ", ".join(f"{item['sample_id']} ({item['error']})" for item in failed[:MISSING_SHOWN])
    more = f" (+{len(failed) - MISSING_SHOWN} more)" if len(failed) > MISSING_SHOWN else ""
    wrong = summary["metrics_failures_as_wrong"] or {}
    counted = ", ".join(f"{column} {metric_cell(wrong, column)}" for column in summary["metric_columns"])
    return (
        f"{summary['run_dir']}: {summary['samples_failed']} samples FAILED: {shown}{more}; the metrics "
        f"are over the {summary['samples_scored']} scored samples; counting the failed ones wrong (%): "
        f"{counted}; re-run the same command to retry them"
    )


def execute_rescore(targets: Sequence[str], given: set[str]) -> None:
    """`--rescore`: re-score the run directories under `targets` (no other flag may be `given`), say
    what changed, and print the new tables (one per benchmark and model) and any failure warnings."""
    if given:
        raise UserInputError(
            f"--rescore takes run directories only; {', '.join(sorted(given))} belongs to running an eval"
        )
    if not targets:
        raise UserInputError("--rescore: missing RUN_DIR; expected one or more eval run directories")
    stderr = Console(stderr=True, highlight=False, soft_wrap=True)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for result, kept in rescore([Path(target) for target in targets]):
        stderr.print(
            f"re-scored {result.run_dir}: {len(result.records)} samples, {len(result.changed)} scored "
            f"differently; the previous summary is kept as {kept.name}",
            markup=False,
        )
        key = (result.spec.name, str(result.summary["model"]))
        groups.setdefault(key, []).append({**result.summary, "run_dir": str(result.run_dir)})
    print_tables(
        Console(), [results_table(BENCHMARKS[name], summaries) for (name, _), summaries in groups.items()]
    )
    for summaries in groups.values():
        for summary in summaries:
            if summary["samples_failed"]:
                stderr.print(failure_line(summary), style="yellow", markup=False)


def _saved(value: Any) -> str:
    """A saved-percentage number with one decimal; a dash when nothing was measured (the oracle)."""
    return "—" if value is None else f"{value:.1f}"


def _carried(summary: dict[str, Any]) -> bool:
    """Whether a run carried its cache over each trajectory (`--carry`)."""
    return bool(summary["config"].get("carry"))


def _prefilled(summary: dict[str, Any]) -> str:
    """A run's mean prefilled and prompt tokens per step, `312 of 1450`; a dash when unmeasured."""
    prefill = summary["prefill"]
    if prefill["prompt_tokens_mean"] is None:
        return "—"
    return f"{prefill['prefilled_tokens_mean']:.0f} of {prefill['prompt_tokens_mean']:.0f}"


def results_table(spec: BenchmarkSpec, summaries: Sequence[dict[str, Any]]) -> Table:
    """One benchmark's results: a row per method and budget, its own metric columns (in %, each ±
    its standard error), decode FLOPs and KV memory saved (%), and how many samples were scored,
    skipped (and failed); a run with failed samples gets a second row with its metrics counting
    them as wrong. With a carried run (`--carry`) its method reads `METHOD carried` and a column
    gives each run's mean prefilled of prompt tokens per step."""
    first = summaries[0]
    failed = any(s["samples_failed"] for s in summaries)
    carried = any(_carried(s) for s in summaries)
    headers = [
        "method",
        "budget %",
        *(metric_header(column) for column in spec.metric_columns),
        "decode\nFLOPs\nsaved %",
        "KV\nsaved %",
        *(("prefilled\ntokens\nper step",) if carried else ()),
        "scored",
        "skipped",
        *(("failed",) if failed else ()),
    ]
    table = compact_table(f"{spec.title} · {first['model']} ({first['family']})", headers)
    table.caption = f"metrics in % ± standard error; runs under {Path(first['run_dir']).parent}"
    table.caption_justify = "left"
    for summary in summaries:
        saved = summary["savings"]
        table.add_row(
            method_label(summary["method"], summary["config"]),
            capacity_text(summary["config"]),
            *(metric_cell(summary["metrics"], column) for column in spec.metric_columns),
            _saved(saved["decode_flops_saved_percent"]),
            _saved(saved["kv_saved_percent"]),
            *((_prefilled(summary),) if carried else ()),
            str(summary["samples_scored"]),
            str(summary["samples_skipped"]),
            *((str(summary["samples_failed"]),) if failed else ()),
        )
        if summary["samples_failed"]:
            wrong = summary["metrics_failures_as_wrong"]
            table.add_row(
                "  failed as wrong",
                "",
                *(metric_cell(wrong, column) for column in spec.metric_columns),
                style="yellow",
            )
    return table
