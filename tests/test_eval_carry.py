"""`guikv eval agentnetbench --carry`: each trajectory carries its compressed cache from step to step
(`benchmarks.carried`). On the tiny model with the shipped trajectory's real screenshots (downscaled):
a carried run prefills only each new turn, asks the native conversation of the model's own answers,
gets a directory of its own, equals at budget 100 a re-prefill of each step's whole conversation,
leaves a step without a screenshot out of the conversation, resumes an interrupted trajectory from
its first step (the records of an uninterrupted run), fails the rest of a trajectory after a failed
step and retries it whole; `--carry` where nothing can be carried is one line, exit 2."""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from eval_helpers import image_count, records, run_cli
from PIL import Image
from test_eval_stateful import interrupt, untimed

from benchmarks import get_benchmark
from benchmarks.carried import BrokenTrajectory, CarriedCall, CarriedPlayer, CarriedResponder
from benchmarks.rescore import rescore_run
from benchmarks.rundir import CONFIG_FILE, run_directory
from benchmarks.runner import CARRIED_FIELDS, Call, Reply, RunEvents, prefill_tokens, run
from guikv.agents import get_family
from guikv.agents.prompting import messages_json
from guikv.config import CompressionConfig
from guikv.trajectory import Trajectory
from guikv_cli.eval import _Agent, build_request, run_settings

SHIPPED = Path(__file__).resolve().parents[1].parent / "shared/fixtures/agentnetbench/test_data"
SIZE = (448, 252)
NEW_TOKENS = 6
UI_TARS = get_family("ui-tars")


def trajectory_data(
    root: Path, steps: Sequence[int] = (0, 1, 2), *, task_id: str | None = None, missing: int | None = None
) -> tuple[Path, Path]:
    """The shipped trajectory's `steps` (indices) with their real screenshots downscaled to `SIZE`,
    under `root` (another trajectory in the same folder when `task_id` is given); the screenshot of
    step `missing` (an index into `steps`) left out."""
    data, images = root / "agentnetbench", root / "agentnetbench" / "images"
    images.mkdir(parents=True, exist_ok=True)
    [source] = SHIPPED.glob("*.json")
    trajectory = json.loads(source.read_text())
    trajectory["steps"] = [trajectory["steps"][index] for index in steps]
    if task_id is not None:
        trajectory["task_id"] = task_id
        trajectory["high_level_task_description"] += " (again)"
    (data / f"{trajectory['task_id']}.json").write_text(json.dumps(trajectory))
    for number, step in enumerate(trajectory["steps"]):
        if number != missing:
            Image.open(SHIPPED / "images" / step["image"]).convert("RGB").resize(SIZE).save(
                images / step["image"]
            )
    return data, images


def cli_args(tiny_dir: Path, data: tuple[Path, Path], output: Path, *extra: str) -> list[str]:
    """`guikv eval agentnetbench --carry` with the tiny model on `data`."""
    return [
        "eval",
        "agentnetbench",
        "--carry",
        "--model",
        str(tiny_dir),
        "--device",
        "cpu",
        "--data",
        str(data[0]),
        "--images",
        str(data[1]),
        "--max-new-tokens",
        str(NEW_TOKENS),
        "--output",
        str(output),
        *extra,
    ]


def run_dir_of(output: Path) -> Path:
    """The one run directory under an output root."""
    [config] = output.rglob(CONFIG_FILE)
    return config.parent


