"""The agent-family registry: lookup, detection from a config, one interface across families."""

from __future__ import annotations

import inspect

import pytest
from transformers import PretrainedConfig, Qwen2_5_VLConfig

from guikv.agents import FAMILY_NAMES, Action, ActionType, collect_images, detect_family, get_family
from guikv.agents import opencua as opencua_module
from guikv.agents import ui_tars as ui_tars_module
from guikv.errors import UserInputError

SIZE = (1280, 720)
CALLABLES = (
    "computer_use_messages",
    "grounding_messages",
    "mobile_messages",
    "web_messages",
    "parse",
    "format_action",
)


def test_registry_names() -> None:
    assert FAMILY_NAMES == ("ui-tars", "opencua")
    assert get_family("ui-tars").name == "ui-tars"
    assert get_family(" OpenCUA ").name == "opencua"
    assert get_family("ui-tars").parse is ui_tars_module.parse
    assert get_family("opencua").format_action is opencua_module.format_action


def test_unknown_family_names_the_flag_and_choices() -> None:
    with pytest.raises(UserInputError) as error:
        get_family("cogagent")
    message = str(error.value)
    assert "--family" in message and "'cogagent'" in message
    assert "ui-tars" in message and "opencua" in message


def test_families_share_one_interface() -> None:
    first, second = (get_family(name) for name in FAMILY_NAMES)
    for attribute in CALLABLES:
        signature = inspect.signature(getattr(first, attribute))
        assert signature == inspect.signature(getattr(second, attribute)), attribute


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_prompts_put_images_first_and_current_last(family_name: str) -> None:
    family = get_family(family_name)
    screenshots = [f"step{k}.png" for k in range(5)]
    messages = family.computer_use_messages("task", screenshots, ["out"] * 4, 4)
    assert collect_images(messages) == screenshots
    for messages in (
        family.grounding_messages("OK button", "g.png"),
        family.mobile_messages("goal", "m.png", ["a", "b"]),
        family.mobile_messages("goal", "m.png", [], "step"),
        family.web_messages("task", "w.png", []),
    ):
        user = messages[-1]
        assert user["role"] == "user"
        assert [item["type"] for item in user["content"]] == ["image", "text"]
        assert len(collect_images(messages)) == 1


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_oracle_answers_round_trip_through_the_family(family_name: str) -> None:
    """What the benchmarks' oracle self-check does: format the ground truth, parse it back."""
    family = get_family(family_name)
    truth = [
        Action(ActionType.CLICK, point=(0.3271, 0.2694), thought="Click the search box."),
        Action(ActionType.TYPE, text="george orwell"),
        Action(ActionType.SCROLL, point=(0.7792, 0.4648), direction="down", amount=-5),
        Action(ActionType.FINISHED, text="success"),
        Action(ActionType.OPEN_APP, text="Clock"),
        Action(ActionType.PRESS_BACK),
        Action(ActionType.SELECT, point=(0.4, 0.6), text="Economy"),
    ]
    for action in truth:
        [parsed] = family.parse(family.format_action(action, SIZE), SIZE)
        assert parsed.type is action.type
        assert parsed.text == action.text
        assert parsed.direction == action.direction
        if action.point is not None:
            assert parsed.point == pytest.approx(action.point, abs=0.5 / 728)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"model_type": "qwen2_5_vl"}, "ui-tars"),
        ({"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"]}, "ui-tars"),
        ({"model_type": "opencua"}, "opencua"),
        ({"model_type": "custom", "architectures": ["OpenCUAForConditionalGeneration"]}, "opencua"),
    ],
)
def test_detect_family_from_dicts(config: dict, expected: str) -> None:
    assert detect_family(config) == expected


def test_detect_family_from_transformers_configs() -> None:
    assert detect_family(Qwen2_5_VLConfig()) == "ui-tars"
    assert detect_family(PretrainedConfig(architectures=["OpenCUAForConditionalGeneration"])) == "opencua"


@pytest.mark.parametrize("config", [{"model_type": "llama"}, {}, PretrainedConfig()])
def test_detect_family_unknown_asks_for_the_flag(config: object) -> None:
    with pytest.raises(UserInputError, match="--family"):
        detect_family(config)
