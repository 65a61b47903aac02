"""The UI-TARS-1.5 (Qwen2.5-VL) agent family: prompts, output parser and its inverse formatter.

UI-TARS answers `Thought: ...` then `Action: name(arg='value', ...)`, with points as
`<point>x y</point>` in absolute pixels of the smart-resized screenshot (see `guikv.agents.resize`).

Why not the official parser: the PyPI `ui-tars` package ships `parse_action_to_structure_output`,
checked against the spec and our tests. It is right on the happy path (it is what the paper used)
but cannot be wrapped as-is:

- it raises on fractional points (`<point>640.5 360</point>`), on `<|box_start|>(x,y)<|box_end|>`
  tokens and on `[x1,y1,x2,y2]` boxes (`float('[100')`), all forms the spec requires;
- it rewrites `point=` inside typed text (`type(content='set point=3')` types `set start_box=3`);
- it raises for typed text spanning lines and asserts when there is no `Action:`;
- it prints to stdout on every failure.

So this module parses the same grammar itself, with the same conventions: the action text follows
`Action:`; several actions are separate calls (one per line, the original splits on `")\\n\\n"`),
and a line inside a call's quoted string is part of the string even when it starts like a call;
each call is read with `ast` (never `eval`), falling back to a quote-tolerant reader for the
unescaped quotes and raw newlines models emit; a point is divided by the smart-resized size, and a
four-number box gives its centre (the official parser cannot read boxes at all). Unlike
the original, a call that cannot be read becomes an `unparsed` action in its place instead of
failing the whole output, so the first action is still the one scored.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence
from typing import Any

from guikv.agents.action import POINTING_TYPES, Action, ActionType, Point
from guikv.agents.prompting import (
    DEFAULT_HISTORY_SCREENSHOTS,
    HISTORY_TEXT_WINDOW,
    HistoryEntry,
    ImageLike,
    Message,
    computer_use_conversation,
    previous_actions_text,
    screenshot_turn,
    system_turn,
    trajectory_conversation,
)
from guikv.agents.resize import MAX_PIXELS, MIN_PIXELS, model_image_size

NAME = "ui-tars"

SYSTEM_PROMPT = "You are a helpful assistant. "
"""System message of the mobile and web prompts (the trailing space is in the original)."""

# The prompt texts keep the original's trailing spaces (hence the noqa): the models were evaluated
# with exactly these strings, and a stray space changes the tokens.

COMPUTER_USE_PROMPT = """You are a GUI agent. You are given a task and your action history, with screenshots. You need to perform the next action to complete the task.

## Output Format
You should first think about the reasoning process in the mind and then provide the user with the answer. 
The reasoning process is enclosed within <think> </think> tags
After the <think> tags, you should place final answer, which concludes your summarized thought and your action.

For example,
```
<think>detailed reasoning content here</think>
Thought: a small plan and finally summarize your next action (with its target element) in one sentence
Action: ...
```

## Action Space

click(point='<point>x1 y1</point>')
left_double(point='<point>x1 y1</point>')
right_single(point='<point>x1 y1</point>')
drag(start_point='<point>x1 y1</point>', end_point='<point>x2 y2</point>')
hotkey(key='ctrl c') # Split keys with a space and use lowercase. Also, do not use more than 3 keys in one hotkey action.
type(content='xxx') # Use escape characters \\', \\\", and \\n in content part to ensure we can parse the content in normal python string format. If you want to submit your input, use \\n at the end of content. 
scroll(point='<point>x1 y1</point>', direction='down or up or right or left') # Show more information on the `direction` side.
wait() #Sleep for 5s and take a screenshot to check for any changes.
finished(content='successful|failure') # Use escape characters \\', \\", and \\n in content part to ensure we can parse the content in normal python string format.

## Output Example
Thought: Let's click ...
Action: click(point='<point>100 200</point>')

## Note
- Use English in `Thought` part.
- Write a small plan and finally summarize your next action (with its target element) in one sentence in `Thought` part.
- If you have executed several same actions (like repeatedly clicking the same point) but the screen keeps no change, please try to execute a modified action when necessary.
- finished content should be either`successful` or `failure`.

## User Instruction
{instruction}

