"""STaR-KV: SnapKV window scores plus GUI-KV's saliency, re-weighted by an online mutual-information
prior over KV groups, discounted on history screenshots by a temporal stability term, sharpened by
an entropy-adaptive power, and cut with one set of positions shared by all heads (arXiv 2606.01790,
release `kawhiiiileo/STaR-KV`, `starkv/`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from guikv.layout import Grid, Span
from guikv.methods.base import LayerContext
from guikv.methods.gui_kv import spatial_saliency
from guikv.methods.snapkv import SnapKV


@dataclass
class StarKVLayerState:
    """What one layer carries from prefill to prefill: the MI profile (prefills seen, EMA of each
    KV group's mutual information), the temporal pattern (prefills seen, EMA of each group's
    normalised attention over the current screenshot) and the entropy temperature, plus the
    effective prior weight lambda of the last prefill (for the report)."""

    profile_steps: int = 0
    mi_ema: torch.Tensor | None = None
    temporal_steps: int = 0
    pattern_ema: torch.Tensor | None = None
    entropy_temperature: float | None = None
    prior_lambda: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tensors as nested lists)."""
        return {
            "profile_steps": self.profile_steps,
            "mi_ema": None if self.mi_ema is None else self.mi_ema.tolist(),
            "temporal_steps": self.temporal_steps,
            "pattern_ema": None if self.pattern_ema is None else self.pattern_ema.tolist(),
            "entropy_temperature": self.entropy_temperature,
            "prior_lambda": self.prior_lambda,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StarKVLayerState:
        """The inverse of `to_dict` (tensors on the CPU, fp32)."""
        tensors = {
            key: None if data[key] is None else torch.tensor(data[key], dtype=torch.float32)
            for key in ("mi_ema", "pattern_ema")
        }
        return cls(
            profile_steps=int(data["profile_steps"]),
            temporal_steps=int(data["temporal_steps"]),
            entropy_temperature=data["entropy_temperature"],
            prior_lambda=float(data["prior_lambda"]),
            **tensors,
        )


@dataclass
class StarKVState:
    """STaR-KV's online state, per layer. It lives as long as the method object: one `compress()`
    context (a new context starts empty) unless a state is handed to `build_method` to continue."""

    layers: dict[int, StarKVLayerState] = field(default_factory=dict)

    def layer(self, index: int) -> StarKVLayerState:
        """Layer `index`'s state, created empty on first use."""
        return self.layers.setdefault(index, StarKVLayerState())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, keyed by layer index (as a string)."""
        return {str(index): layer.to_dict() for index, layer in sorted(self.layers.items())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StarKVState:
        """The inverse of `to_dict`."""
        return cls({int(index): StarKVLayerState.from_dict(layer) for index, layer in data.items()})


@dataclass(frozen=True)
class StarKV(SnapKV):
    """STaR-KV as its release computes it, with the release's defaults.

    Per layer, at each prefill (all in fp32; the release scores in the model's bf16):
    1. A = pooled window attention per query head, plus `alpha * softmax(z(norm h) / temperature)`
       on the current screenshot (GUI-KV's saliency);
    2. S[g] = mean of A over the query heads of KV group g;
    3. MI prior: each group's mutual information between its attention over the current screenshot
       (`star_kv_mi_value_bins` rank bins) and the token's screen position
       (`star_kv_mi_position_bins`^2 bins), kept as an EMA (`star_kv_profile_decay`) across this
       layer's prefills; weights w = softmax(minmax(EMA) / tau). lambda_eff is 0 for the first
       `star_kv_profile_steps` prefills, then ramps linearly to `star_kv_prior_lambda` over
       `star_kv_lambda_ramp` prefills. Positions use the screenshot's true grid when the layout
       has it; the release guesses rows = round(sqrt n), columns = ceil(n / rows), which we keep
       only when the grid is unknown;
    4. scaled = mean_h(A) * ((1 - lambda_eff) + lambda_eff * w[g*] * H_kv), g* = argmax_g S;
    5. temporal discount (with >= 2 screenshots): each group's normalised attention pattern over
       the current screenshot against its EMA (`star_kv_temporal_rho`) gives a stability; a token k
       screenshots back is multiplied by D = dmin + (1 - dmin) * exp(-delta * k * phi), phi =
       eps + (1 - eps) * stability[g*] (skipped during `star_kv_temporal_warmup` prefills);
    6. entropy sharpening: T between the scale bounds from the normalised entropy of mean_h(A),
       scaled <- clamp(scaled, 0) ** (1 / T). A positive power is strictly increasing and the scores
       are non-negative, so this never changes which positions win the top-k (tested); it is kept so
       the temperature the release computes is reported;
    7. one set of positions for all KV heads: top (C - w) of scaled plus the window.

    State (step counts, EMAs, temperature) is per layer in `state` and accumulates over the
    prefills this object scores, so results depend on sample order. The release resets it before
    each sample (ScreenSpot), each trajectory (AgentNetBench) or each episode (AndroidControl with
    history frames), except its entropy-temperature EMA, which leaks across samples (harmless at its
    default smoothing 0); ours resets with everything else. `star_kv_prior_lambda=0` means no prior
    (the release silently turned a 0 into 0.5). `head_aggregation` does not apply: STaR-KV's own
    group means and head mean are the aggregation. A prompt the budget keeps whole is not scored, so
    it does not advance the state (the release scores it, then keeps everything). Like every method
    here, a capacity below window + 1 is refused where the release shrank the window to C - 2.
    """

    name: ClassVar[str] = "star_kv"
    needs_images: ClassVar[bool] = True

    alpha: float = 2.0
    temperature: float = 3.5
    star_kv_prior_lambda: float = 0.5
    star_kv_profile_steps: int = 5
    star_kv_profile_decay: float = 0.9
    star_kv_profile_tau: float = 1.0
    star_kv_lambda_ramp: int = 10
    star_kv_mi_position_bins: int = 12
    star_kv_mi_value_bins: int = 16
    star_kv_temporal: bool = True
    star_kv_temporal_delta: float = 0.1
    star_kv_temporal_rho: float = 0.9
    star_kv_temporal_eps: float = 0.0
    star_kv_discount_min: float = 0.0
    star_kv_temporal_warmup: int = 0
    star_kv_entropy: bool = True
    star_kv_entropy_min_scale: float = 0.75
    star_kv_entropy_max_scale: float = 1.25
    star_kv_entropy_smooth: float = 0.0
    state: StarKVState = field(default_factory=StarKVState, compare=False, repr=False)

    def score(self, ctx: LayerContext, window: int) -> torch.Tensor:
        """The shared score of every prefix position, repeated for each KV head: [B, H_kv, L - w]."""
        pooled = self.window_scores(ctx, window)
        prefix = pooled.shape[-1]
        spans = clipped_spans(ctx.layout.image_spans, prefix)
        if not spans:
            raise ValueError(f"method {self.name!r} needs image tokens before the window: none were found")
        current = spans[-1]
        if self.alpha > 0:
            if ctx.hidden_states is None:
                raise ValueError(f"method {self.name!r} needs the layer's hidden_states for saliency")
            saliency = spatial_saliency(ctx.hidden_states, current, self.temperature)
            pooled[..., current[0] : current[1]] += self.alpha * saliency[:, None]
        layer = self.state.layer(ctx.layer_idx)
        if self.star_kv_temporal:
            layer.temporal_steps += 1
        sharpening = self.entropy_temperature(pooled, layer) if self.star_kv_entropy else None
        grid = ctx.layout.grid(-1) if current == ctx.layout.current else None
        rows = []
        for row in pooled:
            groups = row.view(ctx.num_kv_heads, -1, prefix).mean(dim=1)
            weights, prior = self.mi_prior(groups, current, grid, layer)
            winner = groups.argmax(dim=0)
            scaled = row.mean(dim=0) * ((1.0 - prior) + prior * weights[winner] * ctx.num_kv_heads)
            scaled = self.temporal_discount(scaled, groups, spans, winner, layer)
            if sharpening is not None:
                scaled = scaled.clamp(min=0.0) ** (1.0 / sharpening)
            rows.append(scaled)
        return torch.stack(rows)[:, None].expand(-1, ctx.num_kv_heads, -1)

    def mi_prior(
        self, groups: torch.Tensor, current: Span, grid: Grid | None, layer: StarKVLayerState
    ) -> tuple[torch.Tensor, float]:
        """Group weights w [H_kv] (summing to 1) and lambda_eff; updates the layer's MI profile."""
        uniform = groups.new_full((groups.shape[0],), 1.0 / groups.shape[0])
        if self.star_kv_profile_steps <= 0:
            return uniform, self.star_kv_prior_lambda
        layer.profile_steps += 1
        bins = self.star_kv_mi_position_bins
        positions = position_bins(current[1] - current[0], grid, bins).to(groups.device)
        information = mutual_information(
            groups[:, current[0] : current[1]], positions, bins * bins, self.star_kv_mi_value_bins
        )
        decay = self.star_kv_profile_decay
        previous = layer.mi_ema
        fresh = previous is None or previous.shape != information.shape
        layer.mi_ema = (
            information if fresh else decay * previous.to(information) + (1.0 - decay) * information
        )
        beyond = layer.profile_steps - self.star_kv_profile_steps
        layer.prior_lambda = (
            0.0 if beyond <= 0 else self.star_kv_prior_lambda * min(1.0, beyond / self.star_kv_lambda_ramp)
        )
        return group_weights(layer.mi_ema, self.star_kv_profile_tau), layer.prior_lambda

    def temporal_discount(
        self,
        scaled: torch.Tensor,
        groups: torch.Tensor,
        spans: tuple[Span, ...],
        winner: torch.Tensor,
        layer: StarKVLayerState,
    ) -> torch.Tensor:
        """Discount older screenshots' tokens by how stable the winning group's attention pattern
        over the current screenshot has been; updates the layer's pattern EMA."""
        if not self.star_kv_temporal or len(spans) < 2:
            return scaled
        start, end = spans[-1]
        pattern = groups[:, start:end].clamp(min=0.0)
        pattern = pattern / pattern.sum(dim=-1, keepdim=True).clamp(min=1e-8)
        rho, previous = self.star_kv_temporal_rho, layer.pattern_ema
        fresh = previous is None or previous.shape != pattern.shape
        layer.pattern_ema = pattern if fresh else rho * previous.to(pattern) + (1.0 - rho) * pattern
        stability = F.cosine_similarity(pattern, layer.pattern_ema, dim=-1, eps=1e-8).clamp(0.0, 1.0)
        if layer.temporal_steps <= self.star_kv_temporal_warmup:
            return scaled
        distance = torch.zeros_like(scaled)
        for index, (span_start, span_end) in enumerate(spans):
            distance[span_start:span_end] = len(spans) - 1 - index
        eps, floor = self.star_kv_temporal_eps, self.star_kv_discount_min
        phi = eps + (1.0 - eps) * stability[winner]
        return scaled * (floor + (1.0 - floor) * torch.exp(-self.star_kv_temporal_delta * distance * phi))

    def entropy_temperature(self, pooled: torch.Tensor, layer: StarKVLayerState) -> float:
        """T in [min, max scale] from the normalised entropy of the head-mean scores (smoothed with
        the layer's previous T when `star_kv_entropy_smooth` > 0)."""
        score = pooled.mean(dim=1)
        probabilities = score / score.sum(dim=-1, keepdim=True).clamp(min=1e-8)
        entropy = -(probabilities * torch.log(probabilities + 1e-8)).sum(dim=-1)
        normalised = entropy / (math.log(max(1, score.shape[-1])) + 1e-8)
        low, high = self.star_kv_entropy_min_scale, self.star_kv_entropy_max_scale
        temperature = low + (high - low) * normalised
        smooth = self.star_kv_entropy_smooth
        if smooth > 0 and layer.entropy_temperature is not None:
            temperature = smooth * layer.entropy_temperature + (1 - smooth) * temperature
        layer.entropy_temperature = float(temperature.mean())
        return layer.entropy_temperature


def clipped_spans(spans: tuple[Span, ...], prefix: int) -> tuple[Span, ...]:
    """Image spans cut to the scored prefix [0, prefix), empty ones dropped (as the release does)."""
    clipped = ((min(start, prefix), min(end, prefix)) for start, end in spans)
    return tuple((start, end) for start, end in clipped if end > start)


def position_bins(tokens: int, grid: Grid | None, bins: int) -> torch.Tensor:
    """Each screenshot token's screen-position bin, row bin * `bins` + column bin, from the centre of
    its grid cell; without a grid, the release's guess (rows = round(sqrt n), cols = ceil(n / rows))."""
    if grid is None:
        rows = max(1, round(math.sqrt(tokens)))
        grid = (rows, (tokens + rows - 1) // rows)
    rows, cols = grid
    offsets = torch.arange(tokens, dtype=torch.float64)
    row = (
        ((torch.div(offsets, cols, rounding_mode="floor") + 0.5) / rows * bins)
        .floor()
        .long()
        .clamp(0, bins - 1)
    )
    col = ((torch.remainder(offsets, cols) + 0.5) / cols * bins).floor().long().clamp(0, bins - 1)
    return row * bins + col


def mutual_information(
    values: torch.Tensor, positions: torch.Tensor, position_bins_total: int, value_bins: int
) -> torch.Tensor:
    """Per group, the mutual information (nats) between the rank bin of its attention to each token
    (`value_bins` equal-count bins) and the token's position bin: [G] from values [G, n].

    0 for a group with no attention mass, and for all groups when fewer than two tokens or only one
    position bin occur. With n >= 2 tokens and >= 2 value bins, the ranks always fill >= 2 bins.
    """
    groups, tokens = values.shape
    information = values.new_zeros(groups, dtype=torch.float32)
    if tokens <= 1 or positions.unique().numel() <= 1:
        return information
    clamped = values.float().clamp(min=0.0)
    ranks = clamped.argsort(dim=-1, stable=True).argsort(dim=-1)
    value_bin = (ranks.double() * value_bins / tokens).floor().long().clamp(0, value_bins - 1)
    joint = torch.zeros(groups, value_bins * position_bins_total, dtype=torch.float64, device=values.device)
    counts = torch.ones(groups, tokens, dtype=torch.float64, device=values.device)
    joint.scatter_add_(1, value_bin * position_bins_total + positions[None], counts)
    joint = (joint / tokens).view(groups, value_bins, position_bins_total)
    independent = joint.sum(dim=2, keepdim=True) * joint.sum(dim=1, keepdim=True)
    terms = joint * (torch.log(joint + 1e-12) - torch.log(independent + 1e-12))
    information = terms.sum(dim=(1, 2)).clamp(min=0.0).float()
    return torch.where(clamped.sum(dim=-1) > 1e-12, information, torch.zeros_like(information))


def group_weights(information: torch.Tensor, tau: float) -> torch.Tensor:
    """softmax(minmax(information) / tau), every group 0.5 before the softmax when all are equal."""
    low, high = information.min(), information.max()
    if float(high - low) < 1e-12:
        spread = torch.full_like(information, 0.5)
    else:
        spread = (information - low) / (high - low)
    weights = torch.softmax(spread / tau, dim=0)
    return weights / weights.sum().clamp(min=1e-8)
