"""`compress(model, config)`: KV-cache compression at prefill, through forward hooks only.

Inside the context every decoder layer's attention module carries two hooks (`guikv.hooks`) and
the model one pre-hook and one hook. After a prefill forward (the layer's cache holds exactly the
new tokens), the method scores the prompt from the window queries (rebuilt with the model's own
projection, query norm and rotary embedding), the keys and the layer's input, and the cache layer
is replaced by a `CutLayer` holding the kept positions per KV head but reporting the logical
length, so decoding and later turns continue at logical positions; a pre-hook fits the attention
mask to each layer's physical length.

A left-padded batch is scored row by row on each row's own tensors (`guikv.batch`); rows keep
different counts, and the mask pre-hook hides the empty slots of the shorter rows.

A prefill split into chunks (`generate(..., prefill_chunk_size=N)`) is scored once, from the whole
prompt, after its last chunk: with `compress(..., chunked_prefill=True)` every chunk is kept and
the cut happens before the first decode step (or on leaving the context). Without it, a chunk that
would continue an already cut prompt raises. Compression never silently does nothing: a static or
sliding-window cache is refused up front, and leaving the context after a cached prefill that no
layer scored raises `RuntimeError`. Leaving the context removes every hook.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer

from guikv.attention import check_attention_module, verify_window_queries, window_queries
from guikv.batch import left_padding, row_grids, row_positions
from guikv.cache import CutLayer, cut_rows, fit_mask, kv_bytes, mask_fitting, share_cache, stored_kv_bytes
from guikv.config import CompressionConfig, uniform_capacity
from guikv.hooks import LayerForward, attention_hooks, cache_argument, output_cache
from guikv.layout import TokenLayout, spatial_merge_size
from guikv.methods import build_method
from guikv.methods.base import LayerContext
from guikv.methods.vlcache import LayerStatistics, VLCache, allocate_budgets
from guikv.models.adapters import adapter_for


@dataclass
class RowRecord:
    """What one prompt (one row of a batch) kept: its length, kept tokens per layer, KV bytes (and,
    for VL-Cache, the attention sparsity it measured in each layer)."""

    prompt_tokens: int
    num_images: int
    kept_per_layer: list[int] = field(default_factory=list)
    kv_bytes_full: int = 0
    kv_bytes_kept: int = 0
    kept_positions: list[torch.Tensor] = field(default_factory=list)
    layer_sparsity: list[float] = field(default_factory=list)


@dataclass
class PrefillRecord:
    """What one prefill kept: one `RowRecord` per batch row, the batch totals, the bytes the cut
    cache really stores (rows keeping fewer tokens than the longest row pad their slots), and the
    scoring time."""

    rows: list[RowRecord]
    kv_bytes_stored: int = 0
    scoring_seconds: float = 0.0

    def _single(self, name: str) -> RowRecord:
        if len(self.rows) != 1:
            raise ValueError(f"a batch of {len(self.rows)} rows has no single {name}: read rows[r].{name}")
        return self.rows[0]

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens over all rows (padding excluded)."""
        return sum(row.prompt_tokens for row in self.rows)

    @property
    def num_images(self) -> int:
        """Screenshots over all rows."""
        return sum(row.num_images for row in self.rows)

    @property
    def kept_per_layer(self) -> list[int]:
        """Kept tokens per layer, summed over rows."""
        return [sum(layer) for layer in zip(*(row.kept_per_layer for row in self.rows), strict=True)]

    @property
    def kv_bytes_full(self) -> int:
        """KV bytes of every row's whole prompt."""
        return sum(row.kv_bytes_full for row in self.rows)

    @property
    def kv_bytes_kept(self) -> int:
        """KV bytes of the kept tokens, over all rows."""
        return sum(row.kv_bytes_kept for row in self.rows)

    @property
    def kept_positions(self) -> list[torch.Tensor]:
        """Kept positions per layer of a single-row prefill (`rows[r].kept_positions` in a batch)."""
        return self._single("kept_positions").kept_positions

    @property
    def layer_sparsity(self) -> list[float]:
        """VL-Cache's per-layer sparsity of a single-row prefill."""
        return self._single("layer_sparsity").layer_sparsity


