"""A carried trajectory against re-prefilling every step (`guikv.carry_fidelity`): at budget 100
inside the screenshot window the two are the same computation and the comparison says so; at 10%
every step is compared, the carried path prefilling only its new turn; past the window, and when
the full cache generated one token, oracle recall is undefined with its reason instead of a crash;
with `max_tokens` both paths keep as many tokens; a budget below the window stops the trajectory;
each path carries its own method state."""

from __future__ import annotations

import pytest
from test_engine_carry import TASK, screens

from guikv import CompressionConfig
from guikv.carry_fidelity import iter_carried_fidelity
from guikv.recall import NO_DECODE_STEP

NEW_TOKENS = 6
SIZE = ((308, 196),)
"""Small screenshots (77 tokens each): prompts of a few hundred tokens keep the runs fast."""


def play(tiny, method: str, budget: float, steps: int, **options):
    """Every step's `CarriedStepFidelity` of one trajectory over `steps` screenshots."""
    model, processor = tiny
    config = CompressionConfig(method=method, budget=budget)
    options.setdefault("max_new_tokens", NEW_TOKENS)
    return list(iter_carried_fidelity(model, processor, config, TASK, screens(steps, SIZE), **options))


@pytest.mark.parametrize("method", ["full", "gui_kv"])
def test_budget_100_inside_the_window_the_comparison_agrees_fully(tiny_sdpa, method: str):
    rows = play(tiny_sdpa, method, 100, 4)
    assert [row.step for row in rows] == [0, 1, 2, 3]
    for row in rows:
        assert row.runnable and row.same_prompt and row.prompt_difference is None
        for agreement in (row.agreement, row.carried_vs_full, row.reprefilled_vs_full):
            assert agreement.tokens == 1.0 and agreement.exact_match and agreement.action_match
            assert agreement.kl is not None and agreement.kl < 1e-9
        assert row.recall_carried == row.recall_reprefilled == [1.0] * 4
        assert row.carried.generated_ids == row.reprefilled.generated_ids == row.full.generated_ids
        assert row.carried.prompt_tokens == row.reprefilled.prompt_tokens == row.full.prompt_tokens
        assert row.carried.kept_per_layer == row.reprefilled.kept_per_layer
    assert all(row.carried.prefilled_tokens < row.carried.prompt_tokens / 3 for row in rows[1:])


def test_at_10_percent_every_step_is_compared_and_the_carried_path_prefills_only_its_turn(tiny_sdpa):
    rows = play(tiny_sdpa, "gui_kv", 10, 4)
    assert [row.step for row in rows] == [0, 1, 2, 3] and all(row.runnable for row in rows)
    for row in rows:
        capacity = int(row.reprefilled.prompt_tokens * 10 / 100)
        assert row.carried.kept_per_layer == row.reprefilled.kept_per_layer == [capacity] * 4
        assert row.reprefill_budget == 10
        assert row.same_prompt and row.recall_reason is None
        for recall in (row.recall_carried, row.recall_reprefilled):
            assert len(recall) == 4 and all(0.0 <= layer < 1.0 for layer in recall)
        assert row.agreement.kl is not None and row.reprefilled_vs_full.kl > 1e-6
    assert rows[0].carried.prefilled_tokens == rows[0].carried.prompt_tokens
    for row in rows[1:]:
        assert row.carried.prefilled_tokens < row.carried.prompt_tokens / 3
        before = rows[row.step - 1].carried
        assert row.carried.carried_tokens == before.kept_per_layer[0] - 1 + before.generated_tokens
    # the two paths are told apart: at 10% they differ, at 100 (above) not at all
    assert max(row.agreement.kl for row in rows) > 1e-4


def test_past_the_window_recall_is_undefined_with_its_reason_and_the_rest_is_compared(tiny_sdpa):
    rows = play(tiny_sdpa, "full", 100, 4, screenshot_window=2)
    assert [row.same_prompt for row in rows] == [True, True, False, False]
    for row in rows[2:]:
        dropped = row.step - 1
        markers = row.carried.prompt_tokens - row.reprefilled.prompt_tokens
        assert markers > 0 and markers % dropped == 0
        assert row.recall_carried is None and row.recall_reprefilled == [1.0] * 4
        assert f"the screenshot window dropped {dropped} screenshot(s)" in row.recall_reason
        assert f"keeps their {markers} turn-marker token(s)" in row.prompt_difference
        assert row.agreement is not None and row.agreement.kl is not None
        assert row.carried.evicted_screenshots == 1


def test_the_re_prefilled_path_carries_its_own_method_state_from_step_to_step(tiny_sdpa):
    """STaR-KV's state advances once per step on each path (checked as each step is yielded: the
    state lives on)."""
    model, processor = tiny_sdpa
    config = CompressionConfig(method="star_kv", budget=10)
    steps = iter_carried_fidelity(model, processor, config, TASK, screens(3, SIZE), max_new_tokens=NEW_TOKENS)
    for row in steps:
        carried, reprefilled = row.carried.method_state, row.reprefilled.method_state
        assert carried is not reprefilled
        for state in (carried, reprefilled):
            assert {layer.profile_steps for layer in state.layers.values()} == {row.step + 1}
    assert row.step == 2


def test_one_generated_token_leaves_no_oracle_and_no_first_decode_step(tiny_sdpa):
    rows = play(tiny_sdpa, "gui_kv", 10, 2, max_new_tokens=1)
    for row in rows:
        assert row.runnable and row.full.generated_tokens == 1
        assert row.recall_carried is None and row.recall_reprefilled is None
        assert row.recall_reason == NO_DECODE_STEP
        assert row.agreement.kl is None and row.agreement.tokens in (0.0, 1.0)


def test_max_tokens_keeps_as_many_tokens_on_both_paths(tiny_sdpa):
    rows = play(tiny_sdpa, "snapkv", 10, 3, max_tokens=120)
    for row in rows:
        assert row.carried.kept_per_layer == row.reprefilled.kept_per_layer == [120] * 4
        assert row.reprefill_budget == pytest.approx(100 * 120.5 / row.reprefilled.prompt_tokens)


def test_a_budget_below_the_window_stops_the_trajectory_with_its_reason(tiny_sdpa):
    rows = play(tiny_sdpa, "snapkv", 0.5, 3)
    assert len(rows) == 1 and not rows[0].runnable
    assert "fewer than window_size" in rows[0].reason
