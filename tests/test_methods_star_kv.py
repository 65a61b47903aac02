"""STaR-KV pinned to a reference written from its release (`kawhiiiileo/STaR-KV`, `starkv/`:
`starkv_group_cluster.py::update_kv`, `starkv_mi.py`, `starkv_temporal.py`, `starkv_aeb.py`) over
a sequence of prefills (the online profile, the lambda ramp and the temporal EMA carry over), with
H == H_kv and with GQA; its shared indices; the entropy sharpening's no-op claim; and its state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from guikv import CompressionConfig, compress, select_tokens
from guikv.layout import TokenLayout
from guikv.methods import build_method
from guikv.methods.base import LayerContext
from guikv.methods.gui_kv import spatial_saliency
from guikv.methods.snapkv import SnapKV
from guikv.methods.star_kv import StarKVState, mutual_information, position_bins

WINDOW = 8
DEFAULTS = {
    "alpha": 2.0,
    "temperature": 3.5,
    "lam": 0.5,
    "steps": 5,
    "decay": 0.9,
    "tau": 1.0,
    "ramp": 10,
    "aeb": True,
    "aeb_min": 0.75,
    "aeb_max": 1.25,
    "aeb_smooth": 0.0,
    "temporal": True,
    "delta": 0.1,
    "rho": 0.9,
    "eps": 0.0,
    "dmin": 0.0,
    "warmup": 0,
}


def release_mi(
    p: np.ndarray, row_bins: np.ndarray, col_bins: np.ndarray, n_bins: int = 12, n_val: int = 16
) -> float:
    """`strict_mi_score_2d`, with its counting loop."""
    n = p.size
    if n <= 1:
        return 0.0
    y_bins = row_bins * n_bins + col_bins
    if np.unique(y_bins).size <= 1:
        return 0.0
    order = np.argsort(p)
    rank = np.empty_like(order)
    rank[order] = np.arange(n)
    a_bins = np.clip(np.floor(rank.astype(np.float64) * n_val / float(n)).astype(np.int64), 0, n_val - 1)
    if np.unique(a_bins).size <= 1:
        return 0.0
    joint = np.zeros((n_val, n_bins * n_bins))
    for a, y in zip(a_bins, y_bins, strict=True):
        joint[a, y] += 1.0
    joint /= joint.sum()
    pa = joint.sum(axis=1, keepdims=True)
    py = joint.sum(axis=0, keepdims=True)
    return max(0.0, float(np.sum(joint * (np.log(joint + 1e-12) - np.log(pa @ py + 1e-12)))))


def release_bins(v_len: int, grid=None, n_bins: int = 12):
    """`mi_from_group_scores`'s position bins from the release's sqrt-grid guess (or a given grid)."""
    if grid is None:
        grid_h = max(1, round(math.sqrt(float(v_len))))
        grid = (grid_h, (v_len + grid_h - 1) // grid_h)
    grid_h, grid_w = grid
    rows, cols = [], []
    for off in range(v_len):
        y = (off // grid_w + 0.5) / float(grid_h)
        x = (off % grid_w + 0.5) / float(grid_w)
        rows.append(max(0, min(n_bins - 1, math.floor(y * n_bins))))
        cols.append(max(0, min(n_bins - 1, math.floor(x * n_bins))))
    return np.array(rows), np.array(cols)


class ReleaseStarKV:
    """One layer of the release: `parent` holds what the release keeps on the attention module
    (profile step, MI EMA, temporal step, pattern EMA) and on the cluster (AEB temperature)."""

    def __init__(self, **knobs):
        self.k = {**DEFAULTS, **knobs}
        self.parent: dict = {
            "profile_step": 0,
            "mi_ema": None,
            "temporal_step": 0,
            "pattern": None,
            "aeb_t": None,
        }

    def update(self, q, k, x, spans, capacity, grid=None):
        c, parent = self.k, self.parent
        heads, dim = q.shape[1], q.shape[-1]
        groups = heads // k.shape[1]
        n_kv = heads // groups
        keys = k.repeat_interleave(groups, dim=1)
        if c["temporal"]:
            parent["temporal_step"] += 1
        weights = q @ keys.transpose(2, 3) / math.sqrt(dim)
        mask = torch.full((WINDOW, WINDOW), torch.finfo(weights.dtype).min)
        cond = torch.arange(WINDOW)
        mask.masked_fill_(cond < (cond + 1).view(WINDOW, 1), 0)
        weights[:, :, -WINDOW:, -WINDOW:] += mask
        weights = torch.softmax(weights, dim=-1, dtype=torch.float32)
        cache = F.avg_pool1d(
            weights[:, :, -WINDOW:, :-WINDOW].sum(dim=-2), kernel_size=5, padding=2, stride=1
        )
        past = cache.shape[-1]
        vis = [(max(0, min(s, past)), max(min(s, past), min(e, past))) for s, e in spans]
        vis = [(s, e) for s, e in vis if e > s]
        v_s, v_e = vis[-1]
        if c["alpha"] > 0:
            norms = torch.norm(x[:, v_s:v_e], p=2, dim=-1)[0]
            standard = (norms - norms.mean()) / (norms.std() + 1e-8)
            cache[:, :, v_s:v_e] += torch.softmax(standard / c["temperature"], dim=0) * c["alpha"]
        temp = None
        if c["aeb"]:
            score = cache.mean(dim=1)
            p = score / score.sum(dim=-1, keepdim=True).clamp_min(1e-8)
            entropy = -(p * torch.log(p + 1e-8)).sum(dim=-1)
            t = c["aeb_min"] + (c["aeb_max"] - c["aeb_min"]) * entropy / (math.log(max(1, past)) + 1e-8)
            if c["aeb_smooth"] > 0 and parent["aeb_t"] is not None:
                t = c["aeb_smooth"] * parent["aeb_t"] + (1 - c["aeb_smooth"]) * t
            temp = parent["aeb_t"] = t.mean().item()
        ac = cache[0]
        S = torch.stack([ac[g * groups : (g + 1) * groups].mean(dim=0) for g in range(n_kv)])
        uniform = torch.full((n_kv,), 1.0 / n_kv)
        if c["steps"] <= 0:
            w_g, lam = uniform, c["lam"]
        else:
            parent["profile_step"] += 1
            step = parent["profile_step"]
            rows, cols = release_bins(v_e - v_s, grid)
            mi_cur = []
            for g in range(n_kv):
                p = S[g, v_s:v_e].float().clamp_min(0)
                mi_cur.append(0.0 if p.sum() <= 1e-12 else release_mi((p / p.sum()).numpy(), rows, cols))
            mi_cur = torch.tensor(mi_cur)
            prev = parent["mi_ema"]
            parent["mi_ema"] = mi_cur if prev is None else c["decay"] * prev + (1 - c["decay"]) * mi_cur
            lam = (
                0.0
                if step <= c["steps"]
                else c["lam"] * min(1.0, float(step - c["steps"]) / float(c["ramp"]))
            )
            mi = parent["mi_ema"]
            s = (
                torch.full_like(mi, 0.5)
                if float(mi.max() - mi.min()) < 1e-12
                else (mi - mi.min()) / (mi.max() - mi.min())
            )
            w_g = torch.softmax(s / c["tau"], dim=0)
            w_g = w_g / w_g.sum().clamp_min(1e-8)
        base = ac.mean(dim=0)
        g_star = S.argmax(dim=0)
        scaled = base * ((1.0 - lam) + lam * w_g[g_star] * float(n_kv))
        if c["temporal"] and len(vis) > 1:
            a_cur = S[:, v_s:v_e].clamp_min(0)
            a_cur = a_cur / a_cur.sum(dim=-1, keepdim=True).clamp_min(1e-8)
            prev = parent["pattern"]
            m = (
                c["rho"] * prev + (1 - c["rho"]) * a_cur
                if prev is not None and prev.shape == a_cur.shape
                else a_cur
            )
            parent["pattern"] = m
            stab = F.cosine_similarity(a_cur, m, dim=-1, eps=1e-8).clamp(0.0, 1.0)
            delta = torch.zeros(past)
            for i, (s, e) in enumerate(vis):
                delta[s:e] = float(len(vis) - 1 - i)
            phi = c["eps"] + (1 - c["eps"]) * stab[g_star]
            d = c["dmin"] + (1 - c["dmin"]) * torch.exp(-c["delta"] * delta * phi)
            if parent["temporal_step"] > c["warmup"]:
                scaled = scaled * d
        if temp is not None and temp > 0:
            scaled = scaled.clamp(min=0.0) ** (1.0 / temp)
        top = torch.topk(scaled, capacity - WINDOW).indices.sort().values
        return torch.cat([top, torch.arange(past, past + WINDOW)]), lam


SPANS = [(4, 104), (110, 210), (220, 640)]  # 10 x 10, 10 x 10, then the current 15 x 28 screenshot
LENGTH = 680


def prefills(seed: int, heads: int, kv_heads: int, count: int, length: int = LENGTH, dim: int = 16):
    """`count` prefills of the same shape (the same screen layout each step, new content)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        yield (
            torch.randn(1, heads, WINDOW, dim, generator=generator),
            torch.randn(1, kv_heads, length, dim, generator=generator),
            torch.randn(1, length, 24, generator=generator),
        )


