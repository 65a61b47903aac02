"""`guikv compare`: methods x budgets side by side, in two forms.

- `guikv compare RUN_DIR...` reads finished `guikv eval` runs (a folder may also hold run folders
  at any depth) and prints one table per benchmark: accuracy metrics and savings per method and
  budget (a run with failed samples also with its metrics counting them wrong), with
  accuracy-vs-budget and accuracy-vs-KV-memory figures. Re-scored runs (`guikv eval --rescore`)
  show their new numbers: only `summary.json` is read.
- `guikv compare SCREENSHOT... --task TEXT --methods ... --budgets ...` runs one input under every
  (method, budget) pair and measures each output's fidelity to the full cache (run once): token
  agreement, exact match, KL of the first decoding step, oracle recall (the share of the positions
  the full cache's decode steps attended most that the method kept), same parsed action, and the
  costs.

The two forms never mix. Definitions of every column: docs/analysis.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from benchmarks.flags import compression_config, quiet_transformers
from guikv.config import METHODS
from guikv.errors import UserInputError
from guikv_cli.options import ALPHA, ATTN, DEVICE, DTYPE, MODEL, TEMPERATURE, WINDOW
from guikv_cli.report import compact_table, percent, write_html
from guikv_cli.screenshots import check_screenshots, resolve_family, screenshot_messages

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

DEFAULT_METHODS = "full,snapkv,pyramidkv,vlcache,gui_kv,st_lite,star_kv"
DEFAULT_BUDGETS = "1,5,10,20,40"
DEFAULT_OUTPUT = Path("guikv-compare")
MIB = 2**20


# ----------------------------------------------------------------------------------------------
# Finished eval runs


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
    def sort_key(self) -> tuple[str, int, float, str]:
        """Model, then methods in `METHODS` order, then budget."""
        method = self.summary["method"]
        order = METHODS.index(method) if method in METHODS else len(METHODS)
        return (str(self.summary["model"]), order, float(self.summary["budget"]), self.path.name)

    def metric(self, name: str) -> float | None:
        """A summary metric as a float (None when absent or not a number)."""
        return _float(self.summary["metrics"].get(name))

    @property
    def failures_as_wrong(self) -> dict[str, Any] | None:
        """The metrics counting failed samples as wrong, when the run had failed samples."""
        value = self.summary.get("metrics_failures_as_wrong")
        return value if self.summary["samples_failed"] and isinstance(value, dict) else None

    def saving(self, name: str) -> float | None:
        """A `savings` entry as a float (None when absent)."""
        return _float(self.summary["savings"].get(name))


def _float(value: Any) -> float | None:
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


def _number(value: float | None, digits: int = 3) -> str:
    """A metric value with fixed decimals; missing as an em dash."""
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _mib(value: float | None) -> str:
    """Bytes as MiB: two decimals below 10 MiB, whole MiB above."""
    if value is None:
        return "—"
    mib = value / MIB
    return f"{mib:.2f}" if mib < 10 else f"{mib:.0f}"


def _saved(value: float | None) -> str:
    """A saving in percent; missing (e.g. an oracle run) as an em dash."""
    return "—" if value is None else f"{value:.1f}%"


def _stacked(name: str) -> str:
    """A metric name as a narrow header: one word per line."""
    return name.replace("_", "\n")


def runs_table(benchmark: str, runs: Sequence[EvalRun]) -> Table:
    """One benchmark's runs: method, budget, metric columns, savings and kept KV memory; sample
    counts in the caption when every run has the same, else in a column. A run with failed samples
    gets a second row, its metrics counting the failed samples as wrong."""
    title = str(runs[0].summary["title"] or benchmark)
    several_models = len({run.summary["model"] for run in runs}) > 1
    keys = [(run.summary["model"], run.summary["method"], run.summary["budget"]) for run in runs]
    show_run = len(set(keys)) < len(keys)
    columns = metric_columns(runs)
    counts = [_counts(run) for run in runs]
    same_counts = len(set(counts)) == 1
    lead = [*(["model"] if several_models else []), "method", "budget", *(["run"] if show_run else [])]
    headers = [
        *lead,
        *(_stacked(column) for column in columns),
        "KV\nsaved",
        "decode\nFLOPs\nsaved",
        "KV MiB\nkept",
        *([] if same_counts else ["samples"]),
    ]
    table = compact_table(f"{title} ({benchmark})", headers, left=len(lead) - 1 - show_run)
    if same_counts:
        table.caption = f"samples per run: {counts[0]}"
        table.caption_justify = "left"
    for run, count in zip(runs, counts, strict=True):
        summary = run.summary
        table.add_row(
            *([str(summary["model"])] if several_models else []),
            str(summary["method"]),
            f"{float(summary['budget']):g}%",
            *([run.path.name] if show_run else []),
            *(_number(run.metric(column)) for column in columns),
            _saved(run.saving("kv_saved_percent")),
            _saved(run.saving("decode_flops_saved_percent")),
            _mib(run.saving("kv_bytes_kept_mean")),
            *([] if same_counts else [count]),
        )
        wrong = run.failures_as_wrong
        if wrong is not None:
            table.add_row(
                *[""] * (len(lead) - 2 - show_run),
                "failed as wrong",
                "",
                *([""] if show_run else []),
                *(_number(_float(wrong.get(column))) for column in columns),
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
    """A figure legend label: the method, prefixed by the model when several models are compared."""
    method = str(run.summary["method"])
    return f"{run.summary['model']}: {method}" if several_models else method


def run_figures(groups: dict[str, list[EvalRun]], output: Path, metric: str | None) -> list[Path]:
    """Accuracy vs budget and accuracy vs kept KV memory, one panel per benchmark; full-cache runs
    are a dashed line on the first and a single point on the second."""
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
            method = str(members[0].summary["method"])
            memory = [
                (kept / MIB, run.metric(column))
                for run in members
                if (kept := run.saving("kv_bytes_kept_mean")) is not None and kept > 0
            ]
            memory_series.append(Series(label, memory, method))
            if method == "full":
                references.extend(
                    (f"{label} cache", v) for run in members if (v := run.metric(column)) is not None
                )
            else:
                points = [(float(run.summary["budget"]), run.metric(column)) for run in members]
                budget_series.append(Series(label, points, method))
        budgets = sorted({float(r.summary["budget"]) for r in runs if r.summary["method"] != "full"})
        by_budget.append(
            Panel(title, "KV budget (%)", column, budget_series, references, log_x=True, x_ticks=budgets)
        )
        by_memory.append(
            Panel(title, "KV cache kept (MiB, mean per sample)", column, memory_series, log_x=True)
        )
    if not by_budget:
        return []
    return [
        plot_panels(by_budget, output / "accuracy_vs_budget.png", "Accuracy vs KV budget"),
        plot_panels(by_memory, output / "accuracy_vs_kv_memory.png", "Accuracy vs KV memory"),
    ]


def runs_json(groups: dict[str, list[EvalRun]], figures: Sequence[Path]) -> dict[str, Any]:
    """The run-form `compare.json`: per benchmark, each run's metrics and savings."""
    return {
        "format": "guikv-compare-runs/1",
        "groups": [
            {
                "benchmark": benchmark,
                "title": runs[0].summary["title"],
                "metric_columns": metric_columns(runs),
                "runs": [
                    {
                        "path": str(run.path),
                        **{key: run.summary[key] for key in ("model", "family", "method", "budget")},
                        "metrics": {
                            column: run.summary["metrics"].get(column) for column in metric_columns(runs)
                        },
                        "savings": run.summary["savings"],
                        **{
                            key: run.summary[key]
                            for key in ("samples_scored", "samples_skipped", "samples_failed")
                        },
                        "metrics_failures_as_wrong": (
                            None
                            if run.failures_as_wrong is None
                            else {
                                column: run.failures_as_wrong.get(column) for column in metric_columns(runs)
                            }
                        ),
                    }
                    for run in runs
                ],
            }
            for benchmark, runs in groups.items()
        ],
        "figures": [path.name for path in figures],
    }


