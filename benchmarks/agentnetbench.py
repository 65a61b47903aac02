"""AgentNetBench (OpenCUA): offline desktop trajectories, scored one step at a time.

A sample is one STEP of a trajectory: its screenshot, the earlier steps (each with its own screenshot
and ground-truth monologue, so a runner can show history screenshots and fall back to ground-truth text
for a step it skipped), the ground-truth actions and the alternatives. The metric is the benchmark's
published `evaluate_action` rule with the fixes listed in docs/metrics.md (B11).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import editdistance

from benchmarks.common import (
    BenchmarkSpec,
    Box,
    DataError,
    Fields,
    LoadResult,
    Prediction,
    SkippedSample,
    canonical_keys,
    check_limit,
    check_split,
    finished_failed,
    fold_actions,
    mean,
    point_in_xywh,
    read_json,
    require_dir,
    submitted,
)
from benchmarks.stats import mean_and_stderr
from guikv.agents.action import Action, ActionType

COORD_TYPES = ("click", "doubleclick", "rightclick", "tripleclick", "moveto", "dragto")
"""AgentNetBench action types scored by where they happen."""

KEY_TYPES = ("press", "hotkey")
"""Key actions; a one-key hotkey and a press are the same keystroke, so they match each other."""

COORD_THRESHOLD = 0.01 * math.sqrt(2)
"""Distance (normalised) within which a point off every box still gets full credit."""

COORD_ALPHA = 120.0
"""Decay rate of the partial credit exp(-alpha * (d - threshold)) beyond the threshold."""

WRITE_SIMILARITY_THRESHOLD = 0.8
"""Edit-distance similarity from which typed text gets full credit."""

NEWLINE_FACTOR = 0.9
"""Credit factor when exactly one of prediction and ground truth submits the text with Enter."""

SPLITS = ("all",)


def canonical_type(name: str) -> str:
    """A ground-truth action type as the metric compares it: lower-cased, underscores dropped."""
    return name.lower().replace("_", "")


@dataclass(frozen=True)
class GroundTruthAction:
    """One ground-truth action of a step (`type` already canonical, e.g. `moveto`, `doubleclick`).

    `position` is the normalised target point, `bboxes` the element boxes [x, y, w, h] normalised 0-1,
    `text` the typed text, `keys` the pressed keys as written, `status` the terminate status and
    `amount` the signed scroll amount (negative = down).
    """

    type: str
    position: tuple[float, float] | None = None
    bboxes: tuple[Box, ...] = ()
    text: str | None = None
    keys: tuple[str, ...] = ()
    status: str | None = None
    amount: int | None = None


@dataclass(frozen=True)
class InnerMonologue:
    """The annotated reasoning of a step; earlier steps' monologues are the fallback history text."""

    observation: str = ""
    thought: str = ""
    low_level_instruction: str = ""


@dataclass(frozen=True)
class PastStep:
    """An earlier step of the same trajectory, as history for a later step.

    Each history entry carries its OWN screenshot (the fix of B4, where the original attached a stale
    path left over from another loop). `image_exists` says whether that screenshot is on disk.
    """

    step_index: int
    step_num: int
    image: Path
    image_exists: bool
    monologue: InnerMonologue
    action_code: str


@dataclass(frozen=True)
class AgentNetStep:
    """One step to predict: the current screenshot, the task, the earlier steps and the ground truth.

    `step_index` counts steps within the trajectory from 0; `step_num` is the file's own number
    (the screenshot frame number, not contiguous). `history` lists every earlier step in order; a
    runner keeps the last `image_slots - 1` screenshots.
    """

    task_id: str
    step_index: int
    step_num: int
    instruction: str
    image: Path
    history: tuple[PastStep, ...]
    ground_truth: tuple[GroundTruthAction, ...]
    alternatives: tuple[tuple[GroundTruthAction, ...], ...]
    milestone: bool
    monologue: InnerMonologue
    action_code: str

    @property
    def sample_id(self) -> str:
        """A stable id for traces and resume: `<task_id>/<step_num>`."""
        return f"{self.task_id}/{self.step_num}"

    @property
    def history_images(self) -> tuple[Path, ...]:
        """The screenshots of the earlier steps that exist on disk, oldest first, each its own step's."""
        return tuple(past.image for past in self.history if past.image_exists)


