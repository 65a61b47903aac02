"""One agent step: chat messages in, generated text out, with compression and its costs measured.

`infer`, `eval` and `compare` all go through `run_step`, so every number they print (prompt and
kept tokens, KV bytes, decode FLOPs, prefill and decode time) is measured the same way.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import torch
from torch import nn

from guikv.batch import row_grids
from guikv.compressor import compress
from guikv.config import CompressionConfig
from guikv.flops import Flops, ModelShape, decode_flops
from guikv.layout import TokenLayout
from guikv.models.adapters import adapter_for
from guikv.models.inputs import Message
from guikv.recall import OracleMassProbe


@dataclass
class StepResult:
    """The outcome and the costs of one `generate()` call under a compression config.

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


class _ForwardClock:
    """Timestamps the end of every top-level forward, so prefill and decode time split cleanly."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ends: list[float] = []

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.ends.append(time.perf_counter())


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
) -> StepResult | list[StepResult]:
    """Generate greedily for one agent step under `config` and measure what it kept and cost.

    `messages` is one conversation (a list of chat messages: one `StepResult`), or a list of
    conversations, run as one left-padded batch (a list of `StepResult`, one per conversation, each
    equal to what that conversation gives alone; see `run_steps`).

    With `oracle_mass=True` (on a full cache, one conversation) the result also carries the decode
    steps' attention mass on each prompt position, [layers, H_kv, L] (`guikv.recall`); the probe's
    work then counts in the decode times, so time steps without it.

    A stateful method (STaR-KV) continues `method_state` (an earlier step's `result.method_state`;
    for a batch, a list with one per conversation) when given, else starts empty; the result's
    `method_state` is the state after this step, to pass to the next step of the same trajectory.
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
) -> list[StepResult]:
    """One agent step for each of several conversations, in one left-padded batch.

    Each row is compressed on its own (its layout, capacity, kept positions and method state) and
    its result holds its own figures: prompt and kept tokens, KV bytes, FLOPs, generated tokens
    (up to its first end-of-sequence token, as alone). The times are the batch's (`batch_size`
    rows shared them). A family that cannot be batched (OpenCUA) raises for more than one row.
    """
    adapter = adapter_for(model)
    rows = len(conversations)
    if rows == 0:
        raise ValueError("run_steps() needs at least one conversation")
    if rows > 1 and adapter.build_batch_inputs is None:
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
    inputs = (
        adapter.build_inputs(processor, conversations[0])
        if rows == 1
        else adapter.build_batch_inputs(processor, conversations)
    ).to(model.device)
    clock = _ForwardClock(model.device)
    handle = model.register_forward_hook(clock, with_kwargs=True)
    probe = OracleMassProbe(len(adapter.attention_modules(model))) if oracle_mass else None
    probe_handles = probe.attach(adapter.attention_modules(model)) if probe is not None else []
    state = states if rows > 1 else states[0]
    try:
        with (
            torch.no_grad(),
            compress(model, config, record_positions=record_positions, method_state=state) as report,
        ):
            start = time.perf_counter()
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                return_dict_in_generate=True,
                output_logits=keep_first_decode_logits,
            )
    finally:
        handle.remove()
        for probe_handle in probe_handles:
            probe_handle.remove()
    shape = ModelShape.from_config(model.config)
    grids = inputs.get("image_grid_thw", inputs.get("grid_thws"))
    merge = getattr(getattr(processor, "image_processor", None), "merge_size", 1)
    layouts = [
        layout or TokenLayout(row.prompt_tokens, ())
        for layout, row in zip(report.layouts, report.rows, strict=True)
    ]
    eos = _eos_ids(model)
    results = []
    for index, (row, layout) in enumerate(zip(report.rows, layouts, strict=True)):
        generated = _until_eos(out.sequences[index, inputs["input_ids"].shape[1] :], eos)
        steps = max(0, generated.numel() - 1)
        row_grids_thw = row_grids(grids, [item.num_images for item in layouts], index)
        results.append(
            StepResult(
                text=processor.batch_decode(generated[None], skip_special_tokens=True)[0],
                prompt_tokens=row.prompt_tokens,
                generated_tokens=int(generated.numel()),
                kept_per_layer=list(row.kept_per_layer),
                kv_bytes_full=row.kv_bytes_full,
                kv_bytes_kept=row.kv_bytes_kept,
                decode_flops_full=decode_flops(shape, [row.prompt_tokens] * shape.num_layers, steps),
                decode_flops_kept=decode_flops(shape, row.kept_per_layer, steps),
                prefill_seconds=clock.ends[0] - start,
                decode_seconds=clock.ends[-1] - clock.ends[0],
                decode_step_seconds=[end - previous for previous, end in itertools.pairwise(clock.ends)],
                scoring_seconds=report.scoring_seconds,
                layout=layout,
                image_grids=(
                    [(t, h // merge, w // merge) for t, h, w in row_grids_thw.tolist()]
                    if row_grids_thw is not None
                    else []
                ),
                kept_positions=list(row.kept_positions),
                generated_ids=generated.tolist(),
                first_decode_logits=(
                    out.logits[1][index].float().cpu()
                    if keep_first_decode_logits and len(out.logits) > 1
                    else None
                ),
                oracle_mass=probe.mass() if probe is not None else None,
                method_state=report.method_states[index] if report.method_states else None,
                batch_size=rows,
                kv_bytes_stored=report.kv_bytes_stored,
            )
        )
    return results


def _eos_ids(model: nn.Module) -> set[int]:
    """The token ids that end a generation (the model's generation config)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(token) for token in eos}


def _until_eos(tokens: torch.Tensor, eos: set[int]) -> torch.Tensor:
    """A batch row's new tokens up to and including its first end-of-sequence token (what the row
    generates alone; a batch pads rows that finished early)."""
    for index, token in enumerate(tokens.tolist()):
        if token in eos:
            return tokens[: index + 1]
    return tokens
