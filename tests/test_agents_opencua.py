"""OpenCUA family: prompts (with the B4 history fix), PyAutoGUI code parser, formatter round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parser_checks import assert_total_parse
from PIL import Image

from benchmarks.mind2web import web_action
from guikv.agents import opencua
from guikv.agents.action import POINTING_TYPES, Action, ActionType
from guikv.agents.prompting import collect_images
from guikv.agents.resize import model_image_size

SIZE = (1280, 720)
FRAME = (1288, 728)

SIZES = [(1280, 720), (1920, 1080), (1080, 2400), (7680, 4320), (120, 60), (2560, 1440)]

OUTPUT = """## Thought:
The search field is empty. I will click it and type the author's name.

## Action:
Click the search field and type "george orwell"

## Code:
```python
pyautogui.click(x=421, y=196)
pyautogui.write(message='george orwell')
```
"""


def _fixture_images(fixtures_dir: Path) -> list[Path]:
    images = sorted((fixtures_dir / "agentnetbench" / "test_data" / "images").glob("*.png"))
    assert images, "AgentNetBench fixture screenshots are missing"
    return images


def _code(*lines: str) -> str:
    return "## Action:\nDo it\n\n## Code:\n```python\n" + "\n".join(lines) + "\n```\n"


def _assert_close(parsed: Action, expected: Action, frame: tuple[int, int]) -> None:
    """Equal up to the formatter's rounding to the nearest model pixel (0.5 / W', 0.5 / H')."""
    tolerance = (0.5 / frame[0] + 1e-9, 0.5 / frame[1] + 1e-9)
    assert parsed.type is expected.type
    for got, want in ((parsed.point, expected.point), (parsed.end_point, expected.end_point)):
        if want is None:
            assert got is None
        else:
            assert got is not None
            assert abs(got[0] - want[0]) <= tolerance[0]
            assert abs(got[1] - want[1]) <= tolerance[1]
    assert parsed.text == expected.text
    assert parsed.keys == expected.keys
    assert parsed.direction == expected.direction
    assert parsed.amount == expected.amount
    assert parsed.thought == expected.thought


# ------------------------------------------------------------------------------------------------
# Prompts


def test_computer_use_prompt_shape() -> None:
    text = opencua.computer_use_prompt("Find a book")
    assert text.startswith("You are a GUI agent. You are given a task and a screenshot of the screen.")
    assert '"name": "computer.triple_click"' in text and '"name": "computer.terminate"' in text
    assert text.endswith(
        "# Task Instruction:\nFind a book\n\n"
        "Please generate the next move according to the screenshot and task instruction.\n"
    )


@pytest.mark.parametrize("count", [1, 5])
def test_computer_use_messages_image_count_and_order(fixtures_dir: Path, count: int) -> None:
    screenshots = _fixture_images(fixtures_dir)[:count]
    outputs = [OUTPUT] * (count - 1)
    messages = opencua.computer_use_messages("Find a book", screenshots, outputs, max_history_screenshots=4)
    assert collect_images(messages) == [str(path) for path in screenshots]
    assert messages[-1]["content"][0] == {"type": "image", "image": str(screenshots[-1])}
    assert messages[-1]["content"][1]["text"] == opencua.computer_use_prompt("Find a book")
    assert all(message["role"] != "system" for message in messages)


def test_history_screenshots_belong_to_their_own_steps(fixtures_dir: Path) -> None:
    """Bug B4: the original gave OpenCUA a stale screenshot for every *old* step and none for the
    recent ones; here each of the 4 most recent earlier steps gets its own screenshot first."""
    screenshots = _fixture_images(fixtures_dir)
    outputs = [f"output {k}" for k in range(len(screenshots) - 1)]
    messages = opencua.computer_use_messages("task", screenshots, outputs, max_history_screenshots=4)
    assert collect_images(messages) == [str(path) for path in screenshots[-5:]]
    for index, message in enumerate(messages[:-1]):
        if message["role"] == "user":
            step = screenshots.index(Path(message["content"][0]["image"]))
            assert messages[index + 1] == {
                "role": "assistant",
                "content": f"# Step {step + 1}:\nStep {step + 1}:\noutput {step}",
            }


