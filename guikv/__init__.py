"""guikv: KV-cache compression for GUI agents (GUI-KV and its baselines) on transformers 5.x.

from guikv import CompressionConfig, compress
with compress(model, CompressionConfig(method="gui_kv", budget=10.0)) as report:
    model.generate(**inputs, max_new_tokens=64)
"""

from guikv.compressor import CompressionReport, compress
from guikv.config import METHODS, CompressionConfig
from guikv.layout import TokenLayout
from guikv.methods import select_tokens

__version__ = "0.1.0"

__all__ = ["METHODS", "CompressionConfig", "CompressionReport", "TokenLayout", "compress", "select_tokens"]
