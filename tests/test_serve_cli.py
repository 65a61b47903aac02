"""`guikv serve` without vLLM: the command line it hands vLLM, and every mistake it refuses in one
line before anything starts (the server itself is tested in tests_vllm/test_serve.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from guikv.errors import UserInputError
from guikv.vllm.settings import PluginSettings
from guikv_cli.serve import DEFAULT_MAX_MODEL_LEN, vllm_command

SETTINGS = PluginSettings.from_mapping({"method": "gui_kv", "budget": 10, "subspace": "svd"})


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guikv_cli", "serve", *args], capture_output=True, text=True, timeout=120
    )


def test_command_turns_the_plugin_on_with_the_engine_flags_it_needs() -> None:
    command = vllm_command("/models/ui-tars", SETTINGS, "127.0.0.1", 8001, ["--dtype", "bfloat16"])
    assert command[1:3] == ["-m", "guikv.vllm.api_server"]
    config = json.loads(command[command.index("--additional-config") + 1])
    assert PluginSettings.from_mapping(config["guikv"]) == SETTINGS
    for flag in ("--no-enable-prefix-caching", "--no-enable-chunked-prefill", "--enforce-eager"):
        assert flag in command
    assert command[command.index("--max-model-len") + 1] == str(DEFAULT_MAX_MODEL_LEN)
    assert command[command.index("--max-num-batched-tokens") + 1] == str(DEFAULT_MAX_MODEL_LEN)
    assert command[command.index("--host") + 1 : command.index("--host") + 4] == [
        "127.0.0.1",
        "--port",
        "8001",
    ]
    assert command[-2:] == ["--dtype", "bfloat16"]


def test_batch_token_budget_follows_the_users_context_length() -> None:
    command = vllm_command("m", SETTINGS, "127.0.0.1", 8000, ["--max-model-len=16384"])
    assert command.count("--max-model-len") == 0
    assert command[command.index("--max-num-batched-tokens") + 1] == "16384"


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--enable-prefix-caching"], "prefix caching would share blocks"),
        (["--port", "9"], "--port after -- is set by guikv serve itself"),
        (["--additional-config={}"], "--additional-config after --"),
    ],
)
def test_conflicting_vllm_flags_are_refused(arguments: list[str], fragment: str) -> None:
    with pytest.raises(UserInputError, match=fragment):
        vllm_command("m", SETTINGS, "127.0.0.1", 8000, arguments)


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--method", "pyramidkv"], "--method='pyramidkv' is refused by the vLLM plugin"),
        (["--budget", "0"], "--budget=0.0 is invalid: expected a percentage"),
        (["--set", "subspace=lu"], "--set subspace='lu' is invalid"),
        (["--set", "windows=3"], "--set windows is unknown"),
        (["--port", "70000"], "--port 70000 is invalid"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(arguments: list[str], fragment: str) -> None:
    result = run_serve("some/model", *arguments)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr
    assert fragment in lines[0]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="this venv has vLLM")
def test_without_vllm_serve_says_how_to_install_it() -> None:
    result = run_serve("some/model")
    assert result.returncode == 2
    assert 'pip install "guikv[vllm]"' in result.stderr