def test_grounding_mobile_and_web_prompts() -> None:
    [message] = opencua.grounding_messages("the OK button", "shot.png")
    assert message["content"][1]["text"] == (
        "You are a GUI agent. You are given a task and a screenshot of the screen. You need to perform "
        "a series of pyautogui actions to complete the task.\nthe OK button"
    )
    high = opencua.mobile_messages("Open settings", "phone.png", ["Click Apps"])
    assert len(high) == 1 and high[0]["role"] == "user"
    text = high[0]["content"][1]["text"]
    assert text.startswith(opencua.SYSTEM_PROMPT)
    assert text.endswith("## Previous Actions\nClick Apps\n\n## User Instruction\nOpen settings\n")
    low = opencua.mobile_messages("Open settings", "phone.png", [], step_instruction="Tap the gear")
    text = low[0]["content"][1]["text"]
    assert (
        "## User Goal\nOpen settings\n\n## Previous Actions\n\n\n## User Instruction\nTap the gear\n" in text
    )
    [web] = opencua.web_messages("Buy shoes", "page.png", ["Scroll down."])
    text = web["content"][1]["text"]
    assert "your action history, with screenshots" in text
    assert "DO NOT `click` ON search box" in text
    assert text.endswith("## Previous Actions\nScroll down.\n\n## User Instruction\nBuy shoes\n")


# ------------------------------------------------------------------------------------------------
# Parser


def test_parse_sections_and_code() -> None:
    click, typed = opencua.parse(OUTPUT, SIZE)
    assert click.type is ActionType.CLICK
    assert click.point == pytest.approx((421 / FRAME[0], 196 / FRAME[1]))
    assert typed.type is ActionType.TYPE and typed.text == "george orwell"
    assert click.thought == "The search field is empty. I will click it and type the author's name."
    assert click.extra == {"action_text": 'Click the search field and type "george orwell"'}
    assert click.raw == OUTPUT


def test_full_width_section_colons_are_read_like_ascii_ones() -> None:
    """`## Thought：`, `## Action：`, `## Code：` (full-width colons, as Chinese-mode outputs write
    them): the same thought, step description and code as the ASCII headers give."""
    text = OUTPUT.replace("Thought:", "Thought：").replace("Action:", "Action：").replace("Code:", "Code：")
    assert text != OUTPUT
    expected = opencua.parse(OUTPUT, SIZE)
    parsed = opencua.parse(text, SIZE)
    assert [(a.type, a.point, a.text, a.thought, a.extra) for a in parsed] == [
        (a.type, a.point, a.text, a.thought, a.extra) for a in expected
    ]


def test_coordinates_are_normalised_by_the_smart_resized_fixture_size(fixtures_dir: Path) -> None:
    for path in _fixture_images(fixtures_dir):
        with Image.open(path) as image:
            size = image.size
        frame = model_image_size(*size)
        [action] = opencua.parse(_code("pyautogui.click(x=644, y=364)"), size)
        assert action.point == pytest.approx((644 / frame[0], 364 / frame[1]))
        assert action.pixel_point(*size) == (640, 360)


def test_ground_truth_code_with_relative_floats(fixtures_dir: Path) -> None:
    """AgentNetBench ground truth writes relative floats; those are kept as they are."""
    trajectory = json.loads(next((fixtures_dir / "agentnetbench" / "test_data").glob("*.json")).read_text())
    for step in trajectory["steps"]:
        actions = opencua.parse(step["action"], SIZE)
        for action, truth in zip(actions, step["ground_truth_actions"], strict=True):
            position = truth["params"].get("position")
            if position and action.type is not ActionType.SCROLL:
                assert action.point == pytest.approx((position["x"], position["y"]))
            if truth["type"] == "write":
                assert action.text == truth["params"]["text"]
            if truth["type"] == "terminate":
                assert action.type is ActionType.FINISHED and action.text == truth["params"]["status"]
            if truth["type"] == "scroll":
                assert action.amount == truth["params"]["amount"] and action.direction == "down"


