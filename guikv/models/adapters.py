"""What guikv needs to know about a model family: where its decoder layers are, which token ids
stand for image patches, how a prompt's inputs are built and where its screenshots sit in the
sequence the decoder layers see. A registry keyed by `config.model_type`; everything else is
generic."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

from guikv.layout import TokenLayout
from guikv.models import opencua
from guikv.models.inputs import Message, qwen_answer_token_inputs, qwen_inputs, qwen_turn_inputs
from guikv.models.positions import (
    no_position_state,
    qwen_vl_batch_positions,
    qwen_vl_decode_offset,
    qwen_vl_turn_positions,
)

LayoutBuilder = Callable[[PretrainedConfig, torch.Tensor, Mapping[str, Any]], TokenLayout]


def _nothing_to_prepare(model: nn.Module) -> None:
    """Families whose forward needs no help from guikv."""


@dataclass(frozen=True)
class Carrying:
    """How a family feeds one more turn on a cache carried from the previous agent step:
    `turn_inputs(processor, before, after)` the processor inputs of the tokens `after` adds after
    its last answer (only the new images); `turn_positions(model, inputs, start)` their position
    ids fed from position `start`, and the position after them; `decode_offset(model, offset)`
    makes `generate()` decode at logical position + offset; `answer_token_inputs(processor,
    messages, answers)` a whole conversation's inputs with each answer as the token ids generated
    (the history a carried cache holds, for a re-prefill of the same step)."""

    turn_inputs: Callable[[Any, Sequence[Message], Sequence[Message]], Any]
    turn_positions: Callable[[nn.Module, Mapping[str, torch.Tensor], int], tuple[torch.Tensor, int]]
    decode_offset: Callable[[nn.Module, int], None]
    answer_token_inputs: Callable[[Any, Sequence[Message], Sequence[Sequence[int]]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ModelAdapter:
    """How to reach one family's language-model decoder layers and image placeholder tokens.

    `layers_path` is the dotted attribute path from the top-level model to the decoder layer list;
    `image_token_attrs` the config attributes holding image placeholder token ids;
    `build_inputs(processor, messages)` turns chat messages into the model's generate() inputs;
    `prepare_batch_decode(model, padded_batch)` sets the model's position state for decoding
    together rows that were prefilled one at a time (Qwen-VL: the batch's M-RoPE offsets; None:
    the family cannot run a batch under compression);
    `layout_builder(config, input_ids, forward_kwargs)` gives the token layout the decoder layers
    see (None: the image runs of `input_ids`, already expanded by the processor); `prepare(model)`
    is applied once at load time (OpenCUA: logical decode positions); `carrying` how a cache
    is carried from one agent step to the next (None: the family cannot, see `guikv.trajectory`).
    """

    family: str
    layers_path: str
    image_token_attrs: tuple[str, ...]
    build_inputs: Callable[[Any, Sequence[Message]], Any] = qwen_inputs
    layout_builder: LayoutBuilder | None = None
    prepare: Callable[[nn.Module], None] = _nothing_to_prepare
    prepare_batch_decode: Callable[[nn.Module, Mapping[str, torch.Tensor]], None] | None = no_position_state
    carrying: Carrying | None = None

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The language model's decoder layers, in order."""
        module: object = model
        for name in self.layers_path.split("."):
            module = getattr(module, name, None)
            if module is None:
                raise ValueError(
                    f"{type(model).__name__} has no {self.layers_path}: not a {self.family} model layout"
                )
        if not isinstance(module, nn.ModuleList):
            raise ValueError(f"{type(model).__name__}.{self.layers_path} is not a list of decoder layers")
        return module

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """Each decoder layer's self-attention module, in layer order."""
        return [layer.self_attn for layer in self.decoder_layers(model)]

    def image_token_ids(self, config: PretrainedConfig) -> list[int]:
        """The ids of the tokens that stand for image patches (empty for a text-only model)."""
        ids = [getattr(config, attr, None) for attr in self.image_token_attrs]
        return [int(token_id) for token_id in ids if token_id is not None]

    def prompt_layout(
        self, config: PretrainedConfig, input_ids: torch.Tensor, forward_kwargs: Mapping[str, Any]
    ) -> TokenLayout:
        """Where each screenshot sits in the sequence the decoder layers see, from the top-level
        forward's `input_ids` and keyword arguments (OpenCUA needs `grid_thws` to expand its
        single placeholder per image; Qwen-VL prompts are expanded already)."""
        if self.layout_builder is not None:
            return self.layout_builder(config, input_ids, forward_kwargs)
        return TokenLayout.from_input_ids(input_ids, self.image_token_ids(config))


QWEN_VL = ModelAdapter(
    "ui-tars",
    "model.language_model.layers",
    ("image_token_id",),
    prepare_batch_decode=qwen_vl_batch_positions,
    carrying=Carrying(
        qwen_turn_inputs, qwen_vl_turn_positions, qwen_vl_decode_offset, qwen_answer_token_inputs
    ),
)
OPENCUA = ModelAdapter(
    "opencua",
    "language_model.model.layers",
    ("media_placeholder_token_id",),
    build_inputs=opencua.opencua_inputs,
    prepare_batch_decode=None,
    layout_builder=opencua.prompt_layout,
    prepare=opencua.keep_decode_positions_logical,
)
QWEN2_TEXT = ModelAdapter("qwen2", "model.layers", ())
QWEN3_TEXT = ModelAdapter("qwen3", "model.layers", ())

ADAPTERS: dict[str, ModelAdapter] = {
    "qwen2_5_vl": QWEN_VL,
    "qwen2_vl": QWEN_VL,
    "opencua": OPENCUA,
    "qwen2": QWEN2_TEXT,
    "qwen3": QWEN3_TEXT,
}


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter for a loaded model, from its config's model_type."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"model_type {model_type!r} is not supported: expected one of {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]


def text_config(config: PretrainedConfig) -> PretrainedConfig:
    """The language model's config (the nested `text_config` of a VLM, or the config itself)."""
    return getattr(config, "text_config", None) or config
