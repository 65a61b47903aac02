"""How many agent prompts fit in one GPU's memory at each KV budget: the analytic bound that turns
the KV memory compression frees into batch size.

Arithmetic only, from a `ModelShape` and stated assumptions (`GpuMemory`): the memory left after
the weights, a headroom for activations and the prefill of the prompt being admitted (its whole
uncompressed cache, before its cut) is divided by one sequence's KV cache: its kept prompt tokens
(`guikv.config.uniform_capacity` per layer, the compressor's capacity rule) plus the tokens it
generates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from guikv.agents.resize import IMAGE_FACTOR, model_image_size
from guikv.config import uniform_capacity
from guikv.flops import ModelShape, kv_cache_bytes

GIB = 2**30

UI_TARS_15_7B = ModelShape(
    num_layers=28,
    hidden_size=3584,
    num_heads=28,
    num_kv_heads=4,
    head_dim=128,
    intermediate_size=18944,
    vocab_size=152064,
)
"""UI-TARS-1.5-7B's language model (Qwen2.5-VL-7B's: its config.json's text dimensions)."""

QWEN25_VL_7B_VISION_PARAMETERS = 676_550_144
"""Qwen2.5-VL-7B's vision tower and merger (depth 32, hidden 1280, MLP 3420, merger 5120 -> 3584),
which stays resident beside the language model: 32 blocks x 19,702,200 + patch embedding 1,505,280
+ merger 44,574,464 (with the language model, 8.29 B parameters in all, as the checkpoint says)."""

IMAGE_MARKERS = 2
"""Tokens around each image in a Qwen2.5-VL prompt: <|vision_start|> and <|vision_end|>."""


def language_model_parameters(
    shape: ModelShape, *, attention_bias: bool = True, tied_embeddings: bool = False
) -> int:
    """Parameters of a Qwen2-style decoder: per layer the q/k/v (with biases when `attention_bias`)
    and o projections, the gated MLP and two RMSNorms; the embeddings, the final norm and the LM
    head (shared with the embeddings when `tied_embeddings`)."""
    d, q, kv = shape.hidden_size, shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    attention = d * q + 2 * d * kv + q * d + ((q + 2 * kv) if attention_bias else 0)
    layer = attention + 3 * d * shape.intermediate_size + 2 * d
    embeddings = shape.vocab_size * d * (1 if tied_embeddings else 2)
    return shape.num_layers * layer + embeddings + d


def screenshot_tokens(width: int, height: int) -> int:
    """Prompt tokens of one screenshot: the processor resizes it (`model_image_size`) and merges
    2 x 2 patches of 14 pixels into one token, i.e. one token per 28 x 28 pixels, plus the image's
    start and end markers."""
    resized_width, resized_height = model_image_size(width, height)
    return (resized_width // IMAGE_FACTOR) * (resized_height // IMAGE_FACTOR) + IMAGE_MARKERS


@dataclass(frozen=True)
class GpuMemory:
    """What one GPU's memory holds besides the batch's KV cache.

    `usable_fraction` of `total_bytes` is for the model (the rest: CUDA context, library
    workspaces, allocator fragmentation; vLLM's default `gpu_memory_utilization` is 0.9);
    `weights_bytes` stay resident; `activation_bytes` is the headroom for one prompt's prefill
    activations and scoring buffers (prompts are admitted one at a time and decoded together).
    """

    total_bytes: int
    usable_fraction: float
    weights_bytes: int
    activation_bytes: int

    @property
    def usable_bytes(self) -> int:
        """Bytes the model may use."""
        return int(self.total_bytes * self.usable_fraction)


@dataclass(frozen=True)
class CapacityRow:
    """One budget's row: tokens one sequence keeps, its KV bytes, and the largest batch that fits."""

    budget: float
    kept_tokens: int
    sequence_kv_bytes: int
    largest_batch: int


def sequence_kv_bytes(
    shape: ModelShape, prompt_tokens: int, budget: float, new_tokens: int, dtype: torch.dtype
) -> int:
    """KV bytes of one sequence at `budget` percent: its kept prompt tokens plus `new_tokens`
    generated, in every layer."""
    return kv_cache_bytes(
        shape, [uniform_capacity(prompt_tokens, budget) + new_tokens] * shape.num_layers, dtype
    )


def kv_memory_bytes(memory: GpuMemory, shape: ModelShape, prompt_tokens: int, dtype: torch.dtype) -> int:
    """Bytes left for the batch's KV cache: usable memory minus weights, the activation headroom
    and the uncompressed cache of the prompt being prefilled (it exists whole until its cut)."""
    transient = kv_cache_bytes(shape, [prompt_tokens] * shape.num_layers, dtype)
    return memory.usable_bytes - memory.weights_bytes - memory.activation_bytes - transient


def capacity_table(
    memory: GpuMemory,
    shape: ModelShape,
    prompt_tokens: int,
    budgets: Sequence[float],
    new_tokens: int,
    dtype: torch.dtype = torch.bfloat16,
) -> list[CapacityRow]:
    """The largest batch of `prompt_tokens`-token prompts generating `new_tokens` each that fits at
    each budget (100 = the full cache). Raises `ValueError` when the weights and headroom alone
    do not fit."""
    free = kv_memory_bytes(memory, shape, prompt_tokens, dtype)
    if free <= 0:
        raise ValueError(
            f"no memory left for the KV cache: {memory.usable_bytes / GIB:.1f} GiB usable cannot hold "
            f"the weights ({memory.weights_bytes / GIB:.1f} GiB), the activation headroom "
            f"({memory.activation_bytes / GIB:.1f} GiB) and one prompt's prefill"
        )
    rows = []
    for budget in budgets:
        per_sequence = sequence_kv_bytes(shape, prompt_tokens, budget, new_tokens, dtype)
        rows.append(
            CapacityRow(budget, uniform_capacity(prompt_tokens, budget), per_sequence, free // per_sequence)
        )
    return rows
