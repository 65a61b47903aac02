"""ST-Lite: SnapKV's window attention, a spatial term on the current screenshot, and a gate that
evicts the history-screenshot tokens most similar to the current screen (arXiv 2603.00188,
release `94wen94/ST-Lite`, `STLiteKVCluster.update_kv`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from guikv.layout import Grid, Span
from guikv.methods.base import LayerContext, pick_held
from guikv.methods.snapkv import SnapKV

SIMILARITY_CHUNK_ELEMENTS = 1 << 24
"""History x current similarities materialised at once (64 MiB in fp32), bounding gate memory."""


@dataclass(frozen=True)
class STLite(SnapKV):
    """Uniform-budget ST-Lite, in the variant its release computes (`st_lite_variant="code"`, the
    default, so published numbers can be reproduced) or as its paper states it (`"paper"`).

    - spatial term, current screenshot only, added to every head's pooled window attention:
      `code`: n = L2 norm of each token's attention input, n + avgpool3x3(n) on the screenshot's
      merged-token grid, standardised, softmax over the screenshot, weight 1 (the release declares
      alpha 0.1 and temperature 1 but never uses them, so `alpha`/`temperature` do not apply). The
      release pools only when the token count is a perfect square (on the sqrt x sqrt guess); we pool
      on the true grid from `image_grid_thw` whenever it is known, and fall back to the release's
      rule when it is not.
      `paper`: phi = 1 - mean cosine similarity of each token's attention input to its 8 grid
      neighbours (fewer at the border: the mean over those inside the grid), with no weight or
      softmax; it needs the grid (a non-square screenshot without one is refused).
    - gate on earlier screenshots, both variants: rho_i = max_j cos(h_i, h_j) over the current
      screenshot's tokens j; the `int((1 - C/L) * N_hist)` history tokens with the largest rho get
      score 0 in every head. The paper's M * (A + phi) with M keeping the least redundant history
      tokens is the same cut, as phi is applied to the current screenshot only (as the release
      does; the paper does not say).

    Scores are aggregated per KV group (`head_aggregation`; the release keeps a 28-head cache and
    selects per query head). Both added terms are the same in every head of a group, so the group
    mean of the release's per-head scores is what we rank.

    On a carried cache (`ctx.present`) the attention inputs of earlier steps' tokens are gone
    (keeping them would cost several times the compressed cache), so the gate's rho is taken of
    each KV head's keys instead (`redundant_history_by_keys`): rho_i = max_j cos(k_i, k_j), per
    head, over the tokens that head holds.
    """

    name: ClassVar[str] = "st_lite"
    needs_images: ClassVar[bool] = True

    st_lite_variant: str = "code"

    def score(self, ctx: LayerContext, window: int) -> torch.Tensor:
        """Window attention + the spatial term, per KV group, with redundant history tokens zeroed."""
        scores = self.window_scores(ctx, window)
        current = ctx.layout.current
        if current is None:
            raise ValueError(f"method {self.name!r} needs image tokens in the prompt: none were found")
        if ctx.hidden_states is None:
            raise ValueError(f"method {self.name!r} needs the layer's hidden_states")
        start, end = current[0], min(current[1], scores.shape[-1])
        if end > start:
            grid = ctx.layout.grid(-1)
            if self.st_lite_variant == "paper":
                spatial = neighbour_dissimilarity(ctx.hidden_states, current, grid)
            else:
                spatial = pooled_norm_saliency(ctx.hidden_states, current, grid)
            scores[..., start:end] += spatial[:, None, : end - start]
        scores = self.aggregate_heads(scores, ctx.num_kv_heads)
        if ctx.layout.previous:
            kept_share = float(min(ctx.capacity, ctx.held) / ctx.held)
            if ctx.present is None:
                redundant = redundant_history(ctx.hidden_states, current, ctx.layout.previous, kept_share)
                redundant = redundant[:, None].expand(-1, scores.shape[1], -1)
            else:
                redundant = redundant_history_by_keys(
                    ctx.keys, current, ctx.layout.previous, kept_share, ctx.present
                )
            redundant = redundant.clamp(max=scores.shape[-1])
            scores = torch.cat([scores, scores.new_zeros(*scores.shape[:2], 1)], dim=-1)
            scores = scores.scatter(-1, redundant, 0.0)[..., :-1]
        return scores


def square_grid(tokens: int) -> Grid | None:
    """The release's guess: a sqrt x sqrt grid when `tokens` is a perfect square, else None."""
    side = math.isqrt(tokens)
    return (side, side) if side * side == tokens else None


