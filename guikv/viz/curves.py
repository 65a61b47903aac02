"""Line figures comparing methods: accuracy against budget or KV memory (from finished eval runs)
and fidelity to the full cache and oracle recall against budget (from `guikv compare` on
screenshots).

The figure functions take plain `Panel`s (one subplot each: named series of (x, y) points and
optional horizontal reference lines), so callers decide what is plotted and this module only how.
Drawn on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

METHOD_COLORS = {
    "full": "#000000",
    "gui_kv": "#d62728",
    "st_lite": "#ff7f0e",
    "star_kv": "#17becf",
    "snapkv": "#1f77b4",
    "pyramidkv": "#2ca02c",
    "vlcache": "#9467bd",
    "streamingllm": "#8c564b",
    "random": "#7f7f7f",
}
"""A fixed color per method, so every figure reads the same way."""

MARKERS = "osD^v<>pP*Xh"
LINE_STYLES = ("-", "--", "-.", ":")
DODGE = 0.02
"""How far apart `Panel.dodge` spreads neighbouring series along x: a share of a decade on a log
axis (0.02 decade is about 5%), else of the x range."""


@dataclass(frozen=True)
class Series:
    """One line: a label, the method it belongs to (for its color) and its (x, y) points. Points
    with a None or NaN y are left out; a series with one point is drawn as a marker. `errors`, when
    given, is each point's standard error (None where unknown), drawn as a ± error bar, so that a
    point measured on few samples does not look as certain as one measured on many. A `guide`
    series (e.g. what chance would give) is a thin gray dotted line without markers."""

    label: str
    points: Sequence[tuple[float, float | None]]
    method: str = ""
    guide: bool = False
    errors: Sequence[float | None] = ()

    def __post_init__(self) -> None:
        """Refuse errors that are not one per point."""
        if self.errors and len(self.errors) != len(self.points):
            raise ValueError(f"{self.label}: {len(self.errors)} errors for {len(self.points)} points")


@dataclass(frozen=True)
class Panel:
    """One subplot: a title, axis labels, series, and horizontal reference lines (label, y, standard
    error or None: a band of ± that error is shaded), e.g. the full cache's accuracy on an
    accuracy-vs-budget plot. `log_x` and `log_y` use log scales (points with y <= 0 cannot be
    drawn on a log y axis and are left out); `x_ticks` labels exactly
    those x values. `dodge` spreads the series a little along x around their true x, so that
    methods with equal values stay visible side by side instead of one hiding the other (every
    series also has its own marker, drawn open, and line style); `y_from_zero` starts the y axis at
    0 (a share that would otherwise look large where it is not)."""

    title: str
    xlabel: str
    ylabel: str
    series: Sequence[Series]
    references: Sequence[tuple[str, float, float | None]] = field(default_factory=tuple)
    log_x: bool = False
    log_y: bool = False
    x_ticks: Sequence[float] = field(default_factory=tuple)
    dodge: bool = False
    y_from_zero: bool = False


def _color(series: Series, index: int) -> str:
    """The method's fixed color, else the default cycle's."""
    return METHOD_COLORS.get(series.method) or f"C{index % 10}"


def _plain_number(value: float, _position: int) -> str:
    """Tick labels like 1, 5, 0.5 (not 10^0) on a log axis."""
    return f"{value:g}"


def _dodged(xs: Sequence[float], shift: float, log_x: bool, span: float) -> list[float]:
    """x values moved by `shift` steps of `DODGE` (a factor on a log axis, a share of `span` else)."""
    if log_x:
        return [x * 10 ** (DODGE * shift) for x in xs]
    return [x + DODGE * shift * span for x in xs]


def plot_panels(panels: Sequence[Panel], path: Path, title: str = "") -> Path:
    """Draw the panels side by side (wrapping after three) and write a PNG at `path`."""
    figure = draw_panels(panels, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def draw_panels(panels: Sequence[Panel], title: str = "") -> Figure:
    """The figure of `plot_panels`: the panels side by side, wrapping after three."""
    if not panels:
        raise ValueError("no panels to plot")
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.8 * columns, 3.9 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, panel in enumerate(panels):
        axes = grid[index // columns][index % columns]
        lines = [series for series in panel.series if not series.guide]
        slot = {id(series): place - (len(lines) - 1) / 2 for place, series in enumerate(lines)}
        every_x = [x for series in lines for x, _ in series.points]
        span = max(every_x) - min(every_x) if every_x else 0.0
        for number, series in enumerate(panel.series):
            errors = series.errors or [None] * len(series.points)
            drawable = [
                (x, y, error)
                for (x, y), error in zip(series.points, errors, strict=True)
                if y is not None and not math.isnan(y) and (y > 0 or not panel.log_y)
            ]
            points = sorted(drawable, key=lambda point: point[:2])
            if not points:
                continue
            xs, ys, es = zip(*points, strict=True)
            if series.guide:
                axes.plot(xs, ys, ":", color="gray", linewidth=1.2, label=series.label)
                continue
            if panel.dodge:
                xs = tuple(_dodged(xs, slot[id(series)], panel.log_x, span))
            style = LINE_STYLES[number % len(LINE_STYLES)] if len(points) > 1 else ""
            color = _color(series, number)
            axes.plot(
                xs,
                ys,
                style,
                marker=MARKERS[number % len(MARKERS)],
                markerfacecolor="none",
                color=color,
                label=series.label,
            )
            if any(error is not None for error in es):
                bars = [0.0 if error is None else error for error in es]
                axes.errorbar(
                    xs, ys, yerr=bars, fmt="none", ecolor=color, elinewidth=0.9, capsize=2, alpha=0.7
                )
        for number, (label, value, error) in enumerate(panel.references):
            axes.axhline(value, linestyle="--", color="black", alpha=0.6 - 0.15 * (number % 3), label=label)
            if error is not None:
                axes.axhspan(value - error, value + error, color="black", alpha=0.08, linewidth=0)
        if panel.log_x:
            axes.set_xscale("log")
        if panel.x_ticks:
            axes.set_xticks(sorted(panel.x_ticks))
            axes.xaxis.set_major_formatter(FuncFormatter(_plain_number))
            axes.xaxis.set_minor_formatter(NullFormatter())
        if panel.log_y and axes.has_data():
            axes.set_yscale("log")
        if panel.y_from_zero:
            axes.set_ylim(bottom=0)
        axes.set_title(panel.title, fontsize=10)
        axes.set_xlabel(panel.xlabel)
        axes.set_ylabel(panel.ylabel)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7)
    for index in range(len(panels), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    if title:
        figure.suptitle(title, fontsize=11)
    return figure
