"""`guikv compare RUN_DIR...`: finished eval runs side by side, rendered.

One table per benchmark (accuracy metrics and savings per method and budget; a run with failed
samples also with its metrics counting them wrong), accuracy-vs-budget and accuracy-vs-KV-memory
figures, `compare.json` and an optional HTML report. Reading the runs is
`benchmarks.finished_runs`'s job. Definitions of every column: docs/analysis.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.finished_runs import (
    EvalRun,
    UnfinishedRun,
    find_runs,
    group_runs,
    metric_columns,
    runs_document,
    sample_sets,
)
from guikv.config import changed_knobs
from guikv.errors import UserInputError
from guikv_cli.report import (
    MIB,
    capacity,
    compact_table,
    knobs_text,
    metric_cell,
    metric_header,
    mib,
    print_tables,
    write_html,
)


def _saved(value: float | None) -> str:
    """A saving in percent (the header says %); missing (e.g. an oracle run) as an em dash."""
    return "—" if value is None else f"{value:.1f}"


def runs_table(benchmark: str, runs: Sequence[EvalRun]) -> Table:
    """One benchmark's runs, in the units of `guikv eval`'s table: method, budget (%), the metric
    columns in % ± standard error, savings (%) and kept KV memory; sample counts in the caption
    when every run has the same, else in a column. A run with failed samples gets a second row,
    its metrics counting the failed samples as wrong."""
    title = str(runs[0].summary["title"] or benchmark)
    several_models = len({run.summary["model"] for run in runs}) > 1
    keys = [(run.summary["model"], run.label, run.capacity) for run in runs]
    show_run = len(set(keys)) < len(keys)
    columns = metric_columns(runs)
    counts = [_counts(run) for run in runs]
    same_counts = len(set(counts)) == 1
    lead = [*(["model"] if several_models else []), "method", "budget %", *(["run"] if show_run else [])]
    headers = [
        *lead,
        *(metric_header(column) for column in columns),
        "KV\nsaved %",
        "decode\nFLOPs\nsaved %",
        "KV MiB\nkept",
        *([] if same_counts else ["samples"]),
    ]
    table = compact_table(f"{title} ({benchmark})", headers, left=len(lead) - 1 - show_run)
    table.caption = "metrics in % ± standard error" + (
        f"; samples per run: {counts[0]}" if same_counts else ""
    )
    table.caption_justify = "left"
    for run, count in zip(runs, counts, strict=True):
        summary = run.summary
        table.add_row(
            *([str(summary["model"])] if several_models else []),
            run.label,
            run.capacity,
            *([run.path.name] if show_run else []),
            *(metric_cell(summary["metrics"], column) for column in columns),
            _saved(run.saving("kv_saved_percent")),
            _saved(run.saving("decode_flops_saved_percent")),
            mib(run.saving("kv_bytes_kept_mean")),
            *([] if same_counts else [count]),
        )
        wrong = run.failures_as_wrong
        if wrong is not None:
            table.add_row(
                *[""] * (len(lead) - 2 - show_run),
                "failed as wrong",
                "",
                *([""] if show_run else []),
                *(metric_cell(wrong, column) for column in columns),
                style="yellow",
            )
    return table


def _counts(run: EvalRun) -> str:
    """Scored samples, with skipped and failed ones when there are any."""
    summary = run.summary
    text = f"{summary['samples_scored']} scored"
    if summary["samples_skipped"] or summary["samples_failed"]:
        text += f", {summary['samples_skipped']} skipped, {summary['samples_failed']} failed"
    return text


def _series_label(run: EvalRun, several_models: bool) -> str:
    """A figure legend label: the method (`METHOD carried` for a carried run) with the knobs its run
    set away from the defaults (so carried runs and runs with different knobs are lines of their
    own; carried runs cut to fixed token counts are one more, over the budgets they kept), prefixed
    by the model when several models are compared."""
    knobs = changed_knobs(run.summary["config"]) if isinstance(run.summary["config"], dict) else {}
    label = f"{run.label} ({knobs_text(knobs).removeprefix(' · ')})" if knobs else run.label
    if run.max_tokens is not None:
        label += " (fixed token counts)"
    return f"{run.summary['model']}: {label}" if several_models else label


def _in_percent(run: EvalRun, column: str) -> float | None:
    """A run's metric in percent, the unit of every accuracy table and figure (None when absent)."""
    value = run.metric(column)
    return None if value is None else 100 * value


def _error_in_percent(run: EvalRun, column: str) -> float | None:
    """A run's metric's standard error in percent, its figure's error bar (None when absent)."""
    error = run.metric_error(column)
    return None if error is None else 100 * error


