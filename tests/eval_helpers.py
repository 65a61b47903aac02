"""Shared pieces of the `guikv eval` tests: benchmark datasets built under a temporary directory,
running the CLI in-process exactly as the `guikv` console script does, and a scripted responder
(answers, or raises like an out-of-memory GPU, on the calls it is told) for the runner's rules.

The shared fixtures ship real records but screenshots only for AgentNetBench (their READMEs say why),
so the other benchmarks get placeholder PNGs at the paths their loaders read, and AndroidControl
(no real record could be shipped) gets records synthesised in UGround's 500_steps.json schema. With
`scale` < 1 the placeholders shrink (and the AgentNetBench trajectory is cut to its first
`TINY_STEPS` steps, with small screenshots) so a tiny model's prompts stay short; the oracle runs
on full-size placeholders. Everything is written under the given root, never into the fixtures.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from benchmarks import get_benchmark
from benchmarks.runner import Call, Reply, RunEvents, run, zero_costs
from guikv.agents import Message, get_family
from guikv_cli.app import main

MakePng = Callable[[Path, tuple[int, int]], Path]

SCREENSPOT_SIZES = {"mobile": (1170, 2532), "desktop": (1920, 1080), "web": (2880, 1800)}
"""Realistic screenshot sizes per ScreenSpot-v2 task, each large enough to hold its fixture boxes."""

PHONE = (1080, 2400)
BLOCK = (1280, 1000)

BENCHMARK_NAMES = ("agentnetbench", "androidcontrol", "screenspot-v2", "screenspot-pro", "mind2web")
TINY_STEPS = 3

ENV_VARS = {
    "agentnetbench": ("AGENTNETBENCH_DATA", "AGENTNETBENCH_IMGS"),
    "androidcontrol": ("ANDROIDCONTROL_TEST", "ANDROIDCONTROL_IMGS"),
    "screenspot-v2": ("SCREENSPOT_TEST", "SCREENSPOT_IMGS"),
    "screenspot-pro": ("SCREENSPOTPRO_TEST", "SCREENSPOTPRO_IMGS"),
    "mind2web": ("MM_MIND2WEB_TEST", "MM_MIND2WEB_IMGS"),
}
"""The environment variables each benchmark's data and screenshot directories come from."""


def write_png(path: Path, size: tuple[int, int]) -> Path:
    """A blank placeholder PNG of `size` at `path` (parents created), like conftest's `make_png`,
    usable from fixtures of any scope."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size).save(path)
    return path


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """A screenshot size times `scale` (at least 8 px a side)."""
    return max(8, round(size[0] * scale)), max(8, round(size[1] * scale))


def agentnetbench(fixtures: Path, root: Path, make_png: MakePng, scale: float = 1.0) -> tuple[Path, Path]:
    """The shipped trajectory; at `scale` < 1 a copy whose screenshots are small placeholders."""
    data = fixtures / "agentnetbench" / "test_data"
    if scale == 1.0:
        return data, data / "images"
    target = root / "agentnetbench"
    (target / "images").mkdir(parents=True)
    for path in data.glob("*.json"):
        trajectory = json.loads(path.read_text())
        trajectory["steps"] = trajectory["steps"][:TINY_STEPS]
        (target / path.name).write_text(json.dumps(trajectory))
        for step in trajectory["steps"]:
            make_png(target / "images" / step["image"], _scaled((1280, 720), scale))
    return target, target / "images"


def _gt(kind: str, box: list[float] | None = None, **params: Any) -> dict[str, Any]:
    """One AgentNetBench ground-truth action as the benchmark writes it (`rel_bbox` [x, y, w, h] 0-1)."""
    metadata = {"bboxes": [{"rel_bbox": box}]} if box else {}
    return {"type": kind, "params": params, "metadata": metadata}


IDIOM_STEPS: list[list[dict[str, Any]]] = [
    [
        _gt("moveTo", [0.2, 0.45, 0.1, 0.1], position={"x": 0.25, "y": 0.5}),
        _gt("dragTo", [0.7, 0.45, 0.1, 0.1], position={"x": 0.75, "y": 0.5}),
    ],
    [_gt("moveTo", position={"x": 0.1, "y": 0.9}), _gt("dragTo", position={"x": 0.6, "y": 0.3})],
    [_gt("write", text="george orwell"), _gt("press", keys=["enter"])],
    [_gt("hotkey", keys=["cmd", "c"])],
    [_gt("hotkey", keys=["command", "v"])],
    [_gt("press", keys=["return"])],
    [_gt("terminate", status="failure")],
]
"""AgentNetBench ground truths the shipped trajectory lacks: drags (recorded as [moveTo, dragTo], with
and without element boxes), a submitted write, macOS Command shortcuts, a Return key and a failed
terminate; in the benchmark's own schema."""


