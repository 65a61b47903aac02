"""The kept-token picture: shares per (layer, KV head), the token-to-patch mapping, the PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guikv.viz.kept import DPI, figure_size, kept_share, patch_shares, save_kept_picture


def test_share_counts_layers_times_kv_heads():
    # 2 layers x 2 KV heads over 4 positions: position 3 kept by all four, position 0 by one.
    kept = [torch.tensor([[0, 3], [1, 3]]), torch.tensor([[2, 3], [1, 3]])]
    assert kept_share(4, kept).tolist() == [0.25, 0.5, 0.25, 1.0]


def test_image_token_t_is_the_row_major_cell_of_its_grid():
    share = torch.zeros(20)
    share[5 + 4] = 1.0  # image 0 spans [5, 11) with grid 1x2x3: token 4 is row 1, column 1
    share[13 + 1] = 0.5  # image 1 spans [13, 17) with grid 1x2x2: token 1 is row 0, column 1
    grids = patch_shares(share, [(5, 11), (13, 17)], [(1, 2, 3), (1, 2, 2)])
    assert grids[0].tolist() == [[0, 0, 0], [0, 1, 0]]
    assert grids[1].tolist() == [[0, 0.5], [0, 0]]


def test_a_span_that_does_not_fit_its_grid_is_refused():
    with pytest.raises(ValueError, match="has 6 tokens"):
        patch_shares(torch.zeros(10), [(0, 6)], [(1, 2, 2)])


def test_picture_has_the_expected_size_and_is_not_blank(tmp_path: Path):
    images = [Image.new("RGB", (280, 168), (200, 200, 200)), Image.new("RGB", (280, 140), (90, 160, 220))]
    spans, grids = [(3, 63), (70, 120)], [(1, 6, 10), (1, 5, 10)]
    torch.manual_seed(0)
    kept = [torch.randperm(130)[:40].reshape(2, 20) for _ in range(3)]
    path = save_kept_picture(
        tmp_path / "kept.png",
        images,
        ["history 1", "current"],
        prompt_tokens=130,
        image_spans=spans,
        image_grids=grids,
        kept_positions=kept,
        method="gui_kv",
        budget=15,
    )
    picture = Image.open(path)
    width, height = figure_size([image.size for image in images])
    assert picture.size == (round(width * DPI), round(height * DPI)) == (800, 405)
    assert np.asarray(picture.convert("L"), dtype=np.float32).var() > 100


def test_no_kept_positions_is_a_clear_error():
    with pytest.raises(ValueError, match="record_positions=True"):
        kept_share(10, [])
