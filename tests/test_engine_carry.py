"""A trajectory carrying its compressed cache from step to step (`guikv.trajectory`): at budget 100
inside the screenshot window it is token for token a re-prefill of the same conversation at every
step (every method, sdpa and eager), each turn sits at the re-prefill's positions, and at 10% the
cache keeps the step's capacity, evicts screenshots past the window, knows every entry's origin
and advances STaR-KV's state once per step."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from PIL import Image

from guikv import METHODS, CompressionConfig
from guikv.config import uniform_capacity
from guikv.hooks import output_cache
from guikv.trajectory import Trajectory

SHOTS = sorted(
    (Path(__file__).resolve().parents[1].parent / "shared/fixtures/agentnetbench/test_data/images").glob(
        "*.png"
    )
)
TASK = "Open the display settings"
NEW_TOKENS = 6


def screens(count: int, sizes: tuple[tuple[int, int], ...] = ((448, 252),)) -> list[Image.Image]:
    """`count` real desktop screenshots, downscaled (cycling through `sizes`)."""
    return [
        Image.open(SHOTS[i % len(SHOTS)]).convert("RGB").resize(sizes[i % len(sizes)]) for i in range(count)
    ]


def replay_inputs(model, trajectory: Trajectory, generated: int) -> dict[str, torch.Tensor]:
    """The latest step's whole conversation as one prompt: every token fed so far (without the
    step's `generated` answer tokens) and every screenshot."""
    ids = torch.tensor([trajectory.token_ids[: len(trajectory.token_ids) - generated]])
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.cat([turn["pixel_values"] for turn in trajectory.turns]),
        "image_grid_thw": torch.cat([turn["image_grid_thw"] for turn in trajectory.turns]),
    }
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        inputs["mm_token_type_ids"] = (ids == model.config.image_token_id).long()
    return inputs


def replay(model, trajectory: Trajectory, generated: int):
    """Re-prefill the latest step's whole conversation in one `generate()` without a cache: the
    reference a carried step must equal."""
    return model.generate(
        **replay_inputs(model, trajectory, generated),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
    )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method", METHODS)
def test_budget_100_carried_equals_re_prefilling_every_step(request, attn: str, method: str):
    model, processor = request.getfixturevalue(f"tiny_{attn}")
    trajectory = Trajectory(
        model,
        processor,
        CompressionConfig(method=method, budget=100),
        TASK,
        max_new_tokens=NEW_TOKENS,
        keep_first_decode_logits=True,
    )
    for step, screen in enumerate(screens(5)):
        result = trajectory.step(screen)
        reference = replay(model, trajectory, len(result.generated_ids))
        expected = reference.sequences[0, -len(reference.logits) :]
        assert result.generated_ids == expected[: len(result.generated_ids)].tolist(), f"step {step}"
        assert torch.allclose(result.first_decode_logits, reference.logits[1][0].float(), atol=1e-4)
        if step:
            assert result.prefilled_tokens < result.prompt_tokens / 3
    assert result.kept_per_layer == [result.prompt_tokens] * len(result.kept_per_layer)


def test_each_turn_sits_at_the_re_prefill_s_positions(tiny_sdpa):
    model, processor = tiny_sdpa
    trajectory = Trajectory(
        model, processor, CompressionConfig(method="full"), TASK, max_new_tokens=NEW_TOKENS
    )
    for screen in screens(3, sizes=((448, 252), (252, 448), (336, 336))):
        result = trajectory.step(screen)
        carried_delta = model.model.rope_deltas.clone()
        inputs = replay_inputs(model, trajectory, len(result.generated_ids))
        accepted = inspect.signature(model.model.get_rope_index).parameters
        positions, delta = model.model.get_rope_index(
            inputs["input_ids"],
            **{name: value for name, value in inputs.items() if name in accepted and name != "input_ids"},
        )
        fed = torch.cat([turn["position_ids"] for turn in trajectory.turns], dim=-1)
        assert torch.equal(fed, dedupe_led_tokens(positions, trajectory))
        assert torch.equal(carried_delta.reshape(-1), delta.reshape(-1))