@pytest.mark.parametrize(
    ("line", "kind", "fields"),
    [
        ("pyautogui.click(644, 364)", ActionType.CLICK, {"point": (0.5, 0.5)}),
        ("pyautogui.click(x=644, y=364, button='left')", ActionType.CLICK, {"point": (0.5, 0.5)}),
        ("pyautogui.moveTo(x=644, y=364)", ActionType.MOVE_TO, {"point": (0.5, 0.5)}),
        ("pyautogui.doubleClick(x=644, y=364)", ActionType.DOUBLE_CLICK, {"point": (0.5, 0.5)}),
        ("pyautogui.rightClick(x=644, y=364)", ActionType.RIGHT_CLICK, {"point": (0.5, 0.5)}),
        ("pyautogui.tripleClick(x=644, y=364)", ActionType.TRIPLE_CLICK, {"point": (0.5, 0.5)}),
        ("computer.triple_click(x=644, y=364)", ActionType.TRIPLE_CLICK, {"point": (0.5, 0.5)}),
        ("pyautogui.dragTo(x=644, y=364)", ActionType.DRAG, {"point": None, "end_point": (0.5, 0.5)}),
        ("pyautogui.write(message='hi\\n')", ActionType.TYPE, {"text": "hi\n"}),
        ("pyautogui.write('positional')", ActionType.TYPE, {"text": "positional"}),
        ("pyautogui.typewrite('old name')", ActionType.TYPE, {"text": "old name"}),
        ("pyautogui.press('enter')", ActionType.PRESS, {"keys": ("enter",)}),
        ("pyautogui.press(keys=['enter'])", ActionType.PRESS, {"keys": ("enter",)}),
        ("pyautogui.press(['cmd', 'c'])", ActionType.HOTKEY, {"keys": ("cmd", "c")}),
        ("pyautogui.hotkey('command', 'v')", ActionType.HOTKEY, {"keys": ("command", "v")}),
        (
            "pyautogui.hotkey(keys=['ctrl', 'shift', 't'])",
            ActionType.HOTKEY,
            {"keys": ("ctrl", "shift", "t")},
        ),
        ("pyautogui.hotkey(['Cmd', 'a'])", ActionType.HOTKEY, {"keys": ("Cmd", "a")}),
        ("pyautogui.scroll(5)", ActionType.SCROLL, {"amount": 5, "direction": "up", "point": None}),
        ("pyautogui.scroll(-10)", ActionType.SCROLL, {"amount": -10, "direction": "down"}),
        ("pyautogui.scroll(-3, x=644, y=364)", ActionType.SCROLL, {"amount": -3, "point": (0.5, 0.5)}),
        ("pyautogui.hscroll(2)", ActionType.SCROLL, {"amount": 2, "direction": "right"}),
        ("computer.terminate(status='failure')", ActionType.FINISHED, {"text": "failure"}),
        ("computer.terminate('success')", ActionType.FINISHED, {"text": "success"}),
        ("computer.wait()", ActionType.WAIT, {}),
        ("computer.wait(seconds=2)", ActionType.WAIT, {}),
        ("computer.long_press(x=644, y=364)", ActionType.LONG_PRESS, {"point": (0.5, 0.5)}),
        ("computer.open_app(app_name='Clock')", ActionType.OPEN_APP, {"text": "Clock"}),
        ("computer.press_back()", ActionType.PRESS_BACK, {}),
        ("computer.press_home()", ActionType.PRESS_HOME, {}),
        ("computer.select(x=644, y=364, option='Economy')", ActionType.SELECT, {"text": "Economy"}),
    ],
)
def test_parse_every_call(line: str, kind: ActionType, fields: dict) -> None:
    [action] = opencua.parse(_code(line), SIZE)
    assert action.type is kind
    for name, value in fields.items():
        got = getattr(action, name)
        assert got == (pytest.approx(value) if isinstance(value, tuple) and name.endswith("point") else value)


