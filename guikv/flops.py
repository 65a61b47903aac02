"""Analytic FLOPs and KV bytes of prefill and decode, from a model config.

Counted like `torch.utils.flop_counter`: 2 FLOPs per multiply-add of every matrix product
(projections, MLP, attention scores and values, the LM head), dense attention (kernels that skip
the causal upper triangle do up to half of the prefill attention), no element-wise work. Decode
FLOPs are where compression pays: every generated token attends over the kept cache instead of the
whole prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from transformers import PretrainedConfig

from guikv.cache import kv_bytes


@dataclass(frozen=True)
class ModelShape:
    """The language model's dimensions that FLOPs and KV bytes depend on."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> ModelShape:
        """Read the shape from a model config (the nested text config of a VLM)."""
        text = getattr(config, "text_config", None) or config
        heads = text.num_attention_heads
        return cls(
            num_layers=text.num_hidden_layers,
            hidden_size=text.hidden_size,
            num_heads=heads,
            num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            intermediate_size=text.intermediate_size,
            vocab_size=text.vocab_size,
        )

    def linear_flops_per_token(self) -> int:
        """One layer's projection and MLP FLOPs for one token (q, k, v, o; gate, up, down)."""
        d, h, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return 2 * (d * h + 2 * d * kv + h * d + 3 * d * self.intermediate_size)

    def attention_flops(self, queries: int, keys: int) -> int:
        """One layer's attention FLOPs (scores and weighted values) for `queries` x `keys`."""
        return 4 * self.num_heads * self.head_dim * queries * keys

    def lm_head_flops(self, tokens: int = 1) -> int:
        """FLOPs of the output projection for `tokens` positions."""
        return 2 * self.hidden_size * self.vocab_size * tokens


@dataclass(frozen=True)
class Flops:
    """A FLOP count and the part of it spent in attention."""

    total: int
    attention: int

    def saved_vs(self, reference: Flops) -> tuple[float, float]:
        """Percent of (total, attention) FLOPs saved against a reference count."""
        return (
            100.0 * (1 - self.total / reference.total),
            100.0 * (1 - self.attention / reference.attention) if reference.attention else 0.0,
        )


def prefill_flops(shape: ModelShape, prompt_tokens: int, logits_tokens: int = 1) -> Flops:
    """The language model's prefill over `prompt_tokens` (logits for the last `logits_tokens`)."""
    attention = shape.num_layers * shape.attention_flops(prompt_tokens, prompt_tokens)
    linear = shape.num_layers * prompt_tokens * shape.linear_flops_per_token()
    return Flops(total=linear + attention + shape.lm_head_flops(logits_tokens), attention=attention)


def decode_flops(shape: ModelShape, kept_per_layer: Sequence[int], decode_steps: int) -> Flops:
    """`decode_steps` one-token forwards after a prefill that left `kept_per_layer` cached tokens.

    Step t (from 0) attends over `kept + t + 1` keys in every layer. `generate(max_new_tokens=N)`
    makes N - 1 such steps (its first token comes from the prefill).
    """
    if len(kept_per_layer) != shape.num_layers:
        raise ValueError(
            f"kept_per_layer has {len(kept_per_layer)} entries: expected {shape.num_layers} layers"
        )
    steps = decode_steps
    growth = steps * (steps + 1) // 2
    attention = sum(shape.attention_flops(1, 1) * (steps * kept + growth) for kept in kept_per_layer)
    linear = steps * shape.num_layers * shape.linear_flops_per_token()
    return Flops(total=linear + attention + shape.lm_head_flops(steps), attention=attention)


def kv_cache_bytes(shape: ModelShape, tokens_per_layer: Sequence[int], dtype: torch.dtype) -> int:
    """Bytes of the KV cache holding `tokens_per_layer` positions in each layer."""
    return sum(kv_bytes(tokens, shape.num_kv_heads, shape.head_dim, dtype) for tokens in tokens_per_layer)


def _cpu_sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """A `FlopCounterMode` that also knows the CPU flash-attention kernel torch's counter misses,
    so sdpa is counted on the CPU as on the GPU."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run `fn()` under `flop_counter()` and return (FLOPs, its result)."""
    with flop_counter() as counter:
        result = fn()
    return int(counter.get_total_flops()), result
