"""Methods on a carried cache's union sequence (`LayerContext.present`): absent keys are never
seen by window attention and never kept, SnapKV on the union keeps what it keeps on each head's
own sequence, and GUI-KV / ST-Lite take their shares of what each head holds."""

from __future__ import annotations

import pytest
import torch

from guikv import METHODS, CompressionConfig
from guikv.layout import TokenLayout
from guikv.methods import build_method
from guikv.methods.base import LayerContext
from guikv.methods.gui_kv import redundant_positions

LENGTH, WINDOW, DIM, HEADS, KV_HEADS, HIDDEN = 96, 8, 32, 4, 2, 48
LAYOUT = TokenLayout(LENGTH, ((10, 40), (50, 86)), (None, (6, 6)))


def carried_context(capacity: int = 40, seed: int = 0) -> LayerContext:
    """A union of 96 positions: each KV head holds a different 72 of them (the last 24, the new
    turn, in both), absent keys zero, no hidden states before the new turn."""
    generator = torch.Generator().manual_seed(seed)
    present = torch.ones(1, KV_HEADS, LENGTH, dtype=torch.bool)
    for head in range(KV_HEADS):
        absent = torch.randperm(LENGTH - 24, generator=generator)[:24]
        present[0, head, absent] = False
    keys = torch.randn(1, KV_HEADS, LENGTH, DIM, generator=generator) * present[..., None]
    hidden = torch.zeros(1, LENGTH, HIDDEN)
    hidden[:, -46:] = torch.randn(1, 46, HIDDEN, generator=generator)
    queries = torch.randn(1, HEADS, WINDOW, DIM, generator=generator)
    return LayerContext(keys, LAYOUT, capacity, 0, 2, queries, hidden, None, present)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "full"])
def test_no_method_keeps_an_absent_entry(method: str):
    ctx = carried_context()
    kept = build_method(CompressionConfig(method=method, rank=4)).select(ctx)
    assert kept.shape[-1] <= 2 * ctx.capacity
    assert bool(ctx.present.gather(2, kept).all())
    assert ctx.held == 72


def test_snapkv_on_the_union_keeps_what_it_keeps_on_each_head_s_own_sequence():
    ctx = carried_context()
    method = build_method(CompressionConfig(method="snapkv", kernel_size=1))
    kept = method.select(ctx)
    for head in range(KV_HEADS):
        held = ctx.present[0, head].nonzero().reshape(-1)
        alone = LayerContext(
            ctx.keys[:, head : head + 1, held],
            TokenLayout(held.numel(), ()),
            ctx.capacity,
            queries=ctx.queries[:, 2 * head : 2 * head + 2],
        )
        assert torch.equal(held[method.select(alone)[0, 0]], kept[0, head])


def test_gui_kv_zeroes_its_share_of_the_earlier_tokens_each_head_holds():
    ctx = carried_context()
    share = 0.5
    picked = redundant_positions(ctx.keys, LAYOUT.current, LAYOUT.previous, 4, share, "qr", ctx.present)
    for head in range(KV_HEADS):
        held_earlier = int(ctx.present[0, head, 10:40].sum())
        real = picked[0, head][picked[0, head] < LENGTH]
        assert real.numel() == int(share * held_earlier)
        assert bool(ctx.present[0, head, real].all())
