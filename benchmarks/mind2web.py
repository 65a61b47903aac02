"""Multimodal-Mind2Web (UGround block samples): web steps shown as 1280x1000 crops of the full page.

The model starts on block 0 and may scroll between blocks (up to 5 model calls per sample, driven by
the runner with `scroll_step`); its last action is scored on the block it was looking at. Element
accuracy, operation F1 and step accuracy are macro-averaged over tasks per split, and the overall
number is the mean of the three splits. Fixes B7-B9 are described in docs/metrics.md.
"""

from __future__ import annotations

import dataclasses
import string
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchmarkSpec,
    Box,
    Fields,
    LoadResult,
    Prediction,
    SkippedSample,
    as_box,
    check_limit,
    check_split,
    fold_actions,
    image_size,
    macro_mean,
    mean,
    point_in_xywh,
    read_jsonl,
    require_dir,
)
from benchmarks.stats import mean_and_stderr, stderr_key, stratified_stderr
from guikv.agents.action import Action, ActionType

SPLITS = ("cross_domain", "cross_task", "cross_website")
"""The three test splits, in the order the original reads them."""

OPERATIONS = ("CLICK", "TYPE", "SELECT")
BLOCK_HEIGHT = 1000
BLOCK_PADDING = 200
BLOCK_STRIDE = BLOCK_HEIGHT - BLOCK_PADDING
"""UGround's make_blocks cuts block k from page row k * (1000 - 200): consecutive blocks overlap by 200 px."""

METRICS = ("element_accuracy", "operation_f1", "step_accuracy")
"""The three macro numbers reported per split and overall."""


MAX_MODEL_CALLS = 5
"""Model calls per sample, scrolls included (the original's max_steps)."""

ELEMENT_ACTIONS = frozenset(
    {
        ActionType.CLICK,
        ActionType.DOUBLE_CLICK,
        ActionType.TRIPLE_CLICK,
        ActionType.RIGHT_CLICK,
        ActionType.LONG_PRESS,
        ActionType.TYPE,
        ActionType.SELECT,
    }
)
"""Actions that pick an element with their point, and so can earn element accuracy (B9: TYPE and
SELECT included)."""

CLICKS = frozenset({ActionType.CLICK, ActionType.DOUBLE_CLICK, ActionType.TRIPLE_CLICK})
"""Clicks that put the cursor in a text box, so a `type` after them types into the clicked element."""

KEYS = frozenset({ActionType.PRESS, ActionType.HOTKEY})
"""Key actions that may sit between the click and the typing (select-all, delete) without changing
which element receives the text."""


def data_file(split: str) -> str:
    """The sample file of one split."""
    return f"{split}_blocks.jsonl"


@dataclass(frozen=True)
class Mind2WebSample:
    """One web step: task, operation and value, the target boxes [x, y, w, h] in full-page pixels, the
    block screenshots that exist (0.png, 1.png, ... contiguous) with their sizes, and UGround's
    `target_blocks` (target boxes per block index, in that block's pixels) when the file has them.

    `previous_actions` is always a tuple (empty on a task's first step: B7).
    """

    split: str
    annotation_id: str
    action_uid: str
    task: str
    website: str
    domain: str
    subdomain: str
    operation: str
    value: str
    bboxes: tuple[Box, ...]
    previous_actions: tuple[str, ...]
    step: int
    total_steps: int
    blocks: tuple[Path, ...]
    block_sizes: tuple[tuple[int, int], ...]
    target_blocks: dict[int, tuple[Box, ...]] | None = field(default=None, hash=False)

    @property
    def sample_id(self) -> str:
        """A stable id for traces and resume: `<split>/<annotation_id>/<action_uid>`."""
        return f"{self.split}/{self.annotation_id}/{self.action_uid}"

    def boxes_in_block(self, block: int) -> tuple[Box, ...]:
        """The target boxes [x, y, w, h] in pixels of block `block`, for targets wholly inside it.

        From `target_blocks` when present (authoritative: UGround may have inserted an extra block);
        otherwise the full-page boxes shifted up by `block * 800` and kept when they fit in the block,
        the same rule make_blocks used to write `target_blocks`.
        """
        if self.target_blocks is not None:
            return self.target_blocks.get(block, ())
        width, height = self.block_sizes[block]
        shifted = [(x, y - block * BLOCK_STRIDE, w, h) for x, y, w, h in self.bboxes]
        return tuple(b for b in shifted if _fits(b, width, height))