@dataclass
class CompressionReport:
    """Filled in while the context is active; its properties describe the most recent prefill.

    `prefills` holds one record per `generate()`/prefill made inside the context; in a batch its
    totals sum the rows, and `rows` gives each row's own figures. With `record_positions=True`,
    each row also keeps its kept positions per layer ([H_kv, kept], on the CPU, counted from the
    row's first real token) for pictures of what was kept. `layouts` holds each row's token layout.
    `method_states` is a stateful method's state per batch row (STaR-KV's per-layer online
    profile), live while the context runs; `method_state` is row 0's (None for stateless methods).
    """

    config: CompressionConfig
    layouts: list[TokenLayout | None] = field(default_factory=list)
    method_states: list[Any] = field(default_factory=list)
    prefills: list[PrefillRecord] = field(default_factory=list)

    def _last(self) -> PrefillRecord:
        if not self.prefills:
            raise ValueError("no prefill ran inside compress(): call the model or generate() first")
        return self.prefills[-1]

    @property
    def layout(self) -> TokenLayout | None:
        """The token layout of the last single-row prompt (None before a prompt, or for a batch:
        read `layouts`)."""
        return self.layouts[0] if len(self.layouts) == 1 else None

    @property
    def method_state(self) -> Any:
        """Row 0's method state (the only one at batch size 1), or None for stateless methods."""
        return self.method_states[0] if self.method_states else None

    @property
    def rows(self) -> list[RowRecord]:
        """Each batch row's figures in the most recent prefill (one row at batch size 1)."""
        return self._last().rows

    @property
    def prompt_tokens(self) -> int:
        """Uncompressed prompt length L (summed over the rows of a batch)."""
        return self._last().prompt_tokens

    @property
    def kept_per_layer(self) -> list[int]:
        """Kept positions per layer (per KV head: every head keeps the same count; summed over rows)."""
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
    def kv_bytes_stored(self) -> int:
        """KV-cache bytes the cut cache stores, empty slots of a batch's shorter rows included."""
        return self._last().kv_bytes_stored

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
        """Kept positions per layer, [H_kv, kept] each (only with record_positions=True; batch size 1)."""
        return self._last().kept_positions


class _PromptChunks:
    """A prompt being prefilled in chunks: every layer's inputs so far, kept until the cut."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.layers: dict[int, list[LayerForward]] = {}

    def add(self, forward: LayerForward) -> None:
        """Keep one layer's chunk forward (the first one names the cache, if the model made it)."""
        self.cache = forward.cache if self.cache is None else self.cache
        self.layers.setdefault(forward.index, []).append(forward)

    def whole(self, index: int) -> LayerForward:
        """Layer `index`'s prompt as one forward: hidden states and (cos, sin) of every chunk, joined."""
        chunks = self.layers[index]
        last = chunks[-1]
        if len(chunks) == 1:
            return last
        cos = torch.cat([chunk.position_embeddings[0] for chunk in chunks], dim=-2)
        sin = torch.cat([chunk.position_embeddings[1] for chunk in chunks], dim=-2)
        hidden = torch.cat([chunk.hidden_states for chunk in chunks], dim=1)
        return replace(last, hidden_states=hidden, position_embeddings=(cos, sin))


