"""The compression methods, by name, and `select_tokens` to run one on plain tensors."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import torch

from guikv.config import METHODS, CompressionConfig
from guikv.layout import Grid, Span, TokenLayout
from guikv.methods.base import LayerContext, Method
from guikv.methods.full import FullCache
from guikv.methods.gui_kv import GUIKV
from guikv.methods.pyramidkv import PyramidKV
from guikv.methods.random import RandomEviction
from guikv.methods.snapkv import SnapKV
from guikv.methods.st_lite import STLite
from guikv.methods.star_kv import StarKV
from guikv.methods.streamingllm import StreamingLLM
from guikv.methods.vlcache import VLCache

METHOD_CLASSES: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (FullCache, SnapKV, PyramidKV, VLCache, GUIKV, STLite, StarKV, StreamingLLM, RandomEviction)
}
assert tuple(METHOD_CLASSES) == METHODS

CONFIG_TO_METHOD_FIELD = {"pyramid_beta": "beta", "sparsity_threshold": "threshold"}


def build_method(config: CompressionConfig, state: Any = None) -> Method:
    """The method object a config describes, with the config's knobs that the method uses (a
    method field takes the config field of the same name).

    A stateful method (one with a `state` field, e.g. STaR-KV's online profile) starts from an
    empty state unless `state` (a previous method object's `state`) is given to continue it. The
    method continues a copy: `state` itself is never changed, so a step that fails after some
    prefills leaves its caller's state as it was (a retry sees what the first try saw), and the
    caller adopts the method's `state` once the step has succeeded.
    """
    cls = METHOD_CLASSES[config.method]
    accepted = {f.name for f in fields(cls)}
    params = {CONFIG_TO_METHOD_FIELD.get(k, k): v for k, v in config.to_dict().items()}
    if state is not None:
        if "state" not in accepted:
            raise ValueError(f"method {config.method!r} keeps no state: got state={type(state).__name__}")
        params["state"] = copy.deepcopy(state)
    return cls(**{k: v for k, v in params.items() if k in accepted})


def select_tokens(
    method: str,
    *,
    queries: torch.Tensor | None = None,
    keys: torch.Tensor,
    hidden_states: torch.Tensor | None = None,
    image_spans: Sequence[Span] | Sequence[Sequence[Span]] = (),
    image_grids: Sequence[Grid | None] | Sequence[Sequence[Grid | None]] = (),
    capacity: int | Sequence[int],
    lengths: Sequence[int] | None = None,
    layer_idx: int = 0,
    num_layers: int = 1,
    **params: Any,
) -> Any:
    """Kept positions per KV head, ascending: a LongTensor [B, H_kv, kept].

    `queries` [B, H, w, d] are window queries after RoPE (w at least the method's window),
    `keys` [B, H_kv, L, d] keys after RoPE, `hidden_states` [B, L, D] the attention module's
    input, `image_spans` half-open token ranges (the last is the current screenshot),
    `image_grids` (optional) each span's merged-token grid (rows, columns), and `capacity` the
    uniform per-layer count (window included). PyramidKV derives layer
    `layer_idx`'s own count from it; VL-Cache takes it as this layer's budget. `params` are the
    method's knobs (window_size, alpha, temperature, kernel_size, pooling, rank, ...).

    Per-row form, for a left-padded batch whose rows differ: give `lengths` (each row's real
    tokens, its padding being the first L - length columns), and/or `image_spans`, `image_grids`
    and `capacity` as one entry per row (spans counted from the row's first real token). Each row
    is then selected on its own tensors, and the result is a list of [H_kv, kept_r] LongTensors,
    one per row, counted from the row's first real token (rows keep different counts).
    """
    if method not in METHOD_CLASSES:
        raise ValueError(f"method={method!r} is unknown: expected one of {', '.join(METHODS)}")
    rows, length = int(keys.shape[0]), int(keys.shape[2])
    per_row = lengths is not None or not isinstance(capacity, int) or _nested(image_spans)
    capacities = _row_values(capacity, rows, per_row and not isinstance(capacity, int), "capacity")
    for value in capacities:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"capacity={value} is invalid: expected an integer >= 1")
    config_fields = {f.name for f in fields(CompressionConfig)}
    unknown = sorted(set(params) - config_fields)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for select_tokens: expected some of {sorted(config_fields)}"
        )
    config = CompressionConfig(method=method, **params)
    if not per_row:
        layout = _row_layout(length, image_spans, image_grids)
        ctx = LayerContext(keys, layout, capacity, layer_idx, num_layers, queries, hidden_states)
        return _checked(build_method(config), ctx).select(ctx)
    row_lengths = list(lengths) if lengths is not None else [length] * rows
    if len(row_lengths) != rows or any(not 0 < n <= length for n in row_lengths):
        raise ValueError(f"lengths={row_lengths} is invalid: expected {rows} row lengths in 1..{length}")
    spans = _row_values(image_spans, rows, _nested(image_spans), "image_spans")
    grids = _row_values(image_grids, rows, _nested(image_grids), "image_grids")
    batch = LayerContext(keys, TokenLayout(length, ()), 0, layer_idx, num_layers, queries, hidden_states)
    kept = []
    for row in range(rows):
        built = build_method(config)
        layout = _row_layout(row_lengths[row], spans[row], grids[row])
        ctx = batch.row(row, length - row_lengths[row], layout, capacities[row], built.window(layout))
        kept.append(_checked(built, ctx).select(ctx)[0])
    return kept


def _nested(values: Sequence[Any]) -> bool:
    """True when `values` holds one sequence per batch row (a list of span or grid lists)."""
    first = values[0] if len(values) else None
    return isinstance(first, Sequence) and (not first or first[0] is None or isinstance(first[0], Sequence))


def _row_values(values: Any, rows: int, per_row: bool, name: str) -> list[Any]:
    """`values` as one entry per batch row (repeated when it is shared by all rows)."""
    if not per_row:
        return [values] * rows
    if len(values) != rows:
        raise ValueError(f"{name} lists {len(values)} rows: expected one entry per batch row ({rows})")
    return list(values)


def _row_layout(length: int, image_spans: Sequence[Span], image_grids: Sequence[Grid | None]) -> TokenLayout:
    """One row's layout from its spans and (optional) grids."""
    layout = TokenLayout(length=length, image_spans=tuple(tuple(s) for s in image_spans))
    return layout.with_grids(image_grids) if image_grids else layout


def _checked(built: Method, ctx: LayerContext) -> Method:
    """`built`, after checking that `ctx` holds what it needs (image spans, enough window queries)."""
    if built.needs_images and not ctx.layout.image_spans:
        raise ValueError(f"method {built.name!r} needs image_spans: got none")
    if built.needs_queries:
        if ctx.queries is None:
            raise ValueError(f"method {built.name!r} needs queries [B, H, w, d]: got None")
        needed = built.window(ctx.layout)
        if ctx.queries.shape[2] < needed:
            raise ValueError(
                f"queries hold {ctx.queries.shape[2]} window rows: method {built.name!r} needs {needed}"
            )
    return built


__all__ = ["METHOD_CLASSES", "LayerContext", "Method", "build_method", "select_tokens"]
