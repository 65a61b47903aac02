"""`python -m benchmarks.vllm_concurrency` (in the vLLM venv): how many three-screenshot agent
requests one vLLM engine runs at once in a fixed KV space, with the full cache and with the guikv
plugin, and what selection costs per request.

One engine per run (`--method full` is vLLM without the plugin); each run appends one row to the
JSON file. The model is the tiny head_dim-64 Qwen2.5-VL (`guikv.vllm.tiny`, random weights) in
fp32; the KV space defaults to 72 MiB, which holds as many tokens of it (18,432) as 1 GiB holds of
UI-TARS-1.5-7B's bf16 cache (57 KiB per token), so the concurrency is the one that GPU budget
gives a 7B model, while the speeds are this CPU's on the tiny model. Measured, never asserted:

- peak and mean number of requests running at once, over the steps where any request waited;
- total wall time and generated tokens per second for all requests;
- selection (scoring + compaction) time per request as a share of its prefill step's time, from
  requests run one at a time after the concurrent batch: the fastest selection over the fastest
  prefill of 6 runs (on a shared 2-core machine vLLM's thread-bound OpenMP makes single timings
  swing by 10x; the minimum is the least disturbed).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import typer
from PIL import Image
from rich.console import Console
from transformers import AutoProcessor

from benchmarks.flags import run_script
from guikv.models.tiny import cache_root
from guikv.vllm.tiny import build_vllm_tiny, tiny_engine_args

REPO_SCREENS = Path(__file__).resolve().parents[1] / "examples" / "screens"
MIB = 2**20
TASKS = ("Open the display settings", "Close the settings window", "Search for the weather", "Save the file")


def tiny_model() -> Path:
    """The benchmark model, built once under guikv's cache directory."""
    path = cache_root() / "vllm-tiny-qwen2_5_vl-v1"
    if not (path / "model.safetensors").exists():
        path.mkdir(parents=True, exist_ok=True)
        build_vllm_tiny(path)
    return path


def prompts(model: Path, count: int) -> list[dict[str, Any]]:
    """`count` three-screenshot chat prompts (the demo screenshots, differing tasks)."""
    processor = AutoProcessor.from_pretrained(model)
    images = [Image.open(path).convert("RGB") for path in sorted(REPO_SCREENS.glob("*.png"))]
    content = [{"type": "image"} for _ in images]
    requests = []
    for index in range(count):
        task = f"{TASKS[index % len(TASKS)]} (agent {index})"
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": task}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        requests.append({"prompt": text, "multi_modal_data": {"image": images}})
    return requests


def run(method: str, budget: float, kv_mib: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """One engine over `requests` concurrent prompts, then 3 prompts one at a time; the row."""
    from vllm import LLM, SamplingParams

    model = tiny_model()
    guikv = None if method == "full" else {"method": method, "budget": budget}
    args = tiny_engine_args(model, kv_cache_bytes=kv_mib * MIB, max_len=8192, guikv=guikv)
    llm = LLM(**args, max_num_seqs=256)
    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    batch = prompts(model, requests)
    for index, request in enumerate(batch):
        engine.add_request(f"r{index}", request, params)
    running: list[int] = []
    generated = 0
    started = time.perf_counter()
    while engine.has_unfinished_requests():
        for output in engine.step():
            generated += len(output.outputs[0].token_ids) if output.finished else 0
        if scheduler.waiting:
            running.append(len(scheduler.running))
    wall = time.perf_counter() - started
    shares = selection_shares(engine, batch[:3], params) if method != "full" else {}
    return {
        "method": method,
        "budget": 100.0 if method == "full" else budget,
        "kv_cache_mib": kv_mib,
        "kv_blocks": scheduler.kv_cache_manager.block_pool.num_gpu_blocks,
        "requests": requests,
        "max_tokens": max_tokens,
        "peak_running": max(running, default=requests),
        "mean_running_while_queued": sum(running) / len(running) if running else float(requests),
        "wall_seconds": wall,
        "generated_tokens_per_second": generated / wall,
        "requests_per_minute": 60 * requests / wall,
        **shares,
        "num_threads": os.cpu_count(),
    }


def selection_shares(
    engine: Any, batch: list[dict[str, Any]], params: Any, repeats: int = 6
) -> dict[str, Any]:
    """Selection time against prefill step time for requests run alone (one prefill per step),
    `repeats` times: every (selection, prefill) pair in seconds, and the share of the fastest
    selection in the fastest prefill (the minimum is the timing least disturbed by other jobs)."""
    runner = engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    pairs = []
    for index in range(repeats):
        runner.guikv_report(clear=True)
        engine.add_request(f"alone{index}", batch[index % len(batch)], params)
        started = time.perf_counter()
        engine.step()
        prefill = time.perf_counter() - started
        while engine.has_unfinished_requests():
            engine.step()
        pairs.append((runner.guikv_report()["records"][-1]["seconds"], prefill))
    share = min(selection for selection, _ in pairs) / min(prefill for _, prefill in pairs)
    return {"selection_and_prefill_seconds": pairs, "selection_share_of_prefill": share}


def main(
    method: str = typer.Option("gui_kv", help="full (vLLM without the plugin) or a plugin method."),
    budget: float = typer.Option(10.0, help="Percent kept per layer (plugin methods)."),
    kv_mib: int = typer.Option(72, help="KV cache space in MiB."),
    requests: int = typer.Option(32, help="Requests submitted at once."),
    max_tokens: int = typer.Option(32, help="Tokens generated per request."),
    output: Path = typer.Option(
        Path("docs/speed/vllm-concurrency.json"), help="JSON file rows are appended to."
    ),
) -> None:
    """Run one engine and append its row (see the module docstring)."""
    row = run(method, budget, kv_mib, requests, max_tokens)
    rows = json.loads(output.read_text()) if output.exists() else []
    rows = [
        r
        for r in rows
        if (r["method"], r["budget"], r["kv_cache_mib"]) != (row["method"], row["budget"], kv_mib)
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps([*rows, row], indent=2) + "\n")
    Console().print_json(json.dumps(row))


if __name__ == "__main__":
    run_script(main)
