"""What every compression method shares: the inputs it sees, the capacity rule, and the top-k cut.

A method is a small dataclass that turns one layer's tensors into a score per KV head and prompt
position, plus a rule for how many positions that layer keeps. Selection itself (protect the
observation window, keep the best-scoring prefix positions, in ascending order) is common.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from guikv.layout import TokenLayout


@dataclass(frozen=True)
class LayerContext:
    """One layer's prefill tensors, as a method sees them.

    `queries` [B, H, w, d] are the last prompt positions' queries after RoPE (None for methods
    that need no attention), `keys` [B, H_kv, L, d] the cached keys after RoPE, `hidden_states`
    [B, L, D] the attention module's input. `capacity` is the uniform per-layer capacity every
    method starts from (`guikv.config.uniform_capacity(L, budget)`).

    `present` [B, H_kv, L] (None: every position) says which positions each KV head holds. A
    cache carried from an earlier agent step (`guikv.carry`) lays the entries of all its heads on
    one sequence, in logical order, then the new tokens; a head holds only the entries it kept,
    its other positions have zero keys and no hidden states. Window attention never sees an absent
    key and selection never keeps one; `held` is what every head holds, the length a method's
    shares are taken of.
    """

    keys: torch.Tensor
    layout: TokenLayout
    capacity: int
    layer_idx: int = 0
    num_layers: int = 1
    queries: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    scaling: float | None = None
    present: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """The uncompressed prompt length L."""
        return int(self.keys.shape[2])

    @property
    def held(self) -> int:
        """Positions each KV head holds: L, or the count of a carried cache's present entries
        (every head holds as many)."""
        return self.length if self.present is None else int(self.present[0, 0].sum())

    @property
    def num_kv_heads(self) -> int:
        """KV heads stored in the cache."""
        return int(self.keys.shape[1])

    def row(self, row: int, padding: int, layout: TokenLayout, capacity: int, window: int) -> LayerContext:
        """Row `row` of a left-padded batch as a context of its own: its real positions only
        (`padding` leading columns dropped), its layout and capacity, its last `window` queries."""
        queries = self.queries
        return replace(
            self,
            keys=self.keys[row : row + 1, :, padding:],
            layout=layout,
            capacity=capacity,
            queries=None if queries is None else queries[row : row + 1, :, queries.shape[2] - window :],
            hidden_states=None if self.hidden_states is None else self.hidden_states[row : row + 1, padding:],
            present=None if self.present is None else self.present[row : row + 1, :, padding:],
        )


@dataclass(frozen=True)
class Method:
    """Base of all methods: the observation window and the per-head score aggregation.

    Subclasses set `name`, override `score` (and `layer_capacity` when layers differ), and declare
    whether they need the window queries or the image layout.
    """

    name: ClassVar[str] = ""
    needs_queries: ClassVar[bool] = True
    needs_images: ClassVar[bool] = False

    window_size: int = 8
    head_aggregation: str = "mean"

    def window(self, layout: TokenLayout) -> int:
        """How many trailing prompt tokens are always kept (and whose queries are scored)."""
        return min(self.window_size, layout.length)

    def layer_capacity(self, ctx: LayerContext) -> int:
        """How many positions this layer keeps, window included; uniform by default."""
        return ctx.capacity

    def score(self, ctx: LayerContext, window: int) -> torch.Tensor:
        """Importance of each prefix position per KV head: [B, H_kv, L - window], higher is kept."""
        raise NotImplementedError

    def select(self, ctx: LayerContext) -> torch.Tensor:
        """Kept positions per KV head, ascending: [B, H_kv, layer capacity]."""
        capacity = min(self.layer_capacity(ctx), ctx.held)
        window = self.window(ctx.layout)
        if capacity >= ctx.held:
            return held_positions(ctx)
        check_capacity(capacity, window, ctx.held)
        return keep_best(self.score(ctx, window), ctx, capacity - window)

    def aggregate_heads(self, scores: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
        """Per-query-head scores [B, H, P] to per-KV-head scores [B, H_kv, P] (mean or max of each group)."""
        batch, heads, positions = scores.shape
        grouped = scores.view(batch, num_kv_heads, heads // num_kv_heads, positions)
        return grouped.amax(dim=2) if self.head_aggregation == "max" else grouped.mean(dim=2)


def check_capacity(capacity: int, window: int, length: int) -> None:
    """Refuse a capacity that cannot hold the window plus at least one prefix token."""
    if capacity < window + 1:
        raise ValueError(
            f"budget keeps {capacity} of {length} prompt tokens per layer, fewer than window_size "
            f"{window} + 1: raise the budget or lower window_size"
        )


def all_positions(keys: torch.Tensor) -> torch.Tensor:
    """Every position, for each batch row and KV head: [B, H_kv, L]."""
    batch, kv_heads, length = keys.shape[:3]
    return torch.arange(length, device=keys.device).expand(batch, kv_heads, length)


def held_positions(ctx: LayerContext) -> torch.Tensor:
    """Every position each KV head holds, ascending: [B, H_kv, held] (all of them when nothing
    is absent)."""
    if ctx.present is None:
        return all_positions(ctx.keys)
    batch, kv_heads, length = ctx.present.shape
    positions = torch.arange(length, device=ctx.present.device).expand(batch, kv_heads, length)
    return positions[ctx.present].view(batch, kv_heads, ctx.held)


def keep_best(scores: torch.Tensor, ctx: LayerContext, prefix_keep: int) -> torch.Tensor:
    """`keep_top` over the positions each head holds: absent ones are never kept."""
    if ctx.present is not None:
        absent = ~ctx.present[..., : scores.shape[-1]]
        scores = scores.float().masked_fill(absent, float("-inf"))
    return keep_top(scores, prefix_keep, ctx.length)


def keep_top(scores: torch.Tensor, prefix_keep: int, length: int) -> torch.Tensor:
    """The `prefix_keep` best-scoring prefix positions plus the whole window, ascending."""
    batch, kv_heads, prefix = scores.shape
    prefix_keep = min(prefix_keep, prefix)
    top = scores.topk(prefix_keep, dim=-1).indices.sort(dim=-1).values
    window = torch.arange(prefix, length, device=scores.device).expand(batch, kv_heads, length - prefix)
    return torch.cat([top, window], dim=-1)


def pool_scores(scores: torch.Tensor, kernel_size: int, pooling: str) -> torch.Tensor:
    """Smooth scores along positions (same length, zero padding), so neighbours of hot tokens survive."""
    if kernel_size == 1:
        return scores
    batch, heads, positions = scores.shape
    flat = scores.reshape(batch * heads, 1, positions)
    padding = kernel_size // 2
    if pooling == "maxpool":
        pooled = F.max_pool1d(flat, kernel_size, stride=1, padding=padding)
    else:
        pooled = F.avg_pool1d(flat, kernel_size, stride=1, padding=padding, count_include_pad=True)
    return pooled.reshape(batch, heads, positions)


def pick_held(
    badness: torch.Tensor, positions: torch.Tensor, held: torch.Tensor, share: float, pad: int
) -> torch.Tensor:
    """Per KV head, the `int(share * held count)` positions with the highest `badness` among those
    the head holds: `badness` and `held` are [B, H_kv, N] over `positions` [N]. Returns positions
    [B, H_kv, most picked], a head picking fewer padding its row with `pad`."""
    counts = (share * held.sum(dim=-1)).long()
    order = badness.masked_fill(~held, float("-inf")).argsort(dim=-1, descending=True)
    picked = positions[order[..., : int(counts.max())]]
    beyond = torch.arange(picked.shape[-1], device=picked.device) >= counts[..., None]
    return picked.masked_fill(beyond, pad)
