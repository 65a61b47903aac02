"""What every family's parser promises on any text, checked the same way for each family."""

from __future__ import annotations

from guikv.agents.action import Action


def assert_total_parse(actions: list[Action], text: str) -> None:
    """Parsing never fails: at least one action, each carrying the raw text; an unreadable call
    is an `unparsed` action in its place, and an output with nothing readable is exactly one."""
    assert actions and all(isinstance(action, Action) for action in actions)
    for action in actions:
        assert action.raw == text
        if not action.parsed:
            assert action == Action.unparsed(text)
    if not any(action.parsed for action in actions):
        assert len(actions) == 1