def agentnetbench_idioms(root: Path, make_png: MakePng) -> tuple[Path, Path]:
    """A trajectory of `IDIOM_STEPS` with 1280x720 placeholder screenshots, for the oracle."""
    data, images = root / "agentnetbench-idioms", root / "agentnetbench-idioms" / "images"
    steps = []
    for number, actions in enumerate(IDIOM_STEPS):
        image = f"s_idioms_{number}.png"
        make_png(images / image, (1280, 720))
        steps.append(
            {"step_num": number, "image": image, "milestone": False, "ground_truth_actions": actions}
        )
    trajectory = {
        "task_id": "s_idioms",
        "high_level_task_description": "Exercise every idiom",
        "steps": steps,
    }
    (data / "s_idioms.json").write_text(json.dumps(trajectory))
    return data, images


def node(x_min: int, y_min: int, x_max: int, y_max: int, **texts: str) -> dict[str, Any]:
    """An accessibility node as android_env's UIElement.to_dict() writes it (the fields we read)."""
    box = {"x_min": x_min, "x_max": x_max, "y_min": y_min, "y_max": y_max}
    return {"bbox_pixels": box, "text": None, "content_description": None, "is_visible": True, **texts}


ANDROID_TREE: list[Any] = [
    node(0, 0, *PHONE),
    [
        node(100, 200, 500, 400, text="Search"),
        [node(120, 250, 220, 350, content_description="Search icon")],
    ],
    node(0, 2200, 150, 2400, content_description="Navigate up (Back)"),
    node(600, 1000, 800, 1200, text="Gmail"),
]

ANDROID_ACTIONS: list[dict[str, Any]] = [
    {"action_type": "click", "x": 170, "y": 300},
    {"action_type": "long_press", "x": 300, "y": 380},
    {"action_type": "type_text", "text": "coffee near me"},
    {"action_type": "scroll", "direction": "down"},
    {"action_type": "open_app", "app_name": "Gmail"},
    {"action_type": "navigate_back"},
    {"action_type": "navigate_home"},
    {"action_type": "wait"},
    {"action_type": "status", "goal_status": "successful"},
]


def android_records() -> list[dict[str, Any]]:
    """One synthesised step per AndroidControl ground-truth action type, one episode."""
    return [
        {
            "episode_id": 4242,
            "step": step,
            "goal": "Find a coffee shop and mail it to Ann",
            "step_instruction": f"do step {step}",
            "previous_actions": [f"action {i}" for i in range(step)],
            "screenshot": f"4242/screenshot_{step}.png",
            "action": dict(action),
            "accessibility_tree": copy.deepcopy(ANDROID_TREE),
        }
        for step, action in enumerate(ANDROID_ACTIONS)
    ]


def androidcontrol(root: Path, make_png: MakePng, scale: float = 1.0) -> tuple[Path, Path]:
    """`500_steps.json` with the synthesised records, and a phone-sized placeholder per step."""
    data, images = root / "androidcontrol" / "data", root / "androidcontrol" / "images"
    data.mkdir(parents=True)
    records = android_records()
    (data / "500_steps.json").write_text(json.dumps(records))
    for record in records:
        make_png(images / record["screenshot"], _scaled(PHONE, scale))
    return data, images


def screenspot_v2(fixtures: Path, root: Path, make_png: MakePng, scale: float = 1.0) -> tuple[Path, Path]:
    """The shipped annotation files, with a placeholder per screenshot they name."""
    data = fixtures / "screenspot_v2"
    images = root / "screenspot_v2"
    for task, size in SCREENSPOT_SIZES.items():
        for record in json.loads((data / f"screenspot_{task}_v2.json").read_text()):
            make_png(images / record["img_filename"], _scaled(size, scale))
    return data, images


