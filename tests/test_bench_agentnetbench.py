"""AgentNetBench: loader on the real OpenCUA sample, the evaluate_action rule, and the B4/B11 fixes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import agentnetbench as anb
from benchmarks.agentnetbench import AgentNetStep, GroundTruthAction, InnerMonologue
from benchmarks.common import DataError
from guikv.agents.action import Action, ActionType
from guikv.agents.family import FAMILIES
from guikv.errors import UserInputError

TASK = "s_df0fd37049f470c2"


@pytest.fixture
def data_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "agentnetbench" / "test_data"


def make_step(
    ground_truth: list[GroundTruthAction],
    alternatives: list[list[GroundTruthAction]] | None = None,
    task_id: str = "t",
    step_num: int = 0,
    milestone: bool = False,
) -> AgentNetStep:
    return AgentNetStep(
        task_id=task_id,
        step_index=step_num,
        step_num=step_num,
        instruction="do it",
        image=Path("x.png"),
        history=(),
        ground_truth=tuple(ground_truth),
        alternatives=tuple(tuple(a) for a in alternatives or []),
        milestone=milestone,
        monologue=InnerMonologue(),
        action_code="",
    )


CLICK = GroundTruthAction("click", position=(0.5, 0.5), bboxes=((0.4, 0.4, 0.2, 0.2),))


# --- loader ---------------------------------------------------------------------------------------


def test_load_fixture_steps(data_dir: Path) -> None:
    result = anb.load(data_dir, data_dir / "images")
    assert result.skipped == ()
    assert [s.step_num for s in result.samples] == [2, 3, 4, 6, 7, 9, 10]
    assert [s.step_index for s in result.samples] == list(range(7))
    first = result.samples[0]
    assert first.sample_id == f"{TASK}/2"
    assert first.instruction.startswith("Search for George Orwell on Goodreads")
    assert first.ground_truth[0].type == "click"
    assert first.ground_truth[0].position == (0.3271, 0.2694)
    assert first.ground_truth[0].bboxes[0][0] == pytest.approx(0.25996875)
    scroll_step = result.samples[3]
    assert [a.type for a in scroll_step.ground_truth] == ["moveto", "scroll"]
    assert scroll_step.ground_truth[1].amount == -3
    assert result.samples[1].ground_truth[0].text == "george orwell"
    assert result.samples[2].milestone
    assert result.samples[6].ground_truth[0].status == "success"


def test_history_screenshots_belong_to_their_own_steps_b4(data_dir: Path) -> None:
    samples = anb.load(data_dir, data_dir / "images").samples
    for index, sample in enumerate(samples):
        assert len(sample.history) == index
        assert [p.image for p in sample.history] == [s.image for s in samples[:index]]
        assert [p.step_num for p in sample.history] == [s.step_num for s in samples[:index]]
        assert sample.history_images == tuple(s.image for s in samples[:index])
    assert samples[4].history[1].monologue.low_level_instruction.startswith("Type 'george orwell'")


def test_missing_screenshot_is_reported_and_kept_in_history(data_dir: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for png in (data_dir / "images").glob("*.png"):
        if png.name != f"{TASK}_4.png":
            (images / png.name).symlink_to(png)
    result = anb.load(data_dir, images)
    assert [s.sample_id for s in result.skipped] == [f"{TASK}/4"]
    assert result.skipped[0].missing == (images / f"{TASK}_4.png",)
    assert [s.step_num for s in result.samples] == [2, 3, 6, 7, 9, 10]
    later = result.samples[2]
    assert [p.image_exists for p in later.history] == [True, True, False]
    assert images / f"{TASK}_4.png" not in later.history_images
    assert later.history[2].monologue.thought


def test_mapping_files_skipped_and_sorted(data_dir: Path, tmp_path: Path) -> None:
    raw = json.loads((data_dir / f"{TASK}.json").read_text())
    for name in ("b_traj", "a_traj"):
        (tmp_path / f"{name}.json").write_text(json.dumps({**raw, "task_id": name}))
    (tmp_path / "mapping_ids.json").write_text("{not json")
    result = anb.load(tmp_path, data_dir / "images")
    assert [t.task_id for t in anb.group_trajectories(result.samples)] == ["a_traj", "b_traj"]
    assert len(anb.load(tmp_path, data_dir / "images", limit=1).samples) == 7


def test_instruction_falls_back_to_user_task_description(data_dir: Path, tmp_path: Path) -> None:
    raw = json.loads((data_dir / f"{TASK}.json").read_text())
    del raw["high_level_task_description"]
    (tmp_path / "t.json").write_text(json.dumps(raw))
    sample = anb.load(tmp_path, data_dir / "images").samples[0]
    assert sample.instruction == raw["user_task_description"]


# --- bad input ------------------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="AGENTNETBENCH_DATA"):
        anb.load(tmp_path / "nope", tmp_path)


def test_no_trajectory_files(tmp_path: Path) -> None:
    (tmp_path / "mapping.json").write_text("{}")
    with pytest.raises(DataError, match="at least one trajectory file"):
        anb.load(tmp_path, tmp_path)


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text('{\n "task_id": "t",\n "steps": [,]\n}')
    with pytest.raises(DataError, match=r"t\.json \(line 3, column 12\): expected valid JSON"):
        anb.load(tmp_path, tmp_path)


def test_missing_field_names_file_and_field(data_dir: Path, tmp_path: Path) -> None:
    raw = json.loads((data_dir / f"{TASK}.json").read_text())
    del raw["steps"][2]["ground_truth_actions"][0]["params"]["position"]
    (tmp_path / "t.json").write_text(json.dumps(raw))
    with pytest.raises(DataError) as info:
        anb.load(tmp_path, data_dir / "images")
    assert info.value.path == tmp_path / "t.json"
    assert info.value.field == "steps[2].ground_truth_actions[0].params.position"
    del raw["task_id"]
    (tmp_path / "t.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match="field 'task_id': expected a value"):
        anb.load(tmp_path, data_dir / "images")


def test_unknown_split(data_dir: Path) -> None:
    with pytest.raises(UserInputError, match=r"--split.*expected one of: all"):
        anb.load(data_dir, data_dir / "images", split="train")


# --- metric ---------------------------------------------------------------------------------------


def test_oracle_scores_full_marks_on_fixture(data_dir: Path) -> None:
    samples = anb.load(data_dir, data_dir / "images").samples
    records = [anb.score(s, anb.ground_truth_action(s)) for s in samples]
    summary = anb.summarize(records)
    assert summary["overall_score"] == 1.0
    assert summary["average_trajectory_score"] == 1.0
    assert summary["milestone_score"] == 1.0
    assert summary["hit_rate"] == 1.0
    assert summary["scroll_direction_accuracy"] == 1.0


def test_click_inside_box_outside_near_and_far() -> None:
    step = make_step([CLICK])
    inside = anb.score(step, Action(ActionType.CLICK, point=(0.6, 0.41)))
    assert inside["score"] == 1.0 and inside["hit"]
    near = anb.score(step, Action(ActionType.CLICK, point=(0.5, 0.605)))
    expected = math.exp(-120 * (0.105 - anb.COORD_THRESHOLD))
    assert near["score"] == pytest.approx(expected)
    assert not near["hit"]
    no_box = make_step([GroundTruthAction("click", position=(0.5, 0.5))])
    assert anb.score(no_box, Action(ActionType.CLICK, point=(0.505, 0.505)))["score"] == 1.0
    assert anb.score(step, Action(ActionType.CLICK))["score"] == 0.0


def test_type_mismatch_and_unparsed_score_zero() -> None:
    step = make_step([CLICK])
    assert anb.score(step, Action(ActionType.DOUBLE_CLICK, point=(0.5, 0.5)))["score"] == 0.0
    unparsed = anb.score(step, Action.unparsed("???"))
    assert unparsed["score"] == 0.0 and not unparsed["parsed"] and unparsed["pred_type"] is None
    assert anb.score(step, Action(ActionType.WAIT))["score"] == 0.0


def test_action_mapping() -> None:
    assert anb.to_agentnet(Action(ActionType.LONG_PRESS, point=(0.1, 0.2))).type == "click"
    drag = anb.to_agentnet(Action(ActionType.DRAG, point=(0.1, 0.1), end_point=(0.8, 0.9)))
    assert (drag.type, drag.point, drag.end) == ("dragto", (0.1, 0.1), (0.8, 0.9))
    back = anb.to_agentnet(Action(ActionType.PRESS_BACK))
    assert (back.type, back.keys) == ("press", frozenset({"escape"}))
    assert anb.to_agentnet(Action(ActionType.WAIT)) is None
    assert anb.to_agentnet(Action(ActionType.PRESS_HOME)) is None
    assert anb.to_agentnet(Action(ActionType.FINISHED, text="successful")).status == "success"
    assert anb.to_agentnet(Action(ActionType.FINISHED, text="failure")).status == "failure"
    triple = make_step([GroundTruthAction("tripleclick", position=(0.5, 0.5))])
    assert anb.score(triple, Action(ActionType.TRIPLE_CLICK, point=(0.5, 0.5)))["score"] == 1.0


def test_hotkey_aliases_b11() -> None:
    """UI-TARS' ctrl -> control rewrite made every ctrl hotkey miss a GT written 'ctrl'."""
    step = make_step([GroundTruthAction("hotkey", keys=("ctrl", "c"))])
    assert anb.score(step, Action(ActionType.HOTKEY, keys=("control", "c")))["score"] == 1.0
    assert anb.score(step, Action(ActionType.HOTKEY, keys=("ctrl+c",)))["score"] == 1.0
    assert anb.score(step, Action(ActionType.HOTKEY, keys=("cmd", "c")))["score"] == 0.0
    mac = make_step([GroundTruthAction("hotkey", keys=("command", "v"))])
    assert anb.score(mac, Action(ActionType.HOTKEY, keys=("cmd", "v")))["score"] == 1.0
    enter = make_step([GroundTruthAction("press", keys=("return",))])
    assert anb.score(enter, Action(ActionType.PRESS, keys=("enter",)))["score"] == 1.0
    assert anb.score(enter, Action(ActionType.HOTKEY, keys=("Enter",)))["score"] == 1.0
    esc = make_step([GroundTruthAction("press", keys=("esc",))])
    assert anb.score(esc, Action(ActionType.PRESS_BACK))["score"] == 1.0


