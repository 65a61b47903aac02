"""One agent step: chat messages in, generated text out, with compression and its costs measured.

`infer`, `eval` and `compare` all go through `run_step`, so every number they print (prompt and
kept tokens, KV bytes, decode FLOPs, prefill and decode time) is measured the same way.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import torch
from torch import nn

from guikv.batch import left_padded, row_grids
from guikv.cache import stack_rows, stored_kv_bytes
from guikv.compressor import CompressionReport, RowRecord, compress
from guikv.config import CompressionConfig
from guikv.flops import Flops, ModelShape, decode_flops
from guikv.hooks import cache_keyword, output_cache
from guikv.layout import TokenLayout
from guikv.models.adapters import adapter_for
from guikv.models.inputs import Message
from guikv.recall import OracleMassProbe


@dataclass
class StepResult:
    """The outcome and the costs of one agent step (one conversation) under a compression config.

    In a batch (`batch_size` > 1) each conversation has its own result: its own tokens, kept
    positions, KV bytes and FLOPs, while the times and `kv_bytes_stored` (what the cut cache of the
    whole batch stores, empty slots of shorter rows included) are the batch's.
    """

    text: str
    prompt_tokens: int
    generated_tokens: int
    kept_per_layer: list[int]
    kv_bytes_full: int
    kv_bytes_kept: int
    decode_flops_full: Flops
    decode_flops_kept: Flops
    prefill_seconds: float
    decode_seconds: float
    scoring_seconds: float
    layout: TokenLayout
    image_grids: list[tuple[int, int, int]] = field(default_factory=list)
    kept_positions: list[torch.Tensor] = field(default_factory=list)
    generated_ids: list[int] = field(default_factory=list)
    decode_step_seconds: list[float] = field(default_factory=list)
    first_decode_logits: torch.Tensor | None = None
    oracle_mass: torch.Tensor | None = None
    method_state: Any = None
    batch_size: int = 1
    kv_bytes_stored: int = 0

    @property
    def decode_ms_per_token(self) -> float:
        """Mean time of one decode forward, in milliseconds (0 when only one token was generated)."""
        steps = len(self.decode_step_seconds)
        return 1000 * self.decode_seconds / steps if steps > 0 else 0.0

    @property
    def decode_ms_per_token_median(self) -> float:
        """Median time of one decode forward in milliseconds: robust to a stray slow step."""
        return 1000 * statistics.median(self.decode_step_seconds) if self.decode_step_seconds else 0.0

    @property
    def kv_saved_percent(self) -> float:
        """Share of the KV cache the compression freed."""
        return 100.0 * (1 - self.kv_bytes_kept / self.kv_bytes_full) if self.kv_bytes_full else 0.0

    @property
    def decode_flops_saved_percent(self) -> float:
        """Share of total decode FLOPs saved (0 when nothing was decoded after the prefill)."""
        if not self.decode_flops_full.total:
            return 0.0
        return self.decode_flops_kept.saved_vs(self.decode_flops_full)[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (no tensors) for traces and `--json` output."""
        return {
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "num_images": self.layout.num_images,
            "image_tokens": self.layout.num_image_tokens,
            "kept_per_layer": self.kept_per_layer,
            "kv_bytes_full": self.kv_bytes_full,
            "kv_bytes_kept": self.kv_bytes_kept,
            "kv_saved_percent": self.kv_saved_percent,
            "decode_flops_full": self.decode_flops_full.total,
            "decode_flops_kept": self.decode_flops_kept.total,
            "decode_attention_flops_full": self.decode_flops_full.attention,
            "decode_attention_flops_kept": self.decode_flops_kept.attention,
            "decode_flops_saved_percent": self.decode_flops_saved_percent,
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
            "decode_ms_per_token": self.decode_ms_per_token,
            "decode_ms_per_token_median": self.decode_ms_per_token_median,
            "scoring_seconds": self.scoring_seconds,
            "batch_size": self.batch_size,
        }


@dataclass(frozen=True)
class StepProgress:
    """Where a step is, for a status line: `phase` is "encoding" (screenshots and text into model
    inputs), "prefilling" (the prompt through the model, then compression) or "decoding" (with
    `generated` tokens so far, at most `max_new_tokens`)."""

    phase: str
    generated: int
    max_new_tokens: int


