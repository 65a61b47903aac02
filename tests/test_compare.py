"""`guikv compare` on finished eval runs (synthetic run directories in the eval contract's format):
discovery, grouping by benchmark, the table, compare.json, figures; the option parsers; and every
bad input as one line with exit 2."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from benchmarks.finished_runs import find_runs, group_runs
from benchmarks.stats import stderr_key
from benchmarks.step_fidelity import method_pairs
from guikv.errors import UserInputError
from guikv_cli.app import main
from guikv_cli.compare import DEFAULT_METHODS, parse_budgets, parse_methods
from guikv_cli.compare_rundirs import runs_table

AGENTNET_COLUMNS = ["overall_score", "average_trajectory_score", "milestone_score", "hit_rate"]


def write_run(
    root: Path,
    method: str,
    budget: float,
    score: float,
    *,
    benchmark: str = "agentnetbench",
    title: str = "AgentNetBench",
    columns: list[str] | None = None,
    **overrides: Any,
) -> Path:
    """A finished eval run directory `<root>/<benchmark>/tiny/<method>-b<budget>-<hash>` holding
    config.yaml, samples.jsonl and summary.json as `guikv eval` writes them."""
    columns = columns or AGENTNET_COLUMNS
    directory = root / benchmark / "tiny" / f"{method}-b{budget:g}-0123abcd"
    directory.mkdir(parents=True)
    full_bytes = 1_000_000
    kept = full_bytes if method == "full" else full_bytes * budget / 100
    summary = {
        "benchmark": benchmark,
        "title": title,
        "model": "tiny",
        "family": "ui-tars",
        "method": method,
        "budget": budget,
        "config": {"method": method, "budget": budget, "window_size": 8},
        "metric_columns": columns,
        "metrics": {
            key: value
            for index, column in enumerate(columns)
            for key, value in ((column, score - 0.1 * index), (stderr_key(column), 0.02 + 0.01 * index))
        }
        | {"total_steps": 7},
        "savings": {
            "decode_flops_saved_percent": 100 * (1 - kept / full_bytes) * 0.4,
            "decode_attention_flops_saved_percent": 100 * (1 - kept / full_bytes),
            "kv_saved_percent": 100 * (1 - kept / full_bytes),
            "kv_bytes_full_mean": full_bytes,
            "kv_bytes_kept_mean": kept,
        },
        "samples_scored": 7,
        "samples_skipped": 0,
        "skipped": [],
        "samples_failed": 0,
        **overrides,
    }
    (directory / "config.yaml").write_text(f"method: {method}\nbudget: {budget}\n")
    (directory / "samples.jsonl").write_text(json.dumps({"sample_id": "t/1", "benchmark": benchmark}) + "\n")
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Full cache, SnapKV and GUI-KV at two budgets on AgentNetBench, and one ScreenSpot-v2 run."""
    root = tmp_path / "runs"
    write_run(root, "full", 100, 0.60)
    for budget, snap, gui in ((5, 0.40, 0.50), (20, 0.52, 0.58)):
        write_run(root, "snapkv", budget, snap)
        write_run(root, "gui_kv", budget, gui)
    write_run(
        root, "gui_kv", 10, 0.7, benchmark="screenspot-v2", title="ScreenSpot-v2",
        columns=["overall_mean_of_means", "text_accuracy"],
    )  # fmt: skip
    return root