class _Hooks:
    """The per-context state the hooks share: the layout of each row of the current prompt, the
    prompt being chunked (if any), one method object per batch row (a stateful method's state is
    per row) and, for cross-layer methods, the layers scored so far."""

    def __init__(
        self,
        model: nn.Module,
        config: CompressionConfig,
        record_positions: bool,
        chunked_prefill: bool,
        method_state: Any = None,
    ) -> None:
        adapter = adapter_for(model)
        self.adapter = adapter
        self.model_config = model.config
        self.model_name = type(model).__name__
        self.attn_implementation = str(getattr(model.config, "_attn_implementation", None) or "sdpa")
        states = method_state if isinstance(method_state, list) else [method_state]
        self.methods = [build_method(config, state=state) for state in states]
        self.method = self.methods[0]
        self.config = config
        self.image_token_ids = adapter.image_token_ids(model.config)
        if self.method.needs_images and not self.image_token_ids:
            raise ValueError(
                f"CompressionConfig.method={config.method!r} needs image tokens, but "
                f"{type(model).__name__} has no image token id: use snapkv, pyramidkv, streamingllm or random"
            )
        self.attentions = adapter.attention_modules(model)
        if self.method.needs_queries:
            check_attention_module(self.attentions[0])
        self.record_positions = record_positions
        self.chunked_prefill = chunked_prefill
        self.report = CompressionReport(config=config)
        self._publish_states()
        self.merge_size = spatial_merge_size(model.config)
        self.prompt_grids: dict[str, Any] = {}
        self.padding: tuple[int, ...] = (0,)
        self.pending: list[list[tuple[int, LayerContext, LayerStatistics]]] = []
        self.chunks: _PromptChunks | None = None
        self.prompt_ids: torch.Tensor | None = None
        self.cut_before_decode = False
        self.forward_started_empty = False
        self.cached_prefills = 0
        self.verified = not config.verify

    def _publish_states(self) -> None:
        """Expose each row's method state in the report (empty for stateless methods)."""
        states = [getattr(method, "state", None) for method in self.methods]
        self.report.method_states = states if any(state is not None for state in states) else []

    def _methods_for(self, rows: int) -> None:
        """One method object per batch row: rows beyond those known start a fresh state."""
        while len(self.methods) < rows:
            self.methods.append(build_method(self.config))
        self._publish_states()

    def before_model(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Top-level pre-hook: refuse caches that cannot be cut, track which prompt this forward
        belongs to (a new prompt, a further chunk, a decode step, a continuation), and read the
        prompt's token layout from `input_ids`."""
        cache = cache_argument(kwargs)
        _refuse_uncuttable(cache)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        tokens = (
            input_ids.shape[-1] if input_ids is not None else embeds.shape[1] if embeds is not None else 0
        )
        self.forward_started_empty = tokens > 1 and (cache is None or cache.get_seq_length() == 0)
        if tokens <= 1:
            self._finish_chunks()
            self.cut_before_decode = False
            return
        if self.forward_started_empty:
            self._finish_chunks()
            rows = input_ids.shape[0] if input_ids is not None else embeds.shape[0]
            self._start_prompt(input_ids, cache, kwargs, rows, tokens)
        elif self.chunks is not None and cache is self.chunks.cache:
            self._extend_prompt(input_ids, kwargs)
        elif self.cut_before_decode:
            raise RuntimeError(
                "compress(): a forward of several tokens continued a prompt that was already cut, before "
                "any decode step, as a chunked prefill (generate(prefill_chunk_size=...)) does: use "
                "compress(model, config, chunked_prefill=True) to score the whole prompt once (a new turn "
                "must follow at least one decode step)"
            )

    def after_model(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        """Top-level hook: count prompts that were prefilled into a cache, to check at exit that
        every one was scored."""
        if self.forward_started_empty and output_cache(output) is not None:
            self.cached_prefills += 1

    def _start_prompt(
        self, input_ids: torch.Tensor | None, cache: Any, kwargs: dict[str, Any], rows: int, tokens: int
    ) -> None:
        if rows > 1 and self.chunked_prefill:
            raise ValueError(
                f"compress(chunked_prefill=True) takes one prompt at a time, got a batch of {rows}: "
                "drop prefill_chunk_size or run the rows one by one"
            )
        if rows > 1 and self.adapter.layout_builder is not None:
            raise ValueError(
                f"compress(): {self.model_name} expands its image placeholders inside its own forward, "
                f"so a batch of {rows} prompts cannot be laid out per row: run one sample per generate()"
            )
        self.padding = left_padding(kwargs.get("attention_mask"), rows, tokens)
        self._methods_for(rows)
        self.prompt_ids = input_ids
        self.prompt_grids = {
            "image_grid_thw": kwargs.get("image_grid_thw", kwargs.get("grid_thws")),
            "position_ids": kwargs.get("position_ids"),
        }
        self.report.layouts = (
            [
                self.adapter.prompt_layout(self.model_config, input_ids[row : row + 1, pad:], kwargs)
                for row, pad in enumerate(self.padding)
            ]
            if input_ids is not None
            else [None] * rows
        )
        self.chunks = _PromptChunks(cache) if self.chunked_prefill else None
        if self.chunks is None:
            self._attach_grids()

    def _attach_grids(self) -> None:
        """Give each row's layout each screenshot's merged-token grid (from the prefill's
        `image_grid_thw` / `grid_thws`, or its M-RoPE position ids); a grid that does not fit its
        span raises."""
        layouts = self.report.layouts
        images = [layout.num_images if layout is not None else 0 for layout in layouts]
        self.report.layouts = [
            layout.with_grids_from(
                image_grid_thw=row_grids(self.prompt_grids["image_grid_thw"], images, row),
                position_ids=row_positions(self.prompt_grids["position_ids"], row, self.padding[row]),
                merge_size=self.merge_size,
            )
            if layout is not None
            else None
            for row, layout in enumerate(layouts)
        ]

    def _extend_prompt(self, input_ids: torch.Tensor | None, kwargs: dict[str, Any]) -> None:
        if self.adapter.layout_builder is not None:
            raise ValueError(
                f"compress(chunked_prefill=True): {self.model_name} expands its image placeholders inside "
                "its own forward, so its prompt cannot be prefilled in chunks: drop prefill_chunk_size"
            )
        position_ids = kwargs.get("position_ids")
        positions = self.prompt_grids.get("position_ids")
        joinable = (
            positions is not None and position_ids is not None and positions.dim() == position_ids.dim()
        )
        self.prompt_grids["position_ids"] = torch.cat([positions, position_ids], dim=-1) if joinable else None
        if input_ids is None or self.prompt_ids is None:
            self.prompt_ids = None
            self.report.layouts = [None]
            return
        self.prompt_ids = torch.cat([self.prompt_ids, input_ids], dim=-1)
        self.report.layouts = [self.adapter.prompt_layout(self.model_config, self.prompt_ids, kwargs)]

    def _finish_chunks(self) -> None:
        """Chunked prefill: the prompt is complete; score and cut every layer from all its chunks."""
        chunks, self.chunks = self.chunks, None
        if chunks is None or not chunks.layers:
            return
        chunks.cache = None
        self._attach_grids()
        for index in sorted(chunks.layers):
            self._score_layer(chunks.whole(index))
        self.cut_before_decode = True

    def fit_mask(self, layer_idx: int, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Attention pre-hook: over a cut layer, fit the mask's key axis to the physical cache and
        hide the empty slots of a batch's shorter rows."""
        cache = cache_argument(kwargs)
        layer = cache.layers[layer_idx] if cache is not None and layer_idx < len(cache.layers) else None
        mask = kwargs.get("attention_mask")
        if not isinstance(layer, CutLayer) or (mask is not None and not isinstance(mask, torch.Tensor)):
            return None
        fitted = fit_mask(mask, layer, kwargs["hidden_states"].shape[1], self.attn_implementation)
        return args, {**kwargs, "attention_mask": fitted}

    def after_prefill(self, prefill: LayerForward) -> None:
        """On a layer's prefill: score and cut it now, or keep it as the first chunk."""
        if self.chunks is not None:
            self.chunks.add(prefill)
            return
        self._score_layer(prefill)
        if prefill.index == len(self.attentions) - 1:
            self.cut_before_decode = True

    def after_extend(self, forward: LayerForward) -> None:
        """On a multi-token forward over a non-empty layer: keep it if it is a chunk of the prompt
        being prefilled; a continuation of an already cut cache is appended as it is."""
        if self.chunks is not None and forward.cache is self.chunks.cache:
            self.chunks.add(forward)

    def _row_layouts(self, length: int) -> list[TokenLayout]:
        """Each row's layout of a prefill of `length` columns (text-only when none fits)."""
        rows = len(self.padding)
        layouts = self.report.layouts if len(self.report.layouts) == rows else [None] * rows
        return [
            layout if layout is not None and layout.length == length - pad else TokenLayout(length - pad, ())
            for layout, pad in zip(layouts, self.padding, strict=True)
        ]

    def _score_layer(self, prefill: LayerForward) -> None:
        """Score one layer's whole prompt, row by row, and cut its cache (VL-Cache: once every layer
        is scored)."""
        start = time.perf_counter()
        layer_idx, keys, length = prefill.index, prefill.keys, prefill.length
        layouts = self._row_layouts(length)
        if layer_idx == 0:
            self._open_record(layouts, keys)
        if self.method.needs_images and not all(layout.image_spans for layout in layouts):
            raise ValueError(
                f"CompressionConfig.method={self.config.method!r} needs image tokens in the prompt, "
                "found none (pass input_ids with the processor's image placeholders)"
            )
        windows = [method.window(layout) for method, layout in zip(self.methods, layouts, strict=False)]
        queries = (
            window_queries(
                prefill.attention, prefill.hidden_states, prefill.position_embeddings, max(windows)
            )
            if self.method.needs_queries
            else None
        )
        if not self.verified:
            self._verify(prefill, queries)
        batch_ctx = LayerContext(
            keys=keys,
            layout=layouts[0],
            capacity=0,
            layer_idx=layer_idx,
            num_layers=len(self.attentions),
            queries=queries,
            hidden_states=prefill.hidden_states,
            scaling=getattr(prefill.attention, "scaling", None),
        )
        contexts = [
            batch_ctx.row(row, pad, layout, uniform_capacity(layout.length, self.config.budget), window)
            for row, (pad, layout, window) in enumerate(zip(self.padding, layouts, windows, strict=False))
        ]
        if isinstance(self.method, VLCache):
            for row, ctx in enumerate(contexts):
                stats = self.methods[row].statistics(ctx)
                self.pending[row].append((layer_idx, replace(ctx, hidden_states=None), stats))
            if layer_idx == len(self.attentions) - 1:
                self._cut_all_pending(prefill.cache)
        else:
            keeps = [method.select(ctx) for method, ctx in zip(self.methods, contexts, strict=False)]
            self._cut(prefill.cache, layer_idx, keeps)
        if keys.is_cuda:
            torch.cuda.synchronize(keys.device)
        self.report.prefills[-1].scoring_seconds += time.perf_counter() - start

    def _open_record(self, layouts: list[TokenLayout], keys: torch.Tensor) -> None:
        """A new prefill: one record row per batch row, with its full-cache bytes."""
        full = [
            len(self.attentions) * kv_bytes(layout.length, keys.shape[1], keys.shape[3], keys.dtype)
            for layout in layouts
        ]
        rows = [
            RowRecord(prompt_tokens=layout.length, num_images=layout.num_images, kv_bytes_full=bytes_full)
            for layout, bytes_full in zip(layouts, full, strict=True)
        ]
        self.report.prefills.append(PrefillRecord(rows=rows))
        self.pending = [[] for _ in layouts]

    def _verify(self, prefill: LayerForward, queries: torch.Tensor | None) -> None:
        """Debug mode: check the rebuilt window queries against the kernel's output, once (on the
        batch's first row)."""
        self.verified = True
        if queries is None:
            queries = window_queries(
                prefill.attention, prefill.hidden_states, prefill.position_embeddings, self.method.window_size
            )
        output = prefill.output[0] if isinstance(prefill.output, tuple) else prefill.output
        pad = self.padding[0]
        verify_window_queries(
            prefill.attention,
            queries[:1, :, -min(queries.shape[2], prefill.length - pad) :],
            prefill.keys[:1, :, pad:],
            prefill.values[:1, :, pad:],
            output[:1, pad:],
        )

    def _cut_all_pending(self, cache: Any) -> None:
        """VL-Cache: every layer has been scored; allocate each row's budgets and cut every layer."""
        keeps_per_layer: list[list[torch.Tensor]] = [[] for _ in self.attentions]
        for row, pending in enumerate(self.pending):
            first = pending[0][1]
            sparsities = [stats.layer_sparsity for _, _, stats in pending]
            self.report.prefills[-1].rows[row].layer_sparsity = sparsities
            budgets = allocate_budgets(sparsities, first.capacity, first.length)
            for (layer_idx, ctx, stats), budget in zip(pending, budgets, strict=True):
                keeps_per_layer[layer_idx].append(self.methods[row].select_with_budget(ctx, budget, stats))
        for layer_idx, keeps in enumerate(keeps_per_layer):
            self._cut(cache, layer_idx, keeps)
        self.pending = [[] for _ in self.pending]

    def _cut(self, cache: Any, layer_idx: int, keeps: list[torch.Tensor]) -> None:
        """Cut layer `layer_idx` to each row's kept positions (`keeps[r]` [1, H_kv, C_r], counted
        from the row's first real token); a layer where every row keeps its whole prompt stays."""
        layer = cache.layers[layer_idx]
        record = self.report.prefills[-1]
        kv_heads, head_dim, dtype = layer.keys.shape[1], layer.keys.shape[3], layer.keys.dtype
        padded = [keep[0] + pad for keep, pad in zip(keeps, self.padding, strict=True)]
        whole = all(
            keep.shape[-1] == row.prompt_tokens for keep, row in zip(padded, record.rows, strict=True)
        )
        if not whole:
            cache.layers[layer_idx] = cut_rows(layer, padded)
            share_cache(cache.layers)
        record.kv_bytes_stored += stored_kv_bytes(cache.layers[layer_idx])
        for row, keep in zip(record.rows, keeps, strict=True):
            row.kept_per_layer.append(int(keep.shape[-1]))
            row.kv_bytes_kept += kv_bytes(keep.shape[-1], kv_heads, head_dim, dtype)
            if self.record_positions:
                row.kept_positions.append(keep[0].cpu())

    def finish(self) -> None:
        """On leaving the context: cut a chunked prompt still open, then make sure every cached
        prefill was scored in every layer, or raise."""
        self._finish_chunks()
        layers = len(self.attentions)
        incomplete = [
            record
            for record in self.report.prefills
            if any(len(row.kept_per_layer) != layers for row in record.rows)
        ]
        if self.cached_prefills > len(self.report.prefills) or incomplete:
            raise RuntimeError(
                f"compress(): {self.model_name} ran {self.cached_prefills} prefill(s) into a cache but "
                f"{len(self.report.prefills) - len(incomplete)} were scored and cut in all {layers} "
                "decoder layers: expected each attention module to receive its cache as `cache=` or "
                "`past_key_values=` and its input as `hidden_states=`; nothing was compressed"
            )


def _refuse_uncuttable(cache: Any) -> None:
    """Refuse a cache whose layers cannot be cut: a static cache (fixed-size tensors), or
    sliding-window layers (they evict on their own)."""
    if cache is None:
        return
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ValueError(f"compress() needs a cache with per-layer tensors, got {type(cache).__name__}")
    for layer in layers:
        if not isinstance(layer, DynamicLayer) or getattr(layer, "is_sliding", False):
            raise ValueError(
                f"compress() cannot cut a {type(cache).__name__} with {type(layer).__name__} layers "
                "(a static or sliding-window cache): use the default DynamicCache (no cache_implementation)"
            )


@contextmanager
def compress(
    model: nn.Module,
    config: CompressionConfig,
    *,
    record_positions: bool = False,
    chunked_prefill: bool = False,
    method_state: Any = None,
) -> Iterator[CompressionReport]:
    """Compress the KV cache of every prefill run inside the context; yields the report.

    Works with any attention implementation (eager, sdpa, flash_attention_2): scores never need
    the kernel's attention weights. A left-padded batch is compressed row by row: each row keeps
    what it would keep alone, and `report.rows` has each row's figures. With
    `chunked_prefill=True` a prompt may be prefilled in several forwards
    (`generate(..., prefill_chunk_size=N)`): each layer's chunk inputs are kept (the layer's hidden
    states, L x hidden_size) until the prompt is complete, then it is scored and cut once, exactly
    as the unchunked prompt would be. Raises `RuntimeError` on exit if a prefill into a cache ran
    but was not compressed.

    A stateful method (STaR-KV) starts from an empty state, or continues `method_state` (the
    `report.method_state` of an earlier context) when given: its prefills then see the state the
    earlier context left, as one longer context would. For a batch, pass one state per row (a list;
    rows without one start empty). A given state is never changed: the context continues a copy
    (`report.method_state`, `report.method_states` in a batch) for the caller to adopt once its
    step has succeeded.
    """
    hooks = _Hooks(model, config, record_positions, chunked_prefill, method_state)
    handles = [
        model.register_forward_pre_hook(hooks.before_model, with_kwargs=True),
        model.register_forward_hook(hooks.after_model, with_kwargs=True),
    ]
    try:
        with (
            mask_fitting(),
            attention_hooks(
                hooks.attentions,
                on_prefill=hooks.after_prefill,
                on_extend=hooks.after_extend,
                before=hooks.fit_mask,
            ),
        ):
            yield hooks.report
        hooks.finish()
    finally:
        for handle in handles:
            handle.remove()
