"""TokenLayout: where each screenshot sits in a prompt, found from `input_ids` alone, and the
merged-token grid of each screenshot, from the processor's `image_grid_thw`.

Methods need image spans (GUI-KV boosts the current screenshot and de-duplicates earlier ones;
VL-Cache scores from the text after the last image). Deriving them from the expanded token ids
never re-runs the processor and cannot drift from what the model actually saw. Spatial terms
(ST-Lite's 3x3 pooling and neighbour similarity, STaR-KV's position bins) need each screenshot's
grid of merged tokens (rows, columns); the releases guessed it from the square root of the token
count, which is wrong for every non-square screenshot.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch

Span = tuple[int, int]
Grid = tuple[int, int]
"""A screenshot's merged-token grid: (rows, columns), its tokens in row-major order."""


@dataclass(frozen=True)
class TokenLayout:
    """The image spans of one prompt (half-open token ranges, in order; the last one is the
    current screenshot) and its length.

    `grids` is empty when the grids are unknown, else one entry per span: its (rows, columns), or
    None for an image of several temporal frames (a video), whose tokens form no single grid.
    """

    length: int
    image_spans: tuple[Span, ...]
    grids: tuple[Grid | None, ...] = ()

    def __post_init__(self) -> None:
        if not self.grids:
            return
        if len(self.grids) != len(self.image_spans):
            raise ValueError(
                f"{len(self.grids)} image grid(s) for {len(self.image_spans)} image span(s): expected one "
                "grid per screenshot"
            )
        for (start, end), grid in zip(self.image_spans, self.grids, strict=True):
            if grid is not None and grid[0] * grid[1] != end - start:
                raise ValueError(
                    f"image grid {grid[0]}x{grid[1]} does not fit the image span [{start}, {end}) of "
                    f"{end - start} tokens: expected rows x columns == span length"
                )

    def with_grids(self, grids: Iterable[Grid | None]) -> TokenLayout:
        """This layout with one grid per image span; a count or size mismatch is a `ValueError`."""
        return replace(self, grids=tuple(None if g is None else (int(g[0]), int(g[1])) for g in grids))

    def with_grids_from(
        self,
        *,
        image_grid_thw: torch.Tensor | None = None,
        merge_size: int | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> TokenLayout:
        """This layout with the grids a prefill's inputs tell: from `image_grid_thw` (Qwen2.5-VL
        before transformers 5.24; OpenCUA's `grid_thws`) and the vision tower's merge size when it
        lists one image per span, else from M-RoPE `position_ids` (transformers >= 5.24 encodes
        images inside `generate()`, so the model forward no longer receives the grids); unchanged
        when neither tells (e.g. a prompt that also holds videos). A grid whose size does not fit
        its span raises."""
        if image_grid_thw is not None and merge_size and len(image_grid_thw) == len(self.image_spans):
            return self.with_grids(grids_from_thw(image_grid_thw, merge_size))
        grids = grids_from_positions(position_ids, self.image_spans) if position_ids is not None else None
        return self.with_grids(grids) if grids is not None and self.image_spans else self

    def grid(self, index: int) -> Grid | None:
        """The grid of image `index` (negative counts from the end), or None when unknown."""
        return self.grids[index] if self.grids else None

    @classmethod
    def from_input_ids(cls, input_ids: torch.Tensor, image_token_ids: Iterable[int]) -> TokenLayout:
        """Find every maximal run of image placeholder tokens in a 1-D or [1, L] id tensor."""
        ids = input_ids.reshape(-1) if input_ids.dim() == 1 or input_ids.shape[0] == 1 else None
        if ids is None:
            raise ValueError(f"input_ids has batch size {input_ids.shape[0]}: expected a batch of 1")
        is_image = torch.zeros_like(ids, dtype=torch.bool)
        for token_id in image_token_ids:
            is_image |= ids == token_id
        return cls(length=int(ids.numel()), image_spans=spans_of(is_image))

    @property
    def num_images(self) -> int:
        """How many screenshots the prompt holds."""
        return len(self.image_spans)

    @property
    def current(self) -> Span | None:
        """The span of the current (last) screenshot, or None for a text-only prompt."""
        return self.image_spans[-1] if self.image_spans else None

    @property
    def previous(self) -> tuple[Span, ...]:
        """The spans of the earlier screenshots, oldest first."""
        return self.image_spans[:-1]

    @property
    def num_image_tokens(self) -> int:
        """Tokens that belong to any screenshot."""
        return sum(end - start for start, end in self.image_spans)

    def text_mask(self) -> torch.Tensor:
        """A bool tensor [length], True where the token is not an image token."""
        mask = torch.ones(self.length, dtype=torch.bool)
        for start, end in self.image_spans:
            mask[start:end] = False
        return mask

    def token_kinds(self) -> torch.Tensor:
        """A long tensor [length]: 0 text, 1 an earlier screenshot, 2 the current screenshot."""
        kinds = torch.zeros(self.length, dtype=torch.long)
        for start, end in self.previous:
            kinds[start:end] = 1
        if self.current is not None:
            kinds[self.current[0] : self.current[1]] = 2
        return kinds


def spans_of(flags: torch.Tensor) -> tuple[Span, ...]:
    """Half-open ranges of the maximal runs of True in a 1-D bool tensor."""
    padded = torch.cat([flags.new_zeros(1), flags.to(torch.int8), flags.new_zeros(1)])
    edges = torch.diff(padded.to(torch.int8)).nonzero().reshape(-1).tolist()
    return tuple((edges[i], edges[i + 1]) for i in range(0, len(edges), 2))


def grids_from_thw(
    image_grid_thw: torch.Tensor | Iterable[Iterable[int]], merge_size: int
) -> tuple[Grid | None, ...]:
    """Merged-token grids from a processor's `image_grid_thw` ([N, 3] patches per image: temporal,
    height, width): (height // merge, width // merge) per single-frame image, None for a video."""
    rows = image_grid_thw.tolist() if isinstance(image_grid_thw, torch.Tensor) else image_grid_thw
    grids: list[Grid | None] = []
    for frames, height, width in (tuple(int(v) for v in row) for row in rows):
        grids.append((height // merge_size, width // merge_size) if frames == 1 else None)
    return tuple(grids)


def grids_from_positions(position_ids: torch.Tensor, spans: Iterable[Span]) -> tuple[Grid | None, ...] | None:
    """Merged-token grids read from M-RoPE position ids ([3 or 4, B, L]: the last two rows are height
    and width): (height range, width range) per span, None for a span whose positions form no
    single-frame grid. None when the ids are not M-RoPE (a 1-D RoPE model)."""
    if position_ids.dim() != 3 or position_ids.shape[0] < 3:
        return None
    grids: list[Grid | None] = []
    for start, end in spans:
        frame, height, width = (position_ids[row, 0, start:end] for row in (-3, -2, -1))
        rows = int(height.max() - height.min()) + 1
        cols = int(width.max() - width.min()) + 1
        single_frame = bool((frame == frame[0]).all()) and rows * cols == end - start
        grids.append((rows, cols) if single_frame else None)
    return tuple(grids)


def spatial_merge_size(model_config: Any) -> int | None:
    """How many patches per side the vision tower merges into one token (2 for Qwen2.5-VL and
    OpenCUA), read from a model config; None when the config does not say."""
    for owner in (getattr(model_config, "vision_config", None), model_config):
        for name in ("spatial_merge_size", "merge_size"):
            value = getattr(owner, name, None) if owner is not None else None
            if isinstance(value, int) and value >= 1:
                return value
    return None
