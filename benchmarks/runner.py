"""Drives an agent over a benchmark: prompt, generate (or answer as the oracle), parse, score, trace.

For each sample the runner builds the agent family's prompt for that benchmark (AgentNetBench:
computer use with the model's own earlier outputs and the `screenshots - 1` most recent earlier
screenshots that exist; AndroidControl: mobile; ScreenSpot-v2/Pro: grounding; Mind2Web: web, with
the scroll loop of `mind2web.scroll_step`), asks a `Responder` for the answer, parses and scores it
through `benchmarks.scoring` (the path `--rescore` repeats) and appends the record, with what
re-scoring needs, to the run directory's trace (see `benchmarks.rundir`). Scored samples are never
run again; a sample that raised is recorded as failed, reported apart, and retried by the next run.
Several processes share the work through a `Shard`.

With a batch size above 1 the samples run side by side (`benchmarks.batching`): each sequence of
samples that must run in order (`sequence_key`: an AgentNetBench trajectory, any other sample
alone) is a lane, and one batched model call answers the next call of up to that many lanes. Every
row of a batch gives what it gives alone, so records and summary are those of batch size 1.

Nothing here prints: progress and warnings go through `RunEvents`, so the CLI decides how to show
them. torch is only imported when a real model answers, so the oracle runs without it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from benchmarks import agentnetbench, androidcontrol, mind2web
from benchmarks.batching import Batcher, Lane, drive
from benchmarks.common import BenchmarkSpec, LoadResult, SkippedSample, image_size
from benchmarks.jsonable import to_json
from benchmarks.prompts import ground_truth_history, history_screenshots, sample_prompt
from benchmarks.rundir import (
    PREVIOUS_SAMPLES_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    Record,
    TraceWriter,
    capacity_tag,
    is_failed,
    merge_shards,
    prepare,
    put_in_order,
    read_trace,
    rewrite_trace,
    run_lock,
    shard_file,
    write_json,
)
from benchmarks.scoring import ScoringInput, parse_output, score_output
from guikv import __version__
from guikv.agents import Action, AgentFamily, Message
from guikv.agents.prompting import HistoryEntry, messages_json
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

CARRIED_FIELDS: tuple[str, ...] = (
    "carried_step",
    "prefilled_tokens",
    "carried_tokens",
    "evicted_screenshots",
    "kept_by_origin",
)
"""What a step of a carried AgentNetBench run adds to its record (`benchmarks.carried`, from
`CarriedStepResult.to_dict()`): the step's number in its carried trajectory, the tokens actually
prefilled (the new turn), the entries per layer and KV head carried in, the screenshots the window
evicted and the kept entries per origin."""

RECORD_FIELDS: tuple[str, ...] = (
    "sample_id",
    "benchmark",
    "model_calls",
    *COST_FIELDS,
    "raw_output",
    "action",
    "ground_truth",
    "error",
    "history_screenshots",
    *CARRIED_FIELDS,
    "scroll_outputs",
    "prompts",
)
"""The fields a trace record has before its score fields (`history_screenshots` for AgentNetBench,
`CARRIED_FIELDS` for a carried AgentNetBench run and `scroll_outputs` for Mind2Web only); after the
score fields comes `scoring_input`. `prompts` holds what the model was asked, one conversation per
model call (`messages_json`: texts as written, screenshots as file paths), so a wrong answer can be
audited."""

SCORING_INPUT = "scoring_input"
"""The record field holding `ScoringInput.to_json()`: what `--rescore` scores the raw output against."""

_SIZE_FIELDS = frozenset({"prompt_tokens", "kept_tokens", "kv_bytes_full", "kv_bytes_kept"})
"""Costs that describe the cache's size: averaged over a sample's model calls (Mind2Web scrolls),
where work (FLOPs, seconds, tokens generated) is summed."""


@dataclass(frozen=True)
class Reply:
    """One model call's text, its cost numbers (keys `COST_FIELDS`) and the record fields a
    responder adds beyond them (`extra`: a carried step's `CARRIED_FIELDS`)."""

    text: str
    costs: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


def zero_costs() -> dict[str, float]:
    """The costs of a call that ran no model (the oracle) or failed."""
    return dict.fromkeys(COST_FIELDS, 0)


@dataclass(frozen=True)
class Call:
    """One model call a sample asks for: the prompt, the ground-truth action (only the oracle asks
    for it), the size of the screenshot the answer is about, and the context of the `state_group`
    it belongs to (what the responder's `new_context()` gave; it carries a stateful method's state)."""

    messages: list[Message]
    expected: Callable[[], Action]
    image_size: tuple[int, int]
    context: Any = None


class Responder(Protocol):
    """Answers prompts, one or a batch at a time: a real model through `run_step`, or the oracle.

    `stateful` says whether an answer depends on the calls before it in the same context (a
    compression method with state, STaR-KV; a cache carried over a trajectory): the runner gives
    every `state_group` a fresh `new_context()` and re-runs an unfinished group from its first
    sample on resume. `can_batch`
    says whether `reply` takes more than one call at a time.
    """

    @property
    def stateful(self) -> bool:
        """Whether answers depend on earlier calls in the same context."""
        ...

    @property
    def can_batch(self) -> bool:
        """Whether `reply` answers several calls at once."""
        ...

    def new_context(self) -> Any:
        """A fresh context for a new `state_group` (a stateful method starts from an empty state)."""
        ...

    def reply(self, calls: Sequence[Call]) -> list[Reply]:
        """The raw text answer to each call, in order (a batch: each answer what it is alone),
        carrying each call's context on; raises when the batch failed as a whole."""
        ...


@dataclass(frozen=True)
class OracleResponder:
    """The pipeline self-check: answers with the ground truth written in the family's output format,
    so the family's parser and the benchmark's metric are exercised exactly as for a model."""

    family: AgentFamily
    stateful: bool = field(default=False, init=False)
    can_batch: bool = field(default=True, init=False)

    def new_context(self) -> None:
        """No context: the oracle keeps no state."""

    def reply(self, calls: Sequence[Call]) -> list[Reply]:
        """The family's text for each call's ground-truth action; costs are zero."""
        return [
            Reply(self.family.format_action(call.expected(), call.image_size), zero_costs()) for call in calls
        ]


@dataclass
class MethodContext:
    """The state a stateful compression method carries over one `state_group` (None: empty)."""

    state: Any = None


def model_can_batch(model: nn.Module) -> bool:
    """Whether the model's family can run a batch of prompts under compression (OpenCUA cannot:
    its placeholders are expanded inside the model)."""
    from guikv.models import adapter_for

    return adapter_for(model).prepare_batch_decode is not None


@dataclass
class ModelResponder:
    """A loaded model generating greedily under a compression config, with its costs measured.

    A batch of calls is one `run_step` over their conversations (each row as it is alone, its own
    method state, its own costs; the times are the batch's). A stateful method's state is carried
    in each call's `MethodContext`, from call to call of the same `state_group`.
    """

    model: nn.Module
    processor: Any
    config: CompressionConfig
    max_new_tokens: int

    @property
    def stateful(self) -> bool:
        """Whether the config's method keeps state across prefills (STaR-KV)."""
        from guikv.methods import METHOD_CLASSES

        return "state" in {f.name for f in fields(METHOD_CLASSES[self.config.method])}

    @property
    def can_batch(self) -> bool:
        """Whether the model's family can run several prompts in one batch (`model_can_batch`)."""
        return model_can_batch(self.model)

    def new_context(self) -> MethodContext:
        """An empty method state for a new `state_group`."""
        return MethodContext()

    def reply(self, calls: Sequence[Call]) -> list[Reply]:
        """Run one agent step per call with one `run_step` (one batch), continuing each call's method
        state, and keep each text and its cost numbers. The states move on only when the whole
        batch succeeded."""
        from guikv.step import run_step

        contexts = [call.context if call.context is not None else MethodContext() for call in calls]
        results = run_step(
            self.model,
            self.processor,
            [call.messages for call in calls],
            self.config,
            max_new_tokens=self.max_new_tokens,
            method_state=[context.state for context in contexts],
        )
        replies = []
        for context, result in zip(contexts, results, strict=True):
            context.state = result.method_state
            numbers = result.to_dict()
            costs = {name: numbers[name] for name in COST_FIELDS if name in numbers}
            kept = result.kept_per_layer
            costs["kept_tokens"] = sum(kept) / len(kept) if kept else result.prompt_tokens
            replies.append(Reply(result.text, costs))
        return replies


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
    """One model call of a sample: the prompt it was asked, its text, every action parsed from it
    (in order), costs, the error if it failed and the reply's `extra` record fields."""

    prompt: list[Message]
    text: str
    actions: list[Action]
    costs: dict[str, float]
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def action(self) -> Action:
        """The first parsed action: the one the scroll loop follows."""
        return self.actions[0]


Answer = Reply | Exception
"""What a sample's call is sent back: the reply, or the exception the call raised on its own."""

Play = Generator[Call, Answer, Record]
"""A sample being played: yields its model calls one at a time, returns its trace record."""


@dataclass
class Player:
    """Plays samples of one benchmark against a responder and turns each into a trace record,
    handing it to `done` (which writes it) as soon as it is finished."""

    spec: BenchmarkSpec
    family: AgentFamily
    responder: Responder
    screenshots: int
    finished: dict[str, Record]
    done: Callable[[Any, Record], None]
    events: RunEvents = field(default_factory=RunEvents)

    def lane(self, samples: Sequence[Any]) -> Lane[Call, Answer]:
        """Play `samples` (one `sequence_key`) in order, each begun once the one before is done (an
        AgentNetBench step's prompt holds the outputs of the earlier steps); every `state_group`
        gets a fresh context from the responder."""
        group: str | None = None
        context: Any = None
        for sample in samples:
            if state_group(sample) != group:
                group = state_group(sample)
                context = self.responder.new_context()
            record = yield from self.play(sample, context)
            self.done(sample, record)

    def play(self, sample: Any, context: Any) -> Play:
        """Run one sample to its scored record (never raises on a failed generation: B7), its calls
        made in `context`."""
        if self.spec.name == mind2web.SPEC.name:
            return (yield from self._web(sample, context))
        history = None
        extra: Record = {}
        if isinstance(sample, agentnetbench.AgentNetStep):
            history = [self._history_entry(sample.task_id, past) for past in sample.history]
            shown = history_screenshots(sample, self.screenshots)
            extra["history_screenshots"] = [past.step_num for past in shown]
        messages, image = sample_prompt(self.family, sample, history=history, screenshots=self.screenshots)
        size = image_size(image)
        turn = yield from self._call(
            sample, Call(messages, lambda: self.spec.ground_truth_action(sample), size, context)
        )
        return self._record(sample, [turn], ScoringInput(sample, size), extra)

    def _history_entry(self, task_id: str, past: agentnetbench.PastStep) -> HistoryEntry:
        """An earlier step's history: the model's own raw output from its record, else (the step was
        skipped for a missing screenshot, or its generation failed) its ground-truth monologue."""
        record = self.finished.get(f"{task_id}/{past.step_num}")
        if record is not None and not is_failed(record):
            return str(record["raw_output"])
        return ground_truth_history(past)

    def _web(self, sample: mind2web.Mind2WebSample, context: Any) -> Play:
        """The Mind2Web scroll loop: up to `MAX_MODEL_CALLS` calls, scrolling between blocks."""
        block = 0
        notes: list[str] = []
        turns: list[_Turn] = []
        while True:
            current = block
            messages, _ = sample_prompt(self.family, sample, block=current, notes=notes)
            turn = yield from self._call(
                sample,
                Call(
                    messages,
                    partial(mind2web.ground_truth_action, sample, current),
                    sample.block_sizes[current],
                    context,
                ),
            )
            turns.append(turn)
            move = mind2web.scroll_step(sample, current, turn.action, len(turns))
            if move.block is None:
                break
            notes.append(move.note or "")
            block = move.block
        scoring = ScoringInput(sample, sample.block_sizes[block], {"block": block})
        return self._record(sample, turns, scoring, {"scroll_outputs": [turn.text for turn in turns[:-1]]})

    def _call(self, sample: Any, call: Call) -> Generator[Call, Answer, _Turn]:
        """Ask for `call`'s answer and parse it; a failure becomes an error turn with an unparsed
        action and no output, never an earlier answer (B7)."""
        answer = yield call
        if isinstance(answer, Exception):
            message = f"{type(answer).__name__}: {answer}"
            self.events.note(
                f"{sample.sample_id}: generation failed ({message}); recorded as failed, "
                "retried by the next run"
            )
            return _Turn(call.messages, "", [Action.unparsed("")], zero_costs(), message)
        actions = parse_output(self.family, answer.text, call.image_size)
        return _Turn(call.messages, answer.text, actions, answer.costs, extra=dict(answer.extra))

    def _record(self, sample: Any, turns: list[_Turn], scoring: ScoringInput, extra: Record) -> Record:
        """The trace record of a finished sample: its final output scored through `score_output`."""
        final = turns[-1]
        actions, scores = score_output(self.spec, self.family, scoring, final.text)
        fields: Record = {
            "sample_id": sample.sample_id,
            "benchmark": self.spec.name,
            "model_calls": len(turns),
            **_combine_costs([turn.costs for turn in turns]),
            "raw_output": final.text,
            "action": actions[0].to_dict(),
            "ground_truth": ground_truth_record(self.spec.name, sample),
            "error": next((turn.error for turn in turns if turn.error), None),
            **extra,
            "prompts": [messages_json(turn.prompt) for turn in turns],
        }
        return assemble_record(fields, scores, scoring.to_json())


def assemble_record(fields: Mapping[str, Any], scores: Mapping[str, Any], scoring: Any) -> Record:
    """A trace record: its `RECORD_FIELDS`, then the score fields, then `scoring_input` (one layout
    for a run and a re-score, so re-scoring an unchanged run rewrites the same bytes)."""
    return {**fields, **scores, SCORING_INPUT: scoring}


def record_fields(record: Record) -> Record:
    """The `RECORD_FIELDS` of a record (what re-scoring keeps), in the record's order."""
    return {key: value for key, value in record.items() if key in RECORD_FIELDS}


def _combine_costs(per_call: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """A sample's costs from its calls: sizes averaged, work summed."""
    combined: dict[str, float] = {}
    for name in COST_FIELDS:
        values = [call.get(name, 0) for call in per_call]
        value = sum(values) / len(values) if name in _SIZE_FIELDS else sum(values)
        combined[name] = int(value) if float(value).is_integer() else value
    return combined


def ground_truth_record(benchmark: str, sample: Any) -> dict[str, Any]:
    """The sample's ground truth in the benchmark's own terms, for the trace."""
    if benchmark == agentnetbench.SPEC.name:
        return {"actions": to_json(sample.ground_truth), "alternatives": to_json(sample.alternatives)}
    if benchmark == androidcontrol.SPEC.name:
        return to_json(sample.ground_truth)
    if benchmark == mind2web.SPEC.name:
        return {
            "operation": sample.operation,
            "value": sample.value,
            "bboxes": to_json(sample.bboxes),
            "target_blocks": to_json(sample.target_blocks),
        }
    return {"bbox": list(sample.bbox), "normalized_box": list(sample.normalized_box)}


def sample_order(loaded: LoadResult[Any]) -> list[str]:
    """The dataset's sample ids in order; a repeated id is a `UserInputError` (resume needs unique ids)."""
    order = [sample.sample_id for sample in loaded.samples]
    repeated = [sample_id for sample_id, count in Counter(order).items() if count > 1]
    if repeated:
        raise UserInputError(f"sample id '{repeated[0]}' occurs twice in the data; expected unique samples")
    return order


def sequence_key(sample: Any) -> str:
    """The samples that must run one after another, in order: an AgentNetBench trajectory (its task
    id; each step's prompt holds the model's own outputs for the earlier steps); any other sample
    on its own (AndroidControl and Mind2Web prompts take the earlier actions from the data, so
    their steps are independent; a Mind2Web sample's scroll calls run in order within it). Every
    `state_group` lies within one sequence. Sequences are what batches and shards deal out whole."""
    if isinstance(sample, agentnetbench.AgentNetStep):
        return sample.task_id
    return str(sample.sample_id)


def state_group(sample: Any) -> str:
    """The samples over which a stateful method's state is carried, as the releases' evaluation
    scripts reset it: an AgentNetBench trajectory (its task id); any other sample on its own (their
    prompts show one screenshot; a Mind2Web sample's scroll calls share its state)."""
    if isinstance(sample, agentnetbench.AgentNetStep):
        return sample.task_id
    return str(sample.sample_id)


def assign(pending: Sequence[Any], shard: Shard) -> list[Any]:
    """This process's pending samples: every `count`-th `sequence_key` from `index`, each sequence
    dealt out whole (AgentNetBench trajectories: a step's prompt needs the outputs of the earlier
    steps; any other sample alone, so every `count`-th sample)."""
    keys = list(dict.fromkeys(sequence_key(sample) for sample in pending))
    mine = set(keys[shard.index :: shard.count])
    return [sample for sample in pending if sequence_key(sample) in mine]


def sequences(samples: Sequence[Any]) -> list[list[Any]]:
    """`samples` grouped by `sequence_key`, in order of each sequence's first sample, each sequence in
    the samples' order."""
    grouped: dict[str, list[Any]] = {}
    for sample in samples:
        grouped.setdefault(sequence_key(sample), []).append(sample)
    return list(grouped.values())


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


def prefill_tokens(records: Sequence[Record]) -> dict[str, float | None]:
    """Mean prompt tokens and mean tokens actually prefilled per model call, over the records that
    ran a model without error (None when none did: the oracle). A re-prefilled call prefills its
    whole prompt; a carried step (`prefilled_tokens` in its record) only its new turn."""
    measured = [r for r in records if not r.get("error") and r.get("kv_bytes_full")]
    if not measured:
        return {"prompt_tokens_mean": None, "prefilled_tokens_mean": None}
    return {
        "prompt_tokens_mean": sum(r["prompt_tokens"] for r in measured) / len(measured),
        "prefilled_tokens_mean": sum(r.get("prefilled_tokens", r["prompt_tokens"]) for r in measured)
        / len(measured),
    }


def listed(items: Sequence[SkippedSample]) -> list[dict[str, Any]]:
    """Skipped or excluded samples as JSON: id, reason and the files looked for."""
    return [
        {"sample_id": s.sample_id, "reason": s.reason, "missing": [str(p) for p in s.missing]} for s in items
    ]


def failure_warning(failed: int, total: int) -> str | None:
    """The summary's sentence about failed samples (None when none failed)."""
    if not failed:
        return None
    return (
        f"{failed} of {total} samples failed (their generation raised): `metrics` are over the "
        f"{total - failed} scored samples only, `metrics_failures_as_wrong` counts the failed ones as "
        "wrong; re-run the same command to retry them"
    )


def build_summary(
    spec: BenchmarkSpec,
    settings: Mapping[str, Any],
    records: Sequence[Record],
    skipped: Sequence[Mapping[str, Any]],
    excluded: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """`summary.json`: the settings, the benchmark's metrics over the scored `records` (in dataset
    order; failed samples apart, also shown counted as wrong), the compression savings, the mean
    prompt and prefilled tokens per model call (`prefill_tokens`), what was
    scored, skipped (missing files, as `listed`), excluded and failed, and the guikv version that
    scored it."""
    scored = [record for record in records if not is_failed(record)]
    failed = [record for record in records if is_failed(record)]
    skipped_ids = [item["sample_id"] for item in skipped]
    return {
        "benchmark": spec.name,
        "title": spec.title,
        "model": settings["model"],
        "family": settings["family"],
        "method": settings["method"],
        "budget": settings["budget"],
        "config": dict(settings),
        "metric_columns": list(spec.metric_columns),
        "metrics": spec.summarize(scored, skipped_ids, [record["sample_id"] for record in failed]),
        "savings": savings(records),
        "prefill": prefill_tokens(records),
        "samples_scored": len(scored),
        "samples_skipped": len(skipped),
        "skipped": [dict(item) for item in skipped],
        "samples_excluded": len(excluded),
        "excluded": [dict(item) for item in excluded],
        "samples_failed": len(failed),
        "failed": [{"sample_id": r["sample_id"], "error": r["error"]} for r in failed],
        "metrics_failures_as_wrong": spec.summarize(list(records), skipped_ids) if failed else None,
        "warning": failure_warning(len(failed), len(records)),
        "guikv_version": __version__,
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
    retry_failed: bool = True,
    shard: Shard | None = None,
    events: RunEvents | None = None,
    batch_size: int = 1,
    player: type[Player] = Player,
) -> dict[str, Any] | None:
    """Evaluate every sample of `loaded` not yet in `run_dir`'s trace and write the summary.

    The main process locks the directory against a second invocation and prepares it (config, trace
    repair, failed samples taken out to run again unless `retry_failed` is False, or the
    `--no-resume` reset); then each process plays its share, appending records as they finish
    (`samples.jsonl` alone, or `samples.rank<i>.jsonl` under several processes); after a barrier the
    main process merges the shards, puts the trace in dataset order and writes `summary.json`,
    which it returns (other processes return None).

    With `batch_size` > 1 (a responder that `can_batch`) up to that many `sequence_key` sequences
    run side by side, one batched call answering the next call of each (`benchmarks.batching`);
    each record is written as soon as its sample is done, so a kill loses at most the samples of
    the batch in flight. Out of memory halves the batch for the rest of the run (said once) instead
    of failing samples. The trace and summary are those of batch size 1 (the times excepted: a
    batch's rows share its wall time).

    With a stateful responder the answers depend on sample order within a `state_group`: each group
    starts a new context, and a group left unfinished (interrupted, or with a failed sample to
    retry) is run again from its first sample, so a resumed run gives the numbers of an
    uninterrupted one (a carried trajectory, `benchmarks.carried`, cannot be resumed mid-way).

    `player` plays each sample: `Player` builds each benchmark's prompt (the paper's layout), a
    subclass another layout (`benchmarks.carried.CarriedPlayer`: the native multi-turn one).
    """
    shard = shard or Shard()
    events = events or RunEvents()
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: expected a positive integer")
    if batch_size > 1 and not responder.can_batch:
        raise ValueError(f"batch_size {batch_size}: this responder answers one call at a time")
    order = sample_order(loaded)
    with run_lock(run_dir) if shard.is_main else nullcontext():
        if shard.is_main:
            _prepare(run_dir, settings, resume, retry_failed, order, events)
            if responder.stateful:
                _restart_unfinished_groups(run_dir, loaded.samples, events)
        shard.barrier()
        finished = _by_id(read_trace(run_dir / SAMPLES_FILE).records)
        pending = [sample for sample in loaded.samples if sample.sample_id not in finished]
        mine = assign(pending, shard)
        trace = run_dir / (SAMPLES_FILE if shard.count == 1 else shard_file(shard.index))
        events.start(f"{spec.name} {settings['method']} {capacity_tag(settings)}", len(mine))
        with TraceWriter(trace) as writer:

            def done(sample: Any, record: Record) -> None:
                """Write a finished sample's record at once and make it the history of later steps."""
                writer.write(record)
                finished[sample.sample_id] = record
                events.advance()

            playing = player(spec, family, responder, screenshots, finished, done, events)
            batcher = Batcher(responder.reply, batch_size, events.note)
            drive((playing.lane(samples) for samples in sequences(mine)), batcher)
        shard.barrier()
        if not shard.is_main:
            return None
        merge_shards(run_dir, order)
        put_in_order(run_dir / SAMPLES_FILE, order)
        done = _by_id(read_trace(run_dir / SAMPLES_FILE).records)
        records = [done[sample_id] for sample_id in order if sample_id in done]
        summary = build_summary(spec, settings, records, listed(loaded.skipped), listed(loaded.excluded))
        write_json(run_dir / SUMMARY_FILE, summary)
        return summary


def _prepare(
    run_dir: Path,
    settings: Mapping[str, Any],
    resume: bool,
    retry_failed: bool,
    order: Sequence[str],
    events: RunEvents,
) -> None:
    """Prepare the run directory (main process) and say what was found: a reset, a dropped partial
    line, records folded in from shard files, samples already done, failed samples run again."""
    prepared = prepare(run_dir, settings, resume=resume, retry_failed=retry_failed, order=order)
    if not resume:
        kept = f"; its {prepared.moved} earlier records moved to {PREVIOUS_SAMPLES_FILE}"
        events.note(f"--no-resume: starting {run_dir} afresh{kept if prepared.moved else ''}")
    if prepared.dropped_partial:
        events.note(
            f"{run_dir / SAMPLES_FILE}: dropped an incomplete last line (an interrupted write); "
            "that sample runs again"
        )
    if prepared.merged:
        events.note(f"{run_dir}: folded {prepared.merged} records from an interrupted multi-process run")
    if prepared.kept:
        events.note(f"resuming {run_dir}: {prepared.kept} of {len(order)} samples already done")
    if prepared.retried:
        shown = ", ".join(prepared.retried[:3]) + (", ..." if len(prepared.retried) > 3 else "")
        events.note(f"{run_dir}: retrying {len(prepared.retried)} samples that failed before ({shown})")


def _restart_unfinished_groups(run_dir: Path, samples: Sequence[Any], events: RunEvents) -> None:
    """Stateful responder: take the finished records of every `state_group` that still has a pending
    sample out of the trace, so the group runs again from its first sample with a fresh context (a
    fresh method state, or a new carried trajectory)."""
    trace = run_dir / SAMPLES_FILE
    records = read_trace(trace).records
    done = {record["sample_id"] for record in records}
    unfinished = {state_group(sample) for sample in samples if sample.sample_id not in done}
    restarted = {
        sample.sample_id
        for sample in samples
        if sample.sample_id in done and state_group(sample) in unfinished
    }
    if not restarted:
        return
    rewrite_trace(trace, [record for record in records if record["sample_id"] not in restarted])
    events.note(
        f"{run_dir}: answers depend on the earlier steps of their trajectory (a method with state, or a "
        f"carried cache); re-running {len(restarted)} finished samples of unfinished trajectories from "
        "their first step"
    )


def _by_id(records: Sequence[Record]) -> dict[str, Record]:
    """Records by sample id (the first one wins should an id ever repeat)."""
    indexed: dict[str, Record] = {}
    for record in records:
        indexed.setdefault(record["sample_id"], record)
    return indexed
