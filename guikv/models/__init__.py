"""Model loading, family adapters and the tiny offline models."""

from guikv.models.adapters import ModelAdapter, adapter_for, text_config
from guikv.models.loading import load
from guikv.models.tiny import build_tiny, build_tiny_head_dim_64, tiny_model_dir

__all__ = [
    "ModelAdapter",
    "adapter_for",
    "build_tiny",
    "build_tiny_head_dim_64",
    "load",
    "text_config",
    "tiny_model_dir",
]
