"""CompressionConfig: which method, how much of the prompt to keep, and the method's knobs.

One object describes a compression run completely, so it can be written next to results (YAML/JSON)
and read back to reproduce them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from guikv.errors import did_you_mean

METHODS: tuple[str, ...] = (
    "full",
    "snapkv",
    "pyramidkv",
    "vlcache",
    "gui_kv",
    "st_lite",
    "star_kv",
    "streamingllm",
    "random",
)
"""Every method name `compress` and `select_tokens` accept."""

FULL_BUDGET = 100.0
"""The budget of the `full` method, whatever was asked: it keeps every token, so its label, run
directory, table row and figure point all read 100%."""

POOLINGS = ("avgpool", "maxpool")
HEAD_AGGREGATIONS = ("mean", "max")
SUBSPACES = ("qr", "svd")
ST_LITE_VARIANTS = ("code", "paper")


def uniform_capacity(prompt_tokens: int, budget: float) -> int:
    """The per-layer capacity every method starts from: how many of a `prompt_tokens`-token prompt's
    positions a layer keeps at `budget` percent, observation window included (at least 1).

    C = floor(L * b / 100), computed exactly on the budget as written (its shortest decimal form), so
    29% of 100 tokens is 29 and 9.2% of 750 is 69. The releases compute `int(L * (b / 100))` in
    floating point, one token less where b / 100 has no exact binary form and the product is a whole
    number (29, 35, 41, 47, 57, 58, 69, 70, 82, 94% at some L); at the budgets their scripts run
    (1, 3, 5, 10, 15, 20, 40, 80%) the two agree for every prompt length: there b / 100 is either
    rounded up or off by less than half a unit in the last place of any product (docs/architecture.md).
    The compressor, `guikv.capacity`'s tables and the vLLM plugin's plan all take it from here.
    """
    return max(1, math.floor(Fraction(prompt_tokens) * Fraction(str(budget)) / 100))


def _fail(field: str, value: object, expected: str) -> None:
    raise ValueError(f"CompressionConfig.{field}={value!r} is invalid: expected {expected}")


def _fail_choice(field: str, value: object, choices: tuple[str, ...]) -> None:
    """A field that takes one of `choices` got another value: name them, and the closest one."""
    _fail(field, value, f"one of {', '.join(choices)}{did_you_mean(str(value), choices)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(config: object, field: str, minimum: int) -> None:
    value = getattr(config, field)
    if not _is_int(value) or value < minimum:
        _fail(field, value, f"an integer >= {minimum}")


def _check_number(config: object, field: str, low: float, high: float, *, open_high: bool = False) -> None:
    """A number in [low, high] (or [low, high) with open_high; high may be infinite)."""
    value = getattr(config, field)
    inside = _is_number(value) and low <= value and (value < high if open_high else value <= high)
    if not inside and high == float("inf"):
        _fail(field, value, f"a number >= {low:g}")
    if not inside:
        _fail(field, value, f"a number in [{low:g}, {high:g}{')' if open_high else ']'}")


def _check_bool(config: object, field: str) -> None:
    value = getattr(config, field)
    if not isinstance(value, bool):
        _fail(field, value, "true or false")


@dataclass(frozen=True)
class CompressionConfig:
    """A KV-cache compression setting.

    `budget` is the percentage of the prompt's tokens (text and image) kept per layer, the
    observation window included; the defaults are the paper's (window 8, avg-pool kernel 5,
    alpha 2, temperature 3.5, rank 32; `alpha` and `temperature` are shared by GUI-KV and STaR-KV).
    Method-specific knobs carry the method's name: `st_lite_variant` ("code", what the ST-Lite
    release computes, or "paper"), and `star_kv_*`, STaR-KV's release defaults
    (`examples/repro_ssp_kv.sh`): the MI prior (lambda, online profile steps, EMA decay, softmax tau,
    lambda ramp, position and value bins), the temporal discount (on, delta, rho, eps, discount
    floor, warm-up) and the entropy sharpening (on, scale range, smoothing). `verify=True` is a
    debug mode: once per `compress()`, the rebuilt window queries are checked against the attention
    kernel's own output on the first layer (w rows), so a model whose queries guikv cannot rebuild
    raises. Every field is validated on construction: a bad value raises `ValueError` naming the
    field and the allowed values. `full` keeps every token: its budget is always `FULL_BUDGET`.
    """

    method: str = "gui_kv"
    budget: float = 10.0
    window_size: int = 8
    kernel_size: int = 5
    pooling: str = "avgpool"
    head_aggregation: str = "mean"
    alpha: float = 2.0
    temperature: float = 3.5
    rank: int = 32
    subspace: str = "qr"
    pyramid_beta: int = 20
    sparsity_threshold: float = 0.01
    sink_tokens: int = 4
    seed: int = 0
    st_lite_variant: str = "code"
    star_kv_prior_lambda: float = 0.5
    star_kv_profile_steps: int = 5
    star_kv_profile_decay: float = 0.9
    star_kv_profile_tau: float = 1.0
    star_kv_lambda_ramp: int = 10
    star_kv_mi_position_bins: int = 12
    star_kv_mi_value_bins: int = 16
    star_kv_temporal: bool = True
    star_kv_temporal_delta: float = 0.1
    star_kv_temporal_rho: float = 0.9
    star_kv_temporal_eps: float = 0.0
    star_kv_discount_min: float = 0.0
    star_kv_temporal_warmup: int = 0
    star_kv_entropy: bool = True
    star_kv_entropy_min_scale: float = 0.75
    star_kv_entropy_max_scale: float = 1.25
    star_kv_entropy_smooth: float = 0.0
    verify: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            _fail_choice("method", self.method, METHODS)
        if self.method == "full":
            object.__setattr__(self, "budget", FULL_BUDGET)
        if not isinstance(self.budget, int | float) or not 0 < self.budget <= 100:
            _fail("budget", self.budget, "a percentage in (0, 100]")
        if not isinstance(self.window_size, int) or self.window_size < 1:
            _fail("window_size", self.window_size, "an integer >= 1")
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            _fail("kernel_size", self.kernel_size, "an odd integer >= 1")
        if self.pooling not in POOLINGS:
            _fail_choice("pooling", self.pooling, POOLINGS)
        if self.head_aggregation not in HEAD_AGGREGATIONS:
            _fail_choice("head_aggregation", self.head_aggregation, HEAD_AGGREGATIONS)
        if self.alpha < 0:
            _fail("alpha", self.alpha, "a number >= 0")
        if self.temperature <= 0:
            _fail("temperature", self.temperature, "a number > 0")
        if not isinstance(self.rank, int) or self.rank < 1:
            _fail("rank", self.rank, "an integer >= 1")
        if self.subspace not in SUBSPACES:
            _fail_choice("subspace", self.subspace, SUBSPACES)
        if not isinstance(self.pyramid_beta, int) or self.pyramid_beta < 1:
            _fail("pyramid_beta", self.pyramid_beta, "an integer >= 1")
        if not 0 < self.sparsity_threshold < 1:
            _fail("sparsity_threshold", self.sparsity_threshold, "a number in (0, 1)")
        if not isinstance(self.sink_tokens, int) or self.sink_tokens < 0:
            _fail("sink_tokens", self.sink_tokens, "an integer >= 0")
        self._validate_frontier_knobs()
        _check_bool(self, "verify")

    def _validate_frontier_knobs(self) -> None:
        """ST-Lite's and STaR-KV's knobs (the release's falsy-default quirks are not kept: a 0
        here means 0, where the release silently replaced lambda 0 by 0.5 and decay 0 by 0.9)."""
        if self.st_lite_variant not in ST_LITE_VARIANTS:
            _fail_choice("st_lite_variant", self.st_lite_variant, ST_LITE_VARIANTS)
        inf = float("inf")
        _check_number(self, "star_kv_prior_lambda", 0, 1)
        _check_int(self, "star_kv_profile_steps", 0)
        _check_number(self, "star_kv_profile_decay", 0, 1, open_high=True)
        if not _is_number(self.star_kv_profile_tau) or self.star_kv_profile_tau <= 0:
            _fail("star_kv_profile_tau", self.star_kv_profile_tau, "a number > 0")
        _check_int(self, "star_kv_lambda_ramp", 1)
        _check_int(self, "star_kv_mi_position_bins", 1)
        _check_int(self, "star_kv_mi_value_bins", 2)
        _check_bool(self, "star_kv_temporal")
        _check_number(self, "star_kv_temporal_delta", 0, inf, open_high=True)
        _check_number(self, "star_kv_temporal_rho", 0, 1, open_high=True)
        _check_number(self, "star_kv_temporal_eps", 0, 1)
        _check_number(self, "star_kv_discount_min", 0, 1)
        _check_int(self, "star_kv_temporal_warmup", 0)
        _check_bool(self, "star_kv_entropy")
        if not _is_number(self.star_kv_entropy_min_scale) or self.star_kv_entropy_min_scale <= 0:
            _fail("star_kv_entropy_min_scale", self.star_kv_entropy_min_scale, "a number > 0")
        _check_number(self, "star_kv_entropy_max_scale", self.star_kv_entropy_min_scale, inf, open_high=True)
        _check_number(self, "star_kv_entropy_smooth", 0, 1, open_high=True)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dictionary (for JSON/YAML and run-directory names)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionConfig:
        """Build from a dictionary; an unknown key is a `ValueError` naming it and the known keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CompressionConfig key(s) {unknown}: expected some of {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> CompressionConfig:
        """Read a YAML mapping of config fields."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a YAML mapping of CompressionConfig fields")
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path) -> None:
        """Write the config as YAML, readable by `from_yaml`."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def changed_knobs(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The `CompressionConfig` knobs in `settings` (a config's `to_dict()`, or an eval run's
    settings) whose value is not the default, method and budget aside, in field order: what a
    figure's title or legend names so that it is not read as the defaults' picture."""
    defaults = CompressionConfig().to_dict()
    return {
        name: settings[name]
        for name, default in defaults.items()
        if name not in ("method", "budget") and name in settings and settings[name] != default
    }
