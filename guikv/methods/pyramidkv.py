"""PyramidKV: SnapKV scores with a per-layer budget that shrinks linearly with depth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from guikv.methods.base import LayerContext
from guikv.methods.snapkv import SnapKV


@dataclass(frozen=True)
class PyramidKV(SnapKV):
    """Early layers keep more, late layers less; the average stays near the uniform capacity.

    `beta` sets the ratio between the largest and smallest layer budget (the original's 20).
    """

    name: ClassVar[str] = "pyramidkv"

    beta: int = 20

    def layer_capacity(self, ctx: LayerContext) -> int:
        """The pyramid schedule of the original, with the model's own number of layers."""
        return pyramid_capacity(
            ctx.capacity, ctx.held, self.window(ctx.layout), ctx.layer_idx, ctx.num_layers, self.beta
        )


def pyramid_capacity(
    capacity: int, length: int, window: int, layer_idx: int, num_layers: int, beta: int
) -> int:
    """Kept tokens (window included) of layer `layer_idx` for a uniform capacity `capacity`."""
    prefix = capacity - window
    if capacity >= length or length < 2 * prefix or num_layers == 1:
        return capacity
    min_n = prefix // beta
    max_n = 2 * prefix - min_n
    if max_n >= length - window:
        max_n = length - window
        min_n = 2 * prefix - max_n
    step = (max_n - min_n) // (num_layers - 1)
    return max_n - layer_idx * step + window