def test_write_rules_and_submitted_text_b11() -> None:
    plain = make_step([GroundTruthAction("write", text="George Orwell")])
    assert anb.score(plain, Action(ActionType.TYPE, text=" george orwell "))["score"] == 1.0
    assert anb.score(plain, Action(ActionType.TYPE, text="george orwel"))["score"] == 1.0
    far = anb.score(plain, Action(ActionType.TYPE, text="george"))["score"]
    assert far == pytest.approx((1 - 7 / 13) / 0.8)
    # Only one side presses Enter: 0.9 (the original stripped the newline before testing for it, so 1.0).
    assert anb.score(plain, Action(ActionType.TYPE, text="george orwell\n"))["score"] == pytest.approx(0.9)
    submitted = make_step(
        [GroundTruthAction("write", text="george orwell"), GroundTruthAction("press", keys=("enter",))]
    )
    assert anb.score(submitted, Action(ActionType.TYPE, text="george orwell\n"))["score"] == 1.0
    assert anb.score(submitted, Action(ActionType.TYPE, text="george orwell"))["score"] == pytest.approx(0.9)
    oracle = anb.ground_truth_action(submitted)
    assert oracle.text == "george orwell\n"


def test_moveto_scroll_pair_and_direction_b11() -> None:
    """The original compared a scroll prediction with the first GT action (moveTo): always 0."""
    step = make_step(
        [
            GroundTruthAction("moveto", position=(0.78, 0.46), bboxes=((0.0, 0.2, 1.0, 0.75),)),
            GroundTruthAction("scroll", position=(0.78, 0.46), amount=-3),
        ]
    )
    down = anb.score(step, Action(ActionType.SCROLL, point=(0.5, 0.5), direction="down"))
    assert down["score"] == 1.0 and down["scroll_direction_correct"] is True
    assert not down["coordinate_step"]
    up = anb.score(step, Action(ActionType.SCROLL, point=(0.5, 0.5), direction="up"))
    assert up["score"] == 1.0 and up["scroll_direction_correct"] is False
    signed = anb.score(step, Action(ActionType.SCROLL, amount=-5))
    assert signed["scroll_direction_correct"] is True
    moved = anb.score(step, Action(ActionType.MOVE_TO, point=(0.5, 0.5)))
    assert moved["score"] == 1.0 and moved["scroll_direction_correct"] is False
    unknown = make_step([GroundTruthAction("scroll")])
    assert anb.score(unknown, Action(ActionType.SCROLL, direction="up"))["scroll_direction_correct"] is None


