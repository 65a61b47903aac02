"""compress() on a real (tiny, random) Qwen2.5-VL: exactness at budget 100, capacity rules, GQA
cache shape, logical positions, and the errors a user can hit."""

from __future__ import annotations

import pytest
import torch

from guikv import METHODS, CompressionConfig, TokenLayout, compress
from guikv.hooks import output_cache
from guikv.methods.pyramidkv import pyramid_capacity

NEW_TOKENS = 8


def generate(model, inputs, new_tokens: int = NEW_TOKENS):
    """Greedy generation returning (new token ids, the cache)."""
    out = model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
    )
    return out.sequences[0, inputs["input_ids"].shape[1] :], output_cache(out)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("screens", [1, 3, 5])
def test_budget_100_reproduces_the_full_cache_for_every_method(request, make_inputs, attn: str, screens: int):
    model, processor = request.getfixturevalue(f"tiny_{attn}")
    inputs = make_inputs(processor, screens)
    reference, _ = generate(model, inputs)
    for method in METHODS:
        with compress(model, CompressionConfig(method=method, budget=100)) as report:
            tokens, _ = generate(model, inputs)
        assert torch.equal(tokens, reference), method
        assert (
            report.kept_per_layer
            == [inputs["input_ids"].shape[1]] * model.config.text_config.num_hidden_layers
        )


@pytest.mark.parametrize("method", ["snapkv", "gui_kv", "streamingllm", "random"])
def test_uniform_methods_keep_int_L_b_per_layer_with_gqa_heads(tiny_sdpa, make_inputs, method: str):
    model, processor = tiny_sdpa
    inputs = make_inputs(processor, 3)
    length = inputs["input_ids"].shape[1]
    text = model.config.text_config
    with compress(model, CompressionConfig(method=method, budget=10)) as report:
        _, cache = generate(model, inputs)
    capacity = int(length * 10 / 100)
    assert report.prompt_tokens == length
    assert report.kept_per_layer == [capacity] * text.num_hidden_layers
    for layer in cache.layers:
        head_dim = text.hidden_size // text.num_attention_heads
        assert layer.keys.shape == (1, text.num_key_value_heads, capacity + NEW_TOKENS - 1, head_dim)
        assert layer.values.shape == layer.keys.shape
    assert abs(100 * report.kept_ratio - 10) < 1
    assert report.scoring_seconds > 0


def test_pyramidkv_follows_the_pyramid_schedule(tiny_sdpa, make_inputs):
    model, processor = tiny_sdpa
    inputs = make_inputs(processor, 3)
    length = inputs["input_ids"].shape[1]
    layers = model.config.text_config.num_hidden_layers
    with compress(model, CompressionConfig(method="pyramidkv", budget=10)) as report:
        generate(model, inputs)
    capacity, window = int(length * 0.1), 8
    min_n = (capacity - window) // 20
    max_n = 2 * (capacity - window) - min_n
    step = (max_n - min_n) // (layers - 1)
    assert report.kept_per_layer == [max_n - layer * step + window for layer in range(layers)]
    assert report.kept_per_layer == [
        pyramid_capacity(capacity, length, window, layer, layers, 20) for layer in range(layers)
    ]
    assert report.kept_per_layer[0] > report.kept_per_layer[-1]


def test_vlcache_total_equals_uniform_total_and_sparsity_comes_from_each_layer(tiny_eager, make_inputs):
    model, processor = tiny_eager
    inputs = make_inputs(processor, 3)
    length = inputs["input_ids"].shape[1]
    layers = model.config.text_config.num_hidden_layers
    threshold = 1 / length  # random weights attend almost uniformly: 0.01 would call every layer 100% sparse
    with compress(
        model, CompressionConfig(method="vlcache", budget=10, sparsity_threshold=threshold)
    ) as report:
        generate(model, inputs, new_tokens=2)
    assert sum(report.kept_per_layer) == int(length * 0.1) * layers
    layout = TokenLayout.from_input_ids(inputs["input_ids"], [model.config.image_token_id])
    end = layout.current[1]
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
    for layer, weights in enumerate(attentions):
        rows = weights[0, :, end:].float()
        visible = torch.ones(length, length).tril().bool()[end:]
        above = ((rows > threshold) & visible).sum(dim=(1, 2)).double()
        expected = (1 - above / visible.sum()).mean().item()
        assert report.prefills[-1].layer_sparsity[layer] == pytest.approx(expected, abs=1e-4)
    sparsity = report.prefills[-1].layer_sparsity
    assert max(sparsity) - min(sparsity) > 0.01
    assert len(set(report.kept_per_layer)) > 1


