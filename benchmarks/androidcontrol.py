"""AndroidControl (UGround's 500-step sample): one phone screenshot per step, scored 0/1.

The ground truth is AndroidControl's own JSON action; a click is judged against the smallest
accessibility node that contains the ground-truth point. The metric is the original step accuracy with
the B10 fixes (typed text without a point, scroll directions from signed amounts, back/home keys,
`open_app` predicted directly), see docs/metrics.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchmarkSpec,
    DataError,
    Fields,
    LoadResult,
    Prediction,
    SkippedSample,
    Tally,
    canonical_keys,
    check_limit,
    check_split,
    finished_failed,
    fold_actions,
    image_size,
    json_list,
    point_in_xyxy,
    read_json,
    require_dir,
)
from benchmarks.stats import mean_and_stderr
from guikv.agents.action import Action, ActionType
from guikv.errors import UserInputError

DATA_FILE = "500_steps.json"
"""The sample file name GUI-KV hard-codes inside ANDROIDCONTROL_TEST."""

SPLITS = ("all",)
INSTRUCTION_LEVELS = ("high", "low")
GT_TYPES = (
    "click",
    "long_press",
    "type_text",
    "scroll",
    "open_app",
    "navigate_back",
    "navigate_home",
    "wait",
    "status",
)
GROUNDING_TYPES = ("click", "long_press", "type_text")
"""Ground-truth types counted by `grounding_accuracy` (the original definition)."""

DIRECTIONS = ("up", "down", "left", "right")
GOAL_STATUSES = ("successful", "infeasible")


@dataclass(frozen=True)
class UINode:
    """One accessibility node: its box in screenshot pixels (inclusive) and its texts."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float
    text: str | None = None
    content_description: str | None = None

    @property
    def area(self) -> float:
        """Box area in square pixels, to find the smallest node under a point."""
        return (self.x_max - self.x_min) * (self.y_max - self.y_min)

    def contains(self, point: tuple[float, float]) -> bool:
        """Whether a pixel point is inside the box, edges included."""
        return point_in_xyxy(point, (self.x_min, self.y_min, self.x_max, self.y_max), tol=1e-6)

    def mentions(self, word: str) -> bool:
        """Whether `word` (lower-cased) occurs in the node's text or content description."""
        needle = word.lower()
        return any(needle in (label or "").lower() for label in (self.text, self.content_description))


@dataclass(frozen=True)
class AndroidAction:
    """A ground-truth AndroidControl action; coordinates are absolute screenshot pixels."""

    action_type: str
    x: float | None = None
    y: float | None = None
    text: str | None = None
    direction: str | None = None
    app_name: str | None = None
    goal_status: str | None = None


@dataclass(frozen=True)
class AndroidControlSample:
    """One step: the screenshot, the goal (and low-level step instruction), earlier actions as text,
    the ground-truth action and the flattened accessibility nodes.

    `instruction_level` is `high` (the prompt shows the goal only) or `low` (it adds the step
    instruction); the agent family builds the prompt from it.
    """

    episode_id: int | str
    step: int
    goal: str
    step_instruction: str
    instruction_level: str
    previous_actions: tuple[str, ...]
    image: Path
    image_size: tuple[int, int]
    ground_truth: AndroidAction
    nodes: tuple[UINode, ...]

    @property
    def sample_id(self) -> str:
        """A stable id for traces and resume: `<episode_id>/<step>`."""
        return f"{self.episode_id}/{self.step}"


def smallest_node(nodes: tuple[UINode, ...], point: tuple[float, float]) -> UINode | None:
    """The smallest-area node containing `point` (the first one on ties, as the original), or None."""
    best: UINode | None = None
    for node in nodes:
        if node.contains(point) and (best is None or node.area < best.area):
            best = node
    return best


def _flatten(tree: list[Any], fields: Fields, path: str) -> Iterator[tuple[str, Any]]:
    """Yield (field path, element) for every element dict of a possibly nested list of nodes."""
    for index, item in enumerate(tree):
        name = f"{path}[{index}]"
        if isinstance(item, list):
            yield from _flatten(item, fields, name)
        elif isinstance(item, dict):
            yield name, item
        else:
            raise DataError(fields.path, "a node object or a list of nodes", field=name, where=fields.where)