def star_kv(**overrides) -> object:
    return build_method(CompressionConfig(method="star_kv", **overrides))


def context(q, k, x, capacity, spans=SPANS, grids=(), layer_idx=0) -> LayerContext:
    layout = TokenLayout(k.shape[2], tuple(spans)).with_grids(grids)
    return LayerContext(
        keys=k, layout=layout, capacity=capacity, layer_idx=layer_idx, queries=q, hidden_states=x
    )


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
def test_star_kv_equals_the_release_over_a_sequence_of_prefills(heads, kv_heads):
    """Eighteen prefills: five profile steps (lambda 0), the ramp, then the full prior; the MI EMA,
    temporal pattern EMA and entropy temperature carry over, with GQA groups as the release forms them."""
    ours, release = star_kv(), ReleaseStarKV()
    lambdas = []
    for step, (q, k, x) in enumerate(prefills(seed=heads, heads=heads, kv_heads=kv_heads, count=18)):
        capacity = (60, 130, 250)[step % 3]
        keep = ours.select(context(q, k, x, capacity))
        expected, lam = release.update(q, k, x, SPANS, capacity)
        lambdas.append(lam)
        assert keep.shape == (1, kv_heads, capacity)
        for head in range(kv_heads):
            assert torch.equal(keep[0, head], expected), (step, head)
        layer = ours.state.layer(0)
        assert layer.prior_lambda == pytest.approx(lam)
        assert torch.allclose(layer.mi_ema, release.parent["mi_ema"].float(), atol=1e-5)
        assert torch.allclose(layer.pattern_ema, release.parent["pattern"], atol=1e-6)
        assert layer.entropy_temperature == pytest.approx(release.parent["aeb_t"], rel=1e-5)
    assert (
        lambdas[:5] == [0.0] * 5 and lambdas[5] == pytest.approx(0.05) and lambdas[-1] == pytest.approx(0.5)
    )