def run_figures(groups: dict[str, list[EvalRun]], output: Path, metric: str | None) -> list[Path]:
    """Accuracy (%, from 0) vs budget and accuracy vs kept KV memory, one panel per benchmark, each
    point with a ± standard-error bar; on the first, lines are spread a little along x (so equal
    ones and their bars stay visible) and full-cache and oracle runs are dashed lines (a shaded
    band of ± their standard error); full-cache runs are a single point on the second."""
    from guikv.viz.curves import Panel, Series, plot_panels

    by_budget, by_memory = [], []
    for benchmark, runs in groups.items():
        columns = metric_columns(runs)
        if metric is None and not columns:
            continue
        column = metric or columns[0]
        several = len({run.summary["model"] for run in runs}) > 1
        lines: dict[str, list[EvalRun]] = {}
        for run in runs:
            lines.setdefault(_series_label(run, several), []).append(run)
        title = str(runs[0].summary["title"] or benchmark)
        budget_series, memory_series, references = [], [], []
        for label, members in lines.items():
            method = members[0].method
            measured = [
                (kept / MIB, run)
                for run in members
                if (kept := run.saving("kv_bytes_kept_mean")) is not None and kept > 0
            ]
            memory = [(mib_kept, _in_percent(run, column)) for mib_kept, run in measured]
            errors = [_error_in_percent(run, column) for _, run in measured]
            memory_series.append(Series(label, memory, method, errors=errors))
            if members[0].keeps_everything:
                name = f"{label} cache" if method == "full" else label
                references.extend(
                    (name, value, _error_in_percent(run, column))
                    for run in members
                    if (value := _in_percent(run, column)) is not None
                )
            else:
                points = [(run.budget, _in_percent(run, column)) for run in members]
                errors = [_error_in_percent(run, column) for run in members]
                budget_series.append(Series(label, points, method, errors=errors))
        budgets = sorted({run.budget for run in runs if not run.keeps_everything and run.max_tokens is None})
        by_budget.append(
            Panel(
                title,
                "KV budget (%)",
                f"{column} (%)",
                budget_series,
                references,
                log_x=True,
                x_ticks=budgets,
                dodge=True,
                y_from_zero=True,
            )
        )
        by_memory.append(
            Panel(
                title,
                "KV cache kept (MiB, mean per sample)",
                f"{column} (%)",
                memory_series,
                log_x=True,
                y_from_zero=True,
            )
        )
    if not by_budget:
        return []
    return [
        plot_panels(by_budget, output / "accuracy_vs_budget.png", "Accuracy vs KV budget"),
        plot_panels(by_memory, output / "accuracy_vs_kv_memory.png", "Accuracy vs KV memory"),
    ]


def compare_runs(
    targets: Sequence[Path], output: Path, metric: str | None, html_path: Path | None, console: Console
) -> None:
    """The run form: tables, figures, compare.json and the optional HTML report; on stderr, which
    unfinished runs were left out and which benchmarks mix runs over different samples."""
    found = find_runs(targets)
    groups = group_runs(found.finished)
    if metric is not None:
        for benchmark, runs in groups.items():
            if metric not in metric_columns(runs) and not any(
                metric in run.summary["metrics"] for run in runs
            ):
                raise UserInputError(
                    f"--metric {metric} is not a metric of {benchmark}: expected one of "
                    f"{', '.join(metric_columns(runs))}"
                )
    notices = [skipped_line(run) for run in found.unfinished]
    notices += [line for benchmark, runs in groups.items() if (line := mixed_samples_line(benchmark, runs))]
    tables = [runs_table(benchmark, runs) for benchmark, runs in groups.items()]
    print_tables(console, tables)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    for notice in notices:
        errors.print(notice, style="yellow", markup=False)
    output.mkdir(parents=True, exist_ok=True)
    figures = run_figures(groups, output, metric)
    document = runs_document(groups, figures)
    document["unfinished"] = [{"path": str(run.path), "records": run.records} for run in found.unfinished]
    (output / "compare.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if html_path is not None:
        write_html(html_path, "guikv compare: eval runs", [*tables, *notices], figures)
    count = sum(len(runs) for runs in groups.values())
    skipped = f", {len(found.unfinished)} unfinished skipped" if found.unfinished else ""
    console.print(
        f"{count} run(s) in {len(groups)} benchmark(s){skipped}; "
        f"wrote compare.json and {len(figures)} figures to {output}",
        highlight=False,
    )


def skipped_line(run: UnfinishedRun) -> str:
    """Why an unfinished run is not in the tables, and how to finish it."""
    return (
        f"skipped {run.path}: unfinished (no summary.json yet, {run.records} samples so far); "
        "re-run its guikv eval command to finish it"
    )


def _named(run: EvalRun) -> str:
    """A run in a sentence: its label and capacity (`gui_kv 10%`, `gui_kv carried 1024 tok`)."""
    return f"{run.label} {capacity(None if run.max_tokens is not None else run.budget, run.max_tokens)}"


def mixed_samples_line(benchmark: str, runs: Sequence[EvalRun]) -> str | None:
    """A warning when a benchmark's runs are over different samples (None when they agree)."""
    sets = sample_sets(runs)
    if len(sets) < 2:
        return None
    described = "; ".join(
        f"{samples.describe()} ({', '.join(map(_named, members))})" for samples, members in sets.items()
    )
    return (
        f"warning: {benchmark}: the runs are over different samples, so their numbers are not "
        f"comparable: {described}; re-run them with the same --split and --limit"
    )
