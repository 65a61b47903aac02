"""`--set KNOB=VALUE`: any `CompressionConfig` field without a flag of its own, for every command
that compresses (`infer`, `eval`, `compare`, `serve`), one implementation.

A knob's value is converted to its field's type (`true`/`false`, integers, numbers, text), and each
mistake is one `UserInputError` line naming `--set`: a malformed pair, an unknown knob (with the
closest name, or the flag a knob has of its own), a value of the wrong type or one the config
refuses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from benchmarks.flags import compression_config
from guikv.config import CompressionConfig
from guikv.errors import UserInputError, did_you_mean

FLAG_KNOBS = ("method", "budget", "alpha", "temperature", "window_size")
"""The CompressionConfig fields that have a flag of their own (so `--set` refuses them)."""

KNOB_TYPES: dict[str, type] = {
    f.name: type(f.default) for f in fields(CompressionConfig) if f.name not in FLAG_KNOBS
}
"""Every knob `--set` takes, with the type of its value."""

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def knob_settings(pairs: Sequence[str], own_flags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`--set KNOB=VALUE` values as CompressionConfig fields, each converted to its field's type; a
    malformed pair, an unknown knob or a value of the wrong type is one `UserInputError` line.
    `own_flags` names the command's flag for a knob that has one (default `--method`, `--budget`,
    ...: `eval` and `compare` sweep budgets with `--budgets`)."""
    flags = {name: "--" + name.replace("_", "-") for name in FLAG_KNOBS} | dict(own_flags or {})
    knobs: dict[str, Any] = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not equals or not name:
            raise UserInputError(
                f"--set {pair!r} is malformed: expected KNOB=VALUE, e.g. st_lite_variant=paper"
            )
        if name not in KNOB_TYPES:
            hint = f" (use {flags[name]})" if name in flags else did_you_mean(name, KNOB_TYPES)
            raise UserInputError(
                f"--set {name} is unknown{hint}: expected one of {', '.join(sorted(KNOB_TYPES))}"
            )
        knobs[name] = _knob_value(name, text.strip(), KNOB_TYPES[name])
    return knobs


def config_with_knobs(knobs: Mapping[str, Any], **flags: Any) -> CompressionConfig:
    """The CompressionConfig of the flags (and any other fields) and the `--set` knobs; a knob's
    invalid value is one line naming `--set KNOB=VALUE`, a flag's one naming the flag."""
    try:
        return compression_config(**flags, **knobs)
    except UserInputError as error:
        match = re.match(r"CompressionConfig\.(\w+)=(.*?) is invalid: (.*)", str(error))
        if match is None or match.group(1) not in knobs:
            raise
        raise UserInputError(
            f"--set {match.group(1)}={match.group(2)} is invalid: {match.group(3)}"
        ) from None


def _knob_value(name: str, text: str, kind: type) -> Any:
    """`text` as a value of `kind` (bool, int, float or str) for `--set name=...`."""
    if kind is bool:
        if text.lower() in (*_TRUE, *_FALSE):
            return text.lower() in _TRUE
        raise UserInputError(f"--set {name}={text} is invalid: expected true or false")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise UserInputError(f"--set {name}={text} is invalid: expected {expected}") from None
    return text
