"""`guikv eval --rescore RUN_DIR...`: today's parsers and metrics over the raw outputs a run stored,
without a model. An untouched run re-scores to identical files; an edited raw output changes its
record, the summary (the old one kept beside it) and what `guikv compare` shows; bad input is one
line and exit 2 with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import (
    BENCHMARK_NAMES,
    Scripted,
    build_all,
    oracle_eval_args,
    play_agentnet,
    records,
    run_cli,
    write_png,
)

from benchmarks.jsonable import from_json, to_json
from benchmarks.rundir import SUMMARY_FILE
from benchmarks.scoring import SAMPLE_TYPES
from guikv import __version__
from guikv.agents import Action, ActionType, get_family
from guikv.agents.resize import model_image_size

Datasets = dict[str, tuple[Path, Path]]
KEPT = f"summary.guikv-{__version__}.json"


@pytest.fixture(scope="module")
def datasets(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Datasets:
    """Every benchmark with full-size placeholder screenshots (built once for this module)."""
    return build_all(fixtures_dir, tmp_path_factory.mktemp("rescore-data"), write_png)


def only_run_dir(output: Path) -> Path:
    """The single run directory under `output`."""
    [path] = [p.parent for p in output.rglob(SUMMARY_FILE)]
    return path


def files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory by name."""
    return {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}


@pytest.mark.parametrize("family", ["ui-tars", "opencua"])
@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_an_untouched_run_rescores_to_identical_files(
    name: str, family: str, datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    args = oracle_eval_args(name, datasets, tmp_path, "--family", family)
    assert run_cli(args, monkeypatch, capsys).code == 0
    run_dir = only_run_dir(tmp_path)
    before = files(run_dir)
    result = run_cli(["eval", "--rescore", str(run_dir)], monkeypatch, capsys)
    assert result.code == 0, result.err
    assert f"0 scored differently; the previous summary is kept as {KEPT}" in result.err
    after = files(run_dir)
    assert after.pop(KEPT) == before[SUMMARY_FILE]
    assert after == before


def test_a_run_with_failed_samples_rescores_to_identical_files(
    fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    data = fixtures_dir / "agentnetbench" / "test_data"
    play_agentnet((data, data / "images"), tmp_path / "run", Scripted("t", frozenset({3}), truth=True))
    before = files(tmp_path / "run")
    result = run_cli(["eval", "--rescore", str(tmp_path)], monkeypatch, capsys)
    assert result.code == 0, result.err
    assert "1 samples FAILED" in result.err
    after = files(tmp_path / "run")
    del after[KEPT]
    assert after == before


def test_rescore_reads_mind2web_types_in_the_forms_the_parser_now_accepts(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A stored UI-TARS TYPE answer written `Action：type(text='...', start_box='(x,y)')` (a
    full-width colon, the older argument names) was unparsed, a wrong step; `--rescore` reads it
    with today's parser as a typed text at a point, which the metric credits."""
    args = oracle_eval_args("mind2web", datasets, tmp_path / "runs", "--family", "ui-tars")
    assert run_cli(args, monkeypatch, capsys).code == 0
    run_dir = only_run_dir(tmp_path / "runs")
    rows = records(run_dir)
    index = next(i for i, row in enumerate(rows) if row["scoring_input"]["sample"]["operation"] == "TYPE")
    typed = rows[index]
    assert typed["step_correct"] and typed["action"]["point"] is not None
    frame = model_image_size(*typed["scoring_input"]["image_size"])
    x, y = (round(c * f) for c, f in zip(typed["action"]["point"], frame, strict=True))
    value = typed["scoring_input"]["sample"]["value"]
    typed["raw_output"] = f"Thought：输入。\nAction：type(text='{value}', start_box='({x},{y})')"
    (run_dir / "samples.jsonl").write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    )
    result = run_cli(["eval", "--rescore", str(run_dir)], monkeypatch, capsys)
    assert result.code == 0, result.err
    rescored = records(run_dir)[index]
    assert rescored["parsed"] and rescored["element_correct"] and rescored["step_correct"]
    assert rescored["action"]["text"] == value


def test_an_edited_raw_output_changes_its_score_and_what_compare_shows(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    assert (
        run_cli(oracle_eval_args("screenspot-v2", datasets, tmp_path / "runs"), monkeypatch, capsys).code == 0
    )
    run_dir = only_run_dir(tmp_path / "runs")
    old_summary = (run_dir / SUMMARY_FILE).read_bytes()
    rows = records(run_dir)
    assert all(row["correct"] for row in rows)
    size = tuple(rows[0]["scoring_input"]["image_size"])
    rows[0]["raw_output"] = get_family("ui-tars").format_action(
        Action(ActionType.CLICK, point=(0.99, 0.99)), size
    )
    (run_dir / "samples.jsonl").write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    )
    result = run_cli(["eval", "--rescore", str(tmp_path / "runs")], monkeypatch, capsys)
    assert result.code == 0, result.err
    assert "6 samples, 1 scored differently" in result.err
    rescored = records(run_dir)
    assert rescored[0]["correct"] is False and rescored[0]["action"]["point"] == pytest.approx(
        [0.99, 0.99], abs=0.01
    )
    assert rescored[1:] == rows[1:]
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["metrics"]["overall_micro"] == pytest.approx(5 / 6)
    assert (run_dir / KEPT).read_bytes() == old_summary
    assert json.loads(old_summary)["metrics"]["overall_micro"] == 1.0
    assert "83.3" in result.out  # the new table
    compared = run_cli(
        ["compare", str(tmp_path / "runs"), "--output", str(tmp_path / "cmp")], monkeypatch, capsys
    )
    assert compared.code == 0, compared.err
    document = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert document["groups"][0]["runs"][0]["metrics"]["overall_micro"] == pytest.approx(5 / 6)
    again = run_cli(["eval", "--rescore", str(run_dir)], monkeypatch, capsys)
    assert "0 scored differently" in again.err  # a second re-score keeps the first one's result


def test_rescore_loads_no_model(
    datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    assert run_cli(oracle_eval_args("mind2web", datasets, tmp_path), monkeypatch, capsys).code == 0
    script = (
        "import sys\nfrom guikv_cli.app import main\n"
        f"sys.argv = ['guikv', 'eval', '--rescore', {str(tmp_path)!r}]\n"
        "try:\n    main()\nexcept SystemExit as exit_:\n    assert not exit_.code, exit_.code\n"
        "print(sorted(m for m in ('transformers', 'guikv.models', 'guikv.step') if m in sys.modules))\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_stored_samples_round_trip(name: str, datasets: Datasets) -> None:
    """What a record stores rebuilds the loader's sample exactly (AgentNetBench: without history)."""
    from benchmarks import get_benchmark
    from benchmarks.scoring import ScoringInput

    sample = get_benchmark(name).load(*datasets[name]).samples[-1]
    stored = json.loads(json.dumps(ScoringInput(sample, (10, 20), {"block": 1}).to_json()))
    rebuilt = ScoringInput.from_json(name, stored)
    expected = sample if name != "agentnetbench" else type(sample)(**{**sample.__dict__, "history": ()})
    assert rebuilt == ScoringInput(expected, (10, 20), {"block": 1})
    assert from_json(SAMPLE_TYPES[name], to_json(expected)) == expected


def old_trace(run_dir: Path) -> None:
    """Strip `scoring_input` from every record, as traces written before re-scoring existed."""
    rows = records(run_dir)
    for row in rows:
        del row["scoring_input"]
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def damaged_input(run_dir: Path) -> None:
    """Break the stored sample of the second record."""
    rows = records(run_dir)
    rows[1]["scoring_input"]["sample"]["bbox"] = "wide"
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def summary_without_model(run_dir: Path) -> None:
    """Take `model` out of the summary's `config`, as a hand-edited summary might."""
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    del summary["config"]["model"]
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary))


BAD_RESCORES: dict[str, tuple[list[str], Any, str]] = {
    "no such folder": (["{tmp}/nowhere"], None, "nowhere: no such folder; expected an eval run directory"),
    "not a run directory": (["{tmp}/empty"], None, "empty: not an eval run directory (no config.yaml"),
    "missing samples.jsonl": (
        ["{run}"],
        lambda d: (d / "samples.jsonl").unlink(),
        "no samples.jsonl; expected",
    ),
    "missing summary.json": (["{run}"], lambda d: (d / SUMMARY_FILE).unlink(), "the run has not finished"),
    "old trace": (["{run}"], old_trace, "samples.jsonl (line 1): no scoring_input"),
    "damaged scoring input": (
        ["{run}"],
        damaged_input,
        "(line 2): cannot re-score the record (scoring_input.sample.bbox",
    ),
    "summary config lacks model": (
        ["{run}"],
        summary_without_model,
        "summary.json: not an eval run summary (config lacks model)",
    ),
    "a run flag": (
        ["{run}", "--model", "tiny"],
        None,
        "--rescore takes run directories only; --model belongs",
    ),
    "no directory": ([], None, "--rescore: missing RUN_DIR"),
}


@pytest.mark.parametrize("case", list(BAD_RESCORES))
def test_bad_rescore_input_is_one_line_exit_2_and_writes_nothing(
    case: str, datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    assert (
        run_cli(oracle_eval_args("screenspot-v2", datasets, tmp_path / "runs"), monkeypatch, capsys).code == 0
    )
    run_dir = only_run_dir(tmp_path / "runs")
    (tmp_path / "empty").mkdir()
    args, damage, expected = BAD_RESCORES[case]
    if damage is not None:
        damage(run_dir)
    before = files(run_dir)
    places = {"tmp": str(tmp_path), "run": str(run_dir)}
    result = run_cli(["eval", "--rescore", *[arg.format(**places) for arg in args]], monkeypatch, capsys)
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.err
    assert files(run_dir) == before
