"""Rendering shared by the subcommands that report: compact rich tables, percentages, and a
self-contained HTML page of tables and figures (`guikv analyze-attention`, `guikv compare`).
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
    """A table that fits 80 columns where possible: header words stacked on lines, no cell
    wrapping, single-space gaps; the first `left` columns left-aligned, the rest right-aligned."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=0, pad_edge=False)
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index < left else "right", no_wrap=True)
    return table


def percent(value: float | None) -> str:
    """A share as a percentage with one decimal; missing as an em dash."""
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def mib(value: float | None) -> str:
    """Bytes as MiB: two decimals below 10 MiB, whole MiB above; missing as an em dash."""
    if value is None:
        return "—"
    mebibytes = value / MIB
    return f"{mebibytes:.2f}" if mebibytes < 10 else f"{mebibytes:.0f}"


def knobs_text(knobs: Mapping[str, Any]) -> str:
    """Compression knobs set away from their defaults as a title suffix (` · window_size=4,
    st_lite_variant=paper`), empty when there are none."""
    return f" · {', '.join(f'{name}={value}' for name, value in knobs.items())}" if knobs else ""
