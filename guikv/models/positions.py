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
