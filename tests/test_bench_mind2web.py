"""Multimodal-Mind2Web: loader on UGround's block samples with placeholder block screenshots, the
scroll loop, the metric and the B7-B9 fixes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks import mind2web as m2w
from benchmarks.common import DataError
from guikv.agents import ui_tars
from guikv.agents.action import Action, ActionType
from guikv.agents.family import FAMILIES
from guikv.errors import UserInputError

BLOCK = (1280, 1000)
DEEP_TASK = "e39333ef-a5a5-4117-9af2-3bb243b364f2"  # its step 2 target lives in block 2

MakePng = Callable[[Path, tuple[int, int]], Path]
Edit = Callable[[dict[str, Any]], dict[str, Any] | None]


@pytest.fixture
def data_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "multimodal_mind2web" / "data" / "samples"


def lines(data_dir: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (data_dir / m2w.data_file(split)).read_text().splitlines()]


@pytest.fixture
def images_dir(data_dir: Path, tmp_path: Path, make_png: MakePng) -> Path:
    images = tmp_path / "blocks"
    for split in m2w.SPLITS:
        for row in lines(data_dir, split):
            for block in range(3):
                make_png(images / split / row["blocks_path"] / f"{block}.png", BLOCK)
    return images


def copy_data(data_dir: Path, tmp_path: Path, edit: Edit | None = None) -> Path:
    """The fixture files copied to tmp_path, each line passed through `edit` (None drops the line)."""
    out = tmp_path / "samples"
    out.mkdir(exist_ok=True)
    for split in m2w.SPLITS:
        rows = [edit(r) if edit else r for r in lines(data_dir, split)]
        text = "".join(json.dumps(r) + "\n" for r in rows if r is not None)
        (out / m2w.data_file(split)).write_text(text)
    return out


def deep_sample(data_dir: Path, images_dir: Path) -> m2w.Mind2WebSample:
    samples = m2w.load(data_dir, images_dir, "cross_task").samples
    return next(s for s in samples if s.annotation_id == DEEP_TASK and s.step == 2)


def run_oracle(sample: m2w.Mind2WebSample) -> tuple[dict[str, Any], list[str]]:
    """Drive the scroll loop the way the runner does, with the oracle as the model."""
    block, calls, notes = 0, 0, []
    while True:
        action = m2w.ground_truth_action(sample, block)
        calls += 1
        move = m2w.scroll_step(sample, block, action, calls)
        if move.block is None:
            return m2w.score(sample, action, block), notes
        notes.append(move.note)
        block = move.block


# --- loader ---------------------------------------------------------------------------------------


def test_load_all_splits_in_order(data_dir: Path, images_dir: Path) -> None:
    result = m2w.load(data_dir, images_dir)
    assert result.skipped == ()
    assert [s.split for s in result.samples] == [name for name in m2w.SPLITS for _ in range(3)]
    assert m2w.SPLITS == ("cross_domain", "cross_task", "cross_website")
    first = result.samples[0]
    assert first.sample_id.startswith("cross_domain/d361b836-2f91-4a0b-a602-8ec65a31c17e/")
    assert first.operation == "CLICK" and first.value == ""
    assert first.previous_actions == ()
    assert first.bboxes == ((962.5, 688.25, 279.5, 54.0),)
    assert len(first.blocks) == 3 and first.block_sizes == (BLOCK,) * 3
    assert first.target_blocks == {0: ((962.5, 688.25, 279.5, 54.0),)}
    assert result.samples[1].previous_actions == ("[link]  United States - English -> CLICK",)
    assert [s.split for s in m2w.load(data_dir, images_dir, "cross_website", limit=2).samples] == [
        "cross_website"
    ] * 2


def test_step_zero_has_empty_previous_actions_b7(data_dir: Path, images_dir: Path) -> None:
    """The original reused the previous sample's previous-actions text on a task's first step."""
    samples = m2w.load(data_dir, images_dir).samples
    for sample in samples:
        assert isinstance(sample.previous_actions, tuple)
        assert len(sample.previous_actions) == sample.step


def test_missing_block_zero_is_reported(data_dir: Path, images_dir: Path) -> None:
    row = lines(data_dir, "cross_task")[0]
    shutil.rmtree(images_dir / "cross_task" / row["blocks_path"])
    result = m2w.load(data_dir, images_dir)
    assert len(result.samples) == 8
    (skipped,) = result.skipped
    assert skipped.sample_id == f"cross_task/{row['annotation_id']}/{row['action_uid']}"
    assert skipped.missing == (images_dir / "cross_task" / row["blocks_path"] / "0.png",)


def test_block_images_stop_at_the_first_gap(data_dir: Path, images_dir: Path) -> None:
    row = lines(data_dir, "cross_domain")[0]
    (images_dir / "cross_domain" / row["blocks_path"] / "1.png").unlink()
    assert len(m2w.load(data_dir, images_dir, "cross_domain").samples[0].blocks) == 1


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input(data_dir: Path, images_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="MM_MIND2WEB_TEST"):
        m2w.load(tmp_path / "nope", images_dir)
    with pytest.raises(DataError, match="MM_MIND2WEB_IMGS"):
        m2w.load(data_dir, tmp_path / "nope")
    with pytest.raises(UserInputError, match="--split: unknown value 'test'; expected one of: cross_domain"):
        m2w.load(data_dir, images_dir, "test")
    with pytest.raises(DataError, match=r"cross_domain_blocks\.jsonl: expected an existing JSONL file"):
        m2w.load(tmp_path, images_dir)


def test_malformed_line_is_named(data_dir: Path, images_dir: Path, tmp_path: Path) -> None:
    out = copy_data(data_dir, tmp_path)
    path = out / m2w.data_file("cross_task")
    text = path.read_text().splitlines()
    text[1] = text[1][:-5]
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(
        DataError, match=r"cross_task_blocks\.jsonl \(line 2\): expected one JSON object per line"
    ):
        m2w.load(out, images_dir)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: {k: v for k, v in r.items() if k != "total_steps"}, "total_steps"),
        (lambda r: {**r, "operation": "HOVER"}, "operation"),
        (lambda r: {**r, "bbox": [[1, 2, 3]]}, "bbox"),
        (lambda r: {**r, "target_blocks": {"0": [[1, 2]]}}, "target_blocks.0"),
        (lambda r: {**r, "previous_actions": [1]}, "previous_actions"),
    ],
)
def test_bad_field_is_named(data_dir: Path, images_dir: Path, tmp_path: Path, edit: Edit, field: str) -> None:
    out = copy_data(data_dir, tmp_path, edit)
    with pytest.raises(DataError) as info:
        m2w.load(out, images_dir)
    assert info.value.field == field
    assert info.value.where == "line 1"
    assert info.value.path == out / m2w.data_file("cross_domain")


# --- scroll loop ----------------------------------------------------------------------------------


def test_scroll_step(data_dir: Path, images_dir: Path) -> None:
    sample = m2w.load(data_dir, images_dir).samples[0]
    down = Action(ActionType.SCROLL, point=(0.5, 0.5), direction="down")
    up = Action(ActionType.SCROLL, direction="up")
    assert m2w.scroll_step(sample, 0, down, 1) == m2w.ScrollMove(1, "Scroll down.")
    assert m2w.scroll_step(sample, 2, down, 2) == m2w.ScrollMove(2, "Scroll down.")  # no block 3
    assert m2w.scroll_step(sample, 0, up, 1) == m2w.ScrollMove(0, "Scroll up.")
    assert m2w.scroll_step(sample, 1, Action(ActionType.SCROLL, amount=3), 1) == m2w.ScrollMove(
        0, "Scroll up."
    )
    assert m2w.scroll_step(sample, 1, down, m2w.MAX_MODEL_CALLS) == m2w.ScrollMove(None)
    assert m2w.scroll_step(sample, 1, Action(ActionType.CLICK, point=(0.1, 0.1)), 1) == m2w.ScrollMove(None)


# --- metric ---------------------------------------------------------------------------------------


def test_oracle_scores_full_marks(data_dir: Path, images_dir: Path) -> None:
    samples = m2w.load(data_dir, images_dir).samples
    outcomes = [run_oracle(s) for s in samples]
    summary = m2w.summarize([record for record, _ in outcomes])
    assert summary["step_accuracy"] == 1.0
    assert summary["element_accuracy"] == 1.0 and summary["operation_f1"] == 1.0
    deep = next(
        o for s, o in zip(samples, outcomes, strict=True) if s.annotation_id == DEEP_TASK and s.step == 2
    )
    assert deep[0]["block"] == 2
    assert deep[1] == ["Scroll down.", "Scroll down."]


def test_click_after_scrolling_uses_the_block_coordinates_b9(
    data_dir: Path, images_dir: Path, tmp_path: Path
) -> None:
    """The original normalised full-page boxes by block 0's size: a target on block 2 was unreachable."""
    sample = deep_sample(data_dir, images_dir)
    x, y, w, h = 24.0, 163.9375, 171.453125, 40.0  # target_blocks["2"]
    click = Action(ActionType.CLICK, point=((x + w / 2) / 1280, (y + h / 2) / 1000))
    assert m2w.score(sample, click, block=2)["element_correct"]
    assert m2w.score(sample, click, block=2)["step_correct"]
    assert not m2w.score(sample, click, block=0)["element_correct"]
    # Without target_blocks, the full-page box is shifted by block * 800 (200 px overlap): same answer.
    out = copy_data(data_dir, tmp_path, lambda r: {k: v for k, v in r.items() if k != "target_blocks"})
    bare = deep_sample(out, images_dir)
    assert bare.target_blocks is None
    assert bare.boxes_in_block(2) == ((24.0, 163.9375, 171.453125, 40.0),)
    assert bare.boxes_in_block(1) == ()  # cut by the block's bottom edge
    assert m2w.score(bare, click, block=2)["element_correct"]
    for sample in m2w.load(out, images_dir).samples:  # both ways agree on every fixture sample
        with_blocks = next(
            s for s in m2w.load(data_dir, images_dir).samples if s.sample_id == sample.sample_id
        )
        for block in range(3):
            assert sample.boxes_in_block(block) == with_blocks.boxes_in_block(block)


