"""Compacting one request's kept entries into its leading cache slots, with vLLM's own write op.

The kept position `keep[h, j]` of KV head h goes to physical slot j of the request (every head
keeps the same count C, each its own positions), so the first `ceil(C / block_size)` blocks hold
the whole compressed prompt and the rest can be freed. Writing through vLLM's
`cpu_attn_reshape_and_cache` keeps the kernel's in-block layout whatever it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from vllm import _custom_ops as ops

from guikv.vllm.bridge import gather_kept
from guikv.vllm.plan import physical_slots


def split_cache(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The key and value views of one layer's CPU cache `[blocks, H_kv, block_size, 2*d]`, as
    vLLM's CPU attention splits it."""
    blocks, kv_heads, block_size, fused = kv_cache.shape
    key_cache, value_cache = kv_cache.view(blocks, kv_heads, 2 * block_size, fused // 2).chunk(2, dim=2)
    return key_cache, value_cache


def compact(
    kv_cache: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    keep: torch.Tensor,
    block_ids: Sequence[int],
    isa: str,
) -> None:
    """Write a request's kept entries into its first C slots: `keys`/`values` `[L, H_kv*d]` are the
    request's prompt rows (as vLLM's attention layer received them), `keep` `[H_kv, C]` the kept
    positions per KV head, `block_ids` the request's block table, `isa` the kernel variant."""
    block_size, head_dim = kv_cache.shape[2], kv_cache.shape[3] // 2
    key_cache, value_cache = split_cache(kv_cache)
    slots = physical_slots(block_ids, int(keep.shape[-1]), block_size)
    ops.cpu_attn_reshape_and_cache(
        gather_kept(keys, keep, head_dim).contiguous(),
        gather_kept(values, keep, head_dim).contiguous(),
        key_cache,
        value_cache,
        slots,
        isa,
    )
