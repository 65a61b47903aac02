"""SnapKV: keep the prefix tokens the observation window attends to most, uniformly per layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from guikv.attention import window_attention_mass
from guikv.methods.base import LayerContext, Method, pool_scores


@dataclass(frozen=True)
class SnapKV(Method):
    """Pooled attention of the last `window_size` queries over the prefix; the uniform capacity C
    (`guikv.config.uniform_capacity`) kept per layer and KV head, window included."""

    name: ClassVar[str] = "snapkv"

    kernel_size: int = 5
    pooling: str = "avgpool"

    def window_scores(self, ctx: LayerContext, window: int) -> torch.Tensor:
        """Pooled window attention per query head over the prefix: [B, H, L - window]."""
        if ctx.queries is None:
            raise ValueError(f"method {self.name!r} needs the window queries: pass queries")
        mass = window_attention_mass(ctx.queries[:, :, -window:], ctx.keys, ctx.scaling, ctx.present)
        return pool_scores(mass[..., : ctx.length - window], self.kernel_size, self.pooling)

    def score(self, ctx: LayerContext, window: int) -> torch.Tensor:
        """Window attention, pooled, aggregated over each KV group."""
        return self.aggregate_heads(self.window_scores(ctx, window), ctx.num_kv_heads)
