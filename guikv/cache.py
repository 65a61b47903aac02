"""Cutting a transformers cache layer down to kept positions, and what a cache costs in bytes.

A cut layer becomes a `CutLayer`: its tensors hold only the kept entries, but it reports the
*logical* length (prompt tokens seen plus tokens appended since), which is what transformers reads
to slice new input and to place new tokens (`cache.get_seq_length()`). A continuation therefore
feeds only its new tokens, at the right positions, on a compressed cache.

Masks: a cut layer tells transformers' mask builder its stored length and how far the logical
positions run ahead of it (`get_mask_sizes`), so a single-row cache whose layers all evicted as many
tokens decodes and continues correctly with no hook at all, also after `compress()` has exited.

In a batch, rows keep different counts: each row's kept entries are right-aligned in `prompt_slots`
slots (the largest row's count), and the leading `slot_padding[row]` slots of a shorter row hold no
token. `fit_mask` rewrites every later forward's attention mask so those slots are never seen (and
fits it to each layer when layers keep different counts, as PyramidKV and VL-Cache do). Only
`compress()`'s attention pre-hook applies it, so such a cache refuses to run outside a
`compress()` context (`mask_fitting`) instead of attending with a wrong mask.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

_MASK_FITTING: ContextVar[bool] = ContextVar("guikv_mask_fitting", default=False)


@contextmanager
def mask_fitting() -> Iterator[None]:
    """Mark the code inside as running under `compress()`'s mask pre-hook, which fits every
    attention mask to each cut layer (a cut cache needing that fit may run only here)."""
    token = _MASK_FITTING.set(True)
    try:
        yield
    finally:
        _MASK_FITTING.reset(token)


class CutLayer(DynamicLayer):
    """A dynamic cache layer whose prompt was cut to kept positions.

    `keys`/`values` [B, H_kv, prompt_slots + appended, d] are the physical tensors;
    `get_seq_length()` returns the logical length, so every caller of transformers that positions or
    slices tokens by the cache length sees the uncompressed sequence. `physical_length` is what is
    stored. `slot_padding[row]` leading prompt slots of each row hold no token (rows of a batch keep
    different counts); all zero for a single row.
    """

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        logical_length: int,
        slot_padding: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.keys = keys
        self.values = values
        self.device = keys.device
        self.dtype = keys.dtype
        self.is_initialized = True
        self.logical_length = logical_length
        self.prompt_slots = int(keys.shape[-2])
        self.slot_padding = tuple(slot_padding) if slot_padding is not None else (0,) * int(keys.shape[0])
        self.siblings: Sequence[Any] = (self,)

    def share_cache(self, layers: Sequence[Any]) -> None:
        """Know the other layers of the cache this layer belongs to (`cache.layers`, read at each
        forward), to tell whether one mask built for the whole cache fits this layer."""
        self.siblings = layers

    @property
    def evicted(self) -> int:
        """How far the logical length runs ahead of what is stored: the tokens cut away."""
        return self.logical_length - self.physical_length

    def get_mask_sizes(self, query: torch.Tensor | int, *args: Any) -> tuple[int, int]:
        """(kv_length, kv_offset) for transformers' mask builder: the stored entries plus the new
        queries, numbered so that the stored tokens come before every new query and the tokens
        appended since the cut sit at their logical positions. `query` is the query length
        (transformers >= 5.25) or the queries' cache positions (earlier 5.x)."""
        query_length = query if isinstance(query, int) else int(query.shape[0])
        return self.physical_length + query_length, self.evicted

    def slot_visibility(self) -> torch.Tensor:
        """[B, prompt_slots] bool: True where a prompt slot holds a kept token."""
        slots = torch.arange(self.prompt_slots, device=self.keys.device)
        padding = torch.tensor(self.slot_padding, device=self.keys.device)
        return slots[None, :] >= padding[:, None]

    @property
    def physical_length(self) -> int:
        """Entries actually stored per KV head."""
        return int(self.keys.shape[-2])

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new entries; the logical length grows by as many tokens. Outside `compress()`,
        refuse a cache whose mask this layer cannot take as transformers builds it."""
        if not _MASK_FITTING.get():
            self._check_standalone()
        self.logical_length += int(key_states.shape[-2])
        return super().update(key_states, value_states, *args, **kwargs)

    def _check_standalone(self) -> None:
        """Raise unless one mask built from any layer's sizes fits this one: no empty slots, and
        every layer of the cache evicted as many tokens (transformers builds one mask per forward
        from the first layer)."""
        evicted = {layer.get_seq_length() - physical_length(layer) for layer in self.siblings}
        if any(self.slot_padding) or len(evicted) > 1:
            reason = (
                "its batch rows kept different counts"
                if any(self.slot_padding)
                else "its layers kept different counts (PyramidKV, VL-Cache)"
            )
            raise RuntimeError(
                f"this compressed cache can only run inside `with guikv.compress(model, config):`, as "
                f"{reason} and only compress() fits the attention mask to each layer: continue it inside a "
                "compress() context"
            )

    def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
        """The logical length: every token the model has seen, evicted or not."""
        return self.logical_length if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the newest `-tokens_to_remove` entries (transformers' negative convention)."""
        if tokens_to_remove > 0:
            raise ValueError(f"CutLayer.crop takes a negative token count, got {tokens_to_remove}")
        removed = min(-tokens_to_remove, self.physical_length)
        kept = self.physical_length - removed
        self.keys = self.keys[..., :kept, :]
        self.values = self.values[..., :kept, :]
        self.logical_length -= removed
        self.prompt_slots = min(self.prompt_slots, self.physical_length)
        self.slot_padding = tuple(min(pad, self.prompt_slots) for pad in self.slot_padding)

    def reset(self) -> None:
        """Empty the layer (logical length 0)."""
        super().reset()
        self.logical_length = 0
        self.prompt_slots = 0
        self.slot_padding = (0,) * len(self.slot_padding)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows `indices` (their slot padding with them)."""
        super().batch_select_indices(indices)
        self.slot_padding = tuple(self.slot_padding[i] for i in torch.as_tensor(indices).reshape(-1).tolist())

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every batch row `repeats` times (their slot padding with them)."""
        super().batch_repeat_interleave(repeats)
        self.slot_padding = tuple(pad for pad in self.slot_padding for _ in range(repeats))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the batch rows for beam search (their slot padding with them)."""
        super().reorder_cache(beam_idx)
        self.slot_padding = tuple(self.slot_padding[i] for i in beam_idx.reshape(-1).tolist())


def physical_length(layer: Any) -> int:
    """Entries a cache layer actually stores (0 before its first update)."""
    keys = getattr(layer, "keys", None)
    if not getattr(layer, "is_initialized", False) or keys is None or keys.dim() < 3:
        return 0
    return int(keys.shape[-2])


def share_cache(layers: Sequence[Any]) -> None:
    """Tell every cut layer among `layers` (a cache's `layers` list) which cache it belongs to."""
    for layer in layers:
        if isinstance(layer, CutLayer):
            layer.share_cache(layers)


def cut_layer(layer: Any, keep: torch.Tensor) -> CutLayer:
    """A `CutLayer` holding a layer's keys and values [B, H_kv, L, d] at the kept positions
    `keep` [B, H_kv, C] (per KV head, ascending), with the layer's logical length."""
    index = keep[..., None].expand(-1, -1, -1, layer.keys.shape[-1])
    return CutLayer(
        layer.keys.gather(2, index).contiguous(),
        layer.values.gather(2, index).contiguous(),
        logical_length=layer.get_seq_length(),
    )


def cut_rows(layer: Any, keeps: Sequence[torch.Tensor]) -> CutLayer:
    """A `CutLayer` for a batch whose rows keep different counts: row r keeps the positions
    `keeps[r]` [H_kv, C_r] (indices into the padded row, ascending), right-aligned in
    max(C_r) slots; the leading slots of a shorter row are padding (`slot_padding`)."""
    slots = max(int(keep.shape[-1]) for keep in keeps)
    padding = [slots - int(keep.shape[-1]) for keep in keeps]
    rows = [
        torch.cat([keep.new_zeros(keep.shape[0], pad), keep], dim=-1)
        for keep, pad in zip(keeps, padding, strict=True)
    ]
    index = torch.stack(rows)
    gather = index[..., None].expand(-1, -1, -1, layer.keys.shape[-1])
    return CutLayer(
        layer.keys.gather(2, gather).contiguous(),
        layer.values.gather(2, gather).contiguous(),
        logical_length=layer.get_seq_length(),
        slot_padding=padding,
    )


def kv_bytes(tokens: int, kv_heads: int, head_dim: int, dtype: torch.dtype, batch: int = 1) -> int:
    """Bytes of keys plus values for `tokens` positions of one layer."""
    return 2 * batch * kv_heads * tokens * head_dim * torch.empty((), dtype=dtype).element_size()


def stored_kv_bytes(layer: Any) -> int:
    """Bytes of keys plus values a cache layer stores: every row's physical entries, the empty
    slots of a batch's shorter rows included (0 before its first update)."""
    if physical_length(layer) == 0:
        return 0
    keys = layer.keys
    return kv_bytes(physical_length(layer), keys.shape[1], keys.shape[3], keys.dtype, keys.shape[0])


def fit_mask(mask: torch.Tensor | None, layer: CutLayer, query_length: int, attn_implementation: str) -> Any:
    """The attention mask a forward over a cut layer needs: its key axis fitted to the physical
    cache, with every row's empty prompt slots masked.

    Transformers builds the mask for the *logical* length. Its last columns (tokens appended after
    the cut, then this forward's) are kept as they are; the prompt's columns are replaced by each
    row's slot visibility. Works for 4-D masks (sdpa's bool, eager's additive float) and 2-D
    padding masks (flash-attention's varlen path). A missing mask (a decode step with no padding)
    stays missing unless some slot is empty; then one is built in the kernel's own form.
    """
    visible = layer.slot_visibility()
    tail = layer.physical_length - layer.prompt_slots + query_length
    if mask is None:
        if all(pad == 0 for pad in layer.slot_padding):
            return None
        if query_length != 1:
            raise ValueError(
                f"a forward of {query_length} tokens on a cut batch cache came without an attention mask"
            )
        mask = _open_mask(layer, tail, attn_implementation)
    if mask.dim() == 2:
        prompt = visible.to(mask.dtype)
    else:
        prompt = _mask_values(visible, mask)[:, None, None, :].expand(*mask.shape[:-1], layer.prompt_slots)
    return torch.cat([prompt, mask[..., mask.shape[-1] - tail :]], dim=-1)


def _open_mask(layer: CutLayer, tail: int, attn_implementation: str) -> torch.Tensor:
    """A one-query mask that sees every key, in the form the kernel takes: 2-D ints for
    flash-attention, an additive float 4-D mask for eager, a bool 4-D mask otherwise."""
    batch = int(layer.keys.shape[0])
    if attn_implementation.startswith("flash"):
        return torch.ones(batch, tail, dtype=torch.long, device=layer.keys.device)
    if attn_implementation == "eager":
        return torch.zeros(batch, 1, 1, tail, dtype=layer.dtype, device=layer.keys.device)
    return torch.ones(batch, 1, 1, tail, dtype=torch.bool, device=layer.keys.device)


def _mask_values(visible: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`visible` [B, S] in the value convention of the mask `like`: bool as is, an additive
    float mask 0 where visible and the dtype's minimum elsewhere."""
    if like.dtype == torch.bool:
        return visible
    hidden = torch.tensor(torch.finfo(like.dtype).min, dtype=like.dtype, device=like.device)
    return torch.where(visible, torch.zeros((), dtype=like.dtype, device=like.device), hidden)


def stack_rows(caches: Sequence[Any]) -> Any:
    """One batch cache from the caches of prompts prefilled one at a time (each one row, holding
    only its prompt, cut or whole): the cache `compress()` leaves after prefilling them as one
    left-padded batch. In every layer each row's entries are right-aligned in the largest row's
    count, the leading slots of a shorter row are empty (`slot_padding`, hidden by `fit_mask`), and
    the logical length is the longest prompt's (the padded batch's length).

    Returns the first cache with its layers replaced; raises `ValueError` for a cache of several
    rows or one that already holds tokens appended after its prompt.
    """
    batch = caches[0]
    for index in range(len(batch.layers)):
        layers = [cache.layers[index] for cache in caches]
        for layer in layers:
            appended = isinstance(layer, CutLayer) and layer.physical_length != layer.prompt_slots
            if int(layer.keys.shape[0]) != 1 or appended:
                raise ValueError(
                    "stack_rows() takes single-row caches holding only their prompt "
                    f"(layer {index}: {int(layer.keys.shape[0])} rows, appended tokens: {appended})"
                )
        slots = max(physical_length(layer) for layer in layers)
        padding = [slots - physical_length(layer) for layer in layers]
        batch.layers[index] = CutLayer(
            torch.cat([_pad_slots(layer.keys, pad) for layer, pad in zip(layers, padding, strict=True)]),
            torch.cat([_pad_slots(layer.values, pad) for layer, pad in zip(layers, padding, strict=True)]),
            logical_length=max(layer.get_seq_length() for layer in layers),
            slot_padding=padding,
        )
    share_cache(batch.layers)
    return batch


def _pad_slots(tensor: torch.Tensor, slots: int) -> torch.Tensor:
    """[1, H_kv, n, d] with `slots` zero entries put in front (slots no mask lets a query see)."""
    return torch.nn.functional.pad(tensor, (0, 0, slots, 0)) if slots else tensor
