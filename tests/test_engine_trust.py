"""compress() never silently does less than asked: both cache keywords, static caches refused, an
unscored prefill raises, chunked prefill equals the unchunked run, continuation on a cut cache feeds
only new tokens at logical positions, and query norms / verify mode for models beyond Qwen2.5-VL."""

from __future__ import annotations

import pytest
import torch
from kept_checks import ROUNDING_SENSITIVE, assert_kept_alike
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from guikv import CompressionConfig, compress
from guikv.attention import rotary_function, verify_window_queries, window_queries
from guikv.cache import CutLayer
from guikv.hooks import CACHE_KEYWORDS, cache_argument, output_cache

TEXT_LAYERS = 3


def text_model(cls: type = Qwen2ForCausalLM, config_cls: type = Qwen2Config, **extra) -> torch.nn.Module:
    """A seeded tiny text decoder (GQA 4/2, head_dim 16) of a real transformers class."""
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        **extra,
    )
    return cls(config).eval()


def greedy(model, inputs: dict, new_tokens: int = 6, **kwargs):
    """Greedy generation returning the output object (sequences and cache)."""
    return model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        **kwargs,
    )


def test_the_cache_is_read_under_both_keywords():
    cache = object()
    for keyword in CACHE_KEYWORDS:
        assert cache_argument({keyword: cache, "hidden_states": None}) is cache
    assert cache_argument({"hidden_states": None}) is None


def test_a_static_cache_is_refused_up_front(tiny_sdpa, make_inputs):
    model, processor = tiny_sdpa
    inputs = make_inputs(processor, 1)
    with (
        pytest.raises(ValueError, match="static or sliding-window cache"),
        compress(model, CompressionConfig(method="snapkv", budget=10)),
    ):
        model.generate(**inputs, max_new_tokens=2, cache_implementation="static")


def test_a_cached_prefill_that_no_layer_scored_raises_on_exit(tiny_sdpa, make_inputs):
    """A model whose attention modules get their cache under a name guikv does not read (here a
    future rename, made by a pre-hook) must not come back as if compressed."""
    model, processor = tiny_sdpa
    inputs = make_inputs(processor, 1)

    def rename(module, args, kwargs):
        renamed = {key: value for key, value in kwargs.items() if key not in CACHE_KEYWORDS}
        return args, {**renamed, "kv_cache": cache_argument(kwargs)}

    attentions = [layer.self_attn for layer in model.model.language_model.layers]
    handles = [attention.register_forward_pre_hook(rename, with_kwargs=True) for attention in attentions]
    try:
        with (
            pytest.raises(RuntimeError, match=r"ran 1 prefill.* nothing was compressed"),
            torch.no_grad(),
            compress(model, CompressionConfig(method="snapkv", budget=10)),
        ):
            model(**inputs, use_cache=True)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("method", ["snapkv", "pyramidkv", "streamingllm", "random"])
