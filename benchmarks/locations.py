"""Where a benchmark's files are: its data and screenshot directories, from the `--data` and
`--images` flags, else the benchmark's own environment variables (the original evaluation's, e.g.
`AGENTNETBENCH_DATA` / `AGENTNETBENCH_IMGS`). `guikv eval` and `guikv analyze-attention` both read
them here, so the two flags mean the same in both.
"""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.common import BenchmarkSpec
from guikv.errors import UserInputError


def data_paths(spec: BenchmarkSpec, data: Path | None, images: Path | None) -> tuple[Path, Path]:
    """The benchmark's data and screenshot directories (absolute), each from its flag or else its
    environment variable; neither is a one-line error naming both."""
    chosen: list[Path] = []
    for given, env, flag in ((data, spec.data_env, "--data"), (images, spec.images_env, "--images")):
        value = given if given is not None else os.environ.get(env)
        if not value:
            raise UserInputError(f"{spec.name}: no {flag[2:]} directory; pass {flag} or set {env}")
        chosen.append(Path(value).expanduser().resolve())
    return chosen[0], chosen[1]
