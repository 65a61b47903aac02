"""A cut cache after `compress()` has exited: a single-row cache whose layers all evicted as many
tokens decodes and continues exactly as inside the context (the cut layer gives transformers' mask
builder its stored length); a cache that needs compress()'s per-layer mask fit is refused with one
clear error instead of running with a wrong mask."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_engine_trust import continue_conversation, greedy

from guikv import CompressionConfig, compress
from guikv.cache import CutLayer, stack_rows
from guikv.hooks import output_cache


def follow_up(inputs: dict, sequences: torch.Tensor) -> dict:
    """Inputs that continue `sequences` (prompt + generated tokens) with no new turn."""
    follow = {"input_ids": sequences, "attention_mask": torch.ones_like(sequences)}
    if "mm_token_type_ids" in inputs:
        types = inputs["mm_token_type_ids"]
        extra = types.new_zeros(1, sequences.shape[1] - types.shape[1])
        follow["mm_token_type_ids"] = torch.cat([types, extra], dim=1)
    return follow


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_cut_cache_decodes_after_the_context_as_inside_it(request, make_inputs, attn: str):
    model, processor = request.getfixturevalue(f"tiny_{attn}")
    inputs = make_inputs(processor, 2)
    config = CompressionConfig(method="gui_kv", budget=10)
    with compress(model, config):
        inside = greedy(model, inputs, new_tokens=6, output_logits=True)
    with compress(model, config):
        first = greedy(model, inputs, new_tokens=1)
    cache = output_cache(first)
    assert isinstance(cache.layers[0], CutLayer)
    assert cache.layers[0].physical_length < inputs["input_ids"].shape[1]
    after = greedy(
        model, follow_up(inputs, first.sequences), new_tokens=5, output_logits=True, past_key_values=cache
    )
    assert torch.equal(after.sequences, inside.sequences)
    for outside_logits, inside_logits in zip(after.logits, inside.logits[1:], strict=True):
        assert torch.allclose(outside_logits, inside_logits, atol=1e-5)


def test_a_new_turn_on_a_cut_cache_after_the_context_equals_one_inside_it(tiny_sdpa, make_inputs):
    model, processor = tiny_sdpa
    inputs = make_inputs(processor, 2)
    config = CompressionConfig(method="snapkv", budget=20)
    with compress(model, config):
        first = greedy(model, inputs)
        follow = continue_conversation(model, processor, inputs, first)
        inside = greedy(model, follow, new_tokens=4, output_logits=True, past_key_values=output_cache(first))
    with compress(model, config):
        first = greedy(model, inputs)
    outside = greedy(model, follow, new_tokens=4, output_logits=True, past_key_values=output_cache(first))
    assert torch.equal(outside.sequences, inside.sequences)
    assert torch.allclose(outside.logits[0], inside.logits[0], atol=1e-5)


def test_layers_of_different_counts_are_refused_after_the_context(tiny_sdpa, make_inputs):
    model, processor = tiny_sdpa
    inputs = make_inputs(processor, 2)
    with compress(model, CompressionConfig(method="pyramidkv", budget=10)):
        first = greedy(model, inputs, new_tokens=1)
    cache = output_cache(first)
    assert len({layer.physical_length for layer in cache.layers}) > 1
    with pytest.raises(RuntimeError, match=r"layers kept different counts .* inside a compress\(\) context"):
        greedy(model, follow_up(inputs, first.sequences), new_tokens=2, past_key_values=cache)


def test_a_batch_with_empty_slots_is_refused_after_the_context():
    short = CutLayer(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), logical_length=10)
    long = CutLayer(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), logical_length=12)
    stacked = stack_rows([SimpleNamespace(layers=[short]), SimpleNamespace(layers=[long])]).layers[0]
    assert stacked.slot_padding == (2, 0)
    with pytest.raises(RuntimeError, match="batch rows kept different counts"):
        stacked.update(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))


def test_the_mask_sizes_number_stored_tokens_before_every_new_query():
    layer = CutLayer(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), logical_length=10)
    layer.update(torch.randn(1, 2, 2, 4), torch.randn(1, 2, 2, 4))
    assert layer.get_mask_sizes(4) == (9, 7)
    assert layer.get_mask_sizes(torch.arange(12, 16)) == (9, 7)
