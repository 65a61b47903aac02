"""The typed action every agent family's output is parsed into.

Coordinates are always normalised to 0-1 of the *original* screenshot, so metrics and pictures
never need to know which resize the model saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class ActionType(str, Enum):
    """Every kind of GUI action an agent can emit, across desktop, mobile and web action spaces."""

    CLICK = "click"
    DOUBLE_CLICK = "double_click"
    RIGHT_CLICK = "right_click"
    TRIPLE_CLICK = "triple_click"
    MOVE_TO = "move_to"
    DRAG = "drag"
    HOTKEY = "hotkey"
    PRESS = "press"
    TYPE = "type"
    SCROLL = "scroll"
    WAIT = "wait"
    FINISHED = "finished"
    LONG_PRESS = "long_press"
    OPEN_APP = "open_app"
    PRESS_BACK = "press_back"
    PRESS_HOME = "press_home"
    SELECT = "select"
    UNPARSED = "unparsed"


Point = tuple[float, float]

POINTING_TYPES: tuple[ActionType, ...] = (
    ActionType.CLICK,
    ActionType.DOUBLE_CLICK,
    ActionType.RIGHT_CLICK,
    ActionType.TRIPLE_CLICK,
    ActionType.MOVE_TO,
    ActionType.LONG_PRESS,
)
"""Actions that are nothing but a point: every family writes them as a function of one point."""


@dataclass(frozen=True)
class Action:
    """One parsed agent action.

    `point` is where the action happens (click target, scroll anchor, drag start), `end_point` the
    drag end, both normalised to 0-1 of the original screenshot. `text` carries typed content, the
    finished status, the app name or the selected option; `keys` the keys of a hotkey/press;
    `direction` the scroll direction (up/down/left/right) and `amount` a signed scroll amount when
    the family gives one. `raw` is the model's whole output, kept so nothing is lost.
    """

    type: ActionType
    point: Point | None = None
    end_point: Point | None = None
    text: str | None = None
    keys: tuple[str, ...] = ()
    direction: str | None = None
    amount: int | None = None
    thought: str = ""
    raw: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def parsed(self) -> bool:
        """Whether the model output could be turned into an action at all."""
        return self.type is not ActionType.UNPARSED

    def require(self, which: str = "point") -> Point:
        """The action's `point` or `end_point`, for code that cannot do without it (a formatter
        cannot write a click without a target): a `ValueError` naming the action when it is None."""
        point = getattr(self, which)
        if point is None:
            raise ValueError(f"a {self.type.value} action needs a {which} to be formatted: {self}")
        return point

    def pixel_point(self, width: int, height: int) -> tuple[int, int] | None:
        """The action point in pixels of a screenshot of the given size."""
        if self.point is None:
            return None
        return round(self.point[0] * width), round(self.point[1] * height)

    def comparable(self) -> tuple[Any, ...]:
        """What two outputs must share to take the same action: the type's name first, then the
        points, text, keys, direction and amount (not the thought or the raw text)."""
        fields = (self.point, self.end_point, self.text, self.keys, self.direction, self.amount)
        return (self.type.value, *fields)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the inverse of `from_dict`)."""
        return {
            "type": self.type.value,
            "point": list(self.point) if self.point is not None else None,
            "end_point": list(self.end_point) if self.end_point is not None else None,
            "text": self.text,
            "keys": list(self.keys),
            "direction": self.direction,
            "amount": self.amount,
            "thought": self.thought,
            "raw": self.raw,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Action:
        """Rebuild an action written by `to_dict` (e.g. from a JSONL trace)."""
        return cls(
            type=ActionType(data["type"]),
            point=tuple(data["point"]) if data.get("point") is not None else None,
            end_point=tuple(data["end_point"]) if data.get("end_point") is not None else None,
            text=data.get("text"),
            keys=tuple(data.get("keys") or ()),
            direction=data.get("direction"),
            amount=data.get("amount"),
            thought=data.get("thought", ""),
            raw=data.get("raw", ""),
            extra=dict(data.get("extra") or {}),
        )

    @classmethod
    def unparsed(cls, raw: str) -> Action:
        """The action for a model output no parser could read; not an error, just uncredited."""
        return cls(type=ActionType.UNPARSED, raw=raw)
