"""The agent prompt each benchmark sample is asked with: one place for `eval` and `analyze-attention`.

AgentNetBench steps carry their history: the caller passes the earlier steps' texts (the model's
own outputs during an eval run); without them each earlier step's ground-truth monologue is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from benchmarks.agentnetbench import AgentNetStep, PastStep
from benchmarks.androidcontrol import AndroidControlSample
from benchmarks.mind2web import Mind2WebSample
from guikv.agents import AgentFamily, Message, Monologue
from guikv.agents.prompting import HistoryEntry

DEFAULT_SCREENSHOTS = 5
"""The paper's 5-screenshot setting: 4 earlier screenshots and the current one."""


def ground_truth_history(past: PastStep) -> Monologue:
    """An earlier AgentNetBench step told by its ground-truth monologue (when no model output exists)."""
    monologue = past.monologue
    return Monologue(
        monologue.observation, monologue.thought, monologue.low_level_instruction or past.action_code
    )


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

    `history` (AgentNetBench) holds one entry per earlier step, `screenshots` caps the screenshots
    per prompt (current included); `block` and `notes` are Mind2Web's scroll position and the
    "Scroll down." actions taken to get there.
    """
    if isinstance(sample, AgentNetStep):
        entries = list(history) if history is not None else [ground_truth_history(p) for p in sample.history]
        earlier = [past.image if past.image_exists else None for past in sample.history]
        messages = family.computer_use_messages(
            sample.instruction, [*earlier, sample.image], entries, max_history_screenshots=screenshots - 1
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