@dataclass(frozen=True)
class Trajectory:
    """The loaded steps of one trajectory, in order (steps skipped for a missing screenshot are absent)."""

    task_id: str
    instruction: str
    steps: tuple[AgentNetStep, ...]


def group_trajectories(samples: Sequence[AgentNetStep]) -> tuple[Trajectory, ...]:
    """Group step samples by trajectory, keeping the order in which trajectories and steps appear."""
    grouped: dict[str, list[AgentNetStep]] = {}
    for sample in samples:
        grouped.setdefault(sample.task_id, []).append(sample)
    return tuple(Trajectory(task, steps[0].instruction, tuple(steps)) for task, steps in grouped.items())


def _parse_gt_action(value: Any, path: Path, where: str, prefix: str) -> GroundTruthAction:
    """Read one ground-truth action, checking the parameters its type needs."""
    fields = Fields(value, path, where, prefix)
    kind = canonical_type(fields.text("type"))
    params = Fields(fields.raw("params", {}), path, where, fields.name("params"))
    bboxes: tuple[Box, ...] = ()
    if fields.has("metadata"):
        meta = fields.child("metadata")
        for index, item in enumerate(meta.items("bboxes", [])):
            entry = Fields(item, path, where, meta.name(f"bboxes[{index}]"))
            bboxes += (entry.box("rel_bbox"),)
    position = None
    if params.has("position"):
        pos = params.child("position")
        position = (pos.number("x"), pos.number("y"))
    if kind in COORD_TYPES and position is None:
        raise params.error("position", "{x, y} normalised 0-1 (required for a " + kind + " action)")
    text = None
    if kind == "write":
        text = params.text("text", None)
        text = params.text("content", "") if text is None else text
    keys: tuple[str, ...] = ()
    if kind in KEY_TYPES:
        raw_keys = params.raw("keys")
        keys = (raw_keys,) if isinstance(raw_keys, str) else params.texts("keys")
    status = params.text("status") if kind == "terminate" else None
    amount = params.integer("amount", None) if kind == "scroll" else None
    return GroundTruthAction(kind, position, bboxes, text, keys, status, amount)


def _parse_actions(value: Any, path: Path, where: str, field: str) -> tuple[GroundTruthAction, ...]:
    """Read a non-empty list of ground-truth actions."""
    if not isinstance(value, list) or not value:
        raise DataError(path, "a non-empty list of actions", field=field, where=where)
    return tuple(_parse_gt_action(item, path, where, f"{field}[{i}]") for i, item in enumerate(value))


def _parse_monologue(fields: Fields) -> InnerMonologue:
    """Read a step's optional inner monologue."""
    if not fields.has("inner_monologue"):
        return InnerMonologue()
    inner = fields.child("inner_monologue")
    return InnerMonologue(
        inner.text("observation", ""), inner.text("thought", ""), inner.text("low_level_instruction", "")
    )