def compare_runs(
    targets: Sequence[Path], output: Path, metric: str | None, html_path: Path | None, console: Console
) -> None:
    """The run form: tables, figures, compare.json and the optional HTML report."""
    groups = group_runs(find_runs(targets))
    if metric is not None:
        for benchmark, runs in groups.items():
            if metric not in metric_columns(runs) and not any(
                metric in run.summary["metrics"] for run in runs
            ):
                raise UserInputError(
                    f"--metric {metric} is not a metric of {benchmark}: expected one of "
                    f"{', '.join(metric_columns(runs))}"
                )
    tables = [runs_table(benchmark, runs) for benchmark, runs in groups.items()]
    for table in tables:
        console.print(table)
    output.mkdir(parents=True, exist_ok=True)
    figures = run_figures(groups, output, metric)
    (output / "compare.json").write_text(
        json.dumps(runs_json(groups, figures), indent=2) + "\n", encoding="utf-8"
    )
    if html_path is not None:
        write_html(html_path, "guikv compare: eval runs", tables, figures)
    count = sum(len(runs) for runs in groups.values())
    console.print(
        f"{count} run(s) in {len(groups)} benchmark(s); "
        f"wrote compare.json and {len(figures)} figures to {output}",
        highlight=False,
    )


# ----------------------------------------------------------------------------------------------
# One input, every method and budget


