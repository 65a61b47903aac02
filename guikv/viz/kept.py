"""Which screenshot patches survived compression, drawn over the screenshots themselves.

Every prompt position is kept by some of the (layer, KV head) pairs; its shade is that share. An
image token t of screenshot i is the merged patch at row t // w, column t % w of its grid
(t, h, w) in merged-token units (`StepResult.image_grids[i]`, the Qwen-VL processors' row-major
order), and the grid covers the whole screenshot, so patch cells are drawn at the screenshot's
original size whatever resize the model saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from guikv.layout import Span

DPI = 100
PANEL_WIDTH = 4.0
"""Width of one screenshot panel, in inches."""
HEADER = 1.1
FOOTER = 0.75
"""Inches above the panels (titles) and below them (colour bar)."""
CMAP = "plasma"
MIN_FONT_SIZE = 7.0
"""The smallest a title's font shrinks to fit its width; below it, the longest line is cut in the
middle (`…`), so a long file name keeps its start and its extension."""


def kept_share(prompt_tokens: int, kept_positions: Sequence[torch.Tensor]) -> torch.Tensor:
    """[prompt_tokens] float: the share of (layer, KV head) pairs that kept each prompt position.

    `kept_positions` holds one [H_kv, kept] tensor of absolute positions per layer, as
    `run_step(..., record_positions=True)` records them.
    """
    if not kept_positions:
        raise ValueError("no kept positions: run the step with record_positions=True")
    counts = torch.zeros(prompt_tokens, dtype=torch.float64)
    pairs = 0
    for positions in kept_positions:
        flat = positions.reshape(-1).long().cpu()
        counts.index_add_(0, flat, torch.ones(flat.numel(), dtype=torch.float64))
        pairs += positions.shape[0]
    return counts / pairs


def patch_shares(
    share: torch.Tensor, image_spans: Sequence[Span], image_grids: Sequence[tuple[int, int, int]]
) -> list[np.ndarray]:
    """Per screenshot, an [h, w] array of its patches' kept shares (averaged over t frames)."""
    if len(image_spans) != len(image_grids):
        raise ValueError(f"{len(image_spans)} image spans but {len(image_grids)} image grids")
    grids = []
    for (start, end), (frames, height, width) in zip(image_spans, image_grids, strict=True):
        if end - start != frames * height * width:
            raise ValueError(
                f"image span [{start}, {end}) has {end - start} tokens, "
                f"but its grid {frames}x{height}x{width} has {frames * height * width}"
            )
        grids.append(share[start:end].reshape(frames, height, width).mean(0).numpy())
    return grids


def figure_size(image_sizes: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """(width, height) in inches for screenshots of these (width, height) pixels side by side."""
    aspect = max(height / width for width, height in image_sizes)
    return PANEL_WIDTH * len(image_sizes), PANEL_WIDTH * aspect + HEADER + FOOTER


def kept_figure(
    images: Sequence[Image.Image], shares: Sequence[np.ndarray], labels: Sequence[str], title: str
) -> Figure:
    """Screenshots side by side, dimmed, each patch tinted by the share of layers x KV heads that
    kept it (untinted: dropped everywhere)."""
    width, height = figure_size([image.size for image in images])
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    bottom, top = FOOTER / height, 1 - HEADER / height
    axes = figure.subplots(1, len(images), squeeze=False)[0]
    figure.subplots_adjust(left=0.01, right=0.99, bottom=bottom, top=top, wspace=0.04)
    cmap = colormaps[CMAP]
    for ax, image, grid in zip(axes, images, shares, strict=True):
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255
        ax.imshow(0.45 * gray, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
        overlay = cmap(grid)
        overlay[..., 3] = np.where(grid > 0, 0.2 + 0.5 * grid, 0.0)
        ax.imshow(overlay, extent=(0, image.width, image.height, 0), interpolation="nearest")
        ax.set_axis_off()
    renderer = figure.canvas.get_renderer()
    for ax, label in zip(axes, labels, strict=True):
        fit_width(ax.set_title(label, fontsize=9), ax.get_window_extent(renderer).width, renderer)
    heading = figure.suptitle(title, fontsize=11, y=1 - 0.15 / height, va="top")
    fit_width(heading, 0.98 * width * DPI, renderer)
    bar_axes = figure.add_axes((0.3, 0.45 / height, 0.4, 0.1 / height))
    bar = figure.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=bar_axes, orientation="horizontal")
    bar.set_label("share of layers × KV heads that kept the patch", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return figure


def fit_width(text: Text, width: float, renderer: Any) -> None:
    """Make `text` at most `width` pixels wide: a smaller font first (down to `MIN_FONT_SIZE`), then
    its longest line cut in the middle."""
    while text.get_window_extent(renderer).width > width and text.get_fontsize() > MIN_FONT_SIZE:
        text.set_fontsize(max(MIN_FONT_SIZE, text.get_fontsize() - 0.5))
    while text.get_window_extent(renderer).width > width:
        lines = text.get_text().split("\n")
        longest = max(range(len(lines)), key=lambda index: len(lines[index]))
        line = lines[longest].replace("…", "")
        if len(line) < 4:
            return
        middle = len(line) // 2
        lines[longest] = f"{line[: middle - 1]}…{line[middle + 1 :]}"
        text.set_text("\n".join(lines))


def kept_title(
    method: str, budget: float, knobs: Mapping[str, Any], share: torch.Tensor, image_share: torch.Tensor
) -> str:
    """The picture's title: method, budget and the other knobs set, then the share of the prompt's
    tokens (`share`, one value per position) and of its image tokens kept."""
    settings = "".join(f" · {name}={value}" for name, value in knobs.items())
    return (
        f"{method} · budget {budget:g}%{settings}\n"
        f"kept {100 * float(share.mean()):.1f}% of {share.numel():,} prompt tokens, "
        f"{100 * float(image_share.mean()):.1f}% of {image_share.numel():,} image tokens"
    )


def save_kept_picture(
    path: str | Path,
    images: Sequence[Image.Image],
    labels: Sequence[str],
    *,
    prompt_tokens: int,
    image_spans: Sequence[Span],
    image_grids: Sequence[tuple[int, int, int]],
    kept_positions: Sequence[torch.Tensor],
    method: str,
    budget: float,
    knobs: Mapping[str, Any] | None = None,
) -> Path:
    """Write the kept-patch picture of one step to `path` (PNG) and return the path.

    Each panel's label gets the share of that screenshot's tokens kept; the title names the
    method, the budget, the other `knobs` set (e.g. `changed_knobs` of the config: what a reader
    needs to know the picture is not of the defaults) and the share of the prompt and of the image
    tokens kept. Titles too wide for their panel or the picture shrink, then are cut (`fit_width`).
    """
    share = kept_share(prompt_tokens, kept_positions)
    grids = patch_shares(share, image_spans, image_grids)
    per_image = [share[start:end] for start, end in image_spans]
    image_share = torch.cat(per_image) if per_image else share[:0]
    title = kept_title(method, budget, knobs or {}, share, image_share)
    panel_labels = [
        f"{label}\n{100 * float(tokens.mean()):.1f}% of {tokens.numel():,} tokens kept"
        for label, tokens in zip(labels, per_image, strict=True)
    ]
    figure = kept_figure(images, grids, panel_labels, title)
    figure.savefig(path, dpi=DPI)
    return Path(path)
