"""The methods on small hand-checkable tensors, against the spec's per-head algorithm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from guikv import METHODS, CompressionConfig, TokenLayout, compress, select_tokens
from guikv.layout import grids_from_positions, grids_from_thw, spatial_merge_size
from guikv.methods.gui_kv import projection_residuals, redundant_positions, spatial_saliency
from guikv.methods.vlcache import allocate_budgets
from guikv.models import adapter_for


def random_layer(
    seed: int = 0,
    heads: int = 4,
    kv_heads: int = 2,
    length: int = 120,
    dim: int = 16,
    window: int = 8,
    hidden: int = 24,
):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(1, heads, window, dim, generator=generator)
    keys = torch.randn(1, kv_heads, length, dim, generator=generator)
    states = torch.randn(1, length, hidden, generator=generator)
    return queries, keys, states


def spec_gui_kv(q, k, x, spans, capacity, window=8, alpha=2.0, temperature=3.5, rank=32, kernel=5):
    """The spec's GUI-KV (method.md §1), per query head with Python loops, no GQA."""
    _, heads, _, dim = q.shape
    length = k.shape[2]
    logits = q.float() @ k.float().transpose(2, 3) / math.sqrt(dim)
    mask = torch.zeros(window, length)
    mask[:, length - window :] = torch.full((window, window), float("-inf")).triu(1)
    attn = torch.softmax(logits + mask, dim=-1)
    a = attn[..., : length - window].sum(dim=2)
    a = F.avg_pool1d(a, kernel_size=kernel, padding=kernel // 2, stride=1)
    s_m, e_m = spans[-1]
    norms = x[0, s_m:e_m].norm(dim=-1)
    z = (norms - norms.mean()) / (norms.std() + 1e-8)
    a[0, :, s_m:e_m] += alpha * torch.softmax(z / temperature, dim=0)
    if len(spans) > 1:
        for h in range(heads):
            current = k[0, h, s_m:e_m].float()
            basis, _ = torch.linalg.qr(current.T, mode="reduced")
            basis = basis[:, : min(rank, current.shape[0], dim)]
            rhos, positions = [], []
            for s, e in spans[:-1]:
                previous = k[0, h, s:e].float()
                rhos.append((previous - previous @ basis @ basis.T).norm(dim=-1))
                positions.append(torch.arange(s, e))
            rho, pos = torch.cat(rhos), torch.cat(positions)
            zeroed = int((1 - capacity / length) * pos.numel())
            a[0, h, pos[rho.argsort()[:zeroed]]] = 0
    top = a.topk(capacity - window, dim=-1).indices.sort(dim=-1).values
    return torch.cat([top, torch.arange(length - window, length).expand(1, heads, window)], dim=-1)


def test_gui_kv_without_gqa_equals_the_spec_per_head_algorithm():
    q, k, x = random_layer(seed=1, heads=4, kv_heads=4, length=150)
    spans = [(5, 45), (50, 90), (95, 135)]
    for capacity in (20, 40, 75):
        ours = select_tokens(
            "gui_kv",
            queries=q,
            keys=k,
            hidden_states=x,
            image_spans=spans,
            capacity=capacity,
            alpha=2.0,
            temperature=3.5,
            window_size=8,
            rank=4,
        )
        assert torch.equal(ours, spec_gui_kv(q, k, x, spans, capacity, rank=4))


def relative_residuals(model, inputs, rank: int = 32) -> list[torch.Tensor]:
    """Per layer, each earlier-screenshot key's residual outside the current screenshot's rank-`rank`
    key subspace, relative to the key's norm (what GUI-KV's temporal step sorts), from a prefill."""
    with torch.no_grad():
        cache = model(**inputs, use_cache=True).past_key_values
    ids = adapter_for(model).image_token_ids(model.config)
    layout = TokenLayout.from_input_ids(inputs["input_ids"][0], ids)
    relative = []
    for layer in cache.layers:
        residuals, positions = projection_residuals(layer.keys, layout.current, layout.previous, rank)
        relative.append(residuals / layer.keys.float()[:, :, positions].norm(dim=-1))
    return relative


def test_gui_kv_temporal_residuals_are_real_on_the_head_dim_64_tiny_model_and_noise_at_16(
    tiny_sdpa, tiny64_sdpa, make_inputs
):
    """Why GUI-KV's engine tests run on the head_dim-64 tiny model: at head_dim 16 the rank-32
    subspace is the whole key space and every residual is rounding noise; at 64 the residuals are
    far above float eps, and the temporal step decides kept positions (a rank that spans the whole
    key space, i.e. a temporal step sorting noise, keeps other positions)."""
    inputs = make_inputs(tiny_sdpa[1], 2)
    assert max(float(layer.max()) for layer in relative_residuals(tiny_sdpa[0], inputs)) < 1e-5
    model, _ = tiny64_sdpa
    assert min(float(layer.min()) for layer in relative_residuals(model, inputs)) > 0.1
    head_dim = model.config.text_config.hidden_size // model.config.text_config.num_attention_heads
    kept = {}
    for rank in (32, head_dim):
        config = CompressionConfig(method="gui_kv", budget=20, rank=rank)
        with compress(model, config, record_positions=True) as report:
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
        kept[rank] = report.kept_positions
    assert any(not torch.equal(a, b) for a, b in zip(kept[32], kept[head_dim], strict=True))


def test_gui_kv_temporal_residuals_move_with_rounding_level_changes_of_the_keys(tiny64_sdpa, make_inputs):
    """Why GUI-KV alone keeps slightly different positions in a padded batch or a chunked prefill
    (`kept_checks.ROUNDING_SENSITIVE`): the current screenshot's first 32 keys, whose span is the
    subspace (QR without pivoting, as released), are numerically dependent on a screenshot with a
    uniform top (smallest singular value below 1e-6 of the largest), so multiplying the keys by
    1 + 1e-6 noise (rounding level) moves some residual by over 5% of its key's norm."""
    model, processor = tiny64_sdpa
    inputs = make_inputs(processor, 2)
    with torch.no_grad():
        cache = model(**inputs, use_cache=True).past_key_values
    image_tokens = adapter_for(model).image_token_ids(model.config)
    layout = TokenLayout.from_input_ids(inputs["input_ids"][0], image_tokens)
    start = layout.current[0]
    generator = torch.Generator().manual_seed(0)
    for layer in cache.layers:
        keys = layer.keys.float()
        singular = torch.linalg.svdvals(keys[0, :, start : start + 32])
        assert (singular[:, -1] / singular[:, 0]).max() < 1e-6
        nudged = keys * (1 + 1e-6 * torch.randn(keys.shape, generator=generator))
        residuals, positions = projection_residuals(keys, layout.current, layout.previous, 32)
        moved, _ = projection_residuals(nudged, layout.current, layout.previous, 32)
        assert ((moved - residuals) / keys[:, :, positions].norm(dim=-1)).abs().max() > 0.05


def test_gui_kv_with_alpha_zero_and_one_screenshot_is_snapkv():
    q, k, x = random_layer(seed=2)
    spans = [(10, 100)]
    for aggregation in ("mean", "max"):
        gui = select_tokens(
            "gui_kv",
            queries=q,
            keys=k,
            hidden_states=x,
            image_spans=spans,
            capacity=30,
            alpha=0.0,
            head_aggregation=aggregation,
        )
        snap = select_tokens("snapkv", queries=q, keys=k, capacity=30, head_aggregation=aggregation)
        assert torch.equal(gui, snap)


def test_saliency_is_a_softmax_of_standardised_hidden_norms():
    states = torch.zeros(1, 6, 2)
    states[0, 1:5, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    p = spatial_saliency(states, (1, 5), temperature=2.0)
    z = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / math.sqrt(5 / 3)
    expected = torch.softmax(z / 2.0, dim=0)
    assert torch.allclose(p[0], expected, atol=1e-6)
    assert p.sum().item() == pytest.approx(1.0)


def test_temporal_redundancy_zeroes_the_earlier_tokens_the_current_screen_explains():
    """Current keys span e0, e1; earlier tokens at 0..5 lie in that plane (redundant) or off it."""
    dim = 4
    keys = torch.zeros(1, 1, 20, dim)
    keys[0, 0, 10:14] = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1.0, 1.0, 0, 0], [2.0, -1.0, 0, 0]])
    keys[0, 0, 0:6] = torch.tensor(
        [
            [3.0, 1.0, 0, 0],  # in plane: residual 0
            [0, 0, 2.0, 0],  # off plane: residual 2
            [1.0, -1.0, 0, 0],  # in plane: residual 0
            [0, 0, 0, 5.0],  # off plane: residual 5
            [1.0, 0, 0.5, 0],  # residual 0.5
            [0, 0, 1.0, 1.0],  # residual sqrt 2
        ]
    )
    residuals, positions = projection_residuals(keys, (10, 14), ((0, 6),), rank=2)
    assert positions.tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.allclose(residuals[0, 0], torch.tensor([0, 2.0, 0, 5.0, 0.5, math.sqrt(2)]), atol=1e-5)
    zeroed = redundant_positions(keys, (10, 14), ((0, 6),), rank=2, evicted_share=0.5)
    assert sorted(zeroed[0, 0].tolist()) == [0, 2, 4]
    assert redundant_positions(keys, (10, 14), ((0, 6),), rank=2, evicted_share=0.9).shape[-1] == int(0.9 * 6)


