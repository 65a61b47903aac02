"""Drives an agent over a benchmark: prompt, generate (or answer as the oracle), parse, score, trace.

For each sample the runner builds the agent family's prompt for that benchmark (AgentNetBench:
computer use with the model's own earlier outputs and the last `screenshots - 1` earlier
screenshots; AndroidControl: mobile; ScreenSpot-v2/Pro: grounding; Mind2Web: web, with the scroll
loop of `mind2web.scroll_step`), asks a `Responder` for the answer, parses it with the family's
parser at the current screenshot's size, scores it with the benchmark's metric and appends the
record to the run directory's trace (see `benchmarks.rundir`). Finished samples are never run
again; several processes share the work through a `Shard`.

Nothing here prints: progress and warnings go through `RunEvents`, so the CLI decides how to show
them. torch is only imported when a real model answers, so the oracle runs without it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from benchmarks import agentnetbench, androidcontrol, mind2web
from benchmarks.common import BenchmarkSpec, LoadResult, SkippedSample, image_size
from benchmarks.prompts import ground_truth_history, sample_prompt
from benchmarks.rundir import (
    SAMPLES_FILE,
    SUMMARY_FILE,
    Record,
    TraceWriter,
    merge_shards,
    prepare,
    read_trace,
    run_lock,
    shard_file,
    write_json,
)
from guikv.agents import Action, AgentFamily, Message
from guikv.agents.prompting import HistoryEntry
from guikv.errors import UserInputError

if TYPE_CHECKING:
    from torch import nn

    from guikv.config import CompressionConfig

ORACLE = "oracle"
"""The `--model` value of the pipeline self-check: it answers each step with the ground truth."""

COST_FIELDS: tuple[str, ...] = (
    "prompt_tokens",
    "kept_tokens",
    "generated_tokens",
    "kv_bytes_full",
    "kv_bytes_kept",
    "decode_flops_full",
    "decode_flops_kept",
    "decode_attention_flops_full",
    "decode_attention_flops_kept",
    "prefill_seconds",
    "decode_seconds",
)
"""Cost numbers of every record (all 0 for the oracle, which runs no model)."""

_SIZE_FIELDS = frozenset({"prompt_tokens", "kept_tokens", "kv_bytes_full", "kv_bytes_kept"})
"""Costs that describe the cache's size: averaged over a sample's model calls (Mind2Web scrolls),
where work (FLOPs, seconds, tokens generated) is summed."""


@dataclass(frozen=True)
class Reply:
    """One model call's text and its cost numbers (keys `COST_FIELDS`)."""

    text: str
    costs: dict[str, float]


def zero_costs() -> dict[str, float]:
    """The costs of a call that ran no model (the oracle) or failed."""
    return dict.fromkeys(COST_FIELDS, 0)


class Responder(Protocol):
    """Answers one prompt: a real model through `run_step`, or the oracle."""

    def reply(
        self, messages: list[Message], expected: Callable[[], Action], image_size: tuple[int, int]
    ) -> Reply:
        """The raw text answer to `messages` about a screenshot of `image_size`; `expected` gives the
        ground-truth action (only the oracle calls it)."""
        ...


@dataclass(frozen=True)
class OracleResponder:
    """The pipeline self-check: answers with the ground truth written in the family's output format,
    so the family's parser and the benchmark's metric are exercised exactly as for a model."""

    family: AgentFamily

    def reply(
        self, messages: list[Message], expected: Callable[[], Action], image_size: tuple[int, int]
    ) -> Reply:
        """The family's text for the ground-truth action; costs are zero."""
        return Reply(self.family.format_action(expected(), image_size), zero_costs())


@dataclass(frozen=True)
class ModelResponder:
    """A loaded model generating greedily under a compression config, with its costs measured."""

    model: nn.Module
    processor: Any
    config: CompressionConfig
    max_new_tokens: int

    def reply(
        self, messages: list[Message], expected: Callable[[], Action], image_size: tuple[int, int]
    ) -> Reply:
        """Run one agent step with `run_step` and keep its text and cost numbers."""
        from guikv.step import run_step

        result = run_step(
            self.model, self.processor, messages, self.config, max_new_tokens=self.max_new_tokens
        )
        numbers = result.to_dict()
        costs = {name: numbers[name] for name in COST_FIELDS if name in numbers}
        kept = result.kept_per_layer
        costs["kept_tokens"] = sum(kept) / len(kept) if kept else result.prompt_tokens
        return Reply(result.text, costs)