def render(table: Any) -> str:
    """The table as plain text, wide enough not to wrap."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Run the CLI in this process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["guikv", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def test_runs_are_found_below_parents_and_grouped_by_benchmark(runs: Path):
    two = [
        runs / "agentnetbench" / "tiny" / "snapkv-b5-0123abcd",
        runs / "agentnetbench" / "tiny" / "full-b100-0123abcd",
    ]
    assert [run.path.name for run in find_runs(two).finished] == ["snapkv-b5-0123abcd", "full-b100-0123abcd"]
    found = find_runs([runs, runs / "agentnetbench"]).finished
    assert len(found) == 6
    groups = group_runs(found)
    assert list(groups) == ["agentnetbench", "screenspot-v2"]
    order = [(run.summary["method"], run.summary["budget"]) for run in groups["agentnetbench"]]
    assert order == [("full", 100), ("snapkv", 5), ("snapkv", 20), ("gui_kv", 5), ("gui_kv", 20)]


def test_table_from_two_run_directories(runs: Path):
    directories = [
        runs / "agentnetbench" / "tiny" / name for name in ("gui_kv-b5-0123abcd", "snapkv-b5-0123abcd")
    ]
    groups = group_runs(find_runs(directories).finished)
    lines = [
        line.split() for line in render(runs_table("agentnetbench", groups["agentnetbench"])).splitlines()
    ]
    lines = [line for line in lines if line]
    assert lines[0] == ["AgentNetBench", "(agentnetbench)"]
    assert [" ".join(line) for line in lines[1:4]] == [
        "average decode",
        "overall trajectory milestone hit KV FLOPs KV MiB",
        "method budget % score % score % score % rate % saved % saved % kept",
    ]
    assert " ".join(lines[5]) == "snapkv 5 40.0 ± 2.0 30.0 ± 3.0 20.0 ± 4.0 10.0 ± 5.0 95.0 38.0 0.05"
    assert " ".join(lines[6]) == "gui_kv 5 50.0 ± 2.0 40.0 ± 3.0 30.0 ± 4.0 20.0 ± 5.0 95.0 38.0 0.05"
    assert " ".join(lines[7]) == "metrics in % ± standard error; samples per run: 7 scored"


def test_table_shows_differing_sample_counts_and_several_models(tmp_path: Path):
    write_run(tmp_path / "a", "snapkv", 5, 0.4)
    write_run(tmp_path / "b", "snapkv", 5, 0.4, model="other", samples_skipped=2, samples_failed=1)
    runs = group_runs(find_runs([tmp_path]).finished)["agentnetbench"]
    text = render(runs_table("agentnetbench", runs))
    assert "model" in text and "other" in text and "samples" in text
    assert "7 scored, 2 skipped, 1 failed" in text


def test_a_run_with_failed_samples_also_shows_them_counted_wrong(monkeypatch, capsys, tmp_path: Path) -> None:
    wrong = {column: 0.25 for column in AGENTNET_COLUMNS}
    write_run(tmp_path / "runs", "snapkv", 5, 0.4, samples_failed=2, metrics_failures_as_wrong=wrong)
    write_run(tmp_path / "runs", "gui_kv", 5, 0.5)
    runs = group_runs(find_runs([tmp_path / "runs"]).finished)["agentnetbench"]
    lines = [line.split() for line in render(runs_table("agentnetbench", runs)).splitlines()]
    row = next(i for i, line in enumerate(lines) if line[:1] == ["snapkv"])
    assert " ".join(lines[row]).endswith(
        "40.0 ± 2.0 30.0 ± 3.0 20.0 ± 4.0 10.0 ± 5.0 95.0 38.0 0.05 7 scored, 0 skipped, 2 failed"
    )
    assert " ".join(lines[row + 1]) == "failed as wrong" + " 25.0 ± n/a" * 4  # a summary without errors
    assert lines[row + 2][:2] == ["gui_kv", "5"]
    code, _, stderr = run_main(
        monkeypatch, capsys, "compare", tmp_path / "runs", "--output", tmp_path / "out"
    )
    assert code == 0, stderr
    document = json.loads((tmp_path / "out" / "compare.json").read_text())
    by_method = {run["method"]: run for run in document["groups"][0]["runs"]}
    assert by_method["snapkv"]["metrics_failures_as_wrong"] == wrong | {
        stderr_key(column): None for column in AGENTNET_COLUMNS
    }
    assert by_method["gui_kv"]["metrics"]["overall_score_stderr"] == pytest.approx(0.02)
    assert by_method["gui_kv"]["metrics_failures_as_wrong"] is None


def test_cli_writes_grouped_tables_json_figures_and_html(monkeypatch, capsys, runs: Path, tmp_path: Path):
    out = tmp_path / "out"
    code, stdout, stderr = run_main(
        monkeypatch, capsys, "compare", runs, "--output", out, "--html", out / "r.html"
    )
    assert code == 0, stderr
    assert "AgentNetBench (agentnetbench)" in stdout and "ScreenSpot-v2 (screenspot-v2)" in stdout
    document = json.loads((out / "compare.json").read_text())
    assert [group["benchmark"] for group in document["groups"]] == ["agentnetbench", "screenspot-v2"]
    first = document["groups"][0]["runs"][0]
    assert first["method"] == "full" and first["metrics"]["overall_score"] == pytest.approx(0.6)
    assert document["figures"] == ["accuracy_vs_budget.png", "accuracy_vs_kv_memory.png"]
    for name in document["figures"]:
        assert np.asarray(Image.open(out / name).convert("L"), dtype=float).std() > 10
    page = (out / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "ScreenSpot-v2" in page


def unfinished_run(root: Path, records: int) -> Path:
    """A run directory `guikv eval` started and left: config.yaml, .lock, `records` trace lines."""
    directory = root / "agentnetbench" / "tiny" / "gui_kv-b40-0123abcd"
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text("method: gui_kv\nbudget: 40\n")
    (directory / ".lock").touch()
    lines = [
        json.dumps({"sample_id": f"t/{index}", "benchmark": "agentnetbench"}) for index in range(records)
    ]
    (directory / "samples.jsonl").write_text("".join(line + "\n" for line in lines))
    return directory


def test_an_unfinished_run_is_skipped_with_a_notice(monkeypatch, capsys, runs: Path, tmp_path: Path):
    left = unfinished_run(runs, 2)
    code, stdout, stderr = run_main(monkeypatch, capsys, "compare", runs, "--output", tmp_path / "out")
    assert code == 0, stderr
    notice = " ".join(stderr.split())
    assert f"skipped {left}: unfinished (no summary.json yet, 2 samples so far)" in notice
    assert "re-run its guikv eval command to finish it" in notice
    assert "1 unfinished skipped" in stdout and "b40" not in stdout
    document = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert document["unfinished"] == [{"path": str(left), "records": 2}]
    code, _, stderr = run_main(monkeypatch, capsys, "compare", left, "--output", tmp_path / "out")
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "an unfinished eval run (no summary.json yet, 2 samples so far)" in stderr


def test_runs_over_different_samples_are_warned(monkeypatch, capsys, tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, "full", 100, 0.6)
    limited = {"method": "gui_kv", "budget": 10, "split": "all", "limit": 1}
    write_run(root, "gui_kv", 10, 0.9, config=limited, samples_scored=2)
    code, _, stderr = run_main(monkeypatch, capsys, "compare", root, "--output", tmp_path / "out")
    assert code == 0, stderr
    warning = " ".join(stderr.split())
    assert "agentnetbench: the runs are over different samples" in warning
    assert "split default, no --limit, 7 samples (full 100%)" in warning
    assert "split all, --limit 1, 2 samples (gui_kv 10%)" in warning
    alone = root / "agentnetbench" / "tiny" / "full-b100-0123abcd"
    code, _, stderr = run_main(monkeypatch, capsys, "compare", alone, "--output", tmp_path / "out")
    assert code == 0 and "different samples" not in stderr


def test_metric_option_picks_the_plotted_metric(monkeypatch, capsys, runs: Path, tmp_path: Path):
    agentnet = runs / "agentnetbench"
    code, _, stderr = run_main(
        monkeypatch, capsys, "compare", agentnet, "--metric", "hit_rate", "--output", tmp_path
    )
    assert code == 0, stderr
    code, _, stderr = run_main(
        monkeypatch, capsys, "compare", runs, "--metric", "hit_rate", "--output", tmp_path
    )
    assert code == 2 and "not a metric of screenspot-v2" in stderr


def test_piped_at_80_columns_no_number_is_cut(monkeypatch, capsys, runs: Path, tmp_path: Path):
    """The run form piped (not a terminal) at 80 columns prints every number whole: each metric in %
    ± its standard error, as in the eval table (it used to show `0.0…`)."""
    monkeypatch.setenv("COLUMNS", "80")
    code, stdout, stderr = run_main(monkeypatch, capsys, "compare", runs, "--output", tmp_path / "out")
    assert code == 0, stderr
    assert "…" not in stdout
    rows = {" ".join(line.split()[:2]): " ".join(line.split()[2:]) for line in stdout.splitlines()}
    assert rows["snapkv 5"].startswith("40.0 ± 2.0 30.0 ± 3.0 20.0 ± 4.0 10.0 ± 5.0 95.0 38.0")
    assert rows["full 100"].startswith("60.0 ± 2.0 50.0 ± 3.0")
    assert "metrics in % ± standard error" in stdout


def test_parsers():
    assert parse_methods(DEFAULT_METHODS) == [
        "full", "snapkv", "pyramidkv", "vlcache", "gui_kv", "st_lite", "star_kv"
    ]  # fmt: skip
    assert parse_methods(" gui_kv, snapkv,gui_kv ") == ["gui_kv", "snapkv"]
    assert parse_budgets("40, 1,5,5") == [1.0, 5.0, 40.0]
    assert method_pairs(["full", "snapkv"], [1, 10]) == [("full", 100.0), ("snapkv", 1), ("snapkv", 10)]
    with pytest.raises(UserInputError, match="--methods is empty"):
        parse_methods(" , ")
    with pytest.raises(UserInputError, match="unknown method 'h2o'"):
        parse_methods("snapkv,h2o")
    with pytest.raises(UserInputError, match="outside"):
        parse_budgets("0")


def broken_summary(root: Path) -> Path:
    """A run directory whose summary.json lacks `metrics` and `savings`."""
    directory = write_run(root, "snapkv", 5, 0.4)
    summary = json.loads((directory / "summary.json").read_text())
    del summary["savings"], summary["metrics"]
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory


BAD_INPUTS: list[tuple[Callable[[Path, Path], list[str]], str]] = [
    (lambda tmp, shot: [tmp / "empty"], "not an eval run (no summary.json in it or below)"),
    (lambda tmp, shot: [broken_summary(tmp / "broken")], "missing metrics, savings"),
    (lambda tmp, shot: [tmp / "nowhere"], "no such file or folder"),
    (lambda tmp, shot: [tmp / "empty", shot], "not both"),
    (lambda tmp, shot: [tmp / "empty", "--budgets", "5"], "--budgets belong to the screenshot form"),
    (lambda tmp, shot: [shot], "needs --task"),
    (lambda tmp, shot: [shot, "--task", "t", "--methods", "snapkv,h2o"], "unknown method 'h2o'"),
    (lambda tmp, shot: [shot, "--task", "t", "--budgets", ","], "--budgets is empty"),
    (lambda tmp, shot: [shot, "--task", "t", "--budgets", "5,150"], "150 is outside (0, 100]"),
    (lambda tmp, shot: [shot, "--task", "t", "--budgets", "five"], "'five' is not a number"),
    (lambda tmp, shot: [shot, "--task", "t", "--metric", "x"], "--metric belongs to the eval run form"),
    (lambda tmp, shot: [tmp / "empty", "--set", "rank=8"], "--set belong to the screenshot form"),
    (lambda tmp, shot: [shot, "--task", "t", "--set", "budget=5"], "--set budget is unknown (use --budgets)"),
    (lambda tmp, shot: [shot, "--task", "t", "--set", "method=snapkv"], "(use --methods)"),
    (
        lambda tmp, shot: [shot, "--task", "t", "--set", "st_lite_varient=paper"],
        "--set st_lite_varient is unknown (did you mean 'st_lite_variant'?)",
    ),
    (lambda tmp, shot: [shot, "--task", "t", "--set", "subspace=lu"], "--set subspace='lu' is invalid"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_inputs_exit_2_with_one_line(monkeypatch, capsys, tmp_path: Path, make_png, args, message: str):
    (tmp_path / "empty").mkdir()
    shot = make_png(tmp_path / "shot.png", (64, 40))
    code, _, stderr = run_main(monkeypatch, capsys, "compare", *args(tmp_path, shot))
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr


def write_plain_and_carried(root: Path) -> None:
    """GUI-KV at 10% on AgentNetBench twice: re-prefilled, and carried (`eval --carry`)."""
    write_run(root / "plain", "gui_kv", 10, 0.5)
    carried_config = {"method": "gui_kv", "budget": 10, "window_size": 8, "carry": True}
    write_run(root / "carried", "gui_kv", 10, 0.3, config=carried_config)


def test_a_carried_run_is_its_own_row_and_entry(monkeypatch, capsys, tmp_path: Path) -> None:
    write_plain_and_carried(tmp_path)
    runs = group_runs(find_runs([tmp_path / "plain", tmp_path / "carried"]).finished)["agentnetbench"]
    assert [run.label for run in runs] == ["gui_kv", "gui_kv carried"]
    rows = [line.split() for line in render(runs_table("agentnetbench", runs)).splitlines()]
    gui_kv_rows = [row[:3] for row in rows if row[:1] == ["gui_kv"]]
    assert gui_kv_rows == [["gui_kv", "10", "50.0"], ["gui_kv", "carried", "10"]]
    assert not any("run" in row for row in rows[:5])  # the label tells them apart: no run column
    code, _, stderr = run_main(monkeypatch, capsys, "compare", tmp_path, "--output", tmp_path / "out")
    assert code == 0, stderr
    document = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert [(run["method"], run["carried"]) for run in document["groups"][0]["runs"]] == [
        ("gui_kv", False),
        ("gui_kv", True),
    ]


def test_a_carried_run_is_a_line_of_its_own_in_the_figures(
    plotted: list[tuple[Any, str]], tmp_path: Path
) -> None:
    from guikv_cli.compare_rundirs import run_figures

    write_plain_and_carried(tmp_path)
    run_figures(group_runs(find_runs([tmp_path]).finished), tmp_path / "out", None)
    assert [[series.label for series in panels[0].series] for panels, _ in plotted] == [
        ["gui_kv", "gui_kv carried"]
    ] * 2


def test_carried_runs_cut_to_fixed_token_counts_follow_those_by_budget(tmp_path: Path) -> None:
    carried = {"method": "gui_kv", "window_size": 8, "carry": True}
    for name, budget, max_tokens in (("a", 20, 64), ("b", 10, None), ("c", 5, 512), ("d", 40, None)):
        config = {**carried, "budget": None if max_tokens else budget, "max_tokens": max_tokens}
        summary_path = write_run(tmp_path / name, "gui_kv", budget, 0.4, config=config) / "summary.json"
        summary = json.loads(summary_path.read_text())
        summary_path.write_text(json.dumps({**summary, "budget": config["budget"]}))  # as eval writes it
    write_run(tmp_path / "plain", "gui_kv", 20, 0.5)
    runs = group_runs(find_runs([tmp_path]).finished)["agentnetbench"]
    assert [(run.label, run.capacity) for run in runs] == [
        ("gui_kv", "20"),
        ("gui_kv carried", "10"),
        ("gui_kv carried", "40"),
        ("gui_kv carried", "64 tok"),
        ("gui_kv carried", "512 tok"),
    ]
    assert [run.budget for run in runs][-2:] == [pytest.approx(20), pytest.approx(5)]  # the share each kept
