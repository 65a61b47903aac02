"""`guikv analyze-attention`: the paper's sparsity analysis, on screenshots or benchmark prompts.

For each layer and head it measures how sparse attention is (VL-Cache's threshold rule) and how
many keys hold most of the attention, split by key kind, and says whether the data support the
paper's claim that GUI attention is high and nearly uniform across layers. Writes `sparsity.json`,
PNG figures and optionally a self-contained HTML report. Definitions: docs/analysis.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from benchmarks.flags import quiet_transformers
from guikv.errors import UserInputError
from guikv_cli.options import ATTN, DEVICE, DTYPE, MODEL
from guikv_cli.report import compact_table, print_tables, write_html
from guikv_cli.screenshots import check_screenshots, resolve_family

DEFAULT_OUTPUT = Path("guikv-analysis")
DEFAULT_LIMIT = 1
"""`--limit`: the first record of each benchmark file (one AgentNetBench trajectory, all its steps)."""


def load_benchmark_samples(
    name: str, data: Path | None, images: Path | None, split: str | None, limit: int
) -> list[Any]:
    """The benchmark's samples from the first `limit` records of each data file (AgentNetBench: the
    first `limit` trajectories), read before any model is loaded so data errors come fast. `--data`,
    `--images`, `--split` and `--limit` mean what they mean for `guikv eval`."""
    from benchmarks import get_benchmark
    from benchmarks.locations import data_paths

    spec = get_benchmark(name)
    data_dir, images_dir = data_paths(spec, data, images)
    loaded = spec.load(data_dir, images_dir, split=split, limit=limit)
    if not loaded.samples:
        raise UserInputError(
            f"--benchmark {name}: no sample to analyze in {data_dir} "
            f"({len(loaded.skipped)} skipped for missing screenshots under {images_dir})"
        )
    return list(loaded.samples)


def _pct(value: float | None) -> str:
    """A share in percent without the sign (the table header says %)."""
    return "—" if value is None else f"{100 * value:.1f}"


KIND_HEADERS = {"current": "current", "previous": "earlier", "text": "text"}
"""Short names of the key kinds: the current screenshot, earlier screenshots, text."""


def _present_kinds(report: dict[str, Any]) -> list[str]:
    """Key kinds with at least one token in the analyzed prompts, current screenshot first."""
    return [kind for kind in ("current", "previous", "text") if report["by_kind"][kind]["tokens"]]


def layer_table(report: dict[str, Any]) -> Table:
    """The per-layer summary in percent: sparsity (mean and range over heads), the share of keys
    holding the attention mass, and each key kind's share of the mass."""
    kinds = _present_kinds(report)
    headers = [
        "layer",
        f"sparsity\n≤{report['threshold']:g}",
        "heads\nmin–max",
        f"keys for\n{report['mass']:.0%} mass",
        *(f"mass\n{KIND_HEADERS[kind]}" for kind in kinds),
    ]
    table = compact_table(f"Attention by layer, % (mean over {report['num_heads']} heads)", headers, left=0)
    for layer in report["layers"]:
        heads = layer["sparsity_heads"]
        table.add_row(
            str(layer["layer"]),
            _pct(layer["sparsity"]),
            f"{_pct(heads['min'])}–{_pct(heads['max'])}",
            _pct(layer["keys_for_mass"]),
            *(_pct(layer["kinds"][kind]["mass_share"]) for kind in kinds),
        )
    return table


def kind_table(report: dict[str, Any]) -> Table:
    """Per key kind, in percent and averaged over layers: its share of the keys, its sparsity,
    its share of the attention mass and of the mass sets, and the share of its keys they need."""
    headers = [
        "keys",
        "tokens",
        "key\nshare",
        "sparsity",
        "mass\nshare",
        f"in {report['mass']:.0%}\nmass set",
        "own keys\nin set",
    ]
    table = compact_table("By key kind, % (mean over layers)", headers)
    for kind in _present_kinds(report):
        stats = report["by_kind"][kind]
        table.add_row(
            KIND_HEADERS[kind],
            str(stats["tokens"]),
            *(
                _pct(stats[name])
                for name in ("key_share", "sparsity", "mass_share", "set_share", "keys_for_mass")
            ),
        )
    return table


