"""The five GUI-agent benchmarks GUI-KV is evaluated on: loaders for their original on-disk formats,
their metrics (with the original's bugs fixed, see docs/metrics.md) and ground-truth oracles.

`BENCHMARKS` maps each CLI name to its `BenchmarkSpec`; `get_benchmark(name)` looks one up.
"""

from __future__ import annotations

from benchmarks import agentnetbench, androidcontrol, mind2web, screenspot_pro, screenspot_v2
from benchmarks.common import BenchmarkSpec, DataError, LoadResult, SkippedSample
from guikv.errors import UserInputError

BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        agentnetbench.SPEC,
        androidcontrol.SPEC,
        screenspot_v2.SPEC,
        screenspot_pro.SPEC,
        mind2web.SPEC,
    )
}


def get_benchmark(name: str) -> BenchmarkSpec:
    """The spec of benchmark `name`, or a `UserInputError` naming the argument and the allowed names."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UserInputError(
            f"benchmark: unknown name '{name}'; expected one of: {', '.join(BENCHMARKS)}"
        ) from None


__all__ = ["BENCHMARKS", "BenchmarkSpec", "DataError", "LoadResult", "SkippedSample", "get_benchmark"]
