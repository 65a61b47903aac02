"""The process `guikv serve` becomes: vLLM's OpenAI-compatible API server
(`python -m vllm.entrypoints.openai.api_server`, run unchanged with the same arguments) with
guikv's media connector registered and selected, so an image URL the server cannot reach gets a
422 with one line instead of a 500 (`guikv.vllm.media`). `VLLM_MEDIA_CONNECTOR`, when set, wins.
"""

from __future__ import annotations

import os
import runpy

from guikv.vllm.media import CONNECTOR_NAME

VLLM_API_SERVER = "vllm.entrypoints.openai.api_server"


def main() -> None:
    """Select guikv's media connector (unless the environment names one) and run vLLM's server."""
    os.environ.setdefault("VLLM_MEDIA_CONNECTOR", CONNECTOR_NAME)
    runpy.run_module(VLLM_API_SERVER, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
