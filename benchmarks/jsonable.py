"""Loader samples to JSON and back, so a trace can hold what a metric needs to score an output again.

`to_json` writes dataclasses as objects of their fields, tuples as lists, paths as strings.
`from_json(kind, value)` rebuilds a value of type `kind` from that JSON by the dataclasses' type
hints (nested dataclasses, `tuple[X, ...]`, fixed tuples, `X | None`, `dict[int, X]`, `Path`), so a
benchmark's sample class needs no code of its own to be stored. Anything that does not fit the
hints is a `ValueError` naming the field path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any


def to_json(value: Any) -> Any:
    """Dataclasses, paths, tuples and dict keys as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    return value


def from_json(kind: Any, value: Any, where: str = "") -> Any:
    """`value` (as `to_json` wrote it) rebuilt as type `kind`; `where` is the field path for errors."""
    if kind is Any:
        return value
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union or origin is types.UnionType:
        return _union(args, value, where)
    if dataclasses.is_dataclass(kind):
        return _dataclass(kind, value, where)
    if origin is tuple:
        return _tuple(args, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where or 'value'}: expected an object, got {type(value).__name__}")
        key_kind, item_kind = args
        return {
            from_json(key_kind, key, f"{where}.{key}"): from_json(item_kind, item, f"{where}.{key}")
            for key, item in value.items()
        }
    return _scalar(kind, value, where)


def _union(args: tuple[Any, ...], value: Any, where: str) -> Any:
    """A value of `X | None` or of a union of scalars (`int | str`)."""
    if value is None and type(None) in args:
        return None
    options = [arg for arg in args if arg is not type(None)]
    for option in options:
        plain = typing.get_origin(option) is None and isinstance(option, type)
        if plain and not dataclasses.is_dataclass(option) and _is(option, value):
            return value
    if len(options) == 1:
        return from_json(options[0], value, where)
    raise ValueError(f"{where or 'value'}: {value!r} is none of {', '.join(map(str, options))}")


def _dataclass(kind: type, value: Any, where: str) -> Any:
    """A dataclass from an object of its fields (a missing field takes its default)."""
    if not isinstance(value, dict):
        raise ValueError(f"{where or kind.__name__}: expected an object, got {type(value).__name__}")
    hints = typing.get_type_hints(kind)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(kind):
        if field.name in value:
            fields[field.name] = from_json(hints[field.name], value[field.name], _join(where, field.name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ValueError(f"{_join(where, field.name)}: missing")
    return kind(**fields)


def _tuple(args: tuple[Any, ...], value: Any, where: str) -> tuple[Any, ...]:
    """`tuple[X, ...]` or a fixed-length tuple from a list."""
    if not isinstance(value, list):
        raise ValueError(f"{where or 'value'}: expected a list, got {type(value).__name__}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(from_json(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if len(args) != len(value):
        raise ValueError(f"{where or 'value'}: expected {len(args)} items, got {len(value)}")
    pairs = enumerate(zip(args, value, strict=True))
    return tuple(from_json(arg, item, f"{where}[{i}]") for i, (arg, item) in pairs)


def _scalar(kind: Any, value: Any, where: str) -> Any:
    """A path, number, string or boolean (an int key written as a string becomes an int again)."""
    if kind is Path and isinstance(value, str):
        return Path(value)
    if kind is int and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if kind is float and _is(int, value):
        return float(value)
    if isinstance(kind, type) and _is(kind, value):
        return value
    raise ValueError(f"{where or 'value'}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def _is(kind: type, value: Any) -> bool:
    """isinstance, except that a boolean is not an int or a float."""
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, kind)


def _join(where: str, name: str) -> str:
    """A dotted field path."""
    return f"{where}.{name}" if where else name
