"""The vLLM plugin's pure parts, in the main venv (no vLLM): its settings and refusals, the plan
both vLLM processes derive independently, the slot and compaction index math, the cache read-back
layout, and the bridge from vLLM's flat per-step tensors to the methods (same inputs -> same
selection as `select_tokens` on transformers-shaped tensors)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from guikv import CompressionConfig, TokenLayout, select_tokens
from guikv.methods import build_method
from guikv.vllm.bridge import gather_kept, request_context
from guikv.vllm.cache_layout import read_back
from guikv.vllm.plan import RequestPlan, kept_count, physical_slots, plan_request
from guikv.vllm.resume import generated_attention, kept_entries
from guikv.vllm.settings import (
    UNIFORM_METHODS,
    EngineFacts,
    PluginSettings,
    engine_refusal,
    settings_from_additional_config,
)

IMAGE = 99
GOOD_ENGINE = EngineFacts(
    prefix_caching=False,
    chunked_prefill=False,
    max_num_batched_tokens=8192,
    max_model_len=8192,
    speculative=False,
    eager=True,
    tensor_parallel=1,
    pipeline_parallel=1,
    data_parallel=1,
    kv_cache_dtype="auto",
    model_type="qwen2_5_vl",
)


def test_settings_take_a_uniform_method_and_its_knobs() -> None:
    settings = PluginSettings.from_mapping(
        {"method": "gui_kv", "budget": 10, "alpha": 1.5, "log_requests": False}
    )
    assert settings.compression == CompressionConfig(method="gui_kv", budget=10, alpha=1.5)
    assert not settings.log_requests and not settings.record_positions
    assert PluginSettings.from_mapping(settings.to_mapping()) == settings
    assert settings_from_additional_config({"other": 1}) is None
    assert settings_from_additional_config({"guikv": {"method": "snapkv"}}).compression.method == "snapkv"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"method": "pyramidkv"}, "one block table per request across all layers"),
        ({"method": "vlcache"}, "every layer must keep the same count"),
        ({"method": "full"}, "run vLLM without the guikv plugin"),
        ({"method": "snapkv", "budgets": 10}, r"unknown key\(s\) \['budgets'\]"),
        ({"method": "snapkv", "budget": 0}, r"CompressionConfig.budget=0 is invalid"),
        ({"method": "snapkv", "record_positions": "yes"}, r"record_positions='yes' is invalid"),
        ("gui_kv", "must be a mapping"),
    ],
)
def test_settings_refuse_with_one_line_naming_the_field(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        PluginSettings.from_mapping(data)
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith("additional_config.guikv")


def test_every_uniform_method_is_accepted() -> None:
    for method in UNIFORM_METHODS:
        assert PluginSettings.from_mapping({"method": method}).compression.method == method


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"prefix_caching": True}, "--no-enable-prefix-caching"),
        ({"chunked_prefill": True}, "--no-enable-chunked-prefill"),
        ({"max_num_batched_tokens": 4096}, "--max-num-batched-tokens >= --max-model-len"),
        ({"speculative": True}, "speculative decoding"),
        ({"eager": False}, "--enforce-eager"),
        ({"tensor_parallel": 2}, "one worker only"),
        ({"kv_cache_dtype": "fp8"}, "--kv-cache-dtype auto"),
        ({"model_type": "opencua"}, "model_type 'opencua' is not supported"),
    ],
)
def test_engine_refusals_name_the_flag(change: dict, flag: str) -> None:
    assert engine_refusal(GOOD_ENGINE) is None
    refusal = engine_refusal(replace(GOOD_ENGINE, **change))
    assert refusal is not None and flag in refusal and "\n" not in refusal


def test_plan_keeps_the_transformers_capacity_and_says_why_a_prompt_is_left_whole() -> None:
    prompt = [1] * 20 + [IMAGE] * 300 + [2] * 30
    assert plan_request(prompt, CompressionConfig(method="gui_kv", budget=10), [IMAGE]) == RequestPlan(
        350, 35
    )
    assert kept_count(350, 10) == int(350 * 10 / 100)
    assert plan_request(prompt, CompressionConfig(budget=100), [IMAGE]).left_whole == "budget"
    text = [1] * 400
    assert plan_request(text, CompressionConfig(method="gui_kv"), [IMAGE]).left_whole == "text-only"
    assert plan_request(text, CompressionConfig(method="snapkv"), [IMAGE]) == RequestPlan(400, 40)
    assert plan_request([1] * 60, CompressionConfig(method="snapkv"), [IMAGE]).left_whole == "short"
    assert plan_request([1] * 90, CompressionConfig(method="snapkv"), [IMAGE]) == RequestPlan(90, 9)


def test_plan_block_counts_are_whole_blocks() -> None:
    plan = RequestPlan(length=2423, kept=242)
    assert (plan.evicted, plan.kept_blocks(32), plan.freed_blocks(32)) == (2181, 8, 68)
    assert RequestPlan(length=64, kept=64, left_whole="budget").freed_blocks(32) == 0


def test_a_resumed_request_is_planned_from_its_prompt_alone() -> None:
    prompt = [1] * 20 + [IMAGE] * 300 + [2] * 30
    config = CompressionConfig(method="gui_kv", budget=10)
    resumed = plan_request(prompt, config, [IMAGE], generated=150)
    assert resumed == RequestPlan(350, 35, None, 150) and resumed.resumed
    assert resumed.evicted == plan_request(prompt, config, [IMAGE]).evicted
    assert (resumed.kept_blocks(32), resumed.freed_blocks(32)) == (-(-(35 + 150) // 32), 16 - 6)
    assert plan_request([1] * 400, config, [IMAGE], generated=10).left_whole == "text-only"


def test_physical_slots_follow_the_block_table() -> None:
    slots = physical_slots([7, 2, 9], 70, 32)
    assert slots[:3].tolist() == [224, 225, 226]
    assert slots[32].item() == 64 and slots[69].item() == 9 * 32 + 5
    with pytest.raises(ValueError, match="do not fit 3 blocks"):
        physical_slots([7, 2, 9], 97, 32)


def test_read_back_follows_the_cpu_kernel_layout() -> None:
    blocks, kv_heads, block_size, dim = 3, 2, 4, 8
    cache = torch.zeros(blocks, kv_heads, block_size, 2 * dim)
    flat = cache.view(blocks, kv_heads, 2 * block_size * dim)
    key = torch.arange(dim, dtype=torch.float32) + 1
    flat[2, 1, : block_size * dim].view(dim, block_size)[:, 3] = key
    flat[2, 1, block_size * dim :].view(block_size, dim)[3] = -key
    keys, values = read_back(cache, torch.tensor([2 * block_size + 3]), "vec")
    assert torch.equal(keys[0, 1], key) and torch.equal(values[0, 1], -key)
    assert keys[0, 0].abs().sum() == 0


def packed_step(seed: int, lengths: list[int], heads: int, kv_heads: int, dim: int, hidden: int):
    """Flat per-step tensors of several requests, as vLLM's attention receives them."""
    generator = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    queries = torch.randn(total, heads * dim, generator=generator)
    keys = torch.randn(total, kv_heads * dim, generator=generator)
    states = torch.randn(total, hidden, generator=generator)
    return queries, keys, states


