"""Screenshot inputs shared by `guikv analyze-attention` and `guikv compare`: checking the files
and the agent family that prompts the model (the prompt itself is `AgentFamily.one_step_messages`,
the same as `guikv infer`'s).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from guikv.errors import UserInputError


def check_screenshots(paths: Sequence[Path]) -> list[Path]:
    """Every path must be a readable image file; a bad one is a one-line error naming it."""
    for path in paths:
        if not path.is_file():
            raise UserInputError(f"SCREENSHOT {path}: no such file")
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError) as error:
            raise UserInputError(f"SCREENSHOT {path}: not a readable image ({error})") from None
    return list(paths)


def resolve_family(model: Any, family: str | None) -> Any:
    """The agent family named by `--family`, else the one detected from the model's config."""
    from guikv.agents import detect_family, get_family

    return get_family(family or detect_family(model.config))
