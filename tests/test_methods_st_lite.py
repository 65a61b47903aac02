"""ST-Lite pinned to a reference written from its release's per-head code (`94wen94/ST-Lite`,
`utils/methods.py::STLiteKVCluster.update_kv`), with H == H_kv and with GQA, and its paper variant."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from guikv import CompressionConfig, TokenLayout, select_tokens
from guikv.methods import build_method
from guikv.methods.base import LayerContext, keep_top
from guikv.methods.st_lite import neighbour_dissimilarity, pooled_norm_saliency, redundant_history

WINDOW = 8


def random_layer(seed: int, heads: int, kv_heads: int, length: int = 160, dim: int = 16, hidden: int = 24):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(1, heads, WINDOW, dim, generator=generator)
    keys = torch.randn(1, kv_heads, length, dim, generator=generator)
    states = torch.randn(1, length, hidden, generator=generator)
    return queries, keys, states


def release_scores(q, k, x, spans, capacity, spatial="code", grid=None):
    """The release's `update_kv` scores per query head ([1, H, L - w]): keys repeated to every query
    head, window softmax with a min-value causal block, summed, avg-pooled (kernel 5); the current
    screenshot gets softmax(z(n + avgpool3x3(n))) (pooled only on a perfect square) with weight 1;
    the int((1 - C/L) * N_hist) history tokens most cosine-similar to the current screenshot are
    zeroed in every head. `spatial="paper"` adds the paper's phi instead (grid from `grid`)."""
    heads, dim = q.shape[1], q.shape[-1]
    keys = k.repeat_interleave(heads // k.shape[1], dim=1)
    length = keys.shape[2]
    weights = q @ keys.transpose(2, 3) / math.sqrt(dim)
    mask = torch.full((WINDOW, WINDOW), torch.finfo(weights.dtype).min)
    cond = torch.arange(WINDOW)
    mask.masked_fill_(cond < (cond + 1).view(WINDOW, 1), 0)
    weights[:, :, -WINDOW:, -WINDOW:] += mask
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32)
    cache = F.avg_pool1d(weights[:, :, -WINDOW:, :-WINDOW].sum(dim=-2), kernel_size=5, padding=2, stride=1)
    start, end = spans[-1]
    if spatial == "paper":
        rows, cols = grid
        unit = F.normalize(x[0, start:end], dim=-1).view(rows, cols, -1)
        phi = torch.zeros(rows, cols)
        for r in range(rows):
            for c in range(cols):
                sims = [
                    float(unit[r, c] @ unit[r + dr, c + dc])
                    for dr in (-1, 0, 1)
                    for dc in (-1, 0, 1)
                    if (dr or dc) and 0 <= r + dr < rows and 0 <= c + dc < cols
                ]
                phi[r, c] = 1 - sum(sims) / len(sims)
        cache[:, :, start:end] += phi.reshape(-1)
    else:
        scores = torch.norm(x[:, start:end], p=2, dim=-1)
        side = int(math.sqrt(scores.shape[1]))
        if side * side == scores.shape[1]:
            pooled = F.avg_pool2d(scores.view(1, 1, side, side), kernel_size=3, stride=1, padding=1)
            scores = scores + pooled.view(1, -1)
        standard = (scores[0] - scores[0].mean()) / (scores[0].std() + 1e-8)
        cache[:, :, start:end] += torch.softmax(standard, dim=0)
    if len(spans) > 1:
        current = F.normalize(x[:, start:end], p=2, dim=-1)
        similarities, positions = [], []
        for s, e in spans[:-1]:
            previous = F.normalize(x[:, s:e], p=2, dim=-1)
            similarities.append((previous @ current.transpose(1, 2)).max(dim=2).values)
            positions.append(torch.arange(s, e))
        flat, where = torch.cat([sim[0] for sim in similarities]), torch.cat(positions)
        count = int((1.0 - float(capacity / length)) * len(flat))
        if count > 0:
            cache[0, :, where[torch.topk(flat, count, largest=True).indices]] = 0
    return cache


