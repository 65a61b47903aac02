"""`samples.jsonl` keeps what the model saw, like lm-eval's `--log_samples`: each record's `prompts`
holds one conversation per model call, texts as written and screenshots as their file paths, equal
to the prompt the runner built; a re-score keeps it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import build_all, oracle_eval_args, records, run_cli, write_png
from PIL import Image

from benchmarks import get_benchmark
from benchmarks.prompts import sample_prompt
from guikv.agents import get_family
from guikv.agents.prompting import messages_json

Datasets = dict[str, tuple[Path, Path]]


@pytest.fixture(scope="module")
def datasets(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Datasets:
    """Every benchmark with full-size placeholder screenshots (built once for this module)."""
    return build_all(fixtures_dir, tmp_path_factory.mktemp("prompt-data"), write_png)


def _oracle_records(name: str, datasets: Datasets, output: Path, monkeypatch: Any, capsys: Any) -> list[Any]:
    """The trace of an oracle run of benchmark `name`."""
    result = run_cli(oracle_eval_args(name, datasets, output), monkeypatch, capsys)
    assert result.code == 0, result.err
    [run_dir] = [path.parent for path in output.rglob("samples.jsonl")]
    return records(run_dir)


def _images(conversation: list[dict[str, Any]]) -> list[str]:
    """The screenshot references of a recorded conversation, in order."""
    return [
        item["image"]
        for message in conversation
        if isinstance(message["content"], list)
        for item in message["content"]
        if item["type"] == "image"
    ]


def _texts(conversation: list[dict[str, Any]]) -> str:
    """Every text of a recorded conversation, joined."""
    parts = []
    for message in conversation:
        content = message["content"]
        items = content if isinstance(content, list) else [{"type": "text", "text": content}]
        parts.extend(item["text"] for item in items if item["type"] == "text")
    return "\n".join(parts)


def test_messages_json_writes_paths_and_describes_in_memory_images(tmp_path: Path) -> None:
    path = tmp_path / "shot.png"
    messages = [
        {"role": "system", "content": "You are a GUI agent."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": path},
                {"type": "image", "image": Image.new("RGB", (64, 32))},
                {"type": "text", "text": "Click OK"},
            ],
        },
    ]
    assert messages_json(messages) == [
        {"role": "system", "content": "You are a GUI agent."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(path)},
                {"type": "image", "image": "<image 64x32>"},
                {"type": "text", "text": "Click OK"},
            ],
        },
    ]
    json.dumps(messages_json(messages))


def test_records_hold_the_prompt_the_runner_built(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    rows = _oracle_records("screenspot-v2", datasets, tmp_path, monkeypatch, capsys)
    spec = get_benchmark("screenspot-v2")
    data, images = datasets["screenspot-v2"]
    samples = {s.sample_id: s for s in spec.load(data.resolve(), images.resolve()).samples}
    family = get_family("ui-tars")
    for row in rows:
        [prompt] = row["prompts"]
        sample = samples[row["sample_id"]]
        assert prompt == messages_json(sample_prompt(family, sample)[0])
        assert _images(prompt) == [str(sample.image)] and Path(_images(prompt)[0]).is_file()
        assert sample.instruction in _texts(prompt)


def test_agentnetbench_prompts_show_the_history_the_model_gave(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    rows = _oracle_records("agentnetbench", datasets, tmp_path, monkeypatch, capsys)
    for earlier, later in itertools.pairwise(rows):
        [prompt] = later["prompts"]
        assert earlier["raw_output"] in _texts(prompt)  # the model's own earlier output
        shown = [Path(image).name for image in _images(prompt)]
        assert len(shown) == len(later["history_screenshots"]) + 1
        assert all(Path(image).is_file() for image in _images(prompt))


def test_mind2web_records_one_prompt_per_call(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    rows = _oracle_records("mind2web", datasets, tmp_path, monkeypatch, capsys)
    for row in rows:
        assert len(row["prompts"]) == row["model_calls"]
    [deep] = [row for row in rows if row["model_calls"] > 1]
    first, *later = deep["prompts"]
    assert "Scroll down." not in _texts(first)
    assert all("Scroll down." in _texts(prompt) for prompt in later)
    assert len({_images(prompt)[0] for prompt in deep["prompts"]}) == deep["model_calls"]  # a block each


def test_rescore_keeps_the_prompts(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    before = _oracle_records("androidcontrol", datasets, tmp_path, monkeypatch, capsys)
    [run_dir] = [path.parent for path in tmp_path.rglob("samples.jsonl")]
    assert run_cli(["eval", "--rescore", str(run_dir)], monkeypatch, capsys).code == 0
    after = records(run_dir)
    assert [row["prompts"] for row in after] == [row["prompts"] for row in before]
    assert all("Find a coffee shop" in _texts(row["prompts"][0]) for row in after)
