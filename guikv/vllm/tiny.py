"""The tiny Qwen2.5-VL the vLLM tests and benchmark load: built offline from a config, saved as
safetensors (pure transformers: no vLLM needed to build it).

vLLM's CPU attention takes head sizes 32-512, so its language model has head_dim 64 (hidden 256,
4 query / 2 KV heads; GUI-KV's rank-32 key subspace is then a proper subspace). Two changes to the
random initialisation make it a model whose scores are not decided by rounding noise, as a real
checkpoint's are not: `initializer_range=0.2` (attention that is not uniform, so the generated
tokens depend on what the cache holds), and RMSNorm weights drawn from [0.5, 1.5] (with weights of
exactly 1 every attention input has norm sqrt(hidden), and GUI-KV's standardised-norm saliency is
noise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from guikv.models.tiny import build_tiny

TEXT = {
    "hidden_size": 256,
    "intermediate_size": 256,
    "initializer_range": 0.2,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
}


def build_vllm_tiny(path: Path, seed: int = 0) -> Path:
    """Build the model into `path` (model.safetensors, config, processor) and return `path`."""
    build_tiny(path, seed=seed, **TEXT)
    weights_file = path / "model.safetensors"
    weights = load_file(weights_file)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in weights.items():
        if name.endswith("layernorm.weight") and "visual" not in name:
            weights[name] = 0.5 + torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype)
    save_file(weights, weights_file, metadata={"format": "pt"})
    return path


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
