"""`load`: a model and its processor, the way a user's UI-TARS-1.5-7B loads, or the tiny stand-in.

Errors a user can fix (no network and no cached copy, a missing directory, `cuda` without CUDA, a
processor that silently degraded to a tokenizer) are raised as one-line `UserInputError`s.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import try_to_load_from_cache
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
)

from guikv.agents.resize import MAX_PIXELS, MIN_PIXELS
from guikv.errors import UserInputError
from guikv.models.adapters import ADAPTERS
from guikv.models.opencua import OpenCUAProcessor
from guikv.models.tiny import tiny_model_dir

TINY = "tiny"
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
DEVICES = ("auto", "cpu", "cuda")
REMOTE_CODE_TYPES = {"opencua"}


def resolve_device(device: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; `cuda` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    if device.split(":")[0] not in DEVICES:
        raise UserInputError(f"--device {device!r} is unknown: expected auto, cpu, cuda or cuda:N")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on a GPU that supports it and float32 otherwise."""
    if dtype not in DTYPES:
        raise UserInputError(f"--dtype {dtype!r} is unknown: expected one of {', '.join(DTYPES)}")
    if dtype == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return DTYPES[dtype]


def resolve_attention(attn_implementation: str, device: torch.device) -> str:
    """`auto` is flash_attention_2 on CUDA when flash-attn is installed, else sdpa."""
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise UserInputError(
            f"--attn {attn_implementation!r} is unknown: expected one of {', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if attn_implementation == "flash_attention_2" and not (has_flash and device.type == "cuda"):
        raise UserInputError(
            "--attn flash_attention_2 needs CUDA and the flash-attn package (pip install guikv[gpu])"
        )
    if attn_implementation == "auto":
        return "flash_attention_2" if has_flash and device.type == "cuda" else "sdpa"
    return attn_implementation


def resolve_source(model: str) -> tuple[str, bool]:
    """The path or hub id to load, and whether it must be read from local files only.

    `tiny` is the cached tiny model (built on first use). A hub id is read from the local cache
    when it is there; otherwise the hub must be reachable, else a one-line error says so.
    """
    if model == TINY:
        return str(tiny_model_dir()), True
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserInputError(f"--model {model}: the directory has no config.json (not a saved model)")
        return str(path), True
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") != 1
    if looks_like_path:
        raise UserInputError(
            f"--model {model}: no such directory (expected tiny, a hub id owner/name, or a model dir)"
        )
    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return model, True
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
        raise UserInputError(
            f"--model {model}: no local copy in the Hugging Face cache and the hub is unreachable "
            "(download it on a connected machine, or pass a local model directory)"
        )
    return model, False


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (a quick TCP check, not a download)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_processor(source: str, local_only: bool, remote: bool) -> Any:
    """The model's processor; OpenCUA ships a tokenizer and an image processor but no joint
    processor, so they are paired here."""
    if not remote:
        return AutoProcessor.from_pretrained(source, local_files_only=local_only)
    return OpenCUAProcessor(
        tokenizer=AutoTokenizer.from_pretrained(source, local_files_only=local_only, trust_remote_code=True),
        image_processor=AutoImageProcessor.from_pretrained(
            source, local_files_only=local_only, trust_remote_code=True
        ),
    )


def load(
    model: str = TINY,
    dtype: str = "auto",
    attn_implementation: str = "auto",
    device: str = "auto",
    *,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[PreTrainedModel, Any]:
    """Load (model, processor) from `tiny`, a hub id (e.g. ByteDance-Seed/UI-TARS-1.5-7B) or a directory.

    The processor's pixel range is set to `min_pixels`/`max_pixels` (UI-TARS's by default), the
    same range the agents' `qwen_vl_utils` resize uses, so no screenshot is resized twice. A
    known family's load-time preparation is applied (OpenCUA: logical decode positions, see
    `guikv.models.opencua`); other models are returned as they are and refused where used.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    attention = resolve_attention(attn_implementation, torch_device)
    source, local_only = resolve_source(model)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only, trust_remote_code=True)
        remote = config.model_type in REMOTE_CODE_TYPES
        model_class = AutoModel if remote else AutoModelForImageTextToText
        loaded = model_class.from_pretrained(
            source,
            dtype=torch_dtype,
            attn_implementation=attention,
            local_files_only=local_only,
            trust_remote_code=remote,
        )
        processor = load_processor(source, local_only, remote)
    except OSError as error:
        raise UserInputError(
            f"--model {model}: could not be loaded ({str(error).splitlines()[0]})"
        ) from error
    if not hasattr(processor, "image_processor"):
        raise UserInputError(
            f"--model {model}: AutoProcessor returned {type(processor).__name__}, "
            "not an image-text processor (is torchvision installed? the Qwen processors need it)"
        )
    processor.image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    adapter = ADAPTERS.get(getattr(loaded.config, "model_type", None))
    if adapter is not None:
        adapter.prepare(loaded)
    return loaded.to(torch_device).eval(), processor