Please generate the next move according to the screenshot and task instruction.
"""  # noqa: E501, W291
"""AgentNetBench desktop prompt (§4.1): think block, desktop action space, the task last."""

GROUNDING_PROMPT = (
    "You are a GUI agent. You are given a task and your action history, with screenshots. You need to "
    "perform the next action to complete the task. \n\n## Output Format\n\nAction: ...\n\n\n"
    "## Action Space\nclick(point='<point>x1 y1</point>'')\n\n## User Instruction\n{instruction}"
)
"""ScreenSpot grounding prompt (§4.3), identical to `ui_tars.prompt.GROUNDING_DOUBAO`.

The stray second quote in `click(point='<point>x1 y1</point>'')` is kept on purpose: it is in the
official UI-TARS template and in every published ScreenSpot number, and the model answers a
well-formed `click(...)` regardless. A test pins this text to the package's.
"""

_MOBILE_ACTION_SPACE = """You are a GUI agent. You are given a task and your action history, with screenshots. You need to perform the next action to complete the task. 
## Output Format
```
Thought: ...
Action: ...
```
## Action Space

click(point='<point>x1 y1</point>')
long_press(point='<point>x1 y1</point>')
type(content='') #If you want to submit your input, use "\\n" at the end of `content`.
scroll(point='<point>x1 y1</point>', direction='down or up or right or left')
press_back()
wait() # Wait for the screen to finish loading.
finished(content='successful|infeasible') # Use `infeasible` if you think the task is not feasible (including cases like you don't have enough information or cannot perform some necessary actions); otherwise, use `successful`.


## Note
- Use English in `Thought` part.
- Write a small plan and finally summarize your next action (with its target element) in one sentence in `Thought` part.
- Always use `click` if you want to open an app.
"""  # noqa: E501, W291

MOBILE_PROMPT_HIGH = (
    _MOBILE_ACTION_SPACE
    + """- content in `finished` action should only be `successful` or `infeasible`.

## Previous Actions
{previous_actions}

## User Instruction
{goal}

"""
)
"""AndroidControl prompt, high level (§4.2): the goal is the instruction."""

MOBILE_PROMPT_LOW = (
    _MOBILE_ACTION_SPACE
    + """- You must follow User Instruction below.

## User Goal:
{goal}

## Previous Actions
{previous_actions}

## User Instruction
{step_instruction}
"""
)
"""AndroidControl prompt, low level (§4.2): the goal plus this step's instruction to follow."""

WEB_PROMPT = """You are a GUI agent. You are given a task and your action history, with screenshots. You need to perform the next action to complete the task. 


## Output Format
```
Thought: ...
Action: ...
```

## Action Space


- type(point='<point>x1 y1</point>', content='xxx') # First click on the textbox at point x1 y1, and then type the content. 
- scroll(point='<point>x1 y1</point>', direction='down or up') # Show more information on the `direction` side.
- select(point='<point>x1 y1</point>', content='xxx') # Select dropdown menu at point x1 y1 and choose entry xxx.
- click(point='<point>x1 y1</point>').   

## Note
- Use English in `Thought` part.
- Write a small plan and finally summarize your next action (with its target element) in one sentence in `Thought` part. 
- For `type` action, Use escape characters \\', \\\", and \\n in content part to ensure we can parse the content in normal python string format. If you want to submit your input, use \\n at the end of content. 

## Rule
- The `type` action will click + type in a textbox or search box. DO NOT `click` ON search box; otherwise, you will be terminated.

## Previous Actions
{previous_actions}



## User Instruction
{instruction}


"""  # noqa: E501, W291
"""Multimodal-Mind2Web prompt (§4.5): type / scroll / select / click, previous actions, the task.

One change to the original (issue 16): its `type(content='xxx')` named no point, though its rule
says a `type` clicks into the textbox and forbids clicking the box first, so a UI-TARS answer that
followed it could never earn element accuracy on a TYPE step (13% of the steps). The `type` line
carries the textbox's point as `select` does, in the prompt's own `point='<point>x1 y1</point>'`
form (UI-TARS-1.5's spelling of the `start_box` its training data writes on `type`).
"""


