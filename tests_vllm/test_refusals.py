"""Plain vLLM (not `guikv serve`) started with a `guikv` section it cannot honour stops with the
reason as its first error line, before vLLM's traceback (which ends with the same reason)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import free_port


def test_prefix_caching_refusal_is_the_first_error_line(tiny_model: Path) -> None:
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model)]
    command += ["--additional-config", json.dumps({"guikv": {"method": "gui_kv", "budget": 10}})]
    command += ["--max-model-len", "4096", "--port", str(free_port())]
    done = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode != 0
    lines = done.stdout.splitlines()
    failure = [i for i, line in enumerate(lines) if " ERROR " in line or line.startswith("Traceback")]
    assert failure, done.stdout[-3000:]
    first = lines[failure[0]]
    assert " ERROR " in first and "guikv: enable_prefix_caching is on" in first, done.stdout[-3000:]
    assert first.endswith("pass --no-enable-prefix-caching")
    assert any(line.startswith("Traceback") for line in lines[failure[0] :])
