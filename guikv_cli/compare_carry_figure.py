"""The figure of `guikv compare SCREENSHOT... --task TEXT --carry`: carried against re-prefilled,
step by step, one line per (method, budget) pair: how far the carried output agrees with the
re-prefilled one, how many tokens each step fed through the model, and how much KV the carried
cache kept. What the rows hold: docs/analysis.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guikv_cli.report import MIB, capacity, knobs_text

if TYPE_CHECKING:
    from benchmarks.carry_fidelity import Pair

FIGURE_NAME = "carry_per_step.png"

Row = dict[str, Any]


def _per_step(rows: Sequence[Row], value: Callable[[Row], float]) -> list[tuple[float, float | None]]:
    """(step, value) of each row."""
    return [(row["step"], value(row)) for row in rows]


def _mean_per_step(
    runs: Sequence[Sequence[Row]], value: Callable[[Row], float]
) -> list[tuple[float, float | None]]:
    """(step, mean value over the runs that have the step), in step order."""
    by_step: dict[int, list[float]] = {}
    for rows in runs:
        for row in rows:
            by_step.setdefault(row["step"], []).append(value(row))
    return [(step, sum(values) / len(values)) for step, values in sorted(by_step.items())]


def carry_figure(
    runs: Sequence[tuple[Pair, Sequence[Row]]],
    output: Path,
    max_tokens: int | None,
    knobs: Mapping[str, Any],
) -> Path | None:
    """Three panels over the steps, one line per pair (spread a little along x, so equal ones stay
    visible): token agreement of the carried output with the re-prefilled one (from 0%), tokens
    prefilled by the carried path (the re-prefilled path's, mean over the pairs, as a dotted guide;
    from 0), and the carried cache's kept KV (MiB, from 0). The title names the `knobs` set and
    `max_tokens`. None when no step ran."""
    from guikv.viz.curves import Panel, Series, plot_panels

    ran = [(pair, [row for row in rows if row["runnable"]]) for pair, rows in runs]
    ran = [(pair, rows) for pair, rows in ran if rows]
    if not ran:
        return None
    agreement, prefilled, kept = [], [], []
    for pair, rows in ran:
        method = pair[0]
        label = f"{method} {capacity(pair[1], max_tokens)}"
        agreement.append(Series(label, _per_step(rows, lambda row: 100 * row["token_agreement"]), method))
        prefilled.append(
            Series(label, _per_step(rows, lambda row: row["carried"]["prefilled_tokens"]), method)
        )
        kept.append(Series(label, _per_step(rows, lambda row: row["carried"]["kv_bytes_kept"] / MIB), method))
    reprefilled = _mean_per_step(
        [rows for _, rows in ran], lambda row: row["reprefilled"]["prefilled_tokens"]
    )
    prefilled.append(Series("re-prefilled (mean over pairs)", reprefilled, guide=True))
    steps = [step for step, _ in reprefilled]
    panels = [
        Panel(
            "Carried output equal to the re-prefilled one",
            "step",
            "token agreement (%)",
            agreement,
            x_ticks=steps,
            dodge=True,
            y_from_zero=True,
        ),
        Panel(
            "Tokens prefilled per step",
            "step",
            "tokens fed through the model",
            prefilled,
            x_ticks=steps,
            dodge=True,
            y_from_zero=True,
        ),
        Panel(
            "KV kept by the carried cache",
            "step",
            "KV kept (MiB)",
            kept,
            x_ticks=steps,
            dodge=True,
            y_from_zero=True,
        ),
    ]
    fixed_count = f" · max_tokens={max_tokens}" if max_tokens is not None else ""
    title = f"Carried vs re-prefilled, per step{knobs_text(knobs)}{fixed_count}"
    return plot_panels(panels, output / FIGURE_NAME, title)
