"""Showing that a command works, and Ctrl-C: plain progress lines at a steady rate when stderr is not
a terminal (eval through a pipe), and Ctrl-C in any command as one line saying what was saved and
how to resume, exit code 130, the work kept for the re-run."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import oracle_eval_args, records, run_cli, screenspot_v2, summaries, write_png
from PIL import Image
from rich.console import Console

import guikv.analysis
from benchmarks.runner import OracleResponder
from guikv_cli.compare_live import _PairProgress
from guikv_cli.progress import PlainProgress


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_prints_the_first_and_last_item_and_then_one_line_per_interval():
    lines: list[str] = []
    clock = FakeClock()
    progress = PlainProgress(lines.append, interval=30, clock=clock)
    progress.start("agentnetbench gui_kv b10", 10)
    for _ in range(9):
        clock.now += 10
        progress.advance()
    clock.now += 10
    progress.advance()
    assert lines == [
        "agentnetbench gui_kv b10: 0/10 (0%), 0:00:00 elapsed",
        "agentnetbench gui_kv b10: 3/10 (30%), 0:00:30 elapsed, ~0:01:10 left",
        "agentnetbench gui_kv b10: 6/10 (60%), 0:01:00 elapsed, ~0:00:40 left",
        "agentnetbench gui_kv b10: 9/10 (90%), 0:01:30 elapsed, ~0:00:10 left",
        "agentnetbench gui_kv b10: 10/10 (100%), 0:01:40 elapsed",
    ]


@pytest.fixture
def screenspot(fixtures_dir: Path, tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """ScreenSpot-v2 with full-size placeholder screenshots, for the oracle."""
    return {"screenspot-v2": screenspot_v2(fixtures_dir, tmp_path / "data", write_png)}


def test_eval_through_a_pipe_prints_plain_progress_lines(screenspot, tmp_path: Path):
    args = oracle_eval_args("screenspot-v2", screenspot, tmp_path / "runs")
    done = subprocess.run(
        [sys.executable, "-m", "guikv_cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    [summary] = summaries(tmp_path / "runs").values()
    total = summary["samples_scored"]
    lines = done.stderr.splitlines()
    assert f"screenspot-v2 oracle b100: 0/{total} (0%), 0:00:00 elapsed" in lines
    assert any(line.startswith(f"screenspot-v2 oracle b100: {total}/{total} (100%)") for line in lines)
    assert "━" not in done.stderr and "\x1b" not in done.stderr  # no bar, no terminal codes


class InterruptingOracle(OracleResponder):
    """The oracle, pressing Ctrl-C on its `after`-th call."""

    calls = 0
    after = 3

    def reply(self, calls):
        InterruptingOracle.calls += 1
        if InterruptingOracle.calls == self.after:
            raise KeyboardInterrupt
        return super().reply(calls)


def test_ctrl_c_in_eval_says_what_was_saved_and_the_rerun_resumes(
    screenspot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
):
    args = oracle_eval_args("screenspot-v2", screenspot, tmp_path / "runs")
    monkeypatch.setattr("guikv_cli.eval.OracleResponder", InterruptingOracle)
    result = run_cli(args, monkeypatch, capsys)
    assert result.code == 130
    [run_dir] = list((tmp_path / "runs").glob("*/*/*"))
    assert len(records(run_dir)) == 2
    last = result.err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted: {run_dir} holds 2 of ")
    assert last.endswith("samples; re-run the same command to resume (finished samples are kept)")
    assert "Traceback" not in result.err
    monkeypatch.setattr("guikv_cli.eval.OracleResponder", OracleResponder)
    again = run_cli(args, monkeypatch, capsys)
    assert again.code == 0, again.err
    assert f"resuming {run_dir}: 2 of" in again.err


def test_ctrl_c_before_anything_is_saved_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, make_png
):
    screen = make_png(tmp_path / "screen.png", (64, 40))

    def interrupted_load(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("guikv.models.load", interrupted_load)
    result = run_cli(["infer", str(screen), "--task", "Open it"], monkeypatch, capsys)
    assert result.code == 130
    assert result.err.strip().splitlines() == [
        "interrupted: nothing was saved yet; re-run the same command to start again"
    ]


def test_compare_counts_its_pairs_and_ctrl_c_keeps_the_finished_ones(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, fixtures_dir: Path
):
    source = sorted((fixtures_dir / "agentnetbench" / "test_data" / "images").glob("*.png"))[0]
    screen = tmp_path / "screen.png"
    Image.open(source).convert("RGB").resize((224, 140)).save(screen)
    out = tmp_path / "out"
    args = [
        "compare", str(screen), "--task", "Open the settings", "--model", str(tiny_dir), "--device", "cpu",
        "--methods", "snapkv,gui_kv", "--budgets", "50,60", "--max-new-tokens", "3", "--output", str(out),
    ]  # fmt: skip
    runs: list[str] = []
    original = guikv.analysis.run_with_fidelity_probe

    def probe(model, processor, messages, config, *rest):
        runs.append(f"{config.method} {config.budget:g}")
        if len(runs) == 4:  # the full cache, two pairs, then Ctrl-C during the third pair
            raise KeyboardInterrupt
        return original(model, processor, messages, config, *rest)

    monkeypatch.setattr(guikv.analysis, "run_with_fidelity_probe", probe)
    result = run_cli(args, monkeypatch, capsys)
    assert result.code == 130
    path = out / "compare.json"
    assert result.err.strip().splitlines()[-1] == (
        f"interrupted: {path} holds 2 of 4 pairs; re-run the same command to run the other 2 "
        "(the full cache runs again first)"
    )
    assert "compare pairs: 0/4 (0%), 0:00:00 elapsed" in result.err.splitlines()  # plain lines off a terminal
    document = json.loads(path.read_text())
    assert document["complete"] is False
    assert [(row["method"], row["budget"]) for row in document["results"]] == [("snapkv", 50), ("snapkv", 60)]

    runs.clear()
    again = run_cli(args, monkeypatch, capsys)
    assert again.code == 0, again.err
    assert runs == ["full 100", "gui_kv 50", "gui_kv 60"]  # the finished pairs are not run again
    assert f"resuming {path}: 2 of 4 pairs already done" in again.err
    document = json.loads(path.read_text())
    assert document["complete"] is True and len(document["results"]) == 4


def test_the_compare_status_line_counts_pairs():
    shown: list[str] = []
    terminal = Console(file=io.StringIO(), force_terminal=True)
    progress = _PairProgress(terminal, shown.append, total=35, done=2)
    progress.running("full", 100.0)
    progress.running("snapkv", 5.0)
    progress.finished()
    progress.running("gui_kv", 1.0)
    assert shown == [
        "running full cache (the reference for every pair)",
        "pair 3/35: snapkv at 5%",
        "pair 4/35: gui_kv at 1%",
    ]
