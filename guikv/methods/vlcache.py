"""VL-Cache: layer budgets in proportion to each layer's attention density, scored from the text
that follows the last screenshot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from guikv.attention import window_sparsity
from guikv.layout import TokenLayout
from guikv.methods.base import LayerContext, held_positions, keep_best, pool_scores
from guikv.methods.snapkv import SnapKV


@dataclass(frozen=True)
class LayerStatistics:
    """What VL-Cache learns from one layer before budgets are set: per-head sparsity [B, H] and
    the window attention mass [B, H, L]."""

    sparsity: torch.Tensor
    mass: torch.Tensor

    @property
    def layer_sparsity(self) -> float:
        """Mean sparsity over heads (and batch)."""
        return float(self.sparsity.mean())


@dataclass(frozen=True)
class VLCache(SnapKV):
    """VL-Cache with the original's window (every token after the last image) and sparsity rule
    (share of window attention weights at most `threshold`).

    Budgets need every layer's sparsity, measured on that layer's true inputs. The compressor
    therefore scores each layer as its prefill passes, keeps the full cache until the last layer
    has run, then allocates `B_l` (summing exactly to the uniform total `C * N`) and cuts every
    layer: peak KV memory is that of a full-cache prefill, plus [H, L] scores per layer.
    """

    name: ClassVar[str] = "vlcache"
    needs_images: ClassVar[bool] = True
    allocates_across_layers: ClassVar[bool] = True

    threshold: float = 0.01

    def window(self, layout: TokenLayout) -> int:
        """All tokens after the end of the last image."""
        if layout.current is None:
            raise ValueError(f"method {self.name!r} needs image tokens in the prompt: none were found")
        return max(1, layout.length - layout.current[1])

    def statistics(self, ctx: LayerContext) -> LayerStatistics:
        """Sparsity and window attention of one layer, from its window queries."""
        if ctx.queries is None:
            raise ValueError(f"method {self.name!r} needs the window queries: pass queries")
        window = self.window(ctx.layout)
        sparsity, mass = window_sparsity(
            ctx.queries[:, :, -window:], ctx.keys, self.threshold, ctx.scaling, ctx.present
        )
        return LayerStatistics(sparsity=sparsity, mass=mass)

    def select_with_budget(self, ctx: LayerContext, budget: int, stats: LayerStatistics) -> torch.Tensor:
        """Keep `budget` positions of one layer: the post-image window (shrunk to `budget - 1` when
        the budget cannot hold it) and the best-scoring prefix positions."""
        window = self.window(ctx.layout)
        if budget >= ctx.held:
            return held_positions(ctx)
        if budget <= window:
            window = budget - 1
            mass = self.window_scores(ctx, window)
        else:
            mass = pool_scores(stats.mass[..., : ctx.length - window], self.kernel_size, self.pooling)
        return keep_best(self.aggregate_heads(mass, ctx.num_kv_heads), ctx, budget - window)

    def select(self, ctx: LayerContext) -> torch.Tensor:
        """One layer on its own: `ctx.capacity` is taken as this layer's budget."""
        return self.select_with_budget(ctx, min(ctx.capacity, ctx.held), self.statistics(ctx))


def allocate_budgets(sparsities: list[float], capacity: int, length: int) -> list[int]:
    """Per-layer budgets proportional to density `1 - sparsity` (each share clamped to
    [0.001, 1] as in the original), between 1 and `length`, summing exactly to `capacity * N`."""
    layers = len(sparsities)
    total = min(capacity, length) * layers
    density = torch.tensor([1.0 - s for s in sparsities], dtype=torch.float64).clamp(min=0)
    weights = density / density.sum() if density.sum() > 0 else torch.full_like(density, 1 / layers)
    weights = weights.clamp(0.001, 1.0)
    low, high = 0.0, length / float(weights.min())
    for _ in range(200):
        middle = (low + high) / 2
        if float((middle * weights).clamp(1, length).sum()) < total:
            low = middle
        else:
            high = middle
    shares = (high * weights).clamp(1, length)
    budgets = shares.floor()
    remainders = (shares - budgets).tolist()
    order = sorted((i for i in range(layers) if budgets[i] < length), key=lambda i: (-remainders[i], i))
    for i in order[: total - int(budgets.sum())]:
        budgets[i] += 1
    return [int(b) for b in budgets]