def _parse_nodes(fields: Fields) -> tuple[UINode, ...]:
    """Flatten and read the `accessibility_tree` of one record."""
    nodes = []
    for name, element in _flatten(fields.items("accessibility_tree"), fields, "accessibility_tree"):
        node = Fields(element, fields.path, fields.where, name)
        box = node.child("bbox_pixels")
        nodes.append(
            UINode(
                box.number("x_min"),
                box.number("y_min"),
                box.number("x_max"),
                box.number("y_max"),
                node.text("text", None),
                node.text("content_description", None),
            )
        )
    return tuple(nodes)


def _parse_action(fields: Fields) -> AndroidAction:
    """Read the ground-truth action and the parameters its type needs."""
    act = fields.child("action")
    kind = act.text("action_type")
    if kind not in GT_TYPES:
        raise act.error("action_type", f"one of {', '.join(GT_TYPES)}, got '{kind}'")
    if kind in ("click", "long_press"):
        return AndroidAction(kind, x=act.number("x"), y=act.number("y"))
    if kind == "type_text":
        return AndroidAction(kind, text=act.text("text"))
    if kind == "scroll":
        direction = act.text("direction")
        if direction not in DIRECTIONS:
            raise act.error("direction", f"one of {', '.join(DIRECTIONS)}, got '{direction}'")
        return AndroidAction(kind, direction=direction)
    if kind == "open_app":
        return AndroidAction(kind, app_name=act.text("app_name"))
    if kind == "status":
        status = act.text("goal_status")
        if status not in GOAL_STATUSES:
            raise act.error("goal_status", f"one of {', '.join(GOAL_STATUSES)}, got '{status}'")
        return AndroidAction(kind, goal_status=status)
    return AndroidAction(kind)


def load(
    data_dir: Path,
    images_dir: Path,
    split: str | None = None,
    *,
    limit: int | None = None,
    instruction_level: str = "high",
) -> LoadResult[AndroidControlSample]:
    """Load `500_steps.json` (a JSON list of step records) with screenshots under `images_dir`.

    `instruction_level` is the original `--instruction_level` (high: goal only; low: goal and step
    instruction, which then becomes a required field). `limit` keeps the first N records.
    """
    check_split(split, SPLITS, "all")
    limit = check_limit(limit)
    if instruction_level not in INSTRUCTION_LEVELS:
        raise UserInputError(
            f"--instruction_level: unknown value '{instruction_level}'; expected one of: high, low"
        )
    require_dir(data_dir, f"AndroidControl's {DATA_FILE}", "ANDROIDCONTROL_TEST")
    require_dir(images_dir, "AndroidControl screenshots", "ANDROIDCONTROL_IMGS")
    path = data_dir / DATA_FILE
    records = json_list(read_json(path), path)
    samples: list[AndroidControlSample] = []
    skipped: list[SkippedSample] = []
    for index, record in enumerate(records[:limit]):
        fields = Fields(record, path, f"record {index}")
        episode_id = fields.raw("episode_id")
        if isinstance(episode_id, bool) or not isinstance(episode_id, int | str):
            raise fields.error("episode_id", "an integer or string episode id")
        step = fields.integer("step")
        image = images_dir / fields.text("screenshot")
        ground_truth = _parse_action(fields)
        nodes = _parse_nodes(fields)
        goal = fields.text("goal")
        step_instruction = fields.text("step_instruction") if instruction_level == "low" else ""
        previous = fields.texts("previous_actions", ())
        if not image.is_file():
            skipped.append(SkippedSample(f"{episode_id}/{step}", "missing screenshot", (image,)))
            continue
        samples.append(
            AndroidControlSample(
                episode_id=episode_id,
                step=step,
                goal=goal,
                step_instruction=step_instruction,
                instruction_level=instruction_level,
                previous_actions=previous,
                image=image,
                image_size=image_size(image),
                ground_truth=ground_truth,
                nodes=nodes,
            )
        )
    return LoadResult(tuple(samples), tuple(skipped))


