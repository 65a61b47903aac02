"""The CPU cache layout, checked against vLLM's own write op (not through any model output):
`read_back` returns exactly what `cpu_attn_reshape_and_cache` wrote, for every kernel variant
guikv accepts, and `compact` leaves each head's kept entries in the request's first C slots."""

from __future__ import annotations

import pytest
import torch
from vllm import _custom_ops as ops

from guikv.vllm.cache_layout import read_back
from guikv.vllm.compaction import compact, split_cache
from guikv.vllm.plan import physical_slots

BLOCK_SIZE = 32


def written_cache(
    num_blocks: int, kv_heads: int, head_dim: int, dtype: torch.dtype, isa: str, slots: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A cache with random keys and values written at `slots` by vLLM's op: (cache, keys, values)."""
    generator = torch.Generator().manual_seed(head_dim)
    cache = torch.zeros(num_blocks, kv_heads, BLOCK_SIZE, 2 * head_dim, dtype=dtype)
    keys = torch.randn(len(slots), kv_heads, head_dim, generator=generator).to(dtype)
    values = torch.randn(len(slots), kv_heads, head_dim, generator=generator).to(dtype)
    ops.cpu_attn_reshape_and_cache(keys, values, *split_cache(cache), slots, isa)
    return cache, keys, values


@pytest.mark.parametrize(
    ("isa", "head_dim", "dtype"),
    [
        ("vec", 32, torch.float32),
        ("vec", 64, torch.float32),
        ("vec", 128, torch.bfloat16),
        ("vec16", 80, torch.float32),
    ],
)
def test_read_back_returns_what_vllm_wrote(isa: str, head_dim: int, dtype: torch.dtype) -> None:
    slots = torch.randperm(6 * BLOCK_SIZE, generator=torch.Generator().manual_seed(1))[:100]
    cache, keys, values = written_cache(6, 2, head_dim, dtype, isa, slots)
    read_keys, read_values = read_back(cache, slots, isa)
    assert torch.equal(read_keys, keys)
    assert torch.equal(read_values, values)


def test_read_back_refuses_an_unknown_kernel_layout() -> None:
    with pytest.raises(ValueError, match="'amx' has no known cache layout"):
        read_back(torch.zeros(1, 1, BLOCK_SIZE, 64), torch.zeros(1, dtype=torch.long), "amx")


def test_compact_puts_each_heads_kept_entries_in_the_first_slots() -> None:
    length, kv_heads, head_dim, kept = 150, 2, 64, 37
    block_ids = [7, 2, 9, 4, 0]
    slots = physical_slots(block_ids, length, BLOCK_SIZE)
    cache, keys, values = written_cache(10, kv_heads, head_dim, torch.float32, "vec", slots)
    generator = torch.Generator().manual_seed(2)
    keep = torch.stack(
        [torch.randperm(length, generator=generator)[:kept].sort().values for _ in range(kv_heads)]
    )
    compact(cache, keys.reshape(length, -1), values.reshape(length, -1), keep, block_ids, "vec")
    read_keys, read_values = read_back(cache, physical_slots(block_ids, kept, BLOCK_SIZE), "vec")
    for head in range(kv_heads):
        assert torch.equal(read_keys[:, head], keys[keep[head], head])
        assert torch.equal(read_values[:, head], values[keep[head], head])
    rest_keys, _ = read_back(cache, slots[kept:], "vec")
    assert torch.equal(rest_keys, keys[kept:])