def test_chunked_prefill_equals_the_unchunked_run(method: str):
    model = text_model()
    ids = torch.randint(0, 96, (1, 100), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    config = CompressionConfig(method=method, budget=40)
    with compress(model, config, record_positions=True) as whole:
        reference = greedy(model, inputs)
    with compress(model, config, record_positions=True, chunked_prefill=True) as chunked:
        out = greedy(model, inputs, prefill_chunk_size=16, past_key_values=DynamicCache(config=model.config))
    assert torch.equal(out.sequences, reference.sequences)
    assert chunked.prompt_tokens == whole.prompt_tokens == 100
    assert chunked.kept_per_layer == whole.kept_per_layer
    for kept, expected in zip(chunked.kept_positions, whole.kept_positions, strict=True):
        assert torch.equal(kept, expected)
    cache = output_cache(out)
    assert cache.layers[0].keys.shape[2] == whole.kept_per_layer[0] + 5


def test_a_chunk_continuing_an_already_cut_prompt_is_refused():
    model = text_model()
    ids = torch.randint(0, 96, (1, 100), generator=torch.Generator().manual_seed(1))
    with (
        pytest.raises(RuntimeError, match="chunked_prefill=True"),
        compress(model, CompressionConfig(method="snapkv", budget=80)),
    ):
        greedy(
            model,
            {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
            prefill_chunk_size=16,
            past_key_values=DynamicCache(config=model.config),
        )


@pytest.mark.parametrize("method", ["gui_kv", "vlcache", "st_lite", "star_kv"])
def test_chunked_prefill_of_screenshots_equals_the_unchunked_run(tiny_for, make_inputs, method: str):
    """Screenshots split across chunks (pre-encoded image features, as transformers requires for a
    chunked multimodal prefill): the same layout, kept positions and tokens as one prefill; GUI-KV
    (on the head_dim-64 model) at least `MIN_SHARED` of the positions, its tokens then free to
    differ (chunked attention changes the keys by rounding, which its temporal step amplifies)."""
    generation = pytest.importorskip("transformers.generation.utils")
    if not hasattr(generation, "_slice_mm_encoder_output"):
        pytest.skip("this transformers cannot chunk a multimodal prefill")
    model, processor = tiny_for(method, "eager")
    inputs = make_inputs(processor, 2)
    config = CompressionConfig(method=method, budget=20, sparsity_threshold=1e-3)
    with compress(model, config, record_positions=True) as whole:
        reference = greedy(model, inputs)
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    chunk_inputs = {key: value for key, value in inputs.items() if key != "pixel_values"}
    with compress(model, config, record_positions=True, chunked_prefill=True) as chunked:
        out = greedy(model, chunk_inputs, mm_encoder_outputs={"image": features}, prefill_chunk_size=128)
    assert chunked.layout == whole.layout
    assert chunked.kept_per_layer == whole.kept_per_layer
    assert_kept_alike(method, chunked.kept_positions, whole.kept_positions)
    assert method in ROUNDING_SENSITIVE or torch.equal(out.sequences, reference.sequences)


def continue_conversation(model, processor, inputs: dict, first) -> dict:
    """The inputs of one more user turn after `first`'s answer: the whole history's ids (prompt,
    generated answer, the new turn), which generate() slices by the cache's length."""
    turn = "<|im_end|>\n<|im_start|>user\nNow open the first result<|im_end|>\n<|im_start|>assistant\n"
    new_ids = processor.tokenizer(turn, return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids = torch.cat([first.sequences, new_ids], dim=1)
    follow = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "mm_token_type_ids" in inputs:
        types = inputs["mm_token_type_ids"]
        follow["mm_token_type_ids"] = torch.cat([types, types.new_zeros(1, ids.shape[1] - types.shape[1])], 1)
    return follow


def test_continuing_a_compressed_conversation_feeds_only_the_new_tokens(tiny_sdpa, make_inputs):
    model, processor = tiny_sdpa
    inputs = make_inputs(processor, 2)
    prompt = inputs["input_ids"].shape[1]
    with compress(model, CompressionConfig(method="gui_kv", budget=10)) as report:
        first = greedy(model, inputs)
        cache = output_cache(first)
        layer = cache.layers[0]
        assert isinstance(layer, CutLayer)
        assert cache.get_seq_length() == prompt + 5
        stored = layer.physical_length
        assert stored == report.kept_per_layer[0] + 5
        follow = continue_conversation(model, processor, inputs, first)
        second = greedy(model, follow, new_tokens=4, past_key_values=cache)
    fed = follow["input_ids"].shape[1] - (prompt + 5)
    assert cache.layers[0].physical_length == stored + fed + 3
    assert cache.get_seq_length() == follow["input_ids"].shape[1] + 3
    assert len(report.prefills) == 1
    assert second.sequences.shape[1] == follow["input_ids"].shape[1] + 4


def test_continuation_at_budget_100_equals_the_uncompressed_conversation(tiny_sdpa, make_inputs):
    model, processor = tiny_sdpa
    inputs = make_inputs(processor, 2)
    first = greedy(model, inputs)
    follow = continue_conversation(model, processor, inputs, first)
    reference = greedy(model, follow, new_tokens=4, past_key_values=output_cache(first))
    with compress(model, CompressionConfig(method="gui_kv", budget=100)):
        first = greedy(model, inputs)
        second = greedy(model, follow, new_tokens=4, past_key_values=output_cache(first))
    assert torch.equal(second.sequences, reference.sequences)


def test_continuation_positions_are_logical_on_a_cut_cache():
    """After a cut and one decode step, a continuation's logits equal a full forward whose new
    tokens cannot see the evicted prompt positions, at their logical positions."""
    model = text_model()
    ids = torch.randint(0, 96, (1, 60), generator=torch.Generator().manual_seed(2))
    new = torch.randint(0, 96, (1, 6), generator=torch.Generator().manual_seed(3))
    with (
        torch.no_grad(),
        compress(model, CompressionConfig(method="streamingllm", budget=30), record_positions=True) as report,
    ):
        cache = output_cache(model(input_ids=ids, use_cache=True))
        model(input_ids=new[:, :1], past_key_values=cache, use_cache=True)
        logits = model(input_ids=new[:, 1:], past_key_values=cache, use_cache=True).logits
    assert cache.get_seq_length() == 66
    assert cache.layers[0].keys.shape[2] == report.kept_per_layer[0] + 6
    kept = report.kept_positions[0][0]
    visible = torch.ones(66, 66).tril().bool()
    visible[60:, :60] = False
    visible[60:, kept] = True
    mask = torch.zeros(1, 1, 66, 66).masked_fill(~visible, torch.finfo(torch.float32).min)
    with torch.no_grad():
        expected = model(input_ids=torch.cat([ids, new], dim=1), attention_mask=mask).logits[:, 61:]
    assert torch.allclose(logits, expected, atol=1e-4)


def qwen3_model() -> torch.nn.Module:
    """A tiny Qwen3 (per-head q_norm / k_norm before RoPE)."""
    return text_model(Qwen3ForCausalLM, Qwen3Config, head_dim=16)


def test_qwen3_window_queries_apply_the_query_norm_and_pass_verification():
    model = qwen3_model()
    ids = torch.randint(0, 96, (1, 40), generator=torch.Generator().manual_seed(4))
    reference = model.generate(ids, max_new_tokens=4, do_sample=False)
    config = CompressionConfig(method="snapkv", budget=100, verify=True)
    with compress(model, config) as report:
        assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False), reference)
    assert report.kept_per_layer == [40] * TEXT_LAYERS
    with compress(model, CompressionConfig(method="snapkv", budget=25, verify=True)) as report:
        model.generate(ids, max_new_tokens=2, do_sample=False)
    assert report.kept_per_layer == [10] * TEXT_LAYERS


def test_verification_catches_queries_rebuilt_without_the_model_s_query_norm():
    model = qwen3_model()
    attention = model.model.layers[0].self_attn
    captured = {}

    def keep(module, args, kwargs, output):
        captured.update(kwargs, output=output[0])

    handle = attention.register_forward_hook(keep, with_kwargs=True)
    ids = torch.randint(0, 96, (1, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cache = output_cache(model(input_ids=ids, use_cache=True))
    handle.remove()
    hidden, position_embeddings = captured["hidden_states"], captured["position_embeddings"]
    keys, values = cache.layers[0].keys, cache.layers[0].values
    with torch.no_grad():
        queries = window_queries(attention, hidden, position_embeddings, 8)
        verify_window_queries(attention, queries, keys, values, captured["output"])
        plain = attention.q_proj(hidden[:, -8:]).view(1, 8, -1, attention.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        unnormed, _ = rotary_function(attention)(plain, plain, cos[..., -8:, :], sin[..., -8:, :])
        with pytest.raises(RuntimeError, match="rebuilt window queries differs"):
            verify_window_queries(attention, unnormed, keys, values, captured["output"])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_verify_mode_passes_on_qwen2_5_vl(request, make_inputs, attn: str):
    model, processor = request.getfixturevalue(f"tiny_{attn}")
    inputs = make_inputs(processor, 2)
    for method in ("gui_kv", "streamingllm"):
        with compress(model, CompressionConfig(method=method, budget=20, verify=True)) as report:
            greedy(model, inputs, new_tokens=2)
        assert len(report.kept_per_layer) == model.config.text_config.num_hidden_layers


def test_verify_is_a_validated_config_field(tmp_path):
    with pytest.raises(ValueError, match=r"CompressionConfig\.verify"):
        CompressionConfig(verify="yes")
    path = tmp_path / "config.yaml"
    CompressionConfig(verify=True).to_yaml(path)
    assert CompressionConfig.from_yaml(path).verify is True