def load(
    data_dir: Path, images_dir: Path, split: str | None = None, *, limit: int | None = None
) -> LoadResult[AgentNetStep]:
    """Load every trajectory file (`*.json` not starting with `mapping`, sorted by name) as step samples.

    `limit` keeps the first N trajectories (the original `--debug N`). A step whose screenshot is
    missing is reported in `skipped`; later steps still list it in their history (with
    `image_exists=False`) so the runner can fall back to its ground-truth monologue.
    """
    check_split(split, SPLITS, "all")
    limit = check_limit(limit)
    require_dir(data_dir, "AgentNetBench trajectory JSON files", "AGENTNETBENCH_DATA")
    require_dir(images_dir, "AgentNetBench screenshots", "AGENTNETBENCH_IMGS")
    files = sorted(p for p in data_dir.glob("*.json") if p.is_file() and not p.name.startswith("mapping"))
    if not files:
        raise DataError(data_dir, "at least one trajectory file '<task_id>.json' (none found)")
    samples: list[AgentNetStep] = []
    skipped: list[SkippedSample] = []
    for path in files[:limit]:
        steps, missing = _load_trajectory(path, images_dir)
        samples.extend(steps)
        skipped.extend(missing)
    return LoadResult(tuple(samples), tuple(skipped))


def _load_trajectory(path: Path, images_dir: Path) -> tuple[list[AgentNetStep], list[SkippedSample]]:
    """Read one trajectory file into its step samples and the steps skipped for missing screenshots."""
    top = Fields(read_json(path), path, "trajectory")
    task_id = top.text("task_id")
    instruction = top.text("high_level_task_description", None) or top.text("user_task_description", None)
    if not instruction:
        raise top.error("high_level_task_description", "the task instruction (or user_task_description)")
    raw_steps = top.items("steps")
    if not raw_steps:
        raise top.error("steps", "a non-empty list of steps")
    history: list[PastStep] = []
    samples: list[AgentNetStep] = []
    skipped: list[SkippedSample] = []
    for index, raw in enumerate(raw_steps):
        where = f"step {index}"
        step = Fields(raw, path, where, f"steps[{index}]")
        step_num = step.integer("step_num")
        image = images_dir / step.text("image")
        monologue = _parse_monologue(step)
        action_code = step.text("action", "")
        gt_field = step.name("ground_truth_actions")
        ground_truth = _parse_actions(step.raw("ground_truth_actions"), path, where, gt_field)
        alternatives = tuple(
            _parse_actions(option, path, where, step.name(f"alternative_options[{i}]"))
            for i, option in enumerate(step.items("alternative_options", []))
            if option != []
        )
        exists = image.is_file()
        sample = AgentNetStep(
            task_id=task_id,
            step_index=index,
            step_num=step_num,
            instruction=instruction,
            image=image,
            history=tuple(history),
            ground_truth=ground_truth,
            alternatives=alternatives,
            milestone=step.flag("milestone", False),
            monologue=monologue,
            action_code=action_code,
        )
        if exists:
            samples.append(sample)
        else:
            skipped.append(SkippedSample(sample.sample_id, "missing screenshot", (image,)))
        history.append(PastStep(index, step_num, image, exists, monologue, action_code))
    return samples, skipped


# --- metric -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pred:
    """A predicted action in AgentNetBench's vocabulary (`point` is a drag's start, `end` its end)."""

    type: str
    point: tuple[float, float] | None = None
    end: tuple[float, float] | None = None
    text: str = ""
    newline: bool = False
    keys: frozenset[str] = frozenset()
    status: str = ""
    sign: int | None = None


@dataclass(frozen=True)
class _Target:
    """A ground-truth action as compared: the action, whether its text is submitted with Enter, and for
    a drag (`action` a dragTo) the moveTo that starts it."""

    action: GroundTruthAction
    newline: bool = False
    start: GroundTruthAction | None = None


def _family(kind: str) -> str:
    """The matching class of a type: press and hotkey are one class, every other type its own."""
    return "keys" if kind in KEY_TYPES else kind


def _scroll_sign(amount: int | None, direction: str | None) -> int | None:
    """+1 for up, -1 for down, None when unknown (e.g. a horizontal scroll)."""
    if amount:
        return 1 if amount > 0 else -1
    return {"up": 1, "down": -1}.get((direction or "").lower())