@pytest.mark.parametrize(
    "knobs,release_knobs",
    [
        (
            {"star_kv_profile_steps": 1, "star_kv_lambda_ramp": 1, "star_kv_prior_lambda": 1.0},
            {"steps": 1, "ramp": 1, "lam": 1.0},
        ),
        (
            {"star_kv_temporal_eps": 0.3, "star_kv_discount_min": 0.2, "star_kv_temporal_delta": 2.0},
            {"eps": 0.3, "dmin": 0.2, "delta": 2.0},
        ),
        ({"star_kv_temporal_warmup": 2, "star_kv_temporal_rho": 0.5}, {"warmup": 2, "rho": 0.5}),
        (
            {"star_kv_entropy_smooth": 0.5, "star_kv_profile_decay": 0.3, "star_kv_profile_tau": 0.2},
            {"aeb_smooth": 0.5, "decay": 0.3, "tau": 0.2},
        ),
        (
            {"alpha": 0.0, "star_kv_temporal": False, "star_kv_entropy": False, "star_kv_profile_steps": 0},
            {"alpha": 0.0, "temporal": False, "aeb": False, "steps": 0},
        ),
    ],
)
def test_every_star_kv_knob_does_what_the_release_does(knobs, release_knobs):
    ours, release = star_kv(**knobs), ReleaseStarKV(**release_knobs)
    for step, (q, k, x) in enumerate(prefills(seed=11, heads=4, kv_heads=2, count=6)):
        capacity = 80 + 20 * step
        assert torch.equal(
            ours.select(context(q, k, x, capacity))[0, 0], release.update(q, k, x, SPANS, capacity)[0]
        )


