"""Batch throughput of each method: samples and generated tokens per second at several batch sizes,
relative to batch 1 with the full cache in the same run, and the KV cache a batch holds at its peak.

A batch of B agent prompts runs as one `run_step` (each row's prompt prefilled and cut alone, then
one decode forward per new token for all rows). Its times are the model's (from the first prefill's
start to the last decode forward's end); building the inputs (the processor's image preprocessing,
the same work per prompt at any batch size) is not in them. Ratios are computed from the rows, never asserted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from rich.table import Table

from benchmarks.flags import compression_config
from guikv.agents.family import AgentFamily
from guikv.errors import UserInputError
from guikv.flops import ModelShape, kv_cache_bytes
from guikv.step import StepResult, run_step

MIB = 2**20

TASKS = (
    "Open the display settings",
    "Turn on dark mode in the appearance settings",
    "Search for the weather in Paris and open the first result",
    "Save the document as report.pdf in the Documents folder",
    "Close the dialog",
    "Add a new contact named Alice Smith with the phone number 555 0100",
    "Sort the files by date modified",
    "Open the browser history and clear everything from the last hour",
)
"""Row r of a batch gets task r (cycled): rows differ in text length, so the batch is padded."""


@dataclass(frozen=True)
class BatchRun:
    """What one batched `run_step` measured: the batch's times, its rows' tokens and its KV bytes.

    `kv_bytes_stored` is the cut prompt cache as stored (shorter rows' empty slots included, as in
    `StepResult.kv_bytes_stored`); every decode forward appends one entry per row on top of it.
    """

    method: str
    budget: float
    batch_size: int
    prompt_tokens: int
    generated_tokens: int
    decode_forwards: int
    prefill_seconds: float
    decode_seconds: float
    kv_bytes_stored: int
    kv_bytes_per_position: int

    @property
    def seconds(self) -> float:
        """The batch's model time: prefill plus decode."""
        return self.prefill_seconds + self.decode_seconds

    @property
    def peak_kv_bytes(self) -> int:
        """The largest KV cache the batch holds: at its last decode forward, the stored prompt cache
        plus one entry per row for every decode forward (the last generated token is never fed
        back, so it is not cached). The uncompressed cache that exists during a row's prefill,
        before each layer is cut (one row and one layer at a time; every layer of the row for
        VL-Cache, which cuts after scoring them all), is not counted."""
        return self.kv_bytes_stored + self.batch_size * self.decode_forwards * self.kv_bytes_per_position

    @classmethod
    def from_results(
        cls, method: str, budget: float, results: Sequence[StepResult], kv_bytes_per_position: int
    ) -> BatchRun:
        """Collect one batch's figures from its `run_step` results (one per row; times shared)."""
        first = results[0]
        return cls(
            method=method,
            budget=budget,
            batch_size=len(results),
            prompt_tokens=sum(result.prompt_tokens for result in results),
            generated_tokens=sum(result.generated_tokens for result in results),
            decode_forwards=len(first.decode_step_seconds),
            prefill_seconds=first.prefill_seconds,
            decode_seconds=first.decode_seconds,
            kv_bytes_stored=first.kv_bytes_stored,
            kv_bytes_per_position=kv_bytes_per_position,
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> BatchRun:
        """The run a throughput row (as written to JSON) was computed from."""
        return cls(**{item.name: row[item.name] for item in fields(cls)})


def throughput_rows(runs: Sequence[BatchRun]) -> list[dict[str, Any]]:
    """One row per run: samples/s, generated tokens/s (over the whole batch time) and decode
    tokens/s (tokens from decode forwards over decode time), relative to the full cache at batch 1
    and to the same (method, budget) at batch 1, and peak KV bytes per batch and per sample.

    Raises `ValueError` without a full-cache batch-1 run to compare against.
    """
    baseline = next((run for run in runs if run.method == "full" and run.batch_size == 1), None)
    if baseline is None:
        raise ValueError("throughput rows need the full cache at batch 1 as their baseline")
    own_batch1 = {(run.method, run.budget): run for run in runs if run.batch_size == 1}
    rows = []
    for run in runs:
        own = own_batch1.get((run.method, run.budget))
        samples = run.batch_size / run.seconds
        tokens = run.generated_tokens / run.seconds
        decoded = run.generated_tokens - run.batch_size
        rows.append(
            {
                **asdict(run),
                "seconds": run.seconds,
                "samples_per_second": samples,
                "generated_tokens_per_second": tokens,
                "decode_tokens_per_second": decoded / run.decode_seconds if run.decode_seconds else 0.0,
                "samples_per_second_vs_full_batch1": samples * baseline.seconds / baseline.batch_size,
                "tokens_per_second_vs_full_batch1": tokens * baseline.seconds / baseline.generated_tokens,
                "samples_per_second_vs_own_batch1": (
                    samples * own.seconds / own.batch_size if own is not None else None
                ),
                "peak_kv_bytes": run.peak_kv_bytes,
                "peak_kv_bytes_per_sample": run.peak_kv_bytes / run.batch_size,
            }
        )
    return rows


def batch_conversations(
    family: AgentFamily, screenshots: Sequence[Any], history: str, count: int
) -> list[list[dict[str, Any]]]:
    """`count` computer-use prompts, each with every screenshot (the last is the current one):
    row r has task r (cycled) and the screenshots rotated by r; row 0 is the unrotated first task."""
    conversations = []
    for row in range(count):
        images = [screenshots[(row + i) % len(screenshots)] for i in range(len(screenshots))]
        task = TASKS[row % len(TASKS)]
        conversations.append(family.computer_use_messages(task, images, [history] * (len(images) - 1)))
    return conversations


def measure(
    model: Any,
    processor: Any,
    conversations: Sequence[Sequence[dict[str, Any]]],
    pairs: Sequence[tuple[str, float]],
    batch_sizes: Sequence[int],
    new_tokens: int,
    done: Sequence[BatchRun],
    warmup: bool,
    on_run: Callable[[list[BatchRun]], None],
    on_skip: Callable[[str, float, Exception], None],
) -> list[BatchRun]:
    """Run every (method, budget) of `pairs` at every batch size (the first `batch_size` prompts of
    `conversations`), skipping runs in `done`. Each pair is warmed up (one untimed 2-token run at
    batch 1) before its first timed run. `on_run` gets every run so far after each new one; a pair
    its method cannot run (`ValueError`) goes to `on_skip` and is left out."""
    runs = list(done)
    shape = ModelShape.from_config(model.config)
    per_position = kv_cache_bytes(shape, [1] * shape.num_layers, model.dtype)
    for method, budget in pairs:
        measured = {run.batch_size for run in runs if run.method == method and run.budget == budget}
        pending = [size for size in batch_sizes if size not in measured]
        if not pending:
            continue
        try:
            config = compression_config(method=method, budget=budget)
            if warmup:
                run_step(model, processor, list(conversations[:1]), config, max_new_tokens=2)
            for size in pending:
                results = run_step(
                    model, processor, list(conversations[:size]), config, max_new_tokens=new_tokens
                )
                runs.append(BatchRun.from_results(method, budget, results, per_position))
                on_run(runs)
        except (ValueError, UserInputError) as error:
            on_skip(method, budget, error)
    return runs


def render(rows: Sequence[dict[str, Any]], title: str) -> Table:
    """The rich table of throughput rows."""
    table = Table(title=title)
    columns = (
        "method",
        "budget",
        "batch",
        "samples/s",
        "vs full b1",
        "vs own b1",
        "gen tok/s",
        "tok/s vs full b1",
        "decode tok/s",
        "prefill s",
        "decode s",
        "peak KV MiB",
        "per sample",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        own = row["samples_per_second_vs_own_batch1"]
        table.add_row(
            row["method"],
            f"{row['budget']:g}%",
            str(row["batch_size"]),
            f"{row['samples_per_second']:.3f}",
            f"{row['samples_per_second_vs_full_batch1']:.2f}x",
            f"{own:.2f}x" if own is not None else "-",
            f"{row['generated_tokens_per_second']:.2f}",
            f"{row['tokens_per_second_vs_full_batch1']:.2f}x",
            f"{row['decode_tokens_per_second']:.1f}",
            f"{row['prefill_seconds']:.2f}",
            f"{row['decode_seconds']:.2f}",
            f"{row['peak_kv_bytes'] / MIB:.2f}",
            f"{row['peak_kv_bytes_per_sample'] / MIB:.2f}",
        )
    return table
