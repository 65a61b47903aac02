"""Observation-window attention, recomputed from a layer's own inputs.

The prefill kernel (sdpa, eager or flash-attention) never has to return attention weights: the
few queries at the end of the prompt are rebuilt from the attention module's input with the
model's own projection and rotary embedding, and their attention over the cached keys is computed
here in chunks. Methods and the sparsity analysis share this one path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import nn

RotaryFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]

DEFAULT_CHUNK_ELEMENTS = 1 << 25
"""Attention probabilities materialised at once (128 MiB in fp32), bounding scoring memory."""


def rotary_function(attention: nn.Module) -> RotaryFn:
    """The rotary function the attention module's own modeling file applies to its queries.

    From transformers 5.x's later releases every Qwen attention calls `apply_rotary_pos_emb` with
    (cos, sin) already combined over M-RoPE sections; earlier 5.x Qwen2-VL/Qwen2.5-VL modules call
    `apply_multimodal_rotary_pos_emb(q, k, cos, sin, mrope_section)` instead.
    """
    module = sys.modules[type(attention).__module__]
    multimodal = getattr(module, "apply_multimodal_rotary_pos_emb", None)
    rope = getattr(getattr(attention, "config", None), "rope_parameters", None) or {}
    if multimodal is not None and "mrope_section" in rope:
        return partial(_multimodal_rotary, multimodal, rope["mrope_section"])
    rotary = getattr(module, "apply_rotary_pos_emb", None)
    if rotary is None:
        raise ValueError(
            f"{type(attention).__name__} has no apply_rotary_pos_emb in its module: "
            "expected a Qwen2/Qwen2.5-VL/Qwen3 style attention module"
        )
    return rotary


def _multimodal_rotary(
    function: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    section: list[int],
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`apply_multimodal_rotary_pos_emb` with the module's M-RoPE section bound."""
    return function(q, k, cos, sin, section)


def check_attention_module(attention: nn.Module) -> None:
    """Refuse, with one line, an attention module whose window queries cannot be rebuilt: no
    `q_proj`, no `head_dim`, no rotary function, or a query norm of an unknown shape."""
    name = type(attention).__name__
    for attribute in ("q_proj", "head_dim"):
        if not hasattr(attention, attribute):
            raise ValueError(
                f"{name} has no {attribute}: expected a Qwen2/Qwen2.5-VL/Qwen3 style attention module"
            )
    rotary_function(attention)
    norm = getattr(attention, "q_norm", None)
    if norm is not None and _norm_width(norm) not in (attention.head_dim, attention.q_proj.out_features):
        raise ValueError(
            f"{name}.q_norm normalises {_norm_width(norm)} features: expected head_dim {attention.head_dim} "
            f"(per head, as Qwen3) or {attention.q_proj.out_features} (the whole projection)"
        )


def _norm_width(norm: nn.Module) -> int | None:
    """How many features a norm module normalises (its weight's length), or None."""
    weight = getattr(norm, "weight", None)
    return int(weight.shape[-1]) if isinstance(weight, torch.Tensor) else None


def project_queries(attention: nn.Module, states: torch.Tensor) -> torch.Tensor:
    """Queries before RoPE for `states` [B, n, D]: `q_proj`, then the module's own `q_norm` when it
    has one (per head, as Qwen3, or over the whole projection): [B, H, n, head_dim]."""
    batch, rows = states.shape[:2]
    head_dim = attention.head_dim
    projected = attention.q_proj(states)
    norm = getattr(attention, "q_norm", None)
    if norm is not None and _norm_width(norm) != head_dim:
        projected = norm(projected)
    queries = projected.view(batch, rows, -1, head_dim)
    if norm is not None and _norm_width(norm) == head_dim:
        queries = norm(queries)
    return queries.transpose(1, 2)


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
    queries = project_queries(attention, hidden_states[:, -window:])
    cos, sin = position_embeddings
    rotated, _ = rotary_function(attention)(queries, queries, cos[..., -window:, :], sin[..., -window:, :])
    return rotated