def parse_methods(text: str) -> list[str]:
    """Comma-separated method names, validated and de-duplicated in order."""
    names = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    if not names:
        raise UserInputError(f"--methods is empty: expected a comma-separated list from {', '.join(METHODS)}")
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise UserInputError(
            f"--methods: unknown method {unknown[0]!r}: expected some of {', '.join(METHODS)}"
        )
    return names


def parse_budgets(text: str) -> list[float]:
    """Comma-separated budgets in percent, each in (0, 100], de-duplicated and sorted."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserInputError(
            "--budgets is empty: expected comma-separated percentages in (0, 100], e.g. 1,5,10"
        )
    budgets = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise UserInputError(f"--budgets: {item!r} is not a number") from None
        if not 0 < value <= 100:
            raise UserInputError(
                f"--budgets: {item} is outside (0, 100]: a budget is a percentage of the prompt"
            )
        budgets.append(value)
    return sorted(set(budgets))


def method_pairs(methods: Sequence[str], budgets: Sequence[float]) -> list[tuple[str, float]]:
    """Every (method, budget) to run; the full cache once, at 100%."""
    pairs: list[tuple[str, float]] = []
    for method in methods:
        pairs.extend([("full", 100.0)] if method == "full" else [(method, budget) for budget in budgets])
    return pairs


def _flops(value: float) -> str:
    """A FLOP count with a k/M/G/T suffix."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def fidelity_row(fidelity: Any) -> dict[str, Any]:
    """One (method, budget) result as JSON: fidelity to the full cache and costs."""
    row: dict[str, Any] = {
        "method": fidelity.method,
        "budget": fidelity.budget,
        "runnable": fidelity.runnable,
        "reason": fidelity.reason,
    }
    result = fidelity.result
    if result is None:
        return row
    costs = result.to_dict()
    return {
        **row,
        "text": result.text,
        "prompt_tokens": result.prompt_tokens,
        "generated_tokens": result.generated_tokens,
        "token_agreement": fidelity.agreement,
        "exact_match": fidelity.exact_match,
        "kl_first_decode_step": fidelity.kl,
        "oracle_recall": fidelity.recall,
        "oracle_recall_per_layer": fidelity.recall_per_layer,
        "oracle_recall_reason": fidelity.recall_reason,
        "action": fidelity.action,
        "action_match": fidelity.action_match,
        "kept_per_layer": result.kept_per_layer,
        "kv_mib": result.kv_bytes_kept / MIB,
        "kv_saved_percent": costs["kv_saved_percent"],
        "decode_flops": costs["decode_flops_kept"],
        "decode_flops_saved_percent": costs["decode_flops_saved_percent"],
        "decode_attention_flops": costs["decode_attention_flops_kept"],
        "prefill_ms": 1000 * result.prefill_seconds,
        "decode_ms_per_token": result.decode_ms_per_token,
    }


