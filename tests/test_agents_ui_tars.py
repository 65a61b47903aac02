"""UI-TARS family: smart-resize frame, prompts, parser, formatter round trips, robustness."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parser_checks import assert_total_parse
from PIL import Image
from qwen_vl_utils import process_vision_info, smart_resize
from ui_tars.prompt import GROUNDING_DOUBAO

from guikv.agents import ui_tars
from guikv.agents.action import POINTING_TYPES, Action, ActionType
from guikv.agents.prompting import Monologue
from guikv.agents.resize import IMAGE_FACTOR, MAX_PIXELS, MIN_PIXELS, model_image_size
from guikv.errors import UserInputError

SIZE = (1280, 720)
FRAME = (1288, 728)  # smart_resize of 1280x720: each side rounded to a multiple of 28

SIZES = [(1280, 720), (1920, 1080), (1080, 2400), (7680, 4320), (120, 60), (2560, 1440)]


def _fixture_images(fixtures_dir: Path) -> list[Path]:
    images = sorted((fixtures_dir / "agentnetbench" / "test_data" / "images").glob("*.png"))
    assert images, "AgentNetBench fixture screenshots are missing"
    return images


def _image_count(messages: list[dict]) -> int:
    return sum(
        1
        for message in messages
        if isinstance(message["content"], list)
        for item in message["content"]
        if item["type"] == "image"
    )


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
    assert parsed.thought == expected.thought


# ------------------------------------------------------------------------------------------------
# Coordinate frame


def test_resize_constants_match_the_spec() -> None:
    assert IMAGE_FACTOR == 28
    assert MIN_PIXELS == 100 * 28 * 28
    assert MAX_PIXELS == 16384 * 28 * 28


@pytest.mark.parametrize("size", SIZES)
def test_model_image_size_is_qwen_smart_resize(size: tuple[int, int]) -> None:
    width, height = size
    resized_height, resized_width = smart_resize(height, width, 28, MIN_PIXELS, MAX_PIXELS)
    assert model_image_size(width, height) == (resized_width, resized_height)
    assert resized_width % 28 == 0 and resized_height % 28 == 0


def test_model_image_size_limits() -> None:
    width, height = model_image_size(7680, 4320)
    assert width * height <= MAX_PIXELS
    width, height = model_image_size(120, 60)
    assert width * height >= MIN_PIXELS


@pytest.mark.parametrize(
    ("width", "height", "kwargs"),
    [(0, 10, {}), (10, -1, {}), (100_000, 100, {}), (100, 100, {"min_pixels": 10, "max_pixels": 5})],
)
def test_model_image_size_rejects_bad_input(width: int, height: int, kwargs: dict) -> None:
    with pytest.raises(UserInputError):
        model_image_size(width, height, **kwargs)


def test_coordinates_are_normalised_by_the_smart_resized_fixture_size(fixtures_dir: Path) -> None:
    for path in _fixture_images(fixtures_dir):
        with Image.open(path) as image:
            width, height = image.size
        assert (width, height) == SIZE
        frame_height, frame_width = smart_resize(height, width, 28, MIN_PIXELS, MAX_PIXELS)
        [action] = ui_tars.parse("Action: click(point='<point>644 364</point>')", (width, height))
        assert action.point == pytest.approx((644 / frame_width, 364 / frame_height))
        assert action.point == pytest.approx((0.5, 0.5))
        assert action.pixel_point(width, height) == (640, 360)


def test_processor_sees_the_frame_the_parser_divides_by(fixtures_dir: Path) -> None:
    """`qwen_vl_utils` resizes our message images to exactly `model_image_size`."""
    screenshots = _fixture_images(fixtures_dir)[:2]
    messages = ui_tars.computer_use_messages("task", screenshots, ["Action: wait()"])
    images, _ = process_vision_info(messages)
    assert [image.size for image in images] == [model_image_size(*SIZE)] * 2


# ------------------------------------------------------------------------------------------------
# Prompts


def test_grounding_prompt_is_the_official_template_with_its_stray_quote() -> None:
    assert ui_tars.GROUNDING_PROMPT == GROUNDING_DOUBAO
    [message] = ui_tars.grounding_messages("the OK button", "shot.png")
    assert message["role"] == "user"
    image, text = message["content"]
    assert image == {"type": "image", "image": "shot.png"}
    assert text["text"].endswith("## User Instruction\nthe OK button")
    assert "click(point='<point>x1 y1</point>'')" in text["text"]


@pytest.mark.parametrize("count", [1, 5])
def test_computer_use_messages_image_count_and_order(fixtures_dir: Path, count: int) -> None:
    screenshots = _fixture_images(fixtures_dir)[:count]
    outputs = [f"Thought: step {k}\nAction: wait()" for k in range(count - 1)]
    messages = ui_tars.computer_use_messages("Find a book", screenshots, outputs, max_history_screenshots=4)
    assert _image_count(messages) == count
    assert all(message["role"] != "system" for message in messages)
    last = messages[-1]
    assert last["role"] == "user"
    assert last["content"][0] == {"type": "image", "image": str(screenshots[-1])}
    assert last["content"][1]["text"].endswith(
        "## User Instruction\nFind a book\n\nPlease generate the next move according to the screenshot "
        "and task instruction.\n"
    )
    assistants = [message for message in messages if message["role"] == "assistant"]
    assert [m["content"] for m in assistants] == [
        f"# Step {k + 1}:\nStep {k + 1}:\n{output}" for k, output in enumerate(outputs)
    ]


def test_history_screenshot_sits_before_its_own_step(fixtures_dir: Path) -> None:
    screenshots = _fixture_images(fixtures_dir)  # 7 steps: 6 earlier + current
    outputs = [f"out {k}" for k in range(6)]
    messages = ui_tars.computer_use_messages("task", screenshots, outputs, max_history_screenshots=4)
    assert _image_count(messages) == 5
    roles = [message["role"] for message in messages]
    # steps 1-2: text only; steps 3-6: their screenshot, then their text; then the current turn
    assert roles == ["assistant", "assistant"] + ["user", "assistant"] * 4 + ["user"]
    for index in range(2, 10, 2):
        step = (index - 2) // 2 + 2
        assert messages[index]["content"] == [{"type": "image", "image": str(screenshots[step])}]
        assert messages[index + 1]["content"].startswith(f"# Step {step + 1}:\n")


def test_history_window_drops_old_steps() -> None:
    screenshots = [f"s{k}.png" for k in range(13)]
    outputs = [f"out {k}" for k in range(12)]
    messages = ui_tars.computer_use_messages("task", screenshots, outputs, max_history_screenshots=0)
    texts = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(texts) == 10
    assert texts[0].startswith("# Step 3:\nStep 3:\nout 2")
    assert _image_count(messages) == 1


def test_monologue_fallback_and_missing_history_screenshot() -> None:
    fallback = Monologue(observation="A page", thought="Click it", action="Click OK")
    messages = ui_tars.computer_use_messages("task", [None, "now.png"], [fallback])
    assert messages[0] == {
        "role": "assistant",
        "content": "# Step 1:\n## Observation:\nA page\n\n## Thought:\nClick it\n\n## Action:\nClick OK\n",
    }
    assert _image_count(messages) == 1


def test_computer_use_messages_validates_history_length() -> None:
    with pytest.raises(UserInputError, match="one entry per earlier step"):
        ui_tars.computer_use_messages("task", ["a.png", "b.png"], [])
    with pytest.raises(UserInputError):
        ui_tars.computer_use_messages("task", [], [])


def test_mobile_messages_high_and_low() -> None:
    high = ui_tars.mobile_messages("Open settings", "phone.png", ["Click Apps", "Scroll down"])
    assert high[0] == {"role": "system", "content": "You are a helpful assistant. "}
    text = high[1]["content"][1]["text"]
    assert "## Previous Actions\nClick Apps\nScroll down\n\n## User Instruction\nOpen settings" in text
    assert "Always use `click` if you want to open an app." in text
    assert "finished(content='successful|infeasible')" in text
    low = ui_tars.mobile_messages("Open settings", "phone.png", [], step_instruction="Tap the gear")
    text = low[1]["content"][1]["text"]
    assert "## User Goal:\nOpen settings" in text
    assert text.endswith("## User Instruction\nTap the gear\n")
    assert "## Previous Actions\n\n" in text


def test_web_messages() -> None:
    messages = ui_tars.web_messages("Buy shoes", "page.png", ["[textbox] Search -> TYPE: shoes"])
    assert messages[0]["role"] == "system"
    text = messages[1]["content"][1]["text"]
    for call in (
        "type(point='<point>x1 y1</point>', content=",
        "scroll(point=",
        "select(point=",
        "click(point=",
    ):
        assert call in text
    assert "DO NOT `click` ON search box" in text
    assert "## Previous Actions\n[textbox] Search -> TYPE: shoes\n" in text
    assert "## User Instruction\nBuy shoes\n" in text


# ------------------------------------------------------------------------------------------------
# Parser on real-looking outputs


def test_parse_click_with_thought() -> None:
    text = (
        "Thought: The search box is at the top. I'll click it to start typing.\n"
        "Action: click(point='<point>421 196</point>')"
    )
    [action] = ui_tars.parse(text, SIZE)
    assert action.type is ActionType.CLICK
    assert action.point == pytest.approx((421 / FRAME[0], 196 / FRAME[1]))
    assert action.thought == "The search box is at the top. I'll click it to start typing."
    assert action.raw == text


@pytest.mark.parametrize(
    "point",
    [
        "'<point>644 364</point>'",
        "'(644,364)'",
        "'<|box_start|>(644,364)<|box_end|>'",
        "'[600,300,688,428]'",
        "'<point>644.0 364.0</point>'",
        "'(600, 300, 688, 428)'",
    ],
)
def test_parse_point_and_box_forms(point: str) -> None:
    [action] = ui_tars.parse(f"Action: click(start_box={point})", SIZE)
    assert action.point == pytest.approx((0.5, 0.5))


def test_parse_think_block_and_multiple_actions() -> None:
    text = (
        "<think>The field is empty. Action: this line is reasoning, not an action.</think>\n"
        "Thought: Type the query and submit it, then wait.\n"
        "Action: type(content='george orwell\\n')\n\nwait()"
    )
    typed, waited = ui_tars.parse(text, SIZE)
    assert typed.type is ActionType.TYPE and typed.text == "george orwell\n"
    assert waited.type is ActionType.WAIT
    assert typed.thought == waited.thought == "Type the query and submit it, then wait."
    assert typed.extra["think"].startswith("The field is empty.")


def test_parse_every_action_type() -> None:
    cases = {
        "left_double(point='<point>10 20</point>')": (ActionType.DOUBLE_CLICK, {}),
        "right_single(point='<point>10 20</point>')": (ActionType.RIGHT_CLICK, {}),
        "long_press(point='<point>10 20</point>')": (ActionType.LONG_PRESS, {}),
        "hotkey(key='ctrl c')": (ActionType.HOTKEY, {"keys": ("ctrl", "c")}),
        "hotkey(key='ctrl+shift+t')": (ActionType.HOTKEY, {"keys": ("ctrl", "shift", "t")}),
        "press(key='enter')": (ActionType.PRESS, {"keys": ("enter",)}),
        "scroll(point='<point>10 20</point>', direction='down')": (ActionType.SCROLL, {"direction": "down"}),
        "scroll(direction='up')": (ActionType.SCROLL, {"direction": "up", "point": None}),
        "wait()": (ActionType.WAIT, {}),
        "finished(content='successful')": (ActionType.FINISHED, {"text": "successful"}),
        "open_app(app_name='Clock')": (ActionType.OPEN_APP, {"text": "Clock"}),
        "press_back()": (ActionType.PRESS_BACK, {}),
        "press_home()": (ActionType.PRESS_HOME, {}),
        "select(point='<point>10 20</point>', content='Economy')": (ActionType.SELECT, {"text": "Economy"}),
    }
    for call, (kind, fields) in cases.items():
        [action] = ui_tars.parse(f"Thought: t\nAction: {call}", SIZE)
        assert action.type is kind, call
        for name, value in fields.items():
            assert getattr(action, name) == value, call


def test_parse_drag_point_and_box_spellings() -> None:
    for call in (
        "drag(start_point='<point>100 200</point>', end_point='<point>300 400</point>')",
        "drag(start_box='(100,200)', end_box='(300,400)')",
    ):
        [action] = ui_tars.parse(f"Action: {call}", SIZE)
        assert action.type is ActionType.DRAG
        assert action.point == pytest.approx((100 / FRAME[0], 200 / FRAME[1]))
        assert action.end_point == pytest.approx((300 / FRAME[0], 400 / FRAME[1]))


@pytest.mark.parametrize(
    ("call", "text"),
    [
        ("type(content='it\\'s \\\"quoted\\\"')", 'it\'s "quoted"'),
        ("type(content='it's unescaped')", "it's unescaped"),
        ("type(content='set point=3')", "set point=3"),
        ("type(content='line one\nline two')", "line one\nline two"),
        ("type(content='C:\\\\new')", "C:\\new"),
        ('type(content="double quoted")', "double quoted"),
        ("type('positional')", "positional"),
        ("type(content='')", ""),
    ],
)
def test_parse_type_content_escaping(call: str, text: str) -> None:
    [action] = ui_tars.parse(f"Thought: typing\nAction: {call}", SIZE)
    assert action.type is ActionType.TYPE
    assert action.text == text


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("def show(x):\nprint(x)", "def show(x):\nprint(x)"),
        ("first\nprint(x)\nclick(here)\n", "first\nprint(x)\nclick(here)\n"),
        ("call f(a)\nwait()", "call f(a)\nwait()"),
    ],
)
def test_a_quoted_line_that_starts_like_a_call_stays_in_the_string(content: str, text: str) -> None:
    """Issue 8 item 14: a raw newline inside `type(content='...')` followed by a line starting like a
    call (`print(x)`) split the call in two and the step became unparsed."""
    output = (
        f"Thought: Type the code.\nAction: type(content='{content}')\n\nclick(point='<point>644 364</point>')"
    )
    typed, click = ui_tars.parse(output, SIZE)
    assert typed.type is ActionType.TYPE and typed.text == text
    assert click.type is ActionType.CLICK and click.point == pytest.approx((0.5, 0.5))


def test_many_call_like_lines_inside_one_string() -> None:
    code = "".join(f"print({n})\n" for n in range(400))
    [typed] = ui_tars.parse(f"Thought: Paste the code.\nAction: type(content='{code}')", SIZE)
    assert typed.type is ActionType.TYPE and typed.text == code


def test_an_unreadable_call_does_not_swallow_the_next_one() -> None:
    text = "Action: click(point=<point>1 2</point>)\ntype(content='x')"
    first, second = ui_tars.parse(text, SIZE)
    assert first.type is ActionType.UNPARSED and (second.type, second.text) == (ActionType.TYPE, "x")


def test_parse_bare_grounding_answer_and_truncated_call() -> None:
    [action] = ui_tars.parse("click(start_box='(644,364)')", SIZE)
    assert action.point == pytest.approx((0.5, 0.5))
    [action] = ui_tars.parse("Action: click(point='<point>644 364</point>'", SIZE)
    assert action.point == pytest.approx((0.5, 0.5))


def test_bad_call_is_unparsed_in_place() -> None:
    text = "Thought: t\nAction: click(point='nowhere')\n\nwait()"
    first, second = ui_tars.parse(text, SIZE)
    assert first.type is ActionType.UNPARSED and first.raw == text
    assert second.type is ActionType.WAIT


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I think we are done.",
        "Thought: no action here",
        "Action: ",
        "Action: teleport(to='mars')",
        "Action: click()",
        "Action: click(point='<point>x1 y1</point>')",
        "Action: drag(start_point='<point>1 2</point>')",
        "Action: hotkey(key='')",
        "Action: scroll(point='<point>1 2</point>')",
        "Action: open_app(app_name='')",
        "Action: select(point='<point>1 2</point>')",
        "Action: type()",
        "Action: click(point='<point>" + "9" * 400 + " 1</point>')",
        "Action: Click the button",
    ],
)
def test_unreadable_output_is_one_unparsed_action(text: str) -> None:
    assert ui_tars.parse(text, SIZE) == [Action.unparsed(text)]


# ------------------------------------------------------------------------------------------------
# Formatter round trips

_coordinate = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
_points = st.tuples(_coordinate, _coordinate)
_thoughts = st.text(st.characters(categories=("L", "N", "Zs")), max_size=40).map(str.strip)
_texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
_keys = st.lists(
    st.sampled_from(["ctrl", "shift", "alt", "c", "v", "enter", "tab", "f5"]), min_size=1, max_size=3
).map(tuple)


def _ui_tars_actions() -> st.SearchStrategy[Action]:
    """Every action type in the form UI-TARS can express (a scroll's amount is not expressible)."""
    pointing = st.sampled_from(POINTING_TYPES)
    return st.one_of(
        st.builds(Action, type=pointing, point=_points, thought=_thoughts),
        st.builds(Action, type=st.just(ActionType.DRAG), point=_points, end_point=_points, thought=_thoughts),
        st.builds(Action, type=st.sampled_from([ActionType.HOTKEY, ActionType.PRESS]), keys=_keys),
        st.builds(Action, type=st.just(ActionType.TYPE), text=_texts, thought=_thoughts),
        st.builds(Action, type=st.just(ActionType.TYPE), point=_points, text=_texts),
        st.builds(
            Action,
            type=st.just(ActionType.SCROLL),
            point=st.none() | _points,
            direction=st.sampled_from(["up", "down", "left", "right"]),
        ),
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
@given(action=_ui_tars_actions(), size=st.sampled_from(SIZES))
def test_format_then_parse_round_trips(action: Action, size: tuple[int, int]) -> None:
    text = ui_tars.format_action(action, size)
    [parsed] = ui_tars.parse(text, size)
    _assert_close(parsed, action, model_image_size(*size))


def test_format_action_text_shape() -> None:
    action = Action(ActionType.CLICK, point=(0.5, 0.5), thought="Click the middle.")
    assert ui_tars.format_action(action, SIZE) == (
        "Thought: Click the middle.\nAction: click(point='<point>644 364</point>')"
    )
    typed = Action(ActionType.TYPE, text="it's\n")
    assert ui_tars.format_action(typed, SIZE) == "Action: type(content='it\\'s\\n')"
    scroll = Action(ActionType.SCROLL, point=(0.5, 0.5), amount=-3)
    assert "direction='down'" in ui_tars.format_action(scroll, SIZE)


def test_a_type_with_a_point_is_written_in_the_web_prompts_form() -> None:
    """Typing into an element is one `type(point=..., content=...)`, as the web prompt asks."""
    typed = Action(ActionType.TYPE, point=(0.5, 0.5), text="123456")
    text = ui_tars.format_action(typed, SIZE)
    assert text == "Action: type(point='<point>644 364</point>', content='123456')"
    assert text.removeprefix("Action: ").split("(")[0] + "(point='<point>" in ui_tars.WEB_PROMPT
    [again] = ui_tars.parse(text, SIZE)
    assert (again.type, again.point, again.text) == (ActionType.TYPE, (0.5, 0.5), "123456")


@pytest.mark.parametrize(
    ("text", "thought"),
    [
        (
            "Thought：点击搜索框。\nAction：type(point='<point>644 364</point>', content='123456')",
            "点击搜索框。",
        ),
        ("Thought: Type it.\nAction: type(text='123456', start_box='(644,364)')", "Type it."),
        ("Action: type(content='123456', start_box='<|box_start|>(644,364)<|box_end|>')", ""),
        ("Thought: Type it. Action：type(text='123456', start_box='(644,364)')", "Type it."),
    ],
)
def test_full_width_colons_and_the_older_type_spellings_parse(text: str, thought: str) -> None:
    """`Action：` / `Thought：` (full-width colons, as Chinese-mode outputs write them) and the older
    `type(text='...', start_box='...')` read as the same typed text at the same point."""
    [action] = ui_tars.parse(text, SIZE)
    assert (action.type, action.text, action.thought) == (ActionType.TYPE, "123456", thought)
    assert action.point == pytest.approx((644 / FRAME[0], 364 / FRAME[1]))


def test_format_unparsed_returns_raw_and_missing_point_raises() -> None:
    assert ui_tars.format_action(Action.unparsed("gibberish"), SIZE) == "gibberish"
    with pytest.raises(ValueError, match="needs a point"):
        ui_tars.format_action(Action(ActionType.CLICK), SIZE)


# ------------------------------------------------------------------------------------------------
# Robustness

_FRAGMENTS = [
    "Thought:",
    "Action:",
    " ",
    "\n",
    "\n\n",
    "click(",
    "drag(",
    "type(content=",
    "hotkey(key=",
    "scroll(",
    "finished(",
    "point=",
    "start_box=",
    "end_point=",
    "direction=",
    "'",
    '"',
    "\\",
    "(",
    ")",
    "[",
    "]",
    ",",
    "=",
    "<point>",
    "</point>",
    "<|box_start|>",
    "<|box_end|>",
    "<think>",
    "</think>",
    "1",
    "-3.5",
    "1e309",
    "\x00",
    "[EOS]",
]


@settings(deadline=None, max_examples=200)
@given(text=st.text() | st.lists(st.sampled_from(_FRAGMENTS), max_size=30).map("".join))
def test_parser_never_crashes(text: str) -> None:
    actions = ui_tars.parse(text, SIZE)
    assert_total_parse(actions, text)
