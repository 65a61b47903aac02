"""The worker side of the plugin: score each prompt right after its prefill and compact the kept
entries into the request's leading blocks; afterwards, attend over the shorter cache.

`CompressingCPUWorker` is vLLM's CPU worker with a model runner that, per step:

1. before the forward (`_prepare_inputs`), finds the requests whose whole sequence is prefilled in
   this step and plans them (`guikv.vllm.plan`), exactly as the scheduler does;
2. during the forward, forward hooks on each decoder layer's attention read the attention input
   (for saliency) and the queries and keys after RoPE that vLLM's attention layer receives; once
   the layer's attention has run, the method selects the kept positions per KV head
   (`guikv.methods`, the code the transformers path runs) and vLLM's own cache-write op writes
   the kept keys and values into the first `C` slots of the request's blocks;
3. after the forward, drops the blocks past the kept ones from the request's block table (the
   scheduler frees the same blocks) and remembers the shift `L - C`;
4. on every later step, the request's attention sees `seq_len - shift` entries and new tokens are
   written at `position - shift`, while RoPE positions stay logical (`num_computed_tokens`).

A request prefilled again from position 0 after vLLM preempted it (recompute: prompt plus every
generated token) continues from the cache it had: its first whole prefill's cut (`FirstCut`: the
prompt length and the positions first chosen, `layers x H_kv x C` ints, kept until the request
finishes) is kept again, and every later row attends as it did while decoding
(`guikv.vllm.resume`). Layouts come from that prompt alone.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from vllm.logger import init_logger
from vllm.model_executor.layers.attention.attention import Attention
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.cpu_attn import _get_attn_isa
from vllm.v1.kv_cache_interface import FullAttentionSpec
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker

from guikv.layout import TokenLayout, grids_from_positions
from guikv.methods import build_method
from guikv.methods.base import Method
from guikv.models.adapters import ADAPTERS
from guikv.vllm.bridge import request_context
from guikv.vllm.cache_layout import KNOWN_LAYOUT_ISAS
from guikv.vllm.compaction import compact
from guikv.vllm.plan import RequestPlan, plan_request
from guikv.vllm.refusal import refused
from guikv.vllm.resume import generated_attention, kept_entries
from guikv.vllm.settings import PluginSettings, settings_from_additional_config

logger = init_logger(f"vllm.{__name__}")
"""Under the `vllm` logger tree, so vLLM's log handler prints it."""

RECENT_RECORDS = 4096
"""Per-request records a worker keeps (the oldest are dropped; totals keep counting)."""


@dataclass
class CompressionRecord:
    """What the worker did with one prefill: prompt length, kept count per layer and KV head, why
    it was left whole (None when compressed), the generated tokens prefilled again after a
    preemption (0 for a first prefill), scoring + compaction wall time, and (when the settings ask
    for it) the prompt's kept positions per layer `[H_kv, C]`."""

    request_id: str
    prompt_tokens: int
    kept: int
    left_whole: str | None
    generated: int = 0
    seconds: float = 0.0
    positions: list[torch.Tensor] = field(default_factory=list)


@dataclass
class RequestStep:
    """A request being compressed in the current step: its rows `[start, end)` in the step's flat
    tensors, its plan and layout, its block ids, its record, and either the method object scoring
    it (a first prefill; `chosen` collects its kept positions layer by layer) or, for a preempted
    request's re-prefill, the positions first chosen `[layers, H_kv, C]`."""

    row: int
    start: int
    end: int
    plan: RequestPlan
    layout: TokenLayout
    block_ids: list[int]
    record: CompressionRecord
    method: Method | None = None
    first_chosen: torch.Tensor | None = None
    chosen: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class FirstCut:
    """What a request's first whole prefill kept: the runner's state object of that request (vLLM
    may reuse the id of a finished request for a new one), the prompt length, and the positions
    kept per layer and KV head `[layers, H_kv, C]` (None when the prompt was left whole). Every
    token after that prompt (generated, or appended by a streaming-input session) is kept whole."""

    state: Any
    prompt_length: int
    positions: torch.Tensor | None


