"""`guikv compare` through a real subprocess: screenshots under several methods and budgets against
the full cache (a budget below the window is reported, not a crash) with oracle recall, finished
eval runs, and a bad input; and `compare_methods` running the full cache only once (once more,
untimed, for the oracle)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_compare import write_run

import guikv.analysis
from guikv.analysis import compare_methods
from guikv.config import CompressionConfig


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m guikv_cli ARGS` and capture its output."""
    command = [sys.executable, "-m", "guikv_cli", *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def screenshot(tmp_path: Path, fixtures_dir: Path) -> Path:
    """A small desktop screenshot (a downscaled copy of an AgentNetBench fixture image)."""
    source = sorted((fixtures_dir / "agentnetbench" / "test_data" / "images").glob("*.png"))[0]
    path = tmp_path / "shot.png"
    Image.open(source).convert("RGB").resize((224, 140)).save(path)
    return path


def test_screenshot_form_takes_set_knobs(tmp_path: Path, tiny_dir: Path, screenshot: Path):
    """`--set KNOB=VALUE` reaches every pair's config, as on infer and eval, and is recorded."""
    done = run_cli(
        "compare", screenshot, "--task", "Open the settings menu", "--model", tiny_dir,
        "--methods", "st_lite", "--budgets", "50", "--set", "st_lite_variant=paper", "--set", "rank=8",
        "--max-new-tokens", "2", "--output", "out", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert (document["config"]["st_lite_variant"], document["config"]["rank"]) == ("paper", 8)
    assert [(row["method"], row["runnable"]) for row in document["results"]] == [("st_lite", True)]


def test_screenshot_form_reports_fidelity_costs_and_unrunnable_budgets(
    tmp_path: Path, tiny_dir: Path, screenshot: Path
):
    done = run_cli(
        "compare", screenshot, "--task", "Open the settings menu", "--model", tiny_dir,
        "--methods", "full,snapkv,gui_kv", "--budgets", "0.5,50", "--max-new-tokens", "4",
        "--output", "out", "--html", "out/report.html", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "Fidelity to the full cache" in done.stdout and "not runnable" in done.stdout
    header = next(line for line in done.stdout.splitlines() if "agreement" in line)
    assert header.split()[-2:] == ["recall", "action"]
    assert "oracle recall: the share of the prompt positions" in done.stdout
    document = json.loads((tmp_path / "out" / "compare.json").read_text())
    reference = document["reference"]
    assert reference["method"] == "full" and reference["kept_per_layer"] == [document["prompt_tokens"]] * 4
    assert reference["oracle_recall"] == 1.0 and reference["oracle_recall_per_layer"] == [1.0] * 4
    pairs = [(row["method"], row["budget"], row["runnable"]) for row in document["results"]]
    assert pairs == [
        ("snapkv", 0.5, False),
        ("snapkv", 50.0, True),
        ("gui_kv", 0.5, False),
        ("gui_kv", 50.0, True),
    ]
    for row in document["results"]:
        if not row["runnable"]:
            assert "fewer than window_size" in row["reason"]
            continue
        assert 0.0 <= row["token_agreement"] <= 1.0 and isinstance(row["exact_match"], bool)
        assert row["kl_first_decode_step"] >= 0.0 and isinstance(row["action_match"], bool)
        assert row["kept_per_layer"] == [document["prompt_tokens"] // 2] * 4
        per_layer = row["oracle_recall_per_layer"]
        assert len(per_layer) == 4 and all(0.0 <= value <= 1.0 for value in per_layer)
        assert row["oracle_recall"] == pytest.approx(sum(per_layer) / 4)
        assert row["kv_mib"] < reference["kv_mib"] and row["decode_flops"] < reference["decode_flops"]
        assert row["prefill_ms"] > 0
    assert document["figures"] == ["fidelity_vs_budget.png", "oracle_recall_vs_budget.png"]
    for name in document["figures"]:
        assert np.asarray(Image.open(tmp_path / "out" / name).convert("L"), dtype=float).std() > 10
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "oracle recall" in page


def test_a_one_token_answer_reports_recall_as_undefined_with_the_reason(
    tmp_path: Path, tiny_dir: Path, screenshot: Path
):
    """With one generated token nothing was decoded from the cache: recall is null with a reason in
    compare.json and on stdout, the recall figure is left out, and nothing crashes."""
    done = run_cli(
        "compare", screenshot, "--task", "Open the settings menu", "--model", tiny_dir,
        "--methods", "full,snapkv", "--budgets", "50", "--max-new-tokens", "1",
        "--output", "out", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "undefined: the full-cache answer is one token" in done.stdout
    document = json.loads((tmp_path / "out" / "compare.json").read_text())
    for row in (document["reference"], *document["results"]):
        assert row["generated_tokens"] == 1
        assert row["oracle_recall"] is None and row["oracle_recall_per_layer"] is None
        assert row["oracle_recall_reason"].startswith("undefined: the full-cache answer is one token")
    assert document["figures"] == ["fidelity_vs_budget.png"]


def test_run_form_through_the_subprocess(tmp_path: Path):
    write_run(tmp_path / "runs", "snapkv", 10, 0.4)
    write_run(tmp_path / "runs", "gui_kv", 10, 0.5)
    done = run_cli("compare", "runs", "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "AgentNetBench (agentnetbench)" in done.stdout and "gui_kv" in done.stdout
    assert (tmp_path / "out" / "accuracy_vs_budget.png").is_file()


def test_a_bad_input_through_the_subprocess_is_one_line_and_exit_2(tmp_path: Path, screenshot: Path):
    done = run_cli("compare", screenshot, "--task", "t", "--budgets", "0,5", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: --budgets: 0 is outside (0, 100]: a budget is a percentage of the prompt"
    ]


def count_run_steps(monkeypatch) -> list[tuple[str, bool]]:
    """Record (method, oracle_mass) of every run_step compare_methods makes (the real one still runs)."""
    calls: list[tuple[str, bool]] = []
    original = guikv.analysis.run_step

    def counting(*args, **kwargs):
        calls.append((args[3].method, kwargs.get("oracle_mass", False)))
        return original(*args, **kwargs)

    monkeypatch.setattr(guikv.analysis, "run_step", counting)
    return calls


def one_screen_messages(screenshot: Path) -> list[dict]:
    """One user turn: the screenshot, then a one-word task."""
    return [
        {
            "role": "user",
            "content": [{"type": "image", "image": str(screenshot)}, {"type": "text", "text": "Go"}],
        }
    ]


def test_full_cache_runs_once_however_often_it_is_asked_for(monkeypatch, tiny_sdpa, screenshot: Path):
    model, processor = tiny_sdpa
    calls = count_run_steps(monkeypatch)
    reference, runs = compare_methods(
        model, processor, one_screen_messages(screenshot),
        [("full", 100.0), ("snapkv", 100.0), ("full", 100.0)],
        max_new_tokens=3, base=CompressionConfig(window_size=4),
    )  # fmt: skip
    assert [method for method, _ in calls] == ["full", "snapkv"]
    assert [run.result for run in runs][::2] == [reference.result, reference.result]
    assert runs[1].agreement == 1.0 and runs[1].exact_match and runs[1].kl == pytest.approx(0.0, abs=1e-12)


def test_recall_costs_one_untimed_full_run_and_is_whole_at_budget_100(
    monkeypatch, tiny_sdpa, screenshot: Path
):
    model, processor = tiny_sdpa
    calls = count_run_steps(monkeypatch)
    reference, runs = compare_methods(
        model, processor, one_screen_messages(screenshot),
        [("full", 100.0), ("snapkv", 100.0), ("snapkv", 20.0)],
        max_new_tokens=3, base=CompressionConfig(window_size=4), recall=True,
    )  # fmt: skip
    assert calls == [("full", False), ("full", True), ("snapkv", False), ("snapkv", False)]
    assert reference.recall == 1.0 and runs[0].recall == 1.0 and runs[1].recall == 1.0
    assert runs[2].recall is not None and 0.0 <= runs[2].recall < 1.0
    assert len(runs[2].recall_per_layer) == 4
