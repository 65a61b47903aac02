"""Shared benchmark machinery: errors that name file and field, JSON readers, geometry, averaging,
key aliases and the registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import BENCHMARKS, get_benchmark
from benchmarks.common import (
    DataError,
    Fields,
    canonical_keys,
    check_limit,
    check_split,
    finished_failed,
    fold_actions,
    image_size,
    macro_mean,
    mean,
    point_in_xywh,
    point_in_xyxy,
    read_json,
    read_jsonl,
)
from guikv.agents.action import Action, ActionType
from guikv.errors import UserInputError

MakePng = Callable[[Path, tuple[int, int]], Path]


def test_data_error_is_a_user_input_error_naming_file_place_and_field(tmp_path: Path) -> None:
    err = DataError(tmp_path / "a.json", "a string", field="steps[0].image", where="line 3")
    assert isinstance(err, UserInputError)
    assert str(err) == f"{tmp_path / 'a.json'} (line 3): field 'steps[0].image': expected a string"


def test_read_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"a": 1},\n  {"a": }\n]\n')
    with pytest.raises(DataError, match=r"bad\.json \(line 3, column 9\): expected valid JSON"):
        read_json(path)


def test_read_json_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected an existing JSON file"):
        read_json(tmp_path / "nope.json")


def test_read_jsonl_numbers_lines_and_skips_blank_ones(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(path) == [(1, {"a": 1}), (3, {"a": 2})]
    path.write_text('{"a": 1}\n{"a": 2,\n')
    with pytest.raises(DataError, match=r"x\.jsonl \(line 2\): expected one JSON object per line"):
        read_jsonl(path)


def test_fields_name_the_nested_field(tmp_path: Path) -> None:
    fields = Fields({"params": {"position": {"x": "left"}}}, tmp_path / "t.json", "step 2", "steps[2]")
    position = fields.child("params").child("position")
    with pytest.raises(DataError) as info:
        position.number("x")
    assert info.value.field == "steps[2].params.position.x"
    assert "expected a number" in str(info.value)
    with pytest.raises(DataError, match=r"field 'steps\[2\]\.params\.position\.y': expected a value"):
        position.number("y")
    with pytest.raises(DataError, match="expected an integer"):
        Fields({"n": True}, tmp_path, "r").integer("n")
    with pytest.raises(DataError, match="expected a JSON object"):
        Fields([1], tmp_path, "record 0")


def test_point_in_box_includes_edges() -> None:
    assert point_in_xyxy((0.1, 0.2), (0.1, 0.2, 0.3, 0.4))
    assert point_in_xyxy((0.3, 0.4), (0.1, 0.2, 0.3, 0.4))
    assert not point_in_xyxy((0.3001, 0.4), (0.1, 0.2, 0.3, 0.4))
    assert point_in_xywh((0.4, 0.6), (0.1, 0.2, 0.3, 0.4))
    assert not point_in_xywh((0.41, 0.6), (0.1, 0.2, 0.3, 0.4))


def test_image_size_reads_header_and_names_bad_files(tmp_path: Path, make_png: MakePng) -> None:
    assert image_size(make_png(tmp_path / "a.png", (640, 400))) == (640, 400)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"b\.png: expected a readable image"):
        image_size(bad)


def test_averages() -> None:
    assert mean([]) is None
    assert mean([1.0, 0.0]) == 0.5
    assert macro_mean({"a": [1.0, 1.0, 1.0], "b": [0.0]}) == 0.5


def test_check_split_and_limit() -> None:
    assert check_split(None, ("x", "all"), "all") == "all"
    with pytest.raises(UserInputError, match="--split: unknown value 'y'; expected one of: x, all"):
        check_split("y", ("x", "all"), "all")
    assert check_limit(None) is None
    with pytest.raises(UserInputError, match="--debug"):
        check_limit(0)


def test_key_aliases() -> None:
    assert canonical_keys(["Control", "C"]) == canonical_keys(["ctrl", "c"])
    assert canonical_keys(["return"]) == canonical_keys(["Enter"]) == {"enter"}
    assert canonical_keys(["esc"]) == {"escape"}
    assert canonical_keys(["command", "v"]) == canonical_keys(["win", "v"]) == {"cmd", "v"}
    assert canonical_keys(["ctrl+shift+t"]) == {"ctrl", "shift", "t"}
    assert canonical_keys(["+"]) == {"+"}
    assert canonical_keys(["ctrl"]) != canonical_keys(["cmd"])


def test_finished_failure_words() -> None:
    assert finished_failed("unsuccessful")
    assert finished_failed("I cannot do this")
    assert not finished_failed("successful")
    assert not finished_failed("The task is done.")


@pytest.mark.parametrize("content", [None, "", "  "])
def test_finished_without_content_is_a_failure(content: str | None) -> None:
    """Issue 8 item 11: `finished()` with no content claimed nothing, so it is a failure (as the
    original AgentNetBench conversion counted it); it used to count as a success."""
    assert finished_failed(content)


def test_registry_shape() -> None:
    assert list(BENCHMARKS) == [
        "agentnetbench",
        "androidcontrol",
        "screenspot-v2",
        "screenspot-pro",
        "mind2web",
    ]
    for name, spec in BENCHMARKS.items():
        assert spec.name == name
        assert spec.default_split in spec.splits
        assert spec.data_env and spec.images_env and spec.metric_columns
        assert callable(spec.load) and callable(spec.score)
        assert callable(spec.summarize) and callable(spec.ground_truth_action)
        assert set(spec.metric_columns) <= set(spec.summarize([]))
    assert get_benchmark("mind2web").data_env == "MM_MIND2WEB_TEST"


def test_get_benchmark_unknown_name() -> None:
    with pytest.raises(
        UserInputError, match="benchmark: unknown name 'nope'; expected one of: agentnetbench"
    ):
        get_benchmark("nope")


def test_fold_actions_joins_submit_and_drag_pairs() -> None:
    """[type, Enter] and [move_to, drag] are each the one action they perform; the rest is kept."""
    typed = Action(ActionType.TYPE, text="hi")
    enter = Action(ActionType.PRESS, keys=("Return",))
    move = Action(ActionType.MOVE_TO, point=(0.1, 0.2))
    drag = Action(ActionType.DRAG, end_point=(0.8, 0.9))
    click = Action(ActionType.CLICK, point=(0.5, 0.5))
    assert fold_actions([typed, enter, click]) == (Action(ActionType.TYPE, text="hi\n"), click)
    assert fold_actions([move, drag]) == (Action(ActionType.DRAG, point=(0.1, 0.2), end_point=(0.8, 0.9)),)
    assert fold_actions([enter, typed]) == (enter, typed)
    ctrl_enter = Action(ActionType.HOTKEY, keys=("ctrl", "enter"))
    assert fold_actions([typed, ctrl_enter]) == (typed, ctrl_enter)
    assert fold_actions(click) == (click,)
    assert fold_actions([]) == (Action.unparsed(""),)