def fidelity_table(rows: Sequence[dict[str, Any]]) -> Table:
    """Fidelity of every pair to the full cache (first row): token agreement, exact match, KL of
    the first decoding step, oracle recall, and whether the first parsed action is the same."""
    headers = (
        "method",
        "budget",
        "token\nagreement",
        "exact\nmatch",
        "KL, 1st\ndecode step",
        "oracle\nrecall",
        "action",
    )
    table = compact_table("Fidelity to the full cache", headers)
    for row in rows:
        budget = f"{row['budget']:g}%"
        if not row["runnable"]:
            table.add_row(row["method"], budget, "[yellow]not runnable[/]", "—", "—", "—", "—")
            continue
        kl = row["kl_first_decode_step"]
        match = row["action_match"]
        table.add_row(
            row["method"],
            budget,
            percent(row["token_agreement"]),
            "yes" if row["exact_match"] else "no",
            "—" if kl is None else f"{kl:.2e}",
            percent(row["oracle_recall"]),
            row["action"] if match is None else ("same" if match else "differs"),
        )
    return table


def cost_table(rows: Sequence[dict[str, Any]]) -> Table:
    """What every pair kept and cost: tokens kept per layer (mean), KV memory, decode FLOPs, time."""
    headers = (
        "method",
        "budget",
        "kept",
        "KV\nMiB",
        "KV\nsaved",
        "decode\nFLOPs",
        "FLOPs\nsaved",
        "prefill\nms",
        "ms per\ntoken",
    )
    table = compact_table("Costs", headers)
    for row in rows:
        budget = f"{row['budget']:g}%"
        if not row["runnable"]:
            table.add_row(row["method"], budget, *["—"] * 7)
            continue
        kept = row["kept_per_layer"]
        table.add_row(
            row["method"],
            budget,
            f"{sum(kept) / len(kept):.0f}",
            _mib(row["kv_mib"] * MIB),
            f"{row['kv_saved_percent']:.1f}%",
            _flops(row["decode_flops"]),
            f"{row['decode_flops_saved_percent']:.1f}%",
            f"{row['prefill_ms']:.0f}",
            f"{row['decode_ms_per_token']:.1f}",
        )
    return table


def fidelity_figure(rows: Sequence[dict[str, Any]], budgets: Sequence[float], output: Path) -> Path:
    """Token agreement and first-decode-step KL against budget, one line per method."""
    from guikv.viz.curves import Panel, Series, plot_panels

    methods = list(dict.fromkeys(row["method"] for row in rows if row["method"] != "full"))
    agreement, divergence = [], []
    for method in methods:
        mine = [row for row in rows if row["method"] == method and row["runnable"]]
        agreement.append(Series(method, [(r["budget"], 100 * r["token_agreement"]) for r in mine], method))
        divergence.append(Series(method, [(r["budget"], r["kl_first_decode_step"]) for r in mine], method))
    panels = [
        Panel(
            "Generated tokens equal to the full cache's",
            "KV budget (%)",
            "token agreement (%)",
            agreement,
            [("full cache", 100.0)],
            log_x=True,
            x_ticks=budgets,
        ),
        Panel(
            "KL(full || method), first decoding step",
            "KV budget (%)",
            "KL (nats)",
            divergence,
            log_x=True,
            log_y=True,
            x_ticks=budgets,
        ),
    ]
    return plot_panels(panels, output / "fidelity_vs_budget.png", "Fidelity to the full cache")