@pytest.mark.parametrize("method", UNIFORM_METHODS)
def test_bridge_gives_select_tokens_selection_on_the_same_tensors(method: str) -> None:
    heads, kv_heads, dim, hidden = 4, 2, 16, 24
    lengths = [37, 180, 25]
    queries, keys, states = packed_step(3, lengths, heads, kv_heads, dim, hidden)
    start, end = lengths[0], lengths[0] + lengths[1]
    layout = TokenLayout(length=lengths[1], image_spans=((10, 70), (80, 140))).with_grids([(6, 10), (6, 10)])
    config = CompressionConfig(method=method, budget=20, rank=4)
    built = build_method(config)
    context = request_context(
        built,
        queries=queries,
        keys=keys,
        hidden_states=states,
        start=start,
        end=end,
        head_dim=dim,
        layout=layout,
        capacity=kept_count(lengths[1], 20),
        layer_idx=1,
        num_layers=4,
        scaling=dim**-0.5,
    )
    ours = built.select(context)
    request_keys = keys[start:end].view(-1, kv_heads, dim).permute(1, 0, 2)[None]
    window = queries[end - 8 : end].view(8, heads, dim).transpose(0, 1)[None]
    knobs = {k: v for k, v in config.to_dict().items() if k not in ("method", "budget")}
    theirs = select_tokens(
        method,
        queries=window,
        keys=request_keys,
        hidden_states=states[start:end][None],
        image_spans=layout.image_spans,
        image_grids=layout.grids,
        capacity=kept_count(lengths[1], 20),
        layer_idx=1,
        num_layers=4,
        **knobs,
    )
    assert torch.equal(ours, theirs)
    assert ours.shape == (1, kv_heads, kept_count(lengths[1], 20))


