"""OpenCUA-7B's forward contract, its inputs, and the prompt layout guikv scores.

The contract (what the remote-code model `xlangai/OpenCUA-7B` expects and does), with where it
was read:

- **Tokens.** Each screenshot is written `<|media_begin|>image<|media_content|>`
  `<|media_placeholder|><|media_end|>`: ONE placeholder per image, whose id is
  `config.media_placeholder_token_id` (151664 on the checkpoint). Read from vLLM's
  `vllm/model_executor/models/opencua.py` (commit 045d7575): `OpenCUAProcessor.__init__` sets
  `image_token = "<|media_placeholder|>"`, `get_placeholder_str` returns one per image, and
  `_get_prompt_updates` looks the id up in the vocabulary, falling back to
  `media_placeholder_token_id`; and from a third-party audit of the checkpoint's
  `tokenizer_config.json` at revision a2efb7d2 (chat template markup above).
- **Where expansion happens.** Inside the model's own forward: a LLaVA-style
  `_merge_input_ids_with_image_features` gives each placeholder `t·h·w / merge²` positions (a
  token occupation table, `feature_lengths` from `grid_thws`) and writes the vision features
  there. A prompt whose placeholders are already expanded has more placeholders than images and
  fails there (a shape mismatch in the occupation table, or for a single image the check that
  the filled positions match the feature count). vLLM, whose engine wants
  expanded prompts, therefore expands the single placeholder itself (`_get_prompt_updates`:
  `[image_token_id] * (grid_thw.prod() // merge_length)`), which confirms that the HF prompt
  holds one per image. GUI-KV's own code passes the template's ids unexpanded and located the
  screenshots by adding `t·h·w/4` to the `<|media_begin|>` positions (spec/method.md §1 "Image
  spans" and §4.0 "OpenCUA input").
- **Inputs.** `generate(input_ids, pixel_values=..., grid_thws=...)`, where `pixel_values` and
  `grid_thws` are the Qwen2-VL image processor's `pixel_values` and `image_grid_thw`; the merge
  size is `config.vision_config.spatial_merge_size` (a `Qwen2_5_VLVisionConfig`, 2).
- **Positions.** 1-D RoPE (the language model is a HF `Qwen2ForCausalLM` at `language_model`). At
  prefill `position_ids = cumsum(expanded attention mask) - 1`. At a decode step with
  `pixel_values` still passed (a hand-written loop, or a `generate` that forwards every model
  kwarg at every step, as transformers 4.x does for models without their own
  `prepare_inputs_for_generation`) the legacy branch rebuilds the mask as ones over
  `past_key_values[0][0]`'s length plus the new token and sets `position_ids = mask.sum() - 1`:
  the position comes from layer 0's PHYSICAL cache length, which after guikv's cut is the kept
  count. Without `pixel_values` (transformers 5.x `generate` drops them after the prefill:
  `MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL` in `generation/utils.py`) the forward uses the
  positions `generate` passes, which it counted over the unexpanded `input_ids` (each image as one
  token): too small by the images' expansion, with or without compression. `grid_thws` is not in
  that list, so it reaches every step.

The HF `modeling_opencua.py` itself was not readable from here (it is not in the stored code
corpus; a third-party audit describes it as "a LLaVA-style wrapper of the Qwen2.5-VL vision
tower and `Qwen2ForCausalLM` that merges image features into the embedding sequence"). The merge
and decode-branch behaviour above is that LLaVA-legacy merge as it appears, with the same
`forward(input_ids, pixel_values, grid_thws, ...)` signature, in Moonshot's Kimi remote code
(`_merge_input_ids_with_image_features` and the `first_layer_past_key_value` decode branch of
`modeling_kimi_k25.py`, read in third-party ports); OpenCUA uses Kimi-VL's tokenizer and chat
template. `opencua_standin.py` reproduces this contract.

What guikv does for it:
- `opencua_inputs` passes the template's ids unexpanded (one placeholder per image).
- `prompt_layout` computes what the decoder layers see: each placeholder expanded to its image's
  token count, so the spans guikv scores are the runs the model fills (this also fixes the
  original's off-by-one from the second image on, bug B14). Expanded or missing placeholders are
  a `ValueError`, since the model would expand twice or misplace the images.
- `keep_decode_positions_logical` (installed by `load`) gives decode steps explicit logical
  positions (`generate`'s position plus the images' expansion) and drops the pixels, so neither
  `generate`'s unexpanded count nor the legacy branch's physical cache length is used.

Unverified here (no checkpoint): whether the remote code loads on transformers 5.x at all; a
third party reports that 5.6's `post_init` calls its `tie_weights()` with an argument it lacks,
and its decode branch indexes the cache as `past_key_values[0][0]`, which 5.x caches refuse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from qwen_vl_utils import process_vision_info
from torch import nn
from transformers import BatchFeature, PretrainedConfig

from guikv.agents.resize import MAX_PIXELS, MIN_PIXELS
from guikv.layout import TokenLayout, grids_from_thw
from guikv.models.inputs import Message

MEDIA_BEGIN = "<|media_begin|>"
MEDIA_CONTENT = "<|media_content|>"
MEDIA_PLACEHOLDER = "<|media_placeholder|>"
MEDIA_END = "<|media_end|>"
MEDIA_TOKENS = (MEDIA_BEGIN, MEDIA_CONTENT, MEDIA_PLACEHOLDER, MEDIA_END)
"""OpenCUA's media special tokens; the placeholder's id is `config.media_placeholder_token_id`."""

IMAGE_MARKUP = f"{MEDIA_BEGIN}image{MEDIA_CONTENT}{MEDIA_PLACEHOLDER}{MEDIA_END}"
"""How OpenCUA's chat template writes one image."""