# --- metric -------------------------------------------------------------------------------------

_DIRECT = {
    ActionType.CLICK: "click",
    ActionType.LONG_PRESS: "long_press",
    ActionType.TYPE: "type_text",
    ActionType.SCROLL: "scroll",
    ActionType.OPEN_APP: "open_app",
    ActionType.PRESS_BACK: "navigate_back",
    ActionType.PRESS_HOME: "navigate_home",
    ActionType.WAIT: "wait",
    ActionType.FINISHED: "status",
}
_KEY_ACTIONS = {
    frozenset({"back"}): "navigate_back",
    frozenset({"escape"}): "navigate_back",
    frozenset({"home"}): "navigate_home",
}


def to_android(action: Action) -> str:
    """The AndroidControl action type a prediction stands for (press_back -> navigate_back, a single
    back/escape key -> navigate_back, home key -> navigate_home, finished -> status...); other
    predictions keep their own type name and match nothing."""
    if action.type in _DIRECT:
        return _DIRECT[action.type]
    if action.type in (ActionType.PRESS, ActionType.HOTKEY):
        return _KEY_ACTIONS.get(canonical_keys(action.keys), action.type.value)
    return action.type.value


def scroll_direction(action: Action) -> str | None:
    """A scroll's direction word, taken from `direction` or, failing that, from a signed amount
    (negative = down, as pyautogui and OpenCUA write it)."""
    direction = (action.direction or "").lower()
    if direction in DIRECTIONS:
        return direction
    if action.amount:
        return "down" if action.amount < 0 else "up"
    return None


def goal_status(action: Action) -> str:
    """The `finished` content as AndroidControl's goal status (successful | infeasible): failure words,
    or no content at all, give infeasible (`finished_failed`)."""
    content = (action.text or "").strip().lower()
    if content in GOAL_STATUSES:
        return content
    return "infeasible" if finished_failed(content) else "successful"


def _pixel(sample: AndroidControlSample, action: Action) -> tuple[float, float] | None:
    """The predicted point in screenshot pixels (unrounded), or None without a point."""
    if action.point is None:
        return None
    width, height = sample.image_size
    return action.point[0] * width, action.point[1] * height


def _correct(sample: AndroidControlSample, action: Action, kind: str) -> bool:
    """The step-accuracy rule for one prediction (see the module docstring and docs/metrics.md)."""
    gt = sample.ground_truth
    pixel = _pixel(sample, action)
    under_pred = smallest_node(sample.nodes, pixel) if pixel is not None else None
    if gt.action_type in ("click", "long_press"):
        if kind != gt.action_type or pixel is None or gt.x is None or gt.y is None:
            return False
        target = smallest_node(sample.nodes, (gt.x, gt.y))
        return target is not None and target.contains(pixel)
    if gt.action_type == "type_text":
        return kind == "type_text" and action.text == gt.text
    if gt.action_type == "open_app":
        name = (gt.app_name or "").lower()
        if kind == "open_app":
            return bool(name) and name in (action.text or "").lower()
        return kind == "click" and under_pred is not None and bool(name) and under_pred.mentions(name)
    if gt.action_type == "navigate_back" and kind == "click":
        return under_pred is not None and under_pred.mentions("back")
    if kind != gt.action_type:
        return False
    if gt.action_type == "scroll":
        return scroll_direction(action) == gt.direction
    if gt.action_type == "status":
        return goal_status(action) == gt.goal_status
    return True


def without_submit(action: Action) -> Action:
    """A `type` action with one trailing newline (the mobile prompt's "submit") removed from its text;
    any other action unchanged."""
    text = action.text or ""
    if action.type is not ActionType.TYPE or not text.endswith("\n"):
        return action
    return dataclasses.replace(action, text=text[:-1])