def _no_barrier() -> None:
    """The barrier of a single process: nothing to wait for."""


@dataclass(frozen=True)
class Shard:
    """This process's share of the work: process `index` of `count`, and a barrier that waits for all
    processes (accelerate's `wait_for_everyone` under `accelerate launch`)."""

    index: int = 0
    count: int = 1
    barrier: Callable[[], None] = _no_barrier

    @property
    def is_main(self) -> bool:
        """Whether this process prepares and merges the run directory."""
        return self.index == 0


def _ignore(*_: Any) -> None:
    """A no-op event handler."""


@dataclass(frozen=True)
class RunEvents:
    """Callbacks through which a run reports itself: `note(text)` for what a user should know (a
    resume, a dropped line, a failed generation), `start(label, total)` before the first sample,
    `advance()` after each."""

    note: Callable[[str], None] = _ignore
    start: Callable[[str, int], None] = _ignore
    advance: Callable[[], None] = _ignore


@dataclass
class _Turn:
    """One model call of a sample: its text, every action parsed from it (in order), costs and the
    error if it failed."""

    text: str
    actions: list[Action]
    costs: dict[str, float]
    error: str | None = None

    @property
    def action(self) -> Action:
        """The first parsed action: the one the scroll loop follows and the trace shows."""
        return self.actions[0]


@dataclass
class _Player:
    """Plays samples of one benchmark against a responder and turns each into a trace record."""

    spec: BenchmarkSpec
    family: AgentFamily
    responder: Responder
    screenshots: int
    finished: dict[str, Record]
    events: RunEvents = field(default_factory=RunEvents)

    def play(self, sample: Any) -> Record:
        """Run one sample to its scored record (never raises on a failed generation: B7)."""
        if self.spec.name == mind2web.SPEC.name:
            return self._web(sample)
        history = None
        if isinstance(sample, agentnetbench.AgentNetStep):
            history = [self._history_entry(sample.task_id, past) for past in sample.history]
        messages, image = sample_prompt(self.family, sample, history=history, screenshots=self.screenshots)
        turn = self._call(sample, messages, lambda: self.spec.ground_truth_action(sample), image_size(image))
        return self._record(sample, [turn], self.spec.score(sample, turn.actions))

    def _history_entry(self, task_id: str, past: agentnetbench.PastStep) -> HistoryEntry:
        """An earlier step's history: the model's own raw output from its record, else (the step was
        skipped for a missing screenshot) its ground-truth monologue."""
        record = self.finished.get(f"{task_id}/{past.step_num}")
        if record is not None:
            return str(record["raw_output"])
        return ground_truth_history(past)

    def _web(self, sample: mind2web.Mind2WebSample) -> Record:
        """The Mind2Web scroll loop: up to `MAX_MODEL_CALLS` calls, scrolling between blocks."""
        block = 0
        notes: list[str] = []
        turns: list[_Turn] = []
        while True:
            current = block
            messages, _ = sample_prompt(self.family, sample, block=current, notes=notes)
            turn = self._call(
                sample,
                messages,
                partial(mind2web.ground_truth_action, sample, current),
                sample.block_sizes[current],
            )
            turns.append(turn)
            move = mind2web.scroll_step(sample, current, turn.action, len(turns))
            if move.block is None:
                break
            notes.append(move.note or "")
            block = move.block
        return self._record(sample, turns, mind2web.score(sample, turns[-1].actions, block=block))

    def _call(
        self, sample: Any, messages: list[Message], expected: Callable[[], Action], size: tuple[int, int]
    ) -> _Turn:
        """Ask the responder and parse its answer; a failure becomes an error turn with an unparsed
        action and no output, never an earlier answer (B7)."""
        try:
            reply = self.responder.reply(messages, expected, size)
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            self.events.note(f"{sample.sample_id}: generation failed ({message}); scored as unparsed")
            return _Turn("", [Action.unparsed("")], zero_costs(), message)
        actions = self.family.parse(reply.text, size)
        return _Turn(reply.text, actions or [Action.unparsed(reply.text)], reply.costs)

    def _record(self, sample: Any, turns: list[_Turn], scores: dict[str, Any]) -> Record:
        """The trace record of a finished sample."""
        final = turns[-1]
        record: Record = {
            "sample_id": sample.sample_id,
            "benchmark": self.spec.name,
            "model_calls": len(turns),
            **_combine_costs([turn.costs for turn in turns]),
            "raw_output": final.text,
            "action": final.action.to_dict(),
            "ground_truth": ground_truth_record(self.spec.name, sample),
            "error": next((turn.error for turn in turns if turn.error), None),
        }
        if self.spec.name == mind2web.SPEC.name:
            record["scroll_outputs"] = [turn.text for turn in turns[:-1]]
        record.update(scores)
        return record


