"""Shared pytest fixtures: where the shared developer fixtures live, and placeholder screenshots."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The read-only shared fixtures (one folder per benchmark, each with a README)."""
    return FIXTURES


@pytest.fixture
def make_png() -> Callable[[Path, tuple[int, int]], Path]:
    """A factory writing a blank PNG of a given (width, height) at a path (parents created): the
    stand-in for benchmark screenshots that could not be shipped. Only ever point it into tmp_path."""

    def make(path: Path, size: tuple[int, int]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", size).save(path)
        return path

    return make


SCREENSHOTS = sorted((FIXTURES / "agentnetbench" / "test_data" / "images").glob("*.png"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL saved with save_pretrained, built once per test session."""
    from guikv.models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_sdpa(tiny_dir: Path) -> tuple:
    """(model, processor) reloaded from `tiny_dir` through from_pretrained, sdpa attention."""
    from guikv.models import load

    return load(str(tiny_dir), attn_implementation="sdpa", device="cpu")


@pytest.fixture(scope="session")
def tiny_eager(tiny_dir: Path) -> tuple:
    """The same tiny model with eager attention."""
    from guikv.models import load

    return load(str(tiny_dir), attn_implementation="eager", device="cpu")


@pytest.fixture(scope="session")
def tiny64_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The head_dim-64 tiny Qwen2.5-VL (`build_tiny_head_dim_64`: GUI-KV's rank 32 below head_dim,
    scores that are not rounding noise), built once per test session."""
    from guikv.models import build_tiny_head_dim_64

    return build_tiny_head_dim_64(tmp_path_factory.mktemp("tiny64-model"))


@pytest.fixture(scope="session")
def tiny64_sdpa(tiny64_dir: Path) -> tuple:
    """(model, processor) of the head_dim-64 tiny model, sdpa attention."""
    from guikv.models import load

    return load(str(tiny64_dir), attn_implementation="sdpa", device="cpu")


@pytest.fixture(scope="session")
def tiny64_eager(tiny64_dir: Path) -> tuple:
    """The head_dim-64 tiny model with eager attention."""
    from guikv.models import load

    return load(str(tiny64_dir), attn_implementation="eager", device="cpu")


TINY_64_METHODS = frozenset({"gui_kv"})
"""Methods whose tiny-model tests run on the head_dim-64 model: GUI-KV's temporal step projects
earlier screenshots' keys on a rank-32 subspace, which at head_dim 16 is the whole key space (every
residual rounding noise, ~1e-7, so the step would sort noise)."""


@pytest.fixture
def tiny_for(request: pytest.FixtureRequest) -> Callable[[str, str], tuple]:
    """`tiny_for(method, attention)`: the (model, processor) a test of `method` runs on: the
    head_dim-64 tiny model for `TINY_64_METHODS`, the head_dim-16 one otherwise."""

    def get(method: str, attention: str = "sdpa") -> tuple:
        shape = "tiny64" if method in TINY_64_METHODS else "tiny"
        return request.getfixturevalue(f"{shape}_{attention}")

    return get


@pytest.fixture(scope="session")
def make_inputs() -> Callable:
    """A factory of processor inputs for `count` real desktop screenshots (downscaled to keep
    prompts short), the last one the current screenshot, followed by a task text."""

    def make(processor, count: int, size: tuple[int, int] = (640, 360), task: str = "Open the settings menu"):
        images = [
            Image.open(SCREENSHOTS[i % len(SCREENSHOTS)]).convert("RGB").resize(size) for i in range(count)
        ]
        content = [{"type": "image", "image": image} for image in images]
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": task}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return processor(text=[text], images=images or None, return_tensors="pt")

    return make


@pytest.fixture
def plotted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, str]]:
    """Every figure the test draws, as (its panels, its title), instead of a PNG written."""
    import guikv.viz.curves

    drawn: list[tuple[Any, str]] = []

    def plot(panels: Any, path: Path, title: str = "") -> Path:
        drawn.append((panels, title))
        return path

    monkeypatch.setattr(guikv.viz.curves, "plot_panels", plot)
    return drawn
