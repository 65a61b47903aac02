"""The `guikv eval` command end to end: the tiny model on all five benchmarks in a real subprocess, and
every bad input as one line on stderr with exit code 2, no traceback, nothing written lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import (
    BENCHMARK_NAMES,
    build_all,
    environment,
    records,
    run_cli,
    screenspot_pro,
    summaries,
    write_png,
)

from benchmarks import get_benchmark
from benchmarks.runner import COST_FIELDS

Datasets = dict[str, tuple[Path, Path]]


@pytest.fixture(scope="module")
def datasets(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Datasets:
    """Full-size datasets for the bad-input cases (built once for this module)."""
    return build_all(fixtures_dir, tmp_path_factory.mktemp("cli-data"), write_png)


def test_tiny_model_on_every_benchmark(fixtures_dir: Path, tiny_dir: Path, tmp_path: Path) -> None:
    """One subprocess runs the five benchmarks (data from the environment variables) with the tiny
    model on small placeholder screenshots, and measures what compression saved."""
    small = build_all(fixtures_dir, tmp_path / "data", write_png, scale=0.1)
    command = [sys.executable, "-m", "guikv_cli", "eval", *BENCHMARK_NAMES, "--model", str(tiny_dir)]
    options = ["--max-new-tokens", "8", "--limit", "1", "--screenshots", "2", "--device", "cpu"]
    completed = subprocess.run(
        [*command, *options, "--output", str(tmp_path / "runs")],
        env={**os.environ, **environment(small)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    runs = summaries(tmp_path / "runs")
    assert sorted(summary["benchmark"] for summary in runs.values()) == sorted(BENCHMARK_NAMES)
    for run, summary in runs.items():
        assert summary["config"]["max_new_tokens"] == 8 and summary["config"]["dtype"] == "float32"
        assert summary["samples_scored"] > 0 and summary["samples_failed"] == 0
        assert 0 < summary["savings"]["kv_saved_percent"] < 100
        assert 0 < summary["savings"]["decode_flops_saved_percent"] < 100
        assert get_benchmark(summary["benchmark"]).title in completed.stdout
        for row in records(tmp_path / "runs" / run):
            assert row["prompt_tokens"] > row["kept_tokens"] > 0
            assert row["kv_bytes_full"] > row["kv_bytes_kept"] > 0
            assert set(COST_FIELDS) <= set(row) and row["generated_tokens"] <= 8 * row["model_calls"]
    agentnet = next(s for s in runs.values() if s["benchmark"] == "agentnetbench")
    assert agentnet["samples_scored"] == 3 and agentnet["config"]["screenshots"] == 2


@pytest.mark.parametrize(
    ("method", "knobs"),
    [
        ("st_lite", {"st_lite_variant": "paper"}),
        ("star_kv", {"star_kv_prior_lambda": 0.3, "star_kv_temporal": False}),
    ],
)
def test_the_frontier_methods_run_with_knobs_from_the_config(
    method: str, knobs: dict[str, Any], fixtures_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """`--method` takes both 2026 methods and `--config` sets their knobs, written to the summary."""
    small = build_all(fixtures_dir, tmp_path / "data", write_png, scale=0.1)
    (tmp_path / "knobs.yaml").write_text(json.dumps(knobs))
    command = [sys.executable, "-m", "guikv_cli", "eval", "agentnetbench", "--model", str(tiny_dir)]
    options = ["--method", method, "--config", str(tmp_path / "knobs.yaml"), "--max-new-tokens", "4"]
    completed = subprocess.run(
        [*command, *options, "--screenshots", "2", "--device", "cpu", "--output", str(tmp_path / "runs")],
        env={**os.environ, **environment(small)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    [summary] = summaries(tmp_path / "runs").values()
    assert summary["method"] == method and summary["samples_scored"] == 3
    assert {key: summary["config"][key] for key in knobs} == knobs
    assert 0 < summary["savings"]["kv_saved_percent"] < 100


def test_set_knobs_on_eval_beat_the_config_and_name_the_run(
    fixtures_dir: Path, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`--set KNOB=VALUE` works on eval as on infer: typed like its field, winning over the same key
    in `--config`, written to config.yaml (so it chooses the run directory)."""
    (tmp_path / "knobs.yaml").write_text("star_kv_prior_lambda: 0.1\nrank: 16\n")
    data, images = screenspot_pro(fixtures_dir, tmp_path / "data", write_png, scale=0.1)
    args = ["eval", "screenspot-pro", "--model", str(tiny_dir), "--data", str(data), "--images", str(images)]
    args += ["--method", "star_kv", "--config", str(tmp_path / "knobs.yaml"), "--max-new-tokens", "2"]
    args += ["--device", "cpu", "--output", str(tmp_path / "runs")]
    knobs = ["--set", "star_kv_prior_lambda=0.3", "--set", "star_kv_temporal=false"]
    result = run_cli([*args, *knobs, "--budgets", "5,20"], monkeypatch, capsys)
    assert result.code == 0, result.err
    runs = summaries(tmp_path / "runs")
    assert sorted(summary["budget"] for summary in runs.values()) == [5.0, 20.0]
    for summary in runs.values():
        config = summary["config"]
        assert (config["star_kv_prior_lambda"], config["star_kv_temporal"], config["rank"]) == (
            0.3,
            False,
            16,
        )
    assert run_cli([*args, "--budgets", "5"], monkeypatch, capsys).code == 0
    assert len(summaries(tmp_path / "runs")) == 3  # without the knobs: another run


