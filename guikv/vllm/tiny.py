"""The tiny Qwen2.5-VL the vLLM tests and benchmark load: `guikv.models.tiny.build_tiny_head_dim_64`
(head_dim 64, which vLLM's CPU attention takes; random weights whose scores are not rounding noise),
built offline and saved as safetensors (pure transformers: no vLLM needed to build it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from guikv.models.tiny import build_tiny_head_dim_64


def build_vllm_tiny(path: Path, seed: int = 0) -> Path:
    """Build the model into `path` (model.safetensors, config, processor) and return `path`."""
    return build_tiny_head_dim_64(path, seed)


def tiny_engine_args(
    model: Path | str, *, kv_cache_bytes: int, max_len: int, guikv: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`vllm.LLM` keyword arguments for the tiny model as the tests and the benchmark run it: fp32,
    block size 32, up to 3 images a prompt, a fixed KV space, and the engine settings the plugin
    needs (eager, prefix caching and chunked prefill off, a whole prompt per step); the plugin is
    on when `guikv` (its settings) is given."""
    extra = {"additional_config": {"guikv": guikv}} if guikv is not None else {}
    return {
        "model": str(model),
        "dtype": "float32",
        "enforce_eager": True,
        "block_size": 32,
        "enable_prefix_caching": False,
        "enable_chunked_prefill": False,
        "max_model_len": max_len,
        "max_num_batched_tokens": max_len,
        "kv_cache_memory_bytes": kv_cache_bytes,
        "limit_mm_per_prompt": {"image": 3},
        **extra,
    }
