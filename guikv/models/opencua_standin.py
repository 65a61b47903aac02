"""A tiny offline stand-in that reproduces OpenCUA-7B's forward contract, for tests and demos.

OpenCUA is remote code (`xlangai/OpenCUA-7B`), so it cannot be built from transformers alone. The
stand-in keeps every part of it guikv relies on, as documented in `guikv.models.opencua`:

- `config.model_type == "opencua"`, `config.media_placeholder_token_id` (the id of
  `<|media_placeholder|>`) and `config.vision_config.spatial_merge_size`;
- the language model as a real HF `Qwen2ForCausalLM` (1-D RoPE, GQA) at `model.language_model`, so
  the decoder layers sit at `language_model.model.layers`;
- the chat template's image markup `<|media_begin|>image<|media_content|><|media_placeholder|>`
  `<|media_end|>`, one placeholder per image;
- `forward(input_ids, pixel_values=, grid_thws=, ...)` that expands each placeholder into
  `t·h·w / merge²` positions itself (a token occupation table, as the LLaVA-style
  `_merge_input_ids_with_image_features`), refuses placeholders that do not match the images
  one to one, and sets prefill positions to `cumsum(mask) - 1`;
- the legacy decode branch: with one new token, a cache and `pixel_values` passed, the mask is
  rebuilt over layer 0's physical cache length and `position_ids = mask.sum() - 1`.

Its vision tower is one linear projection of each `merge x merge` group of patches; weights are
random. `build_opencua_standin` applies guikv's load-time preparation, as `guikv.models.load`
does for the real checkpoint.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from guikv.agents.resize import MAX_PIXELS, MIN_PIXELS
from guikv.models.adapters import OPENCUA
from guikv.models.opencua import IMAGE_MARKUP, MEDIA_PLACEHOLDER, MEDIA_TOKENS, OpenCUAProcessor
from guikv.models.tiny import build_tokenizer

OPENCUA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}" + IMAGE_MARKUP + "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A Qwen-style template (the real one uses Kimi-style role tokens) writing each image with
OpenCUA's markup: media begin, the type tag, media content, ONE placeholder, media end."""


_LM_PARAMETERS = inspect.signature(Qwen2ForCausalLM.forward).parameters
CACHE_KWARG = "cache" if "cache" in _LM_PARAMETERS else "past_key_values"
"""The name the installed transformers gives the cache argument (`cache` from 5.24 on)."""


