"""From vLLM's flat per-step tensors to the `LayerContext` every `guikv.methods` method scores.

vLLM packs the tokens of all requests of a step along one axis: queries `[N, H*d]` and keys
`[N, H_kv*d]` after RoPE (what its attention layer receives), and the attention module's input
`[N, D]`. One request owns the rows `[start, end)`. These functions cut its rows into the
transformers-shaped tensors the methods read (`[1, H, w, d]`, `[1, H_kv, L, d]`, `[1, L, D]`) and
gather the kept entries back into vLLM's `[C, H_kv, d]` write order. Pure torch.
"""

from __future__ import annotations

import torch

from guikv.layout import TokenLayout
from guikv.methods.base import LayerContext, Method


def request_context(
    method: Method,
    *,
    queries: torch.Tensor,
    keys: torch.Tensor,
    hidden_states: torch.Tensor,
    start: int,
    end: int,
    head_dim: int,
    layout: TokenLayout,
    capacity: int,
    layer_idx: int,
    num_layers: int,
    scaling: float,
) -> LayerContext:
    """The `LayerContext` of the request owning rows `[start, end)` of a step's flat `queries`
    `[N, H*d]`, `keys` `[N, H_kv*d]` and `hidden_states` `[N, D]`: its last `window` queries, all
    its keys, its attention input."""
    length = end - start
    if layout.length != length:
        raise ValueError(f"layout of {layout.length} tokens for a request of {length} rows")
    request_keys = keys[start:end].reshape(length, -1, head_dim).permute(1, 0, 2).unsqueeze(0)
    window_queries = None
    if method.needs_queries:
        window = method.window(layout)
        window_queries = (
            queries[end - window : end].reshape(window, -1, head_dim).transpose(0, 1).unsqueeze(0)
        )
    return LayerContext(
        keys=request_keys,
        layout=layout,
        capacity=capacity,
        layer_idx=layer_idx,
        num_layers=num_layers,
        queries=window_queries,
        hidden_states=hidden_states[start:end].unsqueeze(0),
        scaling=scaling,
    )


def gather_kept(rows: torch.Tensor, keep: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Kept entries in vLLM's write order: `rows` `[L, H_kv*d]` (one request's keys or values),
    `keep` `[H_kv, C]` kept positions per KV head -> `[C, H_kv, d]`, where entry `[j, h]` is position
    `keep[h, j]` of head h (each head keeps its own positions in the same C slots)."""
    per_head = rows.reshape(rows.shape[0], -1, head_dim)
    heads = torch.arange(per_head.shape[1], device=rows.device)
    return per_head[keep.t(), heads[None, :]]