def test_drag_after_move_gets_its_start_and_the_move_stays_first() -> None:
    move, drag = opencua.parse(
        _code("pyautogui.moveTo(x=100, y=200)", "pyautogui.dragTo(x=300, y=400, duration=0.5)"), SIZE
    )
    assert move.type is ActionType.MOVE_TO
    assert drag.type is ActionType.DRAG
    assert drag.point == move.point == pytest.approx((100 / FRAME[0], 200 / FRAME[1]))
    assert drag.end_point == pytest.approx((300 / FRAME[0], 400 / FRAME[1]))


def test_lines_without_code_header_and_skipped_calls() -> None:
    text = "I will press enter.\npyautogui.keyDown('shift')\npyautogui.press('enter')  # submit\nimport time"
    [action] = opencua.parse(text, SIZE)
    assert action.type is ActionType.PRESS and action.keys == ("enter",)


def test_integer_pixels_near_zero_are_pixels() -> None:
    [action] = opencua.parse(_code("pyautogui.click(x=1, y=0)"), SIZE)
    assert action.point == pytest.approx((1 / FRAME[0], 0.0))


def test_bad_line_is_unparsed_in_place() -> None:
    text = _code("pyautogui.click(x=, y=2)", "pyautogui.press('enter')")
    bad, good = opencua.parse(text, SIZE)
    assert bad == Action.unparsed(text)
    assert good.type is ActionType.PRESS


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I am not sure what to do.",
        _code("print('hello')"),
        _code("pyautogui.click()"),
        _code("pyautogui.click(x='a', y='b')"),
        _code("pyautogui.click(x=True, y=False)"),
        _code("pyautogui.click(x=1e400, y=2)"),
        _code(f"pyautogui.click(x={10**400}, y=2)"),
        _code("pyautogui.click(x=__import__('os').getcwd(), y=1)"),
        _code("pyautogui.write(message=123)"),
        _code("pyautogui.press([])"),
        _code("pyautogui.scroll('down')"),
        _code("pyautogui.scroll(1.5)"),
        _code("computer.terminate(status=1)"),
        _code("computer.open_app()"),
        _code("pyautogui.click(**kwargs)"),
        _code("pyautogui.click(x=1, y=2"),
    ],
)
def test_unreadable_output_is_one_unparsed_action(text: str) -> None:
    assert opencua.parse(text, SIZE) == [Action.unparsed(text)]


# ------------------------------------------------------------------------------------------------
# Formatter round trips

_coordinate = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
_points = st.tuples(_coordinate, _coordinate)
_thoughts = st.text(st.characters(categories=("L", "N", "Zs")), max_size=40).map(str.strip)
_texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
_keys = st.lists(
    st.sampled_from(["ctrl", "shift", "alt", "c", "v", "enter", "tab", "f5"]), min_size=1, max_size=3
).map(tuple)


@st.composite
def _scrolls(draw: st.DrawFn) -> Action:
    amount = draw(st.integers(-20, 20).filter(bool))
    horizontal = draw(st.booleans())
    direction = ("right" if amount > 0 else "left") if horizontal else ("up" if amount > 0 else "down")
    return Action(ActionType.SCROLL, point=draw(st.none() | _points), amount=amount, direction=direction)


def _opencua_actions() -> st.SearchStrategy[Action]:
    """Every action type in the form OpenCUA code expresses (one line per action)."""
    pointing = st.sampled_from(POINTING_TYPES)
    return st.one_of(
        st.builds(Action, type=pointing, point=_points, thought=_thoughts),
        st.builds(Action, type=st.just(ActionType.DRAG), end_point=_points, thought=_thoughts),
        st.builds(Action, type=st.just(ActionType.HOTKEY), keys=_keys),
        st.builds(Action, type=st.just(ActionType.PRESS), keys=_keys.map(lambda keys: keys[:1])),
        st.builds(
            Action,
            type=st.just(ActionType.TYPE),
            text=_texts.filter(lambda text: not text.endswith("\n")),
            thought=_thoughts,
        ),
        _scrolls(),
        st.builds(
            Action,
            type=st.sampled_from([ActionType.WAIT, ActionType.PRESS_BACK, ActionType.PRESS_HOME]),
            thought=_thoughts,
        ),
        st.builds(Action, type=st.just(ActionType.FINISHED), text=st.none() | _texts),
        st.builds(Action, type=st.just(ActionType.OPEN_APP), text=_texts.filter(bool)),
        st.builds(Action, type=st.just(ActionType.SELECT), point=_points, text=_texts),
    )


