"""A tiny offline stand-in with OpenCUA-7B's module layout, for tests and demos without the hub.

OpenCUA is remote code, so it cannot be built from transformers alone. The stand-in keeps what
guikv relies on: `config.model_type == "opencua"`, `config.media_placeholder_token_id`, the
language model as a real HF `Qwen2ForCausalLM` (1-D RoPE, GQA) at `model.language_model` (so the
decoder layers sit at `language_model.model.layers`), OpenCUA's media tokens in the chat template,
and `generate(input_ids, pixel_values=, grid_thws=)`. Its vision tower is one linear projection
of each 2x2 group of patches, which replaces the placeholder embeddings; weights are random.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from guikv.agents.resize import MAX_PIXELS, MIN_PIXELS
from guikv.models.opencua import MEDIA_PLACEHOLDER, MEDIA_TOKENS, OpenCUAProcessor
from guikv.models.tiny import build_tokenizer

OPENCUA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|media_begin|>image<|media_content|><|media_pad|><|media_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A Qwen-style template writing each image as OpenCUA does: media begin, a type tag, media
content, one placeholder, media end (the placeholder is expanded per image by `opencua_inputs`)."""


class OpenCUAStandinConfig(PreTrainedConfig):
    """Config of the stand-in: a nested Qwen2 text config, the media placeholder id and the patch
    geometry of a Qwen2-VL image processor (3 channels x 2 frames x 14 x 14, merged 2x2)."""

    model_type = "opencua"
    sub_configs_defaults: ClassVar[dict[str, Any]] = {"text_config": Qwen2Config}

    text_config: dict | PreTrainedConfig | None = None
    media_placeholder_token_id: int = 0
    patch_dim: int = 3 * 2 * 14 * 14
    merge_size: int = 2


class OpenCUAStandin(PreTrainedModel, GenerationMixin):
    """OpenCUA's layout (`vision_tower`, `language_model: Qwen2ForCausalLM`) at toy size."""

    config_class = OpenCUAStandinConfig
    base_model_prefix = ""
    _no_split_modules: ClassVar[list[str]] = ["Qwen2DecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config: OpenCUAStandinConfig) -> None:
        super().__init__(config)
        text = config.text_config
        self.vision_tower = nn.Linear(config.patch_dim * config.merge_size**2, text.hidden_size)
        self.language_model = Qwen2ForCausalLM(text)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The language model's token embedding."""
        return self.language_model.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        grid_thws: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> Any:
        """Embed the prompt, put the projected patches at the placeholder positions, run the LM."""
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            placeholders = input_ids == self.config.media_placeholder_token_id
            if pixel_values is not None and placeholders.any():
                inputs_embeds = self._merge_images(inputs_embeds, placeholders, pixel_values)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def _merge_images(
        self,
        inputs_embeds: torch.Tensor,
        placeholders: torch.Tensor,
        pixel_values: torch.Tensor,
    ) -> torch.Tensor:
        """One projected feature per 2x2 patch group (the processor emits each group's patches
        consecutively, so `grid_thws` adds nothing), written over the placeholder embeddings."""
        group = self.config.patch_dim * self.config.merge_size**2
        features = self.vision_tower(pixel_values.to(inputs_embeds.dtype).reshape(-1, group))
        if int(placeholders.sum()) != features.shape[0]:
            raise ValueError(
                f"{int(placeholders.sum())} media placeholder tokens for {features.shape[0]} image features: "
                "build inputs with guikv.models.opencua.opencua_inputs"
            )
        return inputs_embeds.masked_scatter(placeholders[..., None], features)


def build_opencua_standin(
    seed: int = 0, attn_implementation: str = "sdpa"
) -> tuple[OpenCUAStandin, OpenCUAProcessor]:
    """A random OpenCUA stand-in (4 layers, 4 query / 2 KV heads, head_dim 16) and its processor,
    deterministic for a given seed."""
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(list(MEDIA_TOKENS), special_tokens=True)
    tokenizer.chat_template = OPENCUA_CHAT_TEMPLATE
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=False,
    )
    text._attn_implementation = attn_implementation
    config = OpenCUAStandinConfig(
        text_config=text,
        media_placeholder_token_id=tokenizer.convert_tokens_to_ids(MEDIA_PLACEHOLDER),
        pad_token_id=pad,
        eos_token_id=eos,
    )
    torch.manual_seed(seed)
    model = OpenCUAStandin(config).eval()
    model.generation_config.do_sample = False
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    return model, OpenCUAProcessor(tokenizer=tokenizer, image_processor=image_processor)
