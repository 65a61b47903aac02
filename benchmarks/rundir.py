"""The run directory of one evaluation: where it lives, what it holds, and how it survives a kill.

`<output>/<benchmark>/<model-slug>/<method>-b<budget>-<hash>/` holds `config.yaml` (every setting),
`samples.jsonl` (one JSON record per finished sample, appended and fsynced as each finishes, and put
in dataset order when the run ends) and `summary.json` (written atomically at the end). The hash
covers every setting, so a changed setting gets a new directory and re-running the same command
resumes where it stopped, retrying the samples that failed. Under several processes each writes
`samples.rank<i>.jsonl` and the main process folds those into `samples.jsonl`. `guikv compare`
reads these directories, so this layout is a contract (docs/eval.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from guikv.errors import UserInputError

CONFIG_FILE = "config.yaml"
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
SHARD_GLOB = "samples.rank*.jsonl"
LOCK_FILE = ".lock"
PREVIOUS_SAMPLES_FILE = "samples.previous.jsonl"
"""Where `--no-resume` moves the trace it replaces (one generation kept)."""

Record = dict[str, Any]
"""One finished sample as written to `samples.jsonl`."""


def is_failed(record: Record) -> bool:
    """Whether a record is of a sample that raised (its `error` is set) rather than one scored."""
    return bool(record.get("error"))


def shard_file(rank: int) -> str:
    """The trace file process `rank` appends to when samples are sharded over several processes."""
    return f"samples.rank{rank}.jsonl"


def settings_hash(settings: Mapping[str, Any]) -> str:
    """An 8-hex-digit digest of every setting (keys sorted), the last part of the run directory's name."""
    text = json.dumps(dict(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def model_slug(model: str) -> str:
    """A folder name for a model: a hub id `org/name` becomes `org--name`, a directory its base name."""
    path = Path(model)
    name = path.name if path.is_absolute() else model.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def format_budget(budget: float) -> str:
    """A budget as written in directory names and tables: `10` for 10.0, `2.5` for 2.5."""
    return f"{budget:g}"


def method_label(method: str, settings: Mapping[str, Any]) -> str:
    """How tables, legends and notices name a run's method: `gui_kv`, or `gui_kv carried` for a run
    that carried its cache over each trajectory (setting `carry`), so that a carried run and a
    re-prefilled one of the same method and budget never read as one."""
    return f"{method} carried" if settings.get("carry") else method


def capacity_tag(settings: Mapping[str, Any]) -> str:
    """A run's capacity as its directory name and progress line write it: `b10` for a budget of
    10%, `t1024` for a carried run cut to a fixed 1024 tokens per layer (setting `max_tokens`)."""
    if settings.get("max_tokens") is not None:
        return f"t{settings['max_tokens']}"
    return f"b{format_budget(settings['budget'])}"


def capacity_text(settings: Mapping[str, Any]) -> str:
    """A run's capacity in a table's budget column (%): `10`, or `1024 tok` for a fixed count."""
    if settings.get("max_tokens") is not None:
        return f"{settings['max_tokens']} tok"
    return format_budget(settings["budget"])


def run_directory(output: Path, settings: Mapping[str, Any]) -> Path:
    """`<output>/<benchmark>/<model-slug>/<method>-<capacity_tag>-<hash of all settings>`, with
    `-carry` before the hash for a run that carries its cache over each trajectory (setting
    `carry`)."""
    carry = "-carry" if settings.get("carry") else ""
    leaf = f"{settings['method']}-{capacity_tag(settings)}{carry}-{settings_hash(settings)}"
    return output / settings["benchmark"] / model_slug(settings["model"]) / leaf


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write `content` (text as UTF-8) to `path` through a temporary file and a rename, so a reader
    never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        handle.write(content.encode("utf-8") if isinstance(content, str) else content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def write_json(path: Path, value: Any) -> None:
    """Write a JSON document atomically (indented, keys in insertion order)."""
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def read_unfinished(path: Path, header: Mapping[str, Any]) -> dict[str, Any] | None:
    """An unfinished JSON document (`"complete": false`) at `path` whose fields `header` all match,
    for a re-run to take its finished parts from; None when there is none, it is complete (a re-run
    then measures afresh), it is unreadable, or it describes something else."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("complete") is not False:
        return None
    if any(document.get(key) != value for key, value in header.items()):
        return None
    return document


@dataclass(frozen=True)
class TraceRead:
    """The records of a trace file in file order, and whether an incomplete last line was dropped."""

    records: list[Record]
    dropped_partial: bool = False


def read_trace(path: Path, *, repair: bool = False) -> TraceRead:
    """Read a JSONL trace. A last line that is not a whole JSON record (a kill mid-write) is dropped,
    and with `repair` also cut from the file so appends continue on a clean line. A bad line anywhere
    else means the file was edited or damaged: a `UserInputError` naming the file and the line."""
    if not path.is_file():
        return TraceRead([])
    lines = path.read_bytes().split(b"\n")
    last_content = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    records: list[Record] = []
    offset = 0
    for index, raw in enumerate(lines):
        record = _parse_line(raw)
        if record is None and raw.strip():
            if index != last_content:
                raise UserInputError(
                    f"{path} (line {index + 1}): expected one JSON record with a sample_id per line; the "
                    "trace is damaged (move it away or re-run with --no-resume)"
                )
            if repair:
                with path.open("r+b") as handle:
                    handle.truncate(offset)
            return TraceRead(records, dropped_partial=True)
        if record is not None:
            records.append(record)
        offset += len(raw) + 1
    if repair and lines[-1].strip():
        with path.open("ab") as handle:
            handle.write(b"\n")
    return TraceRead(records)


def _parse_line(raw: bytes) -> Record | None:
    """One trace line as a record, or None when it is blank or not a whole record."""
    try:
        value = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("sample_id"), str) else None


class TraceWriter:
    """Appends records to a trace, one line each, flushed and fsynced so that a kill loses at most the
    line being written (which `read_trace` then drops)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: TextIO = path.open("a", encoding="utf-8")

    def write(self, record: Record) -> None:
        """Append one record and force it to disk."""
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def count_records(run_dir: Path) -> int:
    """How many sample records a run directory's traces hold now (`samples.jsonl` and any shard
    files), counted by non-blank line: cheap, and never an error, for a progress or interrupt note."""
    traces = [run_dir / SAMPLES_FILE, *sorted(run_dir.glob(SHARD_GLOB))]
    return sum(
        sum(1 for line in path.read_bytes().splitlines() if line.strip()) for path in traces if path.is_file()
    )


def trace_text(records: Iterable[Record]) -> str:
    """Records as the lines of a trace file, exactly as `TraceWriter` writes them."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def rewrite_trace(path: Path, records: Iterable[Record]) -> None:
    """Replace a trace file by `records`, atomically (a kill leaves the old file or the new one)."""
    write_atomic(path, trace_text(records))


def append_records(path: Path, records: Iterable[Record]) -> int:
    """Append records to a trace (fsynced); returns how many were written."""
    count = 0
    with TraceWriter(path) as writer:
        for record in records:
            writer.write(record)
            count += 1
    return count


def _unwritable(run_dir: Path, error: OSError) -> UserInputError:
    """The one-line error for a run directory that cannot be created or written."""
    return UserInputError(
        f"--output: cannot write the run directory {run_dir} ({error.strerror or error}); "
        "expected a writable directory"
    )


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory (its hidden `.lock` file) while a run writes it, so a
    second invocation with the same settings stops with a one-line error instead of writing every
    sample twice. Taken by the main process only (the other processes of a sharded run are its own)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = (run_dir / LOCK_FILE).open("a")
    except OSError as error:
        raise _unwritable(run_dir, error) from None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserInputError(
                f"{run_dir}: another guikv eval is running into this run directory; "
                "expected one run per directory at a time"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class Prepared:
    """What preparing a run directory found: records `--no-resume` moved aside (to
    `PREVIOUS_SAMPLES_FILE`), records kept for the resume, whether an incomplete last line was
    dropped, records folded in from shard files, and the failed samples taken out to run again."""

    moved: int = 0
    kept: int = 0
    dropped_partial: bool = False
    merged: int = 0
    retried: tuple[str, ...] = ()


def prepare(
    run_dir: Path,
    settings: Mapping[str, Any],
    *,
    resume: bool,
    retry_failed: bool = True,
    order: Sequence[str],
) -> Prepared:
    """Create the run directory and write `config.yaml`; with `resume`, repair `samples.jsonl`, fold in
    shard files left by an interrupted multi-process run and (with `retry_failed`) take out the
    records of failed samples so that they run again; without `resume`, move the earlier trace to
    `PREVIOUS_SAMPLES_FILE` (never deleting records silently) and delete the shard files and
    summary. Main process only. An unwritable `--output` is a `UserInputError`."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(dict(settings), sort_keys=False))
    except OSError as error:
        raise _unwritable(run_dir, error) from None
    samples = run_dir / SAMPLES_FILE
    if not resume:
        return Prepared(moved=_move_aside(run_dir))
    trace = read_trace(samples, repair=True)
    merged = merge_shards(run_dir, order)
    records = read_trace(samples).records if merged else trace.records
    failed = [record for record in records if is_failed(record)] if retry_failed else []
    if failed:
        rewrite_trace(samples, [record for record in records if not is_failed(record)])
    return Prepared(
        kept=len(records) - len(failed),
        dropped_partial=trace.dropped_partial,
        merged=merged,
        retried=tuple(record["sample_id"] for record in failed),
    )


def _move_aside(run_dir: Path) -> int:
    """`--no-resume`: move `samples.jsonl` and any shard files, byte for byte (damaged or not), into
    `PREVIOUS_SAMPLES_FILE` (replacing an older one) and delete the summary; returns how many
    records were moved."""
    sources = [run_dir / SAMPLES_FILE, *sorted(run_dir.glob(SHARD_GLOB))]
    lines = [line for path in sources if path.is_file() for line in path.read_bytes().split(b"\n")]
    kept = [line for line in lines if line.strip()]
    if kept:
        write_atomic(run_dir / PREVIOUS_SAMPLES_FILE, b"".join(line + b"\n" for line in kept))
    for path in [*sources, run_dir / SUMMARY_FILE]:
        path.unlink(missing_ok=True)
    return len(kept)


def put_in_order(path: Path, order: Sequence[str]) -> bool:
    """Rewrite a trace in dataset `order` (unknown ids last, in file order) if it is not already, as
    after retried samples were appended at the end; returns whether it was rewritten. The file then
    does not depend on how the run was interrupted, retried or sharded."""
    records = read_trace(path).records
    position = {sample_id: index for index, sample_id in enumerate(order)}
    ranked = sorted(records, key=lambda r: position.get(r["sample_id"], len(position)))
    if [r["sample_id"] for r in ranked] == [r["sample_id"] for r in records]:
        return False
    rewrite_trace(path, ranked)
    return True


def merge_shards(run_dir: Path, order: Sequence[str]) -> int:
    """Fold every `samples.rank<i>.jsonl` into `samples.jsonl`: records whose sample is not there yet are
    appended in dataset `order` (unknown ids last), then the shard files are deleted. Safe to repeat
    after a kill at any point: a record already in `samples.jsonl` is never written twice."""
    shards = sorted(run_dir.glob(SHARD_GLOB), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    if not shards:
        return 0
    samples = run_dir / SAMPLES_FILE
    seen = {record["sample_id"] for record in read_trace(samples, repair=True).records}
    fresh: dict[str, Record] = {}
    for shard in shards:
        for record in read_trace(shard).records:
            if record["sample_id"] not in seen:
                fresh.setdefault(record["sample_id"], record)
    position = {sample_id: index for index, sample_id in enumerate(order)}
    ranked = sorted(fresh.values(), key=lambda r: position.get(r["sample_id"], len(position)))
    written = append_records(samples, ranked)
    for shard in shards:
        shard.unlink()
    return written
