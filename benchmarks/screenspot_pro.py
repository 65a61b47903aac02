"""ScreenSpot-Pro: grounding on high-resolution professional software, one annotation file per app.

A prediction is correct when its point lies in the target box [x1, y1, x2, y2] normalised by the
`img_size` the record states (edges included). Only positive, `instruction`-style, English queries
are run, as in GUI-KV; records that say otherwise are reported in `excluded`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchmarkSpec,
    Box,
    DataError,
    Fields,
    LoadResult,
    Prediction,
    SkippedSample,
    as_actions,
    breakdown,
    check_limit,
    check_split,
    image_size,
    json_list,
    point_in_xyxy,
    read_json,
    require_dir,
)
from benchmarks.stats import mean_and_stderr
from guikv.agents.action import Action, ActionType

UI_TYPES = ("text", "icon")
RUN_FILTER = {"gt_type": "positive", "instruction_style": "instruction", "language": "en"}
"""Record fields GUI-KV's run is restricted to, with the value a record lacking the field is given."""


@dataclass(frozen=True)
class ScreenSpotProSample:
    """One grounding query: screenshot, instruction, the target box [x1, y1, x2, y2] in pixels of an
    image of `image_size`, and the labels the breakdowns group by."""

    sample_id: str
    app_file: str
    image: Path
    image_size: tuple[int, int]
    instruction: str
    bbox: Box
    ui_type: str
    group: str
    application: str
    platform: str

    @property
    def normalized_box(self) -> Box:
        """The target as [x1, y1, x2, y2] normalised 0-1 by the stated image size."""
        x1, y1, x2, y2 = self.bbox
        width, height = self.image_size
        return (x1 / width, y1 / height, x2 / width, y2 / height)


def app_files(data_dir: Path) -> dict[str, Path]:
    """The annotation files of `data_dir` by stem (the split names), sorted by name."""
    require_dir(data_dir, "ScreenSpot-Pro annotation files <app>_<platform>.json", "SCREENSPOTPRO_TEST")
    files = {p.stem: p for p in sorted(data_dir.glob("*.json")) if p.is_file()}
    if not files:
        raise DataError(data_dir, "at least one annotation file '<app>_<platform>.json' (none found)")
    return files


def _stated_size(fields: Fields, image: Path) -> tuple[int, int]:
    """The record's `img_size` [w, h], or the image file's size when the record has none."""
    if not fields.has("img_size"):
        return image_size(image)
    size = fields.items("img_size")
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise fields.error("img_size", "[width, height] as two positive integers")
    return (size[0], size[1])


def load(
    data_dir: Path, images_dir: Path, split: str | None = None, *, limit: int | None = None
) -> LoadResult[ScreenSpotProSample]:
    """Load one app's annotation file (split = its stem) or every `*.json` in `data_dir` (`all`);
    `limit` keeps the first N records of each file."""
    files = app_files(data_dir)
    chosen = check_split(split, (*files, "all"), "all")
    limit = check_limit(limit)
    require_dir(images_dir, "ScreenSpot-Pro screenshots", "SCREENSPOTPRO_IMGS")
    samples: list[ScreenSpotProSample] = []
    skipped: list[SkippedSample] = []
    excluded: list[SkippedSample] = []
    for stem, path in files.items():
        if chosen not in ("all", stem):
            continue
        for index, record in enumerate(json_list(read_json(path), path)[:limit]):
            fields = Fields(record, path, f"record {index}")
            sample_id = str(fields.raw("id", f"{stem}_{index}"))
            off = [f"{k}={fields.raw(k)}" for k, v in RUN_FILTER.items() if fields.raw(k, v) != v]
            if off:
                excluded.append(SkippedSample(sample_id, "not evaluated: " + ", ".join(off)))
                continue
            image = images_dir / fields.text("img_filename")
            bbox = fields.box("bbox")
            if bbox[2] < bbox[0] or bbox[3] < bbox[1]:
                raise fields.error("bbox", "[x1, y1, x2, y2] with x2 >= x1 and y2 >= y1")
            ui_type = fields.text("ui_type")
            if ui_type not in UI_TYPES:
                raise fields.error("ui_type", f"text or icon, got '{ui_type}'")
            instruction = fields.text("instruction")
            labels = (fields.text("group"), fields.text("application"), fields.text("platform"))
            if not image.is_file():
                skipped.append(SkippedSample(sample_id, "missing screenshot", (image,)))
                continue
            samples.append(
                ScreenSpotProSample(
                    sample_id, stem, image, _stated_size(fields, image), instruction, bbox, ui_type, *labels
                )
            )
    return LoadResult(tuple(samples), tuple(skipped), tuple(excluded))


def score(sample: ScreenSpotProSample, prediction: Prediction) -> dict[str, Any]:
    """Score a prediction by its first action's point: `correctness` is `correct`, `wrong` or
    `wrong_format` (no point: an unparsed or pointless output), with the labels the summary breaks
    down by."""
    action = as_actions(prediction)[0]
    if action.point is None:
        correctness = "wrong_format"
    else:
        correctness = "correct" if point_in_xyxy(action.point, sample.normalized_box) else "wrong"
    return {
        "app_file": sample.app_file,
        "ui_type": sample.ui_type,
        "group": sample.group,
        "application": sample.application,
        "platform": sample.platform,
        "correctness": correctness,
        "correct": correctness == "correct",
    }


def summarize(
    records: list[dict[str, Any]], skipped: Sequence[str] = (), failed: Sequence[str] = ()
) -> dict[str, Any]:
    """Sample-weighted `action_acc`, `text_acc`, `icon_acc`, the wrong-format count, and accuracy by
    group (leaderboard simple), application (leaderboard detailed), platform and UI type; the three
    accuracies with their standard errors (`benchmarks.stats`). `skipped` (ids of samples without a
    screenshot) and `failed` (of samples whose generation raised, which have no record here) do not
    enter the metrics: the runner reports them."""
    text = [r for r in records if r["ui_type"] == "text"]
    icon = [r for r in records if r["ui_type"] == "icon"]
    return {
        **mean_and_stderr("action_acc", (float(r["correct"]) for r in records)),
        **mean_and_stderr("text_acc", (float(r["correct"]) for r in text)),
        **mean_and_stderr("icon_acc", (float(r["correct"]) for r in icon)),
        "num_total": len(records),
        "wrong_format_num": sum(1 for r in records if r["correctness"] == "wrong_format"),
        "by_group": breakdown(records, "group", "correct"),
        "by_application": breakdown(records, "application", "correct"),
        "by_platform": breakdown(records, "platform", "correct"),
        "by_ui_type": breakdown(records, "ui_type", "correct"),
    }


def ground_truth_action(sample: ScreenSpotProSample) -> Action:
    """A click at the centre of the target box (the oracle)."""
    x1, y1, x2, y2 = sample.normalized_box
    return Action(ActionType.CLICK, point=((x1 + x2) / 2, (y1 + y2) / 2))


SPEC = BenchmarkSpec(
    name="screenspot-pro",
    title="ScreenSpot-Pro",
    data_env="SCREENSPOTPRO_TEST",
    images_env="SCREENSPOTPRO_IMGS",
    splits=("all",),
    default_split="all",
    metric_columns=("action_acc", "text_acc", "icon_acc"),
    max_new_tokens=400,
    load=load,
    score=score,
    summarize=summarize,
    ground_truth_action=ground_truth_action,
)
