"""`Trajectory`: a GUI agent loop whose compressed KV cache is carried from step to step.

A re-prefilled agent step pays for its whole prompt again (the instruction, up to four earlier
screenshots, their answers and the current screenshot), though step t+1's prompt shares almost
all of it with step t's. In the native multi-turn layout (`AgentFamily.trajectory_messages`:
instruction first, then a screenshot turn and an answer turn per step, the current screenshot
last) step t+1's prompt *extends* step t's, so a trajectory can keep its compressed cache and, at
each step, feed only the new turn: the close of the previous answer, the new screenshot's user
turn and the generation prompt. The vision tower encodes only the new screenshot; positions
(M-RoPE for Qwen-VL) continue from the conversation's logical end.

Every step re-scores (`guikv.carry`): the carried entries and the new tokens are scored together
with the new screenshot as the current one and each layer is cut to the step's capacity, a
percent of the conversation's length (`CompressionConfig.budget`, comparable to a re-prefill at
the same budget) or a fixed number of tokens (`max_tokens`: bounded memory for any length).
Screenshots older than the screenshot window are evicted from the cache, as the re-prefilled
layout drops them; positions never change.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from guikv.agents import detect_family, get_family
from guikv.agents.family import AgentFamily
from guikv.agents.prompting import TRAJECTORY_SCREENSHOTS, ImageLike, Message
from guikv.cache import kv_bytes, stored_kv_bytes
from guikv.carry import CarriedCache, Segment, StepScoring, rescore
from guikv.config import CompressionConfig, uniform_capacity
from guikv.flops import ModelShape, decode_flops
from guikv.hooks import cache_keyword, output_cache
from guikv.layout import TokenLayout, grids_from_thw, spatial_merge_size
from guikv.methods import build_method
from guikv.models.adapters import adapter_for
from guikv.step import ForwardClock, StepResult, eos_ids, until_eos


@dataclass
class CarriedStepResult(StepResult):
    """One step of a carried trajectory: what `run_step` reports (its `prompt_tokens` the
    conversation's length as a re-prefill would hold it, `kept_per_layer` what the cache keeps
    after this step's cut), plus what was actually fed: `prefilled_tokens` (the new turn),
    `carried_tokens` (entries per layer and KV head carried in from the previous step, after the
    screenshot window), the step's number, the screenshots the window evicted at this step and
    the kept entries per origin (segment label, averaged over layers and heads)."""

    step: int = 0
    prefilled_tokens: int = 0
    carried_tokens: int = 0
    evicted_screenshots: int = 0
    kept_by_origin: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """`StepResult.to_dict()` plus the carried figures."""
        return {
            **super().to_dict(),
            "step": self.step,
            "prefilled_tokens": self.prefilled_tokens,
            "carried_tokens": self.carried_tokens,
            "evicted_screenshots": self.evicted_screenshots,
            "kept_by_origin": self.kept_by_origin,
        }


class Trajectory:
    """One GUI agent trajectory over `model`: call `step(screenshot)` once per screenshot.

    Holds the model, processor and config, the carried cache (`carried`: the cut cache, the
    logical position of every kept entry per layer and KV head, the origin of every position),
    the method and its state (STaR-KV's advances once per step), the screenshots and the answers
    so far. `messages` is the native conversation of the latest step (with the screenshot window),
    what a re-prefill of the same step would be given. `token_ids` is every token of the
    conversation so far (fed or generated) and `turns` each step's fed inputs (its processor
    inputs and the `position_ids` it was fed at), so a step can be replayed token for token.

    `config.budget` sets each step's capacity as a percent of the conversation's length;
    `max_tokens` (if given) a fixed count per layer instead, window included. A family whose
    forward cannot take a turn on a carried cache (OpenCUA expands its image placeholders inside
    its own forward) and chunked prefill are refused with one line.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        config: CompressionConfig,
        task: str,
        *,
        family: str | AgentFamily | None = None,
        max_tokens: int | None = None,
        screenshot_window: int = TRAJECTORY_SCREENSHOTS,
        max_new_tokens: int = 256,
        record_positions: bool = False,
        keep_first_decode_logits: bool = False,
        chunked_prefill: bool = False,
        method_state: Any = None,
    ) -> None:
        adapter = adapter_for(model)
        if adapter.carrying is None:
            raise ValueError(
                f"{type(model).__name__} ({adapter.family}) cannot carry its cache from step to step: its "
                "forward expands its image placeholders itself, so a new turn cannot be fed on a cache; run "
                "each step with guikv.step.run_step"
            )
        if chunked_prefill:
            raise ValueError(
                "a carried trajectory feeds each step's new turn in one forward and scores it there: chunked "
                "prefill is not supported (drop chunked_prefill)"
            )
        if screenshot_window < 1:
            raise ValueError(f"screenshot_window must be >= 1, got {screenshot_window}")
        self.method = build_method(config, state=method_state)
        if max_tokens is not None and max_tokens < self.method.window_size + 1:
            raise ValueError(
                f"max_tokens={max_tokens} cannot hold window_size {self.method.window_size} + 1 tokens"
            )
        self.model = model
        self.processor = processor
        self.config = config
        self.task = task
        self.family = _family(model, family)
        self.max_tokens = max_tokens
        self.screenshot_window = screenshot_window
        self.max_new_tokens = max_new_tokens
        self.record_positions = record_positions
        self.keep_first_decode_logits = keep_first_decode_logits
        self.adapter = adapter
        self.carrying = adapter.carrying
        self.attentions = adapter.attention_modules(model)
        self.carried = CarriedCache()
        self.screenshots: list[ImageLike] = []
        self.answers: list[str] = []
        self.token_ids: list[int] = []
        self.turns: list[dict[str, torch.Tensor]] = []
        self.next_position = 0

    @property
    def method_state(self) -> Any:
        """The method's state after the latest step (None for stateless methods)."""
        return getattr(self.method, "state", None)

    @property
    def messages(self) -> list[Message]:
        """The latest step's native conversation as a re-prefill would be given it (screenshots
        beyond the window dropped, every answer kept)."""
        return self.family.trajectory_messages(
            self.task, self.screenshots, self.answers[: len(self.screenshots) - 1], self.screenshot_window
        )

    def step(self, screenshot: ImageLike) -> CarriedStepResult:
        """Run one agent step on `screenshot` (the new current screen): feed only its turn on the
        carried cache, re-score and cut, decode the answer greedily; returns its figures."""
        index = len(self.screenshots)
        turn = self._turn_inputs(screenshot)
        evicted = self._evict_beyond_window()
        carried = self.carried
        carried_tokens = int(carried.positions[0].shape[1]) if carried.positions else 0
        start = carried.logical_length
        length = int(turn["input_ids"].shape[1])
        prompt_tokens = carried.live_length + length
        layout = TokenLayout.from_input_ids(
            turn["input_ids"], self.adapter.image_token_ids(self.model.config)
        )
        grids = grids_from_thw(turn["image_grid_thw"], spatial_merge_size(self.model.config) or 1)
        scoring = StepScoring(
            method=self.method,
            capacity=self._capacity(prompt_tokens),
            carried=carried,
            chunk_start=start,
            chunk_length=length,
            current_grid=grids[-1] if grids else None,
            record_positions=self.record_positions,
        )
        carried.add_segments(_turn_segments(layout, grids, start, index))
        positions, next_position = self.carrying.turn_positions(self.model, turn, self.next_position)
        self.turns[-1]["position_ids"] = positions.cpu()
        clock = ForwardClock(self.model.device)
        handle = self.model.register_forward_hook(clock, with_kwargs=True)
        try:
            with torch.no_grad(), rescore(self.model, self.attentions, scoring):
                began = time.perf_counter()
                self._feed(turn, positions)
                carried.logical_length = start + length
                carried.drop_last()
                self.carrying.decode_offset(self.model, next_position - (start + length))
                out = self._decode()
        finally:
            handle.remove()
        generated = out.sequences[0, len(self.token_ids) :]
        carried.add_segments(
            [Segment(start + length, start + length + int(generated.numel()), "answer", index)]
        )
        carried.append_fed(int(generated.numel()) - 1)
        self.token_ids.extend(generated.tolist())
        self.next_position = next_position + int(generated.numel()) - 1
        tokens = until_eos(generated, eos_ids(self.model))
        text = self.processor.batch_decode(tokens[None], skip_special_tokens=True)[0]
        self.answers.append(text)
        ends = clock.ends
        return self._result(
            index=index,
            prompt_tokens=prompt_tokens,
            prompt_end=start + length,
            text=text,
            tokens=tokens,
            scoring=scoring,
            prefill_seconds=ends[1] - began if len(ends) > 1 else ends[0] - began,
            decode_step_seconds=[end - previous for previous, end in itertools.pairwise(ends[1:])],
            logits=out.logits[1][0] if self.keep_first_decode_logits and len(out.logits) > 1 else None,
            prefilled=length,
            carried_tokens=carried_tokens,
            evicted=evicted,
            grids=turn["image_grid_thw"],
        )

    def _turn_inputs(self, screenshot: ImageLike) -> Mapping[str, torch.Tensor]:
        """The new turn's inputs: the first step's whole prompt, later steps the tokens after the
        previous answer (led by that answer's last token, generated but not yet fed)."""
        earlier = list(self.screenshots)
        self.screenshots.append(screenshot)
        after = self.family.trajectory_messages(self.task, self.screenshots, self.answers)
        if not earlier:
            turn = dict(self.adapter.build_inputs(self.processor, after))
            self.token_ids = turn["input_ids"][0].tolist()
        else:
            before = self.family.trajectory_messages(self.task, earlier, self.answers[:-1])
            tail = dict(self.carrying.turn_inputs(self.processor, before, after))
            turn = _led_by(tail, self.token_ids[-1])
            self.token_ids.extend(turn["input_ids"][0, 1:].tolist())
        self.turns.append(turn)
        return {name: value.to(self.model.device) for name, value in turn.items()}

    def _evict_beyond_window(self) -> int:
        """Evict the oldest screenshots until the window holds the new one too; how many went."""
        live = self.carried.live_screenshots()
        excess = len(live) + 1 - self.screenshot_window
        for segment in live[: max(0, excess)]:
            self.carried.evict(segment)
        return max(0, excess)

    def _capacity(self, live_length: int) -> int:
        """The step's per-layer capacity: `max_tokens`, or the budget's share of the conversation."""
        if self.max_tokens is not None:
            return self.max_tokens
        return uniform_capacity(live_length, self.config.budget)

    def _feed(self, turn: Mapping[str, torch.Tensor], positions: torch.Tensor) -> None:
        """One forward of the new turn on the carried cache, at its logical positions (no 2-D mask:
        one row has no padding, and the turn's own mask would cover only the turn)."""
        accepted = _forward_parameters(self.model) - {"attention_mask"}
        inputs = {name: value for name, value in turn.items() if name in accepted}
        if "logits_to_keep" in accepted:
            inputs["logits_to_keep"] = 1
        out = self.model(
            **inputs,
            position_ids=positions,
            use_cache=True,
            **{cache_keyword(self.model): self.carried.cache},
        )
        self.carried.cache = output_cache(out)

    def _decode(self) -> Any:
        """Greedy `generate()` from the turn's last token (dropped from the cache, fed again so the
        model's own generation settings pick every token)."""
        ids = torch.tensor([self.token_ids], device=self.model.device)
        return self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=self.keep_first_decode_logits,
            **{cache_keyword(self.model): self.carried.cache},
        )

    def _result(
        self,
        *,
        index: int,
        prompt_tokens: int,
        prompt_end: int,
        text: str,
        tokens: torch.Tensor,
        scoring: StepScoring,
        prefill_seconds: float,
        decode_step_seconds: list[float],
        logits: torch.Tensor | None,
        prefilled: int,
        carried_tokens: int,
        evicted: int,
        grids: torch.Tensor,
    ) -> CarriedStepResult:
        """The step's figures, measured as `run_step` measures a re-prefilled step."""
        carried = self.carried
        cache = carried.cache
        first = cache.layers[0]
        kv_heads, head_dim, dtype = first.keys.shape[1], first.keys.shape[3], first.keys.dtype
        live = prompt_tokens
        shape = ModelShape.from_config(self.model.config)
        steps = max(0, int(tokens.numel()) - 1)
        kept = list(scoring.kept_per_layer)
        spans = tuple((s.start, s.end) for s in carried.live_screenshots())
        merge = getattr(getattr(self.processor, "image_processor", None), "merge_size", 1)
        return CarriedStepResult(
            text=text,
            prompt_tokens=live,
            generated_tokens=int(tokens.numel()),
            kept_per_layer=kept,
            kv_bytes_full=len(kept) * kv_bytes(live, kv_heads, head_dim, dtype),
            kv_bytes_kept=sum(kv_bytes(count, kv_heads, head_dim, dtype) for count in kept),
            decode_flops_full=decode_flops(shape, [live] * shape.num_layers, steps),
            decode_flops_kept=decode_flops(shape, kept, steps),
            prefill_seconds=prefill_seconds,
            decode_seconds=sum(decode_step_seconds),
            decode_step_seconds=decode_step_seconds,
            scoring_seconds=scoring.seconds,
            layout=TokenLayout(prompt_end, spans),
            image_grids=[(t, h // merge, w // merge) for t, h, w in grids.tolist()],
            kept_positions=list(scoring.kept_positions),
            generated_ids=tokens.tolist(),
            first_decode_logits=logits.float().cpu() if logits is not None else None,
            method_state=self.method_state,
            kv_bytes_stored=sum(stored_kv_bytes(layer) for layer in cache.layers),
            step=index,
            prefilled_tokens=prefilled,
            carried_tokens=carried_tokens,
            evicted_screenshots=evicted,
            kept_by_origin=carried.kept_by_origin(),
        )


def _family(model: nn.Module, family: str | AgentFamily | None) -> AgentFamily:
    """The agent family named or given, else the one detected from the model's config."""
    if isinstance(family, AgentFamily):
        return family
    return get_family(family or detect_family(model.config))


def _forward_parameters(model: nn.Module) -> set[str]:
    """The keyword arguments `model.forward` takes."""
    return set(inspect.signature(model.forward).parameters)


def _led_by(tail: dict[str, torch.Tensor], token: int) -> dict[str, torch.Tensor]:
    """A turn's inputs led by `token` (the previous answer's last token, generated but not fed):
    when the turn already starts with it (the answer ended with the end-of-turn token the turn
    closes with), as they are; otherwise with it put in front, as text."""
    ids = tail["input_ids"]
    if int(ids[0, 0]) == token:
        return tail
    led = dict(tail)
    led["input_ids"] = torch.cat([ids.new_tensor([[token]]), ids], dim=1)
    for name in ("attention_mask", "mm_token_type_ids"):
        if name in tail:
            value = 1 if name == "attention_mask" else 0
            led[name] = torch.cat([tail[name].new_full((1, 1), value), tail[name]], dim=1)
    return led


def _turn_segments(layout: TokenLayout, grids: tuple, start: int, step: int) -> list[Segment]:
    """The origins of a turn's positions: its screenshot(s) and the text around them (a later
    turn's first token is the previous answer's last, already recorded)."""
    first = 1 if step > 0 else 0
    segments: list[Segment] = []
    cursor = first
    for (begin, end), grid in zip(layout.image_spans, grids or [None] * layout.num_images, strict=True):
        if begin > cursor:
            segments.append(Segment(start + cursor, start + begin, "text", step))
        segments.append(Segment(start + begin, start + end, "screenshot", step, grid))
        cursor = end
    if layout.length > cursor:
        segments.append(Segment(start + cursor, start + layout.length, "text", step))
    return segments
