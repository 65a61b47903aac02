"""The full cache: nothing is evicted; the reference every method is measured against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from guikv.methods.base import LayerContext, Method


@dataclass(frozen=True)
class FullCache(Method):
    """Keeps every prompt token whatever the budget."""

    name: ClassVar[str] = "full"
    needs_queries: ClassVar[bool] = False

    def layer_capacity(self, ctx: LayerContext) -> int:
        """The whole prompt."""
        return ctx.length
