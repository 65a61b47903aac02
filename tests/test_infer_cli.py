"""`guikv infer` through a real subprocess: the JSON and panel outputs, the picture, and every bad
input as one line on stderr with exit code 2 (no traceback).

Each run that loads the model imports torch (~5 s), so the model runs are few and small; the bad
inputs caught before loading are cheap and many.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from guikv.viz.kept import DPI, figure_size
from guikv_cli.infer import render

SCREENSHOTS = sorted(
    (Path(__file__).resolve().parents[1].parent / "shared/fixtures/agentnetbench/test_data/images").glob(
        "*.png"
    )
)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m guikv_cli infer ARGS` in a fresh process, with captured text output."""
    return subprocess.run(
        [sys.executable, "-m", "guikv_cli", "infer", *args], capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 2, nothing on stdout, one `error:` line on stderr containing every fragment."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def screens(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two small real screenshots (downscaled so the tiny model's prompt stays short)."""
    folder = tmp_path_factory.mktemp("screens")
    paths = []
    for index, source in enumerate(SCREENSHOTS[:2]):
        path = folder / f"step{index + 1}.png"
        Image.open(source).convert("RGB").resize((448, 252)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def json_run(
    tiny_dir: Path, screens: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, Path]:
    """One `--json --show-kept` run on the tiny model: (the parsed report, the picture path)."""
    picture = tmp_path_factory.mktemp("picture") / "kept.png"
    # Given in reverse order, and kept so: the last argument is the current screen (no sorting unless
    # --history-order asks for it).
    result = run_cli(
        *map(str, reversed(screens)),
        "--task",
        "Open the settings",
        "--model",
        str(tiny_dir),
        "--family",
        "opencua",
        "--max-new-tokens",
        "3",
        "--device",
        "cpu",
        "--json",
        "--show-kept",
        str(picture),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), picture


def test_json_reports_the_step(json_run: tuple[dict, Path]):
    report, picture = json_run
    assert report["family"] == "opencua"  # --family overrides the detected ui-tars
    assert report["tiny_model"] is True
    assert "random weights" in report["note"]
    assert "--model ByteDance-Seed/UI-TARS-1.5-7B --device cuda" in report["note"]
    assert [Path(shot["path"]).name for shot in report["screenshots"]] == ["step2.png", "step1.png"]
    assert [shot["role"] for shot in report["screenshots"]] == ["history 1", "current"]
    assert report["num_images"] == 2
    assert report["prompt_tokens"] == report["image_tokens"] + report["text_tokens"]
    assert sum(shot["tokens"] for shot in report["screenshots"]) == report["image_tokens"]
    assert report["kept_per_layer"] == [int(report["prompt_tokens"] * 10 / 100)] * 4
    assert report["kv_mib_kept"] < report["kv_mib_full"]
    assert 1 <= report["generated_tokens"] <= 3
    assert report["config"]["method"] == "gui_kv" and report["config"]["budget"] == 10.0
    action = report["actions"][0]
    assert action["type"] == "unparsed" and action["parsed"] is False and action["point_px"] is None
    assert report["text"]  # the raw output is reported even when no action can be read
    for key in ("prefill_seconds", "decode_seconds", "scoring_seconds", "decode_flops_saved_percent"):
        assert isinstance(report[key], float)
    assert report["show_kept"] == str(picture)


@pytest.mark.parametrize(
    ("method", "knob", "value", "expected"),
    [
        ("st_lite", "st_lite_variant", "paper", "paper"),
        ("star_kv", "star_kv_prior_lambda", "0.3", 0.3),
        ("star_kv", "star_kv-temporal", "false", False),
    ],
)
def test_the_frontier_methods_run_with_their_knobs_set(
    tiny_dir: Path, screens: list[Path], method: str, knob: str, value: str, expected: object
):
    result = run_cli(
        *map(str, screens),
        "--task",
        "Open the settings",
        "--model",
        str(tiny_dir),
        "--method",
        method,
        "--budget",
        "30",
        "--set",
        f"{knob}={value}",
        "--max-new-tokens",
        "2",
        "--device",
        "cpu",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["config"]["method"] == method
    assert report["config"][knob.replace("-", "_")] == expected
    assert len(set(report["kept_per_layer"])) == 1


def test_show_kept_picture_has_the_expected_size_and_content(json_run: tuple[dict, Path]):
    image = Image.open(json_run[1])
    width, height = figure_size([(448, 252), (448, 252)])
    assert image.size == (round(width * DPI), round(height * DPI))
    assert np.asarray(image.convert("L"), dtype=np.float32).var() > 100


def test_panel_shows_every_measure_and_names_the_tiny_model(json_run: tuple[dict, Path]):
    console = Console(record=True, width=100)
    console.print(render(json_run[0]))
    out = " ".join(console.export_text().replace("│", " ").split())
    assert "guikv infer · gui_kv @ 10% · opencua" in out
    for label in ("output", "action unparsed", "prompt tokens", "kept tokens", "KV cache", "decode FLOPs"):
        assert label in out
    assert "prefill" in out and "scoring" in out and "kept picture" in out
    assert "random weights" in out
    assert "--model ByteDance-Seed/UI-TARS-1.5-7B --device cuda" in out


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    """A non-image, a truncated PNG, a directory and a 1000x4 strip, plus one good screenshot."""
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48), "white").save(good)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(SCREENSHOTS[0].read_bytes()[:2000])
    folder = tmp_path / "folder.png"
    folder.mkdir()
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1000, 4)).save(strip)
    return {"good": good, "text": text, "truncated": truncated, "folder": folder, "strip": strip}


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing", ("screenshot", "nothere.png", "no such file")),
        ("folder", ("folder.png", "not a file")),
        ("text", ("notes.png", "not an image")),
        ("truncated", ("cut.png", "unreadable image")),
        ("aspect", ("strip.png", "1000x4", "aspect ratio above 200")),
        ("no screenshot", ("no screenshot given",)),
        ("empty task", ("--task is empty",)),
        ("no task", ("--task is empty",)),
        ("budget 0", ("--budget 0.0 is invalid", "(0, 100]")),
        ("budget 150", ("--budget 150.0 is invalid", "(0, 100]")),
        ("method", ("--method 'h2o' is invalid", "gui_kv")),
        ("family", ("--family 'llava' is unknown", "auto, ui-tars, opencua")),
        ("missing dir", ("--show-kept", "does not exist")),
        ("not png", ("--show-kept", "expected a path ending in .png")),
        ("history order", ("--history-order 'size' is unknown", "name, mtime")),
        ("max tokens", ("--max-new-tokens 0 is invalid",)),
        ("set malformed", ("--set 'st_lite_variant' is malformed", "KNOB=VALUE")),
        ("set unknown", ("--set colour is unknown", "st_lite_variant", "star_kv_prior_lambda")),
        ("set own flag", ("--set budget is unknown (use --budget)",)),
        ("set int", ("--set star_kv_profile_steps=many is invalid", "an integer")),
        ("set bool", ("--set star_kv_temporal=maybe is invalid", "true or false")),
        ("set variant", ("--set st_lite_variant='neither' is invalid", "code, paper")),
    ],
)
def test_bad_input_before_loading_is_one_line(
    bad_files: dict[str, Path], tmp_path: Path, case: str, fragments: tuple[str, ...]
):
    good = str(bad_files["good"])
    args = {
        "missing": [str(tmp_path / "nothere.png"), "--task", "t"],
        "folder": [str(bad_files["folder"]), "--task", "t"],
        "text": [good, str(bad_files["text"]), "--task", "t"],
        "truncated": [str(bad_files["truncated"]), "--task", "t"],
        "aspect": [str(bad_files["strip"]), "--task", "t"],
        "no screenshot": ["--task", "t"],
        "empty task": [good, "--task", "  "],
        "no task": [good],
        "budget 0": [good, "--task", "t", "--budget", "0"],
        "budget 150": [good, "--task", "t", "--budget", "150"],
        "method": [good, "--task", "t", "--method", "h2o"],
        "family": [good, "--task", "t", "--family", "llava"],
        "missing dir": [good, "--task", "t", "--show-kept", str(tmp_path / "nowhere" / "kept.png")],
        "not png": [good, "--task", "t", "--show-kept", str(tmp_path / "kept.jpg")],
        "history order": [good, "--task", "t", "--history-order", "size"],
        "max tokens": [good, "--task", "t", "--max-new-tokens", "0"],
        "set malformed": [good, "--task", "t", "--set", "st_lite_variant"],
        "set unknown": [good, "--task", "t", "--set", "colour=red"],
        "set own flag": [good, "--task", "t", "--set", "budget=5"],
        "set int": [good, "--task", "t", "--method", "star_kv", "--set", "star_kv_profile_steps=many"],
        "set bool": [good, "--task", "t", "--method", "star_kv", "--set", "star_kv_temporal=maybe"],
        "set variant": [good, "--task", "t", "--method", "st_lite", "--set", "st_lite_variant=neither"],
    }[case]
    assert_one_line_error(run_cli(*args, "--model", str(tmp_path / "never-loaded")), *fragments)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_screenshot_is_one_line(bad_files: dict[str, Path]):
    bad_files["good"].chmod(0)
    assert_one_line_error(run_cli(str(bad_files["good"]), "--task", "t"), "permission denied")


def run_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> subprocess.CompletedProcess[str]:
    """The console entry point (`guikv_cli.app.main`) run in this process, its result shaped like a
    subprocess's. For failures inside model loading, whose imports (torch, torchvision,
    transformers) would cost a fresh process ~10 s and are already loaded here."""
    from guikv_cli.app import main

    monkeypatch.setattr(sys, "argv", ["guikv", "infer", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err)


def test_a_hub_id_without_network_or_local_copy_is_one_line(
    bad_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at call time: no network check, no download
    result = run_in_process(
        monkeypatch, capsys, str(bad_files["good"]), "--task", "t", "--model", "nobody/no-agent"
    )
    assert_one_line_error(result, "--model nobody/no-agent", "no local copy")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(
    bad_files: dict[str, Path],
    tiny_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    args = (str(bad_files["good"]), "--task", "t", "--model", str(tiny_dir), "--device", "cuda")
    assert_one_line_error(
        run_in_process(monkeypatch, capsys, *args), "--device cuda", "CUDA is not available"
    )