def test_star_kv_keeps_one_set_of_positions_for_all_heads():
    q, k, x = next(prefills(seed=3, heads=8, kv_heads=4, count=1))
    keep = select_tokens("star_kv", queries=q, keys=k, hidden_states=x, image_spans=SPANS, capacity=100)
    assert keep.shape == (1, 4, 100)
    assert all(torch.equal(keep[0, head], keep[0, 0]) for head in range(4))
    assert torch.all(keep[0, 0, 1:] > keep[0, 0, :-1])


def test_entropy_sharpening_never_changes_the_kept_positions():
    """scaled ** (1 / T) with scaled >= 0 and T > 0 is strictly increasing, so the top-k is the same
    with and without it, at every step of a sequence (the temperature differs from step to step)."""
    sharp, plain = star_kv(star_kv_entropy=True), star_kv(star_kv_entropy=False)
    temperatures = set()
    for step, (q, k, x) in enumerate(prefills(seed=5, heads=4, kv_heads=2, count=8)):
        capacity = 60 + 30 * step
        assert torch.equal(sharp.select(context(q, k, x, capacity)), plain.select(context(q, k, x, capacity)))
        temperatures.add(round(sharp.state.layer(0).entropy_temperature, 6))
        assert 0.75 <= sharp.state.layer(0).entropy_temperature <= 1.25
    assert len(temperatures) > 1


def test_the_mi_prior_changes_the_kept_positions_once_the_profile_has_run():
    """After the profile steps, the prior re-weights positions by their winning group: the selection
    differs from the prior-free one (lambda 0), which the release would have run as lambda 0.5."""
    with_prior = star_kv(star_kv_profile_steps=1, star_kv_lambda_ramp=1, star_kv_prior_lambda=1.0)
    without = star_kv(star_kv_profile_steps=1, star_kv_lambda_ramp=1, star_kv_prior_lambda=0.0)
    differ = []
    for q, k, x in prefills(seed=9, heads=4, kv_heads=4, count=4):
        a = with_prior.select(context(q, k, x, 100))
        differ.append(not torch.equal(a, without.select(context(q, k, x, 100))))
    assert differ[0] is False and any(differ[1:])
    assert without.state.layer(0).prior_lambda == 0.0


def test_mutual_information_matches_the_release_and_is_zero_without_structure():
    """400 tokens in 144 position bins: attention that rises down the screen carries more position
    information than noise; no attention mass, or a single position bin, carries none."""
    generator = torch.Generator().manual_seed(4)
    values = torch.rand(3, 400, generator=generator)
    values[1] = torch.arange(400, dtype=torch.float32)
    values[2] = 0.0
    bins = position_bins(400, None, 12)
    rows, cols = release_bins(400)
    assert bins.tolist() == (rows * 12 + cols).tolist()
    ours = mutual_information(values, bins, 144, 16)
    for g in range(2):
        p = values[g] / values[g].sum()
        assert ours[g].item() == pytest.approx(release_mi(p.numpy(), rows, cols), rel=1e-6)
    assert ours[1] > ours[0] > 0 and ours[2] == 0.0
    assert mutual_information(values, torch.zeros(400, dtype=torch.long), 144, 16).tolist() == [0.0] * 3


