"""Forward hooks on a model's attention modules, and how a prefill looks from inside them.

Compression and the attention analysis both work at prefill, per layer, from the attention
module's own inputs. They share this one mechanism: hooks (never monkey-patches), the same prefill
test, removal on exit even after an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class LayerPrefill:
    """One attention module right after its prefill forward: its input, the (cos, sin) it used,
    and the cache whose layer `index` now holds exactly the prompt's keys and values."""

    index: int
    attention: nn.Module
    hidden_states: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    cache: Any

    @property
    def length(self) -> int:
        """Prompt tokens of this forward."""
        return int(self.hidden_states.shape[1])

    @property
    def keys(self) -> torch.Tensor:
        """The layer's cached keys after RoPE: [B, H_kv, L, d]."""
        return self.cache.layers[self.index].keys


PrefillCallback = Callable[[LayerPrefill], None]
PreHook = Callable[[int, nn.Module, tuple, dict[str, Any]], Any]


def _after_forward(
    callback: PrefillCallback, index: int, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any
) -> None:
    """A forward is a prefill when it has several tokens and its cache layer holds exactly them
    (the layer was empty before): decode steps and chunked continuations are left alone."""
    hidden = kwargs["hidden_states"]
    cache = kwargs.get("cache")
    length = hidden.shape[1]
    if cache is None or length <= 1 or cache.layers[index].keys.shape[2] != length:
        return
    callback(LayerPrefill(index, module, hidden, kwargs["position_embeddings"], cache))


@contextmanager
def attention_hooks(
    attentions: Sequence[nn.Module], *, on_prefill: PrefillCallback, before: PreHook | None = None
) -> Iterator[None]:
    """Call `on_prefill(LayerPrefill)` after each attention module's prefill forward, and
    `before(index, module, args, kwargs)` ahead of every forward (it may return new (args, kwargs));
    every hook is removed on exit."""
    handles = []
    try:
        for index, attention in enumerate(attentions):
            if before is not None:
                handles.append(attention.register_forward_pre_hook(partial(before, index), with_kwargs=True))
            handles.append(
                attention.register_forward_hook(partial(_after_forward, on_prefill, index), with_kwargs=True)
            )
        yield
    finally:
        for handle in handles:
            handle.remove()