def composition_line(report: dict[str, Any]) -> str:
    """What was analyzed: samples, prompt tokens per kind and query rows."""
    samples = report["samples"]
    tokens = {kind: report["by_kind"][kind]["tokens"] for kind in report["kinds"]}
    prompt = sum(sample["prompt_tokens"] for sample in samples)
    rows = sum(sample["query_rows"] for sample in samples)
    which = f"the last {report['window_size']} of each prompt" if report["mode"] == "window" else "all"
    return (
        f"{len(samples)} prompt{'s' if len(samples) != 1 else ''}, {prompt} tokens "
        f"(current screenshot {tokens['current']}, earlier screenshots {tokens['previous']}, "
        f"text {tokens['text']}); {rows} query rows per head "
        f"({which})"
    )


def _check_options(
    screenshots: Sequence[Path],
    task: str | None,
    benchmark: str | None,
    threshold: float,
    mass: float,
    window_size: int,
    limit: int,
    full: bool,
    attn: str,
) -> None:
    """Refuse contradictory or out-of-range options before anything is loaded."""
    if screenshots and benchmark:
        raise UserInputError("give SCREENSHOT... --task TEXT or --benchmark NAME --data DIR, not both")
    if not screenshots and not benchmark:
        raise UserInputError(
            "nothing to analyze: give SCREENSHOT... --task TEXT, or --benchmark NAME --data DIR"
        )
    if screenshots and not (task and task.strip()):
        raise UserInputError("SCREENSHOT... needs --task TEXT (the task the agent is given)")
    if benchmark and task:
        raise UserInputError("--task is for screenshots; --benchmark builds each sample's own prompt")
    if not 0 < threshold < 1:
        raise UserInputError(f"--threshold {threshold} is invalid: expected a number in (0, 1)")
    if not 0 < mass <= 1:
        raise UserInputError(f"--mass {mass} is invalid: expected a share in (0, 1]")
    if window_size < 1:
        raise UserInputError(f"--window-size {window_size} is invalid: expected an integer >= 1")
    if limit < 1:
        raise UserInputError(f"--limit {limit} is invalid: expected an integer >= 1")
    if full and attn not in ("auto", "eager"):
        raise UserInputError(
            f"--full reads eager attention weights: drop --attn {attn} (or pass --attn eager)"
        )


def analyze_prompts(
    model: Any,
    processor: Any,
    prompts: Sequence[tuple[str, list[dict[str, Any]]]],
    *,
    full: bool,
    window_size: int,
    threshold: float,
    mass: float,
    progress: Callable[[str, int], None],
) -> list[Any]:
    """Count attention for each prompt, refusing prompts the mode cannot handle."""
    from guikv.analysis import (
        FULL_MAX_BYTES,
        full_attention_bytes,
        full_attention_counts,
        window_attention_counts,
    )
    from guikv.models import adapter_for

    adapter = adapter_for(model)
    samples = []
    for index, (sample_id, messages) in enumerate(prompts):
        progress(sample_id, index)
        inputs = adapter.build_inputs(processor, messages).to(model.device)
        length = adapter.prompt_layout(model.config, inputs["input_ids"], inputs).length
        if full:
            size = full_attention_bytes(model, length)
            if size > FULL_MAX_BYTES:
                raise UserInputError(
                    f"--full: {sample_id} has {length} tokens, so its eager attention weights take "
                    f"{size / 2**30:.1f} GiB (limit {FULL_MAX_BYTES / 2**30:.0f} GiB): "
                    "drop --full to use the window queries, or use fewer or smaller screenshots"
                )
            samples.append(
                full_attention_counts(model, inputs, threshold=threshold, mass=mass, sample_id=sample_id)
            )
        else:
            if window_size > length:
                raise UserInputError(f"--window-size {window_size} exceeds the prompt length {length}")
            samples.append(
                window_attention_counts(
                    model, inputs, window=window_size, threshold=threshold, mass=mass, sample_id=sample_id
                )
            )
    return samples


