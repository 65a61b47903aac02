"""ScreenSpot-Pro: loader on the one shared record plus synthesised ones, the run filter, the
inside-box rule and the breakdowns."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks import screenspot_pro as sp
from benchmarks.common import DataError
from guikv.agents.action import Action, ActionType
from guikv.errors import UserInputError

REAL_IMAGE = "android_studio_mac/screenshot_2024-11-28_15-16-55.png"

MakePng = Callable[[Path, tuple[int, int]], Path]


@pytest.fixture
def data_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "screenspot_pro" / "annotations"


@pytest.fixture
def images_dir(tmp_path: Path, make_png: MakePng) -> Path:
    images = tmp_path / "images"
    make_png(images / REAL_IMAGE, (3840, 2160))
    make_png(images / "photoshop_win/shot.png", (2560, 1440))
    return images


def synthetic(index: int, **extra: Any) -> dict[str, Any]:
    return {
        "img_filename": "photoshop_win/shot.png",
        "bbox": [100, 100, 300, 200],
        "instruction": f"query {index}",
        "instruction_cn": "查询",
        "id": f"photoshop_windows_{index}",
        "application": "photoshop",
        "platform": "windows",
        "img_size": [2560, 1440],
        "ui_type": "text",
        "group": "Creative",
        **extra,
    }


@pytest.fixture
def mixed_dir(data_dir: Path, tmp_path: Path) -> Path:
    data = tmp_path / "annotations"
    data.mkdir()
    shutil.copy(data_dir / "android_studio_macos.json", data)
    rows = [
        synthetic(0),
        synthetic(1, ui_type="icon", img_size=None),
        synthetic(2, language="cn"),
        synthetic(3, gt_type="negative"),
        synthetic(4, instruction_style="action"),
    ]
    (data / "photoshop_windows.json").write_text(json.dumps(rows))
    return data


def test_load_real_record(data_dir: Path, images_dir: Path) -> None:
    result = sp.load(data_dir, images_dir)
    assert result.skipped == () and result.excluded == ()
    (sample,) = result.samples
    assert sample.sample_id == "android_studio_macos_0"
    assert sample.app_file == "android_studio_macos"
    assert sample.image == images_dir / REAL_IMAGE
    assert sample.bbox == (1774, 1586, 2113, 1618)
    assert sample.image_size == (3840, 2160)
    assert (sample.ui_type, sample.group, sample.application, sample.platform) == (
        "icon",
        "Dev",
        "android_studio",
        "macos",
    )
    assert sample.normalized_box == pytest.approx((1774 / 3840, 1586 / 2160, 2113 / 3840, 1618 / 2160))


def test_filter_defaults_splits_and_missing_size(mixed_dir: Path, images_dir: Path) -> None:
    result = sp.load(mixed_dir, images_dir)
    assert [s.sample_id for s in result.samples] == [
        "android_studio_macos_0",
        "photoshop_windows_0",
        "photoshop_windows_1",
    ]
    assert result.samples[2].image_size == (2560, 1440)  # read from the image: no img_size
    assert [(e.sample_id, e.reason) for e in result.excluded] == [
        ("photoshop_windows_2", "not evaluated: language=cn"),
        ("photoshop_windows_3", "not evaluated: gt_type=negative"),
        ("photoshop_windows_4", "not evaluated: instruction_style=action"),
    ]
    only = sp.load(mixed_dir, images_dir, split="photoshop_windows", limit=1)
    assert [s.sample_id for s in only.samples] == ["photoshop_windows_0"]
    with pytest.raises(UserInputError, match="expected one of: android_studio_macos, photoshop_windows, all"):
        sp.load(mixed_dir, images_dir, split="gimp")


def test_missing_image_reported(mixed_dir: Path, images_dir: Path) -> None:
    (images_dir / REAL_IMAGE).unlink()
    result = sp.load(mixed_dir, images_dir)
    assert [s.sample_id for s in result.skipped] == ["android_studio_macos_0"]
    assert result.skipped[0].missing == (images_dir / REAL_IMAGE,)


def test_oracle_scores_full_marks(mixed_dir: Path, images_dir: Path) -> None:
    samples = sp.load(mixed_dir, images_dir).samples
    summary = sp.summarize([sp.score(s, sp.ground_truth_action(s)) for s in samples])
    assert summary["action_acc"] == 1.0 and summary["num_total"] == 3


def test_scoring_and_breakdowns(mixed_dir: Path, images_dir: Path) -> None:
    real, photo_text, photo_icon = sp.load(mixed_dir, images_dir).samples
    _, y1, x2, _ = real.normalized_box
    records = [
        sp.score(real, Action(ActionType.CLICK, point=(x2, y1))),  # edge: correct
        sp.score(photo_text, Action(ActionType.CLICK, point=(0.9, 0.9))),
        sp.score(photo_icon, Action.unparsed("?")),
    ]
    assert [r["correctness"] for r in records] == ["correct", "wrong", "wrong_format"]
    summary = sp.summarize(json.loads(json.dumps(records)))
    assert summary["action_acc"] == pytest.approx(1 / 3)
    assert summary["text_acc"] == 0.0 and summary["icon_acc"] == 0.5
    assert summary["wrong_format_num"] == 1
    assert summary["by_group"] == {
        "Creative": {"accuracy": 0.0, "correct": 0, "total": 2},
        "Dev": {"accuracy": 1.0, "correct": 1, "total": 1},
    }
    assert set(summary["by_application"]) == {"android_studio", "photoshop"}
    assert summary["by_platform"]["windows"]["total"] == 2
    assert summary["by_ui_type"]["icon"]["correct"] == 1


def test_bad_input(mixed_dir: Path, images_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="SCREENSPOTPRO_TEST"):
        sp.load(tmp_path / "nope", images_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="at least one annotation file"):
        sp.load(empty, images_dir)
    path = mixed_dir / "photoshop_windows.json"
    path.write_text(json.dumps([synthetic(0, bbox=[300, 100, 100, 200])]))
    with pytest.raises(DataError, match=r"photoshop_windows\.json \(record 0\): field 'bbox': expected \[x1"):
        sp.load(mixed_dir, images_dir)
    path.write_text(json.dumps([synthetic(0, img_size=[2560])]))
    with pytest.raises(DataError, match="field 'img_size'"):
        sp.load(mixed_dir, images_dir)
    row = synthetic(0)
    del row["group"]
    path.write_text(json.dumps([row]))
    with pytest.raises(DataError, match="field 'group': expected a value"):
        sp.load(mixed_dir, images_dir)
    path.write_text("[")
    with pytest.raises(DataError, match=r"photoshop_windows\.json \(line 1, column 2\): expected valid JSON"):
        sp.load(mixed_dir, images_dir)
