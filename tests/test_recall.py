"""Oracle recall: the decode steps' attention mass collected by hooks equals the eager kernel's
weights, recall of a hand-made case equals the hand count, and at budget 100 every method keeps
every oracle position."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from guikv.analysis import compare_methods
from guikv.config import METHODS, CompressionConfig
from guikv.models.adapters import adapter_for
from guikv.recall import NO_DECODE_STEP, layer_recall, oracle_recall, oracle_sets
from guikv.step import run_step

NEW_TOKENS = 5


@pytest.fixture(scope="module")
def messages(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> list[dict]:
    """One small desktop screenshot and a task: a prompt with M-RoPE positions that differ from
    token indices, so decode-step positions matter."""
    source = sorted((fixtures_dir / "agentnetbench" / "test_data" / "images").glob("*.png"))[0]
    path = tmp_path_factory.mktemp("recall") / "shot.png"
    Image.open(source).convert("RGB").resize((224, 140)).save(path)
    content = [{"type": "image", "image": str(path)}, {"type": "text", "text": "Open the settings menu"}]
    return [{"role": "user", "content": content}]


def brute_force_mass(model, processor, messages: list[dict]) -> tuple[torch.Tensor, int]:
    """The oracle mass from eager `output_attentions` of a plain full-cache generate: per layer,
    the generated tokens' rows summed over the decode steps, prompt columns only, mean over each
    KV group: [layers, H_kv, L]; and the number of generated tokens."""
    inputs = adapter_for(model).build_inputs(processor, messages)
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_attentions=True,
            return_dict_in_generate=True,
        )
    kv_heads = model.config.get_text_config().num_key_value_heads
    layers = len(out.attentions[0])
    mass = torch.zeros(layers, kv_heads, length, dtype=torch.float64)
    for step in out.attentions[1:]:
        for layer, weights in enumerate(step):
            assert weights.shape[2] == 1
            rows = weights[0, :, 0, :length].double()
            mass[layer] += rows.view(kv_heads, -1, length).mean(dim=1)
    return mass, out.sequences.shape[1] - length


def test_oracle_mass_equals_the_eager_weights_of_the_decode_steps(tiny_eager, messages):
    model, processor = tiny_eager
    expected, generated = brute_force_mass(model, processor, messages)
    result = run_step(model, processor, messages, CompressionConfig(method="full"), max_new_tokens=NEW_TOKENS)
    assert result.generated_tokens == generated
    assert result.oracle_mass is None
    probed = run_step(
        model,
        processor,
        messages,
        CompressionConfig(method="full"),
        max_new_tokens=NEW_TOKENS,
        oracle_mass=True,
    )
    assert probed.generated_ids == result.generated_ids and generated > 2
    mass = probed.oracle_mass
    assert mass is not None and mass.shape == expected.shape
    assert mass.shape[2] == probed.prompt_tokens
    torch.testing.assert_close(mass.double(), expected, rtol=1e-4, atol=1e-6)
    # Each decode step spreads one unit of attention per head over the prompt and earlier tokens.
    assert float(mass.sum(dim=-1).max()) <= generated - 1 + 1e-4


def test_a_one_token_answer_has_no_oracle_mass_and_compare_reports_why(tiny_sdpa, messages):
    """One generated token comes from the prefill alone: no decode step read the cache, so there is
    no mass (not a [layers, 1, L] block of zeros) and `compare_methods` gives every run recall None
    with the reason, where it used to raise on the KV-head count."""
    model, processor = tiny_sdpa
    full = CompressionConfig(method="full")
    probed = run_step(model, processor, messages, full, max_new_tokens=1, oracle_mass=True)
    assert probed.generated_tokens == 1 and probed.oracle_mass is None
    reference, runs = compare_methods(
        model, processor, messages, [("full", 100.0), ("snapkv", 50.0)], max_new_tokens=1,
        base=CompressionConfig(window_size=4), recall=True,
    )  # fmt: skip
    for fidelity in (reference, *runs):
        assert fidelity.recall is None and fidelity.recall_per_layer is None
        assert fidelity.recall_reason == NO_DECODE_STEP
    assert runs[1].result is not None and runs[1].result.kept_positions == []


def test_oracle_mass_refuses_a_cut_cache(tiny_sdpa, messages):
    model, processor = tiny_sdpa
    with pytest.raises(RuntimeError, match="the oracle needs the full cache"):
        run_step(
            model,
            processor,
            messages,
            CompressionConfig(method="snapkv", budget=50, window_size=4),
            max_new_tokens=3,
            oracle_mass=True,
        )


def test_recall_of_a_hand_made_case_equals_the_hand_count():
    mass = torch.tensor(
        [
            [[0.9, 0.1, 0.5, 0.0, 0.7, 0.2], [0.0, 0.8, 0.1, 0.6, 0.2, 0.3]],
            [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]],
        ]
    )
    assert oracle_sets(mass[0], 3).tolist() == [
        [True, False, True, False, True, False],
        [False, True, False, True, False, True],
    ]
    # Layer 0 keeps 3 per head: head 0 {0, 1, 4} hits oracle {0, 2, 4} twice; head 1 {1, 3, 5} all.
    # Layer 1 keeps 2 per head: head 0 {0, 5} hits oracle {4, 5} once; head 1 {2, 3} misses {0, 1}.
    kept = [torch.tensor([[0, 1, 4], [5, 3, 1]]), torch.tensor([[0, 5], [2, 3]])]
    assert layer_recall(kept[0], mass[0]).tolist() == pytest.approx([2 / 3, 1.0])
    assert layer_recall(kept[1], mass[1]).tolist() == pytest.approx([0.5, 0.0])
    assert oracle_recall(kept, mass) == pytest.approx([(2 / 3 + 1) / 2, 0.25])
    with pytest.raises(ValueError, match="oracle mass for 2 layers"):
        oracle_recall(kept[:1], mass)


@pytest.fixture(scope="module")
def sdpa_oracle_mass(tiny_sdpa, messages) -> torch.Tensor:
    """The full cache's oracle mass for `messages` on the sdpa tiny model, 3 new tokens."""
    model, processor = tiny_sdpa
    config = CompressionConfig(method="full")
    return run_step(model, processor, messages, config, max_new_tokens=3, oracle_mass=True).oracle_mass


@pytest.mark.parametrize("method", [name for name in METHODS if name != "full"])
def test_recall_is_one_at_budget_100_for_every_method(tiny_sdpa, messages, sdpa_oracle_mass, method: str):
    model, processor = tiny_sdpa
    config = CompressionConfig(method=method, budget=100, window_size=4)
    result = run_step(model, processor, messages, config, max_new_tokens=3, record_positions=True)
    assert [kept.shape[-1] for kept in result.kept_positions] == [result.prompt_tokens] * 4
    assert oracle_recall(result.kept_positions, sdpa_oracle_mass) == [1.0] * 4
