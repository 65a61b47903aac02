"""Run one vLLM engine in this process over a few prompts and pickle what the tests check.

Each engine configuration runs in its own subprocess (`python tests_vllm/engine_run.py SPEC OUT`):
vLLM keeps process-wide state, so one process serves one engine. The engine is in-process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so the scheduler and the worker's runner are read directly.
SPEC (JSON): model, guikv settings (or null for plain vLLM), KV cache bytes, prompts (chat text and
image paths), max_tokens, ignore_eos. OUT (pickle): per prompt the generated token ids and the prompt ids, the
worker's records, the scheduler's totals, and a per-step trace of which requests held which blocks.
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
    """The engine a SPEC describes (`tiny_engine_args`, seed 0)."""
    args = tiny_engine_args(
        spec["model"], kv_cache_bytes=spec["kv_cache_bytes"], max_len=4096, guikv=spec.get("guikv")
    )
    return LLM(**args, seed=0)


def request_blocks(scheduler: Any) -> dict[str, list[int]]:
    """Block ids each running request holds now."""
    manager = scheduler.kv_cache_manager
    return {
        request.request_id: list(manager.get_block_ids(request.request_id)[0])
        for request in scheduler.running
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    llm = engine(spec)
    params = SamplingParams(
        max_tokens=spec["max_tokens"], temperature=0.0, ignore_eos=spec.get("ignore_eos", False)
    )
    core = llm.llm_engine.engine_core.engine_core
    scheduler = core.scheduler
    order: list[str] = []
    for index, prompt in enumerate(spec["prompts"]):
        images = [Image.open(path).convert("RGB") for path in prompt["images"]]
        request = {"prompt": prompt["text"], **({"multi_modal_data": {"image": images}} if images else {})}
        llm.llm_engine.add_request(str(index), request, params)
        order.append(str(index))
    finished: dict[str, Any] = {}
    trace: list[dict[str, list[int]]] = []
    while llm.llm_engine.has_unfinished_requests():
        for output in llm.llm_engine.step():
            if output.finished:
                finished[output.request_id] = output
        trace.append(request_blocks(scheduler))
    runner = core.model_executor.driver_worker.worker.model_runner
    result = {
        "outputs": [
            {
                "prompt_ids": list(finished[i].prompt_token_ids),
                "tokens": list(finished[i].outputs[0].token_ids),
            }
            for i in order
        ],
        "report": runner.guikv_report() if hasattr(runner, "guikv_report") else None,
        "scheduler_totals": getattr(scheduler, "guikv_totals", None),
        "trace": trace,
        "num_blocks": scheduler.kv_cache_manager.block_pool.num_gpu_blocks,
    }
    Path(sys.argv[2]).write_bytes(pickle.dumps(result))


if __name__ == "__main__":
    main()
