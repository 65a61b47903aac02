"""`guikv eval --batch-size N`: independent samples run side by side (AgentNetBench: steps of different
trajectories), and nothing a run writes changes in meaning: on every benchmark the trace and summary
equal those of batch size 1 (the oracle, and the tiny model in fp32, wall times aside), a run
interrupted mid-batch loses at most that batch, and out of memory halves the batch instead of
failing samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from eval_helpers import (
    BENCHMARK_NAMES,
    Scripted,
    assistant_texts,
    build_all,
    environment,
    play_benchmark,
    records,
    run_cli,
    summaries,
    write_png,
)
from PIL import Image
from test_eval_stateful import two_trajectories, untimed

from benchmarks.batching import Batcher, is_out_of_memory
from benchmarks.rundir import SAMPLES_FILE, SUMMARY_FILE
from benchmarks.runner import Call, MethodContext, ModelResponder, OracleResponder, Reply
from guikv import step
from guikv.agents import get_family
from guikv.config import CompressionConfig

Datasets = dict[str, tuple[Path, Path]]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def full_size(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Datasets:
    """Every benchmark with full-size placeholder screenshots, for the oracle; AgentNetBench with the
    shipped trajectory and a copy of it under a second task id, so that a batch holds steps of both."""
    root = tmp_path_factory.mktemp("batch-oracle-data")
    datasets = build_all(fixtures_dir, root, write_png)
    source, images = datasets["agentnetbench"]
    (root / "two").mkdir()
    for path in source.glob("*.json"):
        trajectory = json.loads(path.read_text())
        (root / "two" / path.name).write_text(json.dumps(trajectory))
        (root / "two" / "second.json").write_text(json.dumps({**trajectory, "task_id": "s_second"}))
    datasets["agentnetbench"] = (root / "two", images)
    return datasets


@pytest.fixture(scope="module")
def small(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Datasets:
    """Every benchmark with small placeholder screenshots, for the tiny model; AgentNetBench with two
    trajectories (the shipped one cut short and a copy), so that a batch holds steps of both."""
    root = tmp_path_factory.mktemp("batch-tiny-data")
    datasets = build_all(fixtures_dir, root, write_png, scale=0.1)
    datasets["agentnetbench"] = two_trajectories(fixtures_dir, root / "two", write_png)
    return datasets


@dataclass(frozen=True)
class CountingOracle(OracleResponder):
    """The oracle, noting the size of every batch it answers."""

    batches: list[int] = field(default_factory=list)

    def reply(self, calls: Sequence[Call]) -> list[Reply]:
        """Answer as the oracle, after noting the batch's size."""
        self.batches.append(len(calls))
        return super().reply(calls)


def play(
    name: str,
    data: tuple[Path, Path],
    run_dir: Path,
    responder: Any,
    batch_size: int,
    notes: list[str] | None = None,
    *,
    method: str = "gui_kv",
) -> dict[str, Any]:
    """Run benchmark `name` on `data` through `runner.run` (UI-TARS family, two screenshots)."""
    return play_benchmark(
        name, data, run_dir, responder, notes, batch_size=batch_size, model="m", method=method
    )


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_the_oracle_batched_writes_the_files_of_batch_size_one(
    name: str, full_size: Datasets, tmp_path: Path
) -> None:
    one = play(name, full_size[name], tmp_path / "one", CountingOracle(get_family("ui-tars")), 1)
    oracle = CountingOracle(get_family("ui-tars"))
    four = play(name, full_size[name], tmp_path / "four", oracle, 4)
    assert four == one
    for file in (SAMPLES_FILE, SUMMARY_FILE):
        assert (tmp_path / "four" / file).read_bytes() == (tmp_path / "one" / file).read_bytes()
    assert max(oracle.batches) > 1 and max(oracle.batches) <= 4
    assert sum(oracle.batches) == sum(row["model_calls"] for row in records(tmp_path / "one"))


