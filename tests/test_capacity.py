"""The analytic capacity table (`guikv.capacity`, `python -m benchmarks.capacity`): its arithmetic
against a hand-checked case, UI-TARS-1.5-7B's parameter and token counts, and the CLI."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from test_engine_trust import text_model

from benchmarks import capacity, speed, throughput
from benchmarks.flags import run_script
from guikv.agents.family import get_family
from guikv.capacity import (
    QWEN25_VL_7B_VISION_PARAMETERS,
    UI_TARS_15_7B,
    GpuMemory,
    capacity_table,
    language_model_parameters,
    screenshot_tokens,
)
from guikv.compressor import compress
from guikv.config import CompressionConfig, uniform_capacity
from guikv.flops import ModelShape, kv_cache_bytes
from guikv.models.inputs import qwen_inputs
from guikv.vllm.plan import plan_request

SMALL = ModelShape(
    num_layers=2, hidden_size=8, num_heads=2, num_kv_heads=1, head_dim=4, intermediate_size=16, vocab_size=10
)


def test_capacity_arithmetic_against_a_hand_checked_case():
    # One position: 2 (K and V) x 2 layers x 1 KV head x 4 dims x 2 bytes (bf16) = 32 bytes.
    memory = GpuMemory(
        total_bytes=1_000_000, usable_fraction=0.5, weights_bytes=100_000, activation_bytes=50_000
    )
    # Usable 500,000 - weights 100,000 - activations 50,000 - the prefilling prompt 1,000 x 32 = 318,000.
    rows = capacity_table(memory, SMALL, prompt_tokens=1000, budgets=[100, 10, 0.05], new_tokens=28)
    assert [(row.budget, row.kept_tokens) for row in rows] == [(100, 1000), (10, 100), (0.05, 1)]
    # Full: (1,000 + 28) x 32 = 32,896 bytes a sequence, 318,000 // 32,896 = 9.
    # 10%: (100 + 28) x 32 = 4,096 bytes, 318,000 // 4,096 = 77. 0.05%: at least 1 kept, 29 x 32 = 928: 342.
    assert [row.sequence_kv_bytes for row in rows] == [32_896, 4_096, 928]
    assert [row.largest_batch for row in rows] == [9, 77, 342]


def test_capacity_refuses_a_gpu_the_weights_fill():
    memory = GpuMemory(total_bytes=100_000, usable_fraction=1.0, weights_bytes=90_000, activation_bytes=0)
    with pytest.raises(ValueError, match="no memory left for the KV cache"):
        capacity_table(memory, SMALL, prompt_tokens=1000, budgets=[10], new_tokens=0)


RELEASE_BUDGETS = (1, 3, 5, 10, 15, 20, 40, 80)
"""The budgets the releases' evaluation scripts run (GUI-KV's `kv_cache_budgets`)."""


def release_capacity(prompt_tokens: int, budget: float) -> int:
    """The releases' capacity, `int(L * (budget / 100))` in floating point (with our floor of 1)."""
    return max(1, int(prompt_tokens * (budget / 100)))


def test_uniform_capacity_is_the_exact_floor_of_the_budget_share():
    assert uniform_capacity(14705, 10) == 1470
    assert uniform_capacity(14705, 1) == 147
    assert uniform_capacity(50, 1) == 1
    assert uniform_capacity(14705, 100) == 14705
    assert uniform_capacity(1000, 0.05) == 1  # at least one position
    assert (uniform_capacity(100, 29), release_capacity(100, 29)) == (29, 28)
    assert (uniform_capacity(750, 9.2), int(750 * 9.2 / 100)) == (69, 68)  # our old rule, off by one too
    whole_budgets = {
        budget
        for budget in range(1, 100)
        for length in range(1, 5001)
        if uniform_capacity(length, budget) != release_capacity(length, budget)
    }
    assert whole_budgets == {29, 35, 41, 47, 57, 58, 69, 70, 82, 94}