def to_agentnet(prediction: Prediction) -> _Pred | None:
    """Map a prediction onto AgentNetBench's action vocabulary: its first action after folding
    [type, Enter] into a submitted type and [move_to, drag] into one drag (`fold_actions`, done on the
    ground truth too); None where the benchmark has no such action (wait, open_app, press_home,
    unparsed output...)."""
    action = fold_actions(prediction)[0]
    t = action.type
    simple = {
        ActionType.CLICK: "click",
        ActionType.LONG_PRESS: "click",
        ActionType.DOUBLE_CLICK: "doubleclick",
        ActionType.RIGHT_CLICK: "rightclick",
        ActionType.TRIPLE_CLICK: "tripleclick",
        ActionType.MOVE_TO: "moveto",
    }
    if t in simple:
        return _Pred(simple[t], point=action.point)
    if t is ActionType.DRAG:
        return _Pred("dragto", point=action.point, end=action.end_point)
    if t is ActionType.TYPE:
        raw = action.text or ""
        return _Pred("write", text=raw.strip().lower(), newline=submitted(raw))
    if t in (ActionType.PRESS, ActionType.HOTKEY):
        return _Pred(t.value, keys=canonical_keys(action.keys))
    if t is ActionType.PRESS_BACK:
        return _Pred("press", keys=frozenset({"escape"}))
    if t is ActionType.SCROLL:
        return _Pred("scroll", point=action.point, sign=_scroll_sign(action.amount, action.direction))
    if t is ActionType.FINISHED:
        return _Pred("terminate", status="failure" if finished_failed(action.text) else "success")
    return None


def _targets(actions: tuple[GroundTruthAction, ...]) -> list[_Target]:
    """The comparable views of a ground-truth action list: its first action, with [write, press enter]
    read as one submitted write, [moveTo, dragTo] as one drag between the two points, and
    [moveTo, scroll] offering the scroll as an equal alternative."""
    first = actions[0]
    second = actions[1] if len(actions) > 1 else None
    enter = second is not None and second.type in KEY_TYPES and canonical_keys(second.keys) == {"enter"}
    if first.type == "write" and enter:
        return [_Target(first, newline=True)]
    if first.type == "moveto" and second and second.type == "dragto":
        return [_Target(second, start=first)]
    if first.type == "moveto" and second and second.type == "scroll":
        return [_Target(first), _Target(second)]
    return [_Target(first, first.type == "write" and submitted(first.text))]


def _coord_score(point: tuple[float, float] | None, gt: GroundTruthAction) -> float:
    """1 inside any box or within the threshold of the position, else exp(-120 (d - threshold))."""
    if point is None or gt.position is None:
        return 0.0
    if any(point_in_xywh(point, box) for box in gt.bboxes):
        return 1.0
    distance = math.dist(point, gt.position)
    if distance <= COORD_THRESHOLD:
        return 1.0
    return math.exp(-COORD_ALPHA * (distance - COORD_THRESHOLD))


def _drag_score(pred: _Pred, target: _Target) -> float:
    """A drag scored against both of its points: the mean of the start's credit (against the moveTo
    that begins it) and the end's (against the dragTo), each by the click rule. A point the prediction
    lacks earns 0, so a lone moveTo to the right start earns half. A dragTo recorded without a moveTo
    before it is scored by its end alone."""
    end = _coord_score(pred.end, target.action)
    if target.start is None:
        return end
    return (_coord_score(pred.point, target.start) + end) / 2


def _write_score(pred: _Pred, target: _Target) -> float:
    """Text similarity with the benchmark's 0.8 threshold, times 0.9 if only one side presses Enter."""
    gt_text = (target.action.text or "").strip().lower()
    if pred.text == gt_text:
        base = 1.0
    else:
        longest = max(len(pred.text), len(gt_text))
        similarity = 1.0 - editdistance.eval(pred.text, gt_text) / longest
        base = 1.0 if similarity >= WRITE_SIMILARITY_THRESHOLD else similarity / WRITE_SIMILARITY_THRESHOLD
    return base if pred.newline == target.newline else base * NEWLINE_FACTOR


