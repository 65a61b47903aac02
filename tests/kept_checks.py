"""Comparing what two runs of one prompt kept when they should keep the same: exactly, except for
GUI-KV across paths whose keys differ by rounding (see `ROUNDING_SENSITIVE`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

ROUNDING_SENSITIVE = frozenset({"gui_kv"})
"""Methods whose selection a rounding-level difference in the keys can move. GUI-KV's temporal step
projects on the span of the current screenshot's first 32 keys (QR without pivoting, as released);
on a screenshot with a uniform top those keys are nearly dependent (smallest singular value ~1e-7
of the largest on the head_dim-64 tiny model), so a relative change of 1e-6 in the keys, what a
left-padded batch's or a chunked prefill's attention kernels give, moves residuals by ~0.1 of a
key's norm and swaps tokens near the cut (`tests/test_engine_methods.py` measures it)."""

MIN_SHARED = 0.9
"""The share of positions a rounding-sensitive method keeps in both runs, at least (measured on the
head_dim-64 tiny model: 98-99.5% in a padded batch, 94.6-100% in a chunked prefill; a row mixed up
with another, or a prompt cut at the wrong place, shares far less)."""


def shared(kept: torch.Tensor, expected: torch.Tensor) -> float:
    """The share of `expected`'s positions ([H_kv, C]) that `kept` holds too, per KV head, averaged."""
    common = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(kept, expected, strict=True))
    return common / expected.numel()


def assert_kept_alike(method: str, kept: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> None:
    """Per layer, the same kept count; the same positions, or for a `ROUNDING_SENSITIVE` method at
    least `MIN_SHARED` of them (two runs whose keys differ by rounding)."""
    assert len(kept) == len(expected)
    for layer, (mine, theirs) in enumerate(zip(kept, expected, strict=True)):
        assert mine.shape == theirs.shape, (method, layer)
        if method in ROUNDING_SENSITIVE:
            assert shared(mine, theirs) >= MIN_SHARED, (method, layer, shared(mine, theirs))
        else:
            assert torch.equal(mine, theirs), (method, layer)