def test_position_bins_use_the_true_grid_where_the_release_guessed():
    """A 4 x 10 screenshot: the release's guess (6 rows of 7) puts token 9 (the top-right corner) in
    its second row, third column; the true grid keeps it in the top row, last column. On a 15 x 28
    screenshot the MI profile follows the true grid as the release's code would given that grid."""
    guessed, true = position_bins(40, None, 12), position_bins(40, (4, 10), 12)
    assert divmod(int(true[9]), 12) == (1, 11)
    assert divmod(int(guessed[9]), 12) == (3, 4)
    rows, cols = release_bins(40, (4, 10))
    assert true.tolist() == (rows * 12 + cols).tolist()
    grids = [(10, 10), (10, 10), (15, 28)]
    ours, release = star_kv(star_kv_profile_steps=1, star_kv_lambda_ramp=1), ReleaseStarKV(steps=1, ramp=1)
    for q, k, x in prefills(seed=6, heads=4, kv_heads=2, count=3):
        expected = release.update(q, k, x, SPANS, 100, grid=(15, 28))[0]
        assert torch.equal(ours.select(context(q, k, x, 100, grids=grids))[0, 0], expected)
    guess = star_kv(star_kv_profile_steps=1, star_kv_lambda_ramp=1)
    for q, k, x in prefills(seed=6, heads=4, kv_heads=2, count=3):
        guess.select(context(q, k, x, 100))
    assert not torch.allclose(guess.state.layer(0).mi_ema, ours.state.layer(0).mi_ema)


def test_state_is_per_method_object_and_can_be_continued_or_restored():
    sequence = list(prefills(seed=8, heads=4, kv_heads=2, count=9))
    whole = star_kv()
    kept = [whole.select(context(q, k, x, 100)) for q, k, x in sequence]
    first = star_kv()
    for q, k, x in sequence[:6]:
        first.select(context(q, k, x, 100))
    restored = StarKVState.from_dict(first.state.to_dict())
    config = CompressionConfig(method="star_kv")
    for state in (first.state, restored):
        continued = build_method(config, state=state)
        for (q, k, x), expected in zip(sequence[6:], kept[6:], strict=True):
            assert torch.equal(continued.select(context(q, k, x, 100)), expected)
        state_after = continued.state.layer(0)
        assert state_after.profile_steps == 9
    assert star_kv().state.layers == {}
    with pytest.raises(ValueError, match="keeps no state"):
        build_method(CompressionConfig(method="snapkv"), state=first.state)


def test_compress_keeps_one_profile_per_context_and_reports_it(tiny_sdpa, make_inputs):
    model, processor = tiny_sdpa
    inputs = make_inputs(processor, 2)
    layers = model.config.text_config.num_hidden_layers
    config = CompressionConfig(method="star_kv", budget=20)
    with compress(model, config) as report:
        for _ in range(3):
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
    state = report.method_state
    assert sorted(state.layers) == list(range(layers))
    assert all(layer.profile_steps == 3 and layer.temporal_steps == 3 for layer in state.layers.values())
    assert report.layout.grids == tuple(
        (int(h) // 2, int(w) // 2) for _, h, w in inputs["image_grid_thw"].tolist()
    )
    with compress(model, config) as again:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert all(layer.profile_steps == 1 for layer in again.method_state.layers.values())
    with compress(model, CompressionConfig(method="gui_kv", budget=20)) as stateless:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert stateless.method_state is None


def test_a_fresh_state_with_one_screenshot_is_shared_head_mean_snapkv_plus_saliency():
    """What the release ran on ScreenSpot, where it resets the state before every sample: the first
    prefill has lambda_eff 0, one screenshot has no temporal term, and sharpening ranks nothing, so
    STaR-KV is the top-k of the head mean of SnapKV + GUI-KV saliency, shared by all heads."""
    q, k, x = next(prefills(seed=12, heads=6, kv_heads=2, count=1))
    span = [(220, 640)]
    keep = select_tokens("star_kv", queries=q, keys=k, hidden_states=x, image_spans=span, capacity=120)
    pooled = SnapKV().window_scores(context(q, k, x, 120, spans=span), WINDOW)
    pooled[..., 220:640] += 2.0 * spatial_saliency(x, (220, 640), 3.5)[:, None]
    top = pooled.mean(dim=1).topk(120 - WINDOW).indices.sort().values[0]
    expected = torch.cat([top, torch.arange(LENGTH - WINDOW, LENGTH)])
    assert all(torch.equal(keep[0, head], expected) for head in range(2))
