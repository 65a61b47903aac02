"""A carried conversation re-prefilled as it was generated: `Carrying.answer_token_inputs` gives
each earlier answer as the token ids the model generated (their text re-tokenizes to other ids),
holds an answer's closing token once, refuses an answer a prompt cannot hold; and
`run_step_inputs` runs such ready-made inputs exactly as `run_step` runs messages."""

from __future__ import annotations

import pytest
import torch
from test_engine_carry import TASK, screens

from guikv import CompressionConfig
from guikv.models.inputs import qwen_answer_token_inputs, qwen_inputs
from guikv.step import run_step, run_step_inputs
from guikv.trajectory import Trajectory

SIZE = ((308, 196),)
"""Small screenshots keep the prompts short."""


def test_answers_are_re_prefilled_as_the_ids_generated_not_their_text(tiny_sdpa):
    """Step 1's re-prefilled prompt holds step 0's answer as generated: the carried trajectory's
    tokens exactly, where the answer's text re-tokenizes to other ids."""
    model, processor = tiny_sdpa
    trajectory = Trajectory(model, processor, CompressionConfig(method="full"), TASK, max_new_tokens=8)
    first, second = screens(2, SIZE)
    answer = trajectory.step(first).generated_ids
    result = trajectory.step(second)
    exact = qwen_answer_token_inputs(processor, trajectory.messages, [answer])
    carried = trajectory.token_ids[: result.layout.length]
    assert exact["input_ids"][0].tolist() == carried
    assert qwen_inputs(processor, trajectory.messages)["input_ids"][0].tolist() != carried
    assert torch.equal(
        exact["image_grid_thw"], torch.cat([turn["image_grid_thw"] for turn in trajectory.turns])
    )
    assert torch.equal(exact["mm_token_type_ids"], (exact["input_ids"] == model.config.image_token_id).long())


def test_an_answer_ending_with_the_turn_s_end_token_holds_it_once(tiny_sdpa):
    """A carried cache holds an answer's last token once: one that ended with <|im_end|> is not
    followed by a second one (the turn's close), one cut short is followed by exactly one."""
    _, processor = tiny_sdpa
    first, second, end = processor.tokenizer.convert_tokens_to_ids(
        ["<|object_ref_start|>", "<|object_ref_end|>", "<|im_end|>"]
    )
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Go"}]},
        {"role": "assistant", "content": "ignored"},
        {"role": "user", "content": [{"type": "text", "text": "Next"}]},
    ]
    ended = qwen_answer_token_inputs(processor, messages, [[first, second, end]])["input_ids"][0].tolist()
    cut = qwen_answer_token_inputs(processor, messages, [[first, second]])["input_ids"][0].tolist()
    assert ended == cut
    at = ended.index(first)
    assert ended[at : at + 4] == [first, second, end, ended[at + 3]] and ended[at + 3] != end
    with pytest.raises(ValueError, match="image placeholder token"):
        qwen_answer_token_inputs(processor, messages, [[first, processor.image_token_id]])
    with pytest.raises(ValueError, match="1 answers for a conversation with 0 assistant turns"):
        qwen_answer_token_inputs(processor, messages[:1], [[first]])


def test_run_step_inputs_measures_ready_made_inputs_as_run_step_measures_messages(tiny_sdpa):
    model, processor = tiny_sdpa
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": screens(1, SIZE)[0]}, {"type": "text", "text": TASK}],
        }
    ]
    config = CompressionConfig(method="snapkv", budget=30)
    options = {"max_new_tokens": 4, "record_positions": True, "keep_first_decode_logits": True}
    expected = run_step(model, processor, messages, config, **options)
    result = run_step_inputs(model, processor, qwen_inputs(processor, messages), config, **options)
    assert result.generated_ids == expected.generated_ids and result.text == expected.text
    assert result.prompt_tokens == expected.prompt_tokens and result.kept_per_layer == expected.kept_per_layer
    assert all(torch.equal(a, b) for a, b in zip(result.kept_positions, expected.kept_positions, strict=True))
    assert torch.equal(result.first_decode_logits, expected.first_decode_logits)
    assert result.layout == expected.layout and result.image_grids == expected.image_grids
