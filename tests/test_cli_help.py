"""Every command's `--help` speaks plainly: click's metavars (TEXT, INTEGER, PATH, KNOB=VALUE), no
Python type labels (`<list[str]>`, `<bool>`), and one usage style (`[OPTIONS] [SCREENSHOT]...`,
`[OPTIONS] MODEL`); the `python -m benchmarks.*` scripts' too."""

from __future__ import annotations

import importlib
import re
import sys

import pytest

from benchmarks.flags import run_script
from guikv_cli.app import main

COMMANDS = ("infer", "eval", "analyze-attention", "compare", "serve")


def help_text(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *command: str) -> str:
    """What `guikv COMMAND --help` prints, at 200 columns."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", ["guikv", *command, "--help"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_has_plain_metavars(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(monkeypatch, capsys, *([command] if command else []))
    assert not re.search(r"<(str|int|float|bool|path|list)", text), text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage
    assert not re.search(r"\[[a-z]", usage.split("Usage:")[1]), usage  # arguments upper-case


def test_usage_lines_and_metavars_read_the_same_everywhere(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    usage = {
        command: next(
            line for line in help_text(monkeypatch, capsys, command).splitlines() if "Usage:" in line
        )
        for command in COMMANDS
    }
    assert usage["infer"].split()[-2:] == ["[OPTIONS]", "[SCREENSHOT]..."]
    assert usage["analyze-attention"].split()[-2:] == ["[OPTIONS]", "[SCREENSHOT]..."]
    assert usage["eval"].split()[-2:] == ["[OPTIONS]", "[BENCHMARK]..."]
    assert usage["serve"].split()[-2:] == ["[OPTIONS]", "MODEL"]
    assert usage["compare"].split()[-2][0] != "{"
    infer = help_text(monkeypatch, capsys, "infer")
    assert re.search(r"--set\s+KNOB=VALUE", infer)
    assert re.search(r"--budget\s+FLOAT", infer) and re.search(r"--max-new-tokens\s+INTEGER", infer)
    assert re.search(r"--json\s+Print", infer)  # a flag shows no value
    evaluate = help_text(monkeypatch, capsys, "eval")
    assert re.search(r"--budgets\s+LIST", evaluate) and re.search(r"--output\s+PATH", evaluate)
    assert "SCREENSHOT..." in help_text(monkeypatch, capsys, "analyze-attention")


@pytest.mark.parametrize("script", ["speed", "capacity", "carry_speed"])
def test_benchmark_scripts_help_is_plain(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"benchmarks.{script}")
    run_script(module.main, ["--help"])
    text = capsys.readouterr().out
    assert not re.search(r"<(str|int|float|bool|path|list)", text), text
    assert re.search(r"--help\s+Show", text)  # a flag shows no value
    assert "INTEGER" in text or "FLOAT" in text