def _fits(box: Box, width: int, height: int) -> bool:
    """Whether a box [x, y, w, h] lies wholly inside a width x height block (make_blocks' test)."""
    x, y, w, h = box
    return x >= 0 and y >= 0 and x + w <= width and y + h <= height


def _target_blocks(fields: Fields) -> dict[int, tuple[Box, ...]] | None:
    """Read `target_blocks` ({"<block>": [[x, y, w, h], ...]}) when the record has it."""
    if not fields.has("target_blocks"):
        return None
    raw = fields.raw("target_blocks")
    if not isinstance(raw, dict):
        raise fields.error("target_blocks", 'an object {"<block index>": [[x, y, w, h], ...]}')
    blocks: dict[int, tuple[Box, ...]] = {}
    for key, boxes in raw.items():
        name = f"target_blocks.{key}"
        if not str(key).isdigit() or not isinstance(boxes, list):
            raise fields.error(name, "a block index key mapping to a list of [x, y, w, h] boxes")
        boxes_error = partial(fields.error, name, "a list of [x, y, w, h] boxes")
        blocks[int(key)] = tuple(as_box(b, boxes_error) for b in boxes)
    return blocks


def _block_images(folder: Path) -> tuple[Path, ...]:
    """The contiguous block screenshots 0.png, 1.png, ... that exist in `folder`."""
    blocks: list[Path] = []
    while (folder / f"{len(blocks)}.png").is_file():
        blocks.append(folder / f"{len(blocks)}.png")
    return tuple(blocks)


def _parse(fields: Fields, split: str, images_dir: Path) -> tuple[dict[str, Any], Path]:
    """Read one line's fields into sample arguments (without block images) and its block folder."""
    operation = fields.text("operation")
    if operation not in OPERATIONS:
        raise fields.error("operation", f"one of {', '.join(OPERATIONS)}, got '{operation}'")
    bboxes = tuple(
        as_box(b, lambda: fields.error("bbox", "a list of [x, y, w, h] boxes")) for b in fields.items("bbox")
    )
    total_steps = fields.integer("total_steps")
    if total_steps < 1:
        raise fields.error("total_steps", "a positive integer")
    annotation_id = fields.text("annotation_id")
    action_uid = fields.text("action_uid")
    blocks_path = fields.text("blocks_path", f"{annotation_id}_{action_uid}")
    values = {
        "split": split,
        "annotation_id": annotation_id,
        "action_uid": action_uid,
        "task": fields.text("task"),
        "website": fields.text("website", ""),
        "domain": fields.text("domain", ""),
        "subdomain": fields.text("subdomain", ""),
        "operation": operation,
        "value": fields.text("value", ""),
        "bboxes": bboxes,
        "previous_actions": fields.texts("previous_actions", ()),
        "step": fields.integer("step"),
        "total_steps": total_steps,
        "target_blocks": _target_blocks(fields),
    }
    return values, images_dir / split / blocks_path


def load(
    data_dir: Path, images_dir: Path, split: str | None = None, *, limit: int | None = None
) -> LoadResult[Mind2WebSample]:
    """Load `cross_<split>_blocks.jsonl` for one split or all three (domain, task, website); blocks are
    `images_dir/cross_<split>/<blocks_path>/<k>.png`. A sample whose 0.png is missing is skipped and
    reported. `limit` keeps the first N lines of each file."""
    chosen = check_split(split, (*SPLITS, "all"), "all")
    limit = check_limit(limit)
    require_dir(data_dir, "cross_{domain,task,website}_blocks.jsonl", "MM_MIND2WEB_TEST")
    require_dir(images_dir, "Mind2Web block screenshots cross_<split>/<id>/<k>.png", "MM_MIND2WEB_IMGS")
    samples: list[Mind2WebSample] = []
    skipped: list[SkippedSample] = []
    for name in SPLITS if chosen == "all" else (chosen,):
        path = data_dir / data_file(name)
        for line, record in read_jsonl(path)[:limit]:
            values, folder = _parse(Fields(record, path, f"line {line}"), name, images_dir)
            blocks = _block_images(folder)
            if not blocks:
                sample_id = f"{name}/{values['annotation_id']}/{values['action_uid']}"
                skipped.append(SkippedSample(sample_id, "missing block screenshot", (folder / "0.png",)))
                continue
            sizes = tuple(image_size(block) for block in blocks)
            samples.append(Mind2WebSample(**values, blocks=blocks, block_sizes=sizes))
    return LoadResult(tuple(samples), tuple(skipped))