def test_terminate_status() -> None:
    step = make_step([GroundTruthAction("terminate", status="success")])
    assert anb.score(step, Action(ActionType.FINISHED, text="success"))["score"] == 1.0
    assert anb.score(step, Action(ActionType.FINISHED, text="unsuccessful"))["score"] == 0.0
    failed = make_step([GroundTruthAction("terminate", status="failure")])
    assert anb.score(failed, Action(ActionType.FINISHED, text="infeasible"))["score"] == 1.0


def test_alternatives_only_when_main_scores_zero() -> None:
    alt = [GroundTruthAction("hotkey", keys=("ctrl", "f"))]
    step = make_step([CLICK], [alt, [GroundTruthAction("click", position=(0.1, 0.1))]])
    by_alt = anb.score(step, Action(ActionType.HOTKEY, keys=("ctrl", "f")))
    assert by_alt["score"] == 1.0 and by_alt["used_alternative"] and not by_alt["type_match"]
    # A partial main score is kept even if an alternative would give more (the published rule).
    partial = anb.score(step, Action(ActionType.CLICK, point=(0.1, 0.12)))
    assert 0 < partial["score"] < 1 and not partial["used_alternative"]


def test_summarize_trajectories_milestones_and_types() -> None:
    records = [
        anb.score(make_step([CLICK], task_id="a", step_num=0), Action(ActionType.CLICK, point=(0.5, 0.5))),
        anb.score(make_step([CLICK], task_id="a", step_num=1, milestone=True), Action(ActionType.WAIT)),
        anb.score(make_step([CLICK], task_id="a", step_num=2), Action(ActionType.WAIT)),
        anb.score(
            make_step([GroundTruthAction("write", text="x")], task_id="b"), Action(ActionType.TYPE, text="x")
        ),
    ]
    summary = anb.summarize(json.loads(json.dumps(records)))
    assert summary["overall_score"] == 0.5
    assert summary["average_trajectory_score"] == pytest.approx((1 / 3 + 1) / 2)
    assert summary["milestone_score"] == 0.0
    assert summary["coordinate_hit_rate"] == pytest.approx(1 / 3)
    assert summary["action_type_scores"] == {"click": pytest.approx(1 / 3), "write": 1.0}
    assert summary["total_trajectories"] == 2
    assert summary["scroll_direction_accuracy"] is None
    empty = anb.summarize([])
    assert empty["overall_score"] is None and empty["total_steps"] == 0