def carried_run(
    tiny: tuple,
    data: tuple[Path, Path],
    run_dir: Path,
    responder: CarriedResponder | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """AgentNetBench carried through `runner.run` with the tiny model (5 screenshots, gui_kv at 10
    unless `responder` says otherwise); the summary."""
    responder = responder or CarriedResponder(
        tiny[0], tiny[1], CompressionConfig(budget=10), NEW_TOKENS, UI_TARS, 5
    )
    spec = get_benchmark("agentnetbench")
    config = responder.config
    settings = {"model": "tiny", "family": "ui-tars", "method": config.method, "budget": config.budget}
    summary = run(
        spec,
        spec.load(*data),
        {**settings, "carry": True},
        run_dir,
        responder,
        UI_TARS,
        screenshots=responder.screenshots,
        events=RunEvents(note=(notes if notes is not None else []).append),
        player=CarriedPlayer,
    )
    assert summary is not None
    return summary


def test_a_carried_run_prefills_only_each_new_turn_of_the_native_conversation(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    data = trajectory_data(tmp_path / "data", (0, 1, 2, 3))
    result = run_cli(cli_args(tiny_dir, data, tmp_path / "runs"), monkeypatch, capsys)
    assert result.code == 0, result.err
    run_dir = run_dir_of(tmp_path / "runs")
    assert run_dir.name.startswith("gui_kv-b10-carry-")
    assert yaml.safe_load((run_dir / CONFIG_FILE).read_text())["carry"] is True
    rows = records(run_dir)
    assert [row["carried_step"] for row in rows] == [0, 1, 2, 3]
    assert rows[0]["prefilled_tokens"] == rows[0]["prompt_tokens"] and rows[0]["carried_tokens"] == 0
    for earlier, row in itertools.pairwise(rows):
        assert row["prefilled_tokens"] < row["prompt_tokens"] / 5
        assert row["carried_tokens"] >= earlier["kept_tokens"]
    step = get_benchmark("agentnetbench").load(*data).samples
    for index, row in enumerate(rows):
        answers = [earlier["raw_output"] for earlier in rows[:index]]
        screens = [*(sample.image for sample in step[:index]), step[index].image]
        native = UI_TARS.trajectory_messages(step[0].instruction, screens, answers, 5)
        assert row["prompts"] == [messages_json(native)]
        assert row["history_screenshots"] == [sample.step_num for sample in step[:index]]
    summary = json.loads((run_dir / "summary.json").read_text())
    prefilled = sum(row["prefilled_tokens"] for row in rows) / len(rows)
    prompt = sum(row["prompt_tokens"] for row in rows) / len(rows)
    assert summary["prefill"] == {"prompt_tokens_mean": prompt, "prefilled_tokens_mean": prefilled}
    assert prefilled < prompt / 2
    assert "gui_kv carried" in result.out and f"{prefilled:.0f} of {prompt:.0f}" in result.out


def test_the_summary_s_prefill_counts_a_re_prefilled_call_s_whole_prompt() -> None:
    rows = [
        {"prompt_tokens": 100, "kv_bytes_full": 8},
        {"prompt_tokens": 300, "prefilled_tokens": 50, "kv_bytes_full": 8},
        {"prompt_tokens": 900, "prefilled_tokens": 0, "kv_bytes_full": 0, "error": "RuntimeError: failed"},
    ]
    assert prefill_tokens(rows) == {"prompt_tokens_mean": 200, "prefilled_tokens_mean": 75}
    oracle = [{"prompt_tokens": 0, "kv_bytes_full": 0, "error": None}]
    assert prefill_tokens(oracle) == {"prompt_tokens_mean": None, "prefilled_tokens_mean": None}


def test_a_carried_run_has_a_directory_of_its_own_and_a_re_prefilled_one_keeps_its_own() -> None:
    values = {
        "benchmark": ["agentnetbench"],
        "model": "tiny",
        "family": "auto",
        "method": "gui_kv",
        "screenshots": 5,
        "instruction_level": "high",
        "output": "runs",
        "resume": True,
        "retry_failed": True,
        "batch_size": 1,
        "device": "cpu",
        "dtype": "auto",
        "attn": "auto",
    }
    agent = _Agent("tiny", UI_TARS, "float32", "sdpa", True, True, lambda config, tokens: None)
    paths = (Path("/data"), Path("/images"))
    spec = get_benchmark("agentnetbench")
    settings = {}
    for carry in (False, True):
        request = build_request({**values, "carry": carry})
        settings[carry] = run_settings(spec, request, agent, request.configs[0], paths)
    assert "carry" not in settings[False]  # a re-prefilled run's directory is the one it always had
    assert settings[True] == {**settings[False], "carry": True}
    plain, carried = (run_directory(Path("runs"), settings[carry]) for carry in (False, True))
    assert plain.parent == carried.parent and plain.name != carried.name
    assert carried.name.startswith("gui_kv-b10-carry-") and "carry" not in plain.name


def test_max_tokens_cuts_every_carried_step_to_that_many_tokens_in_a_run_of_its_own(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    data = trajectory_data(tmp_path / "data", (0, 1, 2, 3))
    args = cli_args(tiny_dir, data, tmp_path / "runs", "--max-tokens", "64")
    result = run_cli(args, monkeypatch, capsys)
    assert result.code == 0, result.err
    run_dir = run_dir_of(tmp_path / "runs")
    assert run_dir.name.startswith("gui_kv-t64-carry-")
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    assert (config["carry"], config["max_tokens"], config["budget"]) == (True, 64, None)
    rows = records(run_dir)
    assert [row["kept_tokens"] for row in rows] == [64] * 4  # not 10%: 116 growing to 166
    assert all(row["prompt_tokens"] > 2 * 64 for row in rows) and rows[-1]["prompt_tokens"] > 500
    assert "gui_kv carried" in result.out and "64 tok" in result.out
    again = run_cli([*args[:-2], "--config", str(run_dir / CONFIG_FILE)], monkeypatch, capsys)
    assert again.code == 0 and "4 of 4 samples already done" in again.err  # config.yaml resumes it
    compared = run_cli(
        ["compare", str(tmp_path / "runs"), "--output", str(tmp_path / "c")], monkeypatch, capsys
    )
    assert compared.code == 0, compared.err
    [entry] = json.loads((tmp_path / "c" / "compare.json").read_text())["groups"][0]["runs"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["budget"] is None and entry["max_tokens"] == 64 and entry["carried"] is True
    assert entry["budget"] == pytest.approx(100 - summary["savings"]["kv_saved_percent"])
    assert "64 tok" in compared.out


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--max-tokens", "64"], "--max-tokens 64 is a carried trajectory's capacity: add --carry"),
        (["--carry", "--max-tokens", "64", "--budgets", "5"], "give it or --budgets, not both"),
        (
            ["--carry", "--max-tokens", "8"],
            "--max-tokens 8 is invalid: expected an integer >= --window-size + 1",
        ),
        (["--carry", "--max-tokens", "64", "--method", "full"], "--method full keeps every token"),
    ],
)
def test_max_tokens_where_it_cannot_apply_is_one_line(
    extra: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    args = ["eval", "agentnetbench", *extra, "--output", str(tmp_path / "runs")]
    result = run_cli(args, monkeypatch, capsys)
    assert result.code == 2
    assert result.err.count("\n") == 1 and expected in result.err and "Traceback" not in result.err
    assert not (tmp_path / "runs").exists()


@dataclass
class ReplayingResponder(CarriedResponder):
    """The carried responder, re-prefilling after every step the step's whole conversation (every
    token fed so far and every screenshot) in one `generate()` without a cache, keeping its text."""

    replayed: list[str] = field(default_factory=list, init=False)

    def reply(self, calls: Sequence[Call]) -> list[Reply]:
        """Answer carried, then replay the step as one prompt."""
        [reply] = super().reply(calls)
        trajectory: Trajectory = calls[0].context.trajectory
        generated = reply.costs["generated_tokens"]
        ids = torch.tensor([trajectory.token_ids[: len(trajectory.token_ids) - int(generated)]])
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=(ids == self.model.config.image_token_id).long(),
            pixel_values=torch.cat([turn["pixel_values"] for turn in trajectory.turns]),
            image_grid_thw=torch.cat([turn["image_grid_thw"] for turn in trajectory.turns]),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
        )
        self.replayed.append(self.processor.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)[0])
        return [reply]


@pytest.mark.parametrize("method", ["gui_kv", "star_kv"])
def test_at_budget_100_a_carried_run_answers_as_re_prefilling_each_step_s_whole_conversation(
    method: str, tiny_sdpa: tuple, tmp_path: Path
) -> None:
    """Inside the screenshot window (5 screenshots, 4 steps): each record's output is the greedy
    decode of prefilling the whole conversation its step completes, with the answers as generated."""
    data = trajectory_data(tmp_path / "data", (0, 1, 2, 3))
    model, processor = tiny_sdpa
    config = CompressionConfig(method=method, budget=100)
    responder = ReplayingResponder(model, processor, config, NEW_TOKENS, UI_TARS, 5)
    summary = carried_run(tiny_sdpa, data, tmp_path / "run", responder)
    rows = records(tmp_path / "run")
    assert summary["samples_scored"] == 4 and len(set(responder.replayed)) > 1
    assert [row["raw_output"] for row in rows] == responder.replayed
    assert all(row["kept_tokens"] == row["prompt_tokens"] for row in rows)


def test_a_step_without_a_screenshot_is_left_out_of_the_carried_conversation(
    tiny_sdpa: tuple, tmp_path: Path
) -> None:
    data = trajectory_data(tmp_path / "data", (0, 1, 2), missing=1)
    loaded = get_benchmark("agentnetbench").load(*data)
    summary = carried_run(tiny_sdpa, data, tmp_path / "run")
    first, third = records(tmp_path / "run")
    assert [item["sample_id"] for item in summary["skipped"]] == [loaded.skipped[0].sample_id]
    assert [first["sample_id"], third["sample_id"]] == [sample.sample_id for sample in loaded.samples]
    assert third["carried_step"] == 1 and third["history_screenshots"] == [loaded.samples[0].step_num]
    [prompt] = third["prompts"]
    assert image_count(prompt) == 2
    assert [turn["content"] for turn in prompt if turn["role"] == "assistant"] == [first["raw_output"]]
    assert "## Observation" not in json.dumps(prompt)  # no ground-truth monologue stands in for it


def two_trajectories(root: Path) -> tuple[Path, Path]:
    """Two 3-step trajectories: the shipped one's first steps and, under another task id and
    instruction, its next ones."""
    trajectory_data(root, (0, 1, 2))
    return trajectory_data(root, (3, 4, 5), task_id="s_second")


@dataclass
class CountingResponder(CarriedResponder):
    """The carried responder, counting the steps it fed."""

    steps: int = field(default=0, init=False)

    def reply(self, calls: Sequence[Call]) -> list[Reply]:
        """Answer carried, counting the step."""
        self.steps += 1
        return super().reply(calls)


def test_an_interrupted_carried_run_resumes_each_unfinished_trajectory_from_its_first_step(
    tiny_sdpa: tuple, tmp_path: Path
) -> None:
    data = two_trajectories(tmp_path / "data")
    whole = carried_run(tiny_sdpa, data, tmp_path / "whole")
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    interrupt(tmp_path / "cut", 4)  # the second trajectory stopped after its first step
    notes: list[str] = []
    again = CountingResponder(
        tiny_sdpa[0], tiny_sdpa[1], CompressionConfig(budget=10), NEW_TOKENS, UI_TARS, 5
    )
    resumed = carried_run(tiny_sdpa, data, tmp_path / "cut", again, notes=notes)
    assert again.steps == 3
    assert any("re-running 1 finished samples of unfinished trajectories" in note for note in notes)
    assert untimed(tmp_path / "cut") == untimed(tmp_path / "whole")
    assert resumed["metrics"] == whole["metrics"] and resumed["prefill"] == whole["prefill"]
    assert [row["carried_step"] for row in records(tmp_path / "cut")] == [0, 1, 2, 0, 1, 2]


@dataclass
class FailingResponder(CarriedResponder):
    """The carried responder whose trajectories raise like an out-of-memory GPU at step `fail_at`."""

    fail_at: int = 1

    def _start(self, task: str) -> Trajectory:
        """A trajectory whose step `fail_at` raises after feeding part of its turn."""
        trajectory = super()._start(task)
        step = trajectory.step

        def failing(screenshot: Any) -> Any:
            if len(trajectory.answers) == self.fail_at:
                trajectory.screenshots.append(screenshot)
                raise RuntimeError("CUDA out of memory")
            return step(screenshot)

        trajectory.step = failing  # type: ignore[method-assign]
        return trajectory


def test_a_failed_step_fails_the_rest_of_its_trajectory_and_the_next_run_retries_it_whole(
    tiny_sdpa: tuple, tmp_path: Path
) -> None:
    data = trajectory_data(tmp_path / "data", (0, 1, 2))
    whole = carried_run(tiny_sdpa, data, tmp_path / "whole")
    model, processor = tiny_sdpa
    failing = FailingResponder(model, processor, CompressionConfig(budget=10), NEW_TOKENS, UI_TARS, 5)
    failed = carried_run(tiny_sdpa, data, tmp_path / "run", failing)
    errors = [row["error"] for row in records(tmp_path / "run")]
    assert errors[:2] == [None, "RuntimeError: CUDA out of memory"]
    assert errors[2].startswith(
        "BrokenTrajectory: not run: an earlier step of this carried trajectory failed"
    )
    assert failed["samples_failed"] == 2
    third = records(tmp_path / "run")[2]
    assert {name: third[name] for name in CARRIED_FIELDS} == {
        "carried_step": None,
        "prefilled_tokens": 0,
        "carried_tokens": 0,
        "evicted_screenshots": 0,
        "kept_by_origin": {},
    }
    retried = carried_run(tiny_sdpa, data, tmp_path / "run")
    assert retried["metrics"] == whole["metrics"]
    assert untimed(tmp_path / "run") == untimed(tmp_path / "whole")


def test_a_carried_trajectory_refuses_a_step_that_does_not_continue_it(tiny_sdpa: tuple, tmp_path: Path):
    data = trajectory_data(tmp_path / "data", (0, 1))
    second = get_benchmark("agentnetbench").load(*data).samples[1]
    responder = CarriedResponder(tiny_sdpa[0], tiny_sdpa[1], CompressionConfig(), NEW_TOKENS, UI_TARS, 5)
    context = responder.new_context()
    messages = UI_TARS.trajectory_messages(
        second.instruction, [second.history[0].image, second.image], ["an answer"], 5
    )
    call = CarriedCall(
        messages, lambda: None, SIZE, context, task=second.instruction, screenshot=second.image
    )
    with pytest.raises(BrokenTrajectory, match="follows 1 earlier steps, the trajectory holds 0"):
        responder.reply([call])
    assert context.trajectory is not None and context.trajectory.screenshots == []


def test_re_scoring_a_carried_run_keeps_its_carried_fields(tiny_sdpa: tuple, tmp_path: Path) -> None:
    data = trajectory_data(tmp_path / "data", (0, 1))
    summary = carried_run(tiny_sdpa, data, tmp_path / "run")
    rescored = rescore_run(tmp_path / "run")
    assert rescored.changed == ()
    assert rescored.records == records(tmp_path / "run")
    assert rescored.summary["prefill"] == summary["prefill"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["screenspot-v2", "--carry"], "--carry: screenspot-v2 has no trajectories to carry a cache through"),
        (["agentnetbench", "mind2web", "--carry"], "--carry: mind2web has no trajectories"),
        (["agentnetbench", "--carry", "--batch-size", "2"], "expected --batch-size 1, got 2"),
        (["agentnetbench", "--carry", "--model", "oracle"], "--carry: the oracle runs no model"),
    ],
)
def test_carry_where_nothing_can_be_carried_is_one_line(
    args: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    result = run_cli(["eval", *args, "--output", str(tmp_path / "runs")], monkeypatch, capsys)
    assert result.code == 2
    assert result.err.count("\n") == 1 and expected in result.err and "Traceback" not in result.err
    assert not (tmp_path / "runs").exists()


def test_carry_from_a_config_file_is_checked_like_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    (tmp_path / "run.yaml").write_text("carry: true\nbenchmark: [agentnetbench, mind2web]\n")
    args = ["eval", "--config", str(tmp_path / "run.yaml"), "--model", "oracle"]
    result = run_cli(args, monkeypatch, capsys)
    assert result.code == 2 and "--carry: mind2web has no trajectories" in result.err
    (tmp_path / "bad.yaml").write_text("carry: often\n")
    bad = run_cli(["eval", "agentnetbench", "--config", str(tmp_path / "bad.yaml")], monkeypatch, capsys)
    assert bad.code == 2 and "key 'carry': expected true or false" in bad.err


def test_carry_with_a_model_that_cannot_carry_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from transformers import AutoConfig, AutoModel

    from guikv.models.opencua_standin import OpenCUAStandin, OpenCUAStandinConfig, build_opencua_standin

    AutoConfig.register("opencua", OpenCUAStandinConfig, exist_ok=True)
    AutoModel.register(OpenCUAStandinConfig, OpenCUAStandin, exist_ok=True)
    model, processor = build_opencua_standin(prepared=False)
    model.save_pretrained(tmp_path / "opencua")
    processor.tokenizer.save_pretrained(tmp_path / "opencua")
    processor.image_processor.save_pretrained(tmp_path / "opencua")
    data = trajectory_data(tmp_path / "data", (0,))
    result = run_cli(cli_args(tmp_path / "opencua", data, tmp_path / "runs"), monkeypatch, capsys)
    assert result.code == 2
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert result.err.startswith("error: --carry: ") and "cannot carry its cache" in result.err
    assert not (tmp_path / "runs").exists()


def test_eval_help_says_what_carry_changes(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    result = run_cli(["eval", "--help"], monkeypatch, capsys)
    text = " ".join(result.out.replace("│", " ").split())  # the help's box, rows joined
    assert "--carry" in text and "native multi-turn layout" in text
    assert "prefills only its new turn" in text and "model's own answer" in text
