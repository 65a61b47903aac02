"""ScreenSpot-v2 (OS-Atlas): single-screenshot GUI grounding on mobile, desktop and web.

A prediction is correct when its point lies in the target box (edges included), the box being
normalised by the size read from the screenshot itself. Missing screenshots are reported and skipped
(the original blocked on `input()`, B12), and the summary gives both the published mean-of-means
overall number and the sample-weighted micro accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchmarkSpec,
    Box,
    Fields,
    LoadResult,
    Prediction,
    SkippedSample,
    as_actions,
    check_limit,
    check_split,
    image_size,
    json_list,
    mean,
    point_in_xyxy,
    read_json,
    require_dir,
)
from benchmarks.stats import mean_and_stderr, stderr_key, stratified_stderr
from guikv.agents.action import Action, ActionType

TASKS = ("mobile", "desktop", "web")
"""The three files, in the order the original reads them."""

SPLITS = (*TASKS, "all")
DATA_TYPES = ("text", "icon")


def data_file(task: str) -> str:
    """The annotation file name of one task."""
    return f"screenspot_{task}_v2.json"


@dataclass(frozen=True)
class ScreenSpotSample:
    """One grounding query: screenshot, instruction and the target box [x, y, w, h] in pixels."""

    task: str
    index: int
    image: Path
    image_size: tuple[int, int]
    instruction: str
    bbox: Box
    data_type: str
    data_source: str

    @property
    def sample_id(self) -> str:
        """A stable id for traces and resume: `<task>/<index in the file>`."""
        return f"{self.task}/{self.index}"

    @property
    def normalized_box(self) -> Box:
        """The target as [x1, y1, x2, y2] normalised 0-1 by the screenshot's size."""
        x, y, w, h = self.bbox
        width, height = self.image_size
        return (x / width, y / height, (x + w) / width, (y + h) / height)


def load(
    data_dir: Path, images_dir: Path, split: str | None = None, *, limit: int | None = None
) -> LoadResult[ScreenSpotSample]:
    """Load `screenspot_<task>_v2.json` for the chosen task (or all three, in order mobile, desktop,
    web); `limit` keeps the first N records of each file."""
    chosen = check_split(split, SPLITS, "all")
    limit = check_limit(limit)
    require_dir(data_dir, "screenspot_{mobile,desktop,web}_v2.json", "SCREENSPOT_TEST")
    require_dir(images_dir, "ScreenSpot-v2 screenshots", "SCREENSPOT_IMGS")
    samples: list[ScreenSpotSample] = []
    skipped: list[SkippedSample] = []
    for task in TASKS if chosen == "all" else (chosen,):
        path = data_dir / data_file(task)
        for index, record in enumerate(json_list(read_json(path), path)[:limit]):
            fields = Fields(record, path, f"record {index}")
            image = images_dir / fields.text("img_filename")
            bbox = fields.box("bbox")
            if bbox[2] < 0 or bbox[3] < 0:
                raise fields.error("bbox", "[x, y, w, h] with non-negative width and height")
            data_type = fields.text("data_type")
            if data_type not in DATA_TYPES:
                raise fields.error("data_type", f"text or icon, got '{data_type}'")
            instruction = fields.text("instruction")
            source = fields.text("data_source", "")
            if not image.is_file():
                skipped.append(SkippedSample(f"{task}/{index}", "missing screenshot", (image,)))
                continue
            samples.append(
                ScreenSpotSample(task, index, image, image_size(image), instruction, bbox, data_type, source)
            )
    return LoadResult(tuple(samples), tuple(skipped))


def score(sample: ScreenSpotSample, prediction: Prediction) -> dict[str, Any]:
    """Score a prediction by its first action's point: `correct` when the point is in the box,
    `wrong_format` when the output had no point at all (unparsed or pointless, counted wrong as in
    the original)."""
    action = as_actions(prediction)[0]
    wrong_format = action.point is None
    return {
        "task": sample.task,
        "data_type": sample.data_type,
        "data_source": sample.data_source,
        "correct": not wrong_format and point_in_xyxy(action.point, sample.normalized_box),
        "wrong_format": wrong_format,
    }


def _mean_over_tasks(breakdown: dict[str, dict[str, Any]], metric: str) -> tuple[float | None, float | None]:
    """The mean over tasks of a per-task accuracy (tasks without such samples left out) and its
    standard error, the tasks taken as independent strata."""
    present = [values for values in breakdown.values() if values[metric] is not None]
    return (
        mean(values[metric] for values in present),
        stratified_stderr(values[stderr_key(metric)] for values in present),
    )


def summarize(
    records: list[dict[str, Any]], skipped: Sequence[str] = (), failed: Sequence[str] = ()
) -> dict[str, Any]:
    """Per task text/icon/action accuracy; `overall_mean_of_means` = (mean over tasks of text accuracy
    + mean over tasks of icon accuracy) / 2, the number the original reports as overall accuracy;
    `overall_micro` = correct / total over every sample. Each accuracy comes with its standard
    error (`benchmarks.stats`): over samples within a task, and combined over the tasks and the
    text/icon halves as independent strata for the means of means. `skipped` (ids of samples
    without a screenshot) and `failed` (of samples whose generation raised, which have no record
    here) do not enter the metrics: the runner reports them."""
    breakdown: dict[str, dict[str, Any]] = {}
    for task in [t for t in TASKS if any(r["task"] == t for r in records)]:
        rows = [r for r in records if r["task"] == task]
        by_type = {kind: [float(r["correct"]) for r in rows if r["data_type"] == kind] for kind in DATA_TYPES}
        breakdown[task] = {
            **mean_and_stderr("text_accuracy", by_type["text"]),
            **mean_and_stderr("icon_accuracy", by_type["icon"]),
            **mean_and_stderr("action_accuracy", (float(r["correct"]) for r in rows)),
            "num_samples": len(rows),
        }
    halves = {kind: _mean_over_tasks(breakdown, f"{kind}_accuracy") for kind in DATA_TYPES}
    present = [half for half in halves.values() if half[0] is not None]
    return {
        "overall_mean_of_means": mean(value for value, _ in present),
        stderr_key("overall_mean_of_means"): stratified_stderr(error for _, error in present),
        **mean_and_stderr("overall_micro", (float(r["correct"]) for r in records)),
        "text_accuracy": halves["text"][0],
        stderr_key("text_accuracy"): halves["text"][1],
        "icon_accuracy": halves["icon"][0],
        stderr_key("icon_accuracy"): halves["icon"][1],
        "total_samples": len(records),
        "wrong_format_samples": sum(1 for r in records if r["wrong_format"]),
        "task_breakdown": breakdown,
    }


def ground_truth_action(sample: ScreenSpotSample) -> Action:
    """A click at the centre of the target box (the oracle)."""
    x1, y1, x2, y2 = sample.normalized_box
    return Action(ActionType.CLICK, point=((x1 + x2) / 2, (y1 + y2) / 2))


SPEC = BenchmarkSpec(
    name="screenspot-v2",
    title="ScreenSpot-v2",
    data_env="SCREENSPOT_TEST",
    images_env="SCREENSPOT_IMGS",
    splits=SPLITS,
    default_split="all",
    metric_columns=("overall_mean_of_means", "overall_micro", "text_accuracy", "icon_accuracy"),
    max_new_tokens=200,
    load=load,
    score=score,
    summarize=summarize,
    ground_truth_action=ground_truth_action,
)
