"""One agent step: chat messages in, generated text out, with compression and its costs measured.

`infer`, `eval` and `compare` all go through `run_step`, so every number they print (prompt and
kept tokens, KV bytes, decode FLOPs, prefill and decode time) is measured the same way.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from guikv.compressor import compress
from guikv.config import CompressionConfig
from guikv.flops import Flops, ModelShape, decode_flops
from guikv.layout import TokenLayout
from guikv.models.adapters import adapter_for
from guikv.models.inputs import Message
from guikv.recall import OracleMassProbe


@dataclass
class StepResult:
    """The outcome and the costs of one `generate()` call under a compression config."""

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

    @property
    def decode_ms_per_token(self) -> float:
        """Mean time of one decode forward, in milliseconds (0 when only one token was generated)."""
        steps = self.generated_tokens - 1
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


def run_step(
    model: nn.Module,
    processor: Any,
    messages: Sequence[Message],
    config: CompressionConfig,
    *,
    max_new_tokens: int = 256,
    record_positions: bool = False,
    keep_first_decode_logits: bool = False,
    oracle_mass: bool = False,
    method_state: Any = None,
) -> StepResult:
    """Generate greedily for one agent step under `config` and measure what it kept and cost.

    With `oracle_mass=True` (on a full cache) the result also carries the decode steps' attention
    mass on each prompt position, [layers, H_kv, L] (`guikv.recall`); the probe's work then counts
    in the decode times, so time steps without it.

    A stateful method (STaR-KV) continues `method_state` (an earlier step's `result.method_state`)
    when given, else starts empty; the result's `method_state` is the state after this step, to pass
    to the next step of the same trajectory.
    """
    adapter = adapter_for(model)
    inputs = adapter.build_inputs(processor, messages).to(model.device)
    clock = _ForwardClock(model.device)
    handle = model.register_forward_hook(clock, with_kwargs=True)
    probe = OracleMassProbe(len(adapter.attention_modules(model))) if oracle_mass else None
    probe_handles = probe.attach(adapter.attention_modules(model)) if probe is not None else []
    try:
        with (
            torch.no_grad(),
            compress(model, config, record_positions=record_positions, method_state=method_state) as report,
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
    prompt_tokens = report.prompt_tokens
    generated = out.sequences[0, inputs["input_ids"].shape[1] :]
    shape = ModelShape.from_config(model.config)
    steps = max(0, generated.numel() - 1)
    grids = inputs.get("image_grid_thw", inputs.get("grid_thws"))
    merge = getattr(getattr(processor, "image_processor", None), "merge_size", 1)
    return StepResult(
        text=processor.batch_decode(generated[None], skip_special_tokens=True)[0],
        prompt_tokens=prompt_tokens,
        generated_tokens=int(generated.numel()),
        kept_per_layer=list(report.kept_per_layer),
        kv_bytes_full=report.kv_bytes_full,
        kv_bytes_kept=report.kv_bytes_kept,
        decode_flops_full=decode_flops(shape, [prompt_tokens] * shape.num_layers, steps),
        decode_flops_kept=decode_flops(shape, report.kept_per_layer, steps),
        prefill_seconds=clock.ends[0] - start,
        decode_seconds=clock.ends[-1] - clock.ends[0],
        decode_step_seconds=[end - previous for previous, end in itertools.pairwise(clock.ends)],
        scoring_seconds=report.scoring_seconds,
        layout=report.layout or TokenLayout(prompt_tokens, ()),
        image_grids=[(t, h // merge, w // merge) for t, h, w in grids.tolist()] if grids is not None else [],
        kept_positions=list(report.kept_positions),
        generated_ids=generated.tolist(),
        first_decode_logits=(
            out.logits[1][0].float().cpu() if keep_first_decode_logits and len(out.logits) > 1 else None
        ),
        oracle_mass=probe.mass() if probe is not None else None,
        method_state=report.method_state,
    )
