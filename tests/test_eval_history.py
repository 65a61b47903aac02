"""AgentNetBench history screenshots: when an earlier step's screenshot is missing on disk, the
prompt shows the next older one that exists instead of fewer images, and each record says which
earlier steps' screenshots its prompt showed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import Scripted, image_count, image_paths, play_agentnet, records, write_png

from benchmarks import get_benchmark
from benchmarks.prompts import history_screenshots, sample_prompt
from guikv.agents import get_family

MISSING_STEP = 6
"""The step (file numbering) whose screenshot is deleted: the fourth of the trajectory's seven
steps, numbered 2, 3, 4, 6, 7, 9, 10."""


@pytest.fixture
def gappy(fixtures_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The shipped trajectory with small placeholder screenshots, step 6's missing."""
    source = fixtures_dir / "agentnetbench" / "test_data"
    data, images = tmp_path / "data", tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for path in source.glob("*.json"):
        trajectory = json.loads(path.read_text())
        (data / path.name).write_text(json.dumps(trajectory))
        for step in trajectory["steps"]:
            if step["step_num"] != MISSING_STEP:
                write_png(images / step["image"], (64, 36))
    return data, images


def test_a_missing_history_screenshot_is_replaced_by_the_next_older_one(gappy: tuple[Path, Path]) -> None:
    loaded = get_benchmark("agentnetbench").load(*gappy)
    step7 = next(sample for sample in loaded.samples if sample.step_num == 7)
    shown = history_screenshots(step7, screenshots=3)
    assert [past.step_num for past in shown] == [3, 4]  # 6 is missing: 4 and the older 3
    messages, image = sample_prompt(get_family("ui-tars"), step7, screenshots=3)
    assert image_count(messages) == 3
    assert image_paths(messages) == [str(past.image) for past in shown] + [str(image)]
    assert [past.step_num for past in history_screenshots(step7, screenshots=1)] == []
    assert [past.step_num for past in history_screenshots(step7, screenshots=9)] == [2, 3, 4]


def test_every_record_says_which_history_screenshots_its_prompt_showed(
    gappy: tuple[Path, Path], tmp_path: Path
) -> None:
    responder = Scripted("x")
    play_agentnet(gappy, tmp_path / "run", responder, screenshots=3)
    rows = records(tmp_path / "run")
    assert [row["sample_id"].split("/")[1] for row in rows] == ["2", "3", "4", "7", "9", "10"]
    assert [row["history_screenshots"] for row in rows] == [[], [2], [2, 3], [3, 4], [4, 7], [7, 9]]
    assert [image_count(prompt) for prompt in responder.prompts] == [1, 2, 3, 3, 3, 3]