def test_uniform_capacity_matches_the_releases_at_every_budget_they_run():
    for budget in RELEASE_BUDGETS:
        assert all(
            uniform_capacity(length, budget) == release_capacity(length, budget) for length in range(1, 20001)
        ), budget


def test_every_capacity_consumer_takes_the_exact_rule():
    """The compressor, the capacity table and the vLLM plan keep what `uniform_capacity` says: 69 of
    750 tokens at 9.2%, where floating point (our old rule, and the releases') keeps 68."""
    model = text_model()
    ids = torch.randint(0, 96, (1, 750), generator=torch.Generator().manual_seed(0))
    config = CompressionConfig(method="snapkv", budget=9.2)
    with torch.no_grad(), compress(model, config) as report:
        model(input_ids=ids, use_cache=True)
    assert report.kept_per_layer == [69] * model.config.num_hidden_layers
    memory = GpuMemory(total_bytes=10**9, usable_fraction=1.0, weights_bytes=0, activation_bytes=0)
    [row] = capacity_table(memory, SMALL, prompt_tokens=750, budgets=[9.2], new_tokens=0)
    assert row.kept_tokens == 69
    assert plan_request(ids[0].tolist(), config, []).kept == 69


def test_ui_tars_7b_parameters_and_kv_bytes():
    language = language_model_parameters(UI_TARS_15_7B)
    # 28 x 233,057,792 per layer + 2 x 152,064 x 3,584 (untied embeddings and head) + the final norm.
    assert language == 28 * 233_057_792 + 2 * 152_064 * 3584 + 3584 == 7_615_616_512
    assert language * 2 / 1e9 == pytest.approx(15.23, abs=0.01)
    assert language + QWEN25_VL_7B_VISION_PARAMETERS == pytest.approx(8.29e9, rel=1e-3)
    assert language_model_parameters(SMALL, attention_bias=False, tied_embeddings=True) == (
        2 * (8 * 8 + 2 * 8 * 4 + 8 * 8 + 3 * 8 * 16 + 2 * 8) + 10 * 8 + 8
    )
    full_prompt = kv_cache_bytes(UI_TARS_15_7B, [14705] * 28, torch.bfloat16)
    assert full_prompt / 2**20 == pytest.approx(804.2, abs=0.1)


def test_screenshot_tokens_match_the_processor(tiny_sdpa):
    _, processor = tiny_sdpa
    assert screenshot_tokens(1920, 1080) == 69 * 39 + 2
    for size in [(1920, 1080), (1000, 700)]:
        grid = processor.image_processor(images=[Image.new("RGB", size)], return_tensors="pt")[
            "image_grid_thw"
        ]
        assert screenshot_tokens(*size) == int(grid.prod()) // 4 + 2


def test_text_tokens_are_the_speed_prompts_text_part(tiny_sdpa):
    _, processor = tiny_sdpa
    screens = [Image.new("RGB", (280, 280)) for _ in range(5)]
    messages = throughput.batch_conversations(get_family("ui-tars"), screens, speed.HISTORY, 1)[0]
    total = qwen_inputs(processor, messages)["input_ids"].shape[1]
    assert total - 5 * screenshot_tokens(280, 280) == capacity.TEXT_TOKENS


def test_the_cli_prints_the_readme_table(capsys):
    run_script(capacity.main, ["--markdown"])
    out = capsys.readouterr().out
    assert "5 x 1920x1080 screenshots x 2,693 tokens + 1,240 text tokens = 14,705 tokens" in out
    assert "| full cache | 14,705 | 818.2 | 64 | 1.0x |" in out
    assert "| 10% | 1,470 | 94.4 | 561 | 8.8x |" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--budgets", "0"], "error: --budgets: 0 is outside (0, 100]"),
        (["--usable-fraction", "1.5"], "error: --usable-fraction 1.5 is invalid"),
        (["--screens", "0"], "error: --screens 0 is invalid"),
        (["--gpu-gib", "10"], "error: --gpu-gib 10: no memory left for the KV cache"),
    ],
)
def test_the_cli_refuses_bad_flags_in_one_line(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_script(capacity.main, args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