def write_android(data: Path, edit: Callable[[list[dict[str, Any]]], None]) -> None:
    """Rewrite `500_steps.json` in `data` after `edit` changed its records in place."""
    path = data / "500_steps.json"
    rows = json.loads(path.read_text())
    edit(rows)
    path.write_text(json.dumps(rows))


BAD_INPUTS: dict[str, tuple[list[str], str]] = {
    "missing data directory": (["screenspot-v2", "--data", "{tmp}/nowhere"], "nowhere: expected a directory"),
    "wrong layout": (
        ["screenspot-v2", "--data", "{mind2web_data}"],
        "screenspot_mobile_v2.json: expected an",
    ),
    "missing field": (["androidcontrol", "--data", "{broken_android}"], "(record 1): field 'goal': expected"),
    "unknown benchmark": (["screenspot-v3"], "benchmark: unknown name 'screenspot-v3'"),
    "unknown split": (["screenspot-v2", "--split", "tablet"], "--split: unknown value 'tablet'"),
    "limit 0": (["screenspot-v2", "--limit", "0"], "--limit 0 is invalid: expected a positive integer"),
    "unwritable output": (["screenspot-v2", "--output", "{tmp}/a-file/runs"], "--output: cannot write"),
    "unknown yaml key": (
        ["screenspot-v2", "--config", "{tmp}/bad.yaml"],
        "unknown key 'bugdet' (did you mean 'budget'?)",
    ),
    "wrong screenshots directory": (["screenspot-v2", "--images", "{tmp}"], "none of the 6 samples"),
    "no data at all": (["mind2web"], "mind2web: no data directory; pass --data or set MM_MIND2WEB_TEST"),
    "budget out of range": (["screenspot-v2", "--budgets", "5,150"], "--budgets: 150 is outside (0, 100]"),
    "budget from yaml out of range": (
        ["screenspot-v2", "--config", "{tmp}/budget.yaml"],
        "--config budgets: 150 is outside (0, 100]",
    ),
    "repeated budget flag": (["screenspot-v2", "--budget", "5"], "No such option: --budget"),
    "set unknown knob": (
        ["screenspot-v2", "--set", "st_lite_varient=paper"],
        "--set st_lite_varient is unknown (did you mean 'st_lite_variant'?)",
    ),
    "set a flag's knob": (["screenspot-v2", "--set", "budget=5"], "--set budget is unknown (use --budgets)"),
    "set knob value": (
        ["screenspot-v2", "--method", "st_lite", "--set", "st_lite_variant=neither"],
        "--set st_lite_variant='neither' is invalid",
    ),
    "set with rescore": (["{tmp}", "--rescore", "--set", "rank=8"], "--set belongs to running an eval"),
    "unknown method": (["screenspot-v2", "--method", "h2o"], "st_lite, star_kv"),
    "st_lite knob value": (["screenspot-v2", "--config", "{tmp}/variant.yaml"], "st_lite_variant"),
    "data flag with several benchmarks": (
        ["screenspot-v2", "androidcontrol", "--data", "{tmp}"],
        "--data applies",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(
    case: str, datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "bad.yaml").write_text("bugdet: 10\n")
    (tmp_path / "budget.yaml").write_text("budgets: [5, 150]\n")
    (tmp_path / "variant.yaml").write_text("method: st_lite\nst_lite_variant: neither\n")
    broken = tmp_path / "android"
    broken.mkdir()
    (broken / "500_steps.json").write_text((datasets["androidcontrol"][0] / "500_steps.json").read_text())
    write_android(broken, lambda rows: rows[1].pop("goal"))
    monkeypatch.delenv("MM_MIND2WEB_TEST", raising=False)
    monkeypatch.setenv("SCREENSPOT_TEST", str(datasets["screenspot-v2"][0]))
    monkeypatch.setenv("SCREENSPOT_IMGS", str(datasets["screenspot-v2"][1]))
    monkeypatch.setenv("ANDROIDCONTROL_IMGS", str(datasets["androidcontrol"][1]))
    places = {
        "tmp": str(tmp_path),
        "mind2web_data": str(datasets["mind2web"][0]),
        "broken_android": str(broken),
    }
    args, expected = BAD_INPUTS[case]
    filled = [arg.format(**places) for arg in args]
    output = [] if "--output" in filled else ["--output", str(tmp_path / "runs")]
    result = run_cli(["eval", *filled, "--model", "oracle", *output], monkeypatch, capsys)
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert expected.format(**places) in lines[0]
    assert not list(tmp_path.rglob("*.jsonl"))


def test_bad_input_keeps_what_was_written(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    data, images = datasets["androidcontrol"]
    args = ["eval", "androidcontrol", "--model", "oracle", "--data", str(data), "--images", str(images)]
    args += ["--output", str(tmp_path)]
    assert run_cli(args, monkeypatch, capsys).code == 0
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for bad in (
        ["--no-resume", "--limit", "0"],
        ["--no-resume", "--split", "tablet"],
        ["--no-resume", "--budgets", "0"],
    ):
        assert run_cli([*args, *bad], monkeypatch, capsys).code == 2
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


def test_a_real_process_reports_bad_input_without_a_traceback(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "guikv_cli",
            "eval",
            "agentnetbench",
            "--data",
            str(tmp_path / "none"),
            "--images",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none'}: expected a directory holding AgentNetBench trajectory JSON files "
        "(set AGENTNETBENCH_DATA or the matching flag)"
    ]
