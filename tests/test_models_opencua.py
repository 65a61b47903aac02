"""The OpenCUA adapter against a stand-in that reproduces OpenCUA-7B's forward contract (see
`guikv.models.opencua`): one `<|media_placeholder|>` per image, expanded inside the model's
forward; decode positions that the bare model derives from its physical cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention

from guikv.agents import detect_family, get_family
from guikv.analysis import window_attention_counts
from guikv.compressor import compress
from guikv.config import CompressionConfig
from guikv.hooks import output_cache
from guikv.models import load
from guikv.models.adapters import OPENCUA, adapter_for
from guikv.models.opencua import (
    IMAGE_MARKUP,
    MEDIA_CONTENT,
    MEDIA_END,
    MEDIA_PLACEHOLDER,
    expanded_layout,
    logical_decode_position,
    tokens_per_image,
)
from guikv.models.opencua_standin import OpenCUAStandin, OpenCUAStandinConfig, build_opencua_standin
from guikv.step import run_step

SCREENSHOTS = sorted(
    (Path(__file__).resolve().parents[1].parent / "shared/fixtures/agentnetbench/test_data/images").glob(
        "*.png"
    )
)


@pytest.fixture(scope="module")
def standin() -> tuple[Any, Any]:
    """The stand-in model as guikv loads it, and its (tokenizer, image processor) pair."""
    return build_opencua_standin()


@pytest.fixture(scope="module")
def bare_standin() -> tuple[Any, Any]:
    """The stand-in without guikv's load-time preparation: the remote code's contract alone."""
    return build_opencua_standin(prepared=False)


def messages(count: int, size: tuple[int, int] = (280, 168)) -> list[dict]:
    """OpenCUA computer-use messages over `count` small real screenshots (the last one current)."""
    images = [Image.open(SCREENSHOTS[i]).convert("RGB").resize(size) for i in range(count)]
    return get_family("opencua").computer_use_messages(
        "Open the settings", images, [""] * (count - 1), max_history_screenshots=count - 1, history_window=0
    )


def language_model_calls(model: Any, run: Any) -> list[dict[str, Any]]:
    """The keyword arguments of every language-model call made while `run()` executes."""
    calls: list[dict[str, Any]] = []
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            run()
    finally:
        hook.remove()
    return calls


def test_adapter_finds_the_qwen2_layers_and_the_placeholder_id(standin):
    model, processor = standin
    adapter = adapter_for(model)
    assert adapter is OPENCUA
    assert adapter.decoder_layers(model) is model.language_model.model.layers
    assert all(isinstance(module, Qwen2Attention) for module in adapter.attention_modules(model))
    placeholder = processor.tokenizer.convert_tokens_to_ids(MEDIA_PLACEHOLDER)
    assert adapter.image_token_ids(model.config) == [model.config.media_placeholder_token_id] == [placeholder]


def test_family_is_detected_from_the_config(standin, tiny_sdpa):
    assert detect_family(standin[0].config) == "opencua"
    assert detect_family(tiny_sdpa[0].config) == "ui-tars"


def test_inputs_hold_one_placeholder_per_image_in_opencua_markup(standin):
    model, processor = standin
    inputs = adapter_for(model).build_inputs(processor, messages(3))
    ids = inputs["input_ids"][0]
    markup = processor.tokenizer(IMAGE_MARKUP, add_special_tokens=False)["input_ids"]
    runs = [i for i in range(len(ids) - len(markup) + 1) if ids[i : i + len(markup)].tolist() == markup]
    assert len(runs) == 3 == inputs["grid_thws"].shape[0]
    assert int((ids == model.config.media_placeholder_token_id).sum()) == 3
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values", "grid_thws"}


def test_expanded_layout_gives_each_placeholder_its_image_tokens_and_refuses_expanded_ids():
    layout = expanded_layout(torch.tensor([[1, 9, 2, 9, 3]]), 9, [3, 2])
    assert layout.image_spans == ((1, 4), (5, 7))
    assert layout.length == 8
    with pytest.raises(ValueError, match="4 media placeholder tokens for 2 images"):
        expanded_layout(torch.tensor([1, 9, 9, 2, 9, 9, 3]), 9, [2, 2])
    with pytest.raises(ValueError, match="0 media placeholder tokens for 1 images"):
        expanded_layout(torch.tensor([1, 2, 3]), 9, [4])


def test_the_layout_guikv_scores_is_the_sequence_the_model_builds(standin):
    """The contract test: the adapter's inputs through the stand-in's own expansion give a sequence
    whose image runs are exactly the adapter's spans, text in order around them, prefill positions
    0..L-1."""
    model, processor = standin
    adapter = adapter_for(model)
    inputs = adapter.build_inputs(processor, messages(3))
    layout = adapter.prompt_layout(model.config, inputs["input_ids"], inputs)
    [prefill] = language_model_calls(model, lambda: model(**inputs, use_cache=True))
    seen = prefill["inputs_embeds"][0]
    assert seen.shape[0] == layout.length
    assert prefill["position_ids"].flatten().tolist() == list(range(layout.length))

    features = model._extract_image_features(inputs["pixel_values"], inputs["grid_thws"])
    merge = model.config.vision_config.spatial_merge_size
    assert [end - start for start, end in layout.image_spans] == tokens_per_image(inputs["grid_thws"], merge)
    for (start, end), feature in zip(layout.image_spans, features, strict=True):
        assert torch.equal(seen[start:end], feature)
    ids = inputs["input_ids"][0]
    text_ids = ids[ids != model.config.media_placeholder_token_id]
    assert torch.equal(seen[layout.text_mask()], model.get_input_embeddings()(text_ids))
    token = processor.tokenizer.convert_tokens_to_ids
    embed = model.get_input_embeddings().weight
    for start, end in layout.image_spans:  # each span sits between media content and media end (B14)
        assert torch.equal(seen[start - 1], embed[token(MEDIA_CONTENT)])
        assert torch.equal(seen[end], embed[token(MEDIA_END)])


def test_double_expansion_is_refused_by_the_model_and_by_the_adapter(standin):
    model, processor = standin
    adapter = adapter_for(model)
    inputs = adapter.build_inputs(processor, messages(2))
    merge = model.config.vision_config.spatial_merge_size
    placeholder = model.config.media_placeholder_token_id
    expanded: list[int] = []
    counts = iter(tokens_per_image(inputs["grid_thws"], merge))
    for token in inputs["input_ids"][0].tolist():
        expanded.extend([token] * (next(counts) if token == placeholder else 1))
    twice = {**inputs, "input_ids": torch.tensor([expanded]), "attention_mask": torch.ones(1, len(expanded))}
    with pytest.raises(ValueError, match="media placeholder tokens for 2 images"), torch.no_grad():
        model(**twice)
    with pytest.raises(ValueError, match="media placeholder tokens for 2 images"):
        adapter.prompt_layout(model.config, twice["input_ids"], twice)
    refused = pytest.raises(ValueError, match="media placeholder tokens for 2 images")
    with refused, torch.no_grad(), compress(model, CompressionConfig(budget=50)):
        model(**twice)


def test_compress_scores_the_model_visible_layout(standin):
    model, processor = standin
    inputs = adapter_for(model).build_inputs(processor, messages(2))
    layout = adapter_for(model).prompt_layout(model.config, inputs["input_ids"], inputs)
    assert layout.length > inputs["input_ids"].shape[1]
    with torch.no_grad(), compress(model, CompressionConfig(budget=50)) as report:
        model(**inputs, use_cache=True)
    assert report.layout == layout
    assert report.prompt_tokens == layout.length
    assert report.kept_per_layer == [int(layout.length * 50 / 100)] * 4


def test_budget_100_is_identical_to_no_compression(standin):
    model, processor = standin
    prompt = messages(2)
    inputs = adapter_for(model).build_inputs(processor, prompt)
    with torch.no_grad():
        plain = model.generate(
            **inputs, max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True
        )
    result = run_step(
        model,
        processor,
        prompt,
        CompressionConfig(budget=100),
        max_new_tokens=6,
        keep_first_decode_logits=True,
    )
    layout = adapter_for(model).prompt_layout(model.config, inputs["input_ids"], inputs)
    assert result.prompt_tokens == layout.length
    assert result.kept_per_layer == [layout.length] * 4
    assert torch.equal(result.first_decode_logits, plain.logits[1][0].float())
    generated = plain.sequences[0, inputs["input_ids"].shape[1] :]
    assert result.generated_ids == generated.tolist()
    assert result.text == processor.batch_decode(generated[None], skip_special_tokens=True)[0]
    assert result.layout == layout


def test_budget_10_cuts_each_layer_to_int_L_b_of_the_expanded_prompt(standin):
    model, processor = standin
    inputs = adapter_for(model).build_inputs(processor, messages(2))
    length = adapter_for(model).prompt_layout(model.config, inputs["input_ids"], inputs).length
    capacity = int(length * 10 / 100)
    text = model.config.text_config
    config = CompressionConfig(method="gui_kv", budget=10)
    with torch.no_grad(), compress(model, config) as report:
        out = model(**inputs, use_cache=True)
    assert report.kept_per_layer == [capacity] * text.num_hidden_layers
    head_dim = text.hidden_size // text.num_attention_heads
    for layer in out.cache.layers:
        assert tuple(layer.keys.shape) == (1, text.num_key_value_heads, capacity, head_dim)


def decode_positions(calls: list[dict[str, Any]]) -> list[list[int]]:
    """The positions the language model got at each decode step (every call after the prefill)."""
    return [call["position_ids"].flatten().tolist() for call in calls[1:]]


def test_the_bare_contract_decodes_at_wrong_positions_under_generate(bare_standin):
    """Why guikv prepares OpenCUA: transformers 5.x `generate` drops the pixels after the prefill
    and counts positions over the unexpanded prompt, so the bare model decodes too early in the
    sequence, compressed or not."""
    model, processor = bare_standin
    inputs = adapter_for(model).build_inputs(processor, messages(2))
    unexpanded = inputs["input_ids"].shape[1]

    def generate() -> None:
        model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)

    assert decode_positions(language_model_calls(model, generate)) == [[unexpanded], [unexpanded + 1]]


def test_the_bare_contract_with_pixels_decodes_at_the_physical_cache_length(bare_standin):
    """The legacy decode branch (pixels passed at a decode step, as transformers 4.x `generate`
    does) takes the position from layer 0's physical cache: after a cut, the kept count."""
    model, processor = bare_standin
    inputs = adapter_for(model).build_inputs(processor, messages(2))
    length = adapter_for(model).prompt_layout(model.config, inputs["input_ids"], inputs).length
    capacity = int(length * 10 / 100)

    def prefill_then_one_step() -> None:
        with compress(model, CompressionConfig(method="gui_kv", budget=10)):
            cache = model(**inputs, use_cache=True).cache
            step = {
                **inputs,
                "input_ids": torch.tensor([[7]]),
                "attention_mask": torch.ones(1, 1 + inputs["input_ids"].shape[1]),
            }
            model(**step, cache=cache, use_cache=True)

    assert decode_positions(language_model_calls(model, prefill_then_one_step)) == [[capacity]]


