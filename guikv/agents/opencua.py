"""The OpenCUA agent family: prompts, a parser of its PyAutoGUI code, and the inverse formatter.

OpenCUA answers in sections (`## Thought:`, `## Action:` in words, `## Code:` with a fenced
```` ```python ```` block) whose code lines call `pyautogui.*` or `computer.*`. The parser reads
each such line with `ast` (never `eval`) as the original `extract_actions` does line by line:

- `click / moveTo / doubleClick / rightClick / tripleClick / dragTo` with `x=, y=` or positional,
  `computer.triple_click`;
- `write(message=...)` (or positional, or `typewrite`);
- `press` / `hotkey` with `keys=[...]` or positional keys, kept as written (`cmd` stays `cmd`: which
  spellings name the same key is the metric's alias table's business, never the parser's); a
  `press` of several keys is a hotkey;
- `scroll(n)` (and `hscroll(n)`): the signed amount is kept, the direction derived from it
  (positive = up, or right for `hscroll`), with the optional `x=, y=` anchor;
- `computer.terminate(status=...)` becomes `finished`, `computer.wait()` `wait`.

Coordinates: OpenCUA emits absolute pixels of the smart-resized screenshot (the same frame as
UI-TARS), which are divided by W', H'. The AgentNetBench ground-truth code, however, writes
relative floats (`pyautogui.click(x=0.3271, y=0.2694)`), so a pair where *both* numbers are float
literals in [0, 1] is taken as already relative; integers are always pixels. (The original always
divided, which only differs for such float pairs, which the model never emits.)

A `dragTo` right after a `moveTo` gets that point as its start (the `moveTo` action stays, so the
first action is the same as in the original). Valid calls of other functions (`keyDown`, `sleep`)
are skipped as in the original; a code line that cannot be read, or a known call with missing or
wrong arguments, becomes an `unparsed` action in its place. No readable action at all gives
`[Action.unparsed(text)]`.

`computer.long_press / open_app / press_back / press_home / select` are guikv extensions, not in
any OpenCUA prompt: they give every `ActionType` a form so the formatter's oracle can answer the
mobile and web benchmarks.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence
from typing import Any

from guikv.agents.action import Action, ActionType, Point
from guikv.agents.prompting import (
    DEFAULT_HISTORY_SCREENSHOTS,
    HISTORY_TEXT_WINDOW,
    HistoryEntry,
    ImageLike,
    Message,
    computer_use_conversation,
    previous_actions_text,
    screenshot_turn,
    trajectory_conversation,
)
from guikv.agents.resize import MAX_PIXELS, MIN_PIXELS, model_image_size

NAME = "opencua"

_INTRO_SCREENSHOT = (
    "You are a GUI agent. You are given a task and a screenshot of the screen. "
    "You need to perform a series of pyautogui actions to complete the task."
)
_INTRO_HISTORY = (
    "You are a GUI agent. You are given a task and your action history, with screenshots. "
    "You need to perform a series of pyautogui actions to complete the task."
)

_RESPONSE_FORMAT = """For each step, provide your response in this format:

Thought:
  - Step by Step Progress Assessment:
    - Analyze completed task parts and their contribution to the overall goal
    - Reflect on potential errors, unexpected results, or obstacles
    - If previous action was incorrect, predict a logical recovery step
  - Next Action Analysis:
    - List possible next actions based on current state
    - Evaluate options considering current state and previous actions
    - Propose most logical next action
    - Anticipate consequences of the proposed action
  - For Text Input Actions:
    - Note current cursor position
    - Consolidate repetitive actions (specify count for multiple keypresses)
    - Describe expected final text outcome
    - Use first-person perspective in reasoning

Action:
  Provide clear, concise, and actionable instructions:
  - If the action involves interacting with a specific target:
    - Describe target explicitly without using coordinates
    - Specify element names when possible (use original language if non-English)
    - Describe features (shape, color, position) if name unavailable
    - For window control buttons, identify correctly (minimize "—", maximize "□", close "X")
  - if the action involves keyboard actions like 'press', 'write', 'hotkey':
    - Consolidate repetitive keypresses with count
    - Specify expected text outcome for typing actions

Finally, output the action as PyAutoGUI code or the following functions:
- {"name": "computer.triple_click", "description": "Triple click on the screen", "parameters": {"type": "object", "properties": {"x": {"type": "number", "description": "The x coordinate of the triple click"}, "y": {"type": "number", "description": "The y coordinate of the triple click"}}, "required": ["x", "y"]}}
- {"name": "computer.terminate", "description": "Terminate the current task and report its completion status", "parameters": {"type": "object", "properties": {"status": {"type": "string", "enum": ["success", "failure"], "description": "The status of the task"}}, "required": ["status"]}}"""  # noqa: E501

SYSTEM_PROMPT = f"{_INTRO_SCREENSHOT}\n\n{_RESPONSE_FORMAT}"
"""OpenCUA's own "Thought / Action / PyAutoGUI code" instructions (its L2 prompt).