def window_output(
    attention: nn.Module, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """The attention module's output for the window rows, recomputed from rebuilt `queries`
    [B, H, w, d] over the cached `keys`/`values` [B, H_kv, L, d]: `o_proj` of causal softmax
    attention, [B, w, hidden]."""
    batch, heads, window, dim = queries.shape
    group = heads // keys.shape[1]
    grouped_values = values.float().repeat_interleave(group, dim=1)
    rows = [
        probs @ grouped_values
        for _, probs in iter_window_probs(queries, keys, getattr(attention, "scaling", None))
    ]
    mixed = torch.cat(rows, dim=2).transpose(1, 2).reshape(batch, window, heads * dim)
    return attention.o_proj(mixed.to(attention.o_proj.weight.dtype))


def verify_window_queries(
    attention: nn.Module,
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    output: torch.Tensor,
) -> None:
    """Raise `RuntimeError` unless attention recomputed from the rebuilt window queries reproduces
    the kernel's own output `output` [B, n, hidden] on the last min(w, n) prompt rows.

    A mismatch means the queries guikv scores with are not the ones the model used (a query norm,
    rotary function, scaling or mask it does not know), so every score would be wrong.
    """
    rows = min(queries.shape[2], output.shape[1])
    rebuilt = window_output(attention, queries, keys, values)[:, -rows:].float()
    kernel = output[:, -rows:].float()
    tolerance = 1e-3 if output.dtype == torch.float32 else 3e-2
    error = float((rebuilt - kernel).abs().max() / (kernel.abs().max() + 1e-6))
    if not error <= tolerance:
        raise RuntimeError(
            f"{type(attention).__name__}: attention recomputed from guikv's rebuilt window queries differs "
            f"from the kernel's output by {error:.2e} (relative; tolerance {tolerance:.0e}): this model's "
            "queries, rotary embedding, scaling or mask are not what guikv rebuilds, so its scores "
            "would be wrong"
        )


def iter_window_probs(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scaling: float | None = None,
    max_elements: int = DEFAULT_CHUNK_ELEMENTS,
    present: torch.Tensor | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Causal softmax attention of the last `w` prompt positions over all `L` keys, in row chunks.

    `queries` [B, H, w, d] sit at positions L-w..L-1; `keys` [B, H_kv, L, d] may have fewer heads
    (query head h reads KV head h // (H / H_kv)); `present` [B, H_kv, L] (None: all) hides the
    keys a KV head does not hold. Yields (first window row, probabilities [B, H, rows, L] in
    fp32); entries a query cannot see are exactly 0.
    """
    batch, heads, window, dim = queries.shape
    kv_heads, length = keys.shape[1], keys.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} KV heads")
    group = heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    keys_t = keys.float().transpose(2, 3)
    absent = None if present is None else ~present.repeat_interleave(group, dim=1)[:, :, None, :]
    rows_per_chunk = max(1, max_elements // max(1, batch * heads * length))
    for start in range(0, window, rows_per_chunk):
        rows = min(rows_per_chunk, window - start)
        chunk = queries[:, :, start : start + rows].float().reshape(batch, kv_heads, group * rows, dim)
        logits = (chunk @ keys_t).reshape(batch, heads, rows, length) * scale
        positions = torch.arange(length - window + start, length - window + start + rows, device=keys.device)
        hidden = torch.arange(length, device=keys.device)[None, :] > positions[:, None]
        logits.masked_fill_(hidden, float("-inf"))
        if absent is not None:
            logits.masked_fill_(absent, float("-inf"))
        yield start, torch.softmax(logits, dim=-1)


def window_attention_mass(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scaling: float | None = None,
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention each key receives, summed over the window queries: [B, H, L] in fp32 (0 on
    keys absent from their head, see `iter_window_probs`)."""
    batch, heads = queries.shape[:2]
    mass = torch.zeros(batch, heads, keys.shape[2], dtype=torch.float32, device=keys.device)
    for _, probs in iter_window_probs(queries, keys, scaling, present=present):
        mass += probs.sum(dim=2)
    return mass


def window_sparsity(
    queries: torch.Tensor,
    keys: torch.Tensor,
    threshold: float,
    scaling: float | None = None,
    present: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VL-Cache's per-head sparsity of the window rows, and the attention mass per key.

    Sparsity is the share of causally visible (query, key) entries whose weight is at most
    `threshold`: [B, H]. The mass is `window_attention_mass` computed in the same pass: [B, H, L].
    Keys absent from their head (`present`) are neither visible nor counted.
    """
    batch, heads, window, _ = queries.shape
    length = keys.shape[2]
    mass = torch.zeros(batch, heads, length, dtype=torch.float32, device=keys.device)
    above = torch.zeros(batch, heads, dtype=torch.float64, device=keys.device)
    for _, probs in iter_window_probs(queries, keys, scaling, present=present):
        mass += probs.sum(dim=2)
        above += (probs > threshold).sum(dim=(2, 3)).double()
    if present is None:
        prefix = torch.full((batch, heads), float(length - window), dtype=torch.float64, device=keys.device)
    else:
        held = present[..., : length - window].sum(dim=-1).double()
        prefix = held.repeat_interleave(heads // present.shape[1], dim=1)
    visible = window * prefix + window * (window + 1) / 2
    return (1.0 - above / visible).float(), mass
