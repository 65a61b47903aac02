"""The Qwen2.5-VL / UI-TARS image resize convention, and the coordinate frame it defines.

Both UI-TARS-1.5 and OpenCUA answer in absolute pixels of the *smart-resized* screenshot (each side
a multiple of 28, area between `MIN_PIXELS` and `MAX_PIXELS`), not of the original. Parsers divide
by that size to get coordinates relative to the original image; formatters multiply by it. The
resize itself is `qwen_vl_utils.smart_resize`, the exact function the processors use, so the frame
cannot drift from what the model saw. It is imported on first use: qwen-vl-utils pulls in torch
and torchvision, which parsing and scoring never need.
"""

from __future__ import annotations

from functools import cache

from guikv.errors import UserInputError

IMAGE_FACTOR = 28
MIN_PIXELS = 100 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_PIXELS = 16384 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_ASPECT_RATIO = 200


def model_image_size(
    width: int,
    height: int,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """The (width, height) the model sees for a screenshot of `width` x `height` pixels.

    Model coordinates live in this frame: relative x = x / W', relative y = y / H'. Raises
    `UserInputError` for sizes the processor cannot handle (non-positive sides, an aspect ratio
    above 200, min_pixels above max_pixels) instead of the library's assert or ZeroDivisionError.
    """
    if width <= 0 or height <= 0:
        raise UserInputError(f"screenshot size must be positive, got {width}x{height}")
    if min_pixels <= 0 or max_pixels < min_pixels:
        raise UserInputError(
            f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise UserInputError(
            f"screenshot {width}x{height} has an aspect ratio above {MAX_ASPECT_RATIO}; "
            "the Qwen2.5-VL processor cannot take it"
        )
    return _smart_resize(width, height, min_pixels, max_pixels)


@cache
def _smart_resize(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    from qwen_vl_utils import smart_resize

    resized_height, resized_width = smart_resize(
        height, width, factor=IMAGE_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return resized_width, resized_height
