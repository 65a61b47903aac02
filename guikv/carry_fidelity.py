"""A carried trajectory against re-prefilling every step: what carrying the compressed cache
changes, step by step, on the same screenshots and task (`guikv compare --carry`).

At each step the carried path is `Trajectory.step` (only the new turn prefilled, on the cache cut
at earlier steps). The re-prefilled path runs `run_step_inputs` on that step's native conversation
(`Trajectory.messages`, the screenshot window applied) at the same method and capacity, with the
carried trajectory's own answers of the earlier steps as history, given as the very token ids the
model generated (`Carrying.answer_token_inputs`): re-tokenizing an answer's text can give other
tokens, and then the two paths would not see the same history. A third, full-cache run of the same
prompt (`oracle_mass=True`, untimed) gives the reference output and the attention mass oracle
recall is measured against (`guikv.recall`).

Inside the screenshot window, and at budget 100, the two paths are the same computation: their
prompts hold the same tokens at the same positions, and the comparison shows full agreement (tested).
Definitions of every figure: docs/analysis.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from guikv.agents.family import AgentFamily
from guikv.agents.prompting import TRAJECTORY_SCREENSHOTS, ImageLike
from guikv.analysis import kl_divergence, token_agreement
from guikv.config import CompressionConfig
from guikv.recall import NO_DECODE_STEP, oracle_recall
from guikv.step import StepResult, run_step_inputs
from guikv.trajectory import CarriedStepResult, Trajectory


@dataclass(frozen=True)
class Agreement:
    """One step's output against a reference output of the same step: `tokens` the share of
    positions where the generated ids are equal (`guikv.analysis.token_agreement`), `exact_match`
    whether the texts are equal, `kl` KL(reference || other) in nats at the first decoding step
    (None when either stopped after one token), `action_match` whether the first parsed actions are
    the same."""

    tokens: float
    exact_match: bool
    kl: float | None
    action_match: bool

    @classmethod
    def of(cls, reference: StepResult, other: StepResult, same_action: bool) -> Agreement:
        """`other` measured against `reference` (`same_action`: whether their actions are equal)."""
        logits = (reference.first_decode_logits, other.first_decode_logits)
        return cls(
            tokens=token_agreement(reference.generated_ids, other.generated_ids),
            exact_match=reference.text == other.text,
            kl=None if logits[0] is None or logits[1] is None else kl_divergence(*logits),
            action_match=same_action,
        )


@dataclass
class CarriedStepFidelity:
    """One step of the trajectory, both ways.

    `carried`, `reprefilled` and `full` are the three runs' results (None from the run that could
    not be made on: `reason` says why, and the trajectory stops there). `reprefill_budget` is the
    budget the re-prefilled path ran at (the trajectory's, or with `max_tokens` the share of its
    prompt that holds as many tokens). `same_prompt` says whether the re-prefilled prompt holds
    exactly the carried conversation's tokens (`prompt_difference` says how they differ when not).
    `agreement` is the carried output against the re-prefilled one, `carried_vs_full` and
    `reprefilled_vs_full` each against the full cache's. `actions` names each run's first parsed
    action. `recall_carried` and `recall_reprefilled` are the oracle recall per layer; the carried
    one is defined only on the same prompt, `recall_reason` says why one is None.
    """

    step: int
    screenshot: ImageLike
    carried: CarriedStepResult | None = None
    reprefilled: StepResult | None = None
    full: StepResult | None = None
    reason: str | None = None
    reprefill_budget: float | None = None
    same_prompt: bool | None = None
    prompt_difference: str | None = None
    agreement: Agreement | None = None
    carried_vs_full: Agreement | None = None
    reprefilled_vs_full: Agreement | None = None
    actions: dict[str, str] | None = None
    recall_carried: list[float] | None = None
    recall_reprefilled: list[float] | None = None
    recall_reason: str | None = None

    @property
    def runnable(self) -> bool:
        """Whether both paths and the full cache ran at this step."""
        return self.reason is None


def iter_carried_fidelity(
    model: Any,
    processor: Any,
    config: CompressionConfig,
    task: str,
    screenshots: Sequence[ImageLike],
    *,
    family: str | AgentFamily | None = None,
    max_tokens: int | None = None,
    screenshot_window: int = TRAJECTORY_SCREENSHOTS,
    max_new_tokens: int = 32,
    progress: Callable[[int, str], None] | None = None,
) -> Iterator[CarriedStepFidelity]:
    """Play `screenshots` (the trajectory's steps, in order) carried and re-prefilled under `config`
    (with `max_tokens`, the carried cache is cut to that many tokens per layer and the re-prefill
    keeps as many), yielding each step's `CarriedStepFidelity` as soon as it is measured.

    A step that cannot be run (a capacity below the method's window, or an answer holding an image
    placeholder token, which no re-prefill can hold as generated) is yielded with its `reason` and
    ends the trajectory. `progress(step, run)` is called before each run ("carried",
    "re-prefilled", "full cache"). A model that cannot carry its cache raises `ValueError`.
    """
    trajectory = Trajectory(
        model,
        processor,
        config,
        task,
        family=family,
        max_tokens=max_tokens,
        screenshot_window=screenshot_window,
        max_new_tokens=max_new_tokens,
        record_positions=True,
        keep_first_decode_logits=True,
    )
    carrying = trajectory.carrying
    full = CompressionConfig(**{**config.to_dict(), "method": "full", "budget": 100.0})
    tell = progress or (lambda _step, _run: None)
    answers: list[list[int]] = []
    state = None
    for step, screenshot in enumerate(screenshots):
        row = CarriedStepFidelity(step, screenshot)
        try:
            tell(step, "carried")
            row.carried = trajectory.step(screenshot)
            inputs = carrying.answer_token_inputs(processor, trajectory.messages, answers)
            answers.append(row.carried.generated_ids)
            prompt_tokens = int(inputs["input_ids"].shape[1])
            row.reprefill_budget = _reprefill_budget(config, max_tokens, prompt_tokens)
            tell(step, "re-prefilled")
            row.reprefilled = run_step_inputs(
                model,
                processor,
                inputs,
                replace(config, budget=row.reprefill_budget),
                max_new_tokens=max_new_tokens,
                record_positions=True,
                keep_first_decode_logits=True,
                method_state=state,
            )
        except ValueError as error:
            if not _cannot_run(error):
                raise
            row.reason = str(error)
            yield row
            return
        state = row.reprefilled.method_state
        tell(step, "full cache")
        row.full = run_step_inputs(
            model,
            processor,
            inputs,
            full,
            max_new_tokens=max_new_tokens,
            keep_first_decode_logits=True,
            oracle_mass=True,
        )
        _measure(row, trajectory, inputs["input_ids"][0].tolist())
        yield row


def _reprefill_budget(config: CompressionConfig, max_tokens: int | None, prompt_tokens: int) -> float:
    """The re-prefilled path's budget: the trajectory's, or with `max_tokens` the share of its
    prompt whose capacity `int(L * b / 100)` is exactly `max_tokens` (100 when that is all of it)."""
    if max_tokens is None or config.method == "full":
        return config.budget
    return min(100.0, 100.0 * (max_tokens + 0.5) / prompt_tokens)


def _cannot_run(error: ValueError) -> bool:
    """Whether `error` is a step that cannot be compared (rather than a bug to raise)."""
    text = str(error)
    return "fewer than window_size" in text or "image placeholder token" in text


def _measure(row: CarriedStepFidelity, trajectory: Trajectory, reprefilled_ids: list[int]) -> None:
    """Fill in the step's comparisons from its three runs, then drop the kept positions."""
    carried, reprefilled, full = row.carried, row.reprefilled, row.full
    assert carried is not None and reprefilled is not None and full is not None
    runs: dict[str, StepResult] = {"carried": carried, "reprefilled": reprefilled, "full": full}
    action = _action_key(trajectory.family, row.screenshot)
    carried_ids = trajectory.token_ids[: carried.layout.length]
    row.same_prompt = carried_ids == reprefilled_ids
    if not row.same_prompt:
        row.prompt_difference = _prompt_difference(trajectory, carried, carried_ids, reprefilled_ids)
    keys = {name: action(result.text) for name, result in runs.items()}
    row.actions = {name: str(key[0]) for name, key in keys.items()}
    row.agreement = Agreement.of(reprefilled, carried, keys["carried"] == keys["reprefilled"])
    row.carried_vs_full = Agreement.of(full, carried, keys["carried"] == keys["full"])
    row.reprefilled_vs_full = Agreement.of(full, reprefilled, keys["reprefilled"] == keys["full"])
    mass = full.oracle_mass
    if full.generated_tokens < 2 or mass is None:
        row.recall_reason = NO_DECODE_STEP
    else:
        row.recall_reprefilled = oracle_recall(reprefilled.kept_positions, mass)
        if row.same_prompt:
            row.recall_carried = oracle_recall(carried.kept_positions, mass)
        else:
            row.recall_reason = (
                f"the carried cache's positions are not the re-prefilled prompt's: {row.prompt_difference}"
            )
    for result in runs.values():
        result.kept_positions.clear()
        result.oracle_mass = None


def _prompt_difference(
    trajectory: Trajectory, carried: CarriedStepResult, carried_ids: list[int], reprefilled_ids: list[int]
) -> str:
    """How the carried conversation and the re-prefilled prompt differ, in a sentence."""
    evicted = trajectory.carried.evicted
    if evicted:
        markers = carried.prompt_tokens - len(reprefilled_ids)
        return (
            f"the screenshot window dropped {len(evicted)} screenshot(s): the re-prefilled prompt leaves "
            f"out their turns, while the carried cache keeps their {markers} turn-marker token(s) at their "
            "own positions, so the two prompts are different sequences"
        )
    index = next(
        (i for i, (a, b) in enumerate(zip(carried_ids, reprefilled_ids, strict=False)) if a != b),
        min(len(carried_ids), len(reprefilled_ids)),
    )
    return (
        f"the re-prefilled prompt ({len(reprefilled_ids)} tokens) differs from the carried conversation "
        f"({len(carried_ids)} tokens) from token {index} on"
    )


def _action_key(family: AgentFamily, screenshot: ImageLike) -> Callable[[str], tuple[Any, ...]]:
    """An output's first parsed action, comparable, in `screenshot`'s frame."""
    if isinstance(screenshot, Image.Image):
        size = screenshot.size
    else:
        with Image.open(screenshot) as image:
            size = image.size

    def key(text: str) -> tuple[Any, ...]:
        return family.parse(text, size)[0].comparable()

    return key
