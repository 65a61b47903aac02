"""`compress(model, config)`: KV-cache compression at prefill, through forward hooks only.

Inside the context every decoder layer's attention module carries two hooks (`guikv.hooks`). After a prefill
forward (the layer's cache holds exactly the new tokens), the method scores the prompt from the
window queries (rebuilt with the model's own projection and rotary embedding), the keys and the
layer's input, and the cache layer is cut to the kept positions per KV head. Decode steps append
to the short cache; `generate` keeps positions logical, and a pre-hook fits the attention mask to
each layer's physical length. Leaving the context removes every hook.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from guikv.attention import window_queries
from guikv.cache import cut_layer, fix_mask_length, kv_bytes
from guikv.config import CompressionConfig
from guikv.hooks import LayerPrefill, attention_hooks
from guikv.layout import TokenLayout
from guikv.methods import build_method
from guikv.methods.base import LayerContext
from guikv.methods.vlcache import LayerStatistics, VLCache, allocate_budgets
from guikv.models.adapters import adapter_for


@dataclass
class PrefillRecord:
    """What one prefill kept: prompt length, kept tokens per layer, KV bytes and scoring time
    (and, for VL-Cache, the attention sparsity it measured in each layer)."""

    prompt_tokens: int
    num_images: int
    kept_per_layer: list[int] = field(default_factory=list)
    kv_bytes_full: int = 0
    kv_bytes_kept: int = 0
    scoring_seconds: float = 0.0
    kept_positions: list[torch.Tensor] = field(default_factory=list)
    layer_sparsity: list[float] = field(default_factory=list)


@dataclass
class CompressionReport:
    """Filled in while the context is active; its properties describe the most recent prefill.

    `prefills` holds one record per `generate()`/prefill made inside the context. With
    `record_positions=True`, each record also keeps the kept positions per layer ([H_kv, kept],
    on the CPU) for pictures of what was kept.
    """

    config: CompressionConfig
    layout: TokenLayout | None = None
    prefills: list[PrefillRecord] = field(default_factory=list)

    def _last(self) -> PrefillRecord:
        if not self.prefills:
            raise ValueError("no prefill ran inside compress(): call the model or generate() first")
        return self.prefills[-1]

    @property
    def prompt_tokens(self) -> int:
        """Uncompressed prompt length L."""
        return self._last().prompt_tokens

    @property
    def kept_per_layer(self) -> list[int]:
        """Kept positions per layer (per KV head: every head keeps the same count)."""
        return self._last().kept_per_layer

    @property
    def kv_bytes_full(self) -> int:
        """KV-cache bytes the uncompressed prompt would hold."""
        return self._last().kv_bytes_full

    @property
    def kv_bytes_kept(self) -> int:
        """KV-cache bytes kept after the cut."""
        return self._last().kv_bytes_kept

    @property
    def kept_ratio(self) -> float:
        """kv_bytes_kept / kv_bytes_full."""
        return self.kv_bytes_kept / self.kv_bytes_full

    @property
    def scoring_seconds(self) -> float:
        """Time spent scoring and cutting, over all layers."""
        return self._last().scoring_seconds

    @property
    def kept_positions(self) -> list[torch.Tensor]:
        """Kept positions per layer, [H_kv, kept] each (only with record_positions=True)."""
        return self._last().kept_positions


class _Hooks:
    """The per-context state the hooks share: the layout of the current prompt and, for
    cross-layer methods, the layers scored so far."""

    def __init__(self, model: nn.Module, config: CompressionConfig, record_positions: bool) -> None:
        adapter = adapter_for(model)
        self.method = build_method(config)
        self.config = config
        self.image_token_ids = adapter.image_token_ids(model.config)
        if self.method.needs_images and not self.image_token_ids:
            raise ValueError(
                f"CompressionConfig.method={config.method!r} needs image tokens, but "
                f"{type(model).__name__} has no image token id: use snapkv, pyramidkv, streamingllm or random"
            )
        self.attentions = adapter.attention_modules(model)
        self.record_positions = record_positions
        self.report = CompressionReport(config=config)
        self.pending: list[tuple[int, LayerContext, LayerStatistics]] = []

    def capture_inputs(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Top-level pre-hook: read the prompt's token layout from `input_ids` at prefill."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None or input_ids.shape[-1] <= 1:
            return
        if input_ids.shape[0] != 1:
            raise ValueError(
                f"compress() supports batch size 1, got input_ids with batch size {input_ids.shape[0]}: "
                "run one sample per generate() call"
            )
        self.report.layout = adapter_for(module).prompt_layout(module.config, input_ids, kwargs)

    def fit_mask(self, layer_idx: int, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Attention pre-hook: make the mask's key axis match this layer's physical cache."""
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("cache")
        if not isinstance(mask, torch.Tensor) or cache is None or layer_idx >= len(cache.layers):
            return None
        layer = cache.layers[layer_idx]
        if not getattr(layer, "is_initialized", False) or layer.keys is None:
            return None
        kv_length = layer.keys.shape[2] + kwargs["hidden_states"].shape[1]
        if mask.shape[-1] == kv_length:
            return None
        return args, {**kwargs, "attention_mask": fix_mask_length(mask, kv_length)}

    def after_prefill(self, prefill: LayerPrefill) -> None:
        """On a layer's prefill, score it and cut its cache."""
        start = time.perf_counter()
        layer_idx, keys, length = prefill.index, prefill.keys, prefill.length
        layout = self.report.layout
        if layout is None or layout.length != length:
            layout = TokenLayout(length=length, image_spans=())
        if layer_idx == 0:
            full = len(self.attentions) * kv_bytes(
                length, keys.shape[1], keys.shape[3], keys.dtype, keys.shape[0]
            )
            self.report.prefills.append(
                PrefillRecord(prompt_tokens=length, num_images=layout.num_images, kv_bytes_full=full)
            )
            self.pending.clear()
        if self.method.needs_images and not layout.image_spans:
            raise ValueError(
                f"CompressionConfig.method={self.config.method!r} needs image tokens in the prompt, "
                "found none (pass input_ids with the processor's image placeholders)"
            )
        capacity = max(1, int(length * self.config.budget / 100))
        window = self.method.window(layout)
        queries = (
            window_queries(prefill.attention, prefill.hidden_states, prefill.position_embeddings, window)
            if self.method.needs_queries
            else None
        )
        ctx = LayerContext(
            keys=keys,
            layout=layout,
            capacity=capacity,
            layer_idx=layer_idx,
            num_layers=len(self.attentions),
            queries=queries,
            hidden_states=prefill.hidden_states,
            scaling=getattr(prefill.attention, "scaling", None),
        )
        if isinstance(self.method, VLCache):
            self.pending.append((layer_idx, replace(ctx, hidden_states=None), self.method.statistics(ctx)))
            if layer_idx == len(self.attentions) - 1:
                self._cut_all_pending(prefill.cache)
        else:
            self._cut(prefill.cache, layer_idx, self.method.select(ctx))
        if keys.is_cuda:
            torch.cuda.synchronize(keys.device)
        self.report.prefills[-1].scoring_seconds += time.perf_counter() - start

    def _cut_all_pending(self, cache: Any) -> None:
        """VL-Cache: every layer has been scored; allocate budgets and cut them all."""
        first = self.pending[0][1]
        sparsities = [stats.layer_sparsity for _, _, stats in self.pending]
        self.report.prefills[-1].layer_sparsity = sparsities
        budgets = allocate_budgets(sparsities, first.capacity, first.length)
        for (layer_idx, ctx, stats), budget in zip(self.pending, budgets, strict=True):
            self._cut(cache, layer_idx, self.method.select_with_budget(ctx, budget, stats))
        self.pending.clear()

    def _cut(self, cache: Any, layer_idx: int, keep: torch.Tensor) -> None:
        layer = cache.layers[layer_idx]
        record = self.report.prefills[-1]
        if keep.shape[-1] < layer.keys.shape[2]:
            cut_layer(layer, keep)
        record.kept_per_layer.append(int(keep.shape[-1]))
        record.kv_bytes_kept += kv_bytes(
            keep.shape[-1], layer.keys.shape[1], layer.keys.shape[3], layer.keys.dtype, layer.keys.shape[0]
        )
        if self.record_positions:
            record.kept_positions.append(keep[0].cpu())


@contextmanager
def compress(
    model: nn.Module, config: CompressionConfig, *, record_positions: bool = False
) -> Iterator[CompressionReport]:
    """Compress the KV cache of every prefill run inside the context; yields the report.

    Works with any attention implementation (eager, sdpa, flash_attention_2): scores never need
    the kernel's attention weights. Batch size 1.
    """
    hooks = _Hooks(model, config, record_positions)
    handle = model.register_forward_pre_hook(hooks.capture_inputs, with_kwargs=True)
    try:
        with attention_hooks(hooks.attentions, on_prefill=hooks.after_prefill, before=hooks.fit_mask):
            yield hooks.report
    finally:
        handle.remove()
