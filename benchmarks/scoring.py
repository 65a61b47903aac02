"""From a raw model output to its score fields: the one path a run takes and `--rescore` repeats.

A run stores in each trace record, as `scoring_input`, what this path needs besides the raw output:
the loader's sample (AgentNetBench's without its history, which no metric reads and which would
grow the trace with the square of a trajectory's length), the image size the output is parsed at,
and the benchmark's extra score arguments (Mind2Web: the block the final action was taken on).
`--rescore` rebuilds the sample from it and scores the stored raw output again with today's
parser and metric, through the same two functions a run uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from benchmarks import agentnetbench, androidcontrol, mind2web, screenspot_pro, screenspot_v2
from benchmarks.common import BenchmarkSpec
from benchmarks.jsonable import from_json, to_json
from guikv.agents import Action, AgentFamily

SAMPLE_TYPES: dict[str, type] = {
    agentnetbench.SPEC.name: agentnetbench.AgentNetStep,
    androidcontrol.SPEC.name: androidcontrol.AndroidControlSample,
    screenspot_v2.SPEC.name: screenspot_v2.ScreenSpotSample,
    screenspot_pro.SPEC.name: screenspot_pro.ScreenSpotProSample,
    mind2web.SPEC.name: mind2web.Mind2WebSample,
}
"""The sample class each benchmark's loader yields (what its `score` takes), by benchmark name."""


@dataclass(frozen=True)
class ScoringInput:
    """Everything a benchmark's metric needs to score one raw output: the sample, the size of the
    screenshot the output refers to (its coordinates are parsed against it), and extra keyword
    arguments of the benchmark's `score`."""

    sample: Any
    image_size: tuple[int, int]
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record's `scoring_input` field."""
        sample = self.sample
        if isinstance(sample, agentnetbench.AgentNetStep):
            sample = dataclasses.replace(sample, history=())
        return {"sample": to_json(sample), "image_size": list(self.image_size), "options": dict(self.options)}

    @classmethod
    def from_json(cls, benchmark: str, value: Any) -> ScoringInput:
        """Rebuild a record's `scoring_input` for `benchmark`; a malformed one is a `ValueError`
        naming the field."""
        if not isinstance(value, dict):
            raise ValueError(f"scoring_input: expected an object, got {type(value).__name__}")
        sample = from_json(SAMPLE_TYPES[benchmark], value.get("sample"), "scoring_input.sample")
        size = from_json(tuple[int, int], value.get("image_size"), "scoring_input.image_size")
        options = from_json(dict[str, Any], value.get("options", {}), "scoring_input.options")
        return cls(sample, size, options)


def parse_output(family: AgentFamily, text: str, image_size: tuple[int, int]) -> list[Action]:
    """Every action the family's parser reads in `text` at `image_size`, in order (one unparsed
    action when it reads none)."""
    return family.parse(text, image_size) or [Action.unparsed(text)]


def score_output(
    spec: BenchmarkSpec, family: AgentFamily, scoring: ScoringInput, text: str
) -> tuple[list[Action], dict[str, Any]]:
    """Parse a raw output and score it with the benchmark's metric: the parsed actions and the score
    fields. The metric is given every parsed action."""
    actions = parse_output(family, text, scoring.image_size)
    return actions, spec.score(scoring.sample, actions, **scoring.options)