def release_keep(scores: torch.Tensor, capacity: int) -> torch.Tensor:
    """The release's kept positions per head (top C - w of the prefix, plus the window), ascending."""
    length = scores.shape[-1] + WINDOW
    top = scores.topk(capacity - WINDOW, dim=-1).indices.sort(dim=-1).values
    return torch.cat([top, torch.arange(length - WINDOW, length).expand(*scores.shape[:2], WINDOW)], dim=-1)


# current screenshot 36 tokens (a 6 x 6 square: the release pools) or 40 (no square: it does not)
SQUARE = [(4, 40), (44, 80), (84, 120)]
NOT_SQUARE = [(4, 44), (50, 90), (100, 140)]


@pytest.mark.parametrize("spans", [SQUARE, NOT_SQUARE])
def test_st_lite_without_gqa_equals_the_release_per_head(spans):
    q, k, x = random_layer(seed=1, heads=4, kv_heads=4)
    for capacity in (20, 48, 90):
        ours = select_tokens(
            "st_lite", queries=q, keys=k, hidden_states=x, image_spans=spans, capacity=capacity
        )
        assert torch.equal(ours, release_keep(release_scores(q, k, x, spans, capacity), capacity))


@pytest.mark.parametrize("spans", [SQUARE, NOT_SQUARE])
def test_st_lite_with_gqa_ranks_the_group_mean_of_the_release_per_head_scores(spans):
    """The release keeps a cache per query head; we keep H_kv heads ranked by the group mean of the
    same per-head scores (both added terms are equal across heads, so they pass through the mean)."""
    q, k, x = random_layer(seed=2, heads=6, kv_heads=2)
    for capacity in (24, 60):
        ours = select_tokens(
            "st_lite", queries=q, keys=k, hidden_states=x, image_spans=spans, capacity=capacity
        )
        per_head = release_scores(q, k, x, spans, capacity)
        expected = keep_top(per_head.view(1, 2, 3, -1).mean(dim=2), capacity - WINDOW, k.shape[2])
        assert torch.equal(ours, expected)


def test_st_lite_gate_zeroes_exactly_int_1_minus_c_over_l_of_the_most_similar_history_tokens():
    _, _, x = random_layer(seed=3, heads=2, kv_heads=2)
    spans = NOT_SQUARE
    history = sum(e - s for s, e in spans[:-1])
    for capacity in (16, 40, 100):
        zeroed = redundant_history(x, spans[-1], tuple(spans[:-1]), float(capacity / 160))
        assert zeroed.shape == (1, int((1.0 - capacity / 160) * history))
        current = F.normalize(x[0, 100:140], dim=-1)
        rho = {
            p: float((F.normalize(x[0, p], dim=-1) @ current.T).max())
            for s, e in spans[:-1]
            for p in range(s, e)
        }
        kept_rho = [rho[p] for p in rho if p not in set(zeroed[0].tolist())]
        assert min(rho[p] for p in zeroed[0].tolist()) >= max(kept_rho)


def test_st_lite_scores_are_zero_on_gated_tokens_in_every_head():
    q, k, x = random_layer(seed=4, heads=4, kv_heads=2)
    method = build_method(CompressionConfig(method="st_lite"))
    ctx = LayerContext(
        keys=k, layout=TokenLayout(160, tuple(SQUARE)), capacity=32, queries=q, hidden_states=x
    )
    scores = method.score(ctx, WINDOW)
    gated = redundant_history(x, SQUARE[-1], tuple(SQUARE[:-1]), 32 / 160)[0]
    for head in range(2):
        assert sorted((scores[0, head] == 0).nonzero().reshape(-1).tolist()) == sorted(gated.tolist())


