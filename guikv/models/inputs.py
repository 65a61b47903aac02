"""Turning chat messages into model inputs, per family."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qwen_vl_utils import process_vision_info

from guikv.agents.resize import MAX_PIXELS, MIN_PIXELS

Message = dict[str, Any]


def qwen_inputs(
    processor: Any, messages: Sequence[Message], min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> Any:
    """Processor inputs for Qwen-VL chat messages; images are resized once by qwen-vl-utils with the
    processor's own pixel range, so the processor does not resize them again."""
    return qwen_batch_inputs(processor, [messages], min_pixels, max_pixels)


def qwen_batch_inputs(
    processor: Any,
    conversations: Sequence[Sequence[Message]],
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> Any:
    """Processor inputs for several Qwen-VL conversations at once: one row each, padded on the
    left (the side `compress()` and batched `generate()` need), whatever the tokenizer's own
    padding side; every row's images in row order."""
    sized = [_sized(messages, min_pixels, max_pixels) for messages in conversations]
    texts = [
        processor.apply_chat_template(rows, tokenize=False, add_generation_prompt=True) for rows in sized
    ]
    images = [image for rows in sized for image in (process_vision_info(rows)[0] or [])]
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return processor(text=texts, images=images or None, return_tensors="pt", padding=len(texts) > 1)
    finally:
        tokenizer.padding_side = side


def _sized(messages: Sequence[Message], min_pixels: int, max_pixels: int) -> list[Message]:
    """The messages with every image item carrying the pixel range qwen-vl-utils resizes to."""
    return [
        {
            **message,
            "content": [
                {**item, "min_pixels": min_pixels, "max_pixels": max_pixels}
                if isinstance(item, dict) and item.get("type") == "image"
                else item
                for item in message["content"]
            ],
        }
        if isinstance(message.get("content"), list)
        else message
        for message in messages
    ]