def dedupe_led_tokens(positions: torch.Tensor, trajectory: Trajectory) -> torch.Tensor:
    """The re-prefill's positions at the tokens the turns fed (a later turn feeds the previous
    answer's last token first, generated before it was fed)."""
    columns, cursor = [], 0
    for index, turn in enumerate(trajectory.turns):
        length = int(turn["input_ids"].shape[1])
        start = cursor if index == 0 else cursor - 1
        columns.append(positions[..., start : start + length])
        cursor = start + length + answer_length(trajectory, index)
    return torch.cat(columns, dim=-1)


def answer_length(trajectory: Trajectory, index: int) -> int:
    """Tokens generated at step `index`."""
    answers = [s for s in trajectory.carried.segments if s.kind == "answer" and s.step == index]
    return answers[0].end - answers[0].start if answers else 0


UNIFORM = [method for method in METHODS if method not in ("full", "pyramidkv", "vlcache")]


@pytest.mark.parametrize("method", METHODS)
def test_at_10_percent_the_cache_keeps_the_step_s_capacity_and_knows_each_entry_s_origin(tiny_sdpa, method):
    model, processor = tiny_sdpa
    config = CompressionConfig(method=method, budget=10)
    trajectory = Trajectory(model, processor, config, TASK, max_new_tokens=NEW_TOKENS, screenshot_window=2)
    for step, screen in enumerate(screens(4, sizes=((448, 252), (252, 448)))):
        result = trajectory.step(screen)
        capacity = uniform_capacity(result.prompt_tokens, 10)
        layers = len(result.kept_per_layer)
        if method == "full":
            assert result.kept_per_layer == [result.prompt_tokens] * layers
        elif method in UNIFORM:
            assert result.kept_per_layer == [capacity] * layers
        elif method == "vlcache":
            assert sum(result.kept_per_layer) <= capacity * layers
        else:
            assert max(result.kept_per_layer) <= 2 * (capacity - 8) + 8
        assert result.evicted_screenshots == (1 if step >= 2 else 0)
        fed = result.generated_tokens - 1
        for layer, held in zip(trajectory.carried.cache.layers, trajectory.carried.positions, strict=True):
            assert held.shape[1] == layer.keys.shape[2]
            assert bool((held[:, 1:] > held[:, :-1]).all())
        assert trajectory.carried.positions[0].shape[1] == result.kept_per_layer[0] - 1 + fed + 1
    live = trajectory.carried.live_screenshots()
    assert [segment.step for segment in live] == [2, 3]
    for evicted in trajectory.carried.evicted:
        for held in trajectory.carried.positions:
            assert not bool(((held >= evicted.start) & (held < evicted.end)).any())
    labels = set(
        trajectory.carried.origin(torch.cat([held.reshape(-1) for held in trajectory.carried.positions]))
    )
    assert labels <= {
        "text 0",
        "answer 0",
        "text 1",
        "answer 1",
        "text 2",
        "answer 2",
        "text 3",
        "answer 3",
        "screenshot 2",
        "screenshot 3",
    }
    assert_layer_0_holds_the_claimed_positions(model, trajectory)


def assert_layer_0_holds_the_claimed_positions(model, trajectory: Trajectory) -> None:
    """Layer 0's keys depend only on each token and its position: the carried cache's entry in
    every slot must equal a whole-conversation prefill's key at the logical position the
    trajectory says the slot holds."""
    with torch.no_grad():
        whole = model(**replay_inputs(model, trajectory, 1), use_cache=True)
    cache = output_cache(whole)
    expected = cache.layers[0].keys[0]
    held = trajectory.carried.positions[0]
    stored = trajectory.carried.cache.layers[0].keys[0]
    gathered = expected.gather(1, held[..., None].expand(-1, -1, expected.shape[-1]))
    assert torch.allclose(stored, gathered, atol=1e-5)