def test_decoding_after_a_cut_equals_full_attention_with_evicted_keys_masked(tiny_eager, make_inputs):
    """The first decode step on a cut cache must equal a full forward whose new token cannot see the
    evicted positions, at the *logical* position L (a physical position would shift its RoPE)."""
    model, processor = tiny_eager
    inputs = make_inputs(processor, 2)
    length = inputs["input_ids"].shape[1]
    config = CompressionConfig(method="streamingllm", budget=30)
    with compress(model, config, record_positions=True) as report:
        out = model.generate(
            **inputs, max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    kept = report.kept_positions[0][0]
    assert all(torch.equal(layer[0], kept) for layer in report.kept_positions)
    full = dict(inputs)
    full["input_ids"] = torch.cat([inputs["input_ids"], out.sequences[:, length : length + 1]], dim=1)
    full["attention_mask"] = torch.ones(1, length + 1, dtype=torch.long)
    token_types = {}
    if "mm_token_type_ids" in inputs:  # transformers >= 5.24 derives M-RoPE positions from them
        types = inputs["mm_token_type_ids"]
        token_types["mm_token_type_ids"] = full["mm_token_type_ids"] = torch.cat([types, types[:, :1] * 0], 1)
    positions, _ = model.model.get_rope_index(
        full["input_ids"],
        image_grid_thw=full["image_grid_thw"],
        attention_mask=full["attention_mask"],
        **token_types,
    )
    visible = torch.ones(length + 1, length + 1).tril().bool()
    visible[length] = False
    visible[length, kept] = True
    visible[length, length] = True
    mask = torch.zeros(1, 1, length + 1, length + 1).masked_fill(~visible, torch.finfo(torch.float32).min)
    with torch.no_grad():
        expected = model(**{**full, "attention_mask": mask, "position_ids": positions}).logits[0, -1]
        physical = positions.clone()
        physical[..., -1] -= length - kept.numel()
        misplaced = model(**{**full, "attention_mask": mask, "position_ids": physical}).logits[0, -1]
    assert torch.allclose(out.logits[1][0], expected, atol=1e-4)
    assert not torch.allclose(out.logits[1][0], misplaced, atol=1e-4)


def test_hooks_are_removed_on_exit_even_after_an_error(tiny_sdpa):
    model, _ = tiny_sdpa
    attention = model.model.language_model.layers[0].self_attn
    with pytest.raises(RuntimeError), compress(model, CompressionConfig(method="snapkv", budget=10)):
        assert attention._forward_hooks
        raise RuntimeError("boom")
    assert not attention._forward_hooks and not attention._forward_pre_hooks
    assert not model._forward_pre_hooks


def test_report_records_each_prefill_and_kept_positions(tiny_sdpa, make_inputs):
    model, processor = tiny_sdpa
    inputs = make_inputs(processor, 2)
    with compress(model, CompressionConfig(method="gui_kv", budget=20), record_positions=True) as report:
        generate(model, inputs, new_tokens=2)
        generate(model, inputs, new_tokens=2)
    assert len(report.prefills) == 2
    positions = report.kept_positions
    assert len(positions) == model.config.text_config.num_hidden_layers
    assert positions[0].shape == (model.config.text_config.num_key_value_heads, report.kept_per_layer[0])
    assert torch.all(positions[0][:, 1:] > positions[0][:, :-1])


def test_a_right_padded_batch_is_refused(tiny_sdpa):
    model, processor = tiny_sdpa
    assert processor.tokenizer.padding_side == "right"
    inputs = processor(text=["click the button", "type hello"], return_tensors="pt", padding=True)
    with (
        pytest.raises(ValueError, match="padding_side = 'left'"),
        compress(model, CompressionConfig(method="snapkv")),
    ):
        model.generate(**inputs, max_new_tokens=2)


def test_methods_needing_images_refuse_a_text_only_prompt(tiny_sdpa):
    model, processor = tiny_sdpa
    inputs = processor(text=["click the button " * 20], return_tensors="pt")
    for method in ("gui_kv", "vlcache"):
        with (
            pytest.raises(ValueError, match="needs image tokens"),
            compress(model, CompressionConfig(method=method)),
        ):
            model.generate(**inputs, max_new_tokens=2)
    with compress(model, CompressionConfig(method="snapkv", budget=50)) as report:
        model.generate(**inputs, max_new_tokens=2)
    assert report.prefills[-1].num_images == 0


def test_a_budget_smaller_than_the_window_is_refused(tiny_sdpa, make_inputs):
    model, processor = tiny_sdpa
    inputs = make_inputs(processor, 1)
    with (
        pytest.raises(ValueError, match="window_size"),
        compress(model, CompressionConfig(method="snapkv", budget=0.5)),
    ):
        model.generate(**inputs, max_new_tokens=2)


def test_a_model_without_image_tokens_is_refused_for_image_methods():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = Qwen2ForCausalLM(config).eval()
    with (
        pytest.raises(ValueError, match="method='gui_kv' needs image tokens"),
        compress(model, CompressionConfig(method="gui_kv")),
    ):
        pass
    ids = torch.randint(0, 64, (1, 80))
    reference = model.generate(ids, max_new_tokens=4, do_sample=False)
    with compress(model, CompressionConfig(method="snapkv", budget=100)):
        assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False), reference)
