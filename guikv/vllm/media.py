"""An image URL the server cannot reach is the request's fault: a 4xx with one line, not a 500.

vLLM 0.32 answers a media URL whose host refuses the connection, does not resolve or fails its
TLS handshake with HTTP 500 after its own retries (`vllm/multimodal/media/connector.py`,
`_wrap_media_fetch_error` treats connection failures as transient), and the `openai` client
retries a 500 twice more. `ClientErrorMediaConnector` is vLLM's own HTTP media connector,
registered in vLLM's `MEDIA_CONNECTOR_REGISTRY` under `guikv` and chosen with
`VLLM_MEDIA_CONNECTOR=guikv` (vLLM's extension point; `guikv serve` sets both): after vLLM's
retries, such a failure becomes vLLM's `VLLMUnprocessableEntityError`, which vLLM answers with 422
and a one-line message naming the URL. Timeouts and 5xx answers of the image host stay vLLM's 500
(they can pass: a retry may succeed); 4xx answers of the image host are already 422 in vLLM.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import requests
from vllm.exceptions import VLLMUnprocessableEntityError
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector

CONNECTOR_NAME = "guikv"
"""The name `VLLM_MEDIA_CONNECTOR` selects this connector by."""

UNREACHABLE = (aiohttp.ClientConnectorError, aiohttp.InvalidURL, requests.exceptions.ConnectionError)
"""Fetch failures that a retry does not mend: connection refused, a host that does not resolve, a
failed TLS handshake, an invalid URL (aiohttp for the async path, requests for the sync one).
`requests`' connect timeout is a `ConnectionError` too and is left out (`unreachable_cause`)."""


def unreachable_cause(error: BaseException) -> str | None:
    """Why a fetch failed for good, in one line, or None when a retry might succeed."""
    if isinstance(error, requests.exceptions.Timeout) or not isinstance(error, UNREACHABLE):
        return None
    if isinstance(error, aiohttp.ClientConnectorError):
        reason = error.os_error.strerror or str(error.os_error)
        return f"cannot connect to host {error.host}:{error.port}: {' '.join(reason.split())}"
    return " ".join(str(error).split())


def unreachable_error(cause: str, url: str) -> VLLMUnprocessableEntityError:
    """The error vLLM answers with 422 and one line: the cause, then the URL."""
    return VLLMUnprocessableEntityError(
        f"Failed to fetch media from URL: {cause}", parameter="image_url", value=url
    )


@MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR_NAME)
class ClientErrorMediaConnector(MediaConnector):
    """vLLM's HTTP media connector, answering an unreachable media URL with a client error (422)."""

    def load_from_url(self, url: str, media_io: Any, *, fetch_timeout: int | None = None) -> Any:
        """vLLM's fetch; an unreachable URL raises `VLLMUnprocessableEntityError`."""
        try:
            return super().load_from_url(url, media_io, fetch_timeout=fetch_timeout)
        except UNREACHABLE as error:
            cause = unreachable_cause(error)
            if cause is None:
                raise
            raise unreachable_error(cause, url) from error

    async def load_from_url_async(self, url: str, media_io: Any, *, fetch_timeout: int | None = None) -> Any:
        """vLLM's asynchronous fetch; an unreachable URL raises `VLLMUnprocessableEntityError`."""
        try:
            return await super().load_from_url_async(url, media_io, fetch_timeout=fetch_timeout)
        except UNREACHABLE as error:
            cause = unreachable_cause(error)
            if cause is None:
                raise
            raise unreachable_error(cause, url) from error