def pooled_norm_saliency(hidden_states: torch.Tensor, span: Span, grid: Grid | None) -> torch.Tensor:
    """The release's spatial term: softmax of the standardised `n + avgpool3x3(n)` (n the L2 norm of
    each token's attention input; zero padding, divided by 9) over the span: [B, n], rows sum to 1.
    Without a grid, pooled only when the span is a perfect square (the release's rule)."""
    norms = hidden_states[:, span[0] : span[1]].float().norm(dim=-1)
    batch, tokens = norms.shape
    grid = grid or square_grid(tokens)
    if grid is not None:
        pooled = F.avg_pool2d(norms.view(batch, 1, *grid), kernel_size=3, stride=1, padding=1)
        norms = norms + pooled.view(batch, tokens)
    standardised = (norms - norms.mean(dim=-1, keepdim=True)) / (norms.std(dim=-1, keepdim=True) + 1e-8)
    return torch.softmax(standardised, dim=-1)


def neighbour_dissimilarity(hidden_states: torch.Tensor, span: Span, grid: Grid | None) -> torch.Tensor:
    """The paper's phi = 1 - mean cosine similarity to the 8 grid neighbours (those inside the
    grid at the border): [B, n], flat background near 0, edges of controls high."""
    tokens = span[1] - span[0]
    grid = grid or square_grid(tokens)
    if grid is None:
        raise ValueError(
            f"st_lite_variant='paper' needs the screenshot's token grid: {tokens} tokens are no square "
            "and no image grid was given (pass image_grids, or image_grid_thw to the model)"
        )
    rows, cols = grid
    unit = F.normalize(hidden_states[:, span[0] : span[1]].float(), dim=-1)
    batch = unit.shape[0]
    unit = unit.view(batch, rows, cols, -1)
    padded = F.pad(unit, (0, 0, 1, 1, 1, 1))
    inside = F.pad(unit.new_ones(1, rows, cols), (1, 1, 1, 1))
    total = unit.new_zeros(batch, rows, cols)
    count = unit.new_zeros(1, rows, cols)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == 0 and dc == 0:
                continue
            neighbour = padded[:, 1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols]
            total += (unit * neighbour).sum(dim=-1)
            count += inside[:, 1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols]
    return (1.0 - total / count).reshape(batch, tokens)


def history_similarity(
    hidden_states: torch.Tensor, current: Span, previous: tuple[Span, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """rho_i = max_j cos(h_i, h_j) of every earlier-screenshot token i over the current screenshot's
    tokens j, in bounded chunks: (rho [B, N_hist], absolute positions [N_hist]).

    The unit vectors are formed in fp32 and multiplied in the hidden states' own dtype, as the
    release does (bf16 on GPU: the N_hist x N_cur x D product is the method's largest cost)."""
    positions = torch.cat([torch.arange(s, e, device=hidden_states.device) for s, e in previous])
    dtype = hidden_states.dtype
    now = F.normalize(hidden_states[:, current[0] : current[1]].float(), dim=-1).to(dtype)
    earlier = F.normalize(hidden_states[:, positions].float(), dim=-1).to(dtype)
    rows = max(1, SIMILARITY_CHUNK_ELEMENTS // max(1, now.shape[0] * now.shape[1]))
    rho = torch.cat(
        [
            (earlier[:, i : i + rows] @ now.transpose(1, 2)).amax(dim=-1).float()
            for i in range(0, positions.numel(), rows)
        ],
        dim=1,
    )
    return rho, positions


def redundant_history(
    hidden_states: torch.Tensor, current: Span, previous: tuple[Span, ...], kept_share: float
) -> torch.Tensor:
    """Absolute positions [B, count] of the `count = int((1 - kept_share) * N_hist)` earlier-screenshot
    tokens most similar to the current screenshot."""
    rho, positions = history_similarity(hidden_states, current, previous)
    count = int((1.0 - kept_share) * positions.numel())
    return positions[rho.topk(count, dim=-1).indices]


def redundant_history_by_keys(
    keys: torch.Tensor, current: Span, previous: tuple[Span, ...], kept_share: float, present: torch.Tensor
) -> torch.Tensor:
    """The gate on a carried cache: per KV head, the `int((1 - kept_share) * N_held)` earlier-
    screenshot tokens the head holds whose keys are most cosine-similar to one of the current
    screenshot's keys: positions [B, H_kv, count], rows of heads picking fewer padded with L."""
    positions = torch.cat([torch.arange(s, e, device=keys.device) for s, e in previous])
    now = F.normalize(keys[:, :, current[0] : current[1]].float(), dim=-1)
    earlier = F.normalize(keys[:, :, positions].float(), dim=-1)
    rows = max(1, SIMILARITY_CHUNK_ELEMENTS // max(1, now.shape[0] * now.shape[1] * now.shape[2]))
    rho = torch.cat(
        [
            (earlier[:, :, i : i + rows] @ now.transpose(-1, -2)).amax(dim=-1)
            for i in range(0, positions.numel(), rows)
        ],
        dim=-1,
    )
    return pick_held(rho, positions, present[..., positions], 1.0 - kept_share, keys.shape[2])
