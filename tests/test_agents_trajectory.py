"""The native multi-turn layout (`AgentFamily.trajectory_messages`): instruction first, a screenshot
turn and an answer turn per step, the current screenshot last; each step extends the previous
one's conversation; the screenshot window drops old screenshot turns and keeps every answer."""

from __future__ import annotations

import pytest

from guikv.agents import get_family
from guikv.errors import UserInputError


@pytest.mark.parametrize("name", ["ui-tars", "opencua"])
def test_each_step_extends_the_previous_conversation(name: str):
    family = get_family(name)
    shots = ["s0.png", "s1.png", "s2.png"]
    answers = ["Action: click(point='<point>1 2</point>')", "Action: wait()"]
    first = family.trajectory_messages("Open it", shots[:1], [])
    second = family.trajectory_messages("Open it", shots[:2], answers[:1])
    third = family.trajectory_messages("Open it", shots, answers)
    assert [m["role"] for m in third] == ["user", "user", "assistant", "user", "assistant", "user"]
    assert "Open it" in third[0]["content"][0]["text"]
    assert second[: len(first)] == first and third[: len(second) + 1] == [*second, third[len(second)]]
    assert third[-1]["content"] == [{"type": "image", "image": "s2.png"}]


def test_the_window_drops_old_screenshots_and_keeps_every_answer():
    family = get_family("ui-tars")
    messages = family.trajectory_messages("Open it", ["a", "b", "c", "d"], ["1", "2", "3"], max_screenshots=2)
    images = [
        item["image"]
        for m in messages
        if isinstance(m["content"], list)
        for item in m["content"]
        if item["type"] == "image"
    ]
    assert images == ["c", "d"]
    assert [m["content"] for m in messages if m["role"] == "assistant"] == ["1", "2", "3"]


def test_a_step_count_that_does_not_add_up_is_refused():
    family = get_family("ui-tars")
    with pytest.raises(UserInputError, match="answers must have one entry per earlier step"):
        family.trajectory_messages("Open it", ["a", "b"], [])
    with pytest.raises(UserInputError, match="max_screenshots must be >= 1"):
        family.trajectory_messages("Open it", ["a"], [], max_screenshots=0)
