"""The sparsity statistics: exact numbers on a hand-made attention pattern, chunking and merging,
the verdict, window-query and eager (`--full`) statistics agreeing on the tiny model, the report's
figures, and the fidelity measures `guikv compare` uses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guikv.analysis import (
    KINDS,
    AttentionCounts,
    full_attention_counts,
    kl_divergence,
    sparsity_report,
    token_agreement,
    verdict,
    window_attention_counts,
)
from guikv.viz.sparsity import write_sparsity_figures

# One head, four keys of kinds text, earlier screenshot, current screenshot, text; two query
# rows at positions 2 and 3 (row 2 cannot see key 3: its weight there is masked anyway).
PATTERN = torch.tensor([[[0.5, 0.495, 0.005, 0.3], [0.6, 0.25, 0.145, 0.005]]])
POSITIONS = torch.tensor([2, 3])
PATTERN_KINDS = torch.tensor([0, 1, 2, 0])


def pattern_counts() -> AttentionCounts:
    counts = AttentionCounts.zeros(1, 1)
    counts.add(0, PATTERN, POSITIONS, PATTERN_KINDS, threshold=0.01, mass=0.9)
    return counts


def test_hand_made_pattern_gives_the_expected_statistics():
    stats = pattern_counts().per_head()
    # 7 visible weights; 0.005 (row 2, current) and 0.005 (row 3, text) are <= 0.01.
    assert stats["sparsity"].item() == pytest.approx(2 / 7)
    # Mass sets: row 2 needs {0.5, 0.495} (2 of 3 keys), row 3 {0.6, 0.25, 0.145} (3 of 4).
    assert stats["keys_for_mass"].item() == pytest.approx(5 / 7)
    kinds = {kind: {name: value.item() for name, value in stats["kinds"][kind].items()} for kind in KINDS}
    assert kinds["text"] == pytest.approx(
        {
            "key_share": 3 / 7,
            "sparsity": 1 / 3,
            "mass_share": 1.105 / 2,
            "set_share": 2 / 5,
            "keys_for_mass": 2 / 3,
        }
    )
    assert kinds["previous"] == pytest.approx(
        {
            "key_share": 2 / 7,
            "sparsity": 0.0,
            "mass_share": 0.745 / 2,
            "set_share": 2 / 5,
            "keys_for_mass": 1.0,
        }
    )
    assert kinds["current"] == pytest.approx(
        {
            "key_share": 2 / 7,
            "sparsity": 1 / 2,
            "mass_share": 0.15 / 2,
            "set_share": 1 / 5,
            "keys_for_mass": 1 / 2,
        }
    )
    assert sum(kinds[kind]["mass_share"] for kind in KINDS) == pytest.approx(1.0)


def test_rows_counted_in_chunks_or_merged_add_up_to_the_same_counts():
    whole = pattern_counts()
    chunked = AttentionCounts.zeros(1, 1)
    for row in range(2):
        chunked.add(0, PATTERN[:, row : row + 1], POSITIONS[row : row + 1], PATTERN_KINDS, 0.01, 0.9)
    merged = AttentionCounts.zeros(1, 1)
    merged.merge(whole)
    merged.merge(whole)
    for name in ("rows", "visible", "low", "mass", "needed"):
        assert torch.allclose(getattr(chunked, name), getattr(whole, name))
        assert torch.allclose(getattr(merged, name), 2 * getattr(whole, name))
    assert merged.per_head()["sparsity"].item() == pytest.approx(2 / 7)


def test_absent_kind_is_nan_and_becomes_null_in_the_report():
    counts = AttentionCounts.zeros(1, 1)
    counts.add(0, PATTERN, POSITIONS, torch.tensor([0, 0, 2, 0]), 0.01, 0.9)
    assert math.isnan(counts.per_head()["kinds"]["previous"]["sparsity"].item())


def test_verdict_reads_the_layer_spread_and_the_concentration():
    flat = verdict([0.95, 0.93, 0.96, 0.94], keys_for_mass=0.05, mass=0.9)
    assert flat["supports_claim"] and flat["uniform"] and flat["high"] and flat["concentrated"]
    assert flat["sparsity_spread"] == pytest.approx(0.03)
    assert flat["sparsity_min_layer"] == 1 and flat["sparsity_max_layer"] == 2
    assert flat["verdict"].startswith("Supports")
    # 1 - s = 0.05, 0.07, 0.04, 0.06 (mean 0.055): VL-Cache ratios 0.73x to 1.27x.
    assert flat["vlcache_budget_ratio_max"] == pytest.approx(0.07 / 0.055)
    assert flat["vlcache_budget_ratio_min"] == pytest.approx(0.04 / 0.055)
    diffuse = verdict([0.99, 0.99], keys_for_mass=0.85, mass=0.9)
    assert diffuse["high"] and diffuse["uniform"] and not diffuse["concentrated"]
    assert not diffuse["supports_claim"] and "attention is diffuse" in diffuse["verdict"]
    varied = verdict([0.5, 0.9, 0.95], keys_for_mass=0.1, mass=0.9)
    assert not varied["supports_claim"] and not varied["uniform"] and not varied["high"]
    assert varied["verdict"].startswith("Does not support") and "not uniform" in varied["verdict"]


def test_token_agreement_and_kl():
    assert token_agreement([1, 2, 3, 4], [1, 2, 9]) == pytest.approx(2 / 3)
    assert token_agreement([], []) == 1.0
    assert token_agreement([1], []) == 0.0
    logits = torch.tensor([2.0, 1.0, 0.0])
    assert kl_divergence(logits, logits) == 0.0
    p = torch.softmax(logits.double(), 0)
    q = torch.softmax(torch.tensor([0.0, 1.0, 2.0]).double(), 0)
    assert kl_divergence(logits, torch.tensor([0.0, 1.0, 2.0])) == pytest.approx(
        float((p * (p / q).log()).sum())
    )


@pytest.fixture(scope="module")
def eager_inputs(tiny_eager, fixtures_dir: Path):
    """Two small screenshots (an earlier and the current one) and a short task, as model inputs."""
    processor = tiny_eager[1]
    paths = sorted((fixtures_dir / "agentnetbench" / "test_data" / "images").glob("*.png"))[:2]
    images = [Image.open(path).convert("RGB").resize((224, 140)) for path in paths]
    content = [*({"type": "image", "image": image} for image in images), {"type": "text", "text": "Open it"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(text=[text], images=images, return_tensors="pt")


def test_window_queries_and_eager_weights_give_the_same_window_statistics(tiny_eager, eager_inputs):
    model, _ = tiny_eager
    threshold = 1 / eager_inputs["input_ids"].shape[1]  # the uniform weight: random attention straddles it
    window = window_attention_counts(model, eager_inputs, window=8, threshold=threshold, mass=0.5)
    full = full_attention_counts(model, eager_inputs, threshold=threshold, mass=0.5, last_rows=8)
    assert window.tokens == full.tokens and min(window.tokens.values()) > 0
    for name in ("rows", "visible"):
        assert torch.equal(getattr(window.counts, name), getattr(full.counts, name)), name
    for name in ("low", "needed"):  # a weight within float error of a cut could flip: allow one
        assert (getattr(window.counts, name) - getattr(full.counts, name)).abs().max() <= 1, name
    assert torch.allclose(window.counts.mass, full.counts.mass, atol=1e-5)
    sparsity = window.counts.per_head()["sparsity"]
    assert float(sparsity.min()) > 0 and float(sparsity.max()) < 1


def test_report_over_every_row_and_its_figures(tiny_eager, eager_inputs, tmp_path: Path):
    model, _ = tiny_eager
    sample = full_attention_counts(model, eager_inputs, sample_id="one")
    report = sparsity_report([sample, sample], threshold=0.01, mass=0.9, model="tiny", mode="full")
    length = sample.prompt_tokens
    assert sample.query_rows == length
    assert report["samples"][0]["query_rows"] == length
    assert int(sample.counts.visible[0, 0].sum()) == length * (length + 1) // 2
    assert len(report["layers"]) == report["num_layers"] == 4
    assert len(report["heads"]["sparsity"]) == 4 and len(report["heads"]["sparsity"][0]) == 4
    assert report["by_kind"]["current"]["tokens"] == 2 * sample.tokens["current"]
    assert report["summary"]["verdict"]
    for path in write_sparsity_figures(report, tmp_path):
        pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
        assert pixels.std() > 10, path.name
