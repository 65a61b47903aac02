"""One line for every engine the plugin refuses, printed before vLLM's traceback.

A refusal raised while vLLM builds its config surfaces through pydantic's validation of
`VllmConfig` (or, in the engine-core process, through the engine's start-up) as a traceback of
40-60 lines with the reason on its last line. `refused` logs the reason as one `ERROR` line under
vLLM's logger first, so it is the first thing printed about the failure, and returns the
`ValueError` to raise (a program calling `vllm.LLM(...)` can still catch it).
"""

from __future__ import annotations

from vllm.logger import init_logger

logger = init_logger("vllm.guikv")
"""Under the `vllm` logger tree, so vLLM's log handler prints it."""


def refused(reason: str) -> ValueError:
    """Log `reason` (one line, starting `guikv: `) as an error and return the error to raise."""
    message = reason if reason.startswith("guikv: ") else f"guikv: {reason}"
    logger.error("%s", message)
    return ValueError(message)
