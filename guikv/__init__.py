"""guikv: KV-cache compression for GUI agents (GUI-KV and its baselines) on transformers 5.x.

    from guikv import CompressionConfig, compress
    with compress(model, CompressionConfig(method="gui_kv", budget=10.0)) as report:
        model.generate(**inputs, max_new_tokens=64)

Names are imported on first use, so `import guikv.agents` (parsers, metrics) stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "METHODS": "guikv.config",
    "CompressionConfig": "guikv.config",
    "CompressionReport": "guikv.compressor",
    "compress": "guikv.compressor",
    "TokenLayout": "guikv.layout",
    "select_tokens": "guikv.methods",
    "Trajectory": "guikv.trajectory",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'guikv' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