@dataclass(frozen=True)
class DecoderAttention:
    """One decoder layer's attention: the model's attention module (input: the attention input)
    and vLLM's `Attention` layer inside it (input: queries, keys, values after RoPE)."""

    index: int
    module: nn.Module
    attention: Attention


def decoder_attentions(model: nn.Module) -> list[DecoderAttention]:
    """Every decoder self-attention of a vLLM model, in layer order (vision-tower attention is not
    a vLLM `Attention` of decoder type and is skipped)."""
    found: list[DecoderAttention] = []
    for name, module in model.named_modules():
        if not isinstance(module, Attention) or module.attn_type != AttentionType.DECODER:
            continue
        parts = name.split(".")
        if len(parts) < 3 or "layers" not in parts:
            raise refused(f"decoder attention {name!r} is not inside a `layers.N` list: unsupported model")
        index = int(parts[parts.index("layers") + 1])
        found.append(DecoderAttention(index, model.get_submodule(".".join(parts[:-1])), module))
    found.sort(key=lambda layer: layer.index)
    if not found or [layer.index for layer in found] != list(range(len(found))):
        raise refused("found no contiguous decoder attention layers in this model: unsupported model")
    return found


def refuse_unreproducible_attention(layer: DecoderAttention) -> None:
    """Refuse a layer whose attention `guikv.vllm.resume.generated_attention` cannot reproduce
    (a resumed request's generated rows are attended there): sliding window, soft cap, ALiBi, sinks."""
    impl = layer.attention.impl
    features = {
        "a sliding window": getattr(impl, "sliding_window", -1) not in (None, -1),
        "a logits soft cap": bool(getattr(impl, "logits_soft_cap", 0)),
        "ALiBi slopes": getattr(impl, "alibi_slopes", None) is not None,
        "attention sinks": getattr(impl, "sinks", None) is not None,
    }
    found = [name for name, present in features.items() if present]
    if found:
        raise refused(
            f"decoder layer {layer.index}'s attention has {', '.join(found)}: the plugin supports "
            "plain causal attention only"
        )


