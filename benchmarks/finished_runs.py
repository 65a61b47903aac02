"""Finished `guikv eval` runs read back from their run directories (`benchmarks.rundir`): what
`guikv compare RUN_DIR...` tabulates and plots, and what a script comparing runs would read.

A finished run is read from its `summary.json` alone, so re-scored runs (`guikv eval --rescore`)
show their new numbers; a run directory without one (`config.yaml` and `.lock` only: stopped or still
running) is unfinished, and is listed apart so that the user is told it was left out. Runs over
different samples (another `--split` or `--limit`) are found by `sample_sets`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.rundir import CONFIG_FILE, LOCK_FILE, SUMMARY_FILE, capacity_text, count_records, method_label
from benchmarks.runner import ORACLE
from benchmarks.stats import stderr_key
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
        filed them at the `--budget` asked). A carried run cut to a fixed token count
        (`max_tokens`) has no budget: its place on a budget axis is the share of the full cache it
        kept on average, 100 - KV saved %."""
        if self.method in ("full", ORACLE):
            return FULL_BUDGET
        if self.max_tokens is not None:
            saved = self.saving("kv_saved_percent")
            return FULL_BUDGET if saved is None else FULL_BUDGET - saved
        return float(self.summary["budget"])

    @property
    def max_tokens(self) -> int | None:
        """The fixed capacity per layer of a carried run (`guikv eval --carry --max-tokens N`), else
        None."""
        config = self.summary["config"]
        value = config.get("max_tokens") if isinstance(config, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def capacity(self) -> str:
        """The budget column's cell: the budget (`10`), or the fixed count (`1024 tok`)."""
        return capacity_text({"budget": self.budget, "max_tokens": self.max_tokens})

    @property
    def carried(self) -> bool:
        """Whether the run carried its cache over each trajectory (`guikv eval --carry`)."""
        config = self.summary["config"]
        return isinstance(config, dict) and bool(config.get("carry"))

    @property
    def label(self) -> str:
        """The method as tables and legends name the run: `METHOD carried` for a carried run."""
        return method_label(self.method, {"carry": self.carried})

    @property
    def keeps_everything(self) -> bool:
        """Whether nothing was compressed (the full cache or the oracle): a reference, not a point
        on a budget curve."""
        return self.method in ("full", ORACLE)

    @property
    def sort_key(self) -> tuple[str, int, bool, int, float, str]:
        """Model, then methods in `METHODS` order (the oracle last), re-prefilled before carried,
        then budget; carried runs cut to a fixed token count after those by budget, by count."""
        order = METHODS.index(self.method) if self.method in METHODS else len(METHODS)
        fixed = -1 if self.max_tokens is None else self.max_tokens
        return (str(self.summary["model"]), order, self.carried, fixed, self.budget, self.path.name)

    def metric(self, name: str) -> float | None:
        """A summary metric as a float (None when absent or not a number)."""
        return as_float(self.summary["metrics"].get(name))

    def metric_error(self, name: str) -> float | None:
        """A summary metric's standard error as a float (None when absent: one sample, or a summary
        written before errors were stored)."""
        return as_float(self.summary["metrics"].get(stderr_key(name)))

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
    path = directory / SUMMARY_FILE
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
    for key, kind in (("metrics", dict), ("savings", dict), ("metric_columns", list)):
        if not isinstance(summary[key], kind):
            raise UserInputError(f"{path}: not an eval run summary ({key} is not a {kind.__name__})")
    run = EvalRun(directory, summary)
    budget = summary["budget"]
    if run.max_tokens is None and (isinstance(budget, bool) or not isinstance(budget, int | float)):
        raise UserInputError(f"{path}: not an eval run summary (budget {budget!r} is not a number)")
    return run


@dataclass(frozen=True)
class UnfinishedRun:
    """A run directory without a `summary.json` (stopped, or still running; it has the
    `config.yaml` and `.lock` every run writes first): its folder and how many sample records its
    traces hold so far."""

    path: Path
    records: int


@dataclass(frozen=True)
class FoundRuns:
    """What a search for eval runs found: the finished runs, and the unfinished ones left out."""

    finished: list[EvalRun]
    unfinished: list[UnfinishedRun]


def find_runs(targets: Sequence[Path]) -> FoundRuns:
    """The eval runs named by `targets`: a folder with a `summary.json` is a finished run, one with
    only a `config.yaml` and a `.lock` an unfinished one; any other folder is searched for both at
    any depth. Each run is listed once, in a stable order. A target holding neither, or nothing
    finished at all, is a one-line error."""
    finished: dict[Path, EvalRun] = {}
    unfinished: dict[Path, UnfinishedRun] = {}
    for target in targets:
        if (target / SUMMARY_FILE).is_file() or _started(target):
            folders = [target]
        else:
            markers = [*target.rglob(SUMMARY_FILE), *target.rglob(LOCK_FILE)]
            folders = sorted(
                {path.parent for path in markers if path.name == SUMMARY_FILE or _started(path.parent)}
            )
            if not folders:
                raise UserInputError(f"{target}: not an eval run (no summary.json in it or below)")
        for folder in folders:
            if (folder / SUMMARY_FILE).is_file():
                finished.setdefault(folder.resolve(), read_run(folder))
            else:
                unfinished.setdefault(folder.resolve(), UnfinishedRun(folder, count_records(folder)))
    if not finished:
        first = next(iter(unfinished.values()))
        raise UserInputError(
            f"{first.path}: an unfinished eval run (no summary.json yet, {first.records} samples so far): "
            "expected a finished run; re-run its guikv eval command to finish it"
        )
    return FoundRuns(list(finished.values()), list(unfinished.values()))


def _started(folder: Path) -> bool:
    """Whether `folder` is a run directory `guikv eval` started (it writes these two first)."""
    return (folder / CONFIG_FILE).is_file() and (folder / LOCK_FILE).is_file()


def group_runs(runs: Sequence[EvalRun]) -> dict[str, list[EvalRun]]:
    """Runs by benchmark (benchmarks in name order), each group sorted by model, method, budget."""
    groups: dict[str, list[EvalRun]] = {}
    for run in runs:
        groups.setdefault(run.benchmark, []).append(run)
    return {name: sorted(groups[name], key=lambda run: run.sort_key) for name in sorted(groups)}


@dataclass(frozen=True)
class SampleSet:
    """Which samples a run's numbers are over: its split and `--limit` (from its settings) and how
    many samples it counted (scored, failed and skipped). Runs whose sets differ are not
    comparable."""

    split: str | None
    limit: int | None
    samples: int

    def describe(self) -> str:
        """E.g. `split all, --limit 6, 6 samples`."""
        limit = "no --limit" if self.limit is None else f"--limit {self.limit}"
        return f"split {self.split or 'default'}, {limit}, {self.samples} samples"


def sample_set(run: EvalRun) -> SampleSet:
    """The samples `run`'s numbers are over."""
    config = run.summary["config"] if isinstance(run.summary["config"], dict) else {}
    summary = run.summary
    counted = sum(int(summary[key]) for key in ("samples_scored", "samples_failed", "samples_skipped"))
    return SampleSet(config.get("split"), config.get("limit"), counted)


def sample_sets(runs: Sequence[EvalRun]) -> dict[SampleSet, list[EvalRun]]:
    """The runs by the samples they are over, sets in first-seen order (one key: all comparable)."""
    sets: dict[SampleSet, list[EvalRun]] = {}
    for run in runs:
        sets.setdefault(sample_set(run), []).append(run)
    return sets


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
        "carried": run.carried,
        "budget": run.budget,
        "max_tokens": run.max_tokens,
        "metrics": _with_errors(run.summary["metrics"], columns),
        "savings": run.summary["savings"],
        **{key: run.summary[key] for key in ("samples_scored", "samples_skipped", "samples_failed")},
        "metrics_failures_as_wrong": (None if wrong is None else _with_errors(wrong, columns)),
    }


def _with_errors(metrics: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    """The metric columns of a summary, each followed by its standard error (null when the summary
    predates them)."""
    return {key: metrics.get(key) for column in columns for key in (column, stderr_key(column))}
