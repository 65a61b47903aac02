"""Re-scoring finished eval runs (`guikv eval --rescore RUN_DIR...`) with today's parsers and metrics.

Metric rules change; model time does not come back. Every record of a run's `samples.jsonl` holds
the raw output and, in `scoring_input`, what its benchmark's metric needs (see
`benchmarks.scoring`), so each output is parsed and scored again through the same path a run
takes, without loading any model or reading the benchmark's data. The records get their new
action and score fields, and `summary.json` is rebuilt from them (skipped and excluded samples,
which are facts about the data, are taken from the old summary); the old summary is kept beside
it as `summary.guikv-<its version>.json`. Re-scoring an unchanged run rewrites identical files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import get_benchmark
from benchmarks.common import BenchmarkSpec
from benchmarks.rundir import (
    CONFIG_FILE,
    SAMPLES_FILE,
    SHARD_GLOB,
    SUMMARY_FILE,
    Record,
    read_trace,
    rewrite_trace,
    run_lock,
    write_atomic,
    write_json,
)
from benchmarks.runner import SCORING_INPUT, assemble_record, build_summary, record_fields
from benchmarks.scoring import ScoringInput, score_output
from guikv.agents import get_family
from guikv.errors import UserInputError

SUMMARY_FIELDS = ("benchmark", "family", "config", "skipped", "excluded")
"""What re-scoring reads from the old summary."""

CONFIG_FIELDS = ("model", "family", "method", "budget")
"""The settings a summary is built from (besides the rest of `config`, copied as it is)."""


@dataclass(frozen=True)
class Rescored:
    """One run re-scored in memory: its directory, benchmark, new records and summary, and the ids
    of the samples whose action or score fields changed."""

    run_dir: Path
    spec: BenchmarkSpec
    records: list[Record]
    summary: dict[str, Any]
    changed: tuple[str, ...]


def find_run_dirs(targets: Sequence[Path]) -> list[Path]:
    """The run directories named by `targets`: a folder with a `config.yaml` is one; any other
    folder is searched for them at any depth. Each is listed once, in a stable order."""
    found: dict[Path, Path] = {}
    for target in targets:
        if not target.is_dir():
            what = "not a folder" if target.exists() else "no such folder"
            raise UserInputError(f"{target}: {what}; expected an eval run directory")
        if (target / CONFIG_FILE).is_file():
            runs = [target]
        else:
            runs = sorted(path.parent for path in target.rglob(CONFIG_FILE))
            if not runs:
                raise UserInputError(f"{target}: not an eval run directory (no {CONFIG_FILE} in it or below)")
        for run in runs:
            found.setdefault(run.resolve(), run)
    return list(found.values())


def _old_summary(run_dir: Path) -> dict[str, Any]:
    """The run's `summary.json`, checked for the fields re-scoring reads."""
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        raise UserInputError(
            f"{run_dir}: no {SUMMARY_FILE}, the run has not finished; finish it with guikv eval "
            "(the same settings resume it), then re-score"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: not an eval run summary (unreadable JSON: {error})") from None
    missing = [key for key in SUMMARY_FIELDS if not isinstance(summary, dict) or key not in summary]
    if missing:
        raise UserInputError(f"{path}: not an eval run summary (missing {', '.join(missing)})")
    config = summary["config"]
    unset = [key for key in CONFIG_FIELDS if not isinstance(config, dict) or key not in config]
    if unset:
        raise UserInputError(f"{path}: not an eval run summary (config lacks {', '.join(unset)})")
    for key in ("skipped", "excluded"):
        listed = summary[key]
        if not isinstance(listed, list) or not all(isinstance(item, dict) for item in listed):
            raise UserInputError(f"{path}: not an eval run summary ({key} is not a list of objects)")
    return summary


def rescore_run(run_dir: Path) -> Rescored:
    """Parse and score every stored raw output of `run_dir` again and build the new summary, writing
    nothing. Anything that is not a finished run this guikv can re-score is a one-line
    `UserInputError` naming the file (and line)."""
    samples = run_dir / SAMPLES_FILE
    if not samples.is_file():
        raise UserInputError(
            f"{run_dir}: no {SAMPLES_FILE}; expected an eval run directory written by guikv eval"
        )
    if any(run_dir.glob(SHARD_GLOB)):
        raise UserInputError(
            f"{run_dir}: holds the shard files of an interrupted multi-process run; finish the run "
            "with guikv eval, then re-score"
        )
    summary = _old_summary(run_dir)
    try:
        spec = get_benchmark(str(summary["benchmark"]))
        family = get_family(str(summary["family"]))
    except UserInputError as error:
        raise UserInputError(f"{run_dir / SUMMARY_FILE}: {error}") from None
    trace = read_trace(samples)
    if trace.dropped_partial:
        raise UserInputError(
            f"{samples}: the last line is incomplete (an interrupted run); finish the run with guikv "
            "eval, then re-score"
        )
    records: list[Record] = []
    changed: list[str] = []
    for line, record in enumerate(trace.records, start=1):
        fresh = _rescore_record(spec, family, record, f"{samples} (line {line})")
        records.append(fresh)
        if fresh != record:
            changed.append(record["sample_id"])
    rebuilt = build_summary(spec, summary["config"], records, summary["skipped"], summary["excluded"])
    return Rescored(run_dir, spec, records, rebuilt, tuple(changed))


def _rescore_record(spec: BenchmarkSpec, family: Any, record: Record, where: str) -> Record:
    """One record with its stored raw output parsed and scored again."""
    if SCORING_INPUT not in record:
        raise UserInputError(
            f"{where}: no {SCORING_INPUT}; the run was written by a guikv that did not store what "
            "re-scoring needs, so it cannot be re-scored (run it again with guikv eval --no-resume)"
        )
    if record.get("benchmark") != spec.name:
        raise UserInputError(f"{where}: benchmark {record.get('benchmark')!r}; expected {spec.name!r}")
    try:
        scoring = ScoringInput.from_json(spec.name, record[SCORING_INPUT])
        actions, scores = score_output(spec, family, scoring, str(record.get("raw_output") or ""))
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise UserInputError(f"{where}: cannot re-score the record ({error})") from None
    fields = {**record_fields(record), "action": actions[0].to_dict()}
    return assemble_record(fields, scores, record[SCORING_INPUT])


def keep_aside(run_dir: Path) -> Path:
    """Copy the run's current `summary.json` to `summary.guikv-<its guikv version>.json` (version
    `unknown` for summaries older than the field; `-2`, `-3`... when a different file already has
    the name) and return that path."""
    current = (run_dir / SUMMARY_FILE).read_bytes()
    version = json.loads(current).get("guikv_version") or "unknown"
    candidate, count = run_dir / f"summary.guikv-{version}.json", 1
    while candidate.is_file() and candidate.read_bytes() != current:
        count += 1
        candidate = run_dir / f"summary.guikv-{version}-{count}.json"
    write_atomic(candidate, current)
    return candidate


def write_rescored(rescored: Rescored) -> Path:
    """Write a re-scored run: the old summary kept aside (`keep_aside`), the records (only when one
    changed) and the new summary, each atomically. Returns where the old summary was kept."""
    kept = keep_aside(rescored.run_dir)
    if rescored.changed:
        rewrite_trace(rescored.run_dir / SAMPLES_FILE, rescored.records)
    write_json(rescored.run_dir / SUMMARY_FILE, rescored.summary)
    return kept


@contextmanager
def locked(run_dirs: Sequence[Path]) -> Iterator[None]:
    """Hold every run directory's lock (no eval may write them while they are re-scored)."""
    with ExitStack() as stack:
        for run_dir in run_dirs:
            stack.enter_context(run_lock(run_dir))
        yield


def rescore(targets: Sequence[Path]) -> list[tuple[Rescored, Path]]:
    """Re-score every run under `targets`: all are read and scored before any is written, so a bad
    one changes nothing. Returns each re-scored run with where its old summary was kept."""
    run_dirs = find_run_dirs(targets)
    with locked(run_dirs):
        results = [rescore_run(run_dir) for run_dir in run_dirs]
        return [(result, write_rescored(result)) for result in results]
