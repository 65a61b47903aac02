"""How much of one request's prompt the plugin keeps, and where the kept entries go.

The scheduler (which frees blocks) and the worker (which scores and compacts) run in different
processes and never exchange a message about a request: both call `plan_request` on the same
token ids with the same settings, and the rule is uniform (`C = ⌊L · budget / 100⌋`, the
transformers path's capacity), so they agree on the kept count and hence on the blocks freed.

A request preempted by vLLM (recompute preemption) is prefilled again from its prompt followed by
the tokens it generated. The plan of that re-prefill comes from the prompt alone, as the first one
did: the same kept count, and the generated tokens are kept whole after the kept prompt entries
(`guikv.vllm.resume`), so the request continues from the cache it had.
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
    `left_whole` (one of `LEFT_WHOLE_REASONS`, or None when the prompt is compressed), and
    `generated`: the tokens a preempted request had generated, prefilled again after its prompt
    and kept whole after the kept prompt entries (0 for a first prefill)."""

    length: int
    kept: int
    left_whole: str | None = None
    generated: int = 0

    @property
    def evicted(self) -> int:
        """Prompt tokens each layer drops: the shift between logical and physical positions."""
        return self.length - self.kept

    @property
    def resumed(self) -> bool:
        """Whether this prefill is a preempted request's re-prefill (prompt plus generated tokens)."""
        return self.generated > 0

    def kept_blocks(self, block_size: int) -> int:
        """Blocks the kept entries (prompt, then generated tokens) fill: the leading blocks of the
        request's block table."""
        return -(-(self.kept + self.generated) // block_size)

    def freed_blocks(self, block_size: int) -> int:
        """Blocks handed back to the pool after the prefill."""
        return -(-(self.length + self.generated) // block_size) - self.kept_blocks(block_size)


def kept_count(length: int, budget: float) -> int:
    """The uniform per-layer capacity of the transformers path: `guikv.config.uniform_capacity`."""
    return uniform_capacity(length, budget)


def plan_request(
    prompt_ids: Sequence[int], config: CompressionConfig, image_token_ids: Sequence[int], generated: int = 0
) -> RequestPlan:
    """The kept count for a prompt of `prompt_ids` under `config` (window included), or the reason
    it is left whole; `generated` tokens follow the prompt in a preempted request's re-prefill.
    Only the prompt decides: a generated token that happens to be an image placeholder is text."""
    length = len(prompt_ids)
    method = build_method(config)
    layout = TokenLayout.from_input_ids(torch.as_tensor(list(prompt_ids), dtype=torch.long), image_token_ids)
    capacity = kept_count(length, config.budget)
    if capacity >= length:
        return RequestPlan(length, length, "budget", generated)
    if method.needs_images and not layout.image_spans:
        return RequestPlan(length, length, "text-only", generated)
    if capacity < method.window(layout) + 1:
        return RequestPlan(length, length, "short", generated)
    return RequestPlan(length, capacity, None, generated)


def physical_slots(block_ids: Sequence[int], count: int, block_size: int) -> torch.Tensor:
    """The cache slots of the first `count` physical positions of a request whose block table is
    `block_ids`: slot = block_ids[i // block_size] * block_size + i % block_size (int64)."""
    if count > len(block_ids) * block_size:
        raise ValueError(f"{count} positions do not fit {len(block_ids)} blocks of {block_size}")
    positions = torch.arange(count, dtype=torch.long)
    blocks = torch.as_tensor(list(block_ids), dtype=torch.long)
    return blocks[positions // block_size] * block_size + positions % block_size
