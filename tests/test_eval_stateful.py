"""Stateful methods in runs: the state is carried over one AgentNetBench trajectory and starts afresh
for each new trajectory and for every sample of the other benchmarks (as the STaR-KV release's
evaluation scripts reset it), and a run resumed mid-trajectory, or retrying a failed step, gives the
numbers of an uninterrupted run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from eval_helpers import Scripted, agentnetbench, androidcontrol, play_agentnet, play_benchmark, records

from benchmarks import get_benchmark
from benchmarks.rundir import SAMPLES_FILE, SUMMARY_FILE
from benchmarks.runner import Call, MethodContext, ModelResponder, Reply, run, state_group
from guikv.agents import Action, get_family
from guikv.compressor import compress
from guikv.config import CompressionConfig
from guikv.models import adapter_for
from guikv.models.inputs import Message
from guikv.step import run_step

TIMING = ("prefill_seconds", "decode_seconds")


def two_trajectories(fixtures: Path, root: Path, make_png: Any) -> tuple[Path, Path]:
    """The shipped trajectory cut to its first steps, with small placeholder screenshots, and a
    copy of it under a second task id."""
    data, images = agentnetbench(fixtures, root, make_png, scale=0.1)
    [path] = data.glob("*.json")
    trajectory = json.loads(path.read_text())
    (data / "s_second.json").write_text(json.dumps({**trajectory, "task_id": "s_second"}))
    return data, images


def interrupt(run_dir: Path, kept: int) -> None:
    """A kill after `kept` records: the trace cut there, no summary."""
    lines = (run_dir / SAMPLES_FILE).read_bytes().splitlines(keepends=True)
    (run_dir / SAMPLES_FILE).write_bytes(b"".join(lines[:kept]))
    (run_dir / SUMMARY_FILE).unlink()


def test_state_groups_are_trajectories_for_agentnetbench_and_samples_elsewhere(
    fixtures_dir: Path, tmp_path: Path, make_png: Any
) -> None:
    steps = get_benchmark("agentnetbench").load(*two_trajectories(fixtures_dir, tmp_path, make_png)).samples
    assert [state_group(sample) for sample in steps] == [step.task_id for step in steps]
    assert len({state_group(sample) for sample in steps}) == 2
    android = get_benchmark("androidcontrol").load(*androidcontrol(tmp_path, make_png, 0.05)).samples
    assert [state_group(sample) for sample in android] == [sample.sample_id for sample in android]


def test_a_new_context_starts_each_trajectory(fixtures_dir: Path, tmp_path: Path, make_png: Any) -> None:
    responder = Scripted("t", stateful=True)
    play_agentnet(two_trajectories(fixtures_dir, tmp_path, make_png), tmp_path / "run", responder)
    assert responder.contexts == [0, 3]
    texts = [record["raw_output"] for record in records(tmp_path / "run")]
    assert [text.split("\n")[0] for text in texts] == [f"Thought: t {n}" for n in (1, 2, 3, 1, 2, 3)]


def test_a_new_context_starts_each_androidcontrol_sample(tmp_path: Path, make_png: Any) -> None:
    spec = get_benchmark("androidcontrol")
    loaded = spec.load(*androidcontrol(tmp_path, make_png, 0.05))
    responder = Scripted("t", stateful=True)
    settings = {"model": "scripted", "family": "ui-tars", "method": "star_kv", "budget": 10.0}
    run(spec, loaded, settings, tmp_path / "run", responder, get_family("ui-tars"))
    assert responder.contexts == list(range(len(loaded.samples)))


def test_resume_mid_trajectory_reruns_it_and_gives_the_uninterrupted_run(
    fixtures_dir: Path, tmp_path: Path, make_png: Any
) -> None:
    data = two_trajectories(fixtures_dir, tmp_path, make_png)
    whole = play_agentnet(data, tmp_path / "whole", Scripted("t", stateful=True))
    play_agentnet(data, tmp_path / "cut", Scripted("t", stateful=True))
    interrupt(tmp_path / "cut", 4)
    notes: list[str] = []
    resumed = play_agentnet(data, tmp_path / "cut", Scripted("t", stateful=True), notes)
    assert resumed == whole
    assert (tmp_path / "cut" / SAMPLES_FILE).read_bytes() == (tmp_path / "whole" / SAMPLES_FILE).read_bytes()
    assert any("re-running 1 finished samples of unfinished trajectories" in note for note in notes)


def test_retrying_a_failed_step_reruns_its_trajectory(
    fixtures_dir: Path, tmp_path: Path, make_png: Any
) -> None:
    data = two_trajectories(fixtures_dir, tmp_path, make_png)
    whole = play_agentnet(data, tmp_path / "whole", Scripted("t", stateful=True))
    failed = play_agentnet(data, tmp_path / "failed", Scripted("t", frozenset({5}), stateful=True))
    assert failed["samples_failed"] == 1
    retried = Scripted("t", stateful=True)
    assert play_agentnet(data, tmp_path / "failed", retried) == whole
    assert len(retried.prompts) == 3
    assert (tmp_path / "failed" / SAMPLES_FILE).read_bytes() == (
        tmp_path / "whole" / SAMPLES_FILE
    ).read_bytes()


def test_a_stateless_responder_resumes_without_rerunning(
    fixtures_dir: Path, tmp_path: Path, make_png: Any
) -> None:
    data = two_trajectories(fixtures_dir, tmp_path, make_png)
    play_agentnet(data, tmp_path / "run", Scripted("t"))
    interrupt(tmp_path / "run", 4)
    again = Scripted("t")
    play_agentnet(data, tmp_path / "run", again)
    assert len(again.prompts) == 2
    assert again.contexts == [0]


def tiny_messages(count: int) -> list[list[Message]]:
    """`count` one-screenshot prompts on different placeholder screens."""
    family = get_family("ui-tars")
    from PIL import Image

    screens = [Image.new("RGB", (112, 84), (40 * i, 200 - 30 * i, 90)) for i in range(count)]
    return [family.grounding_messages(f"Click button {i}", screen) for i, screen in enumerate(screens)]


def test_run_step_continues_a_state_as_one_context_would(tiny_sdpa: tuple) -> None:
    model, processor = tiny_sdpa
    config = CompressionConfig(method="star_kv", budget=30, star_kv_profile_steps=1, star_kv_lambda_ramp=1)
    prompts = tiny_messages(3)
    adapter = adapter_for(model)
    with torch.no_grad(), compress(model, config, record_positions=True) as report:
        for messages in prompts:
            model.generate(**adapter.build_inputs(processor, messages), max_new_tokens=2, do_sample=False)
    one_context = [record.kept_positions for record in report.prefills]
    state = None
    for messages, expected in zip(prompts, one_context, strict=True):
        step = run_step(
            model, processor, messages, config, max_new_tokens=2, record_positions=True, method_state=state
        )
        state = step.method_state
        assert all(torch.equal(a, b) for a, b in zip(step.kept_positions, expected, strict=True))
    assert {layer.profile_steps for layer in state.layers.values()} == {3}
    assert report.method_state.to_dict() == state.to_dict()


@dataclass
class StateRecorder(ModelResponder):
    """The model responder, noting the method state (as JSON) after every call, and keeping every
    context it gave (one per trajectory)."""

    states: list[str] = field(default_factory=list, init=False)
    contexts: list[MethodContext] = field(default_factory=list, init=False)

    def new_context(self) -> MethodContext:
        """A fresh context, kept."""
        self.contexts.append(super().new_context())
        return self.contexts[-1]

    def reply(self, calls: Sequence[Call]) -> list[Reply]:
        """Answer as the model responder does, then note the state each call carries on."""
        answers = super().reply(calls)
        self.states.extend(json.dumps(call.context.state.to_dict()) for call in calls)
        return answers


def tiny_run(
    tiny: tuple, data: tuple[Path, Path], run_dir: Path, config: CompressionConfig, batch_size: int = 1
) -> tuple[dict[str, Any], StateRecorder]:
    """AgentNetBench with the tiny model under `config` (two screenshots per prompt), in batches of
    up to `batch_size` trajectories."""
    responder = StateRecorder(tiny[0], tiny[1], config, 4)
    summary = play_benchmark(
        "agentnetbench",
        data,
        run_dir,
        responder,
        batch_size=batch_size,
        model="tiny",
        method=config.method,
        budget=config.budget,
    )
    return summary, responder


def untimed(run_dir: Path) -> list[dict[str, Any]]:
    """A run's records without their wall-clock fields."""
    return [{k: v for k, v in record.items() if k not in TIMING} for record in records(run_dir)]


