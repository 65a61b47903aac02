"""Tiny random Qwen2.5-VL models, built offline and deterministically.

They have the real architecture (GQA, M-RoPE, a windowed vision tower, Qwen's special tokens and
chat template) and go through the same `save_pretrained` / `from_pretrained` path as a user's
UI-TARS checkpoint, so the whole pipeline runs on a laptop without downloading anything. Their
weights are random: what they generate is meaningless, only its shape and cost are real.

Two shapes: `build_tiny` (head_dim 16, the fastest) and `build_tiny_head_dim_64` (head_dim 64, the
shape tests of GUI-KV's temporal step need: with head_dim 16 its rank-32 key subspace is the whole
key space, so every residual is rounding noise and the step sorts noise).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from guikv.agents.resize import MAX_PIXELS, MIN_PIXELS

TINY_VERSION = "v1"
"""Bump when the tiny model's recipe changes, so cached copies are rebuilt."""

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The chat template Qwen2-VL and Qwen2.5-VL checkpoints ship (default system prompt included)."""

_CORPUS = (
    "You are a GUI agent. You are given a task and your action history, with screenshots. "
    "You need to perform the next action to complete the task. Thought: Action: "
    "click(point='<point>100 200</point>') left_double(point='<point>x1 y1</point>') "
    "right_single drag(start_point='<point>x1 y1</point>', end_point='<point>x2 y2</point>') "
    "hotkey(key='ctrl c') type(content='hello world') scroll(point, direction='down') wait() "
    "finished(content='successful') long_press open_app(app_name='Settings') press_back press_home "
    "## Output Format ## Action Space ## Note ## User Instruction Use English in Thought part. "
    "Write a small plan and finally summarize your next action (with its target element) in one sentence. "
    "pyautogui.click(x=0.5, y=0.5) pyautogui.write(message='text') pyautogui.hotkey(['ctrl', 'v']) "
    "pyautogui.scroll(-5) computer.terminate(status='success') computer.triple_click(x=1, y=2) "
    "Please generate the next move according to the screenshot and task instruction. "
    "Open the browser, search for the weather, and save the file in the documents folder. "
    "0123456789 the of and to in is for on with as at by from this that be are it an or "
)


def build_tokenizer(vocab_size: int = 640) -> Qwen2Tokenizer:
    """A byte-level BPE tokenizer trained on a fixed corpus, with Qwen's special tokens and template."""
    alphabet = {char: index for index, char in enumerate(bytes_to_unicode().values())}
    base = Qwen2Tokenizer(vocab=alphabet, merges=[])
    tokenizer = base.train_new_from_iterator(
        [_CORPUS] * 4, vocab_size=vocab_size - len(SPECIAL_TOKENS) + 1, show_progress=False
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


def tiny_config(tokenizer: Qwen2Tokenizer, **text_overrides: Any) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config with 4 layers, 4 query / 2 KV heads (GQA), head_dim 16, M-RoPE and a
    2-block vision tower; `text_overrides` reshape the language model (e.g. 7B attention shape)."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128000,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }
    text.update(text_overrides)
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": text["hidden_size"],
        "fullatt_block_indexes": [1],
        "window_size": 112,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny(path: str | Path, seed: int = 0, **text_overrides: Any) -> Path:
    """Build a tiny random Qwen2.5-VL (model + processor) and save it to `path`.

    The processor uses UI-TARS's pixel range (100·28² to 16384·28²), so token counts per
    screenshot match what UI-TARS-1.5-7B sees.
    """
    path = Path(path)
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer, **text_overrides)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.do_sample = False
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


HEAD_DIM_64_TEXT: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 256,
    "initializer_range": 0.2,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
}
"""The language model of `build_tiny_head_dim_64`: hidden 256 over 4 query heads (2 KV heads)."""


def build_tiny_head_dim_64(path: str | Path, seed: int = 0) -> Path:
    """Build a tiny random Qwen2.5-VL with head_dim 64 (model + processor) into `path`.

    Head_dim 64 is above GUI-KV's rank 32, so its key subspace is a proper subspace and the
    temporal residuals are real numbers, and it is within vLLM's CPU attention head sizes (32-512).
    Two changes to the random initialisation make a model whose scores are not decided by rounding
    noise, as a real checkpoint's are not: `initializer_range=0.2` (attention that is not uniform,
    so the generated tokens depend on what the cache holds), and the language model's RMSNorm
    weights drawn from [0.5, 1.5] (with weights of exactly 1 every attention input has norm
    sqrt(hidden), and GUI-KV's standardised-norm saliency is noise).
    """
    path = build_tiny(path, seed=seed, **HEAD_DIM_64_TEXT)
    weights_file = path / "model.safetensors"
    weights = load_file(weights_file)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in weights.items():
        if name.endswith("layernorm.weight") and "visual" not in name:
            weights[name] = 0.5 + torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype)
    save_file(weights, weights_file, metadata={"format": "pt"})
    return path


def cache_root() -> Path:
    """Where guikv keeps built artefacts: `$GUIKV_CACHE`, else `$XDG_CACHE_HOME/guikv` or `~/.cache/guikv`."""
    if os.environ.get("GUIKV_CACHE"):
        return Path(os.environ["GUIKV_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "guikv"


def tiny_model_dir() -> Path:
    """The cached tiny model's directory, built on first use (atomically, so parallel processes
    never see a half-written copy)."""
    target = cache_root() / f"tiny-qwen2_5_vl-{TINY_VERSION}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        build_tiny(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
