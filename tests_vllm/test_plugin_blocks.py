"""SnapKV at 10% inside vLLM with a fixed KV space of 160 blocks: each compressed request gives its
evicted blocks back right after its prefill, a third request runs in them while the first two are
still decoding, and the first two decode exactly what transformers decodes from the positions it
keeps (which vLLM keeps too, per layer and KV head)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BLOCK_BYTES, chat_prompt, hf_reference, record_for, run_engine

from guikv import CompressionConfig
from guikv.vllm.plan import plan_request

NUM_BLOCKS = 160
MAX_TOKENS = 16
IMAGE_TOKEN_IDS: list[int] = []


@pytest.fixture(scope="module")
def blocks_run(tiny_model: Path, screens: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three two-screenshot prompts (76 blocks each uncompressed: 228 > 160) submitted at once."""
    prompts = [
        chat_prompt(tiny_model, (screens[0], screens[1]), "Open the display settings"),
        chat_prompt(tiny_model, (screens[1], screens[2]), "Close the settings window"),
        chat_prompt(tiny_model, (screens[0], screens[2]), "Search for the weather"),
    ]
    spec = {
        "model": str(tiny_model),
        "guikv": {"method": "snapkv", "budget": 10, "record_positions": True},
        "kv_cache_bytes": NUM_BLOCKS * BLOCK_BYTES,
        "prompts": [p.spec() for p in prompts],
        "max_tokens": MAX_TOKENS,
    }
    return {"prompts": prompts, "result": run_engine(tmp_path_factory.mktemp("blocks"), spec)}


def test_third_request_runs_in_blocks_the_first_two_freed(blocks_run: dict) -> None:
    result = blocks_run["result"]
    assert result["num_blocks"] == NUM_BLOCKS
    lengths = [len(output["prompt_ids"]) for output in result["outputs"]]
    config = CompressionConfig(method="snapkv", budget=10)
    plans = [plan_request(o["prompt_ids"], config, IMAGE_TOKEN_IDS) for o in result["outputs"]]
    full_blocks = [-(-length // 32) for length in lengths]
    assert sum(full_blocks) > NUM_BLOCKS
    freed = sum(plan.freed_blocks(32) for plan in plans)
    assert result["scheduler_totals"]["blocks_freed"] == freed
    assert result["scheduler_totals"]["compressed"] == 3
    all_three = [step for step in result["trace"] if len(step) == 3]
    assert all_three, "the third request never ran while the first two were running"
    for step in all_three:
        assert len({block for blocks in step.values() for block in blocks}) == sum(map(len, step.values()))
    for step in result["trace"]:
        for blocks in step.values():
            assert len(blocks) <= plans[0].kept_blocks(32) + 1


def test_first_two_outputs_equal_transformers_compressed_runs(blocks_run: dict, tiny_model: Path) -> None:
    config = CompressionConfig(method="snapkv", budget=10)
    for index in (0, 1):
        reference = hf_reference(tiny_model, blocks_run["prompts"][index], config, MAX_TOKENS)
        output = blocks_run["result"]["outputs"][index]
        assert output["prompt_ids"] == reference.prompt_ids
        record = record_for(blocks_run["result"]["report"], len(reference.prompt_ids))
        for layer, (ours, theirs) in enumerate(zip(record["positions"], reference.positions, strict=True)):
            assert ours.tolist() == theirs.tolist(), f"request {index}, layer {layer}"
        assert output["tokens"] == reference.tokens