_DECODE_HOOK_ATTR = "_guikv_logical_decode_positions"


@dataclass
class OpenCUAProcessor:
    """OpenCUA's tokenizer and image processor held together, so code written for a joint
    processor (`batch_decode`, `image_processor.merge_size`) works unchanged."""

    tokenizer: Any
    image_processor: Any

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        """Decode generated token ids with the tokenizer."""
        return self.tokenizer.batch_decode(sequences, **kwargs)


def tokens_per_image(grid_thws: torch.Tensor, merge_size: int) -> list[int]:
    """How many positions each image fills in the model's sequence: `t·h·w / merge²`."""
    return [int(t * h * w) // merge_size**2 for t, h, w in grid_thws.tolist()]


def merge_size_of(config: PretrainedConfig) -> int:
    """The vision tower's spatial merge size (`config.vision_config.spatial_merge_size`)."""
    return int(config.vision_config.spatial_merge_size)


def placeholder_positions(input_ids: torch.Tensor, placeholder_id: int, num_images: int) -> list[int]:
    """Where the media placeholders sit in a [1, L] (or 1-D) id tensor: exactly one per image.

    Any other count is a `ValueError`: already expanded ids would be expanded a second time by the
    model, and missing placeholders would misplace the images.
    """
    ids = input_ids.reshape(-1) if input_ids.dim() == 1 or input_ids.shape[0] == 1 else None
    if ids is None:
        raise ValueError(f"input_ids has batch size {input_ids.shape[0]}: expected a batch of 1")
    positions = (ids == placeholder_id).nonzero().reshape(-1).tolist()
    if len(positions) != num_images:
        raise ValueError(
            f"input_ids hold {len(positions)} media placeholder tokens for {num_images} images: OpenCUA "
            "expands one placeholder per image inside its forward (pass the chat template's ids unexpanded)"
        )
    return positions


def expanded_layout(input_ids: torch.Tensor, placeholder_id: int, counts: Sequence[int]) -> TokenLayout:
    """The layout of the sequence the model builds from `input_ids` (one placeholder per image),
    image `i`'s placeholder expanded to `counts[i]` positions."""
    positions = placeholder_positions(input_ids, placeholder_id, len(counts))
    spans = []
    shift = 0
    for position, count in zip(positions, counts, strict=True):
        spans.append((position + shift, position + shift + count))
        shift += count - 1
    return TokenLayout(length=int(input_ids.shape[-1]) + shift, image_spans=tuple(spans))


def prompt_layout(
    config: PretrainedConfig, input_ids: torch.Tensor, forward_kwargs: Mapping[str, Any]
) -> TokenLayout:
    """The layout the decoder layers see for an OpenCUA prompt: the placeholders expanded by the
    images' `grid_thws` from the forward's keyword arguments, each span with its merged-token grid
    (no images: the ids as they are)."""
    grids = forward_kwargs.get("grid_thws")
    if grids is None:
        return expanded_layout(input_ids, int(config.media_placeholder_token_id), [])
    merge = merge_size_of(config)
    layout = expanded_layout(
        input_ids, int(config.media_placeholder_token_id), tokens_per_image(grids, merge)
    )
    return layout.with_grids(grids_from_thw(grids, merge))


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
    """`generate()` inputs for OpenCUA chat messages: `input_ids` as the chat template writes them
    (one media placeholder per image: the model expands it), `attention_mask`, `pixel_values`
    and `grid_thws`.

    Screenshots are resized once by `qwen_vl_utils` to the UI-TARS pixel range, as GUI-KV does for
    both model families, so the parsers' coordinate frame is the one the model saw.
    """
    sized = _with_pixel_range(messages, min_pixels, max_pixels)
    encoded = processor.tokenizer.apply_chat_template(sized, tokenize=True, add_generation_prompt=True)
    input_ids = torch.tensor([list(encoded["input_ids"] if isinstance(encoded, Mapping) else encoded)])
    images, _ = process_vision_info(sized)
    data: dict[str, torch.Tensor] = {}
    if images:
        pixels = processor.image_processor(images=images, return_tensors="pt")
        data = {"pixel_values": pixels["pixel_values"], "grid_thws": pixels["image_grid_thw"]}
    placeholder_id = processor.tokenizer.convert_tokens_to_ids(MEDIA_PLACEHOLDER)
    placeholder_positions(input_ids, placeholder_id, len(images or []))
    return BatchFeature({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **data})


def logical_decode_position(
    position_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    grid_thws: torch.Tensor | None,
    merge_size: int,
    cache: Any,
) -> int:
    """The logical position of a decode step's token (one token, batch 1).

    `generate` only knows the unexpanded `input_ids`, so the positions it passes (or the length of
    its attention mask, minus one) count each image as one token; the images' expansion is added
    back from `grid_thws`, which `generate` passes at every step. With neither, the cache's
    reported length (logical once the cache keeps its logical length).
    """
    if position_ids is not None:
        unexpanded = int(position_ids.reshape(-1)[-1])
    elif attention_mask is not None:
        unexpanded = int(attention_mask.shape[-1]) - 1
    else:
        return int(cache.get_seq_length())
    counts = tokens_per_image(grid_thws, merge_size) if grid_thws is not None else []
    return unexpanded + sum(count - 1 for count in counts)


def _logical_decode_inputs(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
    """Top-level pre-hook: at a decode step, pass the logical position and no pixels or 2-D mask, so
    neither `generate`'s unexpanded positions nor the model's legacy decode branch (positions
    from the physical cache) decide where the token sits."""
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if input_ids is None or input_ids.shape[-1] != 1 or cache is None or cache.get_seq_length() == 0:
        return None
    position = logical_decode_position(
        kwargs.get("position_ids"),
        kwargs.get("attention_mask"),
        kwargs.get("grid_thws"),
        merge_size_of(module.config),
        cache,
    )
    position_ids = torch.full((input_ids.shape[0], 1), position, dtype=torch.long, device=input_ids.device)
    changed = {"pixel_values": None, "grid_thws": None, "attention_mask": None, "position_ids": position_ids}
    return args, {**kwargs, **changed}


def keep_decode_positions_logical(model: nn.Module) -> None:
    """Install (once) the pre-hook that gives OpenCUA's decode steps logical positions.

    Needed twice over: transformers 5.x `generate` drops `pixel_values` after the prefill and
    passes positions counted over the unexpanded prompt (each image as one token), and when
    `pixel_values` are passed (transformers 4.x `generate`, hand-written loops) OpenCUA's forward
    derives the position from layer 0's physical cache length, which after a cut is the kept
    count. With the hook, decode positions are the prompt's expanded length onwards, with and
    without compression.
    """
    if getattr(model, _DECODE_HOOK_ATTR, False):
        return
    model.register_forward_pre_hook(_logical_decode_inputs, with_kwargs=True)
    setattr(model, _DECODE_HOOK_ATTR, True)
