"""AndroidControl: loader on records synthesised in UGround's 500_steps.json schema (no real sample
could be shipped), the step-accuracy rule, and the B10 fixes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import ANDROID_ACTIONS, PHONE, android_records

from benchmarks import androidcontrol as ac
from benchmarks.common import DataError, fold_actions
from guikv.agents.action import Action, ActionType
from guikv.agents.family import FAMILIES
from guikv.errors import UserInputError

WIDTH, HEIGHT = PHONE
ACTIONS = ANDROID_ACTIONS

MakePng = Callable[[Path, tuple[int, int]], Path]
Mutation = Callable[[dict[str, Any]], object]


@pytest.fixture
def dataset(tmp_path: Path, make_png: MakePng) -> tuple[Path, Path]:
    data, images = tmp_path / "data", tmp_path / "images"
    data.mkdir()
    (data / "500_steps.json").write_text(json.dumps(android_records()))
    for step in range(len(ACTIONS)):
        make_png(images / "4242" / f"screenshot_{step}.png", (WIDTH, HEIGHT))
    return data, images


def write(data: Path, rows: list[dict[str, Any]]) -> None:
    (data / "500_steps.json").write_text(json.dumps(rows))


def sample_for(dataset: tuple[Path, Path], kind: str) -> ac.AndroidControlSample:
    samples = ac.load(*dataset).samples
    return next(s for s in samples if s.ground_truth.action_type == kind)


# --- loader ---------------------------------------------------------------------------------------


def test_load_synthesised_records(dataset: tuple[Path, Path]) -> None:
    result = ac.load(*dataset)
    assert result.skipped == ()
    assert [s.step for s in result.samples] == list(range(len(ACTIONS)))
    first = result.samples[0]
    assert first.sample_id == "4242/0"
    assert first.image_size == (WIDTH, HEIGHT)
    assert first.instruction_level == "high" and first.step_instruction == ""
    assert len(first.nodes) == 5  # nested lists flattened
    assert first.ground_truth == ac.AndroidAction("click", x=170.0, y=300.0)
    assert result.samples[2].previous_actions == ("action 0", "action 1")
    low = ac.load(*dataset, instruction_level="low").samples[3]
    assert low.step_instruction == "do step 3" and low.instruction_level == "low"
    assert len(ac.load(*dataset, limit=2).samples) == 2


def test_missing_screenshot_is_reported(dataset: tuple[Path, Path]) -> None:
    data, images = dataset
    (images / "4242" / "screenshot_1.png").unlink()
    result = ac.load(data, images)
    assert [s.sample_id for s in result.skipped] == ["4242/1"]
    assert result.skipped[0].missing == (images / "4242" / "screenshot_1.png",)
    assert len(result.samples) == len(ACTIONS) - 1


def test_smallest_node_is_chosen() -> None:
    nodes = (ac.UINode(0, 0, 100, 100), ac.UINode(10, 10, 20, 20, text="x"), ac.UINode(10, 10, 20, 20))
    assert ac.smallest_node(nodes, (15, 15)).text == "x"  # first on ties
    assert ac.smallest_node(nodes, (20, 20)).text == "x"  # edges inclusive
    assert ac.smallest_node(nodes, (200, 200)) is None


# --- bad input ------------------------------------------------------------------------------------


def test_missing_directory_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ANDROIDCONTROL_TEST"):
        ac.load(tmp_path / "nope", tmp_path)
    with pytest.raises(DataError, match=r"500_steps\.json: expected an existing JSON file"):
        ac.load(tmp_path, tmp_path)


def test_malformed_and_wrong_layout(dataset: tuple[Path, Path]) -> None:
    data, images = dataset
    (data / "500_steps.json").write_text('[{"episode_id": 1,}]')
    with pytest.raises(DataError, match=r"500_steps\.json \(line 1, column 19\)"):
        ac.load(data, images)
    (data / "500_steps.json").write_text('{"episode_id": 1}')
    with pytest.raises(DataError, match="expected a JSON array of records"):
        ac.load(data, images)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r["action"].pop("x"), "action.x"),
        (lambda r: r.pop("goal"), "goal"),
        (lambda r: r["action"].update(action_type="swipe"), "action.action_type"),
        (lambda r: r["action"].update(action_type="scroll", direction=3), "action.direction"),
        (
            lambda r: r["accessibility_tree"][1][1][0].pop("bbox_pixels"),
            "accessibility_tree[1][1][0].bbox_pixels",
        ),
        (lambda r: r["accessibility_tree"].append(7), "accessibility_tree[4]"),
    ],
)
def test_bad_record_names_field(dataset: tuple[Path, Path], mutate: Mutation, field: str) -> None:
    data, images = dataset
    rows = android_records()
    mutate(rows[0])
    write(data, rows)
    with pytest.raises(DataError) as info:
        ac.load(data, images)
    assert info.value.field == field
    assert info.value.where == "record 0"
    assert "500_steps.json" in str(info.value)


def test_low_level_needs_step_instruction(dataset: tuple[Path, Path]) -> None:
    data, images = dataset
    rows = android_records()
    del rows[0]["step_instruction"]
    write(data, rows)
    assert ac.load(data, images).samples[0].step_instruction == ""
    with pytest.raises(DataError, match="step_instruction"):
        ac.load(data, images, instruction_level="low")


def test_bad_options(dataset: tuple[Path, Path]) -> None:
    with pytest.raises(UserInputError, match="--instruction_level: unknown value 'mid'"):
        ac.load(*dataset, instruction_level="mid")
    with pytest.raises(UserInputError, match="--split"):
        ac.load(*dataset, split="test")


# --- metric ---------------------------------------------------------------------------------------


def at(x: float, y: float, kind: ActionType = ActionType.CLICK) -> Action:
    return Action(kind, point=(x / WIDTH, y / HEIGHT))


def test_oracle_scores_full_marks(dataset: tuple[Path, Path]) -> None:
    samples = ac.load(*dataset).samples
    summary = ac.summarize([ac.score(s, ac.ground_truth_action(s)) for s in samples])
    assert summary["step_accuracy"] == 1.0
    assert summary["grounding_accuracy"] == 1.0
    assert summary["grounding_steps"] == 3


def test_click_uses_smallest_node_around_ground_truth(dataset: tuple[Path, Path]) -> None:
    sample = sample_for(dataset, "click")
    assert ac.score(sample, at(125, 255))["correct"]
    assert ac.score(sample, at(220, 350))["correct"]  # inclusive edge
    assert not ac.score(sample, at(400, 300))["correct"]  # inside "Search" but not the icon
    assert not ac.score(sample, at(170, 300, ActionType.LONG_PRESS))["correct"]
    assert not ac.score(sample, Action(ActionType.CLICK))["correct"]
    long_press = sample_for(dataset, "long_press")
    assert ac.score(long_press, at(450, 220, ActionType.LONG_PRESS))["correct"]


def test_type_text_needs_no_point_b10(dataset: tuple[Path, Path]) -> None:
    """The original demanded a click point from a `type` action, which has none: always wrong."""
    sample = sample_for(dataset, "type_text")
    assert ac.score(sample, Action(ActionType.TYPE, text="coffee near me"))["correct"]
    assert not ac.score(sample, Action(ActionType.TYPE, text="Coffee near me"))["correct"]
    assert not ac.score(sample, at(170, 300))["correct"]


def test_scroll_direction_from_amount_b10(dataset: tuple[Path, Path]) -> None:
    """OpenCUA gives a signed amount; the original compared that int with the direction word."""
    sample = sample_for(dataset, "scroll")
    assert ac.score(sample, Action(ActionType.SCROLL, amount=-5))["correct"]
    assert ac.score(sample, Action(ActionType.SCROLL, direction="down", point=(0.5, 0.5)))["correct"]
    assert not ac.score(sample, Action(ActionType.SCROLL, direction="up"))["correct"]
    assert not ac.score(sample, Action(ActionType.SCROLL, amount=3))["correct"]


def test_back_and_home_b10(dataset: tuple[Path, Path]) -> None:
    back = sample_for(dataset, "navigate_back")
    assert ac.score(back, Action(ActionType.PRESS_BACK))["correct"]
    assert ac.score(back, Action(ActionType.PRESS, keys=("Escape",)))["correct"]
    assert ac.score(back, Action(ActionType.PRESS, keys=("back",)))["correct"]
    assert ac.score(back, at(75, 2300))["correct"]  # the node says "Back"
    assert not ac.score(back, at(700, 1100))["correct"]
    assert not ac.score(back, Action(ActionType.PRESS_HOME))["correct"]
    home = sample_for(dataset, "navigate_home")
    assert ac.score(home, Action(ActionType.PRESS_HOME))["correct"]
    assert ac.score(home, Action(ActionType.HOTKEY, keys=("home",)))["correct"]
    assert not ac.score(home, Action(ActionType.PRESS_BACK))["correct"]


def test_open_app_direct_or_by_click_b10(dataset: tuple[Path, Path]) -> None:
    sample = sample_for(dataset, "open_app")
    assert ac.score(sample, Action(ActionType.OPEN_APP, text="gmail"))["correct"]
    assert not ac.score(sample, Action(ActionType.OPEN_APP, text="Chrome"))["correct"]
    assert ac.score(sample, at(700, 1100))["correct"]
    assert not ac.score(sample, at(170, 300))["correct"]


def test_wait_and_status(dataset: tuple[Path, Path]) -> None:
    assert ac.score(sample_for(dataset, "wait"), Action(ActionType.WAIT))["correct"]
    status = sample_for(dataset, "status")
    assert ac.score(status, Action(ActionType.FINISHED, text="Task completed"))["correct"]
    assert not ac.score(status, Action(ActionType.FINISHED, text="unsuccessful"))["correct"]
    assert ac.goal_status(Action(ActionType.FINISHED, text="I can't find it")) == "infeasible"
    assert not ac.score(status, Action.unparsed("oops"))["correct"]


def test_summarize_from_records(dataset: tuple[Path, Path]) -> None:
    samples = ac.load(*dataset).samples
    records = [ac.score(s, Action(ActionType.WAIT)) for s in samples]
    records[0] = ac.score(samples[0], at(170, 300))
    summary = ac.summarize(json.loads(json.dumps(records)))
    assert summary["correct_steps"] == 2 and summary["total_steps"] == len(ACTIONS)
    assert summary["grounding_accuracy"] == pytest.approx(1 / 3)
    assert summary["type_accuracy"]["wait"] == {"accuracy": 1.0, "correct": 1, "total": 1}
    assert ac.summarize([])["step_accuracy"] is None


# --- issue 8: a submitted type, and finished() without content, from real model outputs -------------


def parse(family: str, text: str) -> list[Action]:
    """A model output parsed by the family's own parser at the phone screenshot's size."""
    return FAMILIES[family].parse(text, PHONE)


SUBMITS = {
    "ui-tars": "Thought: Search for coffee.\nAction: type(content='coffee near me\\n')",
    "opencua": "## Action:\nSearch.\n\n## Code:\n```python\npyautogui.write(message='coffee near me')\n"
    "pyautogui.press('enter')\n```\n",
}
"""A text typed and submitted, as the mobile prompt asks (UI-TARS: a trailing \\n; OpenCUA: Enter)."""


@pytest.mark.parametrize("family", sorted(SUBMITS))
def test_trailing_newline_has_its_own_column(dataset: tuple[Path, Path], family: str) -> None:
    """Issue 8 items 12 and 8: a submitted text failed the exact rule with no way to see it, and
    OpenCUA's write + press('enter') was scored on the write alone where UI-TARS's type('...\\n') kept
    the newline. Both families now read the same; the exact rule stays the headline, and
    `correct_ignoring_newline` ignores one trailing newline."""
    sample = sample_for(dataset, "type_text")
    record = ac.score(sample, parse(family, SUBMITS[family]))
    assert record["correct"] is False and record["correct_ignoring_newline"] is True
    plain = ac.score(sample, Action(ActionType.TYPE, text="coffee near me"))
    assert plain["correct"] and plain["correct_ignoring_newline"]
    twice = ac.score(sample, Action(ActionType.TYPE, text="coffee near me\n\n"))
    assert not twice["correct_ignoring_newline"]
    summary = ac.summarize([record, plain])
    assert summary["step_accuracy"] == 0.5 and summary["grounding_accuracy"] == 0.5
    assert summary["step_accuracy_ignoring_newline"] == 1.0
    assert summary["grounding_accuracy_ignoring_newline"] == 1.0
    assert "step_accuracy_ignoring_newline" in ac.SPEC.metric_columns
    old = {key: value for key, value in record.items() if key != "correct_ignoring_newline"}
    assert ac.summarize([old])["step_accuracy_ignoring_newline"] == 0.0  # a record from before


def test_finished_without_content_is_infeasible(dataset: tuple[Path, Path]) -> None:
    """Issue 8 item 11: one rule for every benchmark, a `finished` that states nothing is a failure."""
    status = sample_for(dataset, "status")
    for prediction in (parse("ui-tars", "Thought: Done.\nAction: finished()"), Action(ActionType.FINISHED)):
        assert ac.goal_status(fold_actions(prediction)[0]) == "infeasible"
        assert not ac.score(status, prediction)["correct"]
    assert ac.score(status, parse("ui-tars", "Thought: Done.\nAction: finished(content='successful')"))[
        "correct"
    ]