class BatchSpy:
    """Wraps the engine's batch entry point, `guikv.step.run_steps` (the model untouched): notes
    each batch's size and can raise on chosen batches, as a GPU out of memory or a Ctrl-C would
    inside the model call."""

    def __init__(
        self, run_steps: Callable[..., Any], raise_when: Callable[[int, int], BaseException | None] | None
    ):
        self.run_steps = run_steps
        self.raise_when = raise_when
        self.sizes: list[int] = []

    def __call__(self, model: Any, processor: Any, conversations: Any, *args: Any, **kwargs: Any) -> Any:
        """Note the batch size (and the batch's number), raise if told to, else run the batch."""
        size = len(conversations)
        self.sizes.append(size)
        if self.raise_when is not None:
            error = self.raise_when(len(self.sizes), size)
            if error is not None:
                raise error
        return self.run_steps(model, processor, conversations, *args, **kwargs)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., BatchSpy]]:
    """Install a `BatchSpy` on `guikv.step.run_steps` for one test (removed afterwards)."""

    def install(raise_when: Callable[[int, int], BaseException | None] | None = None) -> BatchSpy:
        wrapper = BatchSpy(step.run_steps, raise_when)
        monkeypatch.setattr(step, "run_steps", wrapper)
        return wrapper

    yield install


@dataclass
class Tiny(ModelResponder):
    """The tiny fp32 model's responder, keeping every context it gave (one per state group)."""

    contexts: list[MethodContext] = field(default_factory=list, init=False)

    def new_context(self) -> MethodContext:
        """A fresh context, kept."""
        self.contexts.append(super().new_context())
        return self.contexts[-1]

    def states(self) -> list[str]:
        """The method state each context ended with, as JSON."""
        return [json.dumps(context.state.to_dict()) for context in self.contexts]


def tiny(model: tuple, method: str = "gui_kv") -> Tiny:
    """The tiny fp32 model answering at budget 10 with a few new tokens."""
    return Tiny(model[0], model[1], CompressionConfig(method=method, budget=10), NEW_TOKENS)


@dataclass(frozen=True)
class Reference:
    """A batch-size-1 run of the tiny model: its directory, summary, records without wall times,
    and the method states its contexts ended with (STaR-KV)."""

    run_dir: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    states: list[str]


@pytest.fixture(scope="module")
def reference(
    small: Datasets, tiny_sdpa: tuple, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str], Reference]:
    """The batch-size-1 run of a benchmark under a method, run once for this module."""
    done: dict[tuple[str, str], Reference] = {}

    def get(name: str, method: str = "gui_kv") -> Reference:
        if (name, method) not in done:
            run_dir = tmp_path_factory.mktemp(f"one-{name}-{method}")
            responder = tiny(tiny_sdpa, method)
            summary = play(name, small[name], run_dir, responder, 1, method=method)
            states = responder.states() if responder.stateful else []
            done[name, method] = Reference(run_dir, summary, untimed(run_dir), states)
        return done[name, method]

    return get


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_the_tiny_model_batched_gives_the_records_and_summary_of_batch_size_one(
    name: str,
    small: Datasets,
    tiny_sdpa: tuple,
    reference: Callable[[str, str], Reference],
    spy: Callable[..., BatchSpy],
    tmp_path: Path,
) -> None:
    one = reference(name, "gui_kv")
    calls = spy()
    three = play(name, small[name], tmp_path, tiny(tiny_sdpa), 3)
    assert three == one.summary
    assert untimed(tmp_path) == one.records
    assert (tmp_path / SUMMARY_FILE).read_bytes() == (one.run_dir / SUMMARY_FILE).read_bytes()
    assert max(calls.sizes) > 1
    assert three["samples_failed"] == 0 and 0 < three["savings"]["kv_saved_percent"] < 100