def test_alternatives_are_read_and_empty_ones_ignored(data_dir: Path, tmp_path: Path) -> None:
    raw = json.loads((data_dir / f"{TASK}.json").read_text())
    hotkey = {"type": "hotkey", "params": {"keys": ["ctrl", "l"]}, "metadata": {}}
    raw["steps"][0]["alternative_options"] = [[], [hotkey]]
    (tmp_path / "t.json").write_text(json.dumps(raw))
    sample = anb.load(tmp_path, data_dir / "images").samples[0]
    assert sample.alternatives == ((GroundTruthAction("hotkey", keys=("ctrl", "l")),),)
    record = anb.score(sample, Action(ActionType.HOTKEY, keys=("control", "L")))
    assert record["score"] == 1.0 and record["used_alternative"]


# --- issue 8: drags, Command shortcuts, submits and empty finished, from real model outputs -----------

SCREEN = (1280, 720)
"""Screenshot size; both families answer in its 1288 x 728 model frame (322 px = 0.25, 966 px = 0.75
across; 364 px = 0.5 down)."""

DRAG = make_step(
    [
        GroundTruthAction("moveto", position=(0.25, 0.5), bboxes=((0.2, 0.45, 0.1, 0.1),)),
        GroundTruthAction("dragto", position=(0.75, 0.5)),
    ]
)
SUBMITTED = make_step(
    [GroundTruthAction("write", text="george orwell"), GroundTruthAction("press", keys=("enter",))]
)
WRITTEN = make_step([GroundTruthAction("write", text="george orwell")])


def parse(family: str, text: str) -> list[Action]:
    """A model output parsed by the family's own parser at the screenshot size."""
    return FAMILIES[family].parse(text, SCREEN)


def opencua(*code: str) -> str:
    """An OpenCUA answer in its documented sections, with these code lines."""
    lines = "\n".join(code)
    return f"## Thought:\nI act now.\n\n## Action:\nDo it.\n\n## Code:\n```python\n{lines}\n```\n"


