"""A preempted request's re-prefill, made to continue from the cache the request had.

vLLM preempts by recompute: the request's blocks are freed, and later its prompt and every token
it generated are prefilled again in one step, with full causal attention. Before the preemption
the request decoded from its compressed cache: each generated token attended to the prompt's
kept entries (per layer and KV head, as first chosen) and the generated tokens before it. The
re-prefill must give the same cache, or the answer depends on server load. So, per layer:

- the prompt's rows are what they were at the first prefill (causal attention: they never see
  the generated tokens), and the positions kept are the ones first chosen (stored per request,
  never re-scored with the longer sequence's capacity);
- the generated rows' attention output is recomputed over the kept prompt entries plus the
  generated entries (`generated_attention`), replacing the full-prompt attention vLLM's kernel
  gave them, so the next layer's keys and values of those rows are the ones decoding produced;
- the cache keeps `kept_entries`: the kept prompt positions, then every generated position.

Pure torch (no vLLM), tested in the main venv.
"""

from __future__ import annotations

import torch


def kept_entries(keep: torch.Tensor, prompt_length: int, generated: int) -> torch.Tensor:
    """The positions a resumed request's cache holds per KV head, in slot order: the prompt's kept
    positions `keep` `[H_kv, C]`, then the generated positions `L .. L+g-1` -> `[H_kv, C+g]`."""
    tail = torch.arange(prompt_length, prompt_length + generated, dtype=keep.dtype, device=keep.device)
    return torch.cat([keep, tail.expand(keep.shape[0], generated)], dim=1)


def generated_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    keep: torch.Tensor,
    prompt_length: int,
    head_dim: int,
    scale: float,
) -> torch.Tensor:
    """The attention output of a resumed request's generated rows as decoding computed it: one
    request's `queries` `[L+g, H*d]`, `keys` and `values` `[L+g, H_kv*d]` (rows of one layer, after
    RoPE), the prompt's kept positions `keep` `[H_kv, C]`. Generated row i attends to its KV head's
    C kept prompt entries and generated entries 0..i (query head q reads KV head q // (H / H_kv),
    vLLM's grouping). Returns `[g, H*d]` in the queries' dtype; computed in float32."""
    total = keys.shape[0]
    generated = total - prompt_length
    kv_heads, kept = keep.shape
    entries = kept_entries(keep, prompt_length, generated)
    heads = torch.arange(kv_heads, device=keep.device)[:, None]
    entry_keys = keys.reshape(total, kv_heads, head_dim)[entries, heads].float()
    entry_values = values.reshape(total, kv_heads, -1)[entries, heads].float()
    grouped = queries[prompt_length:].reshape(generated, kv_heads, -1, head_dim).permute(1, 2, 0, 3)
    scores = grouped.float() @ entry_keys[:, None].transpose(-1, -2) * scale
    rows = torch.arange(generated, device=keep.device)[:, None]
    columns = torch.arange(kept + generated, device=keep.device)[None, :]
    scores = scores.masked_fill(columns > kept + rows, float("-inf"))
    output = torch.softmax(scores, dim=-1) @ entry_values[:, None]
    return output.permute(2, 0, 1, 3).reshape(generated, -1).to(queries.dtype)
