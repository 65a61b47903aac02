"""How much of one request's prompt the plugin keeps, and where the kept entries go.

The scheduler (which frees blocks) and the worker (which scores and compacts) run in different
processes and never exchange a message about a request: both call `plan_request` on the same
token ids with the same settings, and the rule is uniform (`C = int(L * budget / 100)`, the
transformers path's capacity), so they agree on the kept count and hence on the blocks freed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from guikv.config import CompressionConfig, uniform_capacity
from guikv.layout import TokenLayout
from guikv.methods import build_method

LEFT_WHOLE_REASONS = ("budget", "text-only", "short")
"""Why a request keeps its whole prompt: the budget keeps every token; an image method got no
image; the prompt is too short for its capacity to hold the observation window plus one token."""


@dataclass(frozen=True)
class RequestPlan:
    """One request's compression: prompt length `length`, kept count `kept` per layer and KV head,
    and `left_whole` (one of `LEFT_WHOLE_REASONS`, or None when the prompt is compressed)."""

    length: int
    kept: int
    left_whole: str | None = None

    @property
    def evicted(self) -> int:
        """Prompt tokens each layer drops: the shift between logical and physical positions."""
        return self.length - self.kept

    def kept_blocks(self, block_size: int) -> int:
        """Blocks the kept entries fill (the leading blocks of the request's block table)."""
        return -(-self.kept // block_size)

    def freed_blocks(self, block_size: int) -> int:
        """Blocks handed back to the pool after the prefill."""
        return -(-self.length // block_size) - self.kept_blocks(block_size)


def kept_count(length: int, budget: float) -> int:
    """The uniform per-layer capacity of the transformers path: `max(1, int(L * budget / 100))`."""
    return uniform_capacity(length, budget)


def plan_request(
    token_ids: Sequence[int], config: CompressionConfig, image_token_ids: Sequence[int]
) -> RequestPlan:
    """The kept count for a prompt of `token_ids` under `config` (window included), or the reason
    it is left whole."""
    length = len(token_ids)
    method = build_method(config)
    layout = TokenLayout.from_input_ids(torch.as_tensor(list(token_ids), dtype=torch.long), image_token_ids)
    capacity = kept_count(length, config.budget)
    if capacity >= length:
        return RequestPlan(length, length, "budget")
    if method.needs_images and not layout.image_spans:
        return RequestPlan(length, length, "text-only")
    if capacity < method.window(layout) + 1:
        return RequestPlan(length, length, "short")
    return RequestPlan(length, capacity)


def physical_slots(block_ids: Sequence[int], count: int, block_size: int) -> torch.Tensor:
    """The cache slots of the first `count` physical positions of a request whose block table is
    `block_ids`: slot = block_ids[i // block_size] * block_size + i % block_size (int64)."""
    if count > len(block_ids) * block_size:
        raise ValueError(f"{count} positions do not fit {len(block_ids)} blocks of {block_size}")
    positions = torch.arange(count, dtype=torch.long)
    blocks = torch.as_tensor(list(block_ids), dtype=torch.long)
    return blocks[positions // block_size] * block_size + positions % block_size
