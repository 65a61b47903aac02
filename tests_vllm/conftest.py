"""Shared pieces of the vLLM plugin tests (run in the vLLM venv: `make test-vllm`).

Engines run in subprocesses (`engine_run.py`), one per configuration; the transformers reference
runs in this process on the same saved model.
"""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from guikv import CompressionConfig, compress
from guikv.vllm.tiny import build_vllm_tiny

ROOT = Path(__file__).resolve().parents[1]
SCREENS = sorted((ROOT / "examples" / "screens").glob("*.png"))
ENGINE_RUN = Path(__file__).parent / "engine_run.py"
BLOCK_BYTES = 4 * 2 * 32 * 2 * 64 * 4
"""KV bytes of one block of the tiny model: 4 layers, 2 KV heads, 32 tokens, K and V, head_dim 64, fp32."""


@dataclass(frozen=True)
class Prompt:
    """A chat prompt (template applied) and the screenshots it shows."""

    text: str
    images: tuple[Path, ...]

    def spec(self) -> dict[str, Any]:
        """The prompt as `engine_run.py` reads it."""
        return {"text": self.text, "images": [str(path) for path in self.images]}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2.5-VL (head_dim 64) saved as safetensors, built once per session."""
    return build_vllm_tiny(tmp_path_factory.mktemp("tiny-qwen2_5_vl"))


def chat_prompt(model_dir: Path, images: tuple[Path, ...], task: str) -> Prompt:
    """The model's chat template over `images` (oldest first) and a task."""
    processor = AutoProcessor.from_pretrained(model_dir)
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": task}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    return Prompt(text, images)


def run_engine(tmp_path: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one engine configuration in a subprocess; its pickled result."""
    spec_file, out_file = tmp_path / "spec.json", tmp_path / "result.pkl"
    spec_file.write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, str(ENGINE_RUN), str(spec_file), str(out_file)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise AssertionError(f"engine run failed ({done.returncode}):\n{done.stderr[-6000:]}")
    return pickle.loads(out_file.read_bytes())


@dataclass(frozen=True)
class Reference:
    """The transformers run of one prompt under `guikv.compress`: prompt ids, generated tokens,
    kept positions per layer `[H_kv, C]`."""

    prompt_ids: list[int]
    tokens: list[int]
    positions: list[torch.Tensor]


def hf_reference(
    model_dir: Path, prompt: Prompt, config: CompressionConfig, max_new_tokens: int
) -> Reference:
    """Greedy decoding of `prompt` by the transformers model under `compress(config)`."""
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    images = [Image.open(path).convert("RGB") for path in prompt.images]
    inputs = processor(text=[prompt.text], images=images or None, return_tensors="pt")
    with torch.no_grad(), compress(model, config, record_positions=True) as report:
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    length = inputs["input_ids"].shape[1]
    positions = [p.reshape(model.config.text_config.num_key_value_heads, -1) for p in report.kept_positions]
    return Reference(inputs["input_ids"][0].tolist(), output[0, length:].tolist(), positions)


def record_for(report: dict[str, Any], prompt_tokens: int, index: int = 0) -> dict[str, Any]:
    """The worker's `index`-th record of a prompt of `prompt_tokens` tokens."""
    return [r for r in report["records"] if r["prompt_tokens"] == prompt_tokens][index]


@pytest.fixture(scope="session")
def screens() -> list[Path]:
    """The three demo screenshots (AgentNetBench, 1280x720 class; 1196 tokens each for the tiny model)."""
    assert len(SCREENS) == 3
    return SCREENS


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
