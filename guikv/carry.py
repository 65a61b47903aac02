"""A compressed KV cache carried from one agent step to the next, and its re-scoring.

Between steps a trajectory's cache holds, in every layer and KV head, only the entries it kept;
`CarriedCache` records which logical position each of them is (per layer, per KV head) and where
every position came from (`Segment`: the instruction text, a screenshot, an answer). At the next
step the new turn is fed on top of it; `rescore` then, in each layer right after its forward,
lays the entries of all heads and the new tokens on one sequence in logical order (the "union"),
marks which positions each head holds (`LayerContext.present`), lets the method score that
sequence with the new screenshot as the current one, and decides the layer's cut to the step's
capacity; the cuts are applied once the first answer token has been predicted from the uncut cache,
as a re-prefilled step predicts it. Positions stay logical: a cut layer is a `CutLayer` whose
length is the conversation's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from guikv.attention import window_queries
from guikv.cache import CutLayer, fit_mask, mask_fitting, share_cache
from guikv.hooks import LayerForward, attention_hooks, cache_argument
from guikv.layout import Grid, TokenLayout
from guikv.methods.base import LayerContext, Method
from guikv.methods.vlcache import LayerStatistics, VLCache, allocate_budgets


@dataclass(frozen=True)
class Segment:
    """A half-open range of logical positions and its origin: `kind` is "text" (instruction, turn
    markers), "screenshot" or "answer"; `step` the agent step (0-based) that brought it; a
    screenshot's merged-token `grid` (rows, columns)."""

    start: int
    end: int
    kind: str
    step: int
    grid: Grid | None = None

    @property
    def label(self) -> str:
        """A short name: "text 0", "screenshot 3", "answer 2"."""
        return f"{self.kind} {self.step}"


