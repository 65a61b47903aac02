"""Summary statistics of per-sample scores: the standard error that goes next to every metric.

A benchmark metric is an average, and an average over 6 samples is far less certain than one over
1,000. `summary.json` stores, next to each metric `m`, its standard error `m_stderr`, computed as
lm-evaluation-harness computes `mean_stderr`: the sample standard deviation (n - 1 in the
denominator) of the per-sample scores over the square root of their number. For a 0/1 accuracy
that is sqrt(p (1 - p) / (n - 1)). Standard errors are in the metric's own unit (0-1 here).

Two averages in the benchmarks are not plain means over samples, and each has its own rule:

- a mean over groups drawn from a larger population (AgentNetBench trajectories, Mind2Web tasks):
  each group's mean is one score, so `mean_stderr` over the group means;
- a mean over a few strata fixed by the benchmark's design (Mind2Web's splits, ScreenSpot-v2's
  tasks and text/icon halves): the strata are independent estimates, so `stratified_stderr`
  combines their standard errors as sqrt(sum of squares) / k.

Fewer than two scores give no standard error (None), as lm-evaluation-harness reports N/A.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def mean_stderr(values: Iterable[float]) -> float | None:
    """The standard error of the mean of `values`: sample standard deviation / sqrt(n), None for
    fewer than two values (lm-evaluation-harness's `mean_stderr`)."""
    items = [float(value) for value in values]
    count = len(items)
    if count < 2:
        return None
    centre = sum(items) / count
    variance = sum((item - centre) ** 2 for item in items) / (count - 1)
    return math.sqrt(variance / count)


def stratified_stderr(stderrs: Iterable[float | None]) -> float | None:
    """The standard error of the unweighted mean of k independent estimates with the given
    standard errors: sqrt(sum of their squares) / k; None when there are none or any is unknown."""
    items = list(stderrs)
    if not items or any(item is None for item in items):
        return None
    return math.sqrt(sum(item * item for item in items if item is not None)) / len(items)


STDERR_SUFFIX = "_stderr"
"""A metric's standard error is stored under the metric's name with this suffix."""


def stderr_key(metric: str) -> str:
    """The summary key of `metric`'s standard error (`step_accuracy` -> `step_accuracy_stderr`)."""
    return metric + STDERR_SUFFIX


def mean_and_stderr(metric: str, values: Iterable[float]) -> dict[str, float | None]:
    """`{metric: mean, metric_stderr: standard error}` of per-sample scores (both None for no
    scores; the standard error None for one), ready to merge into a summary."""
    items = [float(value) for value in values]
    return {metric: sum(items) / len(items) if items else None, stderr_key(metric): mean_stderr(items)}
