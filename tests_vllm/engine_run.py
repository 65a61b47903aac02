"""Run one vLLM engine in this process over a few prompts and pickle what the tests check.

Each engine configuration runs in its own subprocess (`python tests_vllm/engine_run.py SPEC OUT`):
vLLM keeps process-wide state, so one process serves one engine. The engine is in-process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so the scheduler and the worker's runner are read directly.
SPEC (JSON): model, guikv settings (or null for plain vLLM), KV cache bytes, prompts (chat text,
image paths, optionally `allowed_token_ids`), max_tokens, ignore_eos, and `solo` (first run each
prompt alone, one after the other, then all of them at once). OUT (pickle): per prompt the
generated token ids and the prompt ids (and its solo run's), the worker's records, the scheduler's
totals, a per-step trace of which requests held which blocks, and a per-step trace of every
unfinished request's state as vLLM's scheduler holds it (status, computed and output tokens, blocks,
vLLM's own preemption count).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

from PIL import Image
from vllm import LLM, SamplingParams

from guikv.vllm.tiny import tiny_engine_args


def engine(spec: dict[str, Any]) -> LLM:
    """The engine a SPEC describes (`tiny_engine_args`, seed 0; context length `max_len`, 4096 by
    default)."""
    args = tiny_engine_args(
        spec["model"],
        kv_cache_bytes=spec["kv_cache_bytes"],
        max_len=spec.get("max_len", 4096),
        guikv=spec.get("guikv"),
    )
    return LLM(**args, seed=0)


def request_blocks(scheduler: Any) -> dict[str, list[int]]:
    """Block ids each running request holds now."""
    manager = scheduler.kv_cache_manager
    return {
        request.request_id: list(manager.get_block_ids(request.request_id)[0])
        for request in scheduler.running
    }


def request_states(scheduler: Any) -> dict[str, dict[str, Any]]:
    """Every unfinished request as vLLM's scheduler holds it now."""
    manager = scheduler.kv_cache_manager
    return {
        request_id: {
            "status": request.status.name,
            "computed": request.num_computed_tokens,
            "outputs": request.num_output_tokens,
            "preemptions": request.num_preemptions,
            "blocks": len(manager.get_block_ids(request_id)[0]),
        }
        for request_id, request in scheduler.requests.items()
    }


def run_batch(llm: LLM, spec: dict[str, Any], indices: list[int], prefix: str, trace: dict) -> dict:
    """Add the prompts `indices` at once and step the engine until all finished; their outputs."""
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    for index in indices:
        prompt = spec["prompts"][index]
        params = SamplingParams(
            max_tokens=spec["max_tokens"],
            temperature=0.0,
            ignore_eos=spec.get("ignore_eos", False),
            allowed_token_ids=prompt.get("allowed_token_ids"),
        )
        images = [Image.open(path).convert("RGB") for path in prompt["images"]]
        request = {"prompt": prompt["text"], **({"multi_modal_data": {"image": images}} if images else {})}
        llm.llm_engine.add_request(f"{prefix}{index}", request, params)
    finished: dict[str, Any] = {}
    while llm.llm_engine.has_unfinished_requests():
        for output in llm.llm_engine.step():
            if output.finished:
                finished[output.request_id] = output
        trace["blocks"].append(request_blocks(scheduler))
        trace["states"].append(request_states(scheduler))
    return {
        index: {
            "prompt_ids": list(finished[f"{prefix}{index}"].prompt_token_ids),
            "tokens": list(finished[f"{prefix}{index}"].outputs[0].token_ids),
        }
        for index in indices
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    llm = engine(spec)
    core = llm.llm_engine.engine_core.engine_core
    scheduler = core.scheduler
    indices = list(range(len(spec["prompts"])))
    solo_trace: dict[str, list] = {"blocks": [], "states": []}
    solo: dict[int, Any] = {}
    if spec.get("solo", False):
        for index in indices:
            solo.update(run_batch(llm, spec, [index], "solo-", solo_trace))
    trace: dict[str, list] = {"blocks": [], "states": []}
    outputs = run_batch(llm, spec, indices, "", trace)
    runner = core.model_executor.driver_worker.worker.model_runner
    result = {
        "outputs": [outputs[i] for i in indices],
        "solo_outputs": [solo[i] for i in indices] if solo else None,
        "report": runner.guikv_report() if hasattr(runner, "guikv_report") else None,
        "scheduler_totals": getattr(scheduler, "guikv_totals", None),
        "trace": trace["blocks"],
        "states": trace["states"],
        "num_blocks": scheduler.kv_cache_manager.block_pool.num_gpu_blocks,
    }
    Path(sys.argv[2]).write_bytes(pickle.dumps(result))


if __name__ == "__main__":
    main()