def test_qr_subspace_is_the_span_of_the_first_rank_current_keys_and_svd_the_principal_one():
    keys = torch.zeros(1, 1, 8, 3)
    keys[0, 0, 4:8] = torch.tensor([[0, 0, 1.0], [1.0, 0, 0], [10.0, 0, 0], [9.0, 0.1, 0]])
    keys[0, 0, 0] = torch.tensor([0, 0, 1.0])
    keys[0, 0, 1] = torch.tensor([1.0, 0, 0])
    qr, _ = projection_residuals(keys, (4, 8), ((0, 2),), rank=1, subspace="qr")
    svd, _ = projection_residuals(keys, (4, 8), ((0, 2),), rank=1, subspace="svd")
    assert qr[0, 0].tolist() == pytest.approx([0.0, 1.0], abs=1e-5)
    assert svd[0, 0].tolist() == pytest.approx([1.0, 0.0], abs=1e-2)


def test_gui_kv_scores_zero_exactly_the_redundant_earlier_tokens():
    q, k, x = random_layer(seed=3, heads=2, kv_heads=2, length=100)
    spans = [(0, 30), (40, 70), (70, 90)]
    from guikv.methods import build_method
    from guikv.methods.base import LayerContext

    method = build_method(CompressionConfig(method="gui_kv", rank=4))
    ctx = LayerContext(keys=k, layout=TokenLayout(100, tuple(spans)), capacity=20, queries=q, hidden_states=x)
    scores = method.score(ctx, 8)
    zeroed = redundant_positions(k, spans[-1], tuple(spans[:-1]), 4, 1 - 20 / 100)
    assert zeroed.shape[-1] == int(0.8 * 60)
    for head in range(2):
        zero = (scores[0, head] == 0).nonzero().reshape(-1)
        assert sorted(zero.tolist()) == sorted(zeroed[0, head].tolist())


