"""Pieces every benchmark module shares: data errors that name the file and field, strict JSON and JSONL
readers, typed field access for records, point-in-box tests, image sizes, averaging, and the shapes a
loader returns and the registry holds.

JSON is read with the standard library rather than `datasets`: the files are small, a loader must say
on which line a record is malformed and which field is wrong (`datasets` reports "row N" of an Arrow
conversion, or only "An error occurred while generating the dataset"), and it must not write a cache
into the user's Hugging Face directory just to read a few hundred records.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from PIL import Image, UnidentifiedImageError

from guikv.agents.action import Action, ActionType
from guikv.errors import UserInputError

Box = tuple[float, float, float, float]
"""A box as four numbers; whether they are [x, y, w, h] or [x1, y1, x2, y2] is said where it is used."""

S = TypeVar("S")

Prediction = Action | Sequence[Action]
"""What a metric scores: every action parsed from one model output, in order (a lone `Action` is
read as a one-action output). Metrics are pure functions of this and the sample, so a stored raw
output can be re-parsed and re-scored at any time."""

_MISSING: Any = object()


class DataError(UserInputError):
    """A benchmark file is missing, laid out wrongly, malformed, or a record lacks a field.

    The message names the file, where in it (line or record), the field, and what was expected, so a
    user can fix the data without reading our code.
    """

    def __init__(
        self, path: Path, expected: str, *, field: str | None = None, where: str | None = None
    ) -> None:
        self.path = path
        self.field = field
        self.where = where
        self.expected = expected
        location = f" ({where})" if where else ""
        subject = f"field '{field}': " if field else ""
        super().__init__(f"{path}{location}: {subject}expected {expected}")


@dataclass(frozen=True)
class SkippedSample:
    """A sample the loader could not offer, with the reason and the files it looked for and did not find."""

    sample_id: str
    reason: str
    missing: tuple[Path, ...] = ()


@dataclass(frozen=True)
class LoadResult(Generic[S]):
    """What a loader returns: the samples in a deterministic order, the samples skipped because files
    are missing (never dropped silently), and records excluded by the benchmark's own rules (e.g.
    ScreenSpot-Pro's non-English or negative records)."""

    samples: tuple[S, ...]
    skipped: tuple[SkippedSample, ...] = ()
    excluded: tuple[SkippedSample, ...] = ()


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything a runner or CLI needs to know about one benchmark, without importing its module.

    `load(data_dir, images_dir, split=None, limit=None, **options) -> LoadResult`,
    `score(sample, prediction, ...) -> dict` (JSON-ready score fields for one sample; `prediction` is
    every action parsed from the output, see `Prediction`), `summarize(records, skipped=(),
    failed=()) -> dict` (from score fields only, plus the ids of the samples the loader skipped and
    of the samples whose generation failed, which have no record; Mind2Web needs both to pad each
    task to its `total_steps`),
    `ground_truth_action(sample, ...) -> Action` (the oracle). `metric_columns` are the summary keys
    a results table shows, best first. `splits` lists the fixed split names (ScreenSpot-Pro also
    accepts the stem of any of its annotation files).
    """

    name: str
    title: str
    data_env: str
    images_env: str
    splits: tuple[str, ...]
    default_split: str
    metric_columns: tuple[str, ...]
    max_new_tokens: int
    load: Callable[..., LoadResult[Any]]
    score: Callable[..., dict[str, Any]]
    summarize: Callable[[list[dict[str, Any]]], dict[str, Any]]
    ground_truth_action: Callable[..., Action]


def check_split(split: str | None, allowed: Sequence[str], default: str) -> str:
    """Return the split to load (`default` when None) or raise naming `--split` and the allowed values."""
    if split is None:
        return default
    if split not in allowed:
        raise UserInputError(f"--split: unknown value '{split}'; expected one of: {', '.join(allowed)}")
    return split


def check_limit(limit: int | None) -> int | None:
    """Validate a `--debug N` style limit (first N records per file); None means no limit."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserInputError(f"--debug: expected a positive integer, got {limit!r}")
    return limit