# --- scroll loop ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScrollMove:
    """What the runner does after one model call: show `block` next (None: stop and score the action
    on the current block) after appending `note` (e.g. "Scroll down.") to the previous actions."""

    block: int | None
    note: str | None = None


def scroll_direction(action: Action) -> str | None:
    """The direction of a scroll: its `direction`, else the sign of its amount (negative = down)."""
    if action.direction:
        return action.direction.lower()
    if action.amount:
        return "down" if action.amount < 0 else "up"
    return None


def scroll_step(sample: Mind2WebSample, block: int, action: Action, calls: int) -> ScrollMove:
    """The scroll-loop bookkeeping, as a pure function: after the `calls`-th model call on block
    `block` returned `action`, either stop (any non-scroll action, or the call budget is spent) or
    move one block down/up when that block exists (staying put otherwise) and note the scroll."""
    if action.type is not ActionType.SCROLL or calls >= MAX_MODEL_CALLS:
        return ScrollMove(None)
    direction = scroll_direction(action)
    if direction == "down" and block + 1 < len(sample.blocks):
        block += 1
    elif direction == "up" and block > 0:
        block -= 1
    return ScrollMove(block, f"Scroll {direction}." if direction else "Scroll.")


# --- metric -------------------------------------------------------------------------------------


def token_f1(pred: str, label: str) -> float:
    """Token-set F1 between two strings: lower-cased, whitespace split, punctuation-only tokens dropped;
    both empty gives 1, one empty gives 0 (UGround's calculate_f1)."""
    pred_tokens = {t for t in pred.lower().split() if t not in string.punctuation}
    label_tokens = {t for t in label.lower().split() if t not in string.punctuation}
    if not pred_tokens and not label_tokens:
        return 1.0
    common = len(pred_tokens & label_tokens)
    if not common:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(label_tokens)
    return 2 * precision * recall / (precision + recall)


def web_action(prediction: Prediction) -> Action:
    """The one operation a prediction performs on the page, as a single action.

    After `fold_actions` (a `type` + Enter is one submitted `type`): an output that clicks an element
    and then types (`pyautogui.click(x, y)` + `pyautogui.write(t)`, or UI-TARS `click(point)` +
    `type(content)`), with only other clicks or key presses such as select-all between them, is a
    TYPE of that text at the last clicked point (a `type` with its own point keeps it). Any other
    output is its first action.
    """
    actions = fold_actions(prediction)
    first = actions[0]
    if first.type not in CLICKS or first.point is None:
        return first
    point = first.point
    for action in actions[1:]:
        if action.type is ActionType.TYPE:
            return dataclasses.replace(action, point=action.point or point)
        if action.type in CLICKS and action.point is not None:
            point = action.point
        elif action.type not in KEYS:
            break
    return first


def operation_text(action: Action) -> str:
    """The prediction as "<op> <content>" for the F1: click, type <text>, select <option>; other
    actions give their type name (which never matches), an unparsed output gives ""."""
    if not action.parsed:
        return ""
    if action.type in (ActionType.TYPE, ActionType.SELECT):
        return f"{action.type.value} {action.text or ''}".strip()
    if action.type in ELEMENT_ACTIONS:
        return "click"
    return action.type.value


