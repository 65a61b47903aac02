"""`guikv eval --model oracle`: the pipeline self-check scores 100% on every benchmark's fixture, and
the run directory holds the documented files and record fields."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from eval_helpers import (
    BENCHMARK_NAMES,
    IDIOM_STEPS,
    agentnetbench_idioms,
    build_all,
    mind2web,
    oracle_eval_args,
    records,
    run_cli,
    summaries,
    write_png,
)

from benchmarks import get_benchmark
from benchmarks.runner import COST_FIELDS

Datasets = dict[str, tuple[Path, Path]]

PERFECT = {
    "agentnetbench": ("overall_score", "average_trajectory_score", "milestone_score", "hit_rate"),
    "androidcontrol": ("step_accuracy", "grounding_accuracy"),
    "screenspot-v2": ("overall_mean_of_means", "overall_micro", "text_accuracy", "icon_accuracy"),
    "screenspot-pro": ("action_acc", "text_acc", "icon_acc"),
    "mind2web": ("step_accuracy", "element_accuracy", "operation_f1"),
}
"""The summary metrics the oracle must score at 1.0."""

SAMPLES = {"agentnetbench": 7, "androidcontrol": 9, "screenspot-v2": 6, "screenspot-pro": 2, "mind2web": 9}


@pytest.fixture(scope="module")
def datasets(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Datasets:
    """Every benchmark with full-size placeholder screenshots (built once for this module)."""
    return build_all(fixtures_dir, tmp_path_factory.mktemp("oracle-data"), write_png)


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_oracle_scores_everything(
    name: str, datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    result = run_cli(oracle_eval_args(name, datasets, tmp_path), monkeypatch, capsys)
    assert result.code == 0, result.err
    [(run, summary)] = summaries(tmp_path).items()
    assert run.startswith(f"{name}/oracle/oracle-b100-")
    assert all(summary["metrics"][metric] == 1.0 for metric in PERFECT[name]), summary["metrics"]
    assert summary["samples_scored"] == SAMPLES[name]
    assert (summary["samples_skipped"], summary["samples_failed"]) == (0, 0)
    assert get_benchmark(name).title in result.out
    assert "100.0" in result.out


def test_run_directory_contract(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """The files and fields `guikv compare` reads (docs/eval.md)."""
    result = run_cli(oracle_eval_args("mind2web", datasets, tmp_path), monkeypatch, capsys)
    assert result.code == 0, result.err
    [run_dir] = [p.parent for p in tmp_path.rglob("summary.json")]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".lock",
        "config.yaml",
        "samples.jsonl",
        "summary.json",
    ]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in (
        "benchmark",
        "split",
        "data",
        "images",
        "model",
        "family",
        "method",
        "budget",
        "alpha",
        "temperature",
        "window_size",
        "screenshots",
        "limit",
        "max_new_tokens",
        "dtype",
        "attn",
        "instruction_level",
        "seed",
    ):
        assert key in config
    assert config["max_new_tokens"] == 500 and config["family"] == "ui-tars" and config["budget"] == 100.0
    summary = summaries(tmp_path)[str(run_dir.relative_to(tmp_path))]
    assert summary["config"] == config
    assert summary["metric_columns"] == ["step_accuracy", "element_accuracy", "operation_f1"]
    assert set(summary["savings"]) == {
        "decode_flops_saved_percent",
        "decode_attention_flops_saved_percent",
        "kv_saved_percent",
        "kv_bytes_full_mean",
        "kv_bytes_kept_mean",
    }
    assert all(value is None for value in summary["savings"].values())  # the oracle runs no model
    rows = records(run_dir)
    assert len({row["sample_id"] for row in rows}) == len(rows) == 9
    for row in rows:
        assert row["benchmark"] == "mind2web" and row["error"] is None
        assert all(row[name] == 0 for name in COST_FIELDS)
        assert row["action"]["type"] in ("click", "type", "select")
        assert row["raw_output"].startswith("Action: ")
        assert {"operation", "value", "bboxes"} <= set(row["ground_truth"])
        assert row["step_correct"] is True
    deep = [row for row in rows if row["model_calls"] > 1]
    assert [(row["block"], len(row["scroll_outputs"])) for row in deep] == [(2, 2)]


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_oracle_in_opencua_format(
    name: str, datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    result = run_cli(oracle_eval_args(name, datasets, tmp_path, "--family", "opencua"), monkeypatch, capsys)
    assert result.code == 0, result.err
    [summary] = summaries(tmp_path).values()
    assert summary["family"] == "opencua"
    assert all(summary["metrics"][metric] == 1.0 for metric in PERFECT[name]), summary["metrics"]


@pytest.mark.parametrize("family", ["ui-tars", "opencua"])
def test_oracle_scores_every_agentnetbench_idiom(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Drags, a submitted write, Command shortcuts, Return and a failed terminate (issue 8 items 6, 7,
    8, 11), answered in each family's own format (OpenCUA: moveTo + dragTo, write + press('enter'),
    hotkey(['cmd', 'c'])), all score 100%."""
    datasets = {"agentnetbench": agentnetbench_idioms(tmp_path / "data", write_png)}
    args = oracle_eval_args("agentnetbench", datasets, tmp_path / "runs", "--family", family)
    result = run_cli(args, monkeypatch, capsys)
    assert result.code == 0, result.err
    [summary] = summaries(tmp_path / "runs").values()
    assert summary["samples_scored"] == len(IDIOM_STEPS)
    metrics = summary["metrics"]
    perfect = ("overall_score", "average_trajectory_score", "hit_rate", "coordinate_hit_rate")
    assert all(metrics[name] == 1.0 for name in perfect), metrics
    [run_dir] = [path.parent for path in (tmp_path / "runs").rglob("summary.json")]
    answered = [row["pred_type"] for row in records(run_dir)]
    assert answered == ["dragto", "dragto", "write", "hotkey", "hotkey", "press", "terminate"]