def require_dir(path: Path, what: str, env: str) -> Path:
    """Return `path` if it is a directory, else raise a `DataError` naming the env var that sets it."""
    if not path.is_dir():
        raise DataError(path, f"a directory holding {what} (set {env} or the matching flag)")
    return path


def read_json(path: Path) -> Any:
    """Parse a JSON file; a missing file or a syntax error becomes a `DataError` with line and column."""
    if not path.is_file():
        raise DataError(path, "an existing JSON file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(path, f"UTF-8 text ({err.reason} at byte {err.start})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise DataError(path, f"valid JSON ({err.msg})", where=where) from err


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """Parse a JSON-lines file into (line number, value) pairs, skipping blank lines; a bad line
    becomes a `DataError` naming it."""
    if not path.is_file():
        raise DataError(path, "an existing JSONL file")
    rows: list[tuple[int, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                expected = f"one JSON object per line ({err.msg})"
                raise DataError(path, expected, where=f"line {number}") from err
    return rows


def json_list(value: Any, path: Path) -> list[Any]:
    """Check that a parsed JSON document is an array of records."""
    if not isinstance(value, list):
        raise DataError(path, f"a JSON array of records, got {type(value).__name__}")
    return value


class Fields:
    """Typed, checked access to one record's fields, raising `DataError`s that name the file, the
    record's position and the field path (e.g. `steps[2].ground_truth_actions[0].params.position`)."""

    def __init__(self, record: Any, path: Path, where: str, prefix: str = "") -> None:
        self.path = path
        self.where = where
        self.prefix = prefix
        if not isinstance(record, dict):
            raise DataError(
                path, f"a JSON object, got {type(record).__name__}", field=prefix or None, where=where
            )
        self.record: dict[str, Any] = record

    def name(self, key: str) -> str:
        """The full dotted path of `key` inside the file's record, for messages."""
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, expected: str) -> DataError:
        """A `DataError` about `key` of this record."""
        return DataError(self.path, expected, field=self.name(key), where=self.where)

    def has(self, key: str) -> bool:
        """Whether the record has `key` with a non-null value."""
        return self.record.get(key) is not None

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        """The value of `key`, or `default` when absent or null; required when no default is given."""
        value = self.record.get(key)
        if value is None:
            if default is _MISSING:
                raise self.error(key, "a value (the field is required)")
            return default
        return value

    def text(self, key: str, default: Any = _MISSING) -> Any:
        """A string field."""
        value = self.raw(key, default)
        if value is not default and not isinstance(value, str):
            raise self.error(key, f"a string, got {json.dumps(value)[:60]}")
        return value

    def integer(self, key: str, default: Any = _MISSING) -> Any:
        """An integer field (booleans are refused; a float with an integral value is accepted)."""
        value = self.raw(key, default)
        if value is default:
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"an integer, got {json.dumps(value)[:60]}")
        return value

    def number(self, key: str, default: Any = _MISSING) -> Any:
        """A finite number field, returned as float."""
        value = self.raw(key, default)
        if value is default:
            return value
        return as_number(value, lambda: self.error(key, f"a number, got {json.dumps(value)[:60]}"))

    def flag(self, key: str, default: Any = _MISSING) -> Any:
        """A boolean field."""
        value = self.raw(key, default)
        if value is not default and not isinstance(value, bool):
            raise self.error(key, f"true or false, got {json.dumps(value)[:60]}")
        return value

    def items(self, key: str, default: Any = _MISSING) -> Any:
        """A list field."""
        value = self.raw(key, default)
        if value is not default and not isinstance(value, list):
            raise self.error(key, f"a list, got {json.dumps(value)[:60]}")
        return value

    def texts(self, key: str, default: Any = _MISSING) -> Any:
        """A list of strings, returned as a tuple."""
        value = self.items(key, default)
        if value is default:
            return value
        if not all(isinstance(item, str) for item in value):
            raise self.error(key, "a list of strings")
        return tuple(value)

    def box(self, key: str) -> Box:
        """Four numbers (a bounding box in whichever convention the benchmark uses)."""
        return as_box(self.raw(key), lambda: self.error(key, "a list of 4 numbers"))

    def child(self, key: str) -> Fields:
        """The nested object at `key`, as `Fields` carrying the longer field path."""
        return Fields(self.raw(key), self.path, self.where, self.name(key))


def as_number(value: Any, error: Callable[[], DataError]) -> float:
    """`value` as a finite float, or raise the given error."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise error()
    return float(value)


def as_box(value: Any, error: Callable[[], DataError]) -> Box:
    """`value` as four finite floats, or raise the given error."""
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise error()
    x, y, z, w = (as_number(item, error) for item in value)
    return (x, y, z, w)


def point_in_xyxy(point: tuple[float, float], box: Box, tol: float = 1e-9) -> bool:
    """Whether `point` lies in the box [x1, y1, x2, y2], edges included (the benchmarks' rule), with a
    tolerance so that a point written exactly on an edge survives a float round trip."""
    x, y = point
    x1, y1, x2, y2 = box
    return x1 - tol <= x <= x2 + tol and y1 - tol <= y <= y2 + tol


def point_in_xywh(point: tuple[float, float], box: Box, tol: float = 1e-9) -> bool:
    """Whether `point` lies in the box [x, y, w, h], edges included."""
    x, y, w, h = box
    return point_in_xyxy(point, (x, y, x + w, y + h), tol)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header only; an unreadable file is a `DataError`."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(path, f"a readable image ({err})") from err


def mean(values: Iterable[float]) -> float | None:
    """The arithmetic mean, or None for no values (JSON null rather than a division by zero)."""
    items = list(values)
    return sum(items) / len(items) if items else None


def macro_mean(groups: Mapping[Any, Sequence[float]]) -> float | None:
    """Mean over groups of each group's mean: every group (task, trajectory, split) weighs the same."""
    return mean(m for m in (mean(values) for values in groups.values()) if m is not None)


def rate(hits: int, total: int) -> float | None:
    """hits / total, or None when there is nothing to count."""
    return hits / total if total else None


@dataclass
class Tally:
    """A running count of correct out of total, for per-group accuracy breakdowns."""

    correct: int = 0
    total: int = 0

    def add(self, correct: bool) -> None:
        """Count one sample."""
        self.total += 1
        self.correct += int(correct)

    def as_dict(self) -> dict[str, Any]:
        """{accuracy, correct, total} ready for JSON."""
        return {"accuracy": rate(self.correct, self.total), "correct": self.correct, "total": self.total}


def breakdown(records: Iterable[Mapping[str, Any]], key: str, flag: str) -> dict[str, dict[str, Any]]:
    """Accuracy of the boolean score field `flag` per value of the field `key`, keys sorted."""
    tallies: dict[str, Tally] = {}
    for record in records:
        tallies.setdefault(str(record.get(key)), Tally()).add(bool(record[flag]))
    return {name: tallies[name].as_dict() for name in sorted(tallies)}


FAILURE_WORDS = ("unsuccessful", "infeasible", "impossible", "cannot", "can't", "unable", "fail", "error")
"""Words that make a free-text `finished(content=...)` mean the task could not be done (the list the
original AndroidControl evaluation uses), checked before any 'success' test so that 'unsuccessful'
is not read as a success."""


def finished_failed(text: str | None) -> bool:
    """Whether the content of a `finished` action reports failure rather than success.

    No content at all (`finished()`, `finished(content='')`, `computer.terminate()`) is a failure: the
    agent stopped without claiming success, and the original AgentNetBench conversion counted it so.
    """
    lowered = (text or "").strip().lower()
    return not lowered or any(word in lowered for word in FAILURE_WORDS)


_KEY_ALIASES: dict[str, str] = {
    "control": "ctrl",
    "ctl": "ctrl",
    "ctrlleft": "ctrl",
    "ctrlright": "ctrl",
    "command": "cmd",
    "meta": "cmd",
    "super": "cmd",
    "win": "cmd",
    "windows": "cmd",
    "winleft": "cmd",
    "winright": "cmd",
    "option": "alt",
    "altleft": "alt",
    "altright": "alt",
    "shiftleft": "shift",
    "shiftright": "shift",
    "return": "enter",
    "\n": "enter",
    "esc": "escape",
    "del": "delete",
    "back_space": "backspace",
    "pgup": "pageup",
    "page_up": "pageup",
    "pgdn": "pagedown",
    "page_down": "pagedown",
    "arrowup": "up",
    "arrowdown": "down",
    "arrowleft": "left",
    "arrowright": "right",
    "spacebar": "space",
    " ": "space",
}
"""Names of one physical key across pyautogui, UI-TARS and OpenCUA spellings, mapped to one name.
`cmd` stands for the OS key (Command on macOS, Windows key on Windows); it is NOT an alias of ctrl."""


def canonical_key(key: str) -> str:
    """One key name, lower-cased and mapped through the alias table (ctrl/control, enter/return...)."""
    lowered = key.lower() if key in ("\n", " ") else key.strip().lower()
    for prefix in ("arrow_", "key_"):
        if lowered.startswith(prefix) and len(lowered) > len(prefix):
            lowered = lowered[len(prefix) :]
    return _KEY_ALIASES.get(lowered, lowered)


def canonical_keys(keys: Sequence[str]) -> frozenset[str]:
    """The set of canonical key names of a press/hotkey; 'ctrl+c' style combined names are split."""
    names: list[str] = []
    for key in keys:
        parts = key.split("+") if "+" in key and key.strip() != "+" else [key]
        names.extend(canonical_key(part) for part in parts if part != "")
    return frozenset(names)


def as_actions(prediction: Prediction) -> tuple[Action, ...]:
    """The actions of one model output in order; a lone `Action` is a one-action output, and an empty
    sequence an unparsed one (so every metric can read the first action)."""
    if isinstance(prediction, Action):
        return (prediction,)
    return tuple(prediction) or (Action.unparsed(""),)


def is_enter(action: Action) -> bool:
    """Whether an action is a press (or one-key hotkey) of Enter / Return: the submit keystroke."""
    return action.type in (ActionType.PRESS, ActionType.HOTKEY) and canonical_keys(action.keys) == {"enter"}


def submitted(text: str | None) -> bool:
    """Whether typed text ends with a newline (spaces and tabs after it ignored): it is submitted."""
    return (text or "").rstrip(" \t").endswith("\n")


def fold_actions(prediction: Prediction) -> tuple[Action, ...]:
    """The actions of one output with the two-action idioms folded into the one action they perform,
    the same way the ground truth is read (OpenCUA's AgentNetBench evaluator folds both sides):

    - a `type` followed by Enter is one `type` whose text has the newline appended, a submitted
      text (OpenCUA writes `write(t)` + `press('enter')` where UI-TARS writes `type('t\\n')`);
    - a `move_to` followed by a `drag` is one `drag` from the `move_to` point (OpenCUA writes
      `moveTo(start)` + `dragTo(end)` where UI-TARS writes `drag(start, end)`).

    Every other action is kept as it is, in order.
    """
    folded: list[Action] = []
    for action in as_actions(prediction):
        previous = folded[-1] if folded else None
        if previous is not None and previous.type is ActionType.TYPE and is_enter(action):
            folded[-1] = dataclasses.replace(previous, text=(previous.text or "") + "\n")
        elif previous is not None and previous.type is ActionType.MOVE_TO and action.type is ActionType.DRAG:
            folded[-1] = dataclasses.replace(action, point=action.point or previous.point)
        else:
            folded.append(action)
    return tuple(folded)