SCREENSPOT_PRO_EXTRA: list[dict[str, Any]] = [
    {
        "img_filename": "vscode_windows/screenshot_1.png",
        "bbox": [100, 40, 180, 70],
        "instruction": "open the explorer view",
        "id": "vscode_windows_0",
        "application": "vscode",
        "platform": "windows",
        "img_size": [2560, 1440],
        "ui_type": "text",
        "group": "Dev",
    },
    {
        "img_filename": "vscode_windows/screenshot_1.png",
        "bbox": [100, 40, 180, 70],
        "instruction": "打开资源管理器",
        "id": "vscode_windows_1",
        "application": "vscode",
        "platform": "windows",
        "img_size": [2560, 1440],
        "ui_type": "text",
        "group": "Dev",
        "language": "cn",
    },
]
"""Synthesised ScreenSpot-Pro records: one more app file, one record the benchmark's rules exclude."""


def screenspot_pro(fixtures: Path, root: Path, make_png: MakePng, scale: float = 1.0) -> tuple[Path, Path]:
    """The shipped record plus the synthesised ones, with placeholders of each record's `img_size`."""
    data, images = root / "screenspot_pro" / "annotations", root / "screenspot_pro" / "images"
    data.mkdir(parents=True)
    shutil.copy(fixtures / "screenspot_pro" / "annotations" / "android_studio_macos.json", data)
    (data / "vscode_windows.json").write_text(json.dumps(SCREENSPOT_PRO_EXTRA))
    for path in data.glob("*.json"):
        for record in json.loads(path.read_text()):
            make_png(images / record["img_filename"], _scaled(tuple(record["img_size"]), scale))
    return data, images


def mind2web(fixtures: Path, root: Path, make_png: MakePng, scale: float = 1.0) -> tuple[Path, Path]:
    """The shipped block samples, with placeholder blocks 0.png .. one past the last target block."""
    data = fixtures / "multimodal_mind2web" / "data" / "samples"
    images = root / "mind2web"
    for path in sorted(data.glob("*_blocks.jsonl")):
        split = path.name.removesuffix("_blocks.jsonl")
        for line in path.read_text().splitlines():
            record = json.loads(line)
            last = max(int(block) for block in record["target_blocks"])
            for block in range(last + 2):
                make_png(images / split / record["blocks_path"] / f"{block}.png", _scaled(BLOCK, scale))
    return data, images


def build_all(
    fixtures: Path, root: Path, make_png: MakePng, scale: float = 1.0
) -> dict[str, tuple[Path, Path]]:
    """Every benchmark's (data, images) directories, by benchmark name."""
    return {
        "agentnetbench": agentnetbench(fixtures, root, make_png, scale),
        "androidcontrol": androidcontrol(root, make_png, scale),
        "screenspot-v2": screenspot_v2(fixtures, root, make_png, scale),
        "screenspot-pro": screenspot_pro(fixtures, root, make_png, scale),
        "mind2web": mind2web(fixtures, root, make_png, scale),
    }


def environment(datasets: dict[str, tuple[Path, Path]]) -> dict[str, str]:
    """The environment variables pointing every benchmark at its (data, images) directories."""
    env: dict[str, str] = {}
    for name, (data, images) in datasets.items():
        data_env, images_env = ENV_VARS[name]
        env[data_env], env[images_env] = str(data), str(images)
    return env


@dataclass(frozen=True)
class CliResult:
    """Exit code and captured output of one in-process `guikv` invocation."""

    code: int
    out: str
    err: str


