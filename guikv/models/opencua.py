"""OpenCUA-7B's inputs: its chat template, its image processor and the media placeholder run.

OpenCUA (`xlangai/OpenCUA-7B`, remote code) is a Qwen2.5-VL-style vision tower in front of a HF
`Qwen2ForCausalLM` (1-D RoPE) at `model.language_model`. It ships no joint processor: the prompt
is `tokenizer.apply_chat_template(messages, tokenize=True)`, where each screenshot reads
`<|media_begin|> ... <|media_pad|> <|media_end|>`, and the pixels come from its Qwen2-VL image
processor (`pixel_values`, `image_grid_thw`), passed to `generate` as `pixel_values=` and
`grid_thws=`.

The original GUI-KV code located the screenshots by adding `t·h·w/4` to the `<|media_begin|>` /
`<|media_end|>` positions, which is off by one from the second image on (bug B14). Here the
placeholder is expanded in `input_ids` to one token per merged patch, so every screenshot's span
is simply its run of placeholder tokens (`TokenLayout.from_input_ids`), exactly what the decoder
layers see.

Unverified against the hub checkpoint (not downloadable here): this assumes its forward fills the
placeholder positions one to one, as the stand-in (`opencua_standin.py`) does. If its forward
expands a single placeholder per image itself, pass the template's ids unexpanded and expand them
only for the layout instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from qwen_vl_utils import process_vision_info
from transformers import BatchFeature

from guikv.agents.resize import MAX_PIXELS, MIN_PIXELS
from guikv.layout import spans_of
from guikv.models.inputs import Message

MEDIA_BEGIN = "<|media_begin|>"
MEDIA_CONTENT = "<|media_content|>"
MEDIA_PLACEHOLDER = "<|media_pad|>"
MEDIA_END = "<|media_end|>"
MEDIA_TOKENS = (MEDIA_BEGIN, MEDIA_CONTENT, MEDIA_PLACEHOLDER, MEDIA_END)
"""OpenCUA's media special tokens; the placeholder's id is `config.media_placeholder_token_id`."""


@dataclass
class OpenCUAProcessor:
    """OpenCUA's tokenizer and image processor held together, so code written for a joint
    processor (`batch_decode`, `image_processor.merge_size`) works unchanged."""

    tokenizer: Any
    image_processor: Any

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        """Decode generated token ids with the tokenizer."""
        return self.tokenizer.batch_decode(sequences, **kwargs)


def expand_placeholders(
    ids: Sequence[int], placeholder_id: int, tokens_per_image: Sequence[int]
) -> list[int]:
    """`ids` with each image's placeholder repeated to one token per merged patch.

    A template may emit one placeholder per image (expanded here) or an already expanded run
    (kept). A run count that differs from the image count, or a run of the wrong length, is a
    `ValueError`: the prompt and the images would not line up.
    """
    flags = torch.tensor(list(ids)) == placeholder_id
    runs = spans_of(flags)
    if len(runs) != len(tokens_per_image):
        raise ValueError(
            f"the prompt has {len(runs)} media placeholder runs for {len(tokens_per_image)} images: "
            "expected one per image"
        )
    expanded: list[int] = []
    cursor = 0
    for (start, end), count in zip(runs, tokens_per_image, strict=True):
        if end - start not in (1, count):
            raise ValueError(
                f"a media placeholder run of {end - start} tokens cannot hold an image of {count} tokens"
            )
        expanded.extend(ids[cursor:start])
        expanded.extend([placeholder_id] * count)
        cursor = end
    expanded.extend(ids[cursor:])
    return expanded


def _with_pixel_range(messages: Sequence[Message], min_pixels: int, max_pixels: int) -> list[Message]:
    """The messages with every image entry carrying the pixel range `qwen_vl_utils` resizes to."""
    sized: list[Message] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [
                {**item, "min_pixels": min_pixels, "max_pixels": max_pixels}
                if isinstance(item, dict) and item.get("type") == "image"
                else item
                for item in content
            ]
        sized.append({**message, "content": content})
    return sized


def opencua_inputs(
    processor: OpenCUAProcessor,
    messages: Sequence[Message],
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> BatchFeature:
    """`generate()` inputs for OpenCUA chat messages: `input_ids` (placeholders expanded),
    `attention_mask`, `pixel_values` and `grid_thws`.

    Screenshots are resized once by `qwen_vl_utils` to the UI-TARS pixel range, as GUI-KV does for
    both model families, so the parsers' coordinate frame is the one the model saw.
    """
    sized = _with_pixel_range(messages, min_pixels, max_pixels)
    encoded = processor.tokenizer.apply_chat_template(sized, tokenize=True, add_generation_prompt=True)
    ids = list(encoded["input_ids"] if isinstance(encoded, Mapping) else encoded)
    images, _ = process_vision_info(sized)
    placeholder_id = processor.tokenizer.convert_tokens_to_ids(MEDIA_PLACEHOLDER)
    data: dict[str, torch.Tensor] = {}
    counts: list[int] = []
    if images:
        pixels = processor.image_processor(images=images, return_tensors="pt")
        merge = processor.image_processor.merge_size
        grids = pixels["image_grid_thw"]
        counts = [int(t * h * w) // merge**2 for t, h, w in grids.tolist()]
        data = {"pixel_values": pixels["pixel_values"], "grid_thws": grids}
    input_ids = torch.tensor([expand_placeholders(ids, placeholder_id, counts)])
    return BatchFeature({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **data})