GUI-KV sends it inside the user turn, not as a system message; so do we, to match the paper.
The prompts below are concatenated rather than `str.format`ted because of its JSON braces.
"""

_NEXT_MOVE = "Please generate the next move according to the screenshot and task instruction.\n"


def computer_use_prompt(task: str) -> str:
    """AgentNetBench prompt text (§4.1): the OpenCUA instructions, the task, the next-move line."""
    return f"{SYSTEM_PROMPT}\n\n# Task Instruction:\n{task}\n\n{_NEXT_MOVE}"


def grounding_prompt(instruction: str) -> str:
    """ScreenSpot prompt text (§4.3): the one-line intro, then the instruction."""
    return f"{_INTRO_SCREENSHOT}\n{instruction}"


def mobile_prompt(goal: str, previous_actions: Sequence[str], step_instruction: str | None = None) -> str:
    """AndroidControl prompt text (§4.2), high level (goal) or low level (goal + step).

    The original's stray `'` after the function list and its leading newline are dropped.
    """
    previous = previous_actions_text(previous_actions)
    if step_instruction is None:
        return f"{SYSTEM_PROMPT}\n\n## Previous Actions\n{previous}\n\n## User Instruction\n{goal}\n"
    return (
        f"{SYSTEM_PROMPT}\n\n\n## Note\n- You must follow User Instruction below.\n\n"
        f"## User Goal\n{goal}\n\n## Previous Actions\n{previous}\n\n"
        f"## User Instruction\n{step_instruction}\n"
    )


def web_prompt(task: str, previous_actions: Sequence[str]) -> str:
    """Mind2Web prompt text (§4.5): the instructions, the no-click-on-search-box rule, history, task."""
    return (
        f"{_INTRO_HISTORY}\n\n{_RESPONSE_FORMAT}\n\n## Rule\n"
        "- The `write` action will click + write in a textbox or search box. "
        "DO NOT `click` ON search box; otherwise, you will be terminated.\n\n\n"
        f"## Previous Actions\n{previous_actions_text(previous_actions)}\n\n## User Instruction\n{task}\n"
    )


def computer_use_messages(
    task: str,
    screenshots: Sequence[ImageLike | None],
    history_outputs: Sequence[HistoryEntry],
    max_history_screenshots: int = DEFAULT_HISTORY_SCREENSHOTS,
    history_window: int = HISTORY_TEXT_WINDOW,
) -> list[Message]:
    """AgentNetBench messages, same layout as UI-TARS (each history screenshot before its own
    step's turn: bug B4 fixed), OpenCUA prompt last. `screenshots[-1]` is the current one."""
    return computer_use_conversation(
        computer_use_prompt(task), screenshots, history_outputs, max_history_screenshots, history_window
    )


def trajectory_messages(
    task: str,
    screenshots: Sequence[ImageLike],
    answers: Sequence[str],
    max_screenshots: int | None = None,
) -> list[Message]:
    """The native multi-turn agent loop (`prompting.trajectory_conversation`): the computer-use
    prompt first, then each screenshot and its answer, the current screenshot last; each step's
    conversation extends the previous one's."""
    return trajectory_conversation(computer_use_prompt(task), screenshots, answers, max_screenshots)


def grounding_messages(instruction: str, screenshot: ImageLike) -> list[Message]:
    """ScreenSpot messages: one user turn `[screenshot, prompt]`, no system message."""
    return [screenshot_turn(screenshot, grounding_prompt(instruction))]


def mobile_messages(
    goal: str,
    screenshot: ImageLike,
    previous_actions: Sequence[str],
    step_instruction: str | None = None,
) -> list[Message]:
    """AndroidControl messages: one user turn `[screenshot, prompt]`, no system message."""
    return [screenshot_turn(screenshot, mobile_prompt(goal, previous_actions, step_instruction))]


def web_messages(task: str, screenshot: ImageLike, previous_actions: Sequence[str]) -> list[Message]:
    """Mind2Web messages: one user turn `[screenshot, prompt]`, no system message."""
    return [screenshot_turn(screenshot, web_prompt(task, previous_actions))]


# ----------------------------------------------------------------------------------------------
# Parsing

_HEADER = r"^[ \t]*(?:#+[ \t]*)?"
_COLON = "[:\uff1a]"
"""A section header's colon, ASCII or full-width (`## Action：`, as outputs in Chinese mode write it)."""
_SECTION_END = rf"(?={_HEADER}(?:Observation|Thought|Action|Code){_COLON}|^[ \t]*```|\Z)"
_THOUGHT = re.compile(rf"{_HEADER}Thought{_COLON}[ \t]*(.*?){_SECTION_END}", re.MULTILINE | re.DOTALL)
_DESCRIPTION = re.compile(rf"{_HEADER}Action{_COLON}[ \t]*(.*?){_SECTION_END}", re.MULTILINE | re.DOTALL)
_CODE = re.compile(rf"{_HEADER}Code{_COLON}", re.MULTILINE)
_PREFIXES = ("pyautogui.", "computer.")