def _combine_costs(per_call: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """A sample's costs from its calls: sizes averaged, work summed."""
    combined: dict[str, float] = {}
    for name in COST_FIELDS:
        values = [call.get(name, 0) for call in per_call]
        value = sum(values) / len(values) if name in _SIZE_FIELDS else sum(values)
        combined[name] = int(value) if float(value).is_integer() else value
    return combined


def _jsonable(value: Any) -> Any:
    """Dataclasses, paths and tuples as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return value


def ground_truth_record(benchmark: str, sample: Any) -> dict[str, Any]:
    """The sample's ground truth in the benchmark's own terms, for the trace."""
    if benchmark == agentnetbench.SPEC.name:
        return {"actions": _jsonable(sample.ground_truth), "alternatives": _jsonable(sample.alternatives)}
    if benchmark == androidcontrol.SPEC.name:
        return _jsonable(sample.ground_truth)
    if benchmark == mind2web.SPEC.name:
        return {
            "operation": sample.operation,
            "value": sample.value,
            "bboxes": _jsonable(sample.bboxes),
            "target_blocks": _jsonable(sample.target_blocks),
        }
    return {"bbox": list(sample.bbox), "normalized_box": list(sample.normalized_box)}


def sample_order(loaded: LoadResult[Any]) -> list[str]:
    """The dataset's sample ids in order; a repeated id is a `UserInputError` (resume needs unique ids)."""
    order = [sample.sample_id for sample in loaded.samples]
    repeated = [sample_id for sample_id, count in Counter(order).items() if count > 1]
    if repeated:
        raise UserInputError(f"sample id '{repeated[0]}' occurs twice in the data; expected unique samples")
    return order


def assign(spec: BenchmarkSpec, pending: Sequence[Any], shard: Shard) -> list[Any]:
    """This process's pending samples: every `count`-th from `index`, except AgentNetBench, whose
    trajectories are dealt out whole (a step's prompt needs the outputs of the earlier steps)."""
    if spec.name != agentnetbench.SPEC.name:
        return list(pending[shard.index :: shard.count])
    tasks = list(dict.fromkeys(sample.task_id for sample in pending))
    mine = set(tasks[shard.index :: shard.count])
    return [sample for sample in pending if sample.task_id in mine]


def _percent_saved(records: Sequence[Record], kept: str, full: str) -> float | None:
    """100 * (1 - sum(kept) / sum(full)), or None when nothing was measured (the oracle)."""
    total = sum(r.get(full, 0) for r in records)
    return 100.0 * (1 - sum(r.get(kept, 0) for r in records) / total) if total else None


def savings(records: Sequence[Record]) -> dict[str, float | None]:
    """Decode FLOPs (total and attention-only) and KV memory saved by the compression, over the records
    that ran a model without error, and the mean KV bytes per sample with and without compression."""
    measured = [r for r in records if not r.get("error") and r.get("kv_bytes_full")]
    count = len(measured)
    return {
        "decode_flops_saved_percent": _percent_saved(measured, "decode_flops_kept", "decode_flops_full"),
        "decode_attention_flops_saved_percent": _percent_saved(
            measured, "decode_attention_flops_kept", "decode_attention_flops_full"
        ),
        "kv_saved_percent": _percent_saved(measured, "kv_bytes_kept", "kv_bytes_full"),
        "kv_bytes_full_mean": sum(r["kv_bytes_full"] for r in measured) / count if count else None,
        "kv_bytes_kept_mean": sum(r["kv_bytes_kept"] for r in measured) / count if count else None,
    }


def _listed(items: Sequence[SkippedSample]) -> list[dict[str, Any]]:
    """Skipped or excluded samples as JSON: id, reason and the files looked for."""
    return [
        {"sample_id": s.sample_id, "reason": s.reason, "missing": [str(p) for p in s.missing]} for s in items
    ]


def build_summary(
    spec: BenchmarkSpec, settings: Mapping[str, Any], loaded: LoadResult[Any], records: Sequence[Record]
) -> dict[str, Any]:
    """`summary.json`: the settings, the benchmark's metrics over `records` (in dataset order), the
    compression savings, and what was scored, skipped (missing files), excluded and failed."""
    return {
        "benchmark": spec.name,
        "title": spec.title,
        "model": settings["model"],
        "family": settings["family"],
        "method": settings["method"],
        "budget": settings["budget"],
        "config": dict(settings),
        "metric_columns": list(spec.metric_columns),
        "metrics": spec.summarize(list(records), [skipped.sample_id for skipped in loaded.skipped]),
        "savings": savings(records),
        "samples_scored": len(records),
        "samples_skipped": len(loaded.skipped),
        "skipped": _listed(loaded.skipped),
        "samples_excluded": len(loaded.excluded),
        "excluded": _listed(loaded.excluded),
        "samples_failed": sum(1 for r in records if r.get("error")),
    }


def run(
    spec: BenchmarkSpec,
    loaded: LoadResult[Any],
    settings: Mapping[str, Any],
    run_dir: Path,
    responder: Responder,
    family: AgentFamily,
    *,
    screenshots: int = 5,
    resume: bool = True,
    shard: Shard | None = None,
    events: RunEvents | None = None,
) -> dict[str, Any] | None:
    """Evaluate every sample of `loaded` not yet in `run_dir`'s trace and write the summary.

    The main process locks the directory against a second invocation and prepares it (config, trace
    repair or `--no-resume` reset); then each
    process plays its share, appending records as they finish (`samples.jsonl` alone, or
    `samples.rank<i>.jsonl` under several processes); after a barrier the main process merges the
    shards and writes `summary.json`, which it returns (other processes return None).
    """
    shard = shard or Shard()
    events = events or RunEvents()
    order = sample_order(loaded)
    with run_lock(run_dir) if shard.is_main else nullcontext():
        if shard.is_main:
            _prepare(run_dir, settings, resume, order, events)
        shard.barrier()
        finished = _by_id(read_trace(run_dir / SAMPLES_FILE).records)
        pending = [sample for sample in loaded.samples if sample.sample_id not in finished]
        mine = assign(spec, pending, shard)
        trace = run_dir / (SAMPLES_FILE if shard.count == 1 else shard_file(shard.index))
        player = _Player(spec, family, responder, screenshots, finished, events)
        events.start(f"{spec.name} {settings['method']} b{settings['budget']:g}", len(mine))
        with TraceWriter(trace) as writer:
            for sample in mine:
                record = player.play(sample)
                writer.write(record)
                finished[sample.sample_id] = record
                events.advance()
        shard.barrier()
        if not shard.is_main:
            return None
        merge_shards(run_dir, order)
        done = _by_id(read_trace(run_dir / SAMPLES_FILE).records)
        records = [done[sample_id] for sample_id in order if sample_id in done]
        summary = build_summary(spec, settings, loaded, records)
        write_json(run_dir / SUMMARY_FILE, summary)
        return summary


def _prepare(
    run_dir: Path, settings: Mapping[str, Any], resume: bool, order: Sequence[str], events: RunEvents
) -> None:
    """Prepare the run directory (main process) and say what was found: a reset, a dropped partial
    line, records folded in from shard files, samples already done."""
    prepared = prepare(run_dir, settings, resume=resume, order=order)
    if not resume:
        events.note(f"--no-resume: starting {run_dir} afresh ({prepared.removed} earlier records removed)")
    if prepared.dropped_partial:
        events.note(
            f"{run_dir / SAMPLES_FILE}: dropped an incomplete last line (an interrupted write); "
            "that sample runs again"
        )
    if prepared.merged:
        events.note(f"{run_dir}: folded {prepared.merged} records from an interrupted multi-process run")
    if prepared.kept:
        events.note(f"resuming {run_dir}: {prepared.kept} of {len(order)} samples already done")


def _by_id(records: Sequence[Record]) -> dict[str, Record]:
    """Records by sample id (the first one wins should an id ever repeat)."""
    indexed: dict[str, Record] = {}
    for record in records:
        indexed.setdefault(record["sample_id"], record)
    return indexed