class CompressingCPUModelRunner(CPUModelRunner):
    """vLLM's CPU model runner with GUI-KV compression after prefill (see the module docstring).

    `CPUWorker` builds its runner inline, so `CompressingCPUWorker` adopts the runner it built
    (`adopt`) instead of constructing a second one.
    """

    guikv_settings: PluginSettings
    guikv_shift: dict[str, int]
    guikv_first_cuts: dict[str, FirstCut]
    guikv_steps: list[RequestStep]
    guikv_records: deque[CompressionRecord]
    guikv_totals: dict[str, float]

    def adopt(self, settings: PluginSettings) -> None:
        """Turn this runner's state into a compressing runner's (called once, before loading)."""
        model_type = self.model_config.hf_config.model_type
        adapter = ADAPTERS[model_type]
        self.guikv_settings = settings
        self.guikv_image_token_ids = adapter.image_token_ids(self.model_config.hf_config)
        self.guikv_shift = {}
        self.guikv_first_cuts = {}
        self.guikv_steps = []
        self.guikv_records = deque(maxlen=RECENT_RECORDS)
        self.guikv_totals = {
            "requests": 0,
            "compressed": 0,
            "prompt_tokens": 0,
            "kept_tokens": 0,
            "resumed": 0,
            "seconds": 0.0,
        }
        self.guikv_hidden: dict[int, torch.Tensor] = {}
        self.guikv_layers: list[DecoderAttention] = []

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        """Load the model, refuse a kernel whose cache layout is unknown, and hook every decoder
        attention."""
        super().load_model(*args, **kwargs)
        head_dim = self.model_config.get_head_size()
        isa = _get_attn_isa(self.dtype, self.cache_config.block_size, head_dim, self.cache_config.cache_dtype)
        if isa not in KNOWN_LAYOUT_ISAS:
            raise refused(
                f"CPU attention kernel {isa!r} (dtype {self.dtype}, head_dim {head_dim}) has a cache layout "
                f"guikv has not verified: expected one of {KNOWN_LAYOUT_ISAS} (fp32/fp16; bf16 without AMX)"
            )
        self.guikv_layers = decoder_attentions(self.model)
        for layer in self.guikv_layers:
            refuse_unreproducible_attention(layer)
            layer.module.register_forward_pre_hook(self._keep_attention_input(layer.index), with_kwargs=True)
            layer.attention.register_forward_hook(self._compress_layer(layer), with_kwargs=True)

    def initialize_kv_cache(self, kv_cache_config: Any, *args: Any, **kwargs: Any) -> None:
        """vLLM's KV cache set-up; guikv needs exactly one group of full-attention layers."""
        super().initialize_kv_cache(kv_cache_config, *args, **kwargs)
        groups = kv_cache_config.kv_cache_groups
        if len(groups) != 1 or not isinstance(groups[0].kv_cache_spec, FullAttentionSpec):
            raise refused(
                f"the plugin needs one KV cache group of full attention, found {len(groups)} group(s) "
                f"({', '.join(type(g.kv_cache_spec).__name__ for g in groups)})"
            )

    def _prepare_inputs(self, scheduler_output: Any, num_scheduled_tokens: np.ndarray) -> Any:
        """vLLM's input preparation, plus: plan this step's whole prefills, and point compressed
        requests' attention and cache writes at their physical positions."""
        self._plan_step(num_scheduled_tokens)
        prepared = super()._prepare_inputs(scheduler_output, num_scheduled_tokens)
        self._apply_shifts(num_scheduled_tokens)
        return prepared

    def _model_forward(self, *args: Any, **kwargs: Any) -> Any:
        """The forward (hooks compress the planned requests layer by layer), then shrink their
        block tables."""
        try:
            return super()._model_forward(*args, **kwargs)
        finally:
            steps, self.guikv_steps = self.guikv_steps, []
            self.guikv_hidden.clear()
            for step in steps:
                self._finish_request(step)

    def _plan_step(self, num_scheduled_tokens: np.ndarray) -> None:
        """Find the requests whose whole sequence is prefilled in this step and plan them from
        their first prompts; forget the shifts and first cuts of requests that have finished (a
        preempted request stays in `self.requests`)."""
        self.guikv_steps = []
        for gone in [r for r in self.guikv_shift if r not in self.requests]:
            del self.guikv_shift[gone]
        for gone in [r for r, cut in self.guikv_first_cuts.items() if self.requests.get(r) is not cut.state]:
            del self.guikv_first_cuts[gone]
        batch = self.input_batch
        starts = np.concatenate([[0], np.cumsum(num_scheduled_tokens)])
        for row, request_id in enumerate(batch.req_ids[: batch.num_reqs]):
            if int(batch.num_computed_tokens_cpu[row]) != 0:
                continue
            self.guikv_shift.pop(request_id, None)
            state = self.requests[request_id]
            if int(num_scheduled_tokens[row]) != state.num_tokens or state.prompt_token_ids is None:
                continue
            tokens = list(state.prompt_token_ids) + list(state.output_token_ids)
            cut = self.guikv_first_cuts.get(request_id)
            prompt_length = len(state.prompt_token_ids) if cut is None else cut.prompt_length
            prompt_ids = tokens[:prompt_length]
            plan = plan_request(
                prompt_ids,
                self.guikv_settings.compression,
                self.guikv_image_token_ids,
                len(tokens) - prompt_length,
            )
            record = CompressionRecord(request_id, plan.length, plan.kept, plan.left_whole, plan.generated)
            self._count(record)
            if plan.left_whole is not None:
                if cut is None:
                    self.guikv_first_cuts[request_id] = FirstCut(state, prompt_length, None)
                self.guikv_records.append(record)
                continue
            step = RequestStep(
                row=row,
                start=int(starts[row]),
                end=int(starts[row + 1]),
                plan=plan,
                layout=self._prompt_layout(prompt_ids, state.mrope_positions),
                block_ids=list(state.block_ids[0]),
                record=record,
            )
            if cut is None:
                step.method = build_method(self.guikv_settings.compression)
            else:
                step.first_chosen = self._first_chosen(request_id, cut, plan)
            self.guikv_steps.append(step)

    def _prompt_layout(self, prompt_ids: list[int], mrope_positions: torch.Tensor | None) -> TokenLayout:
        """The token layout of a prompt, with each screenshot's grid from vLLM's M-RoPE positions."""
        layout = TokenLayout.from_input_ids(torch.tensor(prompt_ids), self.guikv_image_token_ids)
        if mrope_positions is not None and layout.image_spans:
            grids = grids_from_positions(mrope_positions[:, None, : layout.length], layout.image_spans)
            layout = layout.with_grids(grids) if grids is not None else layout
        return layout

    def _first_chosen(self, request_id: str, cut: FirstCut, plan: RequestPlan) -> torch.Tensor:
        """The positions a preempted request's prompt kept at its first prefill `[layers, H_kv, C]`."""
        if cut.positions is None or cut.positions.shape[-1] != plan.kept:
            raise RuntimeError(
                f"guikv: request {request_id} is prefilled again after a preemption, but the positions its "
                f"prompt kept at its first prefill ({plan.kept} per layer and KV head) are not known"
            )
        return cut.positions

    def _apply_shifts(self, num_scheduled_tokens: np.ndarray) -> None:
        """Compressed requests: attention over `seq_len - shift` entries, cache writes at
        `position - shift`; RoPE positions (`self.positions`, M-RoPE) stay logical."""
        num_reqs = self.input_batch.num_reqs
        shifts = np.array([self.guikv_shift.get(r, 0) for r in self.input_batch.req_ids[:num_reqs]], np.int64)
        if not shifts.any():
            return
        total = int(num_scheduled_tokens.sum())
        per_token = torch.from_numpy(np.repeat(shifts, num_scheduled_tokens))
        physical = self.positions[:total] - per_token.to(self.positions.dtype)
        shift_tensor = torch.from_numpy(shifts)
        self.seq_lens[:num_reqs] -= shift_tensor.to(self.seq_lens.dtype)
        self.optimistic_seq_lens_cpu[:num_reqs] -= shift_tensor.to(self.optimistic_seq_lens_cpu.dtype)
        self.input_batch.block_table.compute_slot_mapping(
            num_reqs, self.query_start_loc.gpu[: num_reqs + 1], physical
        )

    def _keep_attention_input(self, index: int) -> Any:
        """A pre-hook on layer `index`'s attention module keeping its input (GUI-KV's saliency)
        while a step compresses a request."""

        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            if self.guikv_steps:
                self.guikv_hidden[index] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[1]

        return hook

    def _compress_layer(self, layer: DecoderAttention) -> Any:
        """A hook on layer `layer`'s vLLM attention: after it ran (the prompt's keys and values are
        in the cache and attended), select each planned request's kept positions and write them
        into its first C slots."""

        def hook(module: Attention, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> None:
            if not self.guikv_steps:
                return
            queries, keys, values = args[:3]
            head_dim = module.head_size
            for step in self.guikv_steps:
                started = time.perf_counter()
                rows = slice(step.start, step.end)
                if step.first_chosen is not None:
                    keep = step.first_chosen[layer.index].to(device=keys.device, dtype=torch.long)
                    length, generated = step.plan.length, step.plan.generated
                    output[step.start + length : step.end] = generated_attention(
                        queries[rows], keys[rows], values[rows], keep, length, head_dim, module.impl.scale
                    )
                    entries = kept_entries(keep, length, generated)
                    compact(module.kv_cache, keys[rows], values[rows], entries, step.block_ids, module.isa)
                    step.record.seconds += time.perf_counter() - started
                    continue
                context = request_context(
                    step.method,
                    queries=queries,
                    keys=keys,
                    hidden_states=self.guikv_hidden[layer.index],
                    start=step.start,
                    end=step.end,
                    head_dim=head_dim,
                    layout=step.layout,
                    capacity=step.plan.kept,
                    layer_idx=layer.index,
                    num_layers=len(self.guikv_layers),
                    scaling=module.impl.scale,
                )
                keep = step.method.select(context)[0]
                if keep.shape[-1] != step.plan.kept:
                    raise RuntimeError(
                        f"guikv: method {step.method.name!r} kept {keep.shape[-1]} positions in layer "
                        f"{layer.index}, the plan says {step.plan.kept}"
                    )
                compact(module.kv_cache, keys[rows], values[rows], keep, step.block_ids, module.isa)
                step.chosen.append(keep.to(device="cpu", dtype=torch.int32))
                if self.guikv_settings.record_positions:
                    step.record.positions.append(keep.cpu())
                step.record.seconds += time.perf_counter() - started

        return hook

    def _finish_request(self, step: RequestStep) -> None:
        """After the forward: keep only the leading blocks in the request's block table (the
        scheduler frees the rest), remember its shift and, after a first prefill, the positions its
        prompt kept (a re-prefill after a preemption keeps them again)."""
        request_id = step.record.request_id
        keep_blocks = step.plan.kept_blocks(self.input_batch.block_table[0].block_size)
        table = self.input_batch.block_table[0]
        row = self.input_batch.req_id_to_index[request_id]
        table.block_table.np[row, keep_blocks : table.num_blocks_per_row[row]] = 0
        table.num_blocks_per_row[row] = keep_blocks
        del self.requests[request_id].block_ids[0][keep_blocks:]
        self.guikv_shift[request_id] = step.plan.evicted
        if step.method is not None:
            state = self.requests[request_id]
            self.guikv_first_cuts[request_id] = FirstCut(state, step.plan.length, torch.stack(step.chosen))
        self.guikv_totals["seconds"] += step.record.seconds
        self.guikv_records.append(step.record)

    def _count(self, record: CompressionRecord) -> None:
        """Count a planned prefill: a re-prefill after a preemption only as `resumed`."""
        totals = self.guikv_totals
        if record.generated:
            totals["resumed"] += 1
            return
        totals["requests"] += 1
        totals["compressed"] += record.left_whole is None
        totals["prompt_tokens"] += record.prompt_tokens
        totals["kept_tokens"] += record.kept

    def guikv_report(self, clear: bool = False) -> dict[str, Any]:
        """Totals and the recent per-request records (for `collective_rpc` and tests); `clear`
        empties the records after reading them."""
        records = [asdict(record) for record in self.guikv_records]
        if clear:
            self.guikv_records.clear()
        return {"totals": dict(self.guikv_totals), "records": records}


class CompressingCPUWorker(CPUWorker):
    """vLLM's CPU worker whose model runner compresses every prompt after prefill (the settings
    come from `additional_config["guikv"]`)."""

    def init_device(self) -> None:
        """Build vLLM's CPU runner, then make it a compressing one."""
        super().init_device()
        settings = settings_from_additional_config(self.vllm_config.additional_config)
        if settings is None:
            raise ValueError("CompressingCPUWorker needs additional_config.guikv: none was given")
        if type(self.model_runner) is not CPUModelRunner:
            raise refused(
                f"the plugin needs vLLM's V1 CPUModelRunner, got {type(self.model_runner).__name__}: "
                "unset VLLM_USE_V2_MODEL_RUNNER"
            )
        self.model_runner.__class__ = CompressingCPUModelRunner
        self.model_runner.adopt(settings)
