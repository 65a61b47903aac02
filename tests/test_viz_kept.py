"""The kept-token picture: shares per (layer, KV head), the token-to-patch mapping, the PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from guikv.config import CompressionConfig, changed_knobs
from guikv.viz.kept import (
    DPI,
    figure_size,
    kept_figure,
    kept_share,
    kept_title,
    patch_shares,
    save_kept_picture,
)


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
    assert picture.size == (round(width * DPI), round(height * DPI)) == (800, 425)
    assert np.asarray(picture.convert("L"), dtype=np.float32).var() > 100


def test_no_kept_positions_is_a_clear_error():
    with pytest.raises(ValueError, match="record_positions=True"):
        kept_share(10, [])


def test_titles_and_long_file_names_stay_inside_the_picture_and_their_panel():
    images = [Image.new("RGB", (280, 168)), Image.new("RGB", (280, 168))]
    grids = [np.zeros((6, 10)), np.zeros((6, 10))]
    name = "history 1: a_really_long_screenshot_file_name_from_the_recorder_2025-01-01_12-00-00.png"
    labels = [f"{name}\n0.0% of 60 tokens kept", "current: step03.png\n27.3% of 60 tokens kept"]
    title = "st_lite · budget 10% · st_lite_variant=paper\nkept 10.0% of 3,348 prompt tokens, 13.6% of 2,392"
    for shown in (images[:1], images):
        figure = kept_figure(shown, grids[: len(shown)], labels[: len(shown)], title)
        renderer = FigureCanvasAgg(figure).get_renderer()
        page = figure.bbox
        heading = figure.texts[0].get_window_extent(renderer)
        assert page.x0 <= heading.x0 and heading.x1 <= page.x1
        for axes in figure.axes[: len(shown)]:
            label = axes.title.get_window_extent(renderer)
            panel = axes.get_window_extent(renderer)
            assert panel.x0 - 1 <= label.x0 and label.x1 <= panel.x1 + 1, axes.title.get_text()
        assert figure.axes[0].title.get_text().endswith("tokens kept")  # the second line is whole


def test_the_title_names_the_knobs_that_are_not_the_defaults():
    config = CompressionConfig(method="st_lite", budget=5, window_size=4, st_lite_variant="paper")
    knobs = changed_knobs(config.to_dict())
    assert knobs == {"window_size": 4, "st_lite_variant": "paper"}
    assert changed_knobs(CompressionConfig(method="snapkv", budget=40).to_dict()) == {}
    title = kept_title(config.method, config.budget, knobs, torch.full((10,), 0.5), torch.ones(4))
    assert title.splitlines() == [
        "st_lite · budget 5% · window_size=4 · st_lite_variant=paper",
        "kept 50.0% of 10 prompt tokens, 100.0% of 4 image tokens",
    ]