def computer_use_messages(
    task: str,
    screenshots: Sequence[ImageLike | None],
    history_outputs: Sequence[HistoryEntry],
    max_history_screenshots: int = DEFAULT_HISTORY_SCREENSHOTS,
    history_window: int = HISTORY_TEXT_WINDOW,
) -> list[Message]:
    """AgentNetBench messages: earlier screenshots and outputs as turns, then screenshot + prompt.

    See `prompting.computer_use_conversation` for the layout; `screenshots[-1]` is the current one.
    """
    return computer_use_conversation(
        COMPUTER_USE_PROMPT.format(instruction=task),
        screenshots,
        history_outputs,
        max_history_screenshots,
        history_window,
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
    return trajectory_conversation(
        COMPUTER_USE_PROMPT.format(instruction=task), screenshots, answers, max_screenshots
    )


def grounding_messages(instruction: str, screenshot: ImageLike) -> list[Message]:
    """ScreenSpot messages: one user turn `[screenshot, grounding prompt]`, no system message."""
    return [screenshot_turn(screenshot, GROUNDING_PROMPT.format(instruction=instruction))]


def mobile_messages(
    goal: str,
    screenshot: ImageLike,
    previous_actions: Sequence[str],
    step_instruction: str | None = None,
) -> list[Message]:
    """AndroidControl messages: the system message, then `[screenshot, mobile prompt]`.

    With `step_instruction` (the `low` instruction level) the low-level prompt is used.
    """
    previous = previous_actions_text(previous_actions)
    if step_instruction is None:
        text = MOBILE_PROMPT_HIGH.format(previous_actions=previous, goal=goal)
    else:
        text = MOBILE_PROMPT_LOW.format(
            goal=goal, previous_actions=previous, step_instruction=step_instruction
        )
    return [system_turn(SYSTEM_PROMPT), screenshot_turn(screenshot, text)]


def web_messages(task: str, screenshot: ImageLike, previous_actions: Sequence[str]) -> list[Message]:
    """Mind2Web messages: the system message, then `[screenshot, web prompt]`."""
    text = WEB_PROMPT.format(previous_actions=previous_actions_text(previous_actions), instruction=task)
    return [system_turn(SYSTEM_PROMPT), screenshot_turn(screenshot, text)]


# ----------------------------------------------------------------------------------------------
# Parsing

_NAME_TO_TYPE: dict[str, ActionType] = {
    "click": ActionType.CLICK,
    "left_single": ActionType.CLICK,
    "left_double": ActionType.DOUBLE_CLICK,
    "right_single": ActionType.RIGHT_CLICK,
    "left_triple": ActionType.TRIPLE_CLICK,
    "move_to": ActionType.MOVE_TO,
    "drag": ActionType.DRAG,
    "hotkey": ActionType.HOTKEY,
    "press": ActionType.PRESS,
    "type": ActionType.TYPE,
    "scroll": ActionType.SCROLL,
    "wait": ActionType.WAIT,
    "finished": ActionType.FINISHED,
    "long_press": ActionType.LONG_PRESS,
    "open_app": ActionType.OPEN_APP,
    "press_back": ActionType.PRESS_BACK,
    "press_home": ActionType.PRESS_HOME,
    "select": ActionType.SELECT,
}
"""UI-TARS function names. `left_triple` and `move_to` are not in any UI-TARS prompt; they exist so
every `ActionType` has a form (the formatter's oracle needs one), and `left_single` is an alias
older UI-TARS versions emit."""

_TYPE_TO_NAME: dict[ActionType, str] = {
    kind: name for name, kind in _NAME_TO_TYPE.items() if name != "left_single"
}

_ARG_ALIASES: dict[str, str] = {
    "point": "start",
    "start_point": "start",
    "start_box": "start",
    "end_point": "end",
    "end_box": "end",
    "keys": "key",
    "text": "content",
}
"""Argument names normalised: every spelling of a start point becomes `start`, of an end `end`;
`text` is the older spelling of `content` (`type(text='...', start_box='...')`)."""

_POSITIONAL: dict[str, tuple[str, ...]] = {
    "drag": ("start", "end"),
    "scroll": ("start", "direction"),
    "select": ("start", "content"),
    "hotkey": ("key",),
    "press": ("key",),
    "type": ("content",),
    "finished": ("content",),
    "open_app": ("app_name",),
}
"""Meaning of positional arguments per function; unlisted pointing functions take `start`."""

_POINT_TYPES = frozenset(POINTING_TYPES)

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_COLON = "[:\uff1a]"
"""A section label's colon, ASCII or full-width (`Action：`, as outputs in Chinese mode write it)."""
_ACTION_LINE = re.compile(rf"^[ \t]*Action{_COLON}[ \t]*", re.MULTILINE)
_ACTION_ANYWHERE = re.compile(rf"Action{_COLON}")
_THOUGHT = re.compile(rf"Thought{_COLON}[ \t]*(.*)", re.DOTALL)
_CALL_START = re.compile(r"^[ \t]*([A-Za-z_]\w*)[ \t]*\(", re.MULTILINE)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
_QUOTED_KWARG = re.compile(r"(\w+)\s*=\s*(['\"])(.*?)\2(?=\s*(?:,\s*\w+\s*=|,?\s*$))", re.DOTALL)
_QUOTED_ONLY = re.compile(r"\s*(['\"])(.*)\1\s*,?\s*", re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


def parse(
    text: str,
    image_size: tuple[int, int],
    *,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> list[Action]:
    """Every action in a UI-TARS output, coordinates relative to the original screenshot.

    `image_size` is the original (width, height); points are divided by its smart-resized size.
    Accepts `<point>x y</point>`, `(x,y)`, `<|box_start|>(x,y)<|box_end|>` and `[x1,y1,x2,y2]`
    boxes (a box becomes its centre). The `Thought:` text goes to every action's `thought`, a
    `<think>` block to `extra["think"]`. An output with no readable action gives
    `[Action.unparsed(text)]`; otherwise a call that cannot be read becomes an unparsed action in
    its place. Never raises on model text (only on an invalid `image_size`).
    """
    frame = model_image_size(*image_size, min_pixels=min_pixels, max_pixels=max_pixels)
    body = text.replace("[EOS]", "")
    think_match = _THINK.search(body)
    extra = {"think": think_match.group(1).strip()} if think_match else {}
    if think_match:
        body = body[: think_match.start()] + body[think_match.end() :]
    head, action_text = _split_action(body)
    if action_text is None:
        return [Action.unparsed(text)]
    thought_match = _THOUGHT.search(head)
    thought = thought_match.group(1).strip() if thought_match else ""
    actions: list[Action] = []
    for name, args in _read_calls(action_text):
        fields = _to_fields(name, args, frame)
        if fields is None:
            actions.append(Action.unparsed(text))
        else:
            actions.append(Action(**fields, thought=thought, raw=text, extra=dict(extra)))
    return actions if any(action.parsed for action in actions) else [Action.unparsed(text)]


def _split_action(body: str) -> tuple[str, str | None]:
    """(text before the action, the action text): from the first line starting `Action:` (later
    `Action:` line prefixes dropped, for outputs that repeat it per call), else from the last
    `Action:` anywhere, else the whole output if it starts with a known call (bare grounding).
    The colon may be full-width (`Action：`)."""
    match = _ACTION_LINE.search(body)
    if match:
        return body[: match.start()], _ACTION_LINE.sub("", body[match.end() :])
    labels = list(_ACTION_ANYWHERE.finditer(body))
    if labels:
        return body[: labels[-1].start()], body[labels[-1].end() :]
    call = _CALL_START.match(body.lstrip())
    if call and call.group(1) in _NAME_TO_TYPE:
        return "", body
    return body, None


def _read_calls(action_text: str) -> list[tuple[str, dict[str, str] | None]]:
    """(function name, its arguments or None if unreadable) for each call of the action text.

    A call starts a line (`name(`) and runs to the next such line. Quoted strings are strings: a
    raw newline inside `type(content='...')` may be followed by a line that merely starts like a
    call (`print(x)`), which cuts the call in two unreadable pieces. So when a call cannot be read
    and leaves a quote open, the lines after it up to the one that closes the quote are joined to
    it, if the joined text reads as one call whose quoted argument holds the newline. Each line is
    scanned once, so a degenerate output stays linear.
    """
    text = action_text.strip().strip("`").strip()
    starts = list(_CALL_START.finditer(text))
    if not starts or text[: starts[0].start()].strip():
        return []
    ends = [start.start() for start in starts[1:]] + [len(text)]
    calls: list[tuple[str, dict[str, str] | None]] = []
    index = 0
    while index < len(starts):
        name, begin = starts[index].group(1), starts[index].end()
        args, following = _read_args(name, _arguments(text[begin : ends[index]])), index + 1
        quote = _open_quote(text[begin : ends[index]]) if args is None else None
        last = index
        while quote is not None and last + 1 < len(starts):
            last += 1
            quote = _open_quote(text[ends[last - 1] : ends[last]], quote)
        if quote is None and last > index:
            joined = _read_args(name, _arguments(text[begin : ends[last]]))
            if joined is not None and any("\n" in value for value in joined.values()):
                args, following = joined, last + 1
        calls.append((name, args))
        index = following
    return calls


def _open_quote(text: str, quote: str | None = None) -> str | None:
    """The quote character still open at the end of `text` (None: every string is closed), reading
    from a state where `quote` is open; a backslash inside a string escapes the next character."""
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quote is not None and char == "\\":
            escaped = True
        elif quote is None and char in "'\"":
            quote = char
        elif char == quote:
            quote = None
    return quote


def _arguments(segment: str) -> str:
    """A call's argument text: its segment up to the last `)` (or all of it, for a truncated output)."""
    segment = segment.rstrip()
    close = segment.rfind(")")
    return segment[:close] if close >= 0 else segment


def _read_args(name: str, arg_text: str) -> dict[str, str] | None:
    """The call's arguments as `{canonical name: string value}`, or None if unreadable.

    Tried in order: `ast` as written; `ast` with raw newlines escaped; a quote-tolerant reader
    (a value ends at the quote followed by `, name=` or the end) for unescaped inner quotes.
    """
    for source in (arg_text, arg_text.replace("\r", "\\r").replace("\n", "\\n")):
        args = _ast_args(name, source)
        if args is not None:
            return args
    found = {key: _unescape(value) for key, _, value in _QUOTED_KWARG.findall(arg_text)}
    if found:
        return _canonical(name, [], found)
    only = _QUOTED_ONLY.fullmatch(arg_text)
    if only:
        return _canonical(name, [_unescape(only.group(2))], {})
    return None


def _ast_args(name: str, arg_text: str) -> dict[str, str] | None:
    """Arguments read by `ast` from `_(arg_text)`; literal values only, rendered as strings."""
    try:
        call = ast.parse(f"_({arg_text}\n)", mode="eval").body
        if not isinstance(call, ast.Call) or any(kw.arg is None for kw in call.keywords):
            return None
        positional = [_literal_text(node) for node in call.args]
        keywords = {str(kw.arg): _literal_text(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
    return _canonical(name, positional, keywords)


def _literal_text(node: ast.expr) -> str:
    """A literal argument as text: strings as they are, anything else (numbers, tuples) as `str`."""
    value = ast.literal_eval(node)
    return value if isinstance(value, str) else str(value)


def _canonical(name: str, positional: list[str], keywords: dict[str, str]) -> dict[str, str]:
    """Positional and keyword arguments merged under canonical names (see `_ARG_ALIASES`)."""
    order = _POSITIONAL.get(name, ("start",))
    args = dict(zip(order, positional, strict=False))
    args.update({_ARG_ALIASES.get(key, key): value for key, value in keywords.items()})
    return args


def _unescape(value: str) -> str:
    """Undo Python string escapes (`\\n`, `\\'`, ...) without evaluating anything."""
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(0)), value)


def _to_point(value: str | None, frame: tuple[int, int]) -> Point | None:
    """A point or box string in model pixels, as a relative point (a box gives its centre)."""
    if value is None:
        return None
    numbers = [float(n) for n in _NUMBER.findall(value)]
    if len(numbers) == 4:
        numbers = [(numbers[0] + numbers[2]) / 2, (numbers[1] + numbers[3]) / 2]
    if len(numbers) != 2 or not all(math.isfinite(n) for n in numbers):
        return None
    return numbers[0] / frame[0], numbers[1] / frame[1]


def _split_keys(key: str) -> tuple[str, ...]:
    """Hotkey keys: split on spaces (`'ctrl c'`), or on `+` for a single `'ctrl+c'` token."""
    keys = key.split()
    if len(keys) == 1 and "+" in keys[0] and len(keys[0]) > 1:
        keys = [part for part in keys[0].split("+") if part]
    return tuple(keys)


def _to_fields(name: str, args: dict[str, str] | None, frame: tuple[int, int]) -> dict[str, Any] | None:
    """The `Action` fields for one call, or None when the call is unknown or lacks what it needs."""
    kind = _NAME_TO_TYPE.get(name)
    if kind is None or args is None:
        return None
    start = _to_point(args.get("start"), frame)
    if (kind in _POINT_TYPES or kind is ActionType.SELECT) and start is None:
        return None
    fields: dict[str, Any] = {"type": kind, "point": start}
    if kind is ActionType.DRAG:
        fields["end_point"] = _to_point(args.get("end"), frame)
        if fields["end_point"] is None or ("start" in args and start is None):
            return None
    elif kind in (ActionType.HOTKEY, ActionType.PRESS):
        fields["keys"] = _split_keys(args.get("key", ""))
        if not fields["keys"]:
            return None
    elif kind is ActionType.SCROLL:
        direction = args.get("direction", "").strip().lower()
        if not direction or ("start" in args and start is None):
            return None
        fields["direction"] = direction
    elif kind in (ActionType.TYPE, ActionType.SELECT):
        if "content" not in args:
            return None
        fields["text"] = args["content"]
    elif kind is ActionType.FINISHED:
        fields["text"] = args.get("content")
    elif kind is ActionType.OPEN_APP:
        if not args.get("app_name"):
            return None
        fields["text"] = args["app_name"]
    return fields


# ----------------------------------------------------------------------------------------------
# Formatting


def format_action(
    action: Action,
    image_size: tuple[int, int],
    *,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> str:
    """The UI-TARS output that `parse` reads back as `action` (used by the oracle self-check).

    Writes `Thought: ...` (when the action has one) and `Action: name(...)`, with points as
    integer `<point>x y</point>` in smart-resized pixels. Round trip: `parse(format_action(a))`
    gives one action equal to `a` except that each coordinate moves to the nearest model pixel, by
    at most 0.5/W' in x and 0.5/H' in y (W', H' from `model_image_size`). A `type` with a point is
    written `type(point=..., content=...)`, the web prompt's form. A scroll's signed `amount` is not
    expressible (its direction is). An unparsed action formats as its raw text.
    """
    if action.type is ActionType.UNPARSED:
        return action.raw
    frame = model_image_size(*image_size, min_pixels=min_pixels, max_pixels=max_pixels)
    args: list[str] = []
    if action.type is ActionType.DRAG:
        if action.point is not None:
            args.append(f"start_point={_point_arg(action.point, frame)}")
        args.append(f"end_point={_point_arg(action.require('end_point'), frame)}")
    elif action.point is not None:
        args.append(f"point={_point_arg(action.point, frame)}")
    elif action.type in _POINT_TYPES or action.type is ActionType.SELECT:
        action.require("point")
    if action.type in (ActionType.HOTKEY, ActionType.PRESS):
        args.append(f"key={_quote(' '.join(action.keys))}")
    elif action.type is ActionType.SCROLL:
        args.append(f"direction={_quote(_scroll_direction(action))}")
    elif action.type in (ActionType.TYPE, ActionType.SELECT):
        args.append(f"content={_quote(action.text or '')}")
    elif action.type is ActionType.FINISHED and action.text is not None:
        args.append(f"content={_quote(action.text)}")
    elif action.type is ActionType.OPEN_APP:
        args.append(f"app_name={_quote(action.text or '')}")
    call = f"{_TYPE_TO_NAME[action.type]}({', '.join(args)})"
    return f"Thought: {action.thought}\nAction: {call}" if action.thought else f"Action: {call}"


def _point_arg(point: Point, frame: tuple[int, int]) -> str:
    """A relative point as the quoted `<point>x y</point>` argument, in integer model pixels."""
    return f"'<point>{round(point[0] * frame[0])} {round(point[1] * frame[1])}</point>'"


def _quote(text: str) -> str:
    """A single-quoted Python string literal, escaped the way the prompt asks the model to."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    return "'" + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + "'"


def _scroll_direction(action: Action) -> str:
    """The scroll direction, derived from the signed amount (positive = up) when not given."""
    if action.direction:
        return action.direction
    if action.amount:
        return "up" if action.amount > 0 else "down"
    raise ValueError(f"a scroll action needs a direction or a non-zero amount: {action}")