def score(sample: AndroidControlSample, prediction: Prediction) -> dict[str, Any]:
    """Score a prediction (its first action after `fold_actions`, so OpenCUA's `write(t)` +
    `press('enter')` is a `type('t\\n')` as UI-TARS writes it): `correct` (0/1 step accuracy, the
    original exact text rule), `correct_ignoring_newline` (the same with one trailing newline of a
    typed text ignored), with `grounding` saying whether the ground truth counts toward grounding
    accuracy, plus `episode_id`, `step`, `gt_type`, `pred_type`."""
    action = fold_actions(prediction)[0]
    kind = to_android(action)
    return {
        "episode_id": sample.episode_id,
        "step": sample.step,
        "gt_type": sample.ground_truth.action_type,
        "pred_type": kind,
        "parsed": action.parsed,
        "grounding": sample.ground_truth.action_type in GROUNDING_TYPES,
        "correct": _correct(sample, action, kind),
        "correct_ignoring_newline": _correct(sample, without_submit(action), kind),
    }


def _lenient(record: dict[str, Any]) -> bool:
    """A record's `correct_ignoring_newline`, or its `correct` when it predates that field."""
    return bool(record.get("correct_ignoring_newline", record["correct"]))


def summarize(
    records: list[dict[str, Any]], skipped: Sequence[str] = (), failed: Sequence[str] = ()
) -> dict[str, Any]:
    """`step_accuracy` over all records, `grounding_accuracy` over click/long_press/type_text ground
    truths, the same two with one trailing newline of typed text ignored
    (`step_accuracy_ignoring_newline`, `grounding_accuracy_ignoring_newline`), and accuracy per
    ground-truth type. A record written before the lenient field existed counts by its exact rule
    there (re-score the run to fill it in). Each accuracy comes with its standard error
    (`benchmarks.stats`). `skipped` (ids of steps without a screenshot) and `failed` (of steps whose
    generation raised, which have no record here) do not enter the metrics: the runner reports
    those steps."""
    grounding = [r for r in records if r["grounding"]]
    per_type: dict[str, Tally] = {}
    for record in records:
        per_type.setdefault(record["gt_type"], Tally()).add(bool(record["correct"]))
    return {
        **mean_and_stderr("step_accuracy", (float(r["correct"]) for r in records)),
        **mean_and_stderr("grounding_accuracy", (float(r["correct"]) for r in grounding)),
        **mean_and_stderr("step_accuracy_ignoring_newline", (float(_lenient(r)) for r in records)),
        **mean_and_stderr("grounding_accuracy_ignoring_newline", (float(_lenient(r)) for r in grounding)),
        "correct_steps": sum(1 for r in records if r["correct"]),
        "total_steps": len(records),
        "correct_grounding_steps": sum(1 for r in grounding if r["correct"]),
        "grounding_steps": len(grounding),
        "unparsed_steps": sum(1 for r in records if not r["parsed"]),
        "type_accuracy": {name: per_type[name].as_dict() for name in sorted(per_type)},
    }


def ground_truth_action(sample: AndroidControlSample) -> Action:
    """The ground truth as an `Action` (the oracle), with the click point normalised by the image size."""
    gt = sample.ground_truth
    width, height = sample.image_size
    if gt.action_type in ("click", "long_press") and gt.x is not None and gt.y is not None:
        kind = ActionType.CLICK if gt.action_type == "click" else ActionType.LONG_PRESS
        return Action(kind, point=(gt.x / width, gt.y / height))
    simple = {
        "type_text": Action(ActionType.TYPE, text=gt.text),
        "scroll": Action(ActionType.SCROLL, direction=gt.direction),
        "open_app": Action(ActionType.OPEN_APP, text=gt.app_name),
        "navigate_back": Action(ActionType.PRESS_BACK),
        "navigate_home": Action(ActionType.PRESS_HOME),
        "status": Action(ActionType.FINISHED, text=gt.goal_status),
    }
    return simple.get(gt.action_type, Action(ActionType.WAIT))


SPEC = BenchmarkSpec(
    name="androidcontrol",
    title="AndroidControl",
    data_env="ANDROIDCONTROL_TEST",
    images_env="ANDROIDCONTROL_IMGS",
    splits=SPLITS,
    default_split="all",
    metric_columns=("step_accuracy", "grounding_accuracy", "step_accuracy_ignoring_newline"),
    max_new_tokens=600,
    load=load,
    score=score,
    summarize=summarize,
    ground_truth_action=ground_truth_action,
)