def test_tiny_star_kv_resumed_mid_trajectory_equals_uninterrupted(
    tiny_sdpa: tuple, fixtures_dir: Path, tmp_path: Path, make_png: Any
) -> None:
    data = two_trajectories(fixtures_dir, tmp_path, make_png)
    config = CompressionConfig(method="star_kv", budget=10)
    whole, responder = tiny_run(tiny_sdpa, data, tmp_path / "whole", config)
    assert {layer.profile_steps for layer in responder.contexts[-1].state.layers.values()} == {3}
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    interrupt(tmp_path / "cut", 4)
    resumed, again = tiny_run(tiny_sdpa, data, tmp_path / "cut", config)
    assert len(again.states) == 3
    assert again.states[-1] == responder.states[-1]
    assert untimed(tmp_path / "cut") == untimed(tmp_path / "whole")
    assert resumed["metrics"] == whole["metrics"]
    assert resumed["savings"] == whole["savings"]


@pytest.mark.parametrize("method", ["gui_kv", "st_lite"])
def test_stateless_methods_keep_no_state_across_steps(method: str, tiny_sdpa: tuple) -> None:
    responder = ModelResponder(tiny_sdpa[0], tiny_sdpa[1], CompressionConfig(method=method, budget=30), 2)
    assert not responder.stateful
    context = responder.new_context()
    responder.reply([Call(tiny_messages(1)[0], Action.unparsed, (112, 84), context)])
    assert context.state is None