def test_code_saliency_pools_on_the_true_grid_where_the_release_guessed_a_square():
    """A 5 x 8 screenshot (40 tokens, no square): the release does not pool; with the grid we pool
    3x3 on 5 x 8. For a square grid both agree."""
    x = torch.randn(1, 50, 12, generator=torch.Generator().manual_seed(5))
    span = (5, 45)
    norms = x[0, 5:45].norm(dim=-1)
    pooled = F.avg_pool2d(norms.view(1, 1, 5, 8), 3, stride=1, padding=1).reshape(-1)
    expected = torch.softmax((norms + pooled - (norms + pooled).mean()) / ((norms + pooled).std() + 1e-8), 0)
    assert torch.allclose(pooled_norm_saliency(x, span, (5, 8))[0], expected, atol=1e-6)
    unpooled = torch.softmax((norms - norms.mean()) / (norms.std() + 1e-8), 0)
    assert torch.allclose(pooled_norm_saliency(x, span, None)[0], unpooled, atol=1e-6)
    square = (5, 41)
    assert torch.equal(pooled_norm_saliency(x, square, (6, 6)), pooled_norm_saliency(x, square, None))


def test_st_lite_takes_the_screenshot_grid_from_select_tokens():
    q, k, x = random_layer(seed=6, heads=2, kv_heads=2)
    spans = [(4, 44), (50, 90), (100, 140)]
    grids = [(5, 8), (5, 8), (5, 8)]
    with_grid = select_tokens(
        "st_lite", queries=q, keys=k, hidden_states=x, image_spans=spans, image_grids=grids, capacity=40
    )
    guessed = select_tokens("st_lite", queries=q, keys=k, hidden_states=x, image_spans=spans, capacity=40)
    assert not torch.equal(with_grid, guessed)
    with pytest.raises(ValueError, match="does not fit the image span"):
        select_tokens(
            "st_lite",
            queries=q,
            keys=k,
            hidden_states=x,
            image_spans=spans,
            image_grids=[(6, 6)] * 3,
            capacity=40,
        )


def test_paper_phi_is_one_minus_mean_neighbour_cosine():
    """Flat background scores 0; one distinct token scores 1 and lifts each neighbour by 1 / its
    neighbour count (8 inside, 5 on an edge)."""
    rows, cols = 4, 5
    states = torch.zeros(1, rows * cols, 3)
    states[0, :, 0] = 1.0
    phi = neighbour_dissimilarity(states, (0, rows * cols), (rows, cols))[0].view(rows, cols)
    assert torch.allclose(phi, torch.zeros(rows, cols), atol=1e-6)
    states[0, 1 * cols + 2] = torch.tensor([0.0, 1.0, 0.0])
    phi = neighbour_dissimilarity(states, (0, rows * cols), (rows, cols))[0].view(rows, cols)
    assert phi[1, 2] == pytest.approx(1.0)
    assert phi[2, 2] == pytest.approx(1 / 8) and phi[1, 1] == pytest.approx(1 / 8)
    assert phi[0, 2] == pytest.approx(1 / 5)
    assert phi[3, 0] == pytest.approx(0.0, abs=1e-6)


def test_paper_variant_equals_the_paper_formula_with_the_same_gate():
    q, k, x = random_layer(seed=7, heads=4, kv_heads=4)
    spans, grids = NOT_SQUARE, [(5, 8)] * 3
    for capacity in (24, 70):
        ours = select_tokens(
            "st_lite",
            queries=q,
            keys=k,
            hidden_states=x,
            image_spans=spans,
            image_grids=grids,
            capacity=capacity,
            st_lite_variant="paper",
        )
        expected = release_scores(q, k, x, spans, capacity, spatial="paper", grid=(5, 8))
        assert torch.equal(ours, release_keep(expected, capacity))


def test_paper_variant_needs_a_grid_for_a_non_square_screenshot():
    q, k, x = random_layer(seed=8, heads=2, kv_heads=2)
    with pytest.raises(ValueError, match="needs the screenshot's token grid"):
        select_tokens(
            "st_lite",
            queries=q,
            keys=k,
            hidden_states=x,
            image_spans=NOT_SQUARE,
            capacity=40,
            st_lite_variant="paper",
        )