@dataclass
class CarriedCache:
    """A trajectory's cache between steps: the transformers cache (None before the first step),
    the logical positions each layer's KV heads hold ([H_kv, P] per layer, ascending, the same
    count P in every head of a layer), the conversation's segments and its logical length (every
    token the model has seen, evicted or not)."""

    cache: Any = None
    positions: list[torch.Tensor] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    logical_length: int = 0
    evicted: list[Segment] = field(default_factory=list)

    @property
    def live_length(self) -> int:
        """The conversation's length without the screenshots evicted by the screenshot window: the
        length of the prompt a re-prefill of the same conversation would hold."""
        return self.logical_length - sum(segment.end - segment.start for segment in self.evicted)

    def live_screenshots(self) -> list[Segment]:
        """The screenshots still in the cache's window, oldest first."""
        return [s for s in self.segments if s.kind == "screenshot" and s not in self.evicted]

    def add_segments(self, segments: Sequence[Segment]) -> None:
        """Record the origin of newly fed positions (text segments merge into the previous text)."""
        for segment in segments:
            last = self.segments[-1] if self.segments else None
            if last is not None and last.kind == segment.kind == "text" and last.end == segment.start:
                self.segments[-1] = replace(last, end=segment.end)
            else:
                self.segments.append(segment)

    def origin(self, positions: torch.Tensor) -> list[str]:
        """The label of the segment each logical position in `positions` (any shape) belongs to."""
        starts = torch.tensor([segment.start for segment in self.segments])
        found = torch.searchsorted(starts, positions.reshape(-1).cpu(), right=True) - 1
        return [self.segments[index].label for index in found.tolist()]

    def kept_by_origin(self) -> dict[str, float]:
        """Entries held per segment, averaged over layers and KV heads."""
        counts: dict[str, float] = {}
        for held in self.positions:
            for label in self.origin(held):
                counts[label] = counts.get(label, 0.0) + 1.0 / held.shape[0] / len(self.positions)
        return counts

    def append_fed(self, count: int) -> None:
        """`count` tokens were appended to every layer after the last re-scoring (decode steps)."""
        start = self.logical_length
        new = torch.arange(start, start + count)
        self.positions = [
            torch.cat([held, new.expand(held.shape[0], count)], dim=1) for held in self.positions
        ]
        self.logical_length += count

    def apply_cuts(self, cuts: dict[int, tuple[torch.Tensor | None, torch.Tensor]]) -> None:
        """Cut each layer to the slots a step decided (`StepScoring.cuts`: per layer the physical
        slots to keep, None for all, and the logical positions they hold)."""
        for index, (slots, logical) in cuts.items():
            if slots is not None:
                self.cache.layers[index] = _gathered(self.cache.layers[index], slots)
            self.positions[index] = logical
        share_cache(self.cache.layers)

    def drop_last(self) -> None:
        """Remove the newest token from every layer (it will be fed again)."""
        for index, layer in enumerate(self.cache.layers):
            layer.crop(-1)
            self.positions[index] = self.positions[index][:, :-1]
        self.logical_length -= 1

    def evict(self, segment: Segment) -> None:
        """Drop a screenshot from every layer and head (positions of the rest unchanged).

        Heads held different numbers of its tokens, and every head of a layer must hold as many
        entries: a head left with more gives up its oldest screenshot entries (then its oldest
        text) until all hold as many as the head left with the fewest.
        """
        self.evicted.append(segment)
        for index, layer in enumerate(self.cache.layers):
            held = self.positions[index]
            inside = (held >= segment.start) & (held < segment.end)
            if not inside.any():
                continue
            keep = ~inside
            remaining = keep.sum(dim=1)
            target = int(remaining.min())
            for head in range(held.shape[0]):
                extra = int(remaining[head]) - target
                if extra:
                    candidates = keep[head].nonzero().reshape(-1)
                    is_text = self._is_text(held[head, candidates])
                    order = torch.argsort(is_text.long() * (held.shape[1] + 1) + candidates, stable=True)
                    keep[head, candidates[order[:extra]]] = False
            slots = keep.nonzero()[:, 1].view(held.shape[0], target)
            self.cache.layers[index] = _gathered(layer, slots)
            self.positions[index] = held.gather(1, slots)
        share_cache(self.cache.layers)

    def _is_text(self, positions: torch.Tensor) -> torch.Tensor:
        """True where a logical position is not a screenshot token."""
        text = torch.ones_like(positions, dtype=torch.bool)
        for segment in self.segments:
            if segment.kind == "screenshot":
                text &= ~((positions >= segment.start) & (positions < segment.end))
        return text


def _gathered(layer: Any, slots: torch.Tensor) -> CutLayer:
    """A `CutLayer` holding the entries at physical `slots` [H_kv, k] of a single-row layer."""
    index = slots[None, :, :, None].expand(-1, -1, -1, layer.keys.shape[-1]).to(layer.keys.device)
    return CutLayer(
        layer.keys.gather(2, index).contiguous(),
        layer.values.gather(2, index).contiguous(),
        logical_length=layer.get_seq_length(),
    )


@dataclass
class UnionView:
    """One layer's entries after a step's forward, on one sequence: `positions` [U] the logical
    positions held by any head (ascending), `slot` [H_kv, U] where each head stores each of them
    (meaningful where `present`), `present` [H_kv, U]."""

    positions: torch.Tensor
    slot: torch.Tensor
    present: torch.Tensor

    @classmethod
    def of(cls, held: torch.Tensor) -> UnionView:
        """The union of `held` [H_kv, P] (each row ascending)."""
        positions = torch.unique(held)
        slot = torch.searchsorted(held, positions.expand(held.shape[0], -1).contiguous())
        clamped = slot.clamp(max=held.shape[1] - 1)
        return cls(positions, clamped, held.gather(1, clamped) == positions)


