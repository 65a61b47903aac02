"""TokenLayout: where each screenshot sits in a prompt, found from `input_ids` alone.

Methods need image spans (GUI-KV boosts the current screenshot and de-duplicates earlier ones;
VL-Cache scores from the text after the last image). Deriving them from the expanded token ids
never re-runs the processor and cannot drift from what the model actually saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

Span = tuple[int, int]


@dataclass(frozen=True)
class TokenLayout:
    """The image spans of one prompt (half-open token ranges, in order; the last one is the
    current screenshot) and its length."""

    length: int
    image_spans: tuple[Span, ...]

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
