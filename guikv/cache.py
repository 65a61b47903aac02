"""Cutting a transformers cache layer down to kept positions, and what a cache costs in bytes."""

from __future__ import annotations

import torch


def cut_layer(layer: object, keep: torch.Tensor) -> None:
    """Replace a cache layer's keys and values [B, H_kv, L, d] by their kept positions
    `keep` [B, H_kv, C] (per KV head, ascending)."""
    index = keep[..., None].expand(-1, -1, -1, layer.keys.shape[-1])
    layer.keys = layer.keys.gather(2, index).contiguous()
    layer.values = layer.values.gather(2, index).contiguous()


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
