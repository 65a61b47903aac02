"""The vLLM venv's torchvision fix-up (scripts/fix_vllm_cpu_torchvision.py) on torchvision 0.28's
own `_meta_registrations.py` layout: the two unguarded `register_fake` decorators get the guard
the rest of the file uses, a second run changes nothing, and an unknown layout is refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fix_vllm_cpu_torchvision.py"
META_REGISTRATIONS = """import functools

import torch
import torch._custom_ops
import torch.library

# Ensure that torch.ops.torchvision is visible
import torchvision.extension  # noqa: F401


@torch.library.register_fake("torchvision::nms")
def meta_nms(dets, scores, iou_threshold):
    return dets.new_empty(1, dtype=torch.long)


@torch.library.register_fake("torchvision::qnms")
def meta_qnms(dets, scores, iou_threshold):
    return dets.new_empty(1, dtype=torch.long)
"""


def fixer():
    spec = importlib.util.spec_from_file_location("fix_vllm_cpu_torchvision", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_patch_guards_both_register_fake_calls_once(tmp_path: Path) -> None:
    target = tmp_path / "_meta_registrations.py"
    target.write_text(META_REGISTRATIONS)
    module = fixer()
    assert module.patch(target) is True
    text = target.read_text()
    assert "@torch.library.register_fake(" not in text
    assert text.count('@_register_fake_if_ops("torchvision::') == 2
    assert "if torchvision.extension._has_ops():" in text
    compile(text, str(target), "exec")
    assert module.patch(target) is False
    assert target.read_text() == text


def test_patch_refuses_an_unknown_layout(tmp_path: Path) -> None:
    target = tmp_path / "_meta_registrations.py"
    target.write_text("import torch\n")
    with pytest.raises(SystemExit, match="layout not recognised"):
        fixer().patch(target)