def test_drag_is_scored_against_both_points_for_both_families() -> None:
    """Issue 8 item 6: a drag was compared with the moveTo alone, so a perfect UI-TARS drag scored 0
    and an OpenCUA moveTo to the right start scored 1 whatever the end."""
    tars = "Thought: Drag the slider right.\nAction: drag(start_box='(322,364)', end_box='(966,364)')"
    cua = opencua("pyautogui.moveTo(x=322, y=364)", "pyautogui.dragTo(x=966, y=364)")
    for prediction in (parse("ui-tars", tars), parse("opencua", cua)):
        record = anb.score(DRAG, prediction)
        assert record["score"] == 1.0 and record["hit"] and record["pred_type"] == "dragto"
    wrong_end = opencua("pyautogui.moveTo(x=322, y=364)", "pyautogui.dragTo(x=322, y=700)")
    assert anb.score(DRAG, parse("opencua", wrong_end))["score"] == pytest.approx(0.5, abs=1e-6)
    tars_wrong_end = "Thought: Drag.\nAction: drag(start_box='(322,364)', end_box='(322,700)')"
    assert anb.score(DRAG, parse("ui-tars", tars_wrong_end))["score"] == pytest.approx(0.5, abs=1e-6)
    hover = parse("opencua", opencua("pyautogui.moveTo(x=322, y=364)"))
    assert anb.score(DRAG, hover)["score"] == pytest.approx(0.5)
    backwards = "Thought: Drag.\nAction: drag(start_box='(966,364)', end_box='(322,364)')"
    assert anb.score(DRAG, parse("ui-tars", backwards))["score"] < 1e-6
    oracle = anb.ground_truth_action(DRAG)
    assert (oracle.type, oracle.point, oracle.end_point) == (ActionType.DRAG, (0.25, 0.5), (0.75, 0.5))


def test_opencua_command_shortcuts_keep_their_key() -> None:
    """Issue 8 item 7: the OpenCUA parser rewrote cmd to ctrl, so every correct macOS shortcut scored
    0; only the metric's alias table decides which names are one key (command = cmd, never ctrl)."""
    copy = make_step([GroundTruthAction("hotkey", keys=("cmd", "c"))])
    for code in (
        "pyautogui.hotkey('cmd', 'c')",
        "pyautogui.hotkey(['cmd', 'c'])",
        "pyautogui.hotkey(keys=['command', 'c'])",
    ):
        assert anb.score(copy, parse("opencua", opencua(code)))["score"] == 1.0
    assert anb.score(copy, parse("ui-tars", "Thought: Copy it.\nAction: hotkey(key='cmd c')"))["score"] == 1.0
    ctrl_copy = make_step([GroundTruthAction("hotkey", keys=("ctrl", "c"))])
    assert anb.score(ctrl_copy, parse("opencua", opencua("pyautogui.hotkey('cmd', 'c')")))["score"] == 0.0


def test_submit_is_folded_the_same_way_on_both_sides() -> None:
    """Issue 8 item 8: OpenCUA's write + press('enter') scored 0.9 against a submitted ground truth,
    where UI-TARS's type('...\\n') scored 1 (OpenCUA's own evaluator folds both sides)."""
    predictions = [
        parse("opencua", opencua("pyautogui.write(message='George Orwell')", "pyautogui.press('enter')")),
        parse("opencua", opencua("pyautogui.write('George Orwell')", "pyautogui.press(['return'])")),
        parse("ui-tars", "Thought: Search for him.\nAction: type(content='George Orwell\\n')"),
    ]
    for prediction in predictions:
        assert anb.score(SUBMITTED, prediction)["score"] == 1.0
        assert anb.score(WRITTEN, prediction)["score"] == pytest.approx(0.9)
    unsubmitted = parse("opencua", opencua("pyautogui.write(message='George Orwell')"))
    assert anb.score(SUBMITTED, unsubmitted)["score"] == pytest.approx(0.9)
    assert anb.score(WRITTEN, unsubmitted)["score"] == 1.0


def test_finished_without_content_is_a_failure() -> None:
    """Issue 8 item 11: a `finished()` that states nothing counted as success; like the original
    AgentNetBench conversion, it is now a failure, for both families."""
    done = make_step([GroundTruthAction("terminate", status="success")])
    failed = make_step([GroundTruthAction("terminate", status="failure")])
    for prediction in (
        parse("ui-tars", "Thought: All done.\nAction: finished()"),
        parse("ui-tars", "Thought: All done.\nAction: finished(content='')"),
        parse("opencua", opencua("computer.terminate()")),
    ):
        assert anb.score(done, prediction)["score"] == 0.0
        assert anb.score(failed, prediction)["score"] == 1.0
    stated = parse("opencua", opencua("computer.terminate(status='success')"))
    assert anb.score(done, stated)["score"] == 1.0