def test_type_and_select_with_a_point_earn_element_credit_b9(data_dir: Path, images_dir: Path) -> None:
    samples = m2w.load(data_dir, images_dir, "cross_domain").samples
    typed = samples[1]  # TYPE 123456 into a box at (33, 320.4375, 570.73, 54)
    inside = (200 / 1280, 340 / 1000)
    record = m2w.score(typed, Action(ActionType.TYPE, point=inside, text="123456"))
    assert record["element_correct"] and record["operation_f1"] == 1.0 and record["step_correct"]
    no_point = m2w.score(typed, Action(ActionType.TYPE, text="123456"))
    assert not no_point["element_correct"] and no_point["operation_f1"] == 1.0
    select = m2w.score(typed, Action(ActionType.SELECT, point=inside, text="123456"))
    assert select["element_correct"] and select["operation_f1"] == pytest.approx(0.5)
    scroll = m2w.score(typed, Action(ActionType.SCROLL, point=inside, direction="down"))
    assert not scroll["element_correct"]


def test_token_f1_and_operation_text() -> None:
    assert m2w.token_f1("", "") == 1.0
    assert m2w.token_f1("click", "") == 0.0
    assert m2w.token_f1("click", "CLICK ") == 1.0
    assert m2w.token_f1("type new york !", "TYPE New York") == 1.0
    assert m2w.token_f1("type boston", "TYPE New York") == pytest.approx(
        2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3)
    )
    assert m2w.operation_text(Action(ActionType.DOUBLE_CLICK, point=(0.1, 0.1))) == "click"
    assert m2w.operation_text(Action(ActionType.SELECT, text="Economy")) == "select Economy"
    assert m2w.operation_text(Action(ActionType.HOTKEY, keys=("enter",))) == "hotkey"
    assert m2w.operation_text(Action.unparsed("?")) == ""


