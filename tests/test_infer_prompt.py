"""`guikv infer`'s prompt, screenshot order, action report and step errors, in process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from guikv.agents import get_family
from guikv.config import CompressionConfig
from guikv.errors import UserInputError
from guikv.layout import TokenLayout
from guikv.models.adapters import adapter_for
from guikv_cli.infer import (
    Screenshot,
    _action_dict,
    _describe_action,
    _shell_word,
    check_output_png,
    check_screenshot,
    order_screenshots,
    run_infer,
)

SCREENSHOTS = sorted(
    (Path(__file__).resolve().parents[1].parent / "shared/fixtures/agentnetbench/test_data/images").glob(
        "*.png"
    )
)


@pytest.mark.parametrize("family_name", ["ui-tars", "opencua"])
@pytest.mark.parametrize("count", [1, 5])
def test_prompt_has_one_image_span_per_screenshot(tiny_sdpa, family_name: str, count: int):
    model, processor = tiny_sdpa
    images = [Image.open(SCREENSHOTS[i]).convert("RGB").resize((224, 140)) for i in range(count)]
    messages = get_family(family_name).one_step_messages("Open the settings", images)
    inputs = adapter_for(model).build_inputs(processor, messages)
    layout = TokenLayout.from_input_ids(inputs["input_ids"], [model.config.image_token_id])
    assert layout.num_images == count
    grids = inputs["image_grid_thw"].tolist()
    assert [end - start for start, end in layout.image_spans] == [t * h * w // 4 for t, h, w in grids]
    # History screenshots are user turns of their own, with no invented assistant answers.
    assert [message["role"] for message in messages] == ["user"] * count
    assert all(len(message["content"]) == 1 for message in messages[:-1])
    assert messages[-1]["content"][-1]["type"] == "text"
    assert "Open the settings" in messages[-1]["content"][-1]["text"]


def _shots(tmp_path: Path, names: list[str]) -> list[Screenshot]:
    shots = []
    for index, name in enumerate(names):
        path = tmp_path / name
        path.write_bytes(b"")
        os.utime(path, (1_000_000 + index, 1_000_000 + index))
        shots.append(Screenshot(path=path, size=(10, 10)))
    return shots


def test_history_order_name_is_natural_and_mtime_is_oldest_first(tmp_path: Path):
    shots = _shots(tmp_path, ["step10.png", "step2.png", "step1.png"])
    assert [s.path.name for s in order_screenshots(shots, None)] == ["step10.png", "step2.png", "step1.png"]
    assert [s.path.name for s in order_screenshots(shots, "name")] == ["step1.png", "step2.png", "step10.png"]
    assert [s.path.name for s in order_screenshots(shots, "mtime")] == [
        "step10.png",
        "step2.png",
        "step1.png",
    ]
    with pytest.raises(UserInputError, match="--history-order"):
        order_screenshots(shots, "size")


def test_show_kept_path_is_checked_before_any_model_work(tmp_path: Path):
    assert check_output_png(None) is None
    assert check_output_png(str(tmp_path / "kept.png")) == tmp_path / "kept.png"
    with pytest.raises(UserInputError, match="does not exist"):
        check_output_png(str(tmp_path / "missing" / "kept.png"))
    with pytest.raises(UserInputError, match=r"ending in \.png"):
        check_output_png(str(tmp_path / "kept.svg"))


def test_a_parsed_action_is_reported_in_pixels_of_the_current_screenshot():
    family = get_family("ui-tars")
    action = family.parse("Thought: open it\nAction: click(point='<point>100 200</point>')", (1280, 720))[0]
    report = _action_dict(action, (1280, 720))
    assert report["type"] == "click" and report["parsed"] is True
    assert report["point_px"] == list(action.pixel_point(1280, 720)) == [99, 198]
    assert _describe_action(report) == "click at (99, 198) px of the current screenshot"


def test_an_unparsed_output_is_an_unparsed_action_not_an_error():
    action = get_family("opencua").parse("gllonlonlon", (1280, 720))[0]
    report = _action_dict(action, (1280, 720))
    assert report["type"] == "unparsed" and report["point_px"] is None
    assert _describe_action(report).startswith("unparsed")


def test_the_gpu_command_quotes_apostrophes_readably():
    assert _shell_word("step1.png") == "step1.png"
    assert _shell_word("Open the settings") == "'Open the settings'"
    assert _shell_word("Click 'Search' for $5") == "\"Click 'Search' for \\$5\""


def test_a_budget_too_small_for_the_prompt_is_a_user_error(tiny_dir: Path, tmp_path: Path):
    path = tmp_path / "screen.png"
    Image.open(SCREENSHOTS[0]).convert("RGB").resize((224, 140)).save(path)
    with pytest.raises(UserInputError, match=r"--budget 0.1 is too small for this prompt: .*window_size"):
        run_infer(
            [check_screenshot(str(path))],
            "Open the settings",
            CompressionConfig(budget=0.1),
            model_name=str(tiny_dir),
            family_name="auto",
            max_new_tokens=2,
            device="cpu",
            dtype="auto",
            attn="sdpa",
            picture=None,
        )


def test_infer_says_what_it_is_doing_while_it_works(tiny_dir: Path, tmp_path: Path):
    path = tmp_path / "screen.png"
    Image.open(SCREENSHOTS[0]).convert("RGB").resize((224, 140)).save(path)
    shown: list[str] = []
    report = run_infer(
        [check_screenshot(str(path))],
        "Open the settings",
        CompressionConfig(budget=50),
        model_name=str(tiny_dir),
        family_name="auto",
        max_new_tokens=3,
        device="cpu",
        dtype="auto",
        attn="sdpa",
        picture=tmp_path / "kept.png",
        show_status=shown.append,
    )
    decoding = [
        f"decoding: {count} of at most 3 tokens" for count in range(1, report["generated_tokens"] + 1)
    ]
    assert shown == [
        f"loading {tiny_dir}",
        "encoding the screenshots and the task",
        "prefilling the prompt and compressing the KV cache",
        *decoding,
        f"drawing {tmp_path / 'kept.png'}",
    ]


def test_the_kept_picture_names_the_knobs_set(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "screen.png"
    Image.open(SCREENSHOTS[0]).convert("RGB").resize((224, 140)).save(path)
    drawn: list[dict] = []
    monkeypatch.setattr("guikv.viz.kept.save_kept_picture", lambda *args, **kwargs: drawn.append(kwargs))
    run_infer(
        [check_screenshot(str(path))],
        "Open the settings",
        CompressionConfig(method="st_lite", budget=50, st_lite_variant="paper"),
        model_name=str(tiny_dir),
        family_name="auto",
        max_new_tokens=1,
        device="cpu",
        dtype="auto",
        attn="sdpa",
        picture=tmp_path / "kept.png",
    )
    [picture] = drawn
    assert (picture["method"], picture["budget"], picture["knobs"]) == (
        "st_lite",
        50,
        {"st_lite_variant": "paper"},
    )
