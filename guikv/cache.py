"""Cutting a transformers cache layer down to kept positions, and what a cache costs in bytes.

A cut layer becomes a `CutLayer`: its tensors hold only the kept entries, but it reports the
*logical* length (prompt tokens seen plus tokens appended since), which is what transformers reads
to slice new input and to place new tokens (`cache.get_seq_length()`). A continuation therefore
feeds only its new tokens, at the right positions, on a compressed cache.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class CutLayer(DynamicLayer):
    """A dynamic cache layer whose prompt was cut to kept positions.

    `keys`/`values` [B, H_kv, kept + appended, d] are the physical tensors; `get_seq_length()`
    returns the logical length, so every caller of transformers that positions or slices tokens
    by the cache length sees the uncompressed sequence. `physical_length` is what is stored.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, logical_length: int) -> None:
        super().__init__()
        self.keys = keys
        self.values = values
        self.device = keys.device
        self.dtype = keys.dtype
        self.is_initialized = True
        self.logical_length = logical_length

    @property
    def physical_length(self) -> int:
        """Entries actually stored per KV head."""
        return int(self.keys.shape[-2])

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new entries; the logical length grows by as many tokens."""
        self.logical_length += int(key_states.shape[-2])
        return super().update(key_states, value_states, *args, **kwargs)

    def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
        """The logical length: every token the model has seen, evicted or not."""
        return self.logical_length if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the newest `-tokens_to_remove` entries (transformers' negative convention)."""
        if tokens_to_remove > 0:
            raise ValueError(f"CutLayer.crop takes a negative token count, got {tokens_to_remove}")
        removed = min(-tokens_to_remove, self.physical_length)
        super().crop(-removed)
        self.logical_length -= removed

    def reset(self) -> None:
        """Empty the layer (logical length 0)."""
        super().reset()
        self.logical_length = 0


def physical_length(layer: Any) -> int:
    """Entries a cache layer actually stores (0 before its first update)."""
    keys = getattr(layer, "keys", None)
    if not getattr(layer, "is_initialized", False) or keys is None or keys.dim() < 3:
        return 0
    return int(keys.shape[-2])


def cut_layer(layer: Any, keep: torch.Tensor) -> CutLayer:
    """A `CutLayer` holding a layer's keys and values [B, H_kv, L, d] at the kept positions
    `keep` [B, H_kv, C] (per KV head, ascending), with the layer's logical length."""
    index = keep[..., None].expand(-1, -1, -1, layer.keys.shape[-1])
    return CutLayer(
        layer.keys.gather(2, index).contiguous(),
        layer.values.gather(2, index).contiguous(),
        logical_length=layer.get_seq_length(),
    )


def kv_bytes(tokens: int, kv_heads: int, head_dim: int, dtype: torch.dtype, batch: int = 1) -> int:
    """Bytes of keys plus values for `tokens` positions of one layer."""
    return 2 * batch * kv_heads * tokens * head_dim * torch.empty((), dtype=dtype).element_size()


def fix_mask_length(mask: torch.Tensor, kv_length: int) -> torch.Tensor:
    """Fit an attention mask's key axis to a cut layer's physical length.

    The mask is built once per forward for the *logical* length (or for another layer's
    physical length). Its last columns are the newest tokens, so they are kept; missing leading
    columns are kept prompt positions, which every new query may see (batch 1, no padding).
    """
    current = mask.shape[-1]
    if current >= kv_length:
        return mask[..., current - kv_length :]
    visible = (
        torch.ones((), dtype=torch.bool) if mask.dtype == torch.bool else torch.zeros((), dtype=mask.dtype)
    )
    pad = visible.to(mask.device).expand(*mask.shape[:-1], kv_length - current)
    return torch.cat([pad, mask], dim=-1)