def test_star_kv_state_advances_once_per_step(tiny_sdpa):
    model, processor = tiny_sdpa
    config = CompressionConfig(method="star_kv", budget=10)
    trajectory = Trajectory(model, processor, config, TASK, max_new_tokens=NEW_TOKENS)
    for step, screen in enumerate(screens(3)):
        trajectory.step(screen)
        state = trajectory.method_state
        assert {layer.profile_steps for layer in state.layers.values()} == {step + 1}
        assert len(state.layers) == model.config.text_config.num_hidden_layers


def test_max_tokens_holds_the_cache_flat_whatever_the_length(tiny_sdpa):
    model, processor = tiny_sdpa
    config = CompressionConfig(method="gui_kv", budget=10)
    trajectory = Trajectory(model, processor, config, TASK, max_new_tokens=NEW_TOKENS, max_tokens=160)
    stored = []
    for screen in screens(6):
        result = trajectory.step(screen)
        assert result.kept_per_layer == [160] * len(result.kept_per_layer)
        stored.append(result.kv_bytes_stored)
    assert len(set(stored)) == 1


def test_a_family_that_cannot_carry_and_chunked_prefill_are_refused(tiny_sdpa):
    from guikv.models.opencua_standin import build_opencua_standin

    model, processor = build_opencua_standin()
    with pytest.raises(ValueError, match="cannot carry its cache from step to step"):
        Trajectory(model, processor, CompressionConfig(), TASK)
    model, processor = tiny_sdpa
    with pytest.raises(ValueError, match="chunked prefill is not supported"):
        Trajectory(model, processor, CompressionConfig(), TASK, chunked_prefill=True)


def test_each_step_scores_its_new_screenshot_as_the_current_one(tiny_sdpa):
    """With saliency dominating (alpha 1000), GUI-KV keeps the current screenshot: at every step
    the new screenshot, not the previous one, fills the cache."""
    model, processor = tiny_sdpa
    config = CompressionConfig(method="gui_kv", budget=10, alpha=1000.0)
    trajectory = Trajectory(model, processor, config, TASK, max_new_tokens=NEW_TOKENS)
    for step, screen in enumerate(screens(3)):
        kept = trajectory.step(screen).kept_by_origin
        newest = kept.get(f"screenshot {step}", 0.0)
        assert newest > 0.8 * sum(value for label, value in kept.items() if label.startswith("screenshot"))


def test_a_turn_that_does_not_extend_the_previous_prompt_is_refused(tiny_sdpa):
    from guikv.agents import get_family
    from guikv.models.inputs import qwen_turn_inputs

    _, processor = tiny_sdpa
    family = get_family("ui-tars")
    first, second = screens(2)
    before = family.trajectory_messages(TASK, [first], [])
    assert qwen_turn_inputs(processor, before, family.trajectory_messages(TASK, [first, second], ["x"]))
    with pytest.raises(ValueError, match="does not extend the previous prompt"):
        qwen_turn_inputs(
            processor, before, family.trajectory_messages("another task", [first, second], ["x"])
        )


@pytest.mark.parametrize("method", ["snapkv", "gui_kv", "star_kv", "vlcache"])
def test_the_first_answer_token_is_predicted_from_the_uncut_cache(tiny_sdpa, method: str):
    """As at a re-prefill, the step's cut applies after its first answer token: at step 0 (nothing
    cut before) that token is the full cache's, at 10% too."""
    model, processor = tiny_sdpa
    config = CompressionConfig(method=method, budget=10)
    for screen in screens(2):
        trajectory = Trajectory(model, processor, config, TASK, max_new_tokens=NEW_TOKENS)
        result = trajectory.step(screen)
        reference = replay(model, trajectory, len(result.generated_ids))
        assert result.generated_ids[0] == int(reference.sequences[0, -len(reference.logits)])
