"""The comparison figures: equal methods stay visible side by side (spread along x, own markers and
line styles), shares start at 0, and the knobs set away from the defaults are named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_compare import write_run

import guikv.viz.curves
from benchmarks.finished_runs import find_runs
from guikv.viz.curves import Panel, Series, draw_panels
from guikv_cli.compare_live import recall_figure
from guikv_cli.compare_rundirs import _series_label


def test_equal_series_are_drawn_side_by_side_from_zero():
    points = [(1.0, 40.0), (5.0, 60.0), (40.0, 90.0)]
    twins = [Series("snapkv", points, "snapkv"), Series("gui_kv", points, "gui_kv")]
    panel = Panel("recall", "budget", "recall (%)", twins, log_x=True, dodge=True, y_from_zero=True)
    axes = draw_panels([panel]).axes[0]
    snapkv, gui_kv = axes.get_lines()[:2]
    assert list(snapkv.get_ydata()) == list(gui_kv.get_ydata())
    for left, right, (x, _) in zip(snapkv.get_xdata(), gui_kv.get_xdata(), points, strict=True):
        assert left < x < right and right / left < 1.1  # around the true budget, a few percent apart
    assert snapkv.get_marker() != gui_kv.get_marker() and snapkv.get_linestyle() != gui_kv.get_linestyle()
    assert snapkv.get_markerfacecolor() == "none"
    assert axes.get_ylim()[0] == 0


def test_the_recall_figure_spreads_methods_starts_at_zero_and_names_the_knobs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    drawn: list[tuple[Any, str]] = []
    monkeypatch.setattr(
        guikv.viz.curves, "plot_panels", lambda panels, path, title: drawn.append((panels, title))
    )
    rows = [
        {"method": method, "budget": budget, "runnable": True, "oracle_recall": 0.5}
        for method in ("snapkv", "gui_kv")
        for budget in (5.0, 10.0)
    ]
    recall_figure(rows, [5.0, 10.0], tmp_path, {"window_size": 4, "st_lite_variant": "paper"})
    [([panel], title)] = drawn
    assert panel.dodge and panel.y_from_zero
    assert title == "Oracle recall vs KV budget · window_size=4, st_lite_variant=paper"


def test_runs_of_one_method_with_other_knobs_are_other_lines(tmp_path: Path):
    write_run(tmp_path, "gui_kv", 10, 0.5)
    write_run(tmp_path / "other", "gui_kv", 10, 0.6, config={"method": "gui_kv", "budget": 10, "alpha": 1.0})
    labels = sorted(_series_label(run, several_models=False) for run in find_runs([tmp_path]).finished)
    assert labels == ["gui_kv", "gui_kv (alpha=1.0)"]
