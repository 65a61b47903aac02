"""Which media fetch failures guikv's connector turns into a client error: those a retry does not
mend (refused connection, unresolvable host, invalid URL); a timeout stays vLLM's retryable 500."""

from __future__ import annotations

import aiohttp
import requests

from guikv.vllm.media import unreachable_cause, unreachable_error


def test_a_failure_no_retry_mends_is_a_one_line_cause() -> None:
    refused = requests.exceptions.ConnectionError(
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded\n(Connection refused)"
    )
    cause = unreachable_cause(refused)
    assert cause is not None and "Connection refused" in cause and "\n" not in cause
    assert unreachable_cause(aiohttp.InvalidURL("not a url")) == "not a url"
    error = unreachable_error("cannot connect to host 127.0.0.1:9: refused", "http://127.0.0.1:9/a.png")
    assert str(error).startswith("Failed to fetch media from URL: cannot connect to host 127.0.0.1:9")


def test_timeouts_and_other_errors_stay_vllms() -> None:
    assert unreachable_cause(requests.exceptions.ConnectTimeout("slow host")) is None
    assert unreachable_cause(aiohttp.ServerTimeoutError("slow host")) is None
    assert unreachable_cause(ValueError("bad image")) is None