def score(sample: Mind2WebSample, prediction: Prediction, block: int = 0) -> dict[str, Any]:
    """Score the final output of a sample, taken on block `block`, as the operation it performs
    (`web_action`): `element_correct` when its point (normalised to that block) is inside a target
    box expressed in that block (B9), `operation_f1`, and `step_correct` (F1 == 1 and element
    correct), with the fields the macro average groups by."""
    action = web_action(prediction)
    if not 0 <= block < len(sample.blocks):
        raise ValueError(f"{sample.sample_id}: no block {block} (the sample has {len(sample.blocks)} blocks)")
    width, height = sample.block_sizes[block]
    boxes = [(x / width, y / height, w / width, h / height) for x, y, w, h in sample.boxes_in_block(block)]
    element = (
        action.type in ELEMENT_ACTIONS
        and action.point is not None
        and any(point_in_xywh(action.point, box) for box in boxes)
    )
    f1 = token_f1(operation_text(action), f"{sample.operation} {sample.value}")
    return {
        "split": sample.split,
        "annotation_id": sample.annotation_id,
        "action_uid": sample.action_uid,
        "total_steps": sample.total_steps,
        "block": block,
        "parsed": action.parsed,
        "element_correct": element,
        "operation_f1": f1,
        "step_correct": element and f1 == 1.0,
    }


def steps_per_task(sample_ids: Sequence[str]) -> dict[str, Counter[str]]:
    """Per split, how many of the given steps each task has, from sample ids
    (`<split>/<annotation_id>/<action_uid>`, as `Mind2WebSample.sample_id` writes them)."""
    tasks: dict[str, Counter[str]] = defaultdict(Counter)
    for sample_id in sample_ids:
        split, rest = sample_id.split("/", 1)
        tasks[split][rest.rsplit("/", 1)[0]] += 1
    return tasks


def _task_means(series: dict[str, list[float]]) -> list[float]:
    """Each task's mean score: the scores the macro averages (and their standard errors) are over."""
    return [sum(values) / len(values) for values in series.values() if values]


def _split_summary(
    records: list[dict[str, Any]], skipped: Counter[str], failed: Counter[str]
) -> dict[str, Any]:
    """Macro (per task, then over tasks) and micro averages of one split, with each task padded with
    zeros up to its `total_steps` (steps skipped for missing screenshots count as wrong). A task none
    of whose steps was scored (every one skipped, `skipped` gives how many) counts too, all its steps
    wrong; it is also reported on its own, with the macro averages over the other tasks beside.
    Steps whose generation failed (`failed` gives how many per task) are not scored, so they are
    neither counted nor padded: a task's total is its `total_steps` less its failed steps. The
    macro averages come with their standard errors over the task means (`benchmarks.stats`)."""
    element: dict[str, list[float]] = defaultdict(list)
    f1: dict[str, list[float]] = defaultdict(list)
    step: dict[str, list[float]] = defaultdict(list)
    totals: dict[str, int] = {}
    for record in records:
        task = record["annotation_id"]
        element[task].append(float(record["element_correct"]))
        f1[task].append(float(record["operation_f1"]))
        step[task].append(float(record["step_correct"]))
        totals[task] = max(totals.get(task, 0), record["total_steps"])
    scored = set(step)
    absent = {task: count for task, count in skipped.items() if task not in totals}
    totals.update(absent)
    padded = 0
    for task, total in totals.items():
        missing = max(0, total - len(step[task]) - failed[task])
        padded += missing
        for series in (element, f1, step):
            series[task].extend([0.0] * missing)
    errors: dict[str, int] = defaultdict(int)
    for values in step.values():
        wrong = sum(1 for v in values if v == 0.0)
        errors[str(wrong) if wrong <= 3 else ">3"] += 1
    return {
        **mean_and_stderr("element_accuracy", _task_means(element)),
        **mean_and_stderr("operation_f1", _task_means(f1)),
        **mean_and_stderr("step_accuracy", _task_means(step)),
        "micro_element_accuracy": mean(v for vs in element.values() for v in vs),
        "micro_operation_f1": mean(v for vs in f1.values() for v in vs),
        "micro_step_accuracy": mean(v for vs in step.values() for v in vs),
        "total_tasks": len(totals),
        "wholly_skipped_tasks": len(absent),
        "without_wholly_skipped_tasks": {
            name: macro_mean({task: series[task] for task in scored})
            for name, series in zip(METRICS, (element, f1, step), strict=True)
        },
        "scored_steps": len(records),
        "padded_steps": padded,
        "failed_steps": sum(failed.values()),
        "error_ratio": {k: errors[k] / len(totals) for k in ("0", "1", "2", "3", ">3") if k in errors},
    }