def recall_figure(rows: Sequence[dict[str, Any]], budgets: Sequence[float], output: Path) -> Path:
    """Oracle recall against budget, one line per method, with what keeping positions at random
    would recall on average (the budget itself) as a dotted diagonal."""
    from guikv.viz.curves import Panel, Series, plot_panels

    methods = list(dict.fromkeys(row["method"] for row in rows if row["method"] != "full"))
    series = [
        Series(
            method,
            [
                (r["budget"], 100 * r["oracle_recall"])
                for r in rows
                if r["method"] == method and r["runnable"]
            ],
            method,
        )
        for method in methods
    ]
    chance = Series("chance (keep at random)", [(budget, budget) for budget in budgets], guide=True)
    panel = Panel(
        "Full cache's top-C decode positions kept",
        "KV budget (%)",
        "oracle recall (%)",
        [*series, chance],
        [("full cache", 100.0)],
        log_x=True,
        x_ticks=budgets,
    )
    return plot_panels([panel], output / "oracle_recall_vs_budget.png", "Oracle recall vs KV budget")


def action_key_for(family: Any, screenshot: Path) -> Any:
    """A function turning an output into its first parsed action's comparable fields."""
    from PIL import Image

    with Image.open(screenshot) as image:
        size = image.size

    def key(text: str) -> tuple[Any, ...]:
        action = family.parse(text, size)[0]
        fields = (action.point, action.end_point, action.text, action.keys, action.direction, action.amount)
        return (action.type.value, *fields)

    return key


