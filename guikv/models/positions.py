"""The position state a model keeps between its prefill and its decode steps, set for a batch whose
rows were prefilled one at a time.

Qwen-VL places decode tokens with a per-row M-RoPE offset (`rope_deltas`) that its prefill stores
on the model. Rows prefilled one by one leave only the last row's offset, so before they decode
together the padded batch's offsets are computed by the model's own `get_rope_index`, exactly as a
prefill of the left-padded batch would have stored them (transformers changed both the offsets'
convention and that method's signature within 5.x; calling it keeps the two consistent).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def no_position_state(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> None:
    """Families whose decode positions follow from the attention mask alone."""


def qwen_vl_batch_positions(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> None:
    """Store on a Qwen-VL model the M-RoPE offsets of the left-padded prompt batch `batch`
    (`guikv.batch.left_padded`), for decoding its rows together."""
    inner: Any = model.model
    parameters = inspect.signature(inner.get_rope_index).parameters
    arguments = {name: value for name, value in batch.items() if name in parameters and name != "input_ids"}
    _, deltas = inner.get_rope_index(batch["input_ids"], **arguments)
    inner.rope_deltas = deltas


def qwen_vl_turn_positions(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], start: int
) -> tuple[torch.Tensor, int]:
    """M-RoPE position ids [3, 1, n] of one turn's tokens `inputs` (a processor output of one row,
    its images' `image_grid_thw` only) fed on top of a conversation whose next position is
    `start`, and the next position after them. The model's own `get_rope_index` lays the turn out
    from 0; a whole-conversation prefill lays it out from `start`, identically, since every turn
    starts after text."""
    inner: Any = model.model
    parameters = inspect.signature(inner.get_rope_index).parameters
    arguments = {name: value for name, value in inputs.items() if name in parameters and name != "input_ids"}
    positions, _ = inner.get_rope_index(inputs["input_ids"], **arguments)
    positions = positions + start
    return positions, int(positions.max()) + 1


def qwen_vl_decode_offset(model: nn.Module, offset: int) -> None:
    """Make `generate()` place decode tokens at M-RoPE position `logical position + offset`."""
    inner: Any = model.model
    inner.rope_deltas = torch.tensor([[offset]], dtype=torch.long, device=model.device)
