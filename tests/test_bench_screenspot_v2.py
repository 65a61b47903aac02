"""ScreenSpot-v2: loader on the shared records (v1 values in the v2 schema) with placeholder
screenshots, the inside-box rule, and the B12 fixes."""

from __future__ import annotations

import builtins
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import screenspot_v2 as ss
from benchmarks.common import DataError
from guikv.agents.action import Action, ActionType
from guikv.errors import UserInputError

SIZES = {"mobile": (1170, 2532), "pc": (1920, 1080), "web": (2880, 1800)}

MakePng = Callable[[Path, tuple[int, int]], Path]


@pytest.fixture
def data_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "screenspot_v2"


@pytest.fixture
def images_dir(data_dir: Path, tmp_path: Path, make_png: MakePng) -> Path:
    images = tmp_path / "images"
    for task in ss.TASKS:
        for record in json.loads((data_dir / ss.data_file(task)).read_text()):
            name = record["img_filename"]
            make_png(images / name, SIZES[name.split("_")[0]])
    return images


def test_load_all_in_original_order(data_dir: Path, images_dir: Path) -> None:
    result = ss.load(data_dir, images_dir)
    assert result.skipped == ()
    assert [s.sample_id for s in result.samples] == [
        "mobile/0",
        "mobile/1",
        "desktop/0",
        "desktop/1",
        "web/0",
        "web/1",
    ]
    first = result.samples[0]
    assert first.instruction == "open facetime app"
    assert first.bbox == (619, 809, 132, 160)
    assert first.image_size == (1170, 2532)
    assert first.data_type == "text" and first.data_source == "ios"
    assert first.normalized_box == pytest.approx((619 / 1170, 809 / 2532, 751 / 1170, 969 / 2532))


def test_split_and_limit(data_dir: Path, images_dir: Path) -> None:
    assert [s.task for s in ss.load(data_dir, images_dir, "web").samples] == ["web", "web"]
    assert len(ss.load(data_dir, images_dir, limit=1).samples) == 3


def test_missing_image_is_reported_not_waited_for_b12(
    data_dir: Path, images_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original called input() on a missing screenshot and blocked the run."""

    def no_input(*_: object) -> str:
        raise AssertionError("input() must never be called")

    monkeypatch.setattr(builtins, "input", no_input)
    (images_dir / "web_213f816e-8e80-4d13-970d-1347bbc7a2a8.png").unlink()
    result = ss.load(data_dir, images_dir)
    assert [s.sample_id for s in result.skipped] == ["web/0", "web/1"]
    assert result.skipped[0].missing == (images_dir / "web_213f816e-8e80-4d13-970d-1347bbc7a2a8.png",)
    assert len(result.samples) == 4


def test_oracle_scores_full_marks(data_dir: Path, images_dir: Path) -> None:
    samples = ss.load(data_dir, images_dir).samples
    summary = ss.summarize([ss.score(s, ss.ground_truth_action(s)) for s in samples])
    assert summary["overall_mean_of_means"] == 1.0
    assert summary["overall_micro"] == 1.0
    assert summary["total_samples"] == 6


def test_inside_box_rule(data_dir: Path, images_dir: Path) -> None:
    sample = ss.load(data_dir, images_dir, "mobile").samples[0]
    x1, y1, x2, y2 = sample.normalized_box
    assert ss.score(sample, Action(ActionType.CLICK, point=(x1, y1)))["correct"]
    assert ss.score(sample, Action(ActionType.CLICK, point=(x2, y2)))["correct"]
    assert not ss.score(sample, Action(ActionType.CLICK, point=(x2 + 0.001, y2)))["correct"]
    unparsed = ss.score(sample, Action.unparsed("no idea"))
    assert unparsed["wrong_format"] and not unparsed["correct"]


def test_mean_of_means_and_micro_are_both_reported_b12() -> None:
    def rec(task: str, kind: str, correct: bool) -> dict[str, object]:
        return {"task": task, "data_type": kind, "data_source": "", "correct": correct, "wrong_format": False}

    records = [rec("mobile", "text", True), rec("mobile", "icon", False)]
    records += [rec("web", "text", False)] * 3 + [rec("web", "icon", True)]
    summary = ss.summarize(records)
    assert summary["text_accuracy"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert summary["icon_accuracy"] == pytest.approx(0.5)  # (0 + 1) / 2
    assert summary["overall_mean_of_means"] == pytest.approx(0.5)
    assert summary["overall_micro"] == pytest.approx(2 / 6)
    assert summary["task_breakdown"]["web"]["action_accuracy"] == pytest.approx(0.25)
    assert list(summary["task_breakdown"]) == ["mobile", "web"]


def test_bad_input(data_dir: Path, images_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="SCREENSPOT_TEST"):
        ss.load(tmp_path / "nope", images_dir)
    with pytest.raises(UserInputError, match="--split: unknown value 'tablet'; expected one of: mobile"):
        ss.load(data_dir, images_dir, "tablet")
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(DataError, match=r"screenspot_mobile_v2\.json: expected an existing JSON file"):
        ss.load(data, images_dir, "mobile")
    shutil.copy(data_dir / ss.data_file("mobile"), data)
    records = json.loads((data / ss.data_file("mobile")).read_text())
    records[1]["bbox"] = [1, 2, 3]
    (data / ss.data_file("mobile")).write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"\(record 1\): field 'bbox': expected a list of 4 numbers"):
        ss.load(data, images_dir, "mobile")
    records[1]["bbox"] = [1, 2, 3, 4]
    records[1]["data_type"] = "widget"
    (data / ss.data_file("mobile")).write_text(json.dumps(records))
    with pytest.raises(DataError, match="field 'data_type': expected text or icon"):
        ss.load(data, images_dir, "mobile")
    del records[0]["instruction"]
    (data / ss.data_file("mobile")).write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"\(record 0\): field 'instruction'"):
        ss.load(data, images_dir, "mobile")
