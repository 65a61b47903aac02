"""Oracle recall: how many of the prompt positions decoding actually needed a method kept.

The positions decoding needed are read off the full cache: during a full-cache `generate()`, every
decode step's query (the generated token fed back) is rebuilt in each layer from the attention
module's input, exactly like the observation-window queries (`project_queries`, then the module's
rotary function with the step's own (cos, sin)), and its softmax attention over the whole cache is
summed over the prompt positions. Query heads are averaged over their KV group, as the methods
aggregate them, so the mass is [layers, H_kv, L]: one step at a time, never [layers, H, steps, L].

For one layer and KV head, the oracle set at capacity C is the C prompt positions with the largest
mass; a method that kept C positions there has oracle recall |kept ∩ oracle| / C. The method's own
kept count per layer is its capacity there, so layer-varying budgets (PyramidKV, VL-Cache) are
measured against an oracle of the same size.

An answer of one token has no decode step: its token comes from the prefill, which every method
computes on the whole prompt, so no position was needed from the cache and recall is undefined
(`OracleMassProbe.mass()` is None, `NO_DECODE_STEP` says why), not a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from guikv.attention import iter_window_probs, window_queries
from guikv.cache import physical_length
from guikv.hooks import cache_argument

NO_DECODE_STEP = (
    "undefined: the full-cache answer is one token, which the prefill computes on the whole prompt "
    "under every method, so no decode step read the cache"
)
"""Why oracle recall has no value when the full-cache run decoded no step after its first token."""


class OracleMassProbe:
    """Forward-hook state for a full-cache `generate()`: after each single-token decode forward of
    an attention module, add its query heads' attention over the prompt (mean over each KV group)
    to `mass[layer]`.

    The prompt length is taken from the first forward of several tokens into an empty layer (the
    prefill). A decode step over a cache that does not hold every earlier token (a cut cache)
    raises: the oracle is defined on the full cache only.
    """

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.prompt_length: int | None = None
        self.steps = [0] * num_layers
        self.sums: list[torch.Tensor | None] = [None] * num_layers

    def attach(self, attentions: Sequence[nn.Module]) -> list[RemovableHandle]:
        """Hook the probe after every attention module's forward; the caller removes the handles."""
        return [
            attention.register_forward_hook(partial(self, index), with_kwargs=True)
            for index, attention in enumerate(attentions)
        ]

    def _start(self, length: int) -> None:
        """A new prompt was prefilled: measure decoding on it from scratch."""
        self.prompt_length = length
        self.steps = [0] * self.num_layers
        self.sums = [None] * self.num_layers

    def __call__(
        self, index: int, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any
    ) -> None:
        """Forward hook of attention module `index` (registered with `with_kwargs=True`)."""
        hidden = kwargs["hidden_states"]
        cache = cache_argument(kwargs)
        if cache is None or index >= len(cache.layers):
            return
        stored = physical_length(cache.layers[index])
        if hidden.shape[1] > 1:
            if stored == hidden.shape[1] and index == 0:
                self._start(stored)
            return
        length = self.prompt_length
        if length is None:
            return
        if stored != length + self.steps[index] + 1:
            raise RuntimeError(
                f"oracle mass: layer {index} holds {stored} cached tokens at decode step "
                f"{self.steps[index] + 1} of a {length}-token prompt: the oracle needs the full cache"
            )
        keys = cache.layers[index].keys
        queries = window_queries(module, hidden, kwargs["position_embeddings"], 1)
        kv_heads = keys.shape[1]
        step_mass = torch.zeros(kv_heads, length, dtype=torch.float32, device=keys.device)
        for _, probs in iter_window_probs(queries, keys, getattr(module, "scaling", None)):
            step_mass += probs[0, :, :, :length].sum(dim=1).view(kv_heads, -1, length).mean(dim=1)
        total = self.sums[index]
        self.sums[index] = step_mass if total is None else total.add_(step_mass)
        self.steps[index] += 1

    def mass(self) -> torch.Tensor | None:
        """The accumulated mass, [layers, H_kv, L] in fp32 on the CPU; None when generation stopped
        after its first token, so that no decode step read the cache (`NO_DECODE_STEP`)."""
        if self.prompt_length is None:
            raise RuntimeError("oracle mass: no prefill was seen, so there is no prompt to measure")
        if not any(self.steps):
            return None
        if len(set(self.steps)) > 1:
            raise RuntimeError(
                f"oracle mass: the layers saw different numbers of decode steps ({self.steps})"
            )
        return torch.stack([total.float().cpu() for total in self.sums if total is not None])


def oracle_sets(mass: torch.Tensor, capacity: int) -> torch.Tensor:
    """The oracle positions of one layer: per KV head, the `capacity` prompt positions with the
    largest mass (`mass` [H_kv, L]); a boolean mask [H_kv, L]."""
    capacity = min(capacity, mass.shape[-1])
    chosen = torch.zeros_like(mass, dtype=torch.bool)
    return chosen.scatter_(-1, mass.topk(capacity, dim=-1).indices, True)


def layer_recall(kept: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Oracle recall of one layer per KV head: the share of the oracle set at capacity C (the kept
    count, `kept` [H_kv, C] prompt positions) that was kept; [H_kv]."""
    if kept.dim() != 2 or kept.shape[0] != mass.shape[0]:
        raise ValueError(
            f"kept positions of shape {tuple(kept.shape)} do not match the oracle mass's "
            f"{mass.shape[0]} KV heads"
        )
    capacity = kept.shape[-1]
    if capacity == 0:
        return torch.ones(mass.shape[0])
    oracle = oracle_sets(mass, capacity)
    hits = oracle.gather(-1, kept.long().to(oracle.device)).sum(dim=-1)
    return hits.float() / min(capacity, mass.shape[-1])


def oracle_recall(kept_positions: Sequence[torch.Tensor], mass: torch.Tensor) -> list[float]:
    """Oracle recall per layer (mean over KV heads) of a method's kept positions (one [H_kv, kept]
    tensor per layer) against the full cache's oracle mass [layers, H_kv, L]."""
    if len(kept_positions) != mass.shape[0]:
        raise ValueError(
            f"kept positions for {len(kept_positions)} layer(s), oracle mass for {mass.shape[0]} layers"
        )
    return [float(layer_recall(kept, layer).mean()) for kept, layer in zip(kept_positions, mass, strict=True)]
