"""Forward hooks on a model's attention modules, and how a prompt forward looks from inside them.

Compression and the attention analysis both work at prefill, per layer, from the attention
module's own inputs. They share this one mechanism: hooks (never monkey-patches), the same test
of what a forward is, removal on exit even after an error.

The cache reaches an attention module as `cache=` from transformers 5.24 on and as
`past_key_values=` before; `cache_argument` is the one place that reads both.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from guikv.cache import physical_length

CACHE_KEYWORDS = ("cache", "past_key_values")
"""The keyword a forward receives its cache by: transformers >= 5.24, then 5.0-5.23."""


def cache_argument(kwargs: dict[str, Any]) -> Any:
    """The cache object among a forward's keyword arguments, under either spelling (or None)."""
    for keyword in CACHE_KEYWORDS:
        cache = kwargs.get(keyword)
        if cache is not None:
            return cache
    return None


def cache_keyword(model: nn.Module) -> str:
    """The keyword `model.forward` (and so `generate()`) takes a cache by in this transformers."""
    parameters = inspect.signature(model.forward).parameters
    return next((keyword for keyword in CACHE_KEYWORDS if keyword in parameters), CACHE_KEYWORDS[-1])


def output_cache(output: Any) -> Any:
    """The cache a model's forward returned (`.cache`, or `.past_key_values` before 5.24), or None."""
    for name in CACHE_KEYWORDS:
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None


@dataclass(frozen=True)
class LayerForward:
    """One attention module right after a forward of several new tokens on a cache: its input,
    the (cos, sin) it used, its output, and the cache whose layer `index` now holds the tokens.

    `is_prefill` tells a first forward (the layer held nothing before) from one that extended a
    non-empty layer (a later prefill chunk, or a continuation)."""

    index: int
    attention: nn.Module
    hidden_states: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    cache: Any
    output: Any = None

    @property
    def length(self) -> int:
        """New tokens of this forward."""
        return int(self.hidden_states.shape[1])

    @property
    def keys(self) -> torch.Tensor:
        """The layer's cached keys after RoPE: [B, H_kv, stored, d]."""
        return self.cache.layers[self.index].keys

    @property
    def values(self) -> torch.Tensor:
        """The layer's cached values: [B, H_kv, stored, d]."""
        return self.cache.layers[self.index].values

    @property
    def is_prefill(self) -> bool:
        """True when the layer holds exactly this forward's tokens (it was empty before)."""
        return physical_length(self.cache.layers[self.index]) == self.length


ForwardCallback = Callable[[LayerForward], None]
PreHook = Callable[[int, nn.Module, tuple, dict[str, Any]], Any]


def _after_forward(
    on_prefill: ForwardCallback,
    on_extend: ForwardCallback | None,
    index: int,
    module: nn.Module,
    args: tuple,
    kwargs: dict[str, Any],
    output: Any,
) -> None:
    """Route a forward of several tokens on a cache: a prefill to `on_prefill`, an extension of a
    non-empty layer to `on_extend`; single-token decode steps are left alone."""
    hidden = kwargs["hidden_states"]
    cache = cache_argument(kwargs)
    if cache is None or hidden.shape[1] <= 1 or index >= len(cache.layers):
        return
    forward = LayerForward(index, module, hidden, kwargs["position_embeddings"], cache, output)
    if forward.is_prefill:
        on_prefill(forward)
    elif on_extend is not None:
        on_extend(forward)


@contextmanager
def attention_hooks(
    attentions: Sequence[nn.Module],
    *,
    on_prefill: ForwardCallback,
    on_extend: ForwardCallback | None = None,
    before: PreHook | None = None,
) -> Iterator[None]:
    """Call `on_prefill(LayerForward)` after each attention module's prefill forward,
    `on_extend(LayerForward)` after a multi-token forward on a non-empty layer, and
    `before(index, module, args, kwargs)` ahead of every forward (it may return new (args, kwargs));
    every hook is removed on exit."""
    handles = []
    try:
        for index, attention in enumerate(attentions):
            if before is not None:
                handles.append(attention.register_forward_pre_hook(partial(before, index), with_kwargs=True))
            handles.append(
                attention.register_forward_hook(
                    partial(_after_forward, on_prefill, on_extend, index), with_kwargs=True
                )
            )
        yield
    finally:
        for handle in handles:
            handle.remove()
