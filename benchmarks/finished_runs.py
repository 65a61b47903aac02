"""Finished `guikv eval` runs read back from their run directories (`benchmarks.rundir`): what
`guikv compare RUN_DIR...` tabulates and plots, and what a script comparing runs would read.

Only `summary.json` is read, so re-scored runs (`guikv eval --rescore`) show their new numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.runner import ORACLE
from guikv.config import FULL_BUDGET, METHODS
from guikv.errors import UserInputError

SUMMARY_KEYS: tuple[str, ...] = (
    "benchmark",
    "title",
    "model",
    "family",
    "method",
    "budget",
    "config",
    "metric_columns",
    "metrics",
    "savings",
    "samples_scored",
    "samples_skipped",
    "skipped",
    "samples_failed",
)
"""The keys a `summary.json` must have for its folder to count as a finished eval run."""


@dataclass(frozen=True)
class EvalRun:
    """One finished eval run: its folder and its `summary.json`."""

    path: Path
    summary: dict[str, Any]

    @property
    def benchmark(self) -> str:
        """The benchmark's registry name."""
        return str(self.summary["benchmark"])

    @property
    def method(self) -> str:
        """The method; `oracle` for a ground-truth oracle run (which older runs filed under the
        default method, though no cache was compressed)."""
        return ORACLE if self.summary["model"] == ORACLE else str(self.summary["method"])

    @property
    def budget(self) -> float:
        """The budget in percent; 100 for `full` and the oracle, which keep everything (older runs
        filed them at the `--budget` asked)."""
        return FULL_BUDGET if self.method in ("full", ORACLE) else float(self.summary["budget"])

    @property
    def keeps_everything(self) -> bool:
        """Whether nothing was compressed (the full cache or the oracle): a reference, not a point
        on a budget curve."""
        return self.method in ("full", ORACLE)

    @property
    def sort_key(self) -> tuple[str, int, float, str]:
        """Model, then methods in `METHODS` order (the oracle last), then budget."""
        order = METHODS.index(self.method) if self.method in METHODS else len(METHODS)
        return (str(self.summary["model"]), order, self.budget, self.path.name)

    def metric(self, name: str) -> float | None:
        """A summary metric as a float (None when absent or not a number)."""
        return as_float(self.summary["metrics"].get(name))

    @property
    def failures_as_wrong(self) -> dict[str, Any] | None:
        """The metrics counting failed samples as wrong, when the run had failed samples."""
        value = self.summary.get("metrics_failures_as_wrong")
        return value if self.summary["samples_failed"] and isinstance(value, dict) else None

    def saving(self, name: str) -> float | None:
        """A `savings` entry as a float (None when absent)."""
        return as_float(self.summary["savings"].get(name))


def as_float(value: Any) -> float | None:
    """A JSON number as a float; anything else (null, a boolean, text) as None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def read_run(directory: Path) -> EvalRun:
    """Read `directory/summary.json`; anything that is not an eval run summary is a one-line error."""
    path = directory / "summary.json"
    if not path.is_file():
        raise UserInputError(f"{directory}: not an eval run (no summary.json)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: not an eval run summary (unreadable JSON: {error})") from None
    if not isinstance(summary, dict):
        raise UserInputError(f"{path}: not an eval run summary (expected a JSON object)")
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise UserInputError(f"{path}: not an eval run summary (missing {', '.join(missing)})")
    budget = summary["budget"]
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        raise UserInputError(f"{path}: not an eval run summary (budget {budget!r} is not a number)")
    for key, kind in (("metrics", dict), ("savings", dict), ("metric_columns", list)):
        if not isinstance(summary[key], kind):
            raise UserInputError(f"{path}: not an eval run summary ({key} is not a {kind.__name__})")
    return EvalRun(directory, summary)


def find_runs(targets: Sequence[Path]) -> list[EvalRun]:
    """The eval runs named by `targets`: a folder with a `summary.json` is a run; any other folder
    is searched for run folders at any depth. Each run is listed once, in a stable order."""
    runs: dict[Path, EvalRun] = {}
    for target in targets:
        if (target / "summary.json").is_file():
            found = [target]
        else:
            found = sorted(path.parent for path in target.rglob("summary.json"))
            if not found:
                raise UserInputError(f"{target}: not an eval run (no summary.json in it or below)")
        for directory in found:
            runs.setdefault(directory.resolve(), read_run(directory))
    return list(runs.values())


def group_runs(runs: Sequence[EvalRun]) -> dict[str, list[EvalRun]]:
    """Runs by benchmark (benchmarks in name order), each group sorted by model, method, budget."""
    groups: dict[str, list[EvalRun]] = {}
    for run in runs:
        groups.setdefault(run.benchmark, []).append(run)
    return {name: sorted(groups[name], key=lambda run: run.sort_key) for name in sorted(groups)}


def metric_columns(runs: Sequence[EvalRun]) -> list[str]:
    """The union of the runs' metric columns, in first-seen order."""
    columns: list[str] = []
    for run in runs:
        columns.extend(str(c) for c in run.summary["metric_columns"] if str(c) not in columns)
    return columns


def runs_document(groups: dict[str, list[EvalRun]], figures: Sequence[Path]) -> dict[str, Any]:
    """The run-form `compare.json`: per benchmark, each run's metrics and savings."""
    return {
        "format": "guikv-compare-runs/1",
        "groups": [
            {
                "benchmark": benchmark,
                "title": runs[0].summary["title"],
                "metric_columns": metric_columns(runs),
                "runs": [_run_entry(run, metric_columns(runs)) for run in runs],
            }
            for benchmark, runs in groups.items()
        ],
        "figures": [path.name for path in figures],
    }


def _run_entry(run: EvalRun, columns: Sequence[str]) -> dict[str, Any]:
    """One run in `compare.json`: its settings, metrics, savings and sample counts."""
    wrong = run.failures_as_wrong
    return {
        "path": str(run.path),
        **{key: run.summary[key] for key in ("model", "family")},
        "method": run.method,
        "budget": run.budget,
        "metrics": {column: run.summary["metrics"].get(column) for column in columns},
        "savings": run.summary["savings"],
        **{key: run.summary[key] for key in ("samples_scored", "samples_skipped", "samples_failed")},
        "metrics_failures_as_wrong": (
            None if wrong is None else {column: wrong.get(column) for column in columns}
        ),
    }
