"""The plugin's entry into vLLM: a CPU platform that, when `additional_config` holds a `guikv`
section, refuses engine settings that would silently break compression and switches the engine to
guikv's scheduler and worker. Without that section it is vLLM's CPU platform unchanged.

Registered through a `vllm.platform_plugins` entry point (`guikv.vllm.entry.cpu_platform`),
active exactly where vLLM's own CPU platform would be.
"""

from __future__ import annotations

from typing import Any

from vllm.platforms.cpu import CpuPlatform

from guikv.vllm.refusal import refused
from guikv.vllm.settings import EngineFacts, engine_refusal, settings_from_additional_config

WORKER_CLS = "guikv.vllm.worker.CompressingCPUWorker"
SCHEDULER_CLS = "guikv.vllm.scheduler.CompressingScheduler"


def engine_facts(vllm_config: Any) -> EngineFacts:
    """The settings `engine_refusal` judges, read from a `VllmConfig`. (`vllm.config` is imported
    here, not at module load: vLLM imports this module while `vllm.config` itself loads.)"""
    from vllm.config import CompilationMode

    scheduler = vllm_config.scheduler_config
    parallel = vllm_config.parallel_config
    return EngineFacts(
        prefix_caching=bool(vllm_config.cache_config.enable_prefix_caching),
        chunked_prefill=bool(scheduler.enable_chunked_prefill),
        max_num_batched_tokens=int(scheduler.max_num_batched_tokens),
        max_model_len=int(vllm_config.model_config.max_model_len),
        speculative=vllm_config.speculative_config is not None,
        eager=vllm_config.compilation_config.mode == CompilationMode.NONE,
        tensor_parallel=int(parallel.tensor_parallel_size),
        pipeline_parallel=int(parallel.pipeline_parallel_size),
        data_parallel=int(parallel.data_parallel_size),
        kv_cache_dtype=str(vllm_config.cache_config.cache_dtype),
        model_type=str(vllm_config.model_config.hf_config.model_type),
    )


class GuiKVCpuPlatform(CpuPlatform):
    """vLLM's CPU platform; with `additional_config.guikv` it checks the engine and installs
    guikv's scheduler and worker."""

    @classmethod
    def check_and_update_config(cls, vllm_config: Any) -> None:
        """vLLM's CPU checks, plus guikv's refusals (each logged as one line first: `refused`) and
        classes when the plugin is configured."""
        try:
            settings = settings_from_additional_config(vllm_config.additional_config)
        except ValueError as error:
            raise refused(str(error)) from None
        if settings is None or vllm_config.model_config is None:
            super().check_and_update_config(vllm_config)
            return
        for name, owner, attribute, ours, default in (
            ("worker_cls", vllm_config.parallel_config, "worker_cls", WORKER_CLS, "auto"),
            ("scheduler_cls", vllm_config.scheduler_config, "scheduler_cls", SCHEDULER_CLS, None),
        ):
            current = getattr(owner, attribute)
            if current not in (default, ours):
                raise refused(f"{name}={current!r} is set, but the guikv plugin needs its own {name}")
            setattr(owner, attribute, ours)
        super().check_and_update_config(vllm_config)
        refusal = engine_refusal(engine_facts(vllm_config))
        if refusal is not None:
            raise refused(refusal)