def test_a_wholly_skipped_mind2web_task_counts_as_zero(
    fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Issue 8 item 10, through the runner: the skipped samples reach the Mind2Web summary, so a task
    whose every screenshot is missing counts 0 instead of vanishing from the macro average."""
    datasets = {"mind2web": mind2web(fixtures_dir, tmp_path / "data", write_png)}
    data, images = datasets["mind2web"]
    for line in (data / "cross_task_blocks.jsonl").read_text().splitlines():
        shutil.rmtree(images / "cross_task" / json.loads(line)["blocks_path"])
    result = run_cli(oracle_eval_args("mind2web", datasets, tmp_path / "runs"), monkeypatch, capsys)
    assert result.code == 0, result.err
    [summary] = summaries(tmp_path / "runs").values()
    metrics = summary["metrics"]
    assert (summary["samples_scored"], summary["samples_skipped"]) == (6, 3)
    assert metrics["step_accuracy"] == pytest.approx(2 / 3)
    assert metrics["splits"]["cross_task"]["step_accuracy"] == 0.0
    assert (metrics["total_tasks"], metrics["wholly_skipped_tasks"]) == (3, 1)
    assert metrics["without_wholly_skipped_tasks"]["step_accuracy"] == 1.0


def test_missing_screenshots_are_named_skipped_and_counted(
    fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    data, images = build_all(fixtures_dir, tmp_path / "data", write_png)["screenspot-v2"]
    for path in sorted(images.glob("*.png"))[:2]:
        path.unlink()
    args = ["eval", "screenspot-v2", "--model", "oracle", "--data", str(data), "--images", str(images)]
    result = run_cli([*args, "--output", str(tmp_path / "runs")], monkeypatch, capsys)
    assert result.code == 0, result.err
    [summary] = summaries(tmp_path / "runs").values()
    assert summary["samples_skipped"] == 3  # two screenshots, three records (mobile shares one)
    assert summary["samples_scored"] == 3
    assert {entry["reason"] for entry in summary["skipped"]} == {"missing screenshot"}
    assert "3 of 6 samples skipped" in result.err
    assert summary["skipped"][0]["missing"][0] in result.err