def summarize(
    records: list[dict[str, Any]], skipped: Sequence[str] = (), failed: Sequence[str] = ()
) -> dict[str, Any]:
    """Per split macro element accuracy, operation F1 and step accuracy (each split on its own, B8),
    and the overall numbers as the unweighted mean over the splits present, each with its standard
    error (the splits combined as independent strata, `benchmarks.stats`). `skipped` holds the ids
    of samples skipped for a missing `0.png`: a task with every step skipped counts as all wrong,
    like a task with some steps skipped, and `wholly_skipped_tasks` / `without_wholly_skipped_tasks`
    say how many there were and what the averages are without them. `failed` holds the ids of
    samples whose generation raised: they are not scored, so their tasks are not padded for them
    (the runner's `metrics_failures_as_wrong` passes them as unparsed records instead)."""
    absent, unscored = steps_per_task(skipped), steps_per_task(failed)
    splits = {
        name: _split_summary(
            [r for r in records if r["split"] == name],
            absent.get(name, Counter()),
            unscored.get(name, Counter()),
        )
        for name in SPLITS
        if any(r["split"] == name for r in records) or absent.get(name)
    }
    overall: dict[str, float | None] = {}
    for key in METRICS:
        present = [s for s in splits.values() if s[key] is not None]
        overall[key] = mean(s[key] for s in present)
        overall[stderr_key(key)] = stratified_stderr(s[stderr_key(key)] for s in present)
    without = {
        key: mean(
            s["without_wholly_skipped_tasks"][key]
            for s in splits.values()
            if s["without_wholly_skipped_tasks"][key] is not None
        )
        for key in METRICS
    }
    return {
        **overall,
        "total_tasks": sum(s["total_tasks"] for s in splits.values()),
        "wholly_skipped_tasks": sum(s["wholly_skipped_tasks"] for s in splits.values()),
        "without_wholly_skipped_tasks": without,
        "splits": splits,
    }


def ground_truth_action(sample: Mind2WebSample, block: int = 0) -> Action:
    """The oracle on block `block`: the operation at the centre of a target box visible there, else a
    scroll toward the nearest block that shows the target (else a click at the first box's page
    position, which the metric cannot credit: the target is on no available block)."""
    boxes = sample.boxes_in_block(block)
    if boxes:
        x, y, w, h = boxes[0]
        width, height = sample.block_sizes[block]
        point = ((x + w / 2) / width, (y + h / 2) / height)
        kind = {"CLICK": ActionType.CLICK, "TYPE": ActionType.TYPE, "SELECT": ActionType.SELECT}
        text = sample.value if sample.operation != "CLICK" else None
        return Action(kind[sample.operation], point=point, text=text)
    showing = [k for k in range(len(sample.blocks)) if sample.boxes_in_block(k)]
    if showing:
        target = min(showing, key=lambda k: abs(k - block))
        return Action(ActionType.SCROLL, point=(0.5, 0.5), direction="down" if target > block else "up")
    x, y, w, h = sample.bboxes[0] if sample.bboxes else (0.0, 0.0, 0.0, 0.0)
    width, height = sample.block_sizes[0]
    return Action(ActionType.CLICK, point=((x + w / 2) / width, (y + h / 2) / height))


SPEC = BenchmarkSpec(
    name="mind2web",
    title="Multimodal-Mind2Web",
    data_env="MM_MIND2WEB_TEST",
    images_env="MM_MIND2WEB_IMGS",
    splits=(*SPLITS, "all"),
    default_split="all",
    metric_columns=("step_accuracy", "element_accuracy", "operation_f1"),
    max_new_tokens=500,
    load=load,
    score=score,
    summarize=summarize,
    ground_truth_action=ground_truth_action,
)
