"""Turning chat messages into model inputs, per family."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
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


ANSWER_SENTINEL = "\u2063guikv-answer\u2063"
"""Stands in for an assistant answer when rendering a conversation, to find where it sits."""


def qwen_turn_inputs(
    processor: Any,
    before: Sequence[Message],
    after: Sequence[Message],
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> Any:
    """Processor inputs of what a conversation adds after its last answer: `after` is `before`
    (a prompt ending in the generation prompt) plus one assistant turn and new user turns; the
    result holds the tokens that follow the answer's text (the turn's close, the new turns, the
    generation prompt) and only the new turns' images. The chat template renders both, so the
    tokens are exactly those a prompt of `after` holds after the answer; a template that does not
    extend `before`'s prompt this way raises `ValueError`."""
    answer = len(before)
    if len(after) <= answer + 1 or after[answer].get("role") != "assistant":
        raise ValueError(f"after must extend before's {answer} turns with an assistant turn and new turns")
    marked = [*after[:answer], {**after[answer], "content": ANSWER_SENTINEL}, *after[answer + 1 :]]
    prompt = processor.apply_chat_template(list(before), tokenize=False, add_generation_prompt=True)
    whole = processor.apply_chat_template(marked, tokenize=False, add_generation_prompt=True)
    head, sentinel, tail = whole.partition(ANSWER_SENTINEL)
    if not sentinel or head != prompt:
        raise ValueError(
            "the chat template does not extend the previous prompt with the answer: a carried cache needs "
            "a template in which each turn is appended to the conversation unchanged"
        )
    new_turns = _sized(after[answer + 1 :], min_pixels, max_pixels)
    images = process_vision_info(new_turns)[0] or None
    return processor(text=[tail], images=images, return_tensors="pt")


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


def qwen_answer_token_inputs(
    processor: Any,
    messages: Sequence[Message],
    answers: Sequence[Sequence[int]],
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> dict[str, torch.Tensor]:
    """Processor inputs of a conversation whose assistant turns are the token ids the model
    generated (`answers`, one per assistant turn, in order), not their text: a re-prefill given
    these sees the very history a carried cache holds, where re-tokenizing a decoded answer can
    give other tokens (a byte-level token split inside a character decodes to U+FFFD).

    The chat template renders the conversation with every answer replaced by a sentinel; the text
    between two answers is processed with its own images, as a carried trajectory processes each
    new turn (`qwen_turn_inputs`), and each answer's ids go where its sentinel was. A carried cache
    holds an answer's last token once, so when the text after an answer starts with that token (the
    answer ended with the turn's end token) it is not repeated."""
    turns = [index for index, message in enumerate(messages) if message.get("role") == "assistant"]
    if len(turns) != len(answers):
        raise ValueError(f"{len(answers)} answers for a conversation with {len(turns)} assistant turns")
    placeholders = {getattr(processor, name, None) for name in ("image_token_id", "video_token_id")} - {None}
    for step, answer in enumerate(answers):
        if placeholders & set(answer):
            raise ValueError(
                f"answer {step} holds an image placeholder token: a prompt holding it would take it for a "
                "screenshot's place, so it cannot be re-prefilled as generated"
            )
    sized = _sized(messages, min_pixels, max_pixels)
    marked = [
        {**message, "content": ANSWER_SENTINEL} if index in turns else message
        for index, message in enumerate(sized)
    ]
    text = processor.apply_chat_template(marked, tokenize=False, add_generation_prompt=True)
    pieces = text.split(ANSWER_SENTINEL)
    if len(pieces) != len(answers) + 1:
        raise ValueError("the chat template does not render each answer once, where its turn is")
    bounds = [-1, *turns, len(sized)]
    ids, grids, pixels = [], [], []
    for index, piece in enumerate(pieces):
        between = sized[bounds[index] + 1 : bounds[index + 1]]
        images = (process_vision_info(between)[0] or None) if _has_images(between) else None
        part = processor(text=[piece], images=images, return_tensors="pt")
        piece_ids = part["input_ids"][0]
        if index and answers[index - 1] and int(piece_ids[0]) == answers[index - 1][-1]:
            piece_ids = piece_ids[1:]
        ids.append(piece_ids)
        if images is not None:
            grids.append(part["image_grid_thw"])
            pixels.append(part["pixel_values"])
        if index < len(answers):
            ids.append(torch.tensor(list(answers[index]), dtype=piece_ids.dtype))
    input_ids = torch.cat(ids)[None]
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if pixels:
        inputs["pixel_values"] = torch.cat(pixels)
        inputs["image_grid_thw"] = torch.cat(grids)
    image_token = getattr(processor, "image_token_id", None)
    if image_token is not None:
        inputs["mm_token_type_ids"] = (input_ids == image_token).long()
    return inputs


def _has_images(messages: Sequence[Message]) -> bool:
    """Whether any message holds an image item."""
    return any(
        isinstance(item, dict) and item.get("type") == "image"
        for message in messages
        if isinstance(message.get("content"), list)
        for item in message["content"]
    )