def _compare(pred: _Pred, target: _Target) -> float:
    """Score a prediction against one ground-truth view of the same type class."""
    gt = target.action
    if gt.type == "dragto":
        return _drag_score(pred, target)
    if gt.type in COORD_TYPES:
        return _coord_score(pred.point, gt)
    if gt.type == "write":
        return _write_score(pred, target)
    if gt.type in KEY_TYPES:
        return 1.0 if pred.keys == canonical_keys(gt.keys) else 0.0
    if gt.type == "scroll":
        return 1.0
    if gt.type == "terminate":
        return 1.0 if pred.status == (gt.status or "").lower() else 0.0
    return 0.0


def _matches(pred: _Pred, target: _Target) -> bool:
    """Whether a prediction is compared with a ground-truth view: the same type class, or a moveTo
    against a drag (the drag's first half)."""
    same = _family(target.action.type) == _family(pred.type)
    return same or (pred.type == "moveto" and target.start is not None)


def _best_match(pred: _Pred, actions: tuple[GroundTruthAction, ...]) -> float | None:
    """Score against the view of `actions` the prediction matches (`_matches`); None if none does."""
    for target in _targets(actions):
        if _matches(pred, target):
            return _compare(pred, target)
    return None


def score(sample: AgentNetStep, prediction: Prediction) -> dict[str, Any]:
    """Score a prediction (its first action, after `fold_actions`) against the step's ground truth
    (and, if that gives 0, against each alternative, keeping the best). Returns JSON-ready fields that
    `summarize` aggregates:

    `score` (0-1, with the published partial credit), `hit` (full credit, the binary step success),
    `coordinate_step` (the ground truth is a click-like action, not a [moveTo, scroll] pair),
    `type_match`, `used_alternative`, `scroll_direction_correct` (None unless the ground truth scrolls
    in a known direction), plus the identifying `task_id`, `step_num`, `milestone`, `gt_type`,
    `pred_type` and `parsed`.
    """
    first = fold_actions(prediction)[0]
    pred = to_agentnet(first)
    main = None if pred is None else _best_match(pred, sample.ground_truth)
    value = main or 0.0
    used_alternative = False
    if pred is not None and value == 0.0:
        for option in sample.alternatives:
            alt = _best_match(pred, option)
            if alt is not None and alt > value:
                value, used_alternative = alt, True
    scroll_gt = next((t.action for t in _targets(sample.ground_truth) if t.action.type == "scroll"), None)
    direction_ok = None
    gt_sign = _scroll_sign(scroll_gt.amount, None) if scroll_gt else None
    if gt_sign is not None:
        direction_ok = pred is not None and pred.type == "scroll" and pred.sign == gt_sign
    return {
        "task_id": sample.task_id,
        "step_num": sample.step_num,
        "milestone": sample.milestone,
        "gt_type": sample.ground_truth[0].type,
        "coordinate_step": scroll_gt is None and sample.ground_truth[0].type in COORD_TYPES,
        "pred_type": pred.type if pred else None,
        "parsed": first.parsed,
        "type_match": main is not None,
        "score": value,
        "hit": value >= 1.0,
        "used_alternative": used_alternative,
        "scroll_direction_correct": direction_ok,
    }


