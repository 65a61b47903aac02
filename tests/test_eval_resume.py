"""Run directories: resuming after a kill gives the identical summary, settings pick the directory,
`--config` YAML, and the runner's history and failure rules (AgentNetBench history = the model's own
earlier outputs, a failed generation is an unparsed error record, never an earlier output: B7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from eval_helpers import (
    Scripted,
    assistant_texts,
    build_all,
    image_count,
    oracle_eval_args,
    play_agentnet,
    records,
    run_cli,
    summaries,
    write_png,
)

from benchmarks.rundir import SUMMARY_FILE, read_trace, run_directory, run_lock
from benchmarks.runner import Call, OracleResponder
from guikv.agents import Action, get_family

Datasets = dict[str, tuple[Path, Path]]


@pytest.fixture(scope="module")
def datasets(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Datasets:
    """Every benchmark with full-size placeholder screenshots (built once for this module)."""
    return build_all(fixtures_dir, tmp_path_factory.mktemp("resume-data"), write_png)


def only_run_dir(output: Path) -> Path:
    """The single run directory under `output`."""
    [path] = [p.parent for p in output.rglob("config.yaml")]
    return path


@pytest.mark.parametrize(("name", "limit"), [("agentnetbench", "1"), ("mind2web", "2")])
def test_resume_after_a_kill_gives_the_identical_summary(
    name: str, limit: str, datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    args = oracle_eval_args(name, datasets, tmp_path, "--limit", limit)
    assert run_cli(args, monkeypatch, capsys).code == 0
    run_dir = only_run_dir(tmp_path)
    trace, summary = (run_dir / "samples.jsonl").read_bytes(), (run_dir / SUMMARY_FILE).read_bytes()
    lines = trace.splitlines(keepends=True)
    assert len(lines) == 7 if name == "agentnetbench" else 6
    # A kill while writing the fourth record: three whole lines, half a line, no summary.
    (run_dir / "samples.jsonl").write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    (run_dir / SUMMARY_FILE).unlink()
    result = run_cli(args, monkeypatch, capsys)
    assert result.code == 0, result.err
    assert "dropped an incomplete last line" in result.err
    assert f"3 of {len(lines)} samples already done" in result.err
    assert (run_dir / SUMMARY_FILE).read_bytes() == summary
    assert (run_dir / "samples.jsonl").read_bytes() == trace


def test_a_finished_run_is_not_run_again_and_no_resume_starts_afresh(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    args = oracle_eval_args("androidcontrol", datasets, tmp_path)
    assert run_cli(args, monkeypatch, capsys).code == 0
    run_dir = only_run_dir(tmp_path)
    trace = (run_dir / "samples.jsonl").read_bytes()
    again = run_cli(args, monkeypatch, capsys)
    assert "9 of 9 samples already done" in again.err
    assert (run_dir / "samples.jsonl").read_bytes() == trace
    fresh = run_cli([*args, "--no-resume"], monkeypatch, capsys)
    assert fresh.code == 0
    assert "--no-resume: starting" in fresh.err
    assert "its 9 earlier records moved to samples.previous.jsonl" in fresh.err
    assert (run_dir / "samples.previous.jsonl").read_bytes() == trace
    assert (run_dir / "samples.jsonl").read_bytes() == trace


def test_settings_choose_the_directory(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A run's settings name its directory: another --limit is another run, the same settings
    (however the budgets were asked) the same run. The oracle runs once, at 100, whatever the budgets."""
    base = oracle_eval_args("screenspot-pro", datasets, tmp_path)
    assert run_cli([*base, "--budgets", "5,20"], monkeypatch, capsys).code == 0
    assert run_cli([*base, "--budgets", "5", "--limit", "1"], monkeypatch, capsys).code == 0
    assert run_cli([*base, "--budgets", "20"], monkeypatch, capsys).code == 0  # same as the first
    runs = sorted(summaries(tmp_path))
    assert len(runs) == 2
    assert all(Path(run).name.startswith("oracle-b100-") for run in runs)
    limits = sorted(str(summary["config"]["limit"]) for summary in summaries(tmp_path).values())
    assert limits == ["1", "None"]


def test_a_models_budget_and_knobs_choose_the_directory(tmp_path: Path) -> None:
    settings = {"benchmark": "screenspot-pro", "model": "org/agent", "method": "gui_kv", "budget": 5.0}
    first = run_directory(tmp_path, {**settings, "alpha": 2.0})
    assert first.parent == tmp_path / "screenspot-pro" / "org--agent" and first.name.startswith("gui_kv-b5-")
    assert run_directory(tmp_path, {**settings, "alpha": 2.0}) == first
    other_knob = run_directory(tmp_path, {**settings, "alpha": 1.0})
    assert other_knob.name.startswith("gui_kv-b5-") and other_knob != first
    assert run_directory(tmp_path, {**settings, "budget": 20.0, "alpha": 2.0}).name.startswith("gui_kv-b20-")


