"""The OpenCUA adapter on a tiny stand-in with OpenCUA's module layout (a real HF Qwen2ForCausalLM
at `language_model`, media placeholder tokens): inputs, spans, family detection and compress()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention

from guikv.agents import detect_family, get_family
from guikv.compressor import compress
from guikv.config import CompressionConfig
from guikv.layout import TokenLayout
from guikv.models.adapters import OPENCUA, adapter_for
from guikv.models.opencua import MEDIA_BEGIN, MEDIA_CONTENT, MEDIA_END, expand_placeholders
from guikv.models.opencua_standin import build_opencua_standin
from guikv.step import run_step

SCREENSHOTS = sorted(
    (Path(__file__).resolve().parents[1].parent / "shared/fixtures/agentnetbench/test_data/images").glob(
        "*.png"
    )
)


@pytest.fixture(scope="module")
def standin() -> tuple[Any, Any]:
    """The stand-in model and its (tokenizer, image processor) pair."""
    return build_opencua_standin()


def messages(count: int, size: tuple[int, int] = (280, 168)) -> list[dict]:
    """OpenCUA computer-use messages over `count` small real screenshots (the last one current)."""
    images = [Image.open(SCREENSHOTS[i]).convert("RGB").resize(size) for i in range(count)]
    return get_family("opencua").computer_use_messages(
        "Open the settings", images, [""] * (count - 1), max_history_screenshots=count - 1, history_window=0
    )


def test_adapter_finds_the_qwen2_layers_and_the_placeholder_id(standin):
    model, _ = standin
    adapter = adapter_for(model)
    assert adapter is OPENCUA
    assert adapter.decoder_layers(model) is model.language_model.model.layers
    assert all(isinstance(module, Qwen2Attention) for module in adapter.attention_modules(model))
    assert adapter.image_token_ids(model.config) == [model.config.media_placeholder_token_id]


def test_family_is_detected_from_the_config(standin, tiny_sdpa):
    assert detect_family(standin[0].config) == "opencua"
    assert detect_family(tiny_sdpa[0].config) == "ui-tars"


def test_expand_placeholders_repeats_single_placeholders_and_keeps_expanded_runs():
    assert expand_placeholders([1, 9, 2, 9, 3], 9, [3, 2]) == [1, 9, 9, 9, 2, 9, 9, 3]
    assert expand_placeholders([1, 9, 9, 2, 9, 3], 9, [2, 3]) == [1, 9, 9, 2, 9, 9, 9, 3]
    with pytest.raises(ValueError, match="2 media placeholder runs for 1 images"):
        expand_placeholders([9, 1, 9], 9, [4])
    with pytest.raises(ValueError, match="run of 2 tokens"):
        expand_placeholders([9, 9, 1], 9, [4])


def test_spans_are_the_placeholder_runs_of_the_expanded_ids(standin):
    model, processor = standin
    inputs = adapter_for(model).build_inputs(processor, messages(3))
    ids = inputs["input_ids"][0]
    layout = TokenLayout.from_input_ids(ids, adapter_for(model).image_token_ids(model.config))
    grids = inputs["grid_thws"].tolist()
    assert [end - start for start, end in layout.image_spans] == [t * h * w // 4 for t, h, w in grids]
    token = processor.tokenizer.convert_tokens_to_ids
    begins = (ids == token(MEDIA_BEGIN)).nonzero().flatten().tolist()
    for (start, end), begin in zip(layout.image_spans, begins, strict=True):
        assert ids[start - 1] == token(MEDIA_CONTENT) and ids[end] == token(MEDIA_END)
        assert start > begin + 1  # the original's begin-based arithmetic would start inside the header (B14)


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
    assert result.kept_per_layer == [result.prompt_tokens] * 4
    assert torch.equal(result.first_decode_logits, plain.logits[1][0].float())
    assert result.generated_ids == plain.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    generated = plain.sequences[0, inputs["input_ids"].shape[1] :]
    assert result.text == processor.batch_decode(generated[None], skip_special_tokens=True)[0]
    assert result.layout.num_images == 2


def test_budget_10_cuts_each_layer_to_int_L_b_with_kv_heads_and_keeps_positions_logical(standin):
    model, processor = standin
    inputs = adapter_for(model).build_inputs(processor, messages(2))
    length = inputs["input_ids"].shape[1]
    capacity = int(length * 10 / 100)
    text = model.config.text_config
    config = CompressionConfig(method="gui_kv", budget=10)
    with torch.no_grad(), compress(model, config) as report:
        out = model(**inputs, use_cache=True)
    assert report.kept_per_layer == [capacity] * text.num_hidden_layers
    assert report.layout.num_images == 2
    head_dim = text.hidden_size // text.num_attention_heads
    for layer in out.cache.layers:
        assert tuple(layer.keys.shape) == (1, text.num_key_value_heads, capacity, head_dim)

    positions: list[torch.Tensor] = []
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: positions.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    try:
        with torch.no_grad(), compress(model, config):
            model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    finally:
        hook.remove()
    assert [p.flatten().tolist() for p in positions[1:]] == [[length], [length + 1]]