_POINTING: dict[str, ActionType] = {
    "click": ActionType.CLICK,
    "moveTo": ActionType.MOVE_TO,
    "doubleClick": ActionType.DOUBLE_CLICK,
    "rightClick": ActionType.RIGHT_CLICK,
    "tripleClick": ActionType.TRIPLE_CLICK,
    "triple_click": ActionType.TRIPLE_CLICK,
    "dragTo": ActionType.DRAG,
    "long_press": ActionType.LONG_PRESS,
}
"""Calls whose `x, y` are their point (`dragTo`'s is the drag's end)."""

_NO_ARGUMENT: dict[str, ActionType] = {
    "wait": ActionType.WAIT,
    "press_back": ActionType.PRESS_BACK,
    "press_home": ActionType.PRESS_HOME,
}
"""Calls that take no argument we use (`computer.wait(seconds=...)` is still a plain wait)."""

_KNOWN = frozenset(
    {*_POINTING, *_NO_ARGUMENT, "write", "typewrite", "press", "hotkey", "scroll", "hscroll"}
    | {"terminate", "open_app", "select"}
)


def parse(
    text: str,
    image_size: tuple[int, int],
    *,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> list[Action]:
    """Every action in an OpenCUA output, coordinates relative to the original screenshot.

    `image_size` is the original (width, height). The `Thought` section goes to every action's
    `thought`, the `Action` section (the step in words) to `extra["action_text"]`. Code lines are
    those starting `pyautogui.` or `computer.` after the `Code:` header (or anywhere, without one).
    Never raises on model text (only on an invalid `image_size`); see the module docstring.
    """
    frame = model_image_size(*image_size, min_pixels=min_pixels, max_pixels=max_pixels)
    thought_match = _THOUGHT.search(text)
    thought = thought_match.group(1).strip() if thought_match else ""
    description_match = _DESCRIPTION.search(text)
    extra = {"action_text": description_match.group(1).strip()} if description_match else {}
    code_match = _CODE.search(text)
    code = text[code_match.end() :] if code_match else text
    actions: list[Action] = []
    for line in code.splitlines():
        line = line.strip()
        if not line.startswith(_PREFIXES):
            continue
        for fields in _read_line(line, frame):
            if fields is None:
                actions.append(Action.unparsed(text))
                continue
            if fields["type"] is ActionType.DRAG and actions and actions[-1].type is ActionType.MOVE_TO:
                fields["point"] = actions[-1].point
            actions.append(Action(**fields, thought=thought, raw=text, extra=dict(extra)))
    return actions if any(action.parsed for action in actions) else [Action.unparsed(text)]


def _read_line(line: str, frame: tuple[int, int]) -> list[dict[str, Any] | None]:
    """The action fields of each `pyautogui.*` / `computer.*` call on a code line (None: unreadable)."""
    try:
        statements = ast.parse(line).body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return [None]
    results: list[dict[str, Any] | None] = []
    for statement in statements:
        call = statement.value if isinstance(statement, ast.Expr) else None
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id in ("pyautogui", "computer")
        ):
            continue
        name = call.func.attr
        if name not in _KNOWN:
            continue
        arguments = _literal_arguments(call)
        results.append(None if arguments is None else _to_fields(name, *arguments, frame))
    return results


def _literal_arguments(call: ast.Call) -> tuple[list[Any], dict[str, Any]] | None:
    """A call's positional and keyword arguments as Python literals, or None if any is not one."""
    if any(keyword.arg is None for keyword in call.keywords):
        return None
    try:
        positional = [ast.literal_eval(node) for node in call.args]
        keywords = {str(keyword.arg): ast.literal_eval(keyword.value) for keyword in call.keywords}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return positional, keywords


