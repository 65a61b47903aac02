"""Analytic FLOPs against torch's FlopCounterMode on the tiny model, and the KV-byte accounting."""

from __future__ import annotations

import pytest
import torch

from guikv import CompressionConfig, compress
from guikv.capacity import UI_TARS_15_7B
from guikv.flops import ModelShape, count_flops, decode_flops, kv_cache_bytes, prefill_flops


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method,budget", [("full", 100), ("snapkv", 10), ("pyramidkv", 10), ("gui_kv", 20)])
def test_analytic_decode_flops_match_the_counter(request, make_inputs, attn, method, budget):
    model, processor = request.getfixturevalue(f"tiny_{attn}")
    inputs = make_inputs(processor, 2)
    shape = ModelShape.from_config(model.config)
    steps = 5

    def run(new_tokens: int):
        return lambda: model.generate(
            **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )

    with compress(model, CompressionConfig(method=method, budget=budget)) as report:
        one, _ = count_flops(run(1))
        many, _ = count_flops(run(steps + 1))
    analytic = decode_flops(shape, report.kept_per_layer, steps)
    assert (many - one) == pytest.approx(analytic.total, rel=0.02)


def test_analytic_prefill_flops_match_the_counter(tiny_sdpa, make_inputs):
    model, processor = tiny_sdpa
    inputs = make_inputs(processor, 3)
    length = inputs["input_ids"].shape[1]
    embeddings = model.model.language_model.embed_tokens(inputs["input_ids"])
    with torch.no_grad():
        measured, _ = count_flops(
            lambda: model.model.language_model(inputs_embeds=embeddings, use_cache=False)
        )
    analytic = prefill_flops(ModelShape.from_config(model.config), length, logits_tokens=0)
    assert measured == pytest.approx(analytic.total, rel=0.02)


def test_decode_attention_shrinks_with_the_kept_cache():
    shape = UI_TARS_15_7B
    full = decode_flops(shape, [20000] * 28, 100)
    kept = decode_flops(shape, [2000] * 28, 100)
    total_saved, attention_saved = kept.saved_vs(full)
    assert 85 < attention_saved < 90
    assert 0 < total_saved < attention_saved
    assert shape.linear_flops_per_token() // 2 == pytest.approx(233e6, rel=0.01)
    assert kv_cache_bytes(shape, [1] * 28, torch.bfloat16) == 28 * 4 * 128 * 2 * 2
    with pytest.raises(ValueError, match="28 layers"):
        decode_flops(shape, [1, 2], 3)