class ForwardClock:
    """Timestamps the end of every top-level forward, so prefill and decode time split cleanly, and
    tells `on_forward` how many forwards have ended (after the timestamp)."""

    def __init__(self, device: torch.device, on_forward: Callable[[int], None] | None = None) -> None:
        self.device = device
        self.ends: list[float] = []
        self.on_forward = on_forward

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.ends.append(time.perf_counter())
        if self.on_forward is not None:
            self.on_forward(len(self.ends))


@overload
def run_step(
    model: nn.Module,
    processor: Any,
    messages: Sequence[Message],
    config: CompressionConfig,
    *,
    max_new_tokens: int = ...,
    record_positions: bool = ...,
    keep_first_decode_logits: bool = ...,
    oracle_mass: bool = ...,
    method_state: Any = ...,
    progress: Callable[[StepProgress], None] | None = ...,
) -> StepResult: ...


@overload
def run_step(
    model: nn.Module,
    processor: Any,
    messages: Sequence[Sequence[Message]],
    config: CompressionConfig,
    *,
    max_new_tokens: int = ...,
    record_positions: bool = ...,
    keep_first_decode_logits: bool = ...,
    oracle_mass: bool = ...,
    method_state: Any = ...,
    progress: Callable[[StepProgress], None] | None = ...,
) -> list[StepResult]: ...


def run_step(
    model: nn.Module,
    processor: Any,
    messages: Sequence[Message] | Sequence[Sequence[Message]],
    config: CompressionConfig,
    *,
    max_new_tokens: int = 256,
    record_positions: bool = False,
    keep_first_decode_logits: bool = False,
    oracle_mass: bool = False,
    method_state: Any = None,
    progress: Callable[[StepProgress], None] | None = None,
) -> StepResult | list[StepResult]:
    """Generate greedily for one agent step under `config` and measure what it kept and cost.

    `messages` is one conversation (a list of chat messages: one `StepResult`), or a list of
    conversations, run as one left-padded batch (a list of `StepResult`, one per conversation, each
    equal to what that conversation gives alone; see `run_steps`).

    With `oracle_mass=True` (on a full cache, one conversation) the result also carries the decode
    steps' attention mass on each prompt position, [layers, H_kv, L] (`guikv.recall`; None when the
    answer is one token, so no decode step ran); the probe's work then counts in the decode times,
    so time steps without it.

    A stateful method (STaR-KV) continues `method_state` (an earlier step's `result.method_state`;
    for a batch, a list with one per conversation) when given, else starts empty; the result's
    `method_state` is the state after this step, to pass to the next step of the same trajectory.

    `progress`, when given, is told each phase as it starts and each decoded token (`StepProgress`),
    e.g. for a status line while a large model works; it runs between the timed forwards.

    `method_state` itself is never changed, so a step that raises (out of memory in a batch's decode,
    after every row's prefill) can be run again from the same state.
    """
    batched = bool(messages) and not isinstance(messages[0], Mapping)
    conversations = list(messages) if batched else [messages]
    states = method_state if batched else [method_state]
    results = run_steps(
        model,
        processor,
        conversations,
        config,
        max_new_tokens=max_new_tokens,
        record_positions=record_positions,
        keep_first_decode_logits=keep_first_decode_logits,
        oracle_mass=oracle_mass,
        method_states=states,
        progress=progress,
    )
    return results if batched else results[0]