def _to_fields(
    name: str, positional: list[Any], keywords: dict[str, Any], frame: tuple[int, int]
) -> dict[str, Any] | None:
    """The `Action` fields for one known call, or None when its arguments do not fit."""
    if name in _POINTING:
        point = _point(positional, keywords, frame)
        if point is None:
            return None
        if _POINTING[name] is ActionType.DRAG:
            return {"type": ActionType.DRAG, "end_point": point}
        return {"type": _POINTING[name], "point": point}
    if name in ("write", "typewrite"):
        message = keywords.get("message", positional[0] if positional else None)
        return {"type": ActionType.TYPE, "text": message} if isinstance(message, str) else None
    if name in ("press", "hotkey"):
        keys = _keys(name, positional, keywords)
        if not keys:
            return None
        kind = ActionType.PRESS if name == "press" and len(keys) == 1 else ActionType.HOTKEY
        return {"type": kind, "keys": keys}
    if name in ("scroll", "hscroll"):
        return _scroll(name, positional, keywords, frame)
    if name == "terminate":
        status = keywords.get("status", positional[0] if positional else None)
        if status is not None and not isinstance(status, str):
            return None
        return {"type": ActionType.FINISHED, "text": status}
    if name == "open_app":
        app = keywords.get("app_name", positional[0] if positional else None)
        return {"type": ActionType.OPEN_APP, "text": app} if isinstance(app, str) and app else None
    if name == "select":
        point = _point(positional, keywords, frame)
        option = keywords.get("option", positional[2] if len(positional) > 2 else None)
        if point is None or not isinstance(option, str):
            return None
        return {"type": ActionType.SELECT, "point": point, "text": option}
    return {"type": _NO_ARGUMENT[name]}


def _coordinate(value: Any) -> float | None:
    """A literal as a finite float coordinate; None for bools, non-numbers and overflowing ints."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _point(positional: list[Any], keywords: dict[str, Any], frame: tuple[int, int]) -> Point | None:
    """The call's `x, y` (keywords, positional, or one positional pair) as a relative point."""
    if positional and isinstance(positional[0], (tuple, list)):
        x, y = positional[0] if len(positional[0]) == 2 else (None, None)
    else:
        x = keywords.get("x", positional[0] if positional else None)
        y = keywords.get("y", positional[1] if len(positional) > 1 else None)
    x_value, y_value = _coordinate(x), _coordinate(y)
    if x_value is None or y_value is None:
        return None
    if isinstance(x, float) and isinstance(y, float) and 0.0 <= x_value <= 1.0 and 0.0 <= y_value <= 1.0:
        return x_value, y_value
    return x_value / frame[0], y_value / frame[1]


def _keys(name: str, positional: list[Any], keywords: dict[str, Any]) -> tuple[str, ...]:
    """The keys of a press/hotkey (list or strings, keyword or positional), stripped, never renamed."""
    if "keys" in keywords:
        raw = keywords["keys"]
    elif name == "hotkey" and len(positional) > 1:
        raw = positional
    else:
        raw = positional[0] if positional else None
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not all(isinstance(key, str) and key for key in raw):
        return ()
    return tuple(key.strip() for key in raw)


def _scroll(
    name: str, positional: list[Any], keywords: dict[str, Any], frame: tuple[int, int]
) -> dict[str, Any] | None:
    """A scroll: signed integer amount, direction from its sign, optional `x, y` anchor."""
    amount = keywords.get("clicks", positional[0] if positional else None)
    if isinstance(amount, float) and amount.is_integer():
        amount = int(amount)
    if not isinstance(amount, int) or isinstance(amount, bool):
        return None
    has_anchor = "x" in keywords or len(positional) > 1
    point = _point(positional[1:], keywords, frame) if has_anchor else None
    if has_anchor and point is None:
        return None
    positive, negative = ("right", "left") if name == "hscroll" else ("up", "down")
    direction = positive if amount > 0 else negative if amount < 0 else None
    return {"type": ActionType.SCROLL, "point": point, "amount": amount, "direction": direction}


# ----------------------------------------------------------------------------------------------
# Formatting

DEFAULT_SCROLL_AMOUNT = 5
"""Scroll clicks written for a scroll that has a direction but no amount (the original's ±5)."""

_CALLS: dict[ActionType, str] = {
    ActionType.CLICK: "pyautogui.click",
    ActionType.DOUBLE_CLICK: "pyautogui.doubleClick",
    ActionType.RIGHT_CLICK: "pyautogui.rightClick",
    ActionType.TRIPLE_CLICK: "computer.triple_click",
    ActionType.MOVE_TO: "pyautogui.moveTo",
    ActionType.DRAG: "pyautogui.dragTo",
    ActionType.LONG_PRESS: "computer.long_press",
    ActionType.WAIT: "computer.wait",
    ActionType.PRESS_BACK: "computer.press_back",
    ActionType.PRESS_HOME: "computer.press_home",
}
"""The call for each action type that is written as one call with an optional `x, y`."""

