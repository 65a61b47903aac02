"""StreamingLLM as a prefill eviction: attention sinks plus the most recent tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from guikv.methods.base import LayerContext, Method


@dataclass(frozen=True)
class StreamingLLM(Method):
    """Keep the first `sink_tokens` positions and the most recent ones; a content-blind reference
    that shows what attention-based scoring buys."""

    name: ClassVar[str] = "streamingllm"
    needs_queries: ClassVar[bool] = False

    sink_tokens: int = 4

    def score(self, ctx: LayerContext, window: int) -> torch.Tensor:
        """Recency, with sinks above everything."""
        prefix = ctx.length - window
        recency = torch.arange(prefix, device=ctx.keys.device, dtype=torch.float32)
        recency[: self.sink_tokens] = float(prefix + 1)
        return recency.expand(ctx.keys.shape[0], ctx.num_kv_heads, prefix)