def run_cli(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> CliResult:
    """Run `guikv ARGS` in this process through the console script's `main` (so user errors take the
    same one-line, exit-2 path), returning the exit code and what it printed."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["guikv", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def summaries(output: Path) -> dict[str, dict[str, Any]]:
    """Every `summary.json` under an output root, by run directory relative to it."""
    return {
        str(path.parent.relative_to(output)): json.loads(path.read_text())
        for path in sorted(output.rglob("summary.json"))
    }


def records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run directory's `samples.jsonl`."""
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def oracle_eval_args(
    name: str, datasets: dict[str, tuple[Path, Path]], output: Path, *extra: str
) -> list[str]:
    """`guikv eval NAME --model oracle` on a dataset built by `build_all`, writing under `output`."""
    data, images = datasets[name]
    return [
        "eval",
        name,
        "--model",
        "oracle",
        "--data",
        str(data),
        "--images",
        str(images),
        "--output",
        str(output),
        *extra,
    ]


@dataclass
class CallCount:
    """A `Scripted` context: how many calls were made in it."""

    calls: int = 0


class Scripted:
    """A responder answering `Thought: <tag> <n>` (n counts calls) and `wait()`, or with `truth` the
    ground truth in UI-TARS's format (as the oracle); it raises like an out-of-memory GPU for a
    batch holding one of the calls listed in `fail_on` (1-based). With `stateful`, n counts the
    calls made in the call's context instead, as a stateful method's answers depend on the calls
    before them; `contexts` lists the call count at which each context began, `batches` the size
    of every batch asked."""

    can_batch = True

    def __init__(
        self, tag: str, fail_on: frozenset[int] = frozenset(), *, truth: bool = False, stateful: bool = False
    ) -> None:
        self.tag = tag
        self.fail_on = fail_on
        self.truth = truth
        self.stateful = stateful
        self.prompts: list[list[Message]] = []
        self.contexts: list[int] = []
        self.batches: list[int] = []

    def new_context(self) -> CallCount:
        """A context counting its calls from zero (only `stateful` answers show the count)."""
        self.contexts.append(len(self.prompts))
        return CallCount()

    def reply(self, calls: Sequence[Call]) -> list[Reply]:
        """Remember the prompts; answer each, or fail the batch when it holds a listed call."""
        self.batches.append(len(calls))
        first = len(self.prompts) + 1
        self.prompts.extend(call.messages for call in calls)
        if self.fail_on & set(range(first, first + len(calls))):
            raise RuntimeError("CUDA out of memory")
        replies = []
        for number, call in enumerate(calls, start=first):
            call.context.calls += 1
            if self.truth:
                text = get_family("ui-tars").format_action(call.expected(), call.image_size)
            else:
                text = f"Thought: {self.tag} {call.context.calls if self.stateful else number}"
                text += "\nAction: wait()"
            replies.append(Reply(text, zero_costs()))
        return replies


def play_benchmark(
    name: str,
    data: tuple[Path, Path],
    run_dir: Path,
    responder: Any,
    notes: list[str] | None = None,
    *,
    screenshots: int = 2,
    retry_failed: bool = True,
    batch_size: int = 1,
    model: str = "scripted",
    method: str = "gui_kv",
    budget: float = 10.0,
) -> dict[str, Any]:
    """Run benchmark `name` on `data` through `runner.run` with `responder` (UI-TARS family); the
    summary. `model`, `method` and `budget` are the run's settings."""
    spec = get_benchmark(name)
    settings = {"model": model, "family": "ui-tars", "method": method, "budget": budget}
    summary = run(
        spec,
        spec.load(*data),
        settings,
        run_dir,
        responder,
        get_family("ui-tars"),
        screenshots=screenshots,
        retry_failed=retry_failed,
        events=RunEvents(note=(notes if notes is not None else []).append),
        batch_size=batch_size,
    )
    assert summary is not None
    return summary


def play_agentnet(
    data: tuple[Path, Path],
    run_dir: Path,
    responder: Scripted,
    notes: list[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run an AgentNetBench dataset through `runner.run` with a scripted responder (UI-TARS family)."""
    return play_benchmark("agentnetbench", data, run_dir, responder, notes, **options)


def assistant_texts(messages: list[Message]) -> list[str]:
    """The history turns of a prompt."""
    return [m["content"] for m in messages if m["role"] == "assistant"]


def image_paths(messages: list[Message]) -> list[str]:
    """The screenshots a prompt shows, in order."""
    contents = [m["content"] for m in messages if isinstance(m["content"], list)]
    return [c["image"] for content in contents for c in content if c["type"] == "image"]


def image_count(messages: list[Message]) -> int:
    """How many screenshots a prompt shows."""
    return len(image_paths(messages))
