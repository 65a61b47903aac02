"""Rendering shared by the subcommands that report: compact rich tables, percentages, benchmark
metrics with their standard errors, tables printed whole, and a self-contained HTML page of tables
and figures (`guikv eval`, `guikv analyze-attention`, `guikv compare`).

Accuracy metrics are shown in one unit everywhere, percent, the header saying so (`step_accuracy %`),
each with its standard error (`45.0 ± 3.2`); `summary.json` stores both as shares (0-1).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table

from benchmarks.stats import stderr_key

MIB = 2**20

HTML_CODE_FORMAT = (
    '<pre style="font-family:Menlo,Consolas,monospace;font-size:12px;line-height:1.3;'
    'color:{foreground};background-color:{background};padding:12px;overflow-x:auto"><code>{code}</code></pre>'
)


def html_report(title: str, renderables: Sequence[RenderableType], figures: Sequence[Path]) -> str:
    """One self-contained HTML page: the rich renderables as styled text, then the PNG figures
    embedded as base64 data URIs."""
    console = Console(record=True, file=io.StringIO(), width=180, color_system="truecolor")
    for renderable in renderables:
        console.print(renderable)
    tables = console.export_html(inline_styles=True, code_format=HTML_CODE_FORMAT)
    images = "\n".join(
        f'<figure><img alt="{html.escape(path.name)}" style="max-width:100%" '
        f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode("ascii")}">'
        f"<figcaption>{html.escape(path.name)}</figcaption></figure>"
        for path in figures
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>\n"
        f'<body style="font-family:sans-serif;margin:24px"><h1>{html.escape(title)}</h1>\n'
        f"{tables}\n{images}\n</body></html>\n"
    )


def write_html(
    path: Path, title: str, renderables: Sequence[RenderableType], figures: Sequence[Path]
) -> None:
    """Write `html_report` to `path` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_report(title, renderables, figures), encoding="utf-8")


def compact_table(title: str, headers: Sequence[str], left: int = 1) -> Table:
    """A table that fits 80 columns where possible: header words stacked on lines, single-space
    gaps; the first `left` columns left-aligned, the rest right-aligned. A cell too wide for a
    narrow terminal wraps (folds) rather than being cut short."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=0, pad_edge=False)
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index < left else "right", overflow="fold")
    return table


MEASURE_WIDTH = 10_000
"""The width a table is measured at to find how wide it wants to be."""


def print_tables(console: Console, tables: Sequence[Table]) -> None:
    """Print tables without cutting a number: where the output is not a terminal (a pipe, a file,
    CI) the console widens to each table's natural width; in a terminal cells fold instead."""
    for table in tables:
        if not console.is_terminal:
            natural = console.measure(table, options=console.options.update_width(MEASURE_WIDTH)).maximum
            console.width = max(console.width, natural)
        console.print(table)


def stacked(header: str) -> str:
    """A header as a narrow column title: one word per line (underscores split words)."""
    return "\n".join(header.replace("_", " ").split())


def metric_header(name: str) -> str:
    """The column header of an accuracy metric, stacked one word per line, the last naming its unit
    (`step_accuracy`: `step` over `accuracy %`)."""
    return f"{stacked(name)} %"


def _share(value: object) -> float | None:
    """A JSON number as a float; null, booleans, text and NaN as None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def metric_cell(metrics: Mapping[str, object], name: str) -> str:
    """A summary metric and its standard error, both in percent with one decimal (`45.0 ± 3.2`);
    no known error (one sample, or a summary written before errors were stored) reads `± n/a`, a
    missing metric an em dash."""
    value = _share(metrics.get(name))
    if value is None:
        return "—"
    error = _share(metrics.get(stderr_key(name)))
    return f"{100 * value:.1f} ± {'n/a' if error is None else f'{100 * error:.1f}'}"


def percent(value: float | None) -> str:
    """A share as a percentage with one decimal; missing as an em dash."""
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def mib(value: float | None) -> str:
    """Bytes as MiB: two decimals below 10 MiB, whole MiB above; missing as an em dash."""
    if value is None:
        return "—"
    mebibytes = value / MIB
    return f"{mebibytes:.2f}" if mebibytes < 10 else f"{mebibytes:.0f}"


def capacity(budget: float | None, max_tokens: int | None) -> str:
    """A capacity in words: the budget (`10%`), or with no budget the fixed count per layer that
    `--max-tokens` set (`2048 tok`)."""
    return f"{max_tokens} tok" if budget is None else f"{budget:g}%"


def knobs_text(knobs: Mapping[str, Any]) -> str:
    """Compression knobs set away from their defaults as a title suffix (` · window_size=4,
    st_lite_variant=paper`), empty when there are none."""
    return f" · {', '.join(f'{name}={value}' for name, value in knobs.items())}" if knobs else ""