def test_config_yaml_flags_win_and_a_run_config_resumes_its_run(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    data, images = datasets["androidcontrol"]
    settings = {
        "benchmark": "androidcontrol",
        "model": "oracle",
        "data": str(data),
        "images": str(images),
        "limit": 4,
        "instruction-level": "low",
        "output": str(tmp_path / "runs"),
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(settings))
    result = run_cli(["eval", "--config", str(tmp_path / "run.yaml"), "--limit", "2"], monkeypatch, capsys)
    assert result.code == 0, result.err
    run_dir = only_run_dir(tmp_path / "runs")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (config["budget"], config["limit"], config["instruction_level"]) == (100.0, 2, "low")
    again = run_cli(
        ["eval", "--config", str(run_dir / "config.yaml"), "--output", str(tmp_path / "runs")],
        monkeypatch,
        capsys,
    )
    assert again.code == 0, again.err
    assert "2 of 2 samples already done" in again.err
    assert only_run_dir(tmp_path / "runs") == run_dir


def test_a_damaged_line_inside_the_trace_is_an_error_naming_it(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    args = oracle_eval_args("screenspot-v2", datasets, tmp_path)
    assert run_cli(args, monkeypatch, capsys).code == 0
    trace = only_run_dir(tmp_path) / "samples.jsonl"
    lines = trace.read_text().splitlines(keepends=True)
    trace.write_text(lines[0] + "{oops\n" + "".join(lines[1:]))
    before = trace.read_bytes()
    result = run_cli(args, monkeypatch, capsys)
    assert result.code == 2
    assert f"{trace} (line 2)" in result.err and len(result.err.strip().splitlines()) == 1
    assert trace.read_bytes() == before


def test_a_second_invocation_on_a_busy_run_directory_stops(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    args = oracle_eval_args("screenspot-pro", datasets, tmp_path)
    assert run_cli(args, monkeypatch, capsys).code == 0
    run_dir = only_run_dir(tmp_path)
    trace = (run_dir / "samples.jsonl").read_bytes()
    with run_lock(run_dir):
        result = run_cli([*args, "--no-resume"], monkeypatch, capsys)
    assert result.code == 2
    assert "another guikv eval is running into this run directory" in result.err
    assert (run_dir / "samples.jsonl").read_bytes() == trace


def test_agentnet_history_is_the_models_own_output_also_after_a_resume(
    datasets: Datasets, tmp_path: Path
) -> None:
    first = Scripted("first")
    play_agentnet(datasets["agentnetbench"], tmp_path, first, [])
    assert [image_count(p) for p in first.prompts] == [1, 2, 2, 2, 2, 2, 2]  # --screenshots 2
    assert assistant_texts(first.prompts[3]) == [
        f"# Step {k}:\nStep {k}:\nThought: first {k}\nAction: wait()" for k in (1, 2, 3)
    ]
    trace = tmp_path / "samples.jsonl"
    trace.write_text("".join(trace.read_text().splitlines(keepends=True)[:3]))
    second = Scripted("second")
    play_agentnet(datasets["agentnetbench"], tmp_path, second, [])
    assert len(second.prompts) == 4
    history = assistant_texts(second.prompts[1])
    assert "Thought: first 3" in history[2] and "Thought: second 1" in history[3]


def test_a_failed_generation_is_recorded_unparsed_never_reusing_an_output(
    datasets: Datasets, tmp_path: Path
) -> None:
    notes: list[str] = []
    summary = play_agentnet(datasets["agentnetbench"], tmp_path, Scripted("x", frozenset({2})), notes)
    rows = records(tmp_path)
    assert [row["error"] is not None for row in rows] == [False, True, False, False, False, False, False]
    failed = rows[1]
    assert failed["error"] == "RuntimeError: CUDA out of memory"
    assert (failed["raw_output"], failed["action"]["type"], failed["score"]) == ("", "unparsed", 0.0)
    assert rows[2]["raw_output"].startswith("Thought: x 3")
    assert summary["samples_failed"] == 1 and summary["samples_scored"] == 6
    assert any("generation failed" in note and failed["sample_id"] in note for note in notes)


def test_read_trace_drops_only_a_partial_last_line(tmp_path: Path) -> None:
    trace = tmp_path / "samples.jsonl"
    whole = json.dumps({"sample_id": "a", "score": 1}) + "\n"
    trace.write_text(whole + '{"sample_id": "b", "sc')
    read = read_trace(trace, repair=True)
    assert ([r["sample_id"] for r in read.records], read.dropped_partial) == (["a"], True)
    assert trace.read_text() == whole
    trace.write_text(whole + json.dumps({"sample_id": "b"}))  # whole record, newline lost
    assert [r["sample_id"] for r in read_trace(trace, repair=True).records] == ["a", "b"]
    assert trace.read_text().endswith("}\n")


def test_oracle_answers_without_a_model() -> None:
    """The oracle writes the ground truth in the family's format (what `run` parses back)."""
    action = Action.unparsed("anything")
    [reply] = OracleResponder(get_family("ui-tars")).reply([Call([], lambda: action, (100, 100))])
    assert reply.text == "anything" and set(reply.costs.values()) == {0}
