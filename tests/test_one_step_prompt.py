"""`guikv infer`, `guikv compare SCREENSHOT... --task` and `guikv analyze-attention SCREENSHOT...
--task` ask the model the same prompt for the same screenshots and task: the token ids each command
hands the model are recorded (through the model adapter's `build_inputs`) and compared."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from PIL import Image

from guikv.models import adapters
from guikv_cli.app import main

TASK = "Open the settings menu"


@pytest.fixture
def screens(tmp_path: Path, fixtures_dir: Path) -> list[Path]:
    """Two small desktop screenshots (downscaled AgentNetBench fixture images)."""
    sources = sorted((fixtures_dir / "agentnetbench" / "test_data" / "images").glob("*.png"))[:2]
    paths = []
    for index, source in enumerate(sources):
        path = tmp_path / f"screen{index}.png"
        Image.open(source).convert("RGB").resize((224, 140)).save(path)
        paths.append(path)
    return paths


def prompt_ids(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> set:
    """The distinct prompts (token id tuples) one in-process `guikv ARGS` built."""
    seen: set[tuple[int, ...]] = set()
    adapter = adapters.ADAPTERS["qwen2_5_vl"]

    def recording(processor, messages):
        inputs = adapter.build_inputs(processor, messages)
        seen.add(tuple(inputs["input_ids"][0].tolist()))
        return inputs

    monkeypatch.setitem(adapters.ADAPTERS, "qwen2_5_vl", dataclasses.replace(adapter, build_inputs=recording))
    monkeypatch.setattr(sys, "argv", ["guikv", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0, capsys.readouterr().err
    monkeypatch.setitem(adapters.ADAPTERS, "qwen2_5_vl", adapter)
    return seen


def test_infer_compare_and_analyze_ask_the_same_prompt(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tiny_dir: Path,
    screens: list[Path],
    tmp_path: Path,
):
    shots = [str(path) for path in screens]
    common = ("--task", TASK, "--model", str(tiny_dir), "--device", "cpu")
    infer = prompt_ids(monkeypatch, capsys, "infer", *shots, *common, "--max-new-tokens", "1", "--json")
    compare = prompt_ids(
        monkeypatch, capsys, "compare", *shots, *common, "--methods", "full", "--max-new-tokens", "3",
        "--output", str(tmp_path / "compare"),
    )  # fmt: skip
    analyze = prompt_ids(
        monkeypatch, capsys, "analyze-attention", *shots, *common, "--output", str(tmp_path / "analysis")
    )
    assert len(infer) == 1
    assert compare == infer
    assert analyze == infer