@dataclass
class StepScoring:
    """What one step's re-scoring needs and records: the method (its state lives on), the step's
    capacity per layer, the union layout's segments, and per layer the kept count and the cut
    decided (`cuts`: the physical slots to keep, None for all, and their logical positions), plus
    the time spent scoring."""

    method: Method
    capacity: int
    carried: CarriedCache
    chunk_start: int
    chunk_length: int
    current_grid: Grid | None
    record_positions: bool = False
    kept_per_layer: list[int] = field(default_factory=list)
    kept_positions: list[torch.Tensor] = field(default_factory=list)
    cuts: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = field(default_factory=dict)
    seconds: float = 0.0
    pending: list[tuple[int, LayerContext, LayerStatistics, UnionView, torch.Tensor]] = field(
        default_factory=list
    )


class _Rescorer:
    """The hooks of one step: fit masks to each layer's stored length, re-score every layer right
    after the forward that fed the new turn, and cut the cache after the forward that follows it
    (the turn's last token fed again by `generate()`): the first answer token is then predicted
    from the uncut conversation, as a re-prefilled step predicts it, and every later one from the
    cut cache."""

    def __init__(
        self, attentions: Sequence[nn.Module], scoring: StepScoring, attn_implementation: str
    ) -> None:
        self.attentions = attentions
        self.scoring = scoring
        self.attn_implementation = attn_implementation
        self.forwards = 0

    def after_model(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        """Top-level hook: after the forward that follows the feeding one, apply the cuts."""
        self.forwards += 1
        if self.forwards == 2:
            carried = self.scoring.carried
            carried.append_fed(1)
            carried.apply_cuts(self.scoring.cuts)

    def fit(self, layer_idx: int, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Attention pre-hook: fit the mask's key axis to a cut layer's stored entries."""
        cache = cache_argument(kwargs)
        layer = cache.layers[layer_idx] if cache is not None and layer_idx < len(cache.layers) else None
        mask = kwargs.get("attention_mask")
        if not isinstance(layer, CutLayer) or not isinstance(mask, torch.Tensor):
            return None
        fitted = fit_mask(mask, layer, kwargs["hidden_states"].shape[1], self.attn_implementation)
        return args, {**kwargs, "attention_mask": fitted}

    def after_forward(self, forward: LayerForward) -> None:
        """A multi-token forward: the step's new turn; re-score this layer (VL-Cache: once all are in)."""
        start = time.perf_counter()
        scoring = self.scoring
        carried = scoring.carried
        index = forward.index
        kv_heads = forward.keys.shape[1]
        if forward.length != scoring.chunk_length:
            raise RuntimeError(
                f"a carried step fed {forward.length} tokens to layer {index}, expected its new turn of "
                f"{scoring.chunk_length}: feed each step's turn in one forward"
            )
        new = torch.arange(scoring.chunk_start, scoring.chunk_start + scoring.chunk_length)
        before = carried.positions[index] if index < len(carried.positions) else new.new_zeros(kv_heads, 0)
        held = torch.cat([before, new.expand(kv_heads, -1)], dim=1)
        union = UnionView.of(held)
        ctx = self._context(forward, union)
        if isinstance(scoring.method, VLCache):
            stats = scoring.method.statistics(ctx)
            scoring.pending.append((index, replace(ctx, hidden_states=None), stats, union, held))
            if index == len(self.attentions) - 1:
                self._cut_pending()
        else:
            self._cut(index, scoring.method.select(ctx), union, held)
        scoring.seconds += time.perf_counter() - start

    def _context(self, forward: LayerForward, union: UnionView) -> LayerContext:
        """The layer as the method sees it: the union sequence, the new screenshot current."""
        scoring = self.scoring
        keys = _on_union(forward.keys, union)
        hidden = forward.hidden_states
        on_union = hidden.new_zeros(1, union.positions.numel(), hidden.shape[-1])
        on_union[:, -scoring.chunk_length :] = hidden
        layout = _union_layout(scoring.carried, union.positions, scoring.current_grid)
        window = scoring.method.window(layout)
        queries = (
            window_queries(forward.attention, hidden, forward.position_embeddings, window)
            if scoring.method.needs_queries
            else None
        )
        present = None if bool(union.present.all()) else union.present[None].to(keys.device)
        return LayerContext(
            keys=keys,
            layout=layout,
            capacity=scoring.capacity,
            layer_idx=forward.index,
            num_layers=len(self.attentions),
            queries=queries,
            hidden_states=on_union,
            scaling=getattr(forward.attention, "scaling", None),
            present=present,
        )

    def _cut(self, index: int, keep: torch.Tensor, union: UnionView, held: torch.Tensor) -> None:
        """Decide layer `index`'s cut to the union positions `keep` [1, H_kv, k] (none when every
        held entry is kept); it is applied after the next forward (`StepScoring.cuts`)."""
        scoring = self.scoring
        logical = union.positions[keep[0].cpu()]
        slots = torch.searchsorted(held, logical) if logical.shape[1] < held.shape[1] else None
        scoring.cuts[index] = (slots, held if slots is None else logical)
        positions = scoring.carried.positions
        if index < len(positions):
            positions[index] = held
        else:
            positions.append(held)
        scoring.kept_per_layer.append(int(scoring.cuts[index][1].shape[1]))
        if scoring.record_positions:
            scoring.kept_positions.append(scoring.cuts[index][1])

    def _cut_pending(self) -> None:
        """VL-Cache: every layer is scored; allocate the budgets and decide every layer's cut."""
        scoring = self.scoring
        pending, scoring.pending = scoring.pending, []
        sparsities = [stats.layer_sparsity for _, _, stats, _, _ in pending]
        first = pending[0][1]
        budgets = allocate_budgets(sparsities, first.capacity, first.held)
        method = scoring.method
        assert isinstance(method, VLCache)
        for (index, ctx, stats, union, held), budget in zip(pending, budgets, strict=True):
            self._cut(index, method.select_with_budget(ctx, budget, stats), union, held)


def _on_union(keys: torch.Tensor, union: UnionView) -> torch.Tensor:
    """A single-row layer's keys [1, H_kv, P, d] laid on the union: [1, H_kv, U, d], zero where a
    head does not hold the position."""
    slot = union.slot.to(keys.device)
    gathered = keys[0].gather(1, slot[..., None].expand(-1, -1, keys.shape[-1]))
    return (gathered * union.present.to(keys.device)[..., None]).unsqueeze(0)


def _union_layout(carried: CarriedCache, positions: torch.Tensor, current_grid: Grid | None) -> TokenLayout:
    """The union sequence's layout: one span per live screenshot (its held tokens), the last one
    the new screenshot with its grid; earlier screenshots have no grid (they hold a subset)."""
    spans = []
    for segment in carried.live_screenshots():
        start = int(torch.searchsorted(positions, segment.start))
        end = int(torch.searchsorted(positions, segment.end))
        if end > start:
            spans.append((start, end))
    layout = TokenLayout(int(positions.numel()), tuple(spans))
    if not spans:
        return layout
    return layout.with_grids([*([None] * (len(spans) - 1)), current_grid])


@contextmanager
def rescore(model: nn.Module, attentions: Sequence[nn.Module], scoring: StepScoring) -> Iterator[None]:
    """Inside: the first forward (the new turn) re-scores each layer (`StepScoring`), the second
    (its last token fed again) is followed by the cuts, every forward's mask is fitted to the cut
    layers; the hooks are removed on exit."""
    rescorer = _Rescorer(
        attentions, scoring, str(getattr(model.config, "_attn_implementation", None) or "sdpa")
    )
    handle = model.register_forward_hook(rescorer.after_model, with_kwargs=True)
    with (
        mask_fitting(),
        attention_hooks(
            attentions,
            on_prefill=rescorer.after_forward,
            on_extend=rescorer.after_forward,
            before=rescorer.fit,
        ),
    ):
        try:
            yield
        finally:
            handle.remove()
