"""`guikv compare SCREENSHOT... --task T --carry`: the screenshots played as one trajectory, carried
against re-prefilled, per (method, budget) pair and step. The full cache at 100 agrees fully, a 10%
run has a row per step with far fewer tokens prefilled than the prompt holds, `compare.json` holds
every documented field, Ctrl-C keeps the finished steps and a re-run plays only the unfinished
trajectory, and a bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eval_helpers import run_cli
from PIL import Image

import guikv.carry_fidelity
from guikv_cli.compare_carry_figure import carry_figure

TASK = "Open the display settings"

STEP_KEYS = {
    "method", "budget", "step", "screenshot", "runnable", "reason", "reprefill_budget", "same_prompt",
    "prompt_difference", "token_agreement", "exact_match", "kl_first_decode_step", "action_match",
    "oracle_recall_reason", "carried", "reprefilled", "full",
}  # fmt: skip
PATH_KEYS = {
    "text", "generated_tokens", "action", "prefilled_tokens", "prompt_tokens", "kept_tokens",
    "kept_per_layer", "kv_bytes_kept", "kv_bytes_stored", "kv_mib", "prefill_ms", "scoring_ms", "decode_ms",
    "decode_ms_per_token", "oracle_recall", "oracle_recall_per_layer", "token_agreement_vs_full",
    "exact_match_vs_full", "kl_first_decode_step_vs_full", "action_match_vs_full",
}  # fmt: skip
CARRIED_KEYS = PATH_KEYS | {"carried_tokens", "evicted_screenshots", "kept_by_origin"}
SUMMARY_KEYS = {
    "steps", "token_agreement", "exact_match", "kl_first_decode_step", "action_match", "oracle_recall_steps",
    "oracle_recall_carried", "oracle_recall_reprefilled", "prefilled_tokens_carried",
    "prefilled_tokens_reprefilled",
}  # fmt: skip


@pytest.fixture
def shots(tmp_path: Path, fixtures_dir: Path) -> list[Path]:
    """Three small desktop screenshots (downscaled AgentNetBench fixture images), the trajectory."""
    sources = sorted((fixtures_dir / "agentnetbench" / "test_data" / "images").glob("*.png"))
    paths = []
    for index in range(3):
        path = tmp_path / f"step{index}.png"
        Image.open(sources[index % len(sources)]).convert("RGB").resize((308, 196)).save(path)
        paths.append(path)
    return paths


def carry_args(tiny_dir: Path, shots: list[Path], out: Path, *extra: str) -> list[str]:
    """A `compare --carry` command line over the screenshots, on the tiny model."""
    return [
        "compare", *map(str, shots), "--task", TASK, "--carry", "--model", str(tiny_dir), "--device", "cpu",
        "--max-new-tokens", "4", "--output", str(out), *extra,
    ]  # fmt: skip


def test_carry_compares_every_step_and_the_full_cache_agrees_fully(
    tiny_dir, shots, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    args = carry_args(
        tiny_dir,
        shots,
        out,
        "--methods",
        "full,gui_kv",
        "--budgets",
        "0.5,10",
        "--html",
        str(tmp_path / "r.html"),
    )
    result = run_cli(args, monkeypatch, capsys)
    assert result.code == 0, result.err
    for title in (
        "Per pair, mean over its steps: carried vs re-prefilled",
        "Carried vs re-prefilled, per step",
        "Fidelity to the full cache",
        "Costs per step, carried / re-prefilled",
    ):
        assert title in result.out
    assert "gui_kv at 0.5%, step 0: not runnable (budget keeps" in result.out
    assert "3 steps x 3 pairs, carried and re-prefilled; wrote compare.json and 1 figure(s) to" in result.out
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") == 1
    document = json.loads((out / "compare.json").read_text())
    assert document["format"] == "guikv-compare-carry/1" and document["complete"] is True
    assert document["figures"] == ["carry_per_step.png"]
    assert np.asarray(Image.open(out / "carry_per_step.png").convert("L"), dtype=float).std() > 10
    assert (document["screenshot_window"], document["max_tokens"]) == (5, None)
    assert document["screenshots"] == [str(path) for path in shots]
    runs = document["runs"]
    assert [(run["method"], run["budget"], run["finished"], len(run["steps"])) for run in runs] == [
        ("full", 100.0, True, 3),
        ("gui_kv", 0.5, True, 1),
        ("gui_kv", 10.0, True, 3),
    ]
    assert set(runs[1]["steps"][0]) == {"method", "budget", "step", "screenshot", "runnable", "reason"}
    for run in runs:
        assert set(run["summary"]) == SUMMARY_KEYS
    full, _, ten = runs
    assert full["summary"]["token_agreement"] == 1.0 and full["summary"]["exact_match"] == 1.0
    for row in full["steps"]:
        assert row["same_prompt"] and row["token_agreement"] == 1.0 and row["action_match"]
        assert row["kl_first_decode_step"] < 1e-9
        assert row["carried"]["oracle_recall"] == row["reprefilled"]["oracle_recall"] == 1.0
        assert row["carried"]["text"] == row["reprefilled"]["text"] == row["full"]["text"]
    for index, row in enumerate(ten["steps"]):
        assert set(row) == STEP_KEYS and row["runnable"] and row["step"] == index
        assert set(row["carried"]) == CARRIED_KEYS and set(row["reprefilled"]) == PATH_KEYS
        carried, reprefilled = row["carried"], row["reprefilled"]
        assert reprefilled["prefilled_tokens"] == reprefilled["prompt_tokens"] == row["full"]["prompt_tokens"]
        assert (
            carried["kept_per_layer"] == reprefilled["kept_per_layer"] == [carried["prompt_tokens"] // 10] * 4
        )
        assert 0.0 <= carried["oracle_recall"] < 1.0 and len(carried["oracle_recall_per_layer"]) == 4
        if index:
            assert carried["prefilled_tokens"] < carried["prompt_tokens"] / 3
    assert ten["summary"]["prefilled_tokens_carried"] < ten["summary"]["prefilled_tokens_reprefilled"] / 2


def test_ctrl_c_keeps_the_finished_steps_and_the_rerun_plays_only_the_unfinished_trajectory(
    tiny_dir, shots, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    path = out / "compare.json"
    args = carry_args(tiny_dir, shots, out, "--methods", "gui_kv", "--budgets", "10,20")
    runs: list[str] = []
    original = guikv.carry_fidelity.run_step_inputs

    def counting(model, processor, inputs, config, **options):
        runs.append(f"{config.method} {config.budget:g}")
        if len(runs) == 9:  # pair 1: 3 steps x (re-prefilled, full); pair 2: step 0, then step 1's re-prefill
            raise KeyboardInterrupt
        return original(model, processor, inputs, config, **options)

    monkeypatch.setattr(guikv.carry_fidelity, "run_step_inputs", counting)
    result = run_cli(args, monkeypatch, capsys)
    assert result.code == 130
    assert result.err.strip().splitlines()[-1] == (
        f"interrupted: {path} holds 1 of 2 pairs' trajectories and 1 of 3 steps of an unfinished one "
        "(played again from its first step); re-run the same command to play the other 1"
    )
    assert "compare steps: 0/6 (0%), 0:00:00 elapsed" in result.err.splitlines()
    document = json.loads(path.read_text())
    assert document["complete"] is False
    assert [(run["budget"], run["finished"], len(run["steps"])) for run in document["runs"]] == [
        (10.0, True, 3),
        (20.0, False, 1),
    ]
    kept = document["runs"][0]["steps"]

    runs.clear()
    again = run_cli(args, monkeypatch, capsys)
    assert again.code == 0, again.err
    assert f"resuming {path}: 1 of 2 pairs' trajectories already done; playing the other 1" in again.err
    assert runs == ["gui_kv 20", "full 100"] * 3  # the finished trajectory is not played again
    document = json.loads(path.read_text())
    assert document["complete"] is True
    assert [(run["budget"], run["finished"], len(run["steps"])) for run in document["runs"]] == [
        (10.0, True, 3),
        (20.0, True, 3),
    ]
    assert document["runs"][0]["steps"] == kept


BAD_INPUTS: list[tuple[list[str], str]] = [
    (["SHOT", "--task", "t", "--max-tokens", "100"], "--max-tokens belong to --carry"),
    (["SHOT", "--task", "t", "--screenshot-window", "3"], "--screenshot-window belong to --carry"),
    (["EMPTY", "--carry"], "--carry belong to the screenshot form, not to eval run folders"),
    (["EMPTY", "--max-tokens", "100"], "--max-tokens belong to the screenshot form"),
    (
        ["SHOT", "--task", "t", "--carry", "--max-tokens", "100", "--budgets", "5"],
        "--max-tokens sets every step's capacity: give it or --budgets, not both",
    ),
    (
        ["SHOT", "--task", "t", "--carry", "--max-tokens", "8"],
        "--max-tokens 8 is invalid: expected an integer >= --window-size + 1 (9)",
    ),
    (
        ["SHOT", "--task", "t", "--carry", "--screenshot-window", "0"],
        "--screenshot-window 0 is invalid: expected an integer >= 1",
    ),
    (["SHOT", "--task", "t", "--carry", "--max-tokens", "many"], "Invalid value for '--max-tokens'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_inputs_are_one_line_and_exit_2(tmp_path, make_png, monkeypatch, capsys, args, message):
    (tmp_path / "empty").mkdir()
    shot = make_png(tmp_path / "shot.png", (64, 40))
    named = [{"SHOT": str(shot), "EMPTY": str(tmp_path / "empty")}.get(arg, arg) for arg in args]
    result = run_cli(["compare", *named], monkeypatch, capsys)
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert message in result.err and "Traceback" not in result.err


def test_a_model_that_cannot_carry_is_one_line_and_exit_2(tmp_path, make_png, monkeypatch, capsys):
    from guikv.models.opencua_standin import build_opencua_standin

    monkeypatch.setattr("guikv.models.load", lambda *args, **kwargs: build_opencua_standin())
    shot = make_png(tmp_path / "shot.png", (64, 40))
    result = run_cli(["compare", str(shot), "--task", "t", "--carry"], monkeypatch, capsys)
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "error: --carry: tiny (opencua) cannot carry its cache from step to step (its forward expands its "
        "image placeholders itself); drop --carry to compare one step"
    ]


def figure_row(step: int, agreement: float, carried: int, reprefilled: int, kv_bytes: int) -> dict[str, Any]:
    """A runnable step row with the fields the figure reads."""
    return {
        "step": step,
        "runnable": True,
        "token_agreement": agreement,
        "carried": {"prefilled_tokens": carried, "kv_bytes_kept": kv_bytes},
        "reprefilled": {"prefilled_tokens": reprefilled},
    }


def test_the_figure_draws_each_pair_per_step_with_the_re_prefill_as_a_guide(
    plotted: list[tuple[Any, str]], tmp_path: Path
) -> None:
    mib = 1024 * 1024
    full = [figure_row(0, 1.0, 900, 900, 9 * mib), figure_row(1, 1.0, 100, 1000, 10 * mib)]
    gui_kv = [figure_row(0, 1.0, 900, 900, mib), figure_row(1, 0.5, 100, 1100, mib)]
    stopped = [{"step": 0, "runnable": False, "reason": "budget keeps 2 tokens"}]
    runs = [(("full", 100.0), full), (("gui_kv", None), gui_kv), (("snapkv", None), stopped)]
    assert carry_figure(runs, tmp_path, 64, {"window_size": 4}) == tmp_path / "carry_per_step.png"
    [(panels, title)] = plotted
    assert title == "Carried vs re-prefilled, per step · window_size=4 · max_tokens=64"
    agreement, prefilled, kept = (
        [(series.label, list(series.points)) for series in panel.series] for panel in panels
    )
    assert agreement == [("full 100%", [(0, 100.0), (1, 100.0)]), ("gui_kv 64 tok", [(0, 100.0), (1, 50.0)])]
    assert prefilled[-1] == ("re-prefilled (mean over pairs)", [(0, 900.0), (1, 1050.0)])
    assert panels[1].series[-1].guide and all(panel.y_from_zero for panel in panels)
    assert kept == [("full 100%", [(0, 9.0), (1, 10.0)]), ("gui_kv 64 tok", [(0, 1.0), (1, 1.0)])]
    assert carry_figure([(("snapkv", None), stopped)], tmp_path, 64, {}) is None