@pytest.mark.parametrize("budget", [100, 10])
def test_prepared_model_decodes_at_logical_positions(standin, budget):
    model, processor = standin
    inputs = adapter_for(model).build_inputs(processor, messages(2))
    length = adapter_for(model).prompt_layout(model.config, inputs["input_ids"], inputs).length

    def generate() -> None:
        with compress(model, CompressionConfig(method="gui_kv", budget=budget)):
            model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)

    assert decode_positions(language_model_calls(model, generate)) == [[length], [length + 1]]


def test_prepared_model_with_pixels_at_decode_still_decodes_at_the_logical_position(standin):
    model, processor = standin
    inputs = adapter_for(model).build_inputs(processor, messages(2))
    length = adapter_for(model).prompt_layout(model.config, inputs["input_ids"], inputs).length

    def prefill_then_one_step() -> None:
        with compress(model, CompressionConfig(method="gui_kv", budget=10)):
            cache = model(**inputs, use_cache=True).cache
            step = {
                **inputs,
                "input_ids": torch.tensor([[7]]),
                "attention_mask": torch.ones(1, 1 + inputs["input_ids"].shape[1]),
            }
            model(**step, cache=cache, use_cache=True)

    assert decode_positions(language_model_calls(model, prefill_then_one_step)) == [[length]]