def test_selection_is_ascending_unique_and_keeps_the_window():
    q, k, x = random_layer(seed=4)
    spans = [(10, 50), (55, 100)]
    for method in METHODS:
        queries = torch.randn(1, 4, 20, 16) if method == "vlcache" else q
        keep = select_tokens(method, queries=queries, keys=k, hidden_states=x, image_spans=spans, capacity=30)
        assert keep.dtype == torch.long and keep.shape[:2] == (1, 2)
        assert torch.all(keep[..., 1:] > keep[..., :-1]), method
        window = 20 if method == "vlcache" else 8
        assert keep[0, 0, -window:].tolist() == list(range(120 - window, 120)), method


def test_streamingllm_keeps_sinks_and_the_most_recent_tokens():
    _, k, _ = random_layer()
    keep = select_tokens("streamingllm", keys=k, capacity=30, sink_tokens=4)
    assert keep[0, 0].tolist() == [0, 1, 2, 3, *range(94, 120)]


def test_random_is_seeded():
    _, k, _ = random_layer()
    a = select_tokens("random", keys=k, capacity=30, seed=1)
    assert torch.equal(a, select_tokens("random", keys=k, capacity=30, seed=1))
    assert not torch.equal(a, select_tokens("random", keys=k, capacity=30, seed=2))