def compare_step(
    screenshots: Sequence[Path],
    task: str,
    methods: Sequence[str],
    budgets: Sequence[float],
    *,
    options: dict[str, Any],
    output: Path,
    html_path: Path | None,
    console: Console,
) -> None:
    """The screenshot form: run every pair, print the table, write compare.json and the figure."""
    quiet_transformers()
    from guikv.analysis import compare_methods
    from guikv.models import load

    base = compression_config(
        window_size=options["window_size"], alpha=options["alpha"], temperature=options["temperature"]
    )
    with console.status(f"loading {options['model']}"):
        model, processor = load(options["model"], options["dtype"], options["attn"], options["device"])
    family = resolve_family(model, options["family"])
    messages = screenshot_messages(family, task, screenshots)
    pairs = method_pairs(methods, budgets)
    with console.status("running the full cache") as status:
        reference, runs = compare_methods(
            model,
            processor,
            messages,
            pairs,
            max_new_tokens=options["max_new_tokens"],
            action_key=action_key_for(family, screenshots[-1]),
            base=base,
            progress=lambda method, budget: status.update(f"running {method} at {budget:g}%"),
            recall=True,
        )
    reference_row = fidelity_row(reference)
    reference_row.update(token_agreement=1.0, exact_match=True, kl_first_decode_step=0.0, action_match=None)
    rows = [reference_row, *(fidelity_row(run) for run in runs if run.method != "full")]
    tables = [fidelity_table(rows), cost_table(rows)]
    for table in tables:
        console.print(table)
    notes = [
        f"full-cache output: {reference_row['text']!r} (action: {reference_row['action']})",
        "oracle recall: the share of the prompt positions the full cache's decode steps attended most "
        "(top C per layer and KV head, C = the method's kept count there) that the method kept"
        + (f"; {reference_row['oracle_recall_reason']}" if reference_row["oracle_recall_reason"] else ""),
    ]
    notes += [
        f"{row['method']} at {row['budget']:g}%: not runnable ({row['reason']})"
        for row in rows
        if not row["runnable"]
    ]
    for note in notes:
        console.print(note, highlight=False)
    output.mkdir(parents=True, exist_ok=True)
    compared = any(r["method"] != "full" for r in rows)
    recalled = reference_row["oracle_recall"] is not None
    figures = (
        [
            fidelity_figure(rows, budgets, output),
            *([recall_figure(rows, budgets, output)] if recalled else []),
        ]
        if compared
        else []
    )
    document = {
        "format": "guikv-compare-step/1",
        "model": options["model"],
        "family": family.name,
        "task": task,
        "screenshots": [str(path) for path in screenshots],
        "prompt_tokens": reference_row["prompt_tokens"],
        "max_new_tokens": options["max_new_tokens"],
        "config": base.to_dict(),
        "reference": reference_row,
        "results": rows[1:],
        "figures": [path.name for path in figures],
    }
    (output / "compare.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if html_path is not None:
        write_html(html_path, f"guikv compare: {options['model']}", [*tables, *notes], figures)
    console.print(
        f"{reference_row['prompt_tokens']} prompt tokens, {len(pairs)} pairs; "
        f"wrote compare.json and {len(figures)} figure(s) to {output}",
        highlight=False,
    )


def compare(
    targets: list[Path] = typer.Argument(..., help="Eval run folders (or parents of them), or screenshots."),
    task: str | None = typer.Option(None, "--task", help="Screenshot form: the task text."),
    methods: str | None = typer.Option(
        None, "--methods", help=f"Screenshot form: methods (default {DEFAULT_METHODS})."
    ),
    budgets: str | None = typer.Option(
        None, "--budgets", help=f"Screenshot form: budgets in % (default {DEFAULT_BUDGETS})."
    ),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Screenshot form: tokens to generate."),
    model: str = MODEL,
    family: str | None = typer.Option(None, "--family", help="Agent family (default: from the model)."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    attn: str = ATTN,
    window_size: int = WINDOW,
    alpha: float = ALPHA,
    temperature: float = TEMPERATURE,
    metric: str | None = typer.Option(
        None, "--metric", help="Run form: metric to plot (default: the first)."
    ),
    output: Path = typer.Option(DEFAULT_OUTPUT, "--output", help="Folder for compare.json and figures."),
    html_path: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML report."),
) -> None:
    """Compare methods x budgets: finished eval runs, or one input run under every pair."""
    console = Console()
    missing = [path for path in targets if not path.exists()]
    if missing:
        raise UserInputError(f"{missing[0]}: no such file or folder")
    folders = [path for path in targets if path.is_dir()]
    files = [path for path in targets if not path.is_dir()]
    if folders and files:
        raise UserInputError(
            f"{folders[0]} is a folder and {files[0]} a file: "
            "compare eval run folders or screenshots, not both"
        )
    if folders:
        given = [
            flag
            for flag, value in (("--task", task), ("--methods", methods), ("--budgets", budgets))
            if value
        ]
        if given:
            raise UserInputError(f"{', '.join(given)} belong to the screenshot form, not to eval run folders")
        compare_runs(folders, output, metric, html_path, console)
        return
    if metric is not None:
        raise UserInputError("--metric belongs to the eval run form, not to screenshots")
    if not (task and task.strip()):
        raise UserInputError("SCREENSHOT... needs --task TEXT (or pass eval run folders instead)")
    method_names = parse_methods(DEFAULT_METHODS if methods is None else methods)
    budget_values = parse_budgets(DEFAULT_BUDGETS if budgets is None else budgets)
    if max_new_tokens < 1:
        raise UserInputError(f"--max-new-tokens {max_new_tokens} is invalid: expected an integer >= 1")
    check_screenshots(files)
    options = {
        "model": model,
        "family": family,
        "device": device,
        "dtype": dtype,
        "attn": attn,
        "window_size": window_size,
        "alpha": alpha,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
    }
    compare_step(
        files,
        task,
        method_names,
        budget_values,
        options=options,
        output=output,
        html_path=html_path,
        console=console,
    )


def register(app: typer.Typer) -> None:
    """Add `guikv compare` to the app."""
    app.command("compare")(compare)
