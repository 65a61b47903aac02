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


def test_points_with_a_standard_error_get_an_error_bar_of_that_size():
    points = [(1.0, 40.0), (5.0, 60.0), (40.0, None)]
    measured = Series("gui_kv", points, "gui_kv", errors=[2.0, None, 9.0])
    axes = draw_panels(
        [Panel("acc", "budget", "acc (%)", [measured, Series("snapkv", points, "snapkv")])]
    ).axes[0]
    [container] = axes.containers  # one error bar set: the series without errors draws none
    [bars] = container.lines[2]
    spans = [(segment[0][1], segment[1][1]) for segment in bars.get_segments()]
    assert spans == [(38.0, 42.0), (60.0, 60.0)]  # an unknown error is no bar; a point without y is not drawn
    band = Panel(
        "acc", "budget", "acc (%)", [measured], references=[("full cache", 70.0, 1.5), ("oracle", 90.0, None)]
    )
    shaded = draw_panels([band]).axes[0].patches
    assert [(patch.get_y(), patch.get_height()) for patch in shaded] == [(68.5, 3.0)]
    with pytest.raises(ValueError, match="2 errors for 3 points"):
        Series("gui_kv", points, errors=[1.0, 2.0])


def test_the_accuracy_figures_bar_each_run_with_its_standard_error(
    plotted: list[tuple[Any, str]], tmp_path: Path
):
    from benchmarks.finished_runs import group_runs
    from guikv_cli.compare_rundirs import run_figures

    write_run(tmp_path, "gui_kv", 10, 0.5)
    write_run(tmp_path / "b", "gui_kv", 20, 0.6, metrics={"overall_score": 0.6})  # no error stored
    write_run(tmp_path / "c", "full", 100, 0.7, metrics={"overall_score": 0.7, "overall_score_stderr": 0.03})
    run_figures(group_runs(find_runs([tmp_path]).finished), tmp_path / "out", None)
    drawn = [panels for panels, _ in plotted]
    assert drawn[0][0].dodge and all(panels[0].y_from_zero for panels in drawn)  # accuracy from 0%
    for [panel] in drawn:
        [series] = [series for series in panel.series if series.label == "gui_kv"]
        assert series.errors == [pytest.approx(2.0), None]
    assert [(label, error) for label, _, error in drawn[0][0].references] == [
        ("full cache", pytest.approx(3.0))
    ]