def run_steps(
    model: nn.Module,
    processor: Any,
    conversations: Sequence[Sequence[Message]],
    config: CompressionConfig,
    *,
    max_new_tokens: int = 256,
    record_positions: bool = False,
    keep_first_decode_logits: bool = False,
    oracle_mass: bool = False,
    method_states: Sequence[Any] | None = None,
    progress: Callable[[StepProgress], None] | None = None,
) -> list[StepResult]:
    """One agent step for each of several conversations, decoded as one batch.

    A batch prefills its rows one at a time, each exactly as alone (its layout, capacity, kept
    positions and method state), then decodes them together on their stacked cut caches (see
    `_generate_row_by_row` for why). Each result holds its own figures: prompt and kept tokens, KV
    bytes, FLOPs, generated tokens (up to its first end-of-sequence token, as alone). The times are
    the batch's (`batch_size` rows shared them). A family that cannot be batched (OpenCUA) raises
    for more than one row. `progress` is as for `run_step` (the batch's tokens: each row's prefill
    is one forward, then each decoding forward gives every row one token).
    """
    adapter = adapter_for(model)
    states = _row_states(model, len(conversations), oracle_mass, method_states)
    tell = progress or (lambda _progress: None)
    tell(StepProgress("encoding", 0, max_new_tokens))
    inputs = [adapter.build_inputs(processor, messages).to(model.device) for messages in conversations]
    settings = _Settings(config, max_new_tokens, record_positions, keep_first_decode_logits, eos_ids(model))
    return _run_inputs(model, processor, inputs, settings, states, oracle_mass, progress)


def run_step_inputs(
    model: nn.Module,
    processor: Any,
    inputs: Mapping[str, torch.Tensor],
    config: CompressionConfig,
    *,
    max_new_tokens: int = 256,
    record_positions: bool = False,
    keep_first_decode_logits: bool = False,
    oracle_mass: bool = False,
    method_state: Any = None,
) -> StepResult:
    """`run_step` on one conversation's ready-made processor inputs instead of its messages: for a
    prompt the chat template cannot write as text, e.g. a carried trajectory's conversation with
    each earlier answer as the very tokens the model generated
    (`guikv.models.adapters.Carrying.answer_token_inputs`). Measured exactly as `run_step`."""
    on_device = {name: value.to(model.device) for name, value in inputs.items()}
    settings = _Settings(config, max_new_tokens, record_positions, keep_first_decode_logits, eos_ids(model))
    return _run_inputs(model, processor, [on_device], settings, [method_state], oracle_mass, None)[0]


def _row_states(
    model: nn.Module, rows: int, oracle_mass: bool, method_states: Sequence[Any] | None
) -> list[Any]:
    """Each row's method state (None: start empty), once the batch is known to be runnable."""
    adapter = adapter_for(model)
    if rows == 0:
        raise ValueError("run_steps() needs at least one conversation")
    if rows > 1 and adapter.prepare_batch_decode is None:
        raise ValueError(
            f"{type(model).__name__} ({adapter.family}) prompts cannot be batched under compression: "
            "use batch size 1"
        )
    if rows > 1 and oracle_mass:
        raise ValueError("run_step(oracle_mass=True) measures one conversation at a time: use batch size 1")
    states = list(method_states) if method_states is not None else [None] * rows
    if len(states) != rows:
        raise ValueError(
            f"{len(states)} method states for {rows} conversations: expected one per conversation"
        )
    return states