def analyze_attention(
    screenshots: list[Path] = typer.Argument(
        None, metavar="SCREENSHOT", help="Screenshots, oldest first; the last is current."
    ),
    task: str | None = typer.Option(None, "--task", help="The task text (with SCREENSHOT...)."),
    benchmark: str | None = typer.Option(None, "--benchmark", help="Analyze benchmark prompts instead."),
    data: Path | None = typer.Option(None, "--data", help="Benchmark data directory (else its env var)."),
    images: Path | None = typer.Option(None, "--images", help="Screenshot directory (else its env var)."),
    split: str | None = typer.Option(None, "--split", help="Benchmark split (default: the benchmark's)."),
    limit: int = typer.Option(
        DEFAULT_LIMIT,
        "--limit",
        help="First N records of each benchmark file (AgentNetBench: trajectories), as for eval.",
    ),
    model: str = MODEL,
    family: str | None = typer.Option(None, "--family", help="Agent family (default: from the model)."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    attn: str = ATTN,
    output: Path = typer.Option(DEFAULT_OUTPUT, "--output", help="Folder for sparsity.json and figures."),
    threshold: float = typer.Option(0.01, "--threshold", help="Weights at most this count as sparse."),
    mass: float = typer.Option(0.9, "--mass", help="Attention share the 'keys for mass' set must hold."),
    full: bool = typer.Option(False, "--full", help="Every query row from eager attention (small inputs)."),
    window_size: int = typer.Option(8, "--window-size", help="Query rows counted: the last N prompt tokens."),
    html_path: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML report."),
) -> None:
    """Attention sparsity by layer, head and key kind (current / earlier screenshots, text)."""
    screenshots = list(screenshots or [])
    _check_options(screenshots, task, benchmark, threshold, mass, window_size, limit, full, attn)
    if screenshots:
        check_screenshots(screenshots)
    samples = load_benchmark_samples(benchmark, data, images, split, limit) if benchmark else []
    console = Console()
    quiet_transformers()
    from benchmarks.prompts import sample_prompt
    from guikv.analysis import sparsity_report
    from guikv.models import load
    from guikv.viz.sparsity import write_sparsity_figures

    with console.status(f"loading {model}"):
        loaded, processor = load(model, dtype, "eager" if full else attn, device)
    agent = resolve_family(loaded, family)
    if benchmark:
        prompts = [(sample.sample_id, sample_prompt(agent, sample)[0]) for sample in samples]
    else:
        prompts = [("screenshots", agent.one_step_messages(task or "", screenshots))]
    with console.status("analyzing") as status:
        counted = analyze_prompts(
            loaded,
            processor,
            prompts,
            full=full,
            window_size=window_size,
            threshold=threshold,
            mass=mass,
            progress=lambda sample_id, index: status.update(
                f"analyzing {sample_id} ({index + 1}/{len(prompts)})"
            ),
        )
    report = sparsity_report(
        counted,
        threshold=threshold,
        mass=mass,
        model=model,
        family=agent.name,
        benchmark=benchmark,
        mode="full" if full else "window",
        window_size=None if full else window_size,
        attn_implementation=loaded.config._attn_implementation,
    )
    output.mkdir(parents=True, exist_ok=True)
    (output / "sparsity.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    figures = write_sparsity_figures(report, output)
    tables = [layer_table(report), kind_table(report)]
    lines = [composition_line(report), report["summary"]["verdict"]]
    print_tables(console, tables)
    for line in lines:
        console.print(line, highlight=False)
    if html_path is not None:
        write_html(html_path, f"guikv analyze-attention: {model}", [*tables, *lines], figures)
    console.print(f"wrote {output / 'sparsity.json'} and {len(figures)} figures to {output}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `guikv analyze-attention` to the app."""
    app.command("analyze-attention")(analyze_attention)
