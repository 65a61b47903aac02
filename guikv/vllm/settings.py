"""What the vLLM plugin is told per server, and the engine settings it refuses.

The plugin is configured through vLLM's own `additional_config` (`--additional-config
'{"guikv": {"method": "gui_kv", "budget": 10}}'`): the method, the budget and any
`CompressionConfig` knob. Everything here is plain Python, so it is checked before an engine
starts and tested without vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from guikv.config import CompressionConfig

ADDITIONAL_CONFIG_KEY = "guikv"
"""The key of `vllm_config.additional_config` that holds the plugin's settings."""

UNIFORM_METHODS: tuple[str, ...] = ("snapkv", "gui_kv", "st_lite", "star_kv", "streamingllm", "random")
"""Methods that keep the same count in every layer: the only ones one block table per request fits."""

REFUSED_METHODS: dict[str, str] = {
    "full": "it evicts nothing: run vLLM without the guikv plugin",
    "pyramidkv": (
        "it keeps a different count per layer, but vLLM shares one block table per request across all "
        "layers, so every layer must keep the same count"
    ),
    "vlcache": (
        "it keeps a different count per layer, but vLLM shares one block table per request across all "
        "layers, so every layer must keep the same count"
    ),
}

PLUGIN_KEYS = ("log_requests", "record_positions")
"""Settings of the plugin itself, next to the `CompressionConfig` knobs."""


@dataclass(frozen=True)
class PluginSettings:
    """One server's compression: a validated `CompressionConfig` with a uniform-budget method,
    whether each compressed request is logged, and whether the worker keeps the kept positions of
    each request (for tests and analysis; off in a server)."""

    compression: CompressionConfig
    log_requests: bool = True
    record_positions: bool = False

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PluginSettings:
        """Settings from `additional_config["guikv"]`; a refused method, an unknown key or a bad
        knob value is a `ValueError` of one line naming it."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"additional_config.{ADDITIONAL_CONFIG_KEY} must be a mapping of CompressionConfig "
                f"fields, got {type(data).__name__}"
            )
        method = data.get("method", CompressionConfig.method)
        if method in REFUSED_METHODS:
            raise ValueError(
                f"additional_config.{ADDITIONAL_CONFIG_KEY}.method={method!r} is refused by the vLLM "
                f"plugin: {REFUSED_METHODS[method]} (use one of {', '.join(UNIFORM_METHODS)})"
            )
        known = {f.name for f in fields(CompressionConfig)} | set(PLUGIN_KEYS)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"additional_config.{ADDITIONAL_CONFIG_KEY} has unknown key(s) {unknown}: expected some of "
                f"{sorted(known)}"
            )
        flags = {
            "log_requests": data.get("log_requests", True),
            "record_positions": data.get("record_positions", False),
        }
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(
                    f"additional_config.{ADDITIONAL_CONFIG_KEY}.{key}={value!r} is invalid: "
                    "expected true or false"
                )
        knobs = {k: v for k, v in data.items() if k not in PLUGIN_KEYS}
        try:
            compression = CompressionConfig.from_dict(knobs)
        except ValueError as error:
            raise ValueError(f"additional_config.{ADDITIONAL_CONFIG_KEY}: {error}") from None
        if compression.method not in UNIFORM_METHODS:
            raise ValueError(
                f"additional_config.{ADDITIONAL_CONFIG_KEY}.method={compression.method!r} is not supported "
                f"by the vLLM plugin: expected one of {', '.join(UNIFORM_METHODS)}"
            )
        return cls(compression=compression, **flags)

    def to_mapping(self) -> dict[str, Any]:
        """The settings as `additional_config["guikv"]` (only fields that differ from the defaults)."""
        defaults = CompressionConfig()
        changed = {
            k: v for k, v in self.compression.to_dict().items() if k == "method" or getattr(defaults, k) != v
        }
        flags = {"log_requests": self.log_requests, "record_positions": self.record_positions}
        return {**changed, **{k: v for k, v in flags.items() if v != getattr(PluginSettings, k)}}


def settings_from_additional_config(additional_config: Any) -> PluginSettings | None:
    """The plugin's settings from a vLLM `additional_config`, or None when it holds none (the
    plugin then leaves the engine untouched)."""
    if not isinstance(additional_config, Mapping) or ADDITIONAL_CONFIG_KEY not in additional_config:
        return None
    return PluginSettings.from_mapping(additional_config[ADDITIONAL_CONFIG_KEY])


@dataclass(frozen=True)
class EngineFacts:
    """The engine settings that decide whether compressing after prefill is safe, read from a
    `VllmConfig` by the platform hook (plain values, so the rules are testable without vLLM)."""

    prefix_caching: bool
    chunked_prefill: bool
    max_num_batched_tokens: int
    max_model_len: int
    speculative: bool
    eager: bool
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    kv_cache_dtype: str
    model_type: str


SUPPORTED_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl", "qwen2", "qwen3")
"""Decoder families whose vLLM attention hands the plugin queries and keys after RoPE and whose
image placeholders are expanded in the token ids (OpenCUA expands inside its forward)."""


def engine_refusal(facts: EngineFacts) -> str | None:
    """Why an engine configured like `facts` cannot run the plugin (one line naming the flag and
    what to pass), or None when it can."""
    if facts.prefix_caching:
        return (
            "enable_prefix_caching is on: guikv rewrites a request's blocks after its prefill, so a "
            "block shared through the prefix cache would be corrupted: pass --no-enable-prefix-caching"
        )
    if facts.chunked_prefill or facts.max_num_batched_tokens < facts.max_model_len:
        return (
            "chunked prefill is on (or max_num_batched_tokens < max_model_len): guikv scores a prompt "
            "from its whole prefill in one step: pass --no-enable-chunked-prefill and "
            "--max-num-batched-tokens >= --max-model-len"
        )
    if facts.speculative:
        return "speculative decoding is configured: its draft tokens and rollback are not supported by guikv"
    if not facts.eager:
        return (
            "the model is compiled: guikv reads each layer's attention inputs through module hooks, "
            "which a compiled graph bypasses: pass --enforce-eager"
        )
    if (facts.tensor_parallel, facts.pipeline_parallel, facts.data_parallel) != (1, 1, 1):
        return "tensor/pipeline/data parallelism is configured: the guikv plugin supports one worker only"
    if facts.kv_cache_dtype != "auto":
        return (
            f"kv_cache_dtype={facts.kv_cache_dtype!r}: guikv writes kept entries in the model dtype: "
            "use --kv-cache-dtype auto"
        )
    if facts.model_type not in SUPPORTED_MODEL_TYPES:
        return (
            f"model_type {facts.model_type!r} is not supported by the guikv plugin: expected one of "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return None
