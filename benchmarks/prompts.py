"""The agent prompt each benchmark sample is asked with: one place for `eval` and `analyze-attention`.

AgentNetBench steps carry their history: the caller passes the earlier steps' texts (the model's
own outputs during an eval run); without them each earlier step's ground-truth monologue is used.
The earlier screenshots shown are the most recent ones that exist on disk (`history_screenshots`):
a missing one is replaced by the next older one, so the prompt keeps its number of images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from benchmarks.agentnetbench import AgentNetStep, PastStep
from benchmarks.androidcontrol import AndroidControlSample
from benchmarks.mind2web import Mind2WebSample
from guikv.agents import AgentFamily, Message, Monologue
from guikv.agents.prompting import HISTORY_TEXT_WINDOW, HistoryEntry

DEFAULT_SCREENSHOTS = 5
"""The paper's 5-screenshot setting: 4 earlier screenshots and the current one."""


def ground_truth_history(past: PastStep) -> Monologue:
    """An earlier AgentNetBench step told by its ground-truth monologue (when no model output exists)."""
    monologue = past.monologue
    return Monologue(
        monologue.observation, monologue.thought, monologue.low_level_instruction or past.action_code
    )


def history_screenshots(sample: AgentNetStep, screenshots: int) -> tuple[PastStep, ...]:
    """The earlier steps whose screenshots an AgentNetBench prompt with `screenshots` images (the
    current one included) shows, oldest first: the `screenshots - 1` most recent that exist on
    disk, among the steps whose text the prompt keeps (the last `HISTORY_TEXT_WINDOW`), so that
    every screenshot still sits before its own step's text."""
    wanted = screenshots - 1
    if wanted < 1:
        return ()
    existing = [past for past in sample.history[-HISTORY_TEXT_WINDOW:] if past.image_exists]
    return tuple(existing[-wanted:])


def sample_prompt(
    family: AgentFamily,
    sample: object,
    *,
    history: Sequence[HistoryEntry] | None = None,
    screenshots: int = DEFAULT_SCREENSHOTS,
    block: int = 0,
    notes: Sequence[str] = (),
) -> tuple[list[Message], Path]:
    """The family's messages for one sample, and the screenshot they ask about.

    `history` (AgentNetBench) holds one entry per earlier step, `screenshots` is the number of
    screenshots per prompt (current included; fewer only when too few earlier ones exist, see
    `history_screenshots`); `block` and `notes` are Mind2Web's scroll position and the
    "Scroll down." actions taken to get there.
    """
    if isinstance(sample, AgentNetStep):
        entries = list(history) if history is not None else [ground_truth_history(p) for p in sample.history]
        shown = {past.step_index for past in history_screenshots(sample, screenshots)}
        earlier = [past.image if past.step_index in shown else None for past in sample.history]
        messages = family.computer_use_messages(
            sample.instruction, [*earlier, sample.image], entries, max_history_screenshots=len(earlier)
        )
        return messages, sample.image
    if isinstance(sample, AndroidControlSample):
        step = sample.step_instruction if sample.instruction_level == "low" else None
        return family.mobile_messages(
            sample.goal, sample.image, sample.previous_actions, step_instruction=step
        ), (sample.image)
    if isinstance(sample, Mind2WebSample):
        image = sample.blocks[block]
        return family.web_messages(sample.task, image, (*sample.previous_actions, *notes)), image
    return family.grounding_messages(sample.instruction, sample.image), sample.image