def test_max_head_aggregation_keeps_what_any_group_head_wants():
    q, k, _ = random_layer(seed=5)
    q[0, 1] = 0
    q[0, 1, :, 0] = 50.0
    k[0, 0, 3, 0] = 10.0
    keep_max = select_tokens(
        "snapkv", queries=q, keys=k, capacity=9 + 1, head_aggregation="max", kernel_size=1
    )
    assert 3 in keep_max[0, 0].tolist()


@pytest.mark.parametrize(
    "sparsities,capacity,length",
    [
        ([0.9, 0.5, 0.99, 0.7], 50, 500),
        ([0.0, 0.0, 0.0], 10, 100),
        ([0.999, 0.1], 400, 500),
        ([1.0, 1.0], 5, 9),
    ],
)
def test_vlcache_budgets_sum_to_the_uniform_total_within_bounds(sparsities, capacity, length):
    budgets = allocate_budgets(sparsities, capacity, length)
    assert sum(budgets) == capacity * len(sparsities)
    assert all(1 <= b <= length for b in budgets)


def test_vlcache_gives_denser_layers_more():
    assert allocate_budgets([0.9, 0.5], 100, 1000) == [33, 167]


def test_token_layout_finds_every_image_run():
    ids = torch.tensor([[1, 9, 7, 7, 7, 8, 2, 9, 7, 7, 8, 3]])
    layout = TokenLayout.from_input_ids(ids, [7])
    assert layout.image_spans == ((2, 5), (8, 10))
    assert layout.current == (8, 10) and layout.previous == ((2, 5),)
    assert layout.text_mask().tolist() == [
        True,
        True,
        False,
        False,
        False,
        True,
        True,
        True,
        False,
        False,
        True,
        True,
    ]
    assert layout.token_kinds().tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 2, 2, 0, 0]
    assert TokenLayout.from_input_ids(torch.tensor([1, 2, 3]), [7]).image_spans == ()


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("budget", 0, r"\(0, 100\]"),
        ("budget", -5, r"\(0, 100\]"),
        ("budget", 100.5, r"\(0, 100\]"),
        ("method", "h2o", "gui_kv"),
        ("window_size", 0, ">= 1"),
        ("kernel_size", 4, "odd"),
        ("pooling", "median", "avgpool"),
        ("head_aggregation", "sum", "mean"),
        ("alpha", -1.0, ">= 0"),
        ("temperature", 0.0, "> 0"),
        ("rank", 0, ">= 1"),
        ("subspace", "pca", "qr"),
        ("sparsity_threshold", 1.5, r"\(0, 1\)"),
        ("st_lite_variant", "both", "code, paper"),
        ("star_kv_prior_lambda", 1.5, r"\[0, 1\]"),
        ("star_kv_profile_steps", -1, ">= 0"),
        ("star_kv_profile_steps", 2.5, ">= 0"),
        ("star_kv_profile_decay", 1.0, r"\[0, 1\)"),
        ("star_kv_profile_tau", 0.0, "> 0"),
        ("star_kv_lambda_ramp", 0, ">= 1"),
        ("star_kv_mi_position_bins", 0, ">= 1"),
        ("star_kv_mi_value_bins", 1, ">= 2"),
        ("star_kv_temporal", 1, "true or false"),
        ("star_kv_temporal_delta", -0.1, ">= 0"),
        ("star_kv_temporal_rho", 1.0, r"\[0, 1\)"),
        ("star_kv_temporal_eps", 1.5, r"\[0, 1\]"),
        ("star_kv_discount_min", -0.5, r"\[0, 1\]"),
        ("star_kv_temporal_warmup", -1, ">= 0"),
        ("star_kv_entropy", "yes", "true or false"),
        ("star_kv_entropy_min_scale", 0.0, "> 0"),
        ("star_kv_entropy_max_scale", 0.5, ">= 0.75"),
        ("star_kv_entropy_smooth", 1.0, r"\[0, 1\)"),
    ],
)
def test_invalid_configurations_name_the_field_and_the_allowed_values(field, value, allowed):
    with pytest.raises(ValueError, match=f"CompressionConfig.{field}=.*expected.*{allowed}"):
        CompressionConfig(**{field: value})


