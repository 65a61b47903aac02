"""Random eviction: the floor any scoring method must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from guikv.methods.base import LayerContext, Method


@dataclass(frozen=True)
class RandomEviction(Method):
    """Keep the window and a uniformly random, seeded choice of prefix positions per KV head."""

    name: ClassVar[str] = "random"
    needs_queries: ClassVar[bool] = False

    seed: int = 0

    def score(self, ctx: LayerContext, window: int) -> torch.Tensor:
        """Random scores, reproducible per (seed, layer)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + ctx.layer_idx)
        shape = (ctx.keys.shape[0], ctx.num_kv_heads, ctx.length - window)
        return torch.rand(shape, generator=generator).to(ctx.keys.device)
