"""What guikv needs to know about a model family: where its decoder layers are and which token ids
stand for image patches. A registry keyed by `config.model_type`; everything else is generic."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import PretrainedConfig

from guikv.models.inputs import Message, qwen_inputs
from guikv.models.opencua import opencua_inputs


@dataclass(frozen=True)
class ModelAdapter:
    """How to reach one family's language-model decoder layers and image placeholder tokens.

    `layers_path` is the dotted attribute path from the top-level model to the decoder layer list;
    `image_token_attrs` the config attributes holding image placeholder token ids;
    `build_inputs(processor, messages)` turns chat messages into the model's generate() inputs.
    """

    family: str
    layers_path: str
    image_token_attrs: tuple[str, ...]
    build_inputs: Callable[[Any, Sequence[Message]], Any] = qwen_inputs

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


QWEN_VL = ModelAdapter("ui-tars", "model.language_model.layers", ("image_token_id",))
OPENCUA = ModelAdapter(
    "opencua", "language_model.model.layers", ("media_placeholder_token_id",), build_inputs=opencua_inputs
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