def test_agentnet_batches_hold_one_step_of_each_trajectory_and_its_own_history(
    small: Datasets, tmp_path: Path
) -> None:
    one = Scripted("t", stateful=True)
    play("agentnetbench", small["agentnetbench"], tmp_path / "one", one, 1)
    three = Scripted("t", stateful=True)
    play("agentnetbench", small["agentnetbench"], tmp_path / "three", three, 3)
    assert three.batches == [2, 2, 2] and three.contexts == [0, 0]
    assert (tmp_path / "three" / SAMPLES_FILE).read_bytes() == (tmp_path / "one" / SAMPLES_FILE).read_bytes()
    numbered = Scripted("n")  # answers "Thought: n <call number>": calls 1, 3, 5 one trajectory's
    play("agentnetbench", small["agentnetbench"], tmp_path / "numbered", numbered, 2)
    assert numbered.batches == [2, 2, 2]
    histories = [assistant_texts(prompt) for prompt in numbered.prompts]
    assert [len(history) for history in histories] == [0, 0, 1, 1, 2, 2]
    for call, history in enumerate(histories, start=1):
        earlier = [f"Thought: n {number}\n" for number in range(call - 2, 0, -2)][::-1]
        assert all(text in turn for text, turn in zip(earlier, history, strict=True)), (call, history)


def test_star_kv_keeps_one_state_per_trajectory_in_a_batch(
    small: Datasets,
    tiny_sdpa: tuple,
    reference: Callable[[str, str], Reference],
    spy: Callable[..., BatchSpy],
    tmp_path: Path,
) -> None:
    one = reference("agentnetbench", "star_kv")
    calls = spy()
    batched = tiny(tiny_sdpa, "star_kv")
    two = play("agentnetbench", small["agentnetbench"], tmp_path, batched, 2, method="star_kv")
    assert calls.sizes == [2, 2, 2]
    assert two == one.summary
    assert untimed(tmp_path) == one.records
    assert batched.states() == one.states
    assert {layer.profile_steps for c in batched.contexts for layer in c.state.layers.values()} == {3}


