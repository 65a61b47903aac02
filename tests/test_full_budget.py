"""`full` keeps every token, so it is budget 100 everywhere (config, run directory, eval and compare
tables, figures), however `--budget` was given; the ground-truth oracle is labelled `oracle`."""

from __future__ import annotations

import io
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import oracle_eval_args, run_cli, screenspot_v2, summaries, write_png
from rich.console import Console
from test_compare import write_run

from benchmarks.finished_runs import find_runs, group_runs, runs_document
from guikv.config import CompressionConfig
from guikv_cli.compare_rundirs import runs_table


def text(table: Any) -> str:
    """A rich table as plain text, wide enough not to wrap."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_the_full_method_is_budget_100_whatever_was_asked():
    assert CompressionConfig(method="full", budget=10).budget == 100.0
    assert CompressionConfig(method="full") == CompressionConfig(method="full", budget=5)
    assert CompressionConfig(method="snapkv", budget=10).budget == 10.0


def test_eval_files_full_once_at_budget_100(
    fixtures_dir: Path, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
):
    data, images = screenspot_v2(fixtures_dir, tmp_path / "data", write_png, scale=0.1)
    args = ["eval", "screenspot-v2", "--model", str(tiny_dir), "--data", str(data), "--images", str(images)]
    options = ["--method", "full", "--budgets", "5,10", "--limit", "1", "--max-new-tokens", "2"]
    result = run_cli(
        [*args, *options, "--device", "cpu", "--output", str(tmp_path / "runs")], monkeypatch, capsys
    )
    assert result.code == 0, result.err
    [(run, summary)] = summaries(tmp_path / "runs").items()
    assert Path(run).name.startswith("full-b100-")
    assert summary["method"] == "full" and summary["budget"] == 100.0
    assert any(line.split()[:2] == ["full", "100"] for line in result.out.splitlines()), result.out


def test_the_oracle_is_filed_and_labelled_oracle(
    fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
):
    datasets = {"screenspot-v2": screenspot_v2(fixtures_dir, tmp_path / "data", write_png)}
    args = oracle_eval_args("screenspot-v2", datasets, tmp_path / "runs", "--budgets", "5,20")
    result = run_cli(args, monkeypatch, capsys)
    assert result.code == 0, result.err
    [(run, summary)] = summaries(tmp_path / "runs").items()  # one run: the budgets do not apply
    assert run.startswith("screenspot-v2/oracle/oracle-b100-")
    assert summary["method"] == "oracle" and summary["budget"] == 100.0
    assert "gui_kv" not in result.out and "oracle" in result.out
    config = tmp_path / "runs" / run / "config.yaml"
    again = run_cli(["eval", "--config", str(config)], monkeypatch, capsys)  # a run's config reproduces it
    assert again.code == 0, again.err
    assert list(summaries(tmp_path / "runs")) == [run]


def test_compare_shows_full_and_the_oracle_at_100_even_from_older_runs(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, "full", 10, 0.6)  # filed at the default --budget before full meant 100
    write_run(root, "gui_kv", 10, 0.9, model="oracle")  # an older oracle run under the default method
    write_run(root, "snapkv", 10, 0.4)
    groups = group_runs(find_runs([root]).finished)
    table = text(runs_table("agentnetbench", groups["agentnetbench"]))
    pairs = {pair for line in table.splitlines() for pair in pairwise(line.split())}
    assert {("full", "100"), ("oracle", "100"), ("snapkv", "10")} <= pairs
    assert "gui_kv" not in table
    [group] = runs_document(groups, [])["groups"]
    assert [(run["method"], run["budget"]) for run in group["runs"]] == [
        ("oracle", 100.0),  # models in name order: oracle, tiny
        ("full", 100.0),
        ("snapkv", 10.0),
    ]
