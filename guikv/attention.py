"""Observation-window attention, recomputed from a layer's own inputs.

The prefill kernel (sdpa, eager or flash-attention) never has to return attention weights: the
few queries at the end of the prompt are rebuilt from the attention module's input with the
model's own projection and rotary embedding, and their attention over the cached keys is computed
here in chunks. Methods and the sparsity analysis share this one path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import torch
from torch import nn

RotaryFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]

DEFAULT_CHUNK_ELEMENTS = 1 << 25
"""Attention probabilities materialised at once (128 MiB in fp32), bounding scoring memory."""


def rotary_function(attention: nn.Module) -> RotaryFn:
    """The `apply_rotary_pos_emb` that the attention module's own modeling file uses."""
    rotary = getattr(sys.modules[type(attention).__module__], "apply_rotary_pos_emb", None)
    if rotary is None:
        raise ValueError(
            f"{type(attention).__name__} has no apply_rotary_pos_emb in its module: "
            "expected a Qwen2/Qwen2.5-VL style attention module"
        )
    return rotary


def window_queries(
    attention: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    window: int,
) -> torch.Tensor:
    """The last `window` queries of a layer, after RoPE: [B, H, window, head_dim].

    `hidden_states` is the attention module's input and `position_embeddings` the (cos, sin)
    pair it received, so the queries equal the ones the prefill kernel used.
    """
    batch = hidden_states.shape[0]
    head_dim = attention.head_dim
    states = hidden_states[:, -window:]
    queries = attention.q_proj(states).view(batch, window, -1, head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    rotated, _ = rotary_function(attention)(queries, queries, cos[..., -window:, :], sin[..., -window:, :])
    return rotated


def iter_window_probs(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scaling: float | None = None,
    max_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Causal softmax attention of the last `w` prompt positions over all `L` keys, in row chunks.

    `queries` [B, H, w, d] sit at positions L-w..L-1; `keys` [B, H_kv, L, d] may have fewer heads
    (query head h reads KV head h // (H / H_kv)). Yields (first window row, probabilities
    [B, H, rows, L] in fp32); entries a query cannot see are exactly 0.
    """
    batch, heads, window, dim = queries.shape
    kv_heads, length = keys.shape[1], keys.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} KV heads")
    group = heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    keys_t = keys.float().transpose(2, 3)
    rows_per_chunk = max(1, max_elements // max(1, batch * heads * length))
    for start in range(0, window, rows_per_chunk):
        rows = min(rows_per_chunk, window - start)
        chunk = queries[:, :, start : start + rows].float().reshape(batch, kv_heads, group * rows, dim)
        logits = (chunk @ keys_t).reshape(batch, heads, rows, length) * scale
        positions = torch.arange(length - window + start, length - window + start + rows, device=keys.device)
        hidden = torch.arange(length, device=keys.device)[None, :] > positions[:, None]
        logits.masked_fill_(hidden, float("-inf"))
        yield start, torch.softmax(logits, dim=-1)


def window_attention_mass(
    queries: torch.Tensor, keys: torch.Tensor, scaling: float | None = None
) -> torch.Tensor:
    """The attention each key receives, summed over the window queries: [B, H, L] in fp32."""
    batch, heads = queries.shape[:2]
    mass = torch.zeros(batch, heads, keys.shape[2], dtype=torch.float32, device=keys.device)
    for _, probs in iter_window_probs(queries, keys, scaling):
        mass += probs.sum(dim=2)
    return mass


def window_sparsity(
    queries: torch.Tensor, keys: torch.Tensor, threshold: float, scaling: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """VL-Cache's per-head sparsity of the window rows, and the attention mass per key.

    Sparsity is the share of causally visible (query, key) entries whose weight is at most
    `threshold`: [B, H]. The mass is `window_attention_mass` computed in the same pass: [B, H, L].
    """
    batch, heads, window, _ = queries.shape
    length = keys.shape[2]
    mass = torch.zeros(batch, heads, length, dtype=torch.float32, device=keys.device)
    above = torch.zeros(batch, heads, dtype=torch.float64, device=keys.device)
    for _, probs in iter_window_probs(queries, keys, scaling):
        mass += probs.sum(dim=2)
        above += (probs > threshold).sum(dim=(2, 3)).double()
    visible = window * (length - window) + window * (window + 1) / 2
    return (1.0 - above / visible).float(), mass
