"""The rows of a left-padded batch: how much padding leads each row, and each row's own slice of
a prefill's tensors.

A batch of prompts of different lengths is padded on the left (the processor's padding side set
to "left"), so every row's prompt ends at the same column and the newest tokens line up. Row `r`'s
real tokens are the columns `padding[r]:` of every [B, L, ...] tensor; the compressor scores and
keeps only those, so padding is never kept and never scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

PADDING_HINT = "set processor.tokenizer.padding_side = 'left' before building the batch"


def left_padding(attention_mask: torch.Tensor | None, batch: int, length: int) -> tuple[int, ...]:
    """Leading padding tokens of each row, read from a 2-D attention mask [B, L] (1 = token).

    No mask means no padding. A row whose padding is not all at its start (a right-padded batch,
    or a hole) raises `ValueError`: its prompt would not end where the others do.
    """
    if attention_mask is None or attention_mask.dim() != 2:
        return (0,) * batch
    present = attention_mask.bool()
    tokens = present.sum(dim=-1)
    padding = length - tokens
    columns = torch.arange(length, device=attention_mask.device)
    if not torch.equal(present, columns[None, :] >= padding[:, None]):
        raise ValueError(
            "compress() needs a left-padded batch (every row's padding before its tokens): " + PADDING_HINT
        )
    return tuple(int(pad) for pad in padding.tolist())


def row_positions(position_ids: torch.Tensor | None, row: int, padding: int) -> torch.Tensor | None:
    """Row `row`'s real columns of position ids ([B, L], or M-RoPE's [3 or 4, B, L])."""
    if position_ids is None:
        return None
    if position_ids.dim() == 3:
        return position_ids[:, row : row + 1, padding:]
    return position_ids[row : row + 1, padding:]


def row_grids(
    image_grid_thw: torch.Tensor | None, images_per_row: list[int], row: int
) -> torch.Tensor | None:
    """Row `row`'s entries of a batch's `image_grid_thw` (the processor lists every row's images
    in row order), or None when the counts do not add up (e.g. the batch also holds videos)."""
    if image_grid_thw is None or len(image_grid_thw) != sum(images_per_row):
        return None
    start = sum(images_per_row[:row])
    return image_grid_thw[start : start + images_per_row[row]]


def left_padded(rows: Sequence[Mapping[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The left-padded batch of several prompts' inputs, each built alone (one row each): every
    [1, L_r] tensor (input_ids, attention_mask, mm_token_type_ids, ...) padded on the left to the
    longest row (input ids with `pad_token_id`, the rest with 0), the per-image tensors
    (image_grid_thw, ...) joined in row order; pixel tensors are left out (the padded batch
    describes prompts already prefilled)."""
    lengths = [int(row["input_ids"].shape[-1]) for row in rows]
    longest = max(lengths)
    batch: dict[str, torch.Tensor] = {}
    for name, first in rows[0].items():
        if not isinstance(first, torch.Tensor) or name.startswith("pixel_values"):
            continue
        tensors = [row[name] for row in rows]
        if first.dim() == 2 and all(
            tensor.shape == (1, length) for tensor, length in zip(tensors, lengths, strict=True)
        ):
            value = pad_token_id if name == "input_ids" else 0
            batch[name] = torch.cat(
                [
                    torch.nn.functional.pad(tensor, (longest - length, 0), value=value)
                    for tensor, length in zip(tensors, lengths, strict=True)
                ]
            )
        else:
            batch[name] = torch.cat(tensors)
    return batch