def test_config_round_trips_through_yaml(tmp_path):
    config = CompressionConfig(method="pyramidkv", budget=5.0, window_size=16)
    config.to_yaml(tmp_path / "c.yaml")
    assert CompressionConfig.from_yaml(tmp_path / "c.yaml") == config
    frontier = [
        CompressionConfig(method="st_lite", st_lite_variant="paper"),
        CompressionConfig(
            method="star_kv",
            star_kv_prior_lambda=0.25,
            star_kv_profile_steps=3,
            star_kv_profile_decay=0.5,
            star_kv_profile_tau=2.0,
            star_kv_lambda_ramp=4,
            star_kv_mi_position_bins=8,
            star_kv_mi_value_bins=10,
            star_kv_temporal=False,
            star_kv_temporal_delta=0.3,
            star_kv_temporal_rho=0.5,
            star_kv_temporal_eps=0.1,
            star_kv_discount_min=0.2,
            star_kv_temporal_warmup=2,
            star_kv_entropy=False,
            star_kv_entropy_min_scale=0.9,
            star_kv_entropy_max_scale=1.1,
            star_kv_entropy_smooth=0.5,
        ),
    ]
    for config in frontier:
        config.to_yaml(tmp_path / "f.yaml")
        assert CompressionConfig.from_yaml(tmp_path / "f.yaml") == config


def test_every_method_knob_reaches_the_method():
    """A method field takes the config field of its name: the frontier methods' knobs arrive."""
    from guikv.methods import build_method

    assert (
        build_method(CompressionConfig(method="st_lite", st_lite_variant="paper")).st_lite_variant == "paper"
    )
    star = build_method(CompressionConfig(method="star_kv", star_kv_temporal_rho=0.5, alpha=1.0))
    assert (star.star_kv_temporal_rho, star.alpha, star.star_kv_entropy_max_scale) == (0.5, 1.0, 1.25)
    with pytest.raises(ValueError, match=r"unknown CompressionConfig key.*budgte"):
        CompressionConfig.from_dict({"budgte": 5})


def test_select_tokens_rejects_bad_calls():
    q, k, x = random_layer()
    with pytest.raises(ValueError, match="method='h2o' is unknown: expected one of"):
        select_tokens("h2o", queries=q, keys=k, capacity=10)
    with pytest.raises(ValueError, match="needs image_spans"):
        select_tokens("gui_kv", queries=q, keys=k, hidden_states=x, capacity=10)
    with pytest.raises(ValueError, match="needs queries"):
        select_tokens("snapkv", keys=k, capacity=10)
    with pytest.raises(ValueError, match="fewer than window_size"):
        select_tokens("snapkv", queries=q, keys=k, capacity=8)
    with pytest.raises(ValueError, match="capacity=0"):
        select_tokens("snapkv", queries=q, keys=k, capacity=0)
    with pytest.raises(ValueError, match="unknown parameter"):
        select_tokens("snapkv", queries=q, keys=k, capacity=10, beta=2)
    with pytest.raises(ValueError, match="window rows"):
        select_tokens("vlcache", queries=q, keys=k, image_spans=[(0, 50)], capacity=20)


def test_token_layout_carries_one_checked_grid_per_image():
    layout = TokenLayout(20, ((2, 8), (10, 16)))
    assert layout.grid(-1) is None
    gridded = layout.with_grids([(2, 3), (3, 2)])
    assert gridded.grids == ((2, 3), (3, 2)) and gridded.grid(-1) == (3, 2) and gridded.grid(0) == (2, 3)
    assert layout.with_grids([None, (2, 3)]).grid(0) is None
    with pytest.raises(ValueError, match=r"1 image grid.*for 2 image span"):
        layout.with_grids([(2, 3)])
    with pytest.raises(ValueError, match=r"image grid 2x2 does not fit the image span \[2, 8\) of 6 tokens"):
        layout.with_grids([(2, 2), (2, 3)])


