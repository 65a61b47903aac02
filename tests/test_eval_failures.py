"""Failed samples (generation raised: out of memory, a budget below the window): reported apart from
wrong answers, the metrics over the scored samples with the failed ones also counted wrong beside
them, and retried by the next run (unless `--keep-failed`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eval_helpers import (
    Scripted,
    androidcontrol,
    assistant_texts,
    mind2web,
    play_agentnet,
    play_benchmark,
    records,
    run_cli,
    summaries,
    write_png,
)

Datasets = dict[str, tuple[Path, Path]]


@pytest.fixture(scope="module")
def agentnet(fixtures_dir: Path) -> tuple[Path, Path]:
    """The shipped AgentNetBench trajectory (7 steps, real screenshots)."""
    data = fixtures_dir / "agentnetbench" / "test_data"
    return data, data / "images"


def test_failed_samples_are_reported_apart_and_counted_wrong_beside(
    agentnet: tuple[Path, Path], tmp_path: Path
) -> None:
    summary = play_agentnet(agentnet, tmp_path, Scripted("truth", frozenset({2, 5}), truth=True))
    rows = records(tmp_path)
    failed_ids = [rows[1]["sample_id"], rows[4]["sample_id"]]
    assert (summary["samples_scored"], summary["samples_failed"]) == (5, 2)
    assert summary["failed"] == [
        {"sample_id": sample_id, "error": "RuntimeError: CUDA out of memory"} for sample_id in failed_ids
    ]
    scored, counted_wrong = summary["metrics"], summary["metrics_failures_as_wrong"]
    assert (scored["overall_score"], scored["total_steps"]) == (1.0, 5)  # over the scored samples
    assert (counted_wrong["overall_score"], counted_wrong["total_steps"]) == (pytest.approx(5 / 7), 7)
    assert summary["warning"].startswith("2 of 7 samples failed")


def test_a_failed_mind2web_step_is_left_out_of_metrics_not_padded_as_wrong(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    """Mind2Web pads each task with wrong steps up to its `total_steps`; a failed step must not be
    padded in `metrics` (scored samples only), only counted wrong in `metrics_failures_as_wrong`."""
    data = mind2web(fixtures_dir, tmp_path / "data", write_png)
    responder = Scripted("truth", frozenset({2}), truth=True)
    summary = play_benchmark("mind2web", data, tmp_path / "run", responder)
    [failed] = [row for row in records(tmp_path / "run") if row["error"]]
    assert failed["sample_id"].startswith("cross_domain/") and summary["samples_failed"] == 1
    scored, counted_wrong = summary["metrics"], summary["metrics_failures_as_wrong"]
    domain = scored["splits"]["cross_domain"]
    assert domain["step_accuracy"] == 1.0 and scored["step_accuracy"] == 1.0
    assert (domain["scored_steps"], domain["failed_steps"], domain["padded_steps"]) == (2, 1, 0)
    wrong = counted_wrong["splits"]["cross_domain"]
    assert wrong["step_accuracy"] == pytest.approx(2 / 3) and wrong["failed_steps"] == 0
    assert counted_wrong["step_accuracy"] == pytest.approx((2 / 3 + 1 + 1) / 3)


def test_a_rerun_retries_only_the_failed_samples(agentnet: tuple[Path, Path], tmp_path: Path) -> None:
    first = Scripted("first", frozenset({2}))
    play_agentnet(agentnet, tmp_path, first)
    clean = Scripted("clean")
    play_agentnet(agentnet, tmp_path / "clean", clean)
    notes: list[str] = []
    second = Scripted("second")
    summary = play_agentnet(agentnet, tmp_path, second, notes)
    assert len(second.prompts) == 1  # only the failed step ran again
    assert any("retrying 1 samples that failed before" in note for note in notes)
    rows = records(tmp_path)
    assert [row["sample_id"] for row in rows] == [row["sample_id"] for row in records(tmp_path / "clean")]
    assert rows[1]["raw_output"].startswith("Thought: second 1") and rows[1]["error"] is None
    assert (summary["samples_failed"], summary["samples_scored"], summary["failed"]) == (0, 7, [])
    assert summary["metrics_failures_as_wrong"] is None and summary["warning"] is None


def test_keep_failed_leaves_failed_samples_alone(agentnet: tuple[Path, Path], tmp_path: Path) -> None:
    play_agentnet(agentnet, tmp_path, Scripted("first", frozenset({2})))
    again = Scripted("again")
    summary = play_agentnet(agentnet, tmp_path, again, retry_failed=False)
    assert again.prompts == [] and summary["samples_failed"] == 1


def test_the_step_after_a_failed_one_sees_its_ground_truth_monologue(
    agentnet: tuple[Path, Path], tmp_path: Path
) -> None:
    responder = Scripted("x", frozenset({2}))
    play_agentnet(agentnet, tmp_path, responder)
    history = assistant_texts(responder.prompts[2])
    assert "Thought: x 1" in history[0]
    assert history[1].startswith("# Step 2:\n## Observation:")


def test_cli_reports_failures_and_a_rerun_retries_them(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A budget below the window makes every tiny-model generation raise: the run still finishes,
    the table shows the failed samples and their counted-wrong row, stderr says what failed, and the
    same command run again retries them."""
    data, images = androidcontrol(tmp_path / "data", write_png, scale=0.05)
    args = ["eval", "androidcontrol", "--model", str(tiny_dir), "--data", str(data), "--images", str(images)]
    args += ["--limit", "2", "--budgets", "0.5", "--max-new-tokens", "2", "--device", "cpu"]
    args += ["--output", str(tmp_path / "runs")]
    result = run_cli(args, monkeypatch, capsys)
    assert result.code == 0, result.err
    [summary] = summaries(tmp_path / "runs").values()
    assert (summary["samples_scored"], summary["samples_failed"]) == (0, 2)
    assert "fewer than window_size" in summary["failed"][0]["error"]
    assert summary["metrics"]["step_accuracy"] is None
    assert summary["metrics_failures_as_wrong"]["step_accuracy"] == 0.0
    assert "failed as wrong" in result.out and "failed" in result.out
    assert "2 samples FAILED: 4242/0" in result.err and "re-run the same command to retry them" in result.err
    again = run_cli(args, monkeypatch, capsys)
    assert again.code == 0, again.err
    assert "retrying 2 samples that failed before (4242/0, 4242/1)" in again.err
