"""Loading through from_pretrained, and the one-line errors a user gets instead of a traceback."""

from __future__ import annotations

import pytest

from guikv.errors import UserInputError
from guikv.models import load
from guikv.models.loading import resolve_device


def test_a_saved_tiny_model_reloads_with_gqa_mrope_and_a_real_processor(tiny_sdpa):
    model, processor = tiny_sdpa
    text = model.config.text_config
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert text.num_key_value_heads < text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) * 2 == text.hidden_size // text.num_attention_heads
    assert model.config._attn_implementation == "sdpa"
    tokenizer = processor.tokenizer
    for token in ("<|im_start|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"):
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
    assert processor.image_processor.size["longest_edge"] == 16384 * 28 * 28


def test_tiny_builds_are_deterministic(tmp_path):
    from safetensors.torch import load_file

    from guikv.models import build_tiny

    first = load_file(build_tiny(tmp_path / "a") / "model.safetensors")
    second = load_file(build_tiny(tmp_path / "b") / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(first[name].equal(second[name]) for name in first)


def test_offline_hub_id_without_a_cached_copy_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(UserInputError, match=r"no local copy.*unreachable") as error:
        load("ByteDance-Seed/UI-TARS-1.5-7B")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"model": "./no/such/dir"}, "no such directory"),
        ({"model": "tiny", "dtype": "float8"}, "--dtype 'float8' is unknown"),
        ({"model": "tiny", "attn_implementation": "flash"}, "--attn 'flash' is unknown"),
        ({"model": "tiny", "device": "tpu"}, "--device 'tpu' is unknown"),
    ],
)
def test_bad_load_arguments_name_the_flag(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        load(**kwargs)


def test_a_directory_without_a_config_is_refused(tmp_path):
    with pytest.raises(UserInputError, match=r"no config\.json"):
        load(str(tmp_path))


def test_cuda_without_cuda_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserInputError, match="CUDA is not available"):
        resolve_device("cuda")