_NO_POINT = frozenset({ActionType.WAIT, ActionType.PRESS_BACK, ActionType.PRESS_HOME})


def format_action(
    action: Action,
    image_size: tuple[int, int],
    *,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> str:
    """The OpenCUA output that `parse` reads back as `action` (used by the oracle self-check).

    Writes `## Thought:` (when the action has one), `## Action:` (`extra["action_text"]` or the
    action type in words) and `## Code:` with a fenced block; points are integer pixels of the
    smart-resized screenshot. Round trip: `parse(format_action(a))` equals `a` up to the nearest
    model pixel, at most 0.5/W' in x and 0.5/H' in y, except where OpenCUA writes one action as two
    calls: a drag with a start point is written `moveTo` + `dragTo` and so parses back as
    `[move_to, drag]` (the drag equal to `a`); a `type` with a point is `click` + `write`
    (`[click, type]`); typed text ending in a newline is `write(text)` + `press('enter')`
    (`[type, press]`). A press of several keys parses as a hotkey; a scroll without an amount gets
    ±5. An unparsed action formats as its raw text.
    """
    if action.type is ActionType.UNPARSED:
        return action.raw
    frame = model_image_size(*image_size, min_pixels=min_pixels, max_pixels=max_pixels)
    code = _code(action, frame)
    description = action.extra.get("action_text") or action.type.value.replace("_", " ").capitalize() + "."
    thought = f"## Thought:\n{action.thought}\n\n" if action.thought else ""
    return f"{thought}## Action:\n{description}\n\n## Code:\n```python\n{code}\n```\n"


def _code(action: Action, frame: tuple[int, int]) -> str:
    """The code line(s) for one action."""
    kind = action.type
    if kind is ActionType.DRAG:
        end = _xy(action.require("end_point"), frame)
        start = f"pyautogui.moveTo({_xy(action.point, frame)})\n" if action.point is not None else ""
        return f"{start}pyautogui.dragTo({end})"
    if kind is ActionType.SELECT:
        return f"computer.select({_xy(action.require('point'), frame)}, option={action.text or ''!r})"
    if kind in _NO_POINT:
        return f"{_CALLS[kind]}()"
    if kind in _CALLS:
        return f"{_CALLS[kind]}({_xy(action.require('point'), frame)})"
    if kind is ActionType.TYPE:
        return _type_code(action, frame)
    if kind is ActionType.HOTKEY:
        return f"pyautogui.hotkey(keys={list(action.keys)!r})"
    if kind is ActionType.PRESS:
        keys = list(action.keys)
        return f"pyautogui.press({keys[0]!r})" if len(keys) == 1 else f"pyautogui.press(keys={keys!r})"
    if kind is ActionType.SCROLL:
        return _scroll_code(action, frame)
    if kind is ActionType.FINISHED:
        status = "" if action.text is None else f"status={action.text!r}"
        return f"computer.terminate({status})"
    return f"computer.open_app(app_name={action.text or ''!r})"


def _type_code(action: Action, frame: tuple[int, int]) -> str:
    """`pyautogui.write`, after a click on the action's point when it has one, and with a trailing
    newline written as `press('enter')`, as OpenCUA submits text."""
    text = action.text or ""
    submit = text.endswith("\n")
    typed = text[:-1] if submit else text
    click = f"pyautogui.click({_xy(action.point, frame)})\n" if action.point is not None else ""
    enter = "\npyautogui.press('enter')" if submit else ""
    return f"{click}pyautogui.write(message={typed!r}){enter}"


def _xy(point: Point, frame: tuple[int, int]) -> str:
    """`x=.., y=..` keyword arguments in integer model pixels."""
    return f"x={round(point[0] * frame[0])}, y={round(point[1] * frame[1])}"


def _scroll_code(action: Action, frame: tuple[int, int]) -> str:
    """`pyautogui.scroll(n)` (or `hscroll` for left/right), the amount's sign giving the direction."""
    horizontal = action.direction in ("left", "right")
    amount = action.amount
    if amount is None:
        if action.direction not in ("up", "down", "left", "right"):
            raise ValueError(f"a scroll action needs an amount or a direction: {action}")
        sign = 1 if action.direction in ("up", "right") else -1
        amount = sign * DEFAULT_SCROLL_AMOUNT
    anchor = f", {_xy(action.point, frame)}" if action.point is not None else ""
    return f"pyautogui.{'hscroll' if horizontal else 'scroll'}({amount}{anchor})"
