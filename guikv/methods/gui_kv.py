"""GUI-KV: SnapKV's window attention, plus spatial saliency on the current screenshot and temporal
redundancy against it for earlier screenshots (arXiv 2510.00536)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from guikv.layout import Span
from guikv.methods.base import LayerContext, pick_held
from guikv.methods.snapkv import SnapKV


@dataclass(frozen=True)
class GUIKV(SnapKV):
    """Uniform-budget GUI-KV.

    - spatial: `alpha * softmax(z / temperature)` is added to the current screenshot's scores,
      where z is the standardised L2 norm of each token's attention input (salient UI patches);
    - temporal: earlier screenshots' keys are projected onto a rank-`rank` subspace of the current
      screenshot's keys per KV head; the `int((1 - C/L) * N_prev)` tokens with the smallest
      residual (already seen now) get score 0. `subspace="qr"` spans the first `rank` current keys
      (the paper), `"svd"` their top singular directions.
    """

    name: ClassVar[str] = "gui_kv"
    needs_images: ClassVar[bool] = True

    alpha: float = 2.0
    temperature: float = 3.5
    rank: int = 32
    subspace: str = "qr"

    def score(self, ctx: LayerContext, window: int) -> torch.Tensor:
        """Window attention + saliency, aggregated per KV group, with redundant earlier tokens zeroed."""
        scores = self.window_scores(ctx, window)
        current = ctx.layout.current
        if current is None:
            raise ValueError(f"method {self.name!r} needs image tokens in the prompt: none were found")
        if self.alpha > 0:
            if ctx.hidden_states is None:
                raise ValueError(f"method {self.name!r} needs the layer's hidden_states for saliency")
            start, end = current[0], min(current[1], scores.shape[-1])
            if end > start:
                saliency = spatial_saliency(ctx.hidden_states, current, self.temperature)
                scores[..., start:end] += self.alpha * saliency[:, None, : end - start]
        scores = self.aggregate_heads(scores, ctx.num_kv_heads)
        if ctx.layout.previous:
            evicted_share = 1.0 - min(ctx.capacity, ctx.held) / ctx.held
            redundant = redundant_positions(
                ctx.keys, current, ctx.layout.previous, self.rank, evicted_share, self.subspace, ctx.present
            )
            redundant = redundant.clamp(max=scores.shape[-1])
            scores = torch.cat([scores, scores.new_zeros(*scores.shape[:2], 1)], dim=-1)
            scores.scatter_(-1, redundant, 0.0)
            scores = scores[..., :-1]
        return scores


def spatial_saliency(hidden_states: torch.Tensor, span: Span, temperature: float) -> torch.Tensor:
    """Softmax of the standardised L2 norms of the span's attention inputs: [B, n], rows sum to 1."""
    norms = hidden_states[:, span[0] : span[1]].float().norm(dim=-1)
    standardised = (norms - norms.mean(dim=-1, keepdim=True)) / (norms.std(dim=-1, keepdim=True) + 1e-8)
    return torch.softmax(standardised / temperature, dim=-1)


def key_subspace(current_keys: torch.Tensor, rank: int, subspace: str) -> torch.Tensor:
    """An orthonormal basis [B, H_kv, d, r] of the current screenshot's keys [B, H_kv, n, d]."""
    rank = min(rank, current_keys.shape[-2], current_keys.shape[-1])
    if subspace == "svd":
        return torch.linalg.svd(current_keys, full_matrices=False).Vh[..., :rank, :].transpose(-1, -2)
    basis, _ = torch.linalg.qr(current_keys[..., :rank, :].transpose(-1, -2), mode="reduced")
    return basis


def projection_residuals(
    keys: torch.Tensor, current: Span, previous: tuple[Span, ...], rank: int, subspace: str = "qr"
) -> tuple[torch.Tensor, torch.Tensor]:
    """How much of each earlier screenshot token's key lies outside the current screenshot's key
    subspace: (residual norms [B, H_kv, N_prev], their absolute positions [N_prev])."""
    keys32 = keys.float()
    basis = key_subspace(keys32[:, :, current[0] : current[1]], rank, subspace)
    positions = torch.cat([torch.arange(s, e, device=keys.device) for s, e in previous])
    earlier = keys32[:, :, positions]
    residual = earlier - (earlier @ basis) @ basis.transpose(-1, -2)
    return residual.norm(dim=-1), positions


def redundant_positions(
    keys: torch.Tensor,
    current: Span,
    previous: tuple[Span, ...],
    rank: int,
    evicted_share: float,
    subspace: str = "qr",
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """Absolute positions [B, H_kv, nz] of the `int(evicted_share * N_prev)` earlier-screenshot
    tokens best explained by the current screenshot (smallest residual), per KV head.

    With `present` [B, H_kv, L] (a carried cache), N_prev counts the earlier tokens each head
    holds and absent ones are never picked; a head picking fewer than another pads its row with
    the position L (one past the scores, which callers drop)."""
    residuals, positions = projection_residuals(keys, current, previous, rank, subspace)
    if present is None:
        count = int(evicted_share * positions.numel())
        return positions[residuals.topk(count, dim=-1, largest=False).indices]
    return pick_held(-residuals, positions, present[..., positions], evicted_share, keys.shape[2])