class OpenCUAStandinConfig(PreTrainedConfig):
    """Config of the stand-in: a nested Qwen2 text config, a Qwen2.5-VL vision config (for the patch
    geometry and `spatial_merge_size`) and the media placeholder id."""

    model_type = "opencua"
    sub_configs_defaults: ClassVar[dict[str, Any]] = {
        "text_config": Qwen2Config,
        "vision_config": Qwen2_5_VLVisionConfig,
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    media_placeholder_token_id: int = 0


class OpenCUAStandin(PreTrainedModel, GenerationMixin):
    """OpenCUA's layout (`vision_tower`, `language_model: Qwen2ForCausalLM`) and forward contract
    at toy size."""

    config_class = OpenCUAStandinConfig
    base_model_prefix = ""
    _no_split_modules: ClassVar[list[str]] = ["Qwen2DecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config: OpenCUAStandinConfig) -> None:
        super().__init__(config)
        vision = config.vision_config
        self.patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        self.merge_size = vision.spatial_merge_size
        self.vision_tower = nn.Linear(self.patch_dim * self.merge_size**2, config.text_config.hidden_size)
        self.language_model = Qwen2ForCausalLM(config.text_config)
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
        """Embed the prompt; at prefill expand each placeholder into its image's features, at a
        decode step with pixels rebuild mask and positions from the physical cache; run the LM.
        The cache is accepted as `cache` or `past_key_values` (transformers before 5.24)."""
        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            if pixel_values is not None and input_ids.shape[1] != 1:
                features = self._extract_image_features(pixel_values, grid_thws)
                inputs_embeds, attention_mask, position_ids = self._merge_input_ids_with_image_features(
                    features, inputs_embeds, input_ids, attention_mask
                )
            elif cache is not None and pixel_values is not None and input_ids.shape[1] == 1:
                past_length = cache.layers[0].keys.shape[-2]
                past_mask = attention_mask.new_ones((attention_mask.shape[0], past_length))
                attention_mask = torch.cat([past_mask, attention_mask[:, -1:]], dim=1)
                position_ids = attention_mask.sum(dim=1, keepdim=True) - 1
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **{CACHE_KWARG: cache},
            **kwargs,
        )

    def _extract_image_features(
        self, pixel_values: torch.Tensor, grid_thws: torch.Tensor
    ) -> list[torch.Tensor]:
        """One projected feature per `merge x merge` patch group (the processor emits each group's
        patches consecutively), split per image by `t·h·w / merge²`."""
        group = self.patch_dim * self.merge_size**2
        dtype = self.vision_tower.weight.dtype
        features = self.vision_tower(pixel_values.to(dtype).reshape(-1, group))
        lengths = (grid_thws.prod(dim=-1) // self.merge_size**2).tolist()
        return list(features.split(lengths))

    def _merge_input_ids_with_image_features(
        self,
        features: list[torch.Tensor],
        inputs_embeds: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The expanded embeddings, mask and positions: each placeholder occupies as many positions
        as its image has features (a token occupation table), text tokens move along."""
        if input_ids.shape[0] != 1:
            raise ValueError(f"the stand-in runs batch size 1, got {input_ids.shape[0]}")
        ids = input_ids[0]
        is_placeholder = ids == self.config.media_placeholder_token_id
        if int(is_placeholder.sum()) != len(features):
            raise ValueError(
                f"{int(is_placeholder.sum())} media placeholder tokens for {len(features)} images: OpenCUA "
                "expands one placeholder per image itself (the checkpoint's occupation table fails here too)"
            )
        occupation = torch.ones_like(ids)
        occupation[is_placeholder] = torch.tensor([f.shape[0] for f in features], device=ids.device)
        last_position = occupation.cumsum(-1) - 1
        total = int(occupation.sum())
        merged = inputs_embeds.new_zeros((1, total, inputs_embeds.shape[-1]))
        merged[0, last_position[~is_placeholder]] = inputs_embeds[0, ~is_placeholder]
        image_slots = torch.ones(total, dtype=torch.bool, device=ids.device)
        image_slots[last_position[~is_placeholder]] = False
        merged[0, image_slots] = torch.cat(features).to(merged.dtype)
        mask = torch.ones((1, total), dtype=torch.long, device=ids.device)
        if attention_mask is not None:
            mask[0, last_position[~is_placeholder]] = attention_mask[0, ~is_placeholder].long()
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        return merged, mask, position_ids


def build_opencua_standin(
    seed: int = 0, attn_implementation: str = "sdpa", *, prepared: bool = True
) -> tuple[OpenCUAStandin, OpenCUAProcessor]:
    """A random OpenCUA stand-in (4 layers, 4 query / 2 KV heads, head_dim 16) and its processor,
    deterministic for a given seed.

    `prepared` applies guikv's load-time preparation (`ModelAdapter.prepare`), as
    `guikv.models.load` does for the checkpoint; `False` gives the bare remote-code contract.
    """
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
    vision = Qwen2_5_VLVisionConfig(
        depth=1, hidden_size=16, intermediate_size=16, num_heads=1, out_hidden_size=64
    )
    config = OpenCUAStandinConfig(
        text_config=text,
        vision_config=vision,
        media_placeholder_token_id=tokenizer.convert_tokens_to_ids(MEDIA_PLACEHOLDER),
        pad_token_id=pad,
        eos_token_id=eos,
    )
    torch.manual_seed(seed)
    model = OpenCUAStandin(config).eval()
    model.generation_config.do_sample = False
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    if prepared:
        OPENCUA.prepare(model)
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    return model, OpenCUAProcessor(tokenizer=tokenizer, image_processor=image_processor)
