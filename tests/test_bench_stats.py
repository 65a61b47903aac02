"""Standard errors next to every benchmark metric (`benchmarks.stats`): lm-evaluation-harness's
`mean_stderr` over per-sample scores, over group means for macro averages, and combined over fixed
strata for means of means; a 6-sample run must come out far less certain than a 600-sample one."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest

from benchmarks import BENCHMARKS, agentnetbench, androidcontrol, mind2web, screenspot_pro, screenspot_v2
from benchmarks.stats import mean_and_stderr, mean_stderr, stderr_key, stratified_stderr


def _se(values: list[float]) -> float:
    """The reference: sample standard deviation over sqrt(n), from the standard library."""
    return statistics.stdev(values) / math.sqrt(len(values))


def test_mean_stderr_is_the_sample_deviation_over_root_n() -> None:
    scores = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert mean_stderr(scores) == pytest.approx(_se(scores))
    assert mean_stderr(scores) == pytest.approx(math.sqrt(0.5 * 0.5 / 5))  # sqrt(p (1 - p) / (n - 1))
    assert mean_stderr([1.0, 1.0, 1.0]) == 0.0
    assert mean_stderr([1.0]) is None
    assert mean_stderr([]) is None


def test_stratified_stderr_combines_independent_estimates() -> None:
    assert stratified_stderr([0.3, 0.4]) == pytest.approx(0.25)
    assert stratified_stderr([0.2]) == pytest.approx(0.2)
    assert stratified_stderr([0.1, None]) is None
    assert stratified_stderr([]) is None


def test_mean_and_stderr_names_the_pair() -> None:
    assert mean_and_stderr("acc", [1, 0]) == {"acc": 0.5, "acc_stderr": pytest.approx(0.5)}
    assert mean_and_stderr("acc", []) == {"acc": None, "acc_stderr": None}


def test_every_metric_column_has_a_standard_error() -> None:
    for spec in BENCHMARKS.values():
        summary = spec.summarize([])
        for column in spec.metric_columns:
            assert stderr_key(column) in summary, (spec.name, column)


def _android(correct: int, total: int) -> list[dict[str, Any]]:
    """AndroidControl score fields of `total` click steps, the first `correct` of them right."""
    return [
        {
            "correct": index < correct,
            "correct_ignoring_newline": index < correct,
            "grounding": True,
            "gt_type": "click",
            "parsed": True,
        }
        for index in range(total)
    ]


def test_a_limited_run_is_far_less_certain_than_a_full_one() -> None:
    small = androidcontrol.summarize(_android(3, 6))
    large = androidcontrol.summarize(_android(300, 600))
    assert small["step_accuracy"] == large["step_accuracy"] == 0.5
    assert small["step_accuracy_stderr"] == pytest.approx(math.sqrt(0.25 / 5))  # 0.224
    assert large["step_accuracy_stderr"] == pytest.approx(math.sqrt(0.25 / 599))  # 0.020
    assert small["grounding_accuracy_stderr"] == pytest.approx(small["step_accuracy_stderr"])


def test_agentnetbench_trajectory_score_error_is_over_trajectories() -> None:
    scores = {"a": [1.0, 0.0], "b": [1.0, 1.0], "c": [0.5]}
    records = [
        {
            "task_id": task,
            "score": score,
            "hit": score == 1.0,
            "gt_type": "click",
            "milestone": False,
            "coordinate_step": True,
            "scroll_direction_correct": None,
            "used_alternative": False,
            "parsed": True,
        }
        for task, values in scores.items()
        for score in values
    ]
    summary = agentnetbench.summarize(records)
    steps = [1.0, 0.0, 1.0, 1.0, 0.5]
    assert summary["overall_score"] == pytest.approx(0.7)
    assert summary["overall_score_stderr"] == pytest.approx(_se(steps))
    assert summary["average_trajectory_score"] == pytest.approx(2 / 3)
    assert summary["average_trajectory_score_stderr"] == pytest.approx(_se([0.5, 1.0, 0.5]))
    assert summary["hit_rate_stderr"] == pytest.approx(_se([1.0, 0.0, 1.0, 1.0, 0.0]))
    assert summary["milestone_score"] is None and summary["milestone_score_stderr"] is None


def test_screenspot_pro_accuracies_have_sample_errors() -> None:
    correct = {"text": [True, False, True], "icon": [False, False]}
    records = [
        {
            "ui_type": kind,
            "correct": value,
            "correctness": "correct" if value else "wrong",
            "group": "Dev",
            "application": "vscode",
            "platform": "macos",
        }
        for kind, values in correct.items()
        for value in values
    ]
    summary = screenspot_pro.summarize(records)
    assert summary["action_acc_stderr"] == pytest.approx(_se([1, 0, 1, 0, 0]))
    assert summary["text_acc_stderr"] == pytest.approx(_se([1, 0, 1]))
    assert summary["icon_acc_stderr"] == 0.0


def test_screenspot_v2_mean_of_means_error_combines_tasks_and_halves() -> None:
    cells = {
        ("mobile", "text"): [1, 0, 1, 1],
        ("mobile", "icon"): [0, 1],
        ("desktop", "text"): [1, 1, 0],
        ("desktop", "icon"): [0, 0, 1],
    }
    records = [
        {"task": task, "data_type": kind, "correct": bool(value), "wrong_format": False}
        for (task, kind), values in cells.items()
        for value in values
    ]
    summary = screenspot_v2.summarize(records)
    se = {cell: _se([float(v) for v in values]) for cell, values in cells.items()}
    text = math.sqrt(se["mobile", "text"] ** 2 + se["desktop", "text"] ** 2) / 2
    icon = math.sqrt(se["mobile", "icon"] ** 2 + se["desktop", "icon"] ** 2) / 2
    assert summary["text_accuracy_stderr"] == pytest.approx(text)
    assert summary["icon_accuracy_stderr"] == pytest.approx(icon)
    assert summary["overall_mean_of_means_stderr"] == pytest.approx(math.sqrt(text**2 + icon**2) / 2)
    flat = [float(v) for values in cells.values() for v in values]
    assert summary["overall_micro_stderr"] == pytest.approx(_se(flat))
    assert summary["task_breakdown"]["mobile"]["text_accuracy_stderr"] == pytest.approx(se["mobile", "text"])


def test_mind2web_error_is_over_task_means_then_over_splits() -> None:
    tasks = {
        ("cross_task", "t1"): [1, 0],
        ("cross_task", "t2"): [1, 1],
        ("cross_task", "t3"): [0],
        ("cross_website", "w1"): [1],
        ("cross_website", "w2"): [0],
    }
    records = [
        {
            "split": split,
            "annotation_id": task,
            "total_steps": len(values),
            "element_correct": bool(value),
            "operation_f1": float(value),
            "step_correct": bool(value),
        }
        for (split, task), values in tasks.items()
        for value in values
    ]
    summary = mind2web.summarize(records)
    cross_task = _se([0.5, 1.0, 0.0])
    cross_website = _se([1.0, 0.0])
    assert summary["splits"]["cross_task"]["step_accuracy_stderr"] == pytest.approx(cross_task)
    assert summary["splits"]["cross_website"]["step_accuracy_stderr"] == pytest.approx(cross_website)
    combined = math.sqrt(cross_task**2 + cross_website**2) / 2
    for metric in mind2web.METRICS:
        assert summary[stderr_key(metric)] == pytest.approx(combined)