def test_logical_decode_position_counts_the_expansion_or_asks_the_cache():
    grids = torch.tensor([[1, 4, 6], [1, 2, 2]])  # 6 and 1 tokens after a 2x2 merge: 5 more than 2
    assert logical_decode_position(torch.tensor([[30]]), None, grids, 2, cache=None) == 35
    assert logical_decode_position(None, torch.ones(1, 20), grids, 2, cache=None) == 24
    assert logical_decode_position(torch.tensor([[30]]), None, None, 2, cache=None) == 30

    class Cache:
        def get_seq_length(self) -> int:
            return 42

    assert logical_decode_position(None, None, grids, 2, Cache()) == 42


def test_preparation_is_installed_once():
    model, _ = build_opencua_standin(prepared=False)
    OPENCUA.prepare(model)
    OPENCUA.prepare(model)
    assert len(model._forward_pre_hooks) == 1


def test_attention_analysis_counts_over_the_model_visible_layout(standin):
    model, processor = standin
    inputs = adapter_for(model).build_inputs(processor, messages(2))
    layout = adapter_for(model).prompt_layout(model.config, inputs["input_ids"], inputs)
    sample = window_attention_counts(model, inputs, window=4)
    assert sample.prompt_tokens == layout.length
    assert sample.num_images == 2


def test_load_prepares_a_saved_opencua_model(tmp_path):
    AutoConfig.register("opencua", OpenCUAStandinConfig, exist_ok=True)
    AutoModel.register(OpenCUAStandinConfig, OpenCUAStandin, exist_ok=True)
    model, processor = build_opencua_standin(prepared=False)
    model.save_pretrained(tmp_path)
    processor.tokenizer.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load(str(tmp_path), dtype="float32", device="cpu")
    inputs = adapter_for(loaded).build_inputs(loaded_processor, messages(1))
    length = adapter_for(loaded).prompt_layout(loaded.config, inputs["input_ids"], inputs).length

    def generate() -> None:
        with compress(loaded, CompressionConfig(method="gui_kv", budget=10)):
            loaded.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)

    assert decode_positions(language_model_calls(loaded, generate)) == [[length]]


def test_a_chunked_prefill_is_refused_since_the_model_expands_placeholders_itself(standin):
    model, processor = standin
    ids = processor.tokenizer("click the search box and type hello " * 3, return_tensors="pt")["input_ids"]
    config = CompressionConfig(method="snapkv", budget=50)
    with (
        pytest.raises(ValueError, match="cannot be prefilled in chunks"),
        torch.no_grad(),
        compress(model, config, chunked_prefill=True),
    ):
        cache = output_cache(model(input_ids=ids[:, :10], use_cache=True))
        model(input_ids=ids[:, 10:], past_key_values=cache, use_cache=True)
