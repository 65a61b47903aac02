"""`benchmarks.speed --batch-sizes`: flag parsing, throughput rows and their ratios computed from
given timings, and one real measurement on the tiny model (shapes and KV bytes, never times)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from benchmarks import speed, throughput
from benchmarks.flags import parse_batch_sizes, parse_percentages, run_script
from benchmarks.throughput import BatchRun, batch_conversations, throughput_rows
from guikv.agents.family import get_family
from guikv.errors import UserInputError
from guikv.models.inputs import qwen_inputs


def test_batch_sizes_parse_sorted_and_deduplicated():
    assert parse_batch_sizes("1,4,8") == [1, 4, 8]
    assert parse_batch_sizes(" 8, 4,4 ,1,") == [1, 4, 8]
    assert parse_batch_sizes("") == []


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "four", "1,x"])
def test_bad_batch_sizes_name_the_flag(text):
    with pytest.raises(UserInputError, match=r"^--batch-sizes: .* expected comma-separated integers >= 1"):
        parse_batch_sizes(text)


def test_percentages_keep_order_and_refuse_out_of_range():
    assert parse_percentages("10,1,10,40") == [10.0, 1.0, 40.0]
    with pytest.raises(UserInputError, match=r"^--budgets: 0 is outside \(0, 100\]"):
        parse_percentages("0")
    with pytest.raises(UserInputError, match=r"^--budgets: 'ten' is not a number"):
        parse_percentages("ten")
    with pytest.raises(UserInputError, match=r"^--budgets is empty"):
        parse_percentages(" , ")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--batch-sizes", "0"], "error: --batch-sizes: '0' is invalid"),
        (["--batch-sizes", "1,2.5"], "error: --batch-sizes: '2.5' is invalid"),
        (["--budgets", "150"], "error: --budgets: 150 is outside (0, 100]"),
        (["--no-such-flag"], "error: No such option: --no-such-flag"),
    ],
)
def test_speed_refuses_bad_flags_in_one_line_before_loading_a_model(capsys, tmp_path, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_script(speed.main, [*args, "--output", str(tmp_path / "speed.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
    assert not (tmp_path / "speed.json").exists()


def run(method: str, budget: float, batch: int, prefill: float, decode: float, generated: int) -> BatchRun:
    """A run with given timings: 31 decode forwards, 1,000 stored KV bytes, 10 bytes a position."""
    return BatchRun(
        method=method,
        budget=budget,
        batch_size=batch,
        prompt_tokens=100 * batch,
        generated_tokens=generated,
        decode_forwards=31,
        prefill_seconds=prefill,
        decode_seconds=decode,
        kv_bytes_stored=1000 * batch,
        kv_bytes_per_position=10,
    )


def test_throughput_ratios_from_given_timings():
    runs = [
        run("full", 100.0, 1, prefill=2.0, decode=0.5, generated=32),
        run("gui_kv", 10.0, 1, prefill=1.5, decode=0.5, generated=32),
        run("gui_kv", 10.0, 4, prefill=6.0, decode=1.0, generated=128),
        run("snapkv", 10.0, 4, prefill=6.0, decode=2.0, generated=100),
    ]
    rows = throughput_rows(runs)
    assert [(row["method"], row["batch_size"]) for row in rows] == [
        ("full", 1),
        ("gui_kv", 1),
        ("gui_kv", 4),
        ("snapkv", 4),
    ]
    full, gui1, gui4, snap4 = rows
    assert full["samples_per_second"] == pytest.approx(0.4)
    assert full["samples_per_second_vs_full_batch1"] == pytest.approx(1.0)
    assert full["generated_tokens_per_second"] == pytest.approx(12.8)
    assert gui1["samples_per_second_vs_full_batch1"] == pytest.approx(2.5 / 2.0)
    assert gui4["seconds"] == pytest.approx(7.0)
    assert gui4["samples_per_second"] == pytest.approx(4 / 7)
    assert gui4["samples_per_second_vs_full_batch1"] == pytest.approx((4 / 7) / 0.4)
    assert gui4["samples_per_second_vs_own_batch1"] == pytest.approx((4 / 7) / 0.5)
    assert gui4["tokens_per_second_vs_full_batch1"] == pytest.approx((128 / 7) / 12.8)
    assert gui4["decode_tokens_per_second"] == pytest.approx((128 - 4) / 1.0)
    assert gui4["peak_kv_bytes"] == 4000 + 4 * 31 * 10
    assert gui4["peak_kv_bytes_per_sample"] == pytest.approx((4000 + 4 * 31 * 10) / 4)
    assert snap4["samples_per_second_vs_own_batch1"] is None
    assert snap4["generated_tokens_per_second"] == pytest.approx(100 / 8)


def test_throughput_rows_need_the_full_cache_at_batch_1():
    with pytest.raises(ValueError, match="full cache at batch 1"):
        throughput_rows([run("full", 100.0, 4, 1.0, 1.0, 4), run("gui_kv", 10.0, 1, 1.0, 1.0, 1)])


def test_a_row_written_to_json_gives_back_its_run():
    original = run("gui_kv", 10.0, 4, prefill=6.0, decode=1.0, generated=128)
    rows = throughput_rows([run("full", 100.0, 1, 2.0, 0.5, 32), original])
    assert BatchRun.from_row(json.loads(json.dumps(rows[1]))) == original


def test_batch_rows_differ_in_task_and_screenshot_order():
    family = get_family("ui-tars")
    screens = [Image.new("RGB", (56, 56), color) for color in ("red", "green", "blue")]
    rows = batch_conversations(family, screens, speed.HISTORY, 4)
    first = family.computer_use_messages(throughput.TASKS[0], screens, [speed.HISTORY] * 2)
    assert len(rows) == 4 and rows[0] == first
    assert len({json.dumps(row[-1]["content"][-1]) for row in rows}) == 4
    second = [
        part["image"]
        for turn in rows[1]
        if isinstance(turn["content"], list)
        for part in turn["content"]
        if part.get("type") == "image"
    ]
    assert second == [screens[1], screens[2], screens[0]]


def test_measured_runs_on_the_tiny_model(tiny_sdpa):
    model, processor = tiny_sdpa
    family = get_family("ui-tars")
    screens = [Image.new("RGB", (224, 224), color) for color in ("white", "gray")]
    conversations = batch_conversations(family, screens, speed.HISTORY, 2)
    calls, skipped = [], []
    runs = throughput.measure(
        model,
        processor,
        conversations,
        [("full", 100.0), ("snapkv", 10.0), ("no_such_method", 10.0)],
        [1, 2],
        new_tokens=3,
        done=[],
        warmup=False,
        on_run=lambda so_far: calls.append(len(so_far)),
        on_skip=lambda method, budget, error: skipped.append(method),
    )
    assert calls == [1, 2, 3, 4] and skipped == ["no_such_method"]
    assert [(r.method, r.batch_size) for r in runs] == [
        ("full", 1),
        ("full", 2),
        ("snapkv", 1),
        ("snapkv", 2),
    ]
    lengths = [qwen_inputs(processor, rows)["input_ids"].shape[1] for rows in conversations]
    text = model.config.text_config
    per_position = 2 * text.num_hidden_layers * text.num_key_value_heads * 16 * 4
    full1, full2, snap1, snap2 = runs
    assert full1.prompt_tokens == lengths[0] and full2.prompt_tokens == sum(lengths)
    assert all(r.kv_bytes_per_position == per_position and r.decode_forwards == 2 for r in runs)
    assert full1.kv_bytes_stored == lengths[0] * per_position
    assert full2.kv_bytes_stored == 2 * max(lengths) * per_position
    assert snap1.kv_bytes_stored == int(lengths[0] * 0.1) * per_position
    assert snap2.kv_bytes_stored == 2 * max(int(length * 0.1) for length in lengths) * per_position
    assert full2.peak_kv_bytes == full2.kv_bytes_stored + 2 * 2 * per_position
    rows = throughput_rows(runs)
    assert rows[0]["samples_per_second_vs_full_batch1"] == pytest.approx(1.0)
    again = throughput.measure(
        model,
        processor,
        conversations,
        [("full", 100.0), ("snapkv", 10.0)],
        [1, 2],
        new_tokens=3,
        done=runs,
        warmup=True,
        on_run=lambda so_far: calls.append(len(so_far)),
        on_skip=lambda method, budget, error: skipped.append(method),
    )
    assert again == runs and calls == [1, 2, 3, 4]
