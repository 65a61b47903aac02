"""`guikv analyze-attention` end to end through a real subprocess (screenshots with `--full` and
an HTML report, AgentNetBench prompts), and its bad inputs: exit 2 with one line, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import agentnetbench
from PIL import Image

from guikv_cli.app import main


def guikv(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m guikv_cli ARGS` and capture its output."""
    command = [sys.executable, "-m", "guikv_cli", *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """Run the CLI in this process; returns (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["guikv", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0), capsys.readouterr().err


@pytest.fixture
def screenshots(tmp_path: Path, fixtures_dir: Path) -> list[Path]:
    """Two small desktop screenshots (downscaled copies of the AgentNetBench fixture's)."""
    sources = sorted((fixtures_dir / "agentnetbench" / "test_data" / "images").glob("*.png"))[:2]
    paths = []
    for index, source in enumerate(sources):
        path = tmp_path / f"shot{index}.png"
        Image.open(source).convert("RGB").resize((224, 140)).save(path)
        paths.append(path)
    return paths


def not_blank(path: Path) -> bool:
    """Whether a PNG has visible content (its gray levels vary)."""
    return float(np.asarray(Image.open(path).convert("L"), dtype=float).std()) > 10


def test_screenshots_write_json_figures_html_and_a_verdict(tmp_path: Path, tiny_dir: Path, screenshots):
    done = guikv(
        "analyze-attention", *screenshots, "--task", "Open the settings menu", "--model", tiny_dir,
        "--output", "out", "--html", "report.html", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "Attention by layer" in done.stdout and "the paper's claim" in done.stdout
    report = json.loads((tmp_path / "out" / "sparsity.json").read_text())
    assert report["mode"] == "window" and report["window_size"] == 8
    assert report["by_kind"]["previous"]["tokens"] > 0 and report["by_kind"]["current"]["tokens"] > 0
    assert report["samples"][0]["query_rows"] == 8 and report["samples"][0]["num_images"] == 2
    assert set(report["summary"]) >= {"verdict", "sparsity_spread", "supports_claim", "keys_for_mass_mean"}
    figures = sorted((tmp_path / "out").glob("*.png"))
    assert [path.name for path in figures] == [
        "attention_mass_by_kind.png",
        "sparsity_by_layer.png",
        "sparsity_heatmap.png",
    ]
    assert all(not_blank(path) for path in figures)
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "Attention by layer" in page


def test_full_mode_counts_every_row_with_eager_attention(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_dir: Path,
    screenshots: list[Path],
):
    output = tmp_path / "out"
    code, stderr = run_main(
        monkeypatch, capsys, "analyze-attention", str(screenshots[1]), "--task", "Open it",
        "--model", str(tiny_dir), "--full", "--output", str(output),
    )  # fmt: skip
    assert code == 0, stderr
    report = json.loads((output / "sparsity.json").read_text())
    assert report["mode"] == "full" and report["window_size"] is None
    assert report["attn_implementation"] == "eager"
    sample = report["samples"][0]
    assert sample["query_rows"] == sample["prompt_tokens"] and sample["num_images"] == 1


def test_benchmark_mode_reads_agentnetbench_prompts(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_dir: Path,
    fixtures_dir: Path,
    make_png: Callable[[Path, tuple[int, int]], Path],
):
    """`--data`, `--images` and `--limit` mean what they mean for eval: the analysis covers exactly
    the samples `guikv eval --limit 1` runs (the first trajectory, every step), with the same
    screenshots in each prompt."""
    data, images = agentnetbench(fixtures_dir, tmp_path, make_png, scale=0.1)
    flags = ["--data", str(data), "--images", str(images), "--limit", "1"]
    output = tmp_path / "out"
    code, stderr = run_main(
        monkeypatch, capsys, "analyze-attention", "--benchmark", "agentnetbench", *flags,
        "--model", str(tiny_dir), "--window-size", "4", "--output", str(output),
    )  # fmt: skip
    assert code == 0, stderr
    report = json.loads((output / "sparsity.json").read_text())
    assert report["benchmark"] == "agentnetbench" and report["mode"] == "window"
    oracle = ["--model", "oracle", "--output", str(tmp_path / "runs")]
    code, stderr = run_main(monkeypatch, capsys, "eval", "agentnetbench", *flags, *oracle)
    assert code == 0, stderr
    [trace] = (tmp_path / "runs").rglob("samples.jsonl")
    evaluated = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [s["sample_id"] for s in report["samples"]] == [r["sample_id"] for r in evaluated]
    assert [s["num_images"] for s in report["samples"]] == [
        len(r["history_screenshots"]) + 1 for r in evaluated
    ]
    assert [s["num_images"] for s in report["samples"]] == [1, 2, 3]
    assert all(s["query_rows"] == 4 for s in report["samples"])
    assert report["by_kind"]["previous"]["tokens"] > 0


def test_benchmark_screenshots_come_from_images_or_its_variable_as_in_eval(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, fixtures_dir: Path
):
    """Without --images the screenshot directory is the benchmark's variable, as for eval; with
    neither, one line names both (the data directory is no fallback)."""
    data = fixtures_dir / "agentnetbench" / "test_data"
    monkeypatch.delenv("AGENTNETBENCH_IMGS", raising=False)
    messages = []
    for command in (["analyze-attention", "--benchmark", "agentnetbench"], ["eval", "agentnetbench"]):
        code, stderr = run_main(monkeypatch, capsys, *command, "--data", str(data), "--output", str(tmp_path))
        assert code == 2
        messages.append(stderr.strip())
    assert messages[0] == messages[1]
    assert "agentnetbench: no images directory; pass --images or set AGENTNETBENCH_IMGS" in messages[0]


def test_a_bad_input_through_the_subprocess_is_one_line_and_exit_2(tmp_path: Path, screenshots):
    done = guikv("analyze-attention", screenshots[0], "--benchmark", "agentnetbench", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "not both" in done.stderr


BAD_INPUTS: list[tuple[list[str], str]] = [
    ([], "nothing to analyze"),
    (["{shot}"], "needs --task"),
    (["{shot}", "--task", "x", "--benchmark", "agentnetbench"], "not both"),
    (["--benchmark", "agentnetbench", "--task", "x", "--data", "{tmp}"], "--task is for screenshots"),
    (["{tmp}/missing.png", "--task", "x"], "no such file"),
    (["{text}", "--task", "x"], "not a readable image"),
    (["{shot}", "--task", "x", "--threshold", "1.5"], "--threshold 1.5"),
    (["{shot}", "--task", "x", "--mass", "0"], "--mass 0"),
    (["{shot}", "--task", "x", "--window-size", "0"], "--window-size 0"),
    (["{shot}", "--task", "x", "--full", "--attn", "sdpa"], "--full reads eager"),
    (["--benchmark", "nope", "--data", "{tmp}"], "unknown name 'nope'"),
    (["--benchmark", "agentnetbench", "--data", "{tmp}/none"], "AGENTNETBENCH"),
    (["--benchmark", "agentnetbench", "--data", "{tmp}", "--limit", "0"], "--limit 0"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_inputs_exit_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    make_png: Callable[[Path, tuple[int, int]], Path],
    args: list[str],
    message: str,
):
    shot = make_png(tmp_path / "shot.png", (64, 40))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    filled = [arg.format(shot=shot, tmp=tmp_path, text=text) for arg in args]
    code, stderr = run_main(monkeypatch, capsys, "analyze-attention", *filled)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr
