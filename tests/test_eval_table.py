"""The `guikv eval` results table speaks the field's language: every accuracy in percent, the header
saying so, each ± its standard error (a 6-sample run looks as uncertain as it is), and no number cut
short, whether printed to a narrow terminal or piped."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from benchmarks import androidcontrol
from benchmarks.runner import build_summary
from guikv_cli.eval import failure_line, results_table
from guikv_cli.report import compact_table, metric_cell, print_tables

SETTINGS = {"model": "ByteDance-Seed/UI-TARS-1.5-7B", "family": "ui-tars", "method": "gui_kv", "budget": 10.0}


def _steps(correct: int, total: int, failed: int = 0) -> list[dict[str, Any]]:
    """AndroidControl trace records: `total` click steps, the first `correct` right, the last
    `failed` of them failed (their generation raised)."""
    return [
        {
            "sample_id": f"episode/{index}",
            "error": "RuntimeError: out of memory" if index >= total - failed else None,
            "correct": index < correct,
            "correct_ignoring_newline": index < correct,
            "grounding": True,
            "gt_type": "click",
            "parsed": index < total - failed,
        }
        for index in range(total)
    ]


def _summary(correct: int, total: int, failed: int = 0) -> dict[str, Any]:
    """A run's summary.json as the runner builds it, with where it was written."""
    records = _steps(correct, total, failed)
    summary = build_summary(androidcontrol.SPEC, SETTINGS, records, [], [])
    savings = {"decode_flops_saved_percent": 61.2, "kv_saved_percent": 89.9}
    return {**summary, "savings": savings, "run_dir": "/runs/androidcontrol/ui-tars/gui_kv-b10-abc"}


def _render(table: Any, width: int, terminal: bool) -> str:
    """What `print_tables` writes for `table` on a console of `width` columns."""
    console = Console(file=io.StringIO(), width=width, force_terminal=terminal, color_system=None)
    print_tables(console, [table])
    return console.file.getvalue()


def test_metric_cell_is_percent_plus_minus_standard_error() -> None:
    assert metric_cell({"acc": 0.5, "acc_stderr": 0.2236}, "acc") == "50.0 ± 22.4"
    assert metric_cell({"acc": 1.0, "acc_stderr": None}, "acc") == "100.0 ± n/a"
    assert metric_cell({"acc": 0.25}, "acc") == "25.0 ± n/a"  # a summary from before the errors
    assert metric_cell({"acc": None, "acc_stderr": None}, "acc") == "—"


def test_a_six_sample_run_shows_its_uncertainty_in_percent() -> None:
    small, large = _summary(3, 6), _summary(300, 600)
    text = _render(results_table(androidcontrol.SPEC, [small, large]), 200, terminal=False)
    assert "50.0 ± 22.4" in text  # sqrt(0.25 / 5)
    assert "50.0 ± 2.0" in text  # sqrt(0.25 / 599)
    assert "accuracy %" in text and "budget %" in text
    assert "metrics in % ± standard error" in text


def test_failed_as_wrong_row_and_warning_carry_errors_too() -> None:
    summary = _summary(3, 6, failed=2)
    text = _render(results_table(androidcontrol.SPEC, [summary]), 200, terminal=False)
    assert "failed as wrong" in text
    assert "75.0 ± 25.0" in text  # 3 of the 4 scored
    assert "50.0 ± 22.4" in text  # 3 of 6 with the 2 failed counted wrong
    assert "step_accuracy 50.0 ± 22.4" in failure_line(summary)


def test_no_number_is_cut_piped_or_in_a_narrow_terminal() -> None:
    summaries = [_summary(3, 6), _summary(300, 600), _summary(1, 7, failed=1)]
    table = results_table(androidcontrol.SPEC, summaries)
    piped = _render(table, 80, terminal=False)
    assert "…" not in piped
    assert "50.0 ± 22.4" in piped and "16.7 ± 16.7" in piped
    narrow = _render(results_table(androidcontrol.SPEC, summaries), 60, terminal=True)
    assert "…" not in narrow
    wide = compact_table("t", ["a", *(f"column\nnumber {i}" for i in range(12))])
    wide.add_row("x", *["0.0123456789"] * 12)
    assert "…" not in _render(wide, 80, terminal=True)
    assert _render(wide, 80, terminal=False).count("0.0123456789") == 12
