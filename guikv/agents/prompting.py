"""Chat-message building blocks shared by every agent family.

A family only decides the *text* of its prompts; how screenshots, history turns and the final
instruction are laid out in a Qwen-style conversation is the same for all of them and lives here:
the AgentNetBench history layout (each earlier screenshot as its own user turn, directly before that
step's assistant turn) and helpers to pull the images back out in order for a processor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from guikv.errors import UserInputError

ImageLike = str | os.PathLike[str] | Image.Image
"""A screenshot as a file path or an opened PIL image (what `qwen_vl_utils` accepts)."""

Message = dict[str, Any]
"""One chat turn: `{"role": ..., "content": str | list of {"type": "image"|"text", ...}}`."""

HISTORY_TEXT_WINDOW = 10
"""Earlier steps within this many steps of the current one keep their assistant turn (§4.1)."""

DEFAULT_HISTORY_SCREENSHOTS = 4
"""Earlier screenshots shown by default: the paper's "5-screenshot setting" is 4 plus the current."""


@dataclass(frozen=True)
class Monologue:
    """A step's ground-truth inner monologue, the history text for a step the model never answered.

    AgentNetBench falls back to it when a step was skipped (its screenshot is missing), so later
    steps still see a coherent history. Rendered as Observation / Thought / Action sections.
    """

    observation: str
    thought: str
    action: str

    def render(self) -> str:
        """The history text, in the `## Observation / ## Thought / ## Action` layout."""
        return (
            f"## Observation:\n{self.observation}\n\n"
            f"## Thought:\n{self.thought}\n\n"
            f"## Action:\n{self.action}\n"
        )


HistoryEntry = str | Monologue
"""One earlier step's history: the model's own raw output, or a `Monologue` fallback."""


def image_entry(image: ImageLike) -> dict[str, Any]:
    """The content entry for one screenshot; paths become plain strings for `qwen_vl_utils`."""
    return {"type": "image", "image": image if isinstance(image, Image.Image) else os.fspath(image)}


def system_turn(text: str) -> Message:
    """A system message with plain-string content, as the original evaluation scripts send it."""
    return {"role": "system", "content": text}


def screenshot_turn(image: ImageLike, text: str | None = None) -> Message:
    """A user turn with one screenshot and, optionally, text after it (image first, then text)."""
    content: list[dict[str, Any]] = [image_entry(image)]
    if text is not None:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def history_text(step_number: int, entry: HistoryEntry) -> str:
    """The assistant turn for earlier step `step_number` (1-based).

    A model output reads `"# Step k:\\nStep k:\\n<output>"` (the original stores `"Step k:\\n" +
    output` and prefixes `"# Step k:\\n"` when replaying it); a monologue fallback reads
    `"# Step k:\\n## Observation: ..."`.
    """
    header = f"# Step {step_number}:\n"
    if isinstance(entry, Monologue):
        return header + entry.render()
    return f"{header}Step {step_number}:\n{entry}"


def check_steps(screenshots: Sequence[Any], history: Sequence[Any], name: str) -> None:
    """Refuse a prompt without a current screenshot, or whose `name` list does not hold one entry
    per earlier step."""
    if not screenshots:
        raise UserInputError("a computer-use prompt needs at least the current screenshot")
    if len(history) != len(screenshots) - 1:
        raise UserInputError(
            f"{name} must have one entry per earlier step: got {len(history)} for {len(screenshots)} "
            f"screenshots (expected {len(screenshots) - 1})"
        )


