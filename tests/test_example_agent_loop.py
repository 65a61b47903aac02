"""examples/agent_loop.py runs a carried trajectory over a folder and says what each step fed."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "agent_loop.py"
SHOTS = sorted(
    (Path(__file__).resolve().parents[1].parent / "shared/fixtures/agentnetbench/test_data/images").glob(
        "*.png"
    )
)


def test_the_agent_loop_feeds_only_each_new_turn(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    for index, shot in enumerate(SHOTS[:3]):
        Image.open(shot).convert("RGB").resize((448, 252)).save(tmp_path / f"step{index}.png")
    spec = importlib.util.spec_from_file_location("agent_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([str(tmp_path), "--max-new-tokens", "4", "--budget", "20"])
    steps = re.findall(
        r"step (\d) \(step\d\.png\): prefilled (\d+) of (\d+) conversation tokens", capsys.readouterr().out
    )
    assert [int(step) for step, _, _ in steps] == [0, 1, 2]
    fed = [(int(prefilled), int(total)) for _, prefilled, total in steps]
    assert fed[0][0] == fed[0][1]
    assert all(prefilled < total / 3 for prefilled, total in fed[1:])
