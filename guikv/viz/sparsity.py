"""Figures of an attention sparsity report (the dict `guikv.analysis.sparsity_report` returns, or
its `sparsity.json` read back): sparsity by layer with the spread over heads, a layer x head
heatmap, and where each layer's attention mass goes by key kind.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never through pyplot,
so no global backend or figure registry is touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

KIND_COLORS = {"current": "#d62728", "previous": "#ff7f0e", "text": "#1f77b4"}
"""One color per key kind, shared by every figure."""

KIND_LABELS = {"current": "current screenshot", "previous": "earlier screenshots", "text": "text"}

ANNOTATE_MAX_CELLS = 64
"""Heatmaps with at most this many cells print their values."""


def _values(items: Sequence[float | None]) -> list[float]:
    """None (no data) as NaN, which matplotlib leaves out."""
    return [math.nan if v is None else float(v) for v in items]


def _save(figure: Figure, path: Path) -> Path:
    """Write the figure as a PNG (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def _title(report: dict[str, Any]) -> str:
    """The figure title: model, which query rows were counted, how many samples."""
    mode = report.get("mode", "window")
    rows = f"last {report.get('window_size')} query rows" if mode == "window" else "every query row"
    samples = len(report.get("samples", []))
    return f"{report.get('model', '')}: {rows}, {samples} sample{'s' if samples != 1 else ''}"


def _band(axes: Axes, report: dict[str, Any], key: str, color: str, label: str) -> None:
    """Mean over heads by layer, with a min-max band and a darker inter-quartile band."""
    layers = [layer["layer"] for layer in report["layers"]]
    spread = [layer[f"{key}_heads"] for layer in report["layers"]]
    low, high = _values([s["min"] for s in spread]), _values([s["max"] for s in spread])
    axes.fill_between(layers, low, high, color=color, alpha=0.15, label="heads: min-max")
    low, high = _values([s["q1"] for s in spread]), _values([s["q3"] for s in spread])
    axes.fill_between(layers, low, high, color=color, alpha=0.35, label="heads: IQR")
    axes.plot(layers, _values([layer[key] for layer in report["layers"]]), "o-", color=color, label=label)


def plot_sparsity_by_layer(report: dict[str, Any], path: Path) -> Path:
    """Two panels by layer: sparsity (mean over heads, bands over heads, and the sparsity among
    each key kind's weights), and the share of keys holding the report's attention mass."""
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    layers = [layer["layer"] for layer in report["layers"]]
    _band(left, report, "sparsity", "black", "all keys")
    for kind in reversed(report["kinds"]):
        values = _values([layer["kinds"][kind]["sparsity"] for layer in report["layers"]])
        if any(not math.isnan(v) for v in values):
            left.plot(layers, values, "--", color=KIND_COLORS[kind], label=f"{KIND_LABELS[kind]} keys")
    left.set_title(f"Sparsity: share of weights <= {report['threshold']:g}")
    left.set_xlabel("layer")
    left.set_ylabel("sparsity")
    left.set_ylim(-0.02, 1.02)
    left.legend(fontsize=7, loc="best")
    _band(right, report, "keys_for_mass", "#2ca02c", "all keys")
    right.set_title(f"Share of keys holding {report['mass']:.0%} of the attention")
    right.set_xlabel("layer")
    right.set_ylabel("share of visible keys")
    right.set_ylim(-0.02, 1.02)
    right.legend(fontsize=7, loc="best")
    for axes in (left, right):
        axes.set_xticks(layers)
        axes.grid(alpha=0.3)
    figure.suptitle(_title(report), fontsize=10)
    return _save(figure, path)


def _heatmap(figure: Figure, axes: Axes, grid: list[list[float | None]], title: str, cmap: str) -> None:
    """One layer x head heatmap on a 0-1 scale, values printed when the grid is small."""
    values = [_values(row) for row in grid]
    image = axes.imshow(values, aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.85)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("head")
    axes.set_ylabel("layer")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    rows, cols = len(values), len(values[0]) if values else 0
    if rows * cols <= ANNOTATE_MAX_CELLS:
        for r, row in enumerate(values):
            for c, value in enumerate(row):
                if not math.isnan(value):
                    shade = "white" if value < 0.5 else "black"
                    axes.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7, color=shade)


def plot_sparsity_heatmap(report: dict[str, Any], path: Path) -> Path:
    """Layer x head heatmaps of sparsity and of the share of keys holding the attention mass."""
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    _heatmap(
        figure, left, report["heads"]["sparsity"], f"Sparsity (weights <= {report['threshold']:g})", "viridis"
    )
    _heatmap(
        figure,
        right,
        report["heads"]["keys_for_mass"],
        f"Keys holding {report['mass']:.0%} of attention",
        "magma",
    )
    figure.suptitle(_title(report), fontsize=10)
    return _save(figure, path)


def plot_mass_by_kind(report: dict[str, Any], path: Path) -> Path:
    """Per layer, stacked bars of where the attention mass goes (by key kind), with each kind's
    share of the keys marked: a bar above its marker means that kind draws more than its size."""
    figure = Figure(figsize=(8.5, 4.2), layout="constrained")
    axes = figure.subplots()
    layers = [layer["layer"] for layer in report["layers"]]
    bottom = [0.0] * len(layers)
    for kind in report["kinds"]:
        mass = _values([layer["kinds"][kind]["mass_share"] for layer in report["layers"]])
        shares = [0.0 if math.isnan(v) else v for v in mass]
        if not any(shares):
            continue
        axes.bar(
            layers, shares, bottom=bottom, color=KIND_COLORS[kind], alpha=0.8, label=f"{KIND_LABELS[kind]}"
        )
        keys = _values([layer["kinds"][kind]["key_share"] for layer in report["layers"]])
        tops = [b + k for b, k in zip(bottom, keys, strict=True)]
        axes.plot(layers, tops, "_", color="black", markersize=18, markeredgewidth=2)
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    axes.plot(
        [], [], "_", color="black", markersize=12, markeredgewidth=2, label="share of keys (cumulative)"
    )
    axes.set_title("Attention mass by key kind", fontsize=10)
    axes.set_xlabel("layer")
    axes.set_ylabel("share of attention mass")
    axes.set_xticks(layers)
    axes.set_ylim(0, 1.05)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.suptitle(_title(report), fontsize=10)
    return _save(figure, path)


def write_sparsity_figures(report: dict[str, Any], output_dir: Path) -> list[Path]:
    """Write every sparsity figure of `report` into `output_dir`; returns their paths."""
    return [
        plot_sparsity_by_layer(report, output_dir / "sparsity_by_layer.png"),
        plot_sparsity_heatmap(report, output_dir / "sparsity_heatmap.png"),
        plot_mass_by_kind(report, output_dir / "attention_mass_by_kind.png"),
    ]
