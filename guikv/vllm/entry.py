"""The `vllm.platform_plugins` entry point. vLLM calls it while it resolves its platform, before
`vllm.config` can be imported, so this module imports nothing of vLLM at load time and names the
platform class by its qualified name."""

from __future__ import annotations

PLATFORM_CLS = "guikv.vllm.platform.GuiKVCpuPlatform"


def cpu_platform() -> str | None:
    """guikv's CPU platform where vLLM would pick its own CPU platform, else None."""
    from vllm.platforms import cpu_platform_plugin

    return PLATFORM_CLS if cpu_platform_plugin() else None