@settings(deadline=None, max_examples=300)
@given(action=_opencua_actions(), size=st.sampled_from(SIZES))
def test_format_then_parse_round_trips(action: Action, size: tuple[int, int]) -> None:
    text = opencua.format_action(action, size)
    [parsed] = opencua.parse(text, size)
    _assert_close(parsed, action, model_image_size(*size))


@settings(deadline=None, max_examples=50)
@given(start=_points, end=_points, size=st.sampled_from(SIZES))
def test_drag_with_start_round_trips_as_move_then_drag(
    start: tuple[float, float], end: tuple[float, float], size: tuple[int, int]
) -> None:
    action = Action(ActionType.DRAG, point=start, end_point=end, thought="Drag it.")
    move, drag = opencua.parse(opencua.format_action(action, size), size)
    assert move.type is ActionType.MOVE_TO
    _assert_close(drag, action, model_image_size(*size))


@settings(deadline=None, max_examples=50)
@given(text=_texts, point=st.none() | _points, size=st.sampled_from(SIZES))
def test_typing_into_an_element_and_submitting_are_written_as_opencua_does(
    text: str, point: tuple[float, float] | None, size: tuple[int, int]
) -> None:
    """A `type` with a point is `click` + `write`; a trailing newline is `press('enter')`. The
    metrics fold those pairs back into the one action (Mind2Web's `web_action`)."""
    action = Action(ActionType.TYPE, point=point, text=text + "\n", thought="Type it.")
    code = opencua.format_action(action, size)
    assert code.count("pyautogui.press('enter')") == 1
    assert ("pyautogui.click(" in code) is (point is not None)
    _assert_close(web_action(opencua.parse(code, size)), action, model_image_size(*size))


def test_format_action_text_shape() -> None:
    action = Action(ActionType.CLICK, point=(0.5, 0.5), thought="Click the middle.")
    assert opencua.format_action(action, SIZE) == (
        "## Thought:\nClick the middle.\n\n## Action:\nClick.\n\n## Code:\n```python\n"
        "pyautogui.click(x=644, y=364)\n```\n"
    )
    scroll = Action(ActionType.SCROLL, direction="down")
    assert "pyautogui.scroll(-5)" in opencua.format_action(scroll, SIZE)
    press = Action(ActionType.PRESS, keys=("ctrl", "c"))
    [parsed] = opencua.parse(opencua.format_action(press, SIZE), SIZE)
    assert parsed.type is ActionType.HOTKEY


def test_format_unparsed_returns_raw_and_missing_fields_raise() -> None:
    assert opencua.format_action(Action.unparsed("gibberish"), SIZE) == "gibberish"
    with pytest.raises(ValueError, match="needs a point"):
        opencua.format_action(Action(ActionType.CLICK), SIZE)
    with pytest.raises(ValueError, match="amount or a direction"):
        opencua.format_action(Action(ActionType.SCROLL), SIZE)


# ------------------------------------------------------------------------------------------------
# Robustness

_FRAGMENTS = [
    "pyautogui.",
    "computer.",
    "click(",
    "dragTo(",
    "write(",
    "press(",
    "hotkey(",
    "scroll(",
    "terminate(",
    "x=",
    "y=",
    "message=",
    "keys=",
    "status=",
    "'",
    '"',
    "\\",
    "(",
    ")",
    "[",
    "]",
    ",",
    " ",
    "\n",
    "1",
    "-0.5",
    "0.25",
    "1e999",
    "## Code:",
    "## Thought:",
    "```python",
    "```",
    "lambda: 0",
    "**",
    "\x00",
]


@settings(deadline=None, max_examples=200)
@given(text=st.text() | st.lists(st.sampled_from(_FRAGMENTS), max_size=30).map("".join))
def test_parser_never_crashes(text: str) -> None:
    actions = opencua.parse(text, SIZE)
    assert_total_parse(actions, text)