def test_grids_come_from_image_grid_thw_or_mrope_positions():
    thw = torch.tensor([[1, 26, 46], [2, 4, 6]])
    assert grids_from_thw(thw, 2) == ((13, 23), None)
    positions = torch.zeros(3, 1, 12, dtype=torch.long)
    positions[:, 0, :2] = torch.arange(2)
    rows, cols = torch.meshgrid(torch.arange(2), torch.arange(3), indexing="ij")
    positions[0, 0, 2:8] = 2
    positions[1, 0, 2:8] = rows.reshape(-1) + 2
    positions[2, 0, 2:8] = cols.reshape(-1) + 2
    positions[:, 0, 8:] = torch.arange(5, 9)
    assert grids_from_positions(positions, [(2, 8)]) == ((2, 3),)
    with_text_row = torch.cat([torch.arange(12).view(1, 1, 12), positions])
    assert grids_from_positions(with_text_row, [(2, 8)]) == ((2, 3),)
    assert grids_from_positions(torch.arange(12).view(1, 12), [(2, 8)]) is None
    layout = TokenLayout(12, ((2, 8),))
    assert layout.with_grids_from(position_ids=positions).grids == ((2, 3),)
    assert layout.with_grids_from(image_grid_thw=torch.tensor([[1, 6, 4]]), merge_size=2).grids == ((3, 2),)
    assert layout.with_grids_from() == layout
    two_images = torch.tensor([[1, 6, 4], [1, 4, 4]])
    assert layout.with_grids_from(image_grid_thw=two_images, merge_size=2, position_ids=positions).grids == (
        (2, 3),
    )
    assert layout.with_grids_from(image_grid_thw=two_images, merge_size=2) == layout
    with pytest.raises(ValueError, match="does not fit"):
        layout.with_grids_from(image_grid_thw=torch.tensor([[1, 8, 4]]), merge_size=2)


def test_compress_reads_each_screenshot_grid_at_prefill(tiny_sdpa, make_inputs):
    """Through generate() (transformers >= 5.24 encodes images before the forward, which then sees
    M-RoPE positions only) and through a plain forward (which sees image_grid_thw)."""
    model, processor = tiny_sdpa
    inputs = make_inputs(processor, 2, size=(640, 360))
    assert spatial_merge_size(model.config) == 2
    expected = tuple((h // 2, w // 2) for _, h, w in inputs["image_grid_thw"].tolist())
    assert expected[0][0] != expected[0][1]
    config = CompressionConfig(method="st_lite", budget=20)
    with compress(model, config) as generated:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    with torch.no_grad(), compress(model, config) as forward:
        model(**inputs, use_cache=True)
    assert generated.layout.grids == forward.layout.grids == expected
    assert generated.layout.image_spans == forward.layout.image_spans


@pytest.mark.parametrize("method", ["st_lite", "star_kv"])
def test_chunked_prefill_of_screenshots_equals_the_unchunked_run_for_the_frontier_methods(
    tiny_eager, make_inputs, method: str
):
    generation = pytest.importorskip("transformers.generation.utils")
    if not hasattr(generation, "_slice_mm_encoder_output"):
        pytest.skip("this transformers cannot chunk a multimodal prefill")
    model, processor = tiny_eager
    inputs = make_inputs(processor, 2)
    config = CompressionConfig(method=method, budget=20)
    settings = {"max_new_tokens": 4, "do_sample": False, "return_dict_in_generate": True}
    with compress(model, config, record_positions=True) as whole:
        reference = model.generate(**inputs, **settings)
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    chunk_inputs = {key: value for key, value in inputs.items() if key != "pixel_values"}
    with compress(model, config, record_positions=True, chunked_prefill=True) as chunked:
        out = model.generate(
            **chunk_inputs, mm_encoder_outputs={"image": features}, prefill_chunk_size=128, **settings
        )
    assert chunked.layout == whole.layout and whole.layout.grids
    for kept, expected in zip(chunked.kept_positions, whole.kept_positions, strict=True):
        assert torch.equal(kept, expected)
    assert torch.equal(out.sequences, reference.sequences)
