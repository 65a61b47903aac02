"""The registry of agent families: one object per model family with the same interface.

Benchmarks and the CLI only talk to an `AgentFamily`, so adding a model family means adding one
module with the same functions and one entry here. `detect_family` picks the family from a model's
transformers config so users rarely need `--family`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from guikv.agents import opencua, ui_tars
from guikv.agents.action import Action
from guikv.agents.prompting import ImageLike, Message
from guikv.errors import UserInputError


@dataclass(frozen=True)
class AgentFamily:
    """A model family's prompts, output parser and formatter, with identical signatures across
    families:

    - `computer_use_messages(task, screenshots, history_outputs, max_history_screenshots=4,
      history_window=10)`: AgentNetBench, `screenshots[-1]` current, one history entry per
      earlier step;
    - `grounding_messages(instruction, screenshot)`: ScreenSpot;
    - `mobile_messages(goal, screenshot, previous_actions, step_instruction=None)`: AndroidControl;
    - `web_messages(task, screenshot, previous_actions)`: Mind2Web;
    - `parse(text, image_size, *, min_pixels, max_pixels) -> list[Action]`;
    - `format_action(action, image_size, *, min_pixels, max_pixels) -> str`, the inverse of parse.

    `one_step_messages(task, screenshots)` builds the prompt of a one-off step from the
    computer-use prompt (what `guikv infer`, `guikv compare` and `guikv analyze-attention` ask).
    """

    name: str
    computer_use_messages: Callable[..., list[Message]]
    grounding_messages: Callable[[str, ImageLike], list[Message]]
    mobile_messages: Callable[..., list[Message]]
    web_messages: Callable[[str, ImageLike, Sequence[str]], list[Message]]
    parse: Callable[..., list[Action]]
    format_action: Callable[..., str]

    def one_step_messages(self, task: str, screenshots: Sequence[ImageLike]) -> list[Message]:
        """The computer-use prompt of a one-off step: `screenshots[-1]` is the current screen,
        shown with the task; every earlier one is its own user turn, oldest first, with no
        assistant turn after it (a one-off step has no earlier answers, and inventing empty ones
        would change what the model sees)."""
        history = len(screenshots) - 1
        return self.computer_use_messages(
            task, list(screenshots), [""] * history, max_history_screenshots=history, history_window=0
        )


FAMILIES: dict[str, AgentFamily] = {
    module.NAME: AgentFamily(
        name=module.NAME,
        computer_use_messages=module.computer_use_messages,
        grounding_messages=module.grounding_messages,
        mobile_messages=module.mobile_messages,
        web_messages=module.web_messages,
        parse=module.parse,
        format_action=module.format_action,
    )
    for module in (ui_tars, opencua)
}
"""Every family by name: `"ui-tars"` and `"opencua"`."""

FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)

_UI_TARS_MODEL_TYPES = frozenset({"qwen2_5_vl", "qwen2_vl"})


def get_family(name: str) -> AgentFamily:
    """The family called `name`; a `UserInputError` naming `--family` and the choices otherwise."""
    family = FAMILIES.get(name.strip().lower())
    if family is None:
        raise UserInputError(
            f"unknown agent family {name!r} for --family; choose one of: {', '.join(FAMILY_NAMES)}"
        )
    return family


def detect_family(config: Any) -> str:
    """The family name for a transformers config (a `PretrainedConfig` or its dict).

    `model_type` `qwen2_5_vl` (UI-TARS-1.5) or `qwen2_vl` gives `"ui-tars"`; `opencua`, or an
    architecture name containing "OpenCUA", gives `"opencua"`. Anything else raises a
    `UserInputError` asking for `--family`. Note a Qwen2-VL-based UI-TARS-1.0 answers in 0-1000
    relative coordinates, which the UI-TARS parser (built for 1.5's pixels) does not convert.
    """
    model_type = _field(config, "model_type")
    architectures = _field(config, "architectures") or []
    if not isinstance(architectures, (list, tuple)):
        architectures = [architectures]
    if isinstance(model_type, str) and model_type.lower() == "opencua":
        return opencua.NAME
    if any("opencua" in str(name).lower() for name in architectures):
        return opencua.NAME
    if isinstance(model_type, str) and model_type.lower() in _UI_TARS_MODEL_TYPES:
        return ui_tars.NAME
    raise UserInputError(
        f"cannot tell the agent family of model_type={model_type!r} "
        f"(architectures={list(architectures)!r}); pass --family with one of: {', '.join(FAMILY_NAMES)}"
    )


def _field(config: Any, key: str) -> Any:
    """`config[key]` for a mapping, `config.key` otherwise; None when absent."""
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)
