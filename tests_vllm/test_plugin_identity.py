"""At budget 100 the plugin changes nothing: the tokens are bit-identical to vLLM without it, and
every request is counted as left whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import chat_prompt, record_for, run_engine

MAX_TOKENS = 16


@pytest.fixture(scope="module")
def prompts(tiny_model: Path, screens: list[Path]) -> list:
    """A three-screenshot prompt and a text-only prompt."""
    return [
        chat_prompt(tiny_model, tuple(screens), "Open the display settings"),
        chat_prompt(tiny_model, (), "Write a small plan and finally summarize your next action."),
    ]


def engine_spec(model: Path, prompts: list, guikv: dict | None) -> dict:
    return {
        "model": str(model),
        "guikv": guikv,
        "kv_cache_bytes": 256 << 20,
        "prompts": [p.spec() for p in prompts],
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
    }


def test_budget_100_is_bit_identical_to_vllm_without_the_plugin(
    tiny_model: Path, prompts: list, tmp_path_factory: pytest.TempPathFactory
) -> None:
    plain = run_engine(tmp_path_factory.mktemp("plain"), engine_spec(tiny_model, prompts, None))
    keep_all = run_engine(
        tmp_path_factory.mktemp("keep-all"),
        engine_spec(tiny_model, prompts, {"method": "gui_kv", "budget": 100}),
    )
    assert plain["report"] is None and plain["scheduler_totals"] is None
    for ours, theirs in zip(keep_all["outputs"], plain["outputs"], strict=True):
        assert ours["prompt_ids"] == theirs["prompt_ids"]
        assert ours["tokens"] == theirs["tokens"]
        assert len(ours["tokens"]) == MAX_TOKENS
    for output in keep_all["outputs"]:
        length = len(output["prompt_ids"])
        record = record_for(keep_all["report"], length)
        assert (record["kept"], record["left_whole"]) == (length, "budget")
    assert keep_all["scheduler_totals"]["blocks_freed"] == 0
