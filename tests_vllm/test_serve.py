"""`guikv serve` answered by the official `openai` client on 127.0.0.1: UI-TARS computer-use
messages with three screenshots (two history steps with their outputs, then the current screen
and the prompt) as base64 `image_url` parts; a malformed request gets vLLM's OpenAI-style error
and the server keeps answering; an image URL the server cannot fetch is a client error (422, one
line), not a 500 the client retries; each compressed request is logged with its blocks freed."""

from __future__ import annotations

import base64
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import free_port

from guikv.agents import ui_tars

HISTORY = [
    "Thought: The settings icon is in the top bar.\nAction: click(start_box='(1840,20)')",
    "Thought: The menu is open; the display entry is second.\nAction: click(start_box='(1700,120)')",
]


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`guikv serve` on a free port with GUI-KV at 10%; its log file."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    command = [sys.executable, "-m", "guikv_cli", "serve", str(tiny_model), "--method", "gui_kv"]
    command += ["--budget", "10", "--port", str(port), "--", "--max-model-len", "8192", "--dtype", "float32"]
    command += ["--block-size", "32", "--kv-cache-memory-bytes", str(256 << 20)]
    command += ["--limit-mm-per-prompt", '{"image": 3}', "--served-model-name", "ui-tars-tiny"]
    environment = {**os.environ, "VLLM_MEDIA_FETCH_MAX_RETRIES": "1"}
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=environment
        )
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"guikv serve exited with {process.returncode}:\n{log.read_text()[-4000:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"guikv serve did not become healthy:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield {"client": openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY"), "log": log}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def openai_messages(screens: list[Path]) -> list[dict[str, Any]]:
    """UI-TARS's computer-use conversation (one history output per earlier screenshot) with its
    screenshots as base64 PNG `image_url` parts."""
    history = HISTORY[: len(screens) - 1]
    messages = ui_tars.computer_use_messages("Open the display settings", screens, history)
    converted = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            converted.append(message)
            continue
        parts = []
        for part in content:
            if part["type"] == "image":
                data = base64.b64encode(Path(part["image"]).read_bytes()).decode()
                parts.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}})
            else:
                parts.append(part)
        converted.append({**message, "content": parts})
    return converted


def test_openai_client_gets_an_answer_and_the_request_is_compressed(
    server: dict, screens: list[Path]
) -> None:
    messages = openai_messages(screens)
    parts = [part for m in messages if isinstance(m["content"], list) for part in m["content"]]
    assert sum(part["type"] == "image_url" for part in parts) == 3
    reply = server["client"].chat.completions.create(
        model="ui-tars-tiny", messages=messages, max_tokens=8, temperature=0.0
    )
    assert reply.choices[0].message.content is not None
    assert reply.usage.prompt_tokens > 3 * 1196
    log = server["log"].read_text()
    assert (
        f"{reply.usage.prompt_tokens} prompt tokens, kept {reply.usage.prompt_tokens // 10} per layer" in log
    )


def test_malformed_request_gets_an_openai_error_and_the_server_stays_up(
    server: dict, screens: list[Path]
) -> None:
    client = server["client"]
    broken = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
        }
    ]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="ui-tars-tiny", messages=broken, max_tokens=4)
    assert raised.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    reply = client.chat.completions.create(
        model="ui-tars-tiny", messages=openai_messages(screens[-1:]), max_tokens=4, temperature=0.0
    )
    assert reply.choices[0].finish_reason in ("length", "stop")


@pytest.fixture(scope="module")
def empty_http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local HTTP server over an empty folder (every path is a 404); its base URL."""
    folder = tmp_path_factory.mktemp("empty-site")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}"
    finally:
        site.shutdown()


def test_an_image_url_the_server_cannot_fetch_is_a_client_error_in_one_line(
    server: dict, empty_http_server: str
) -> None:
    client = server["client"].with_options(max_retries=0)
    refused_port = free_port()
    for url, cause in (
        (f"http://127.0.0.1:{refused_port}/screen.png", f"cannot connect to host 127.0.0.1:{refused_port}"),
        (f"{empty_http_server}/screen.png", "HTTP 404 error"),
    ):
        parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Click"}]
        messages = [{"role": "user", "content": parts}]
        with pytest.raises(openai.UnprocessableEntityError) as raised:
            client.chat.completions.create(model="ui-tars-tiny", messages=messages, max_tokens=4)
        message = raised.value.body["message"]
        assert cause in message and "\n" not in message, message
