"""A request vLLM preempts gives the same tokens as its solo run.

With a KV space of 34 blocks (32 tokens each) and GUI-KV at 10%, eight 2-3-screenshot requests
submitted at once (448x252 screenshots: 144 tokens each) do not all fit while they decode: vLLM's
scheduler preempts the last admitted ones after 77-124 generated tokens, frees their blocks, and
later prefills each again from its prompt and the tokens it generated (recompute preemption).
Each request ran alone first in the same engine (its solo run). The plugin must make the
re-prefilled request continue from the cache it had: the same tokens as the solo run, token for
token, and the same blocks held as without the preemption. One request may only emit a few
tokens, the image placeholder among them (`allowed_token_ids`): a generated `<|image_pad|>` is
text, and its re-prefill must not take the engine down.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BLOCK_BYTES, chat_prompt, run_engine
from PIL import Image
from transformers import AutoConfig, AutoTokenizer

from guikv import CompressionConfig
from guikv.vllm.plan import plan_request

NUM_BLOCKS = 34
BLOCK_SIZE = 32
MAX_TOKENS = 130
SETTINGS = {"method": "gui_kv", "budget": 10}
SCREEN_SIZE = (448, 252)
SCREEN_ORDERS = [(0, 1), (1, 2, 0), (2, 0), (0, 1, 2), (1, 0), (2, 1, 0), (0, 2), (2, 0, 1)]
TASKS = [
    "Open the display settings",
    "Close the settings window",
    "Search for the weather",
    "Turn on dark mode",
    "Open the file menu",
    "Mute the sound",
    "Show the desktop",
    "Rename the folder",
]
PLACEHOLDER_REQUEST = 7
"""The request that may only emit the image placeholder and three text tokens."""


@pytest.fixture(scope="module")
def preemption_run(tiny_model: Path, screens: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Eight prompts, each alone and then all at once, in one engine of 34 blocks."""
    folder = tmp_path_factory.mktemp("small-screens")
    small = []
    for path in screens:
        resized = folder / path.name
        Image.open(path).convert("RGB").resize(SCREEN_SIZE).save(resized)
        small.append(resized)
    prompts = [
        chat_prompt(tiny_model, tuple(small[i] for i in order), task)
        for order, task in zip(SCREEN_ORDERS, TASKS, strict=True)
    ]
    image_pad = AutoConfig.from_pretrained(tiny_model).image_token_id
    text_tokens = AutoTokenizer.from_pretrained(tiny_model).encode("click(start_box")[:3]
    specs = [prompt.spec() for prompt in prompts]
    specs[PLACEHOLDER_REQUEST]["allowed_token_ids"] = [image_pad, *text_tokens]
    spec = {
        "model": str(tiny_model),
        "guikv": SETTINGS,
        "kv_cache_bytes": NUM_BLOCKS * BLOCK_BYTES,
        "max_len": (NUM_BLOCKS - 1) * BLOCK_SIZE,
        "prompts": specs,
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "solo": True,
    }
    return {"result": run_engine(tmp_path_factory.mktemp("preemption"), spec), "image_pad": image_pad}


def external_index(request_id: str) -> int:
    """The prompt index of a request id vLLM made unique (`"3-1a2b3c4d"` -> 3)."""
    return int(request_id.rsplit("-", 1)[0])


def preemptions(states: list[dict]) -> list[tuple[int, int]]:
    """(prompt index, tokens generated before it) of every preemption in the concurrent run, read
    from vLLM's own per-request preemption counter."""
    found, last = [], {}
    for step in states:
        for request_id, state in step.items():
            before = last.get(request_id)
            if before is not None and state["preemptions"] > before["preemptions"]:
                found.append((external_index(request_id), before["outputs"]))
            last[request_id] = state
    return found


def test_several_requests_are_preempted_after_decoding(preemption_run: dict) -> None:
    result = preemption_run["result"]
    assert result["num_blocks"] == NUM_BLOCKS
    events = preemptions(result["states"])
    assert len({index for index, _ in events}) >= 3, events
    assert all(generated >= 50 for _, generated in events), events
    assert result["scheduler_totals"]["resumed"] == len(events)
    assert result["report"]["totals"]["resumed"] == len(events)


def test_every_output_equals_its_solo_run_token_for_token(preemption_run: dict) -> None:
    result = preemption_run["result"]
    for index, (loaded, solo) in enumerate(zip(result["outputs"], result["solo_outputs"], strict=True)):
        assert loaded["prompt_ids"] == solo["prompt_ids"]
        assert len(loaded["tokens"]) == MAX_TOKENS
        assert loaded["tokens"] == solo["tokens"], f"request {index}"


def test_a_request_holds_the_blocks_of_its_compressed_cache_before_and_after_preemption(
    preemption_run: dict,
) -> None:
    result = preemption_run["result"]
    config = CompressionConfig(**SETTINGS)
    evicted = [
        plan_request(o["prompt_ids"], config, [preemption_run["image_pad"]]).evicted
        for o in result["outputs"]
    ]
    assert min(evicted) > 0
    checked = 0
    for step in result["states"]:
        for request_id, state in step.items():
            if state["status"] != "RUNNING":
                continue
            physical = state["computed"] - evicted[external_index(request_id)]
            assert state["blocks"] == -(-physical // BLOCK_SIZE), (request_id, state)
            checked += 1
    assert checked > MAX_TOKENS


def test_a_generated_image_placeholder_is_text_when_the_request_is_prefilled_again(
    preemption_run: dict,
) -> None:
    result = preemption_run["result"]
    first_preemption = dict(reversed(preemptions(result["states"])))
    assert PLACEHOLDER_REQUEST in first_preemption
    before = result["outputs"][PLACEHOLDER_REQUEST]["tokens"][: first_preemption[PLACEHOLDER_REQUEST]]
    assert preemption_run["image_pad"] in before
