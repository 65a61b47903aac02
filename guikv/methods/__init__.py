"""The compression methods, by name, and `select_tokens` to run one on plain tensors."""

from __future__ import annotations

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
    empty state unless `state` (a previous method object's `state`) is given to continue it.
    """
    cls = METHOD_CLASSES[config.method]
    accepted = {f.name for f in fields(cls)}
    params = {CONFIG_TO_METHOD_FIELD.get(k, k): v for k, v in config.to_dict().items()}
    if state is not None:
        if "state" not in accepted:
            raise ValueError(f"method {config.method!r} keeps no state: got state={type(state).__name__}")
        params["state"] = state
    return cls(**{k: v for k, v in params.items() if k in accepted})


def select_tokens(
    method: str,
    *,
    queries: torch.Tensor | None = None,
    keys: torch.Tensor,
    hidden_states: torch.Tensor | None = None,
    image_spans: Sequence[Span] = (),
    image_grids: Sequence[Grid | None] = (),
    capacity: int,
    layer_idx: int = 0,
    num_layers: int = 1,
    **params: Any,
) -> torch.Tensor:
    """Kept positions per KV head, ascending: a LongTensor [B, H_kv, kept].

    `queries` [B, H, w, d] are window queries after RoPE (w at least the method's window),
    `keys` [B, H_kv, L, d] keys after RoPE, `hidden_states` [B, L, D] the attention module's
    input, `image_spans` half-open token ranges (the last is the current screenshot),
    `image_grids` (optional) each span's merged-token grid (rows, columns), and `capacity` the
    uniform per-layer count (window included). PyramidKV derives layer
    `layer_idx`'s own count from it; VL-Cache takes it as this layer's budget. `params` are the
    method's knobs (window_size, alpha, temperature, kernel_size, pooling, rank, ...).
    """
    if method not in METHOD_CLASSES:
        raise ValueError(f"method={method!r} is unknown: expected one of {', '.join(METHODS)}")
    if capacity < 1:
        raise ValueError(f"capacity={capacity} is invalid: expected an integer >= 1")
    config_fields = {f.name for f in fields(CompressionConfig)}
    unknown = sorted(set(params) - config_fields)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for select_tokens: expected some of {sorted(config_fields)}"
        )
    built = build_method(CompressionConfig(method=method, **params))
    layout = TokenLayout(length=int(keys.shape[2]), image_spans=tuple(tuple(s) for s in image_spans))
    layout = layout.with_grids(image_grids) if image_grids else layout
    if built.needs_images and not layout.image_spans:
        raise ValueError(f"method {method!r} needs image_spans: got none")
    if built.needs_queries:
        if queries is None:
            raise ValueError(f"method {method!r} needs queries [B, H, w, d]: got None")
        needed = built.window(layout)
        if queries.shape[2] < needed:
            raise ValueError(f"queries hold {queries.shape[2]} window rows: method {method!r} needs {needed}")
    ctx = LayerContext(
        keys=keys,
        layout=layout,
        capacity=capacity,
        layer_idx=layer_idx,
        num_layers=num_layers,
        queries=queries,
        hidden_states=hidden_states,
    )
    return built.select(ctx)


__all__ = ["METHOD_CLASSES", "LayerContext", "Method", "build_method", "select_tokens"]