class KeptPositions:
    """Wraps `guikv.step.run_steps` to record every returned step's kept positions per layer, keyed
    by its conversation (the two test trajectories are copies: the same step of each has one key),
    and to count the batches of several conversations asked for."""

    def __init__(self, run_steps: Callable[..., Any]) -> None:
        self.run_steps = run_steps
        self.kept: dict[str, list[list[list[list[int]]]]] = {}
        self.batches = 0

    def __call__(self, model: Any, processor: Any, conversations: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the batch with positions recorded; note each row's positions under its conversation."""
        self.batches += len(conversations) > 1
        results = self.run_steps(
            model, processor, conversations, *args, **{**kwargs, "record_positions": True}
        )
        for conversation, result in zip(conversations, results, strict=True):
            key = json.dumps(conversation, default=str)
            self.kept.setdefault(key, []).append([kept.tolist() for kept in result.kept_positions])
        return results


def test_a_retried_star_kv_batch_keeps_at_every_step_what_batch_size_one_keeps(
    fixtures_dir: Path, tiny64_sdpa: tuple, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Out of memory in the decode of the second batch (the trajectories' second steps), after both
    rows' prefills scored with their trajectories' states: the batch is retried one row at a time
    from the states it started with, so every step keeps the positions of batch size 1 (with the
    prior ramping in at once, a state advanced twice keeps other positions from the retried step
    on) and the run ends with batch size 1's records and states. Real screenshots (shrunk) and the
    head_dim-64 tiny model, so that the scores the state weighs differ from token to token."""
    shots = fixtures_dir / "agentnetbench" / "test_data" / "images"

    def shrunk_screenshot(path: Path, size: tuple[int, int]) -> None:
        Image.open(shots / path.name).convert("RGB").resize(size).save(path)

    data = two_trajectories(fixtures_dir, tmp_path / "data", shrunk_screenshot)
    model, processor = tiny64_sdpa
    config = CompressionConfig(method="star_kv", budget=10, star_kv_profile_steps=1, star_kv_lambda_ramp=2)
    runs, run_steps = {}, step.run_steps
    for size in (1, 2):
        spy = KeptPositions(run_steps)
        monkeypatch.setattr(step, "run_steps", spy)
        failures: list[int] = []

        def out_of_memory(
            module: Any,
            args: Any,
            kwargs: dict[str, Any],
            spy: KeptPositions = spy,
            failures: list[int] = failures,
        ) -> None:
            if kwargs["input_ids"].shape[0] > 1 and spy.batches == 2 and not failures:
                failures.append(spy.batches)
                raise torch.OutOfMemoryError("CUDA out of memory")

        handle = model.register_forward_pre_hook(out_of_memory, with_kwargs=True)
        responder = Tiny(model, processor, config, NEW_TOKENS)
        try:
            summary = play("agentnetbench", data, tmp_path / str(size), responder, size)
        finally:
            handle.remove()
        assert failures == ([2] if size == 2 else [])
        runs[size] = (summary, untimed(tmp_path / str(size)), responder.states(), spy.kept)
    (one, one_records, one_states, one_kept), (two, two_records, two_states, two_kept) = runs[1], runs[2]
    assert len(one_kept) == 3 and all(len(kept) == 2 and kept[0] == kept[1] for kept in one_kept.values())
    assert two_kept == one_kept
    assert two == one and two["samples_failed"] == 0
    assert two_records == one_records
    assert two_states == one_states


OUT_OF_MEMORY: dict[str, Callable[[], BaseException]] = {
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    "cpu": lambda: cpu_allocation_failure(),
}
"""The errors a batch too large raises: the accelerator's, and the CPU allocator's (a real one)."""


def cpu_allocation_failure() -> RuntimeError:
    """The RuntimeError PyTorch's CPU allocator raises for an allocation it cannot make."""
    try:
        torch.empty(1 << 62, dtype=torch.uint8)
    except RuntimeError as error:
        return error
    raise AssertionError("a 4 EiB allocation succeeded")


@pytest.mark.parametrize("kind", list(OUT_OF_MEMORY))
def test_out_of_memory_halves_the_batch_and_fails_no_sample(
    kind: str,
    small: Datasets,
    tiny_sdpa: tuple,
    reference: Callable[[str, str], Reference],
    spy: Callable[..., BatchSpy],
    tmp_path: Path,
) -> None:
    one = reference("screenspot-v2", "gui_kv")
    make = OUT_OF_MEMORY[kind]
    calls = spy(lambda number, size: make() if size > 2 else None)
    notes: list[str] = []
    four = play("screenspot-v2", small["screenspot-v2"], tmp_path, tiny(tiny_sdpa), 4, notes)
    assert calls.sizes == [4, 2, 2, 2]  # 4 ran out of memory: 2 + 2, then the last 2 samples
    assert four == one.summary and four["samples_failed"] == 0
    assert untimed(tmp_path) == one.records
    [note] = [note for note in notes if "out of memory" in note]
    assert "out of memory with 4 samples in a batch" in note and "halving" in note
    assert len(notes) == 1


def test_out_of_memory_alone_is_still_a_failed_sample(
    small: Datasets, tiny_sdpa: tuple, spy: Callable[..., BatchSpy], tmp_path: Path
) -> None:
    calls = spy(lambda number, size: OUT_OF_MEMORY["cuda"]() if number <= 3 else None)
    summary = play("screenspot-pro", small["screenspot-pro"], tmp_path / "run", tiny(tiny_sdpa), 2)
    assert calls.sizes == [2, 1, 1]  # halved to 1, where it fails the samples
    assert summary["samples_failed"] == 2
    assert summary["failed"][0]["error"].startswith("OutOfMemoryError: CUDA out of memory")


@pytest.mark.parametrize(("name", "first_batches"), [("screenspot-v2", 2), ("agentnetbench", 1)])
def test_an_interrupted_batch_loses_only_that_batch_and_the_resume_completes_the_run(
    name: str,
    first_batches: int,
    small: Datasets,
    tiny_sdpa: tuple,
    reference: Callable[[str, str], Reference],
    spy: Callable[..., BatchSpy],
    tmp_path: Path,
) -> None:
    """Ctrl-C at the model call of a batch: the records of the batches before it are on disk, the
    batch's own are not; the next run (STaR-KV on AgentNetBench: trajectories re-run from their
    first step) gives the uninterrupted run's records and summary."""
    method = "star_kv" if name == "agentnetbench" else "gui_kv"
    whole = reference(name, method)
    spy(lambda number, size: KeyboardInterrupt() if number == first_batches + 1 else None)
    with pytest.raises(KeyboardInterrupt):
        play(name, small[name], tmp_path, tiny(tiny_sdpa, method), 2, method=method)
    kept = untimed(tmp_path)
    assert len(kept) == 2 * first_batches
    uninterrupted = {row["sample_id"]: row for row in whole.records}
    assert all(row == uninterrupted[row["sample_id"]] for row in kept)
    assert not (tmp_path / SUMMARY_FILE).exists()
    spy()
    notes: list[str] = []
    resumed = play(name, small[name], tmp_path, tiny(tiny_sdpa, method), 2, notes, method=method)
    assert resumed == whole.summary
    assert untimed(tmp_path) == whole.records
    if name == "agentnetbench":
        assert any("re-running 2 finished samples of unfinished trajectories" in note for note in notes)


def test_another_error_in_a_batch_fails_only_the_sample_that_raises_alone() -> None:
    def reply(calls: list[str]) -> list[str]:
        if "bad" in calls:
            raise ValueError("budget below the window")
        return [call.upper() for call in calls]

    notes: list[str] = []
    batcher = Batcher(reply, 4, notes.append)
    answers = batcher.answer(["a", "bad", "c", "d"])
    assert answers[0] == "A" and answers[2:] == ["C", "D"]
    assert isinstance(answers[1], ValueError)
    assert batcher.size == 4 and notes == []


def test_a_retry_after_out_of_memory_runs_with_the_failed_batchs_tensors_freed() -> None:
    """The failed forward's tensors (held by its traceback's frames) are freed before the retry."""
    alive: list[weakref.ref[torch.Tensor]] = []

    def reply(calls: list[str]) -> list[str]:
        assert all(ref() is None for ref in alive), "the failed batch's activations are still held"
        activations = torch.zeros(len(calls), 1024)
        alive.append(weakref.ref(activations))
        if len(calls) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [call.upper() for call in calls]

    assert Batcher(reply, 4, lambda note: None).answer(["a", "b", "c", "d"]) == ["A", "B", "C", "D"]


def test_out_of_memory_is_told_from_other_errors() -> None:
    assert is_out_of_memory(OUT_OF_MEMORY["cuda"]())
    assert is_out_of_memory(cpu_allocation_failure())
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_cli_batch_size_resumes_the_same_run_directory_with_the_same_summary(
    small: Datasets, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    data, images = small["androidcontrol"]
    args = ["eval", "androidcontrol", "--model", str(tiny_dir), "--data", str(data), "--images", str(images)]
    args += ["--limit", "3", "--max-new-tokens", "4", "--device", "cpu"]
    one = run_cli([*args, "--output", str(tmp_path / "one")], monkeypatch, capsys)
    assert one.code == 0, one.err
    two = run_cli([*args, "--output", str(tmp_path / "two"), "--batch-size", "2"], monkeypatch, capsys)
    assert two.code == 0, two.err
    [(run, summary)] = summaries(tmp_path / "one").items()
    assert summaries(tmp_path / "two") == {run: summary}  # same directory name, same summary
    again = run_cli([*args, "--output", str(tmp_path / "two"), "--batch-size", "3"], monkeypatch, capsys)
    assert "3 of 3 samples already done" in again.err


def test_cli_failed_samples_are_the_same_in_batches(
    small: Datasets, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A budget below the window makes every generation raise: batched, each sample still fails
    alone with its own error, as at batch size 1."""
    data, images = small["androidcontrol"]
    args = ["eval", "androidcontrol", "--model", str(tiny_dir), "--data", str(data), "--images", str(images)]
    args += ["--limit", "3", "--budgets", "0.5", "--max-new-tokens", "2", "--device", "cpu"]
    assert run_cli([*args, "--output", str(tmp_path / "one")], monkeypatch, capsys).code == 0
    result = run_cli([*args, "--output", str(tmp_path / "two"), "--batch-size", "2"], monkeypatch, capsys)
    assert result.code == 0, result.err
    assert list(summaries(tmp_path / "two").values()) == list(summaries(tmp_path / "one").values())
    assert "out of memory" not in result.err


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_bad_batch_size_is_one_line_and_exit_2(
    value: str, full_size: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    data, images = full_size["screenspot-pro"]
    args = ["eval", "screenspot-pro", "--model", "oracle", "--data", str(data), "--images", str(images)]
    result = run_cli([*args, "--output", str(tmp_path), "--batch-size", value], monkeypatch, capsys)
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        f"error: --batch-size {value} is invalid: expected a positive integer"
    ]
    assert not list(tmp_path.rglob("*.jsonl"))


def test_batch_size_from_a_config_file(
    full_size: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    data, images = full_size["screenspot-pro"]
    (tmp_path / "bad.yaml").write_text("batch_size: many\n")
    args = ["eval", "screenspot-pro", "--model", "oracle", "--data", str(data), "--images", str(images)]
    bad = run_cli([*args, "--config", str(tmp_path / "bad.yaml")], monkeypatch, capsys)
    assert bad.code == 2 and "key 'batch_size': expected an integer" in bad.err
    (tmp_path / "good.yaml").write_text("batch_size: 2\n")
    good = run_cli(
        [*args, "--config", str(tmp_path / "good.yaml"), "--output", str(tmp_path / "runs")],
        monkeypatch,
        capsys,
    )
    assert good.code == 0, good.err
    [summary] = summaries(tmp_path / "runs").values()
    assert "batch_size" not in summary["config"]  # not a setting: it does not change the numbers


def test_opencua_refuses_a_batch_size_above_one(
    full_size: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from transformers import AutoConfig, AutoModel

    from guikv.models.opencua_standin import OpenCUAStandin, OpenCUAStandinConfig, build_opencua_standin

    AutoConfig.register("opencua", OpenCUAStandinConfig, exist_ok=True)
    AutoModel.register(OpenCUAStandinConfig, OpenCUAStandin, exist_ok=True)
    model, processor = build_opencua_standin(prepared=False)
    model.save_pretrained(tmp_path / "opencua")
    processor.tokenizer.save_pretrained(tmp_path / "opencua")
    processor.image_processor.save_pretrained(tmp_path / "opencua")
    data, images = full_size["screenspot-pro"]
    args = ["eval", "screenspot-pro", "--model", str(tmp_path / "opencua"), "--device", "cpu"]
    args += ["--data", str(data), "--images", str(images), "--output", str(tmp_path / "runs")]
    result = run_cli([*args, "--batch-size", "4"], monkeypatch, capsys)
    assert result.code == 2
    *notices, line = result.err.strip().splitlines()
    assert all("excluded by the benchmark's rules" in notice for notice in notices)
    assert line.startswith("error: --batch-size 4: ") and "expected --batch-size 1" in line
    assert not (tmp_path / "runs").exists()


def test_two_processes_in_batches_write_the_files_of_one_process_at_batch_size_one(
    full_size: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Sharding and batching together (torchrun, as `accelerate launch --multi_gpu` starts it):
    each process batches its own share, and the merged files are those of one unbatched process."""
    chosen = {name: full_size[name] for name in ("agentnetbench", "mind2web")}
    for variable, value in environment(chosen).items():
        monkeypatch.setenv(variable, value)
    args = ["eval", *chosen, "--model", "oracle"]
    single = run_cli([*args, "--output", str(tmp_path / "one")], monkeypatch, capsys)
    assert single.code == 0, single.err
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    completed = subprocess.run(
        [*launcher, "-m", "guikv_cli", *args, "--batch-size", "3", "--output", str(tmp_path / "two")],
        env={**os.environ, **environment(chosen), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert one == two and len([p for p in one if p.name == SUMMARY_FILE]) == 2
    for path in one:
        assert (tmp_path / "one" / path).read_bytes() == (tmp_path / "two" / path).read_bytes(), path