def test_gather_kept_puts_each_heads_position_in_its_slot() -> None:
    rows = torch.arange(10 * 2 * 3, dtype=torch.float32).view(10, 6)
    keep = torch.tensor([[0, 4, 9], [1, 2, 3]])
    kept = gather_kept(rows, keep, 3)
    assert kept.shape == (3, 2, 3)
    for head in range(2):
        for slot in range(3):
            assert torch.equal(kept[slot, head], rows[keep[head, slot], head * 3 : head * 3 + 3])


def decoded_outputs(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    keep: torch.Tensor,
    length: int,
    head_dim: int,
    scale: float,
) -> torch.Tensor:
    """Generated rows attended one at a time, as decoding from the compressed cache does: each
    query head over its KV head's kept prompt entries and the generated entries up to itself."""
    kv_heads = keep.shape[0]
    groups = queries.shape[1] // (kv_heads * head_dim)
    rows = []
    for row in range(length, keys.shape[0]):
        heads = []
        for head in range(groups * kv_heads):
            kv = head // groups
            positions = torch.cat([keep[kv], torch.arange(length, row + 1)])
            k = keys[positions, kv * head_dim : (kv + 1) * head_dim]
            v = values[positions, kv * head_dim : (kv + 1) * head_dim]
            q = queries[row, head * head_dim : (head + 1) * head_dim]
            heads.append(torch.softmax(k @ q * scale, dim=0) @ v)
        rows.append(torch.cat(heads))
    return torch.stack(rows)


def test_generated_rows_attend_to_the_kept_prompt_and_the_generated_tokens_only() -> None:
    heads, kv_heads, dim, length, generated = 4, 2, 8, 30, 6
    generator = torch.Generator().manual_seed(5)
    queries = torch.randn(length + generated, heads * dim, generator=generator)
    keys = torch.randn(length + generated, kv_heads * dim, generator=generator)
    values = torch.randn(length + generated, kv_heads * dim, generator=generator)
    keep = torch.stack([torch.tensor([0, 3, 7, 20, 29]), torch.tensor([1, 2, 8, 9, 28])])
    ours = generated_attention(queries, keys, values, keep, length, dim, dim**-0.5)
    expected = decoded_outputs(queries, keys, values, keep, length, dim, dim**-0.5)
    assert ours.shape == (generated, heads * dim)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    everything = torch.arange(length).expand(kv_heads, length)
    full = generated_attention(queries, keys, values, everything, length, dim, dim**-0.5)
    assert (full - ours).abs().max() > 1e-2
    assert kept_entries(keep, length, 2).tolist() == [[0, 3, 7, 20, 29, 30, 31], [1, 2, 8, 9, 28, 30, 31]]


def test_pure_modules_import_no_vllm() -> None:
    code = (
        "import sys, guikv.vllm.settings, guikv.vllm.plan, guikv.vllm.bridge, guikv.vllm.cache_layout, "
        "guikv.vllm.resume, guikv.vllm.entry; assert 'vllm' not in sys.modules, 'vllm imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