def _run_inputs(
    model: nn.Module,
    processor: Any,
    inputs: Sequence[Mapping[str, torch.Tensor]],
    settings: _Settings,
    states: Sequence[Any],
    oracle_mass: bool,
    progress: Callable[[StepProgress], None] | None,
) -> list[StepResult]:
    """`run_steps` from its conversations' processor inputs (on the model's device) on."""
    rows = len(inputs)
    tell = progress or (lambda _progress: None)
    tell(StepProgress("prefilling", 0, settings.max_new_tokens))

    def forward_ended(forwards: int) -> None:
        if forwards >= rows:
            tell(StepProgress("decoding", forwards - rows + 1, settings.max_new_tokens))

    clock = ForwardClock(model.device, forward_ended if progress is not None else None)
    handle = model.register_forward_hook(clock, with_kwargs=True)
    try:
        with torch.no_grad():
            run = (
                _generate_alone(model, inputs[0], settings, clock, states[0], oracle_mass)
                if rows == 1
                else _generate_row_by_row(
                    model, processor, inputs, settings, clock, states, adapter_for(model).prepare_batch_decode
                )
            )
    finally:
        handle.remove()
    shape = ModelShape.from_config(model.config)
    merge = getattr(getattr(processor, "image_processor", None), "merge_size", 1)
    results = []
    for row in run.rows:
        steps = max(0, row.tokens.numel() - 1)
        record = row.record
        results.append(
            StepResult(
                text=processor.batch_decode(row.tokens[None], skip_special_tokens=True)[0],
                prompt_tokens=record.prompt_tokens,
                generated_tokens=int(row.tokens.numel()),
                kept_per_layer=list(record.kept_per_layer),
                kv_bytes_full=record.kv_bytes_full,
                kv_bytes_kept=record.kv_bytes_kept,
                decode_flops_full=decode_flops(shape, [record.prompt_tokens] * shape.num_layers, steps),
                decode_flops_kept=decode_flops(shape, record.kept_per_layer, steps),
                prefill_seconds=run.prefill_seconds,
                decode_seconds=sum(run.decode_step_seconds),
                decode_step_seconds=list(run.decode_step_seconds),
                scoring_seconds=run.scoring_seconds,
                layout=row.layout,
                image_grids=(
                    [(t, h // merge, w // merge) for t, h, w in row.grids.tolist()]
                    if row.grids is not None
                    else []
                ),
                kept_positions=list(record.kept_positions),
                generated_ids=row.tokens.tolist(),
                first_decode_logits=row.first_decode_logits,
                oracle_mass=run.oracle_mass,
                method_state=row.method_state,
                batch_size=rows,
                kv_bytes_stored=run.kv_bytes_stored,
            )
        )
    return results


@dataclass(frozen=True)
class _Settings:
    """How every row of a step generates: greedily, up to `max_new_tokens` or an `eos` token."""

    config: CompressionConfig
    max_new_tokens: int
    record_positions: bool
    keep_first_decode_logits: bool
    eos: set[int]


@dataclass
class _Row:
    """One conversation's generation: its new tokens (up to its first end-of-sequence token), what
    its prefill kept, its layout, its screenshots' `image_grid_thw` rows and its method state."""

    tokens: torch.Tensor
    record: RowRecord
    layout: TokenLayout
    grids: torch.Tensor | None
    method_state: Any
    first_decode_logits: torch.Tensor | None


@dataclass
class _Run:
    """A step's rows and what they shared: the prefill time (all rows), each decode forward's time,
    the scoring time, the bytes the cut prompt cache stores and the oracle probe's mass."""

    rows: list[_Row]
    prefill_seconds: float
    decode_step_seconds: list[float]
    scoring_seconds: float
    kv_bytes_stored: int
    oracle_mass: torch.Tensor | None = None


def _prefilled_row(
    report: CompressionReport,
    inputs: Any,
    tokens: torch.Tensor,
    first_decode_logits: torch.Tensor | None,
) -> _Row:
    """A row from the report of its own prefill (a context that compressed this prompt alone)."""
    record = report.rows[0]
    layout = report.layouts[0] or TokenLayout(record.prompt_tokens, ())
    grids = inputs.get("image_grid_thw", inputs.get("grid_thws"))
    return _Row(
        tokens=tokens,
        record=record,
        layout=layout,
        grids=row_grids(grids, [layout.num_images], 0),
        method_state=report.method_state,
        first_decode_logits=first_decode_logits.float().cpu() if first_decode_logits is not None else None,
    )


def _generate_alone(
    model: nn.Module,
    inputs: Any,
    settings: _Settings,
    clock: ForwardClock,
    method_state: Any,
    oracle_mass: bool,
) -> _Run:
    """One conversation: one `generate()` under `compress()` (with the oracle probe if asked)."""
    adapter = adapter_for(model)
    probe = OracleMassProbe(len(adapter.attention_modules(model))) if oracle_mass else None
    probe_handles = probe.attach(adapter.attention_modules(model)) if probe is not None else []
    try:
        with compress(
            model, settings.config, record_positions=settings.record_positions, method_state=method_state
        ) as report:
            start = time.perf_counter()
            out = model.generate(
                **inputs,
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                return_dict_in_generate=True,
                output_logits=settings.keep_first_decode_logits,
            )
    finally:
        for probe_handle in probe_handles:
            probe_handle.remove()
    logits = out.logits[1][0] if settings.keep_first_decode_logits and len(out.logits) > 1 else None
    tokens = until_eos(out.sequences[0, inputs["input_ids"].shape[1] :], settings.eos)
    return _Run(
        rows=[_prefilled_row(report, inputs, tokens, logits)],
        prefill_seconds=clock.ends[0] - start,
        decode_step_seconds=[end - previous for previous, end in itertools.pairwise(clock.ends)],
        scoring_seconds=report.scoring_seconds,
        kv_bytes_stored=report.kv_bytes_stored,
        oracle_mass=probe.mass() if probe is not None else None,
    )


def _generate_row_by_row(
    model: nn.Module,
    processor: Any,
    inputs: Sequence[Any],
    settings: _Settings,
    clock: ForwardClock,
    method_states: Sequence[Any],
    prepare_batch_decode: Callable[[nn.Module, Mapping[str, torch.Tensor]], None],
) -> _Run:
    """Several conversations: prefill and compress each alone, then decode them as one batch.

    Prefilling the left-padded batch at once would cost more than its rows alone: each prompt is
    padded to the longest, the kernels get an explicit [B, 1, L, L] mask instead of their causal
    path (sdpa's masked CPU kernel measured about 5x slower), and every row's uncompressed cache and
    activations exist together. Decoding is where a batch pays: one forward per token for all rows,
    each reading its small cut cache. So each row's prefill is its solo run's (the same kept
    positions by construction); their caches are stacked into the cache `compress()` leaves after a
    left-padded batch (`stack_rows`), the model's position state is set for that padded batch, and
    one `generate()` continues every row from its first token.

    The prefill time covers every row's prefill and the stacking; each decode step is timed from
    the previous forward's end (the first from the stacking's end).
    """
    config = settings.config
    start = time.perf_counter()
    reports, caches, firsts = [], [], []
    for row_inputs, state in zip(inputs, method_states, strict=True):
        with compress(
            model, config, record_positions=settings.record_positions, method_state=state
        ) as report:
            out = model.generate(
                **row_inputs, max_new_tokens=1, do_sample=False, return_dict_in_generate=True
            )
        reports.append(report)
        caches.append(output_cache(out))
        firsts.append(out.sequences[:, -1:])
    tokenizer = getattr(processor, "tokenizer", processor)
    batch = left_padded(inputs, getattr(tokenizer, "pad_token_id", None) or 0)
    cache = stack_rows(caches)
    stored = sum(stored_kv_bytes(layer) for layer in cache.layers)
    prepare_batch_decode(model, batch)
    first = torch.cat(firsts)
    decoded = first.new_zeros(len(inputs), 0)
    logits: torch.Tensor | None = None
    decode_start, forwards_before = time.perf_counter(), len(clock.ends)
    if settings.max_new_tokens > 1 and not set(first[:, 0].tolist()) <= settings.eos:
        with compress(model, config):
            out = model.generate(
                input_ids=torch.cat([batch["input_ids"], first], dim=-1),
                attention_mask=torch.cat([batch["attention_mask"], torch.ones_like(first)], dim=-1),
                max_new_tokens=settings.max_new_tokens - 1,
                do_sample=False,
                return_dict_in_generate=True,
                output_logits=settings.keep_first_decode_logits,
                **{cache_keyword(model): cache},
            )
        decoded = out.sequences[:, batch["input_ids"].shape[1] + 1 :]
        logits = out.logits[0] if settings.keep_first_decode_logits else None
    ends = [decode_start, *clock.ends[forwards_before:]]
    rows = [
        _prefilled_row(
            report,
            row_inputs,
            until_eos(torch.cat([first[index], decoded[index]]), settings.eos),
            logits[index] if logits is not None else None,
        )
        for index, (report, row_inputs) in enumerate(zip(reports, inputs, strict=True))
    ]
    return _Run(
        rows=rows,
        prefill_seconds=decode_start - start,
        decode_step_seconds=[end - previous for previous, end in itertools.pairwise(ends)],
        scoring_seconds=sum(report.scoring_seconds for report in reports),
        kv_bytes_stored=stored,
    )


def eos_ids(model: nn.Module) -> set[int]:
    """The token ids that end a generation (the model's generation config)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(token) for token in eos}


def until_eos(tokens: torch.Tensor, eos: set[int]) -> torch.Tensor:
    """A batch row's new tokens up to and including its first end-of-sequence token (what the row
    generates alone; a batch pads rows that finished early)."""
    for index, token in enumerate(tokens.tolist()):
        if token in eos:
            return tokens[: index + 1]
    return tokens
