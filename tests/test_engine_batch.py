"""Batched compression on the tiny Qwen2.5-VL: every row of a left-padded batch keeps exactly
what it keeps alone and generates the same tokens, for every method, with sdpa and eager."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from kept_checks import ROUNDING_SENSITIVE, assert_kept_alike
from PIL import Image
from transformers.cache_utils import DynamicLayer

from guikv import METHODS, CompressionConfig, compress, select_tokens
from guikv.batch import left_padded
from guikv.cache import CutLayer, fit_mask, mask_fitting, stack_rows
from guikv.models.inputs import qwen_batch_inputs, qwen_inputs
from guikv.step import run_step

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
SCREENSHOTS = sorted((FIXTURES / "agentnetbench" / "test_data" / "images").glob("*.png"))
NEW_TOKENS = 6
BUDGET = 20


def conversation(screens: int, task: str) -> list[dict]:
    """One user turn: `screens` real screenshots (downscaled), then the task."""
    images = [
        Image.open(SCREENSHOTS[(i + screens) % len(SCREENSHOTS)]).convert("RGB").resize((448, 252))
        for i in range(screens)
    ]
    return [
        {
            "role": "user",
            "content": [*({"type": "image", "image": im} for im in images), {"type": "text", "text": task}],
        }
    ]


ROWS = [
    conversation(3, "Open the settings menu and turn on dark mode"),
    conversation(1, "Click OK"),
    conversation(5, "Type hello into the search box at the top of the window, then press enter"),
]


def generate(model, inputs) -> torch.Tensor:
    """Greedy new tokens [B, NEW_TOKENS]."""
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return out[:, inputs["input_ids"].shape[1] :]


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def loaded(request):
    """(attention implementation, the left-padded batch of `ROWS`, each row's own inputs); both tiny
    models share one processor, so the inputs fit either."""
    _, processor = request.getfixturevalue(f"tiny_{request.param}")
    batch = qwen_batch_inputs(processor, ROWS)
    solos = [qwen_inputs(processor, rows) for rows in ROWS]
    return request.param, batch, solos


def test_the_batch_is_left_padded_with_rows_of_different_lengths(loaded):
    _, batch, solos = loaded
    lengths = [solo["input_ids"].shape[1] for solo in solos]
    assert len(set(lengths)) == 3
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert batch["attention_mask"][:, -1].all()


@pytest.mark.parametrize("method", METHODS)
def test_each_row_keeps_and_generates_what_it_does_alone(loaded, tiny_for, method: str):
    """A row of a left-padded batch keeps and generates what it does alone; GUI-KV (on the
    head_dim-64 model) keeps at least `MIN_SHARED` of it, its tokens then free to differ: the padded
    attention changes the keys by rounding, which its temporal step amplifies (`kept_checks`)."""
    attention, batch, solos = loaded
    model, _ = tiny_for(method, attention)
    config = CompressionConfig(method=method, budget=BUDGET)
    with compress(model, config, record_positions=True) as report:
        tokens = generate(model, batch)
    rows = report.rows
    assert len(rows) == len(ROWS)
    for row, solo in enumerate(solos):
        with compress(model, config, record_positions=True) as alone:
            expected = generate(model, solo)
        assert method in ROUNDING_SENSITIVE or torch.equal(tokens[row], expected[0]), (method, row)
        assert rows[row].prompt_tokens == alone.prompt_tokens
        assert rows[row].kept_per_layer == alone.kept_per_layer
        assert rows[row].kv_bytes_kept == alone.kv_bytes_kept
        assert_kept_alike(method, rows[row].kept_positions, alone.kept_positions)
    assert report.kept_per_layer == [
        sum(layer) for layer in zip(*(r.kept_per_layer for r in rows), strict=True)
    ]
    assert report.kv_bytes_stored >= report.kv_bytes_kept


@pytest.mark.parametrize("method", METHODS)
def test_budget_100_equals_the_uncompressed_batch(loaded, tiny_for, method: str):
    attention, batch, solos = loaded
    model, _ = tiny_for(method, attention)
    reference = generate(model, batch)
    with compress(model, CompressionConfig(method=method, budget=100)) as report:
        tokens = generate(model, batch)
    assert torch.equal(tokens, reference)
    assert [row.prompt_tokens for row in report.rows] == [solo["input_ids"].shape[1] for solo in solos]


@pytest.mark.parametrize("method", METHODS)
def test_select_tokens_per_row_equals_each_row_alone(method: str):
    generator = torch.Generator().manual_seed(3)
    heads, kv_heads, dim, hidden, window = 4, 2, 16, 32, 8
    lengths, padded = [70, 52], 70
    spans = [[(5, 21), (30, 46)], [(4, 20), (24, 40)]]
    grids = [[(4, 4), (4, 4)], [(2, 8), (4, 4)]]
    capacity = [21, 15]
    keys = torch.randn(2, kv_heads, padded, dim, generator=generator)
    queries = torch.randn(2, heads, 30, dim, generator=generator)
    states = torch.randn(2, padded, hidden, generator=generator)
    kept = select_tokens(
        method,
        queries=queries,
        keys=keys,
        hidden_states=states,
        image_spans=spans,
        image_grids=grids,
        capacity=capacity,
        lengths=lengths,
        window_size=window,
    )
    for row, length in enumerate(lengths):
        pad = padded - length
        alone = select_tokens(
            method,
            queries=queries[row : row + 1, :, -min(30, length) :],
            keys=keys[row : row + 1, :, pad:],
            hidden_states=states[row : row + 1, pad:],
            image_spans=spans[row],
            image_grids=grids[row],
            capacity=capacity[row],
            window_size=window,
        )
        assert torch.equal(kept[row], alone[0]), (method, row)
        assert kept[row].max() < length


def test_select_tokens_rejects_a_row_count_that_does_not_match():
    keys = torch.randn(2, 2, 40, 16)
    with pytest.raises(ValueError, match="capacity lists 3 rows"):
        select_tokens("random", keys=keys, capacity=[5, 5, 5])


def cut_two_rows() -> CutLayer:
    """A cut layer of two rows keeping 3 and 1 prompt tokens, then one appended token (appended as
    under compress(), where its empty slots are masked)."""
    layer = CutLayer(torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4), logical_length=9, slot_padding=[0, 2])
    with mask_fitting():
        layer.update(torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4))
    return layer


def test_fit_mask_hides_empty_slots_in_every_mask_form():
    layer = cut_two_rows()
    seen = torch.tensor([[True, True, True, True, True], [False, False, True, True, True]])
    logical = torch.ones(2, 1, 1, 11, dtype=torch.bool)
    assert torch.equal(fit_mask(logical, layer, 1, "sdpa")[:, 0, 0], seen)
    additive = torch.zeros(2, 1, 1, 11)
    assert torch.equal(fit_mask(additive, layer, 1, "eager")[:, 0, 0] == 0, seen)
    assert torch.equal(
        fit_mask(torch.ones(2, 11, dtype=torch.long), layer, 1, "flash_attention_2").bool(), seen
    )
    for implementation in ("sdpa", "eager", "flash_attention_2"):
        built = fit_mask(None, layer, 1, implementation)
        visible = (
            built.bool()
            if built.dim() == 2
            else (built[:, 0, 0] == 0 if built.is_floating_point() else built[:, 0, 0])
        )
        assert torch.equal(visible, seen), implementation


def test_fit_mask_keeps_the_causal_tail_of_a_continuation():
    layer = cut_two_rows()
    causal = torch.ones(2, 1, 3, 13, dtype=torch.bool).tril(diagonal=10)
    fitted = fit_mask(causal, layer, 3, "sdpa")
    assert fitted.shape == (2, 1, 3, 7)
    assert torch.equal(fitted[..., 3:], causal[..., 9:])
    assert not fitted[1, 0, :, :2].any() and fitted[1, 0, :, 2].all()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("method", METHODS)
def test_run_step_on_a_list_of_conversations_gives_each_its_solo_result(tiny_for, attention, method):
    model, processor = tiny_for(method, attention)
    config = CompressionConfig(method=method, budget=BUDGET)
    options = {"max_new_tokens": NEW_TOKENS, "record_positions": True, "keep_first_decode_logits": True}
    batch = run_step(model, processor, ROWS, config, **options)
    assert [result.batch_size for result in batch] == [3, 3, 3]
    for conversation_messages, result in zip(ROWS, batch, strict=True):
        alone = run_step(model, processor, conversation_messages, config, **options)
        assert result.generated_ids == alone.generated_ids
        assert result.text == alone.text
        assert result.prompt_tokens == alone.prompt_tokens
        assert result.kept_per_layer == alone.kept_per_layer
        assert result.kv_bytes_kept == alone.kv_bytes_kept
        assert result.decode_flops_kept == alone.decode_flops_kept
        assert result.layout == alone.layout
        assert result.image_grids == alone.image_grids
        assert all(
            torch.equal(a, b) for a, b in zip(result.kept_positions, alone.kept_positions, strict=True)
        )
        torch.testing.assert_close(result.first_decode_logits, alone.first_decode_logits, atol=1e-4, rtol=0)
    assert batch[0].kv_bytes_stored >= sum(result.kv_bytes_kept for result in batch)
    assert len(batch[0].decode_step_seconds) == NEW_TOKENS - 1


def test_run_step_prefills_a_batch_one_row_at_a_time_and_decodes_it_together(tiny_sdpa):
    model, processor = tiny_sdpa
    shapes: list[tuple[int, int]] = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        run_step(model, processor, ROWS, CompressionConfig(method="snapkv", budget=BUDGET), max_new_tokens=3)
    finally:
        handle.remove()
    prompts = [qwen_inputs(processor, rows)["input_ids"].shape for rows in ROWS]
    assert shapes == [tuple(shape) for shape in prompts] + [(3, 1), (3, 1)]


def test_run_step_batch_of_rows_that_all_end_at_once_decodes_nothing_more(tiny_sdpa):
    model, processor = tiny_sdpa
    config = CompressionConfig(method="gui_kv", budget=BUDGET)
    first = [run_step(model, processor, rows, config, max_new_tokens=1).generated_ids[0] for rows in ROWS[:2]]
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = first
    try:
        batch = run_step(model, processor, ROWS[:2], config, max_new_tokens=NEW_TOKENS)
    finally:
        model.generation_config.eos_token_id = eos
    assert [result.generated_ids for result in batch] == [[token] for token in first]
    assert batch[0].decode_step_seconds == []


def test_a_batch_of_star_kv_rows_carries_one_state_per_row(tiny_sdpa):
    model, processor = tiny_sdpa
    config = CompressionConfig(method="star_kv", budget=BUDGET)
    first = run_step(model, processor, ROWS[:2], config, max_new_tokens=2)
    again = run_step(
        model, processor, ROWS[:2], config, max_new_tokens=2, method_state=[r.method_state for r in first]
    )
    for row in range(2):
        alone = run_step(model, processor, ROWS[row], config, max_new_tokens=2)
        alone_again = run_step(
            model, processor, ROWS[row], config, max_new_tokens=2, method_state=alone.method_state
        )
        assert first[row].method_state is not first[1 - row].method_state
        assert again[row].kept_per_layer == alone_again.kept_per_layer
        assert again[row].generated_ids == alone_again.generated_ids


def test_a_batch_that_fails_after_its_prefills_leaves_the_given_states_as_they_were(tiny_sdpa):
    """Out of memory in the batched decode, after each row's prefill scored with its state: the
    states passed in are unchanged, so the retry of each row gives the kept positions, tokens and
    state of a run that never failed (the state advances once, not twice)."""
    model, processor = tiny_sdpa
    config = CompressionConfig(
        method="star_kv", budget=BUDGET, star_kv_profile_steps=1, star_kv_lambda_ramp=1
    )
    first = run_step(model, processor, ROWS[:2], config, max_new_tokens=2)
    states = [result.method_state for result in first]
    before = [state.to_dict() for state in states]

    def out_of_memory(module, args, kwargs):
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")

    handle = model.register_forward_pre_hook(out_of_memory, with_kwargs=True)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            run_step(model, processor, ROWS[:2], config, max_new_tokens=3, method_state=states)
    finally:
        handle.remove()
    assert [state.to_dict() for state in states] == before
    for row in range(2):
        retried = run_step(
            model,
            processor,
            ROWS[row],
            config,
            max_new_tokens=3,
            record_positions=True,
            method_state=states[row],
        )
        alone = run_step(model, processor, ROWS[row], config, max_new_tokens=1, record_positions=True)
        clean = run_step(
            model,
            processor,
            ROWS[row],
            config,
            max_new_tokens=3,
            record_positions=True,
            method_state=alone.method_state,
        )
        assert retried.method_state.to_dict() == clean.method_state.to_dict()
        assert all(
            torch.equal(a, b) for a, b in zip(retried.kept_positions, clean.kept_positions, strict=True)
        )
        assert retried.generated_ids == clean.generated_ids
        assert {layer.profile_steps for layer in retried.method_state.layers.values()} == {2}


def test_cut_rows_keep_their_slot_padding_through_crop_and_row_selection():
    layer = cut_two_rows()
    layer.crop(-2)
    assert (layer.prompt_slots, layer.slot_padding, layer.logical_length) == (2, (0, 2), 8)
    assert layer.physical_length == 2
    assert not layer.slot_visibility()[1].any()
    layer.batch_select_indices(torch.tensor([1]))
    assert layer.slot_padding == (2,) and layer.keys.shape[0] == 1
    layer.batch_repeat_interleave(2)
    assert layer.slot_padding == (2, 2) and layer.keys.shape[0] == 2


def test_stack_rows_right_aligns_each_prompt_and_masks_the_empty_slots():
    cut = CutLayer(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), logical_length=10)
    whole = DynamicLayer()
    whole.update(torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4))
    caches = [SimpleNamespace(layers=[cut]), SimpleNamespace(layers=[whole])]
    stacked = stack_rows(caches).layers[0]
    assert (stacked.logical_length, stacked.prompt_slots, stacked.slot_padding) == (10, 6, (3, 0))
    assert torch.equal(stacked.keys[0, :, 3:], cut.keys[0])
    assert torch.equal(stacked.values[1], whole.values[0])
    assert not stacked.keys[0, :, :3].any()
    assert stacked.slot_visibility().sum(dim=-1).tolist() == [3, 6]


def test_stack_rows_refuses_a_batch_or_a_cache_that_already_decoded():
    with pytest.raises(ValueError, match="single-row caches"):
        stack_rows([SimpleNamespace(layers=[cut_two_rows()])])
    grown = CutLayer(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), logical_length=9)
    grown.update(torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4))
    with pytest.raises(ValueError, match="appended tokens: True"):
        stack_rows([SimpleNamespace(layers=[grown])])


def test_left_padded_pads_token_rows_and_joins_image_rows():
    rows = [
        {
            "input_ids": torch.tensor([[5, 6, 7]]),
            "attention_mask": torch.ones(1, 3, dtype=torch.long),
            "mm_token_type_ids": torch.tensor([[0, 1, 0]]),
            "image_grid_thw": torch.tensor([[1, 2, 2]]),
            "pixel_values": torch.randn(4, 8),
        },
        {
            "input_ids": torch.tensor([[9]]),
            "attention_mask": torch.ones(1, 1, dtype=torch.long),
            "mm_token_type_ids": torch.tensor([[0]]),
            "image_grid_thw": torch.zeros(0, 3, dtype=torch.long),
            "pixel_values": torch.randn(0, 8),
        },
    ]
    batch = left_padded(rows, pad_token_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [1, 1, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["mm_token_type_ids"].tolist() == [[0, 1, 0], [0, 0, 0]]
    assert batch["image_grid_thw"].tolist() == [[1, 2, 2]]
    assert "pixel_values" not in batch