def summarize(
    records: list[dict[str, Any]], skipped: Sequence[str] = (), failed: Sequence[str] = ()
) -> dict[str, Any]:
    """Aggregate per-step score fields: `overall_score` (mean step score, the benchmark's step accuracy),
    `average_trajectory_score`, `milestone_score`, per-GT-type means, alternative matches, and our
    added binary `hit_rate`, `coordinate_hit_rate` and `scroll_direction_accuracy`; each of those
    with its standard error (`benchmarks.stats`: over steps, and over trajectory means for the
    trajectory score). `skipped` (the ids of steps without a screenshot) and `failed` (of steps
    whose generation raised, which have no record here) do not enter the metrics: the runner
    reports those steps."""
    by_trajectory: dict[str, list[float]] = defaultdict(list)
    by_type: dict[str, list[float]] = defaultdict(list)
    for record in records:
        by_trajectory[record["task_id"]].append(record["score"])
        by_type[record["gt_type"]].append(record["score"])
    milestones = [r["score"] for r in records if r["milestone"]]
    coordinate = [float(r["hit"]) for r in records if r["coordinate_step"]]
    directions = [
        float(r["scroll_direction_correct"]) for r in records if r["scroll_direction_correct"] is not None
    ]
    alternatives = sum(1 for r in records if r["used_alternative"])
    return {
        **mean_and_stderr("overall_score", (r["score"] for r in records)),
        **mean_and_stderr("average_trajectory_score", (sum(v) / len(v) for v in by_trajectory.values())),
        **mean_and_stderr("milestone_score", milestones),
        **mean_and_stderr("hit_rate", (float(r["hit"]) for r in records)),
        **mean_and_stderr("coordinate_hit_rate", coordinate),
        **mean_and_stderr("scroll_direction_accuracy", directions),
        "total_steps": len(records),
        "total_trajectories": len(by_trajectory),
        "milestone_steps": len(milestones),
        "coordinate_steps": len(coordinate),
        "scroll_direction_steps": len(directions),
        "alternative_matches": alternatives,
        "alternative_match_percentage": 100 * alternatives / len(records) if records else None,
        "unparsed_steps": sum(1 for r in records if not r["parsed"]),
        "action_type_scores": {k: mean(v) for k, v in sorted(by_type.items())},
        "action_type_counts": dict(sorted(Counter(r["gt_type"] for r in records).items())),
    }


def ground_truth_action(sample: AgentNetStep) -> Action:
    """The step's ground truth as an `Action` (the oracle): the first action, with a following Enter
    folded into the typed text, a [moveTo, dragTo] pair given as one drag between the two points and
    a [moveTo, scroll] pair as a scroll at the moveTo point."""
    targets = _targets(sample.ground_truth)
    gt = targets[-1].action if targets[-1].action.type == "scroll" else targets[0].action
    anchor = targets[0].action.position
    if gt.type == "scroll":
        direction = None if not gt.amount else ("up" if gt.amount > 0 else "down")
        return Action(ActionType.SCROLL, point=anchor, direction=direction, amount=gt.amount)
    if gt.type == "dragto":
        start = targets[0].start
        return Action(ActionType.DRAG, point=start.position if start else None, end_point=gt.position)
    if gt.type in COORD_TYPES:
        kinds = {
            "click": ActionType.CLICK,
            "doubleclick": ActionType.DOUBLE_CLICK,
            "rightclick": ActionType.RIGHT_CLICK,
            "tripleclick": ActionType.TRIPLE_CLICK,
            "moveto": ActionType.MOVE_TO,
        }
        return Action(kinds[gt.type], point=gt.position)
    if gt.type == "write":
        text = gt.text or ""
        if targets[0].newline and not text.rstrip(" \t").endswith("\n"):
            text += "\n"
        return Action(ActionType.TYPE, text=text)
    if gt.type in KEY_TYPES:
        return Action(ActionType.PRESS if gt.type == "press" else ActionType.HOTKEY, keys=gt.keys)
    if gt.type == "terminate":
        return Action(ActionType.FINISHED, text=gt.status)
    return Action(ActionType.WAIT)


SPEC = BenchmarkSpec(
    name="agentnetbench",
    title="AgentNetBench",
    data_env="AGENTNETBENCH_DATA",
    images_env="AGENTNETBENCH_IMGS",
    splits=SPLITS,
    default_split="all",
    metric_columns=("overall_score", "average_trajectory_score", "milestone_score", "hit_rate"),
    max_new_tokens=1000,
    load=load,
    score=score,
    summarize=summarize,
    ground_truth_action=ground_truth_action,
)