def record(split: str, task: str, correct: bool, total: int = 2) -> dict[str, Any]:
    return {
        "split": split,
        "annotation_id": task,
        "action_uid": "u",
        "total_steps": total,
        "block": 0,
        "parsed": True,
        "element_correct": correct,
        "operation_f1": 1.0 if correct else 0.0,
        "step_correct": correct,
    }


def test_splits_are_summarised_separately_b8() -> None:
    """The original never reset its lists: cross_task's numbers included cross_domain's."""
    records = [record("cross_domain", "a", True), record("cross_domain", "a", True)]
    records += [record("cross_task", "b", False), record("cross_task", "b", False)]
    records += [record("cross_website", "c", True), record("cross_website", "c", False)]
    summary = m2w.summarize(json.loads(json.dumps(records)))
    assert summary["splits"]["cross_domain"]["step_accuracy"] == 1.0
    assert summary["splits"]["cross_task"]["step_accuracy"] == 0.0
    assert summary["splits"]["cross_website"]["step_accuracy"] == 0.5
    assert summary["step_accuracy"] == pytest.approx(0.5)
    assert summary["total_tasks"] == 3


def test_macro_average_pads_missing_steps_with_zeros() -> None:
    records = [record("cross_task", "a", True, total=4), record("cross_task", "a", True, total=4)]
    records += [record("cross_task", "b", True, total=1)]
    split = m2w.summarize(records)["splits"]["cross_task"]
    assert split["step_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert split["micro_step_accuracy"] == pytest.approx(3 / 5)
    assert split["padded_steps"] == 2 and split["scored_steps"] == 3
    assert split["error_ratio"] == {"0": 0.5, "2": 0.5}
    assert list(m2w.summarize(records)["splits"]) == ["cross_task"]
    assert m2w.summarize([])["step_accuracy"] is None


def test_score_rejects_a_block_that_does_not_exist(data_dir: Path, images_dir: Path) -> None:
    sample = m2w.load(data_dir, images_dir).samples[0]
    with pytest.raises(ValueError, match="no block 3"):
        m2w.score(sample, Action(ActionType.CLICK, point=(0.5, 0.5)), block=3)


# --- issue 8: TYPE steps from multi-action outputs, wholly skipped tasks -------------------------------

TYPE_BOX_POINT = "x=200, y=343"
"""Inside the cross_domain TYPE target (33, 320.4375, 570.73, 54) in the 1288 x 1008 model frame of a
1280 x 1000 block (200 px = 0.155 across, 343 px = 0.34 down)."""


def opencua(*code: str) -> str:
    """An OpenCUA answer in its documented sections, with these code lines."""
    lines = "\n".join(code)
    return f"## Thought:\nI type it.\n\n## Action:\nType the zip code.\n\n## Code:\n```python\n{lines}\n```\n"


def test_click_then_write_is_a_type_at_the_click_for_both_families(data_dir: Path, images_dir: Path) -> None:
    """Issue 8 item 9: a TYPE step could never be step-correct: OpenCUA's click + write was scored on
    the click alone (operation F1 0), UI-TARS's click + type likewise."""
    typed = m2w.load(data_dir, images_dir, "cross_domain").samples[1]  # TYPE 123456
    answers = {
        "opencua": [
            opencua(f"pyautogui.click({TYPE_BOX_POINT})", "pyautogui.write(message='123456')"),
            opencua(
                f"pyautogui.tripleClick({TYPE_BOX_POINT})",
                "pyautogui.hotkey('ctrl', 'a')",
                "pyautogui.write('123456')",
                "pyautogui.press('enter')",
            ),
        ],
        "ui-tars": [
            "Thought: Type the zip code.\nAction: click(point='<point>200 343</point>')\n\n"
            "type(content='123456')",
            "Thought: Type the zip code.\nAction: click(start_box='(200,343)')\ntype(content='123456\\n')",
        ],
    }
    for family, outputs in answers.items():
        for output in outputs:
            record = m2w.score(typed, FAMILIES[family].parse(output, BLOCK))
            assert record["step_correct"], (family, output, record)
    action = m2w.web_action(FAMILIES["opencua"].parse(answers["opencua"][0], BLOCK))
    assert action.type is ActionType.TYPE and action.text == "123456"


def test_an_answer_in_the_web_prompts_own_type_form_can_be_step_correct(
    data_dir: Path, images_dir: Path
) -> None:
    """Prompt and metric agree (issue 16): the UI-TARS web prompt's `type` line, filled in with a
    point inside the target textbox and the value, is a step-correct TYPE. (The original's line,
    `type(content='xxx')`, named no point, so an answer that followed it could not be.)"""
    typed = m2w.load(data_dir, images_dir, "cross_domain").samples[1]  # TYPE 123456
    [line] = [line for line in ui_tars.WEB_PROMPT.splitlines() if line.startswith("- type(")]
    call = line.removeprefix("- ").split(" #")[0].replace("x1 y1", "200 343").replace("xxx", "123456")
    answer = f"Thought: Type the zip code.\nAction: {call}"
    record = m2w.score(typed, FAMILIES["ui-tars"].parse(answer, BLOCK))
    assert record["element_correct"] and record["step_correct"], (call, record)


def test_a_type_without_a_point_earns_no_element_credit(data_dir: Path, images_dir: Path) -> None:
    """UI-TARS's web `type(content=...)` names no element: right operation, no element credit
    (docs/metrics.md); a click elsewhere, or typing before clicking, does not move it."""
    samples = m2w.load(data_dir, images_dir, "cross_domain").samples
    typed, click = samples[1], samples[0]
    bare = m2w.score(
        typed, FAMILIES["ui-tars"].parse("Thought: Type.\nAction: type(content='123456')", BLOCK)
    )
    assert bare["operation_f1"] == 1.0 and not bare["element_correct"] and not bare["step_correct"]
    later = opencua("pyautogui.write(message='123456')", f"pyautogui.click({TYPE_BOX_POINT})")
    assert not m2w.score(typed, FAMILIES["opencua"].parse(later, BLOCK))["element_correct"]
    target = "x=1108, y=722"  # inside the CLICK target (962.5, 688.25, 279.5, 54) of sample 0
    clicked = opencua(f"pyautogui.click({target})", "pyautogui.scroll(-3)")
    assert m2w.score(click, FAMILIES["opencua"].parse(clicked, BLOCK))["step_correct"]


def test_wholly_skipped_tasks_count_as_zero(data_dir: Path, images_dir: Path) -> None:
    """Issue 8 item 10: a task whose every step lacks its screenshot vanished from the macro average,
    while a task with some steps skipped counted them as wrong."""
    rows = lines(data_dir, "cross_task")
    for row in rows:
        shutil.rmtree(images_dir / "cross_task" / row["blocks_path"])
    loaded = m2w.load(data_dir, images_dir)
    assert len(loaded.skipped) == 3 and len(loaded.samples) == 6
    records = [run_oracle(sample)[0] for sample in loaded.samples]
    summary = m2w.summarize(records, [skipped.sample_id for skipped in loaded.skipped])
    task = summary["splits"]["cross_task"]
    assert task["step_accuracy"] == 0.0 and task["total_tasks"] == 1 and task["wholly_skipped_tasks"] == 1
    assert task["padded_steps"] == 3 and task["error_ratio"] == {"3": 1.0}
    assert task["without_wholly_skipped_tasks"]["step_accuracy"] is None
    assert summary["step_accuracy"] == pytest.approx(2 / 3)
    assert summary["element_accuracy"] == pytest.approx(2 / 3)
    assert summary["wholly_skipped_tasks"] == 1 and summary["total_tasks"] == 3
    assert summary["without_wholly_skipped_tasks"] == {
        "element_accuracy": 1.0,
        "operation_f1": 1.0,
        "step_accuracy": 1.0,
    }


def test_partly_and_wholly_skipped_tasks_in_one_split() -> None:
    records = [record("cross_task", "a", True, total=2), record("cross_task", "a", True, total=2)]
    records += [record("cross_task", "b", True, total=2)]
    skipped = ["cross_task/b/u2", "cross_task/c/u1", "cross_task/c/u2"]
    split = m2w.summarize(records, skipped)["splits"]["cross_task"]
    assert split["step_accuracy"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert split["without_wholly_skipped_tasks"]["step_accuracy"] == pytest.approx(0.75)
    assert split["wholly_skipped_tasks"] == 1 and split["total_tasks"] == 3
    assert split["micro_step_accuracy"] == pytest.approx(3 / 6)
    assert m2w.summarize(records)["splits"]["cross_task"]["wholly_skipped_tasks"] == 0