def computer_use_conversation(
    prompt: str,
    screenshots: Sequence[ImageLike | None],
    history_outputs: Sequence[HistoryEntry],
    max_history_screenshots: int = DEFAULT_HISTORY_SCREENSHOTS,
    history_window: int = HISTORY_TEXT_WINDOW,
) -> list[Message]:
    """The multi-screenshot AgentNetBench conversation for the current step (spec §4.1).

    `screenshots` holds one screenshot per step so far, the current one last; `history_outputs`
    one entry per earlier step (so exactly one fewer). For each earlier step k, in order: its
    screenshot as a user turn if it is among the `max_history_screenshots` most recent (and not
    None, i.e. missing), then its assistant turn if it lies within `history_window` steps of the
    current one. Older steps are dropped entirely. The last turn is `[current screenshot, prompt]`.
    No system message: the chat template's default applies, as in the original.

    Every earlier screenshot sits directly before its own step's text, for every family (this
    fixes bug B4, where OpenCUA got stale screenshots for the wrong steps).
    """
    check_steps(screenshots, history_outputs, "history_outputs")
    if max_history_screenshots < 0 or history_window < 0:
        raise UserInputError(
            "max_history_screenshots and history_window must be >= 0, got "
            f"{max_history_screenshots} and {history_window}"
        )
    current = screenshots[-1]
    if current is None:
        raise UserInputError("the current screenshot is missing (None)")
    step = len(history_outputs)
    first_with_image = step - max_history_screenshots
    first_with_text = step - history_window
    messages: list[Message] = []
    for k, (image, entry) in enumerate(zip(screenshots[:-1], history_outputs, strict=True)):
        if k >= first_with_image and image is not None:
            messages.append(screenshot_turn(image))
        if k >= first_with_text:
            messages.append({"role": "assistant", "content": history_text(k + 1, entry)})
    messages.append(screenshot_turn(current, prompt))
    return messages


TRAJECTORY_SCREENSHOTS = 5
"""Screenshots a native trajectory prompt shows, the current one included (UI-TARS-desktop's
`MAX_IMAGE_LENGTH`)."""


def trajectory_conversation(
    prompt: str,
    screenshots: Sequence[ImageLike],
    answers: Sequence[str],
    max_screenshots: int | None = None,
) -> list[Message]:
    """The native multi-turn layout of an agent loop, as UI-TARS-desktop builds it
    (`packages/ui-tars/sdk`: the system prompt and the instruction in the first user turn, then
    each step's screenshot as a user turn of its own and the model's answer as an assistant turn,
    the current screenshot last).

    Step t+1's conversation extends step t's: its prompt is step t's, the answer, and the new
    screenshot turn, so a cache can be carried from step to step (`guikv.trajectory`). With
    `max_screenshots`, only the most recent screenshots are shown (older screenshot turns are
    dropped, their answers kept), as the desktop agent does; `answers` holds one entry per
    earlier step.
    """
    check_steps(screenshots, answers, "answers")
    if max_screenshots is not None and max_screenshots < 1:
        raise UserInputError(f"max_screenshots must be >= 1, got {max_screenshots}")
    first_shown = 0 if max_screenshots is None else len(screenshots) - max_screenshots
    messages: list[Message] = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    for step, screenshot in enumerate(screenshots):
        if step >= first_shown:
            messages.append(screenshot_turn(screenshot))
        if step < len(answers):
            messages.append({"role": "assistant", "content": answers[step]})
    return messages


def previous_actions_text(previous_actions: Sequence[str]) -> str:
    """The `## Previous Actions` block body: one action per line, empty when there are none.

    Always defined, unlike the original Mind2Web loop that reused the previous sample's text (B7).
    """
    return "\n".join(previous_actions)


def collect_images(messages: Sequence[Message]) -> list[ImageLike]:
    """Every image in the conversation, in prompt order (what OpenCUA's image processor takes)."""
    images: list[ImageLike] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            images.extend(item["image"] for item in content if item.get("type") == "image")
    return images


def messages_json(messages: Sequence[Message]) -> list[Message]:
    """The conversation as plain JSON, for a trace that shows what the model saw: every text as
    written, every screenshot as its file path (an in-memory PIL image as `"<image WxH>"`, since it
    has no file). The chat template (its default system turn, the vision tokens) is the model's and
    is left to its processor."""
    return [{**message, "content": _content_json(message.get("content"))} for message in messages]


def _content_json(content: Any) -> Any:
    """A message's content with its image entries made JSON-ready (text content is kept as is)."""
    if not isinstance(content, list):
        return content
    return [
        {**item, "image": _image_json(item["image"])} if item.get("type") == "image" else dict(item)
        for item in content
    ]


def _image_json(image: ImageLike) -> str:
    """A screenshot reference: its path, or a description of an in-memory image."""
    if isinstance(image, Image.Image):
        return f"<image {image.width}x{image.height}>"
    return os.fspath(image)
