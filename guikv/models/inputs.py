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
    sized = [
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
    text = processor.apply_chat_template(sized, tokenize=False, add_generation_prompt=True)
    images, _ = process_vision_info(sized)
    return processor(text=[text], images=images, return_tensors="pt")
