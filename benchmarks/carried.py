"""AgentNetBench with the compressed cache carried from step to step (`guikv eval --carry`).

Each trajectory is one `guikv.trajectory.Trajectory`: its steps are asked in the native multi-turn
layout (`AgentFamily.trajectory_messages`: the instruction first, each screenshot as a user turn
and the model's own answer as an assistant turn, the current screenshot last; the most recent
`screenshots` screenshots shown, every answer kept) instead of the paper's, and each step prefills
only its new turn on the cache the earlier steps left. `CarriedPlayer` builds each step's call and
record, `CarriedResponder` feeds it to the trajectory of its `state_group`.

A step whose screenshot is missing (skipped by the loader) is not part of the carried conversation:
the model never saw that screen and gave no answer for it, so the next step's screenshot turn
follows the last answered step (the paper's layout keeps its place with the ground-truth
monologue; the native layout has no turn for text without a screenshot). A trajectory cannot be
resumed mid-way, so the responder is stateful: the runner re-runs an unfinished trajectory from
its first step. A step that raises leaves its trajectory's cache unusable; the trajectory's later
steps fail with a line saying so, and the next run retries the trajectory from its first step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.agentnetbench import AgentNetStep, PastStep
from benchmarks.common import image_size
from benchmarks.rundir import Record
from benchmarks.runner import CARRIED_FIELDS, COST_FIELDS, Call, Play, Player, Reply
from benchmarks.scoring import ScoringInput
from guikv.agents import AgentFamily, Message

if TYPE_CHECKING:
    from torch import nn

    from guikv.config import CompressionConfig
    from guikv.trajectory import Trajectory


@dataclass(frozen=True, kw_only=True)
class CarriedCall(Call):
    """One step of a carried trajectory: `messages` is the native conversation the step completes
    (what a re-prefill of the step would be given, recorded as its prompt), `task` the trajectory's
    instruction and `screenshot` the new current screen, all a carried step feeds."""

    task: str
    screenshot: Path


def carried_history(sample: AgentNetStep) -> tuple[PastStep, ...]:
    """The earlier steps a carried trajectory was fed before `sample`: those whose screenshot exists
    (a step skipped for a missing screenshot was never run)."""
    return tuple(past for past in sample.history if past.image_exists)


def trajectory_prompt(
    family: AgentFamily, sample: AgentNetStep, answers: Sequence[str], screenshots: int
) -> list[Message]:
    """The native conversation of a carried step: the instruction, each earlier fed step's
    screenshot (the `screenshots - 1` most recent shown) and `answers` (one per earlier fed step),
    the current screenshot last."""
    shots = [*(past.image for past in carried_history(sample)), sample.image]
    return family.trajectory_messages(sample.instruction, shots, list(answers), screenshots)


class CarriedPlayer(Player):
    """Plays AgentNetBench steps in the native multi-turn layout, each a `CarriedCall` whose history
    is the model's own answers of the earlier fed steps of its trajectory, and adds the reply's
    `CARRIED_FIELDS` to the record (zeros when the step failed)."""

    def play(self, sample: Any, context: Any) -> Play:
        """Run one AgentNetBench step to its scored record, its call made in `context` (its
        trajectory's)."""
        earlier = carried_history(sample)
        answers = [self._own_answer(sample.task_id, past) for past in earlier]
        messages = trajectory_prompt(self.family, sample, answers, self.screenshots)
        size = image_size(sample.image)
        call = CarriedCall(
            messages,
            lambda: self.spec.ground_truth_action(sample),
            size,
            context,
            task=sample.instruction,
            screenshot=sample.image,
        )
        turn = yield from self._call(sample, call)
        shown = earlier[max(0, len(earlier) - (self.screenshots - 1)) :]
        extra: Record = {
            "history_screenshots": [past.step_num for past in shown],
            **_zero_carried(),
            **turn.extra,
        }
        return self._record(sample, [turn], ScoringInput(sample, size), extra)

    def _own_answer(self, task_id: str, past: PastStep) -> str:
        """An earlier fed step's answer: the raw output its record holds (empty when it failed: the
        trajectory's later steps then fail too, see `CarriedResponder`)."""
        return str(self.finished[f"{task_id}/{past.step_num}"]["raw_output"])


def _zero_carried() -> dict[str, Any]:
    """The `CARRIED_FIELDS` of a step that did not run (its generation raised)."""
    return {
        "carried_step": None,
        "prefilled_tokens": 0,
        "carried_tokens": 0,
        "evicted_screenshots": 0,
        "kept_by_origin": {},
    }


@dataclass
class CarriedContext:
    """One trajectory's carried state in a run: its `Trajectory` (built at its first step) and, once
    a step raised, that step's error (the cache is then unusable)."""

    trajectory: Trajectory | None = None
    failure: str | None = None


class BrokenTrajectory(RuntimeError):
    """A step asked of a carried trajectory whose cache cannot serve it (an earlier step failed, or
    the step does not continue the conversation the trajectory holds)."""


@dataclass
class CarriedResponder:
    """A loaded model answering each AgentNetBench trajectory with one `Trajectory` (greedy, under a
    compression config): each `CarriedCall` feeds its screenshot as the trajectory's next step, the
    `screenshots` most recent kept in the cache, cut at each step to the config's budget or, when
    given, `max_tokens` per layer. One call at a time (`can_batch` False: a
    trajectory's steps run in order, and a batch split after an error would feed a step twice);
    stateful, so the runner re-runs an unfinished trajectory from its first step."""

    model: nn.Module
    processor: Any
    config: CompressionConfig
    max_new_tokens: int
    family: AgentFamily
    screenshots: int
    max_tokens: int | None = None
    stateful: bool = field(default=True, init=False)
    can_batch: bool = field(default=False, init=False)

    def new_context(self) -> CarriedContext:
        """A new trajectory (built at its first step, when its task is known)."""
        return CarriedContext()

    def reply(self, calls: Sequence[Call]) -> list[Reply]:
        """Feed the one call's screenshot as its trajectory's next step; the text, the costs (as
        `ModelResponder` measures them) and the `CARRIED_FIELDS`. Raises `BrokenTrajectory` when
        the trajectory cannot take the step."""
        if len(calls) != 1 or not isinstance(calls[0], CarriedCall):
            kinds = ", ".join(type(call).__name__ for call in calls)
            raise ValueError(
                f"a carried trajectory takes one CarriedCall at a time (a run played by CarriedPlayer), got "
                f"[{kinds}]"
            )
        call = calls[0]
        context: CarriedContext = call.context
        if context.failure is not None:
            raise BrokenTrajectory(
                f"not run: an earlier step of this carried trajectory failed ({context.failure}); the next "
                "run re-runs the trajectory from its first step"
            )
        context.trajectory = context.trajectory or self._start(call.task)
        self._check_continues(context.trajectory, call)
        try:
            result = context.trajectory.step(call.screenshot)
        except Exception as error:
            context.failure = f"{type(error).__name__}: {error}"
            raise
        numbers = result.to_dict()
        costs = {name: numbers[name] for name in COST_FIELDS if name in numbers}
        kept = result.kept_per_layer
        costs["kept_tokens"] = sum(kept) / len(kept) if kept else result.prompt_tokens
        carried = {name: numbers[name] for name in CARRIED_FIELDS if name != "carried_step"}
        carried["carried_step"] = result.step
        return [Reply(result.text, costs, carried)]

    def _start(self, task: str) -> Trajectory:
        """A new carried trajectory for `task`."""
        from guikv.trajectory import Trajectory

        return Trajectory(
            self.model,
            self.processor,
            self.config,
            task,
            family=self.family,
            screenshot_window=self.screenshots,
            max_new_tokens=self.max_new_tokens,
            max_tokens=self.max_tokens,
        )

    def _check_continues(self, trajectory: Trajectory, call: CarriedCall) -> None:
        """Refuse a step whose conversation is not the trajectory's so far plus its screenshot (a
        trajectory entered mid-way, e.g. resumed without its first steps): its answer would not be
        the answer to the prompt recorded for it."""
        expected = self.family.trajectory_messages(
            call.task, [*trajectory.screenshots, call.screenshot], trajectory.answers, self.screenshots
        )
        if expected != call.messages:
            asked = sum(message["role"] == "assistant" for message in call.messages)
            raise BrokenTrajectory(
                "this step's conversation is not its carried trajectory's so far plus the new screenshot "
                f"(it follows {asked} earlier steps, the trajectory holds {len(trajectory.answers)}): a "
                "carried trajectory runs from its first step, in order"
            )
