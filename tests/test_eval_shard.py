"""Sharding: two processes under torchrun (what `accelerate launch --multi_gpu` starts) write the same
`samples.jsonl` and `summary.json` as one process; AgentNetBench is dealt out by trajectory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eval_helpers import build_all, environment, run_cli, write_png

from benchmarks import get_benchmark
from benchmarks.rundir import merge_shards, read_trace, shard_file
from benchmarks.runner import Shard, assign

BENCHMARKS = ("agentnetbench", "androidcontrol", "mind2web")


@pytest.fixture(scope="module")
def env(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The three benchmarks' data, AgentNetBench with a second trajectory (a renamed copy) so that
    both processes get one."""
    root = tmp_path_factory.mktemp("shard-data")
    datasets = build_all(fixtures_dir, root, write_png)
    source, images = datasets["agentnetbench"]
    data = root / "agentnet-two"
    data.mkdir()
    for path in source.glob("*.json"):
        trajectory = json.loads(path.read_text())
        (data / path.name).write_text(json.dumps(trajectory))
        trajectory["task_id"] = "copy_" + trajectory["task_id"]
        (data / f"copy_{path.name}").write_text(json.dumps(trajectory))
    datasets["agentnetbench"] = (data, images)
    return environment(datasets)


def test_two_processes_equal_one(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    args = ["eval", *BENCHMARKS, "--model", "oracle", "--budgets", "5,10"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    single = run_cli([*args, "--output", str(tmp_path / "one")], monkeypatch, capsys)
    assert single.code == 0, single.err
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    completed = subprocess.run(
        [*launcher, "-m", "guikv_cli", *args, "--output", str(tmp_path / "two")],
        env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert one == two  # no shard files left behind
    assert len([p for p in one if p.name == "summary.json"]) == len(BENCHMARKS)  # the oracle ignores budgets
    for path in one:
        assert (tmp_path / "one" / path).read_bytes() == (tmp_path / "two" / path).read_bytes(), path
    assert completed.stdout.count("budget %") == len(BENCHMARKS)  # one table per benchmark, main only


def test_agentnet_is_dealt_out_by_trajectory(env: dict[str, str]) -> None:
    spec = get_benchmark("agentnetbench")
    loaded = spec.load(Path(env["AGENTNETBENCH_DATA"]), Path(env["AGENTNETBENCH_IMGS"]))
    shares = [assign(loaded.samples, Shard(rank, 2)) for rank in range(2)]
    assert [{s.task_id for s in share} for share in shares] == [
        {"copy_s_df0fd37049f470c2"},
        {"s_df0fd37049f470c2"},
    ]
    assert [len(share) for share in shares] == [7, 7]


def test_other_benchmarks_deal_samples_round_robin(env: dict[str, str]) -> None:
    spec = get_benchmark("androidcontrol")
    loaded = spec.load(Path(env["ANDROIDCONTROL_TEST"]), Path(env["ANDROIDCONTROL_IMGS"]))
    shares = [[s.step for s in assign(loaded.samples, Shard(rank, 2))] for rank in range(2)]
    assert shares == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]


def test_merge_keeps_dataset_order_and_never_duplicates(tmp_path: Path) -> None:
    def write(name: str, ids: list[str], tail: str = "") -> None:
        """A trace with one record per id, then `tail` (a partial line)."""
        lines = "".join(json.dumps({"sample_id": i}) + "\n" for i in ids)
        (tmp_path / name).write_text(lines + tail)

    write("samples.jsonl", ["a"])
    write(shard_file(0), ["c", "a"])
    write(shard_file(1), ["b", "d"], tail='{"sample_id": "e"')  # killed mid-write
    assert merge_shards(tmp_path, ["a", "b", "c", "d", "e"]) == 3
    assert [r["sample_id"] for r in read_trace(tmp_path / "samples.jsonl").records] == ["a", "b", "c", "d"]
    assert not list(tmp_path.glob("samples.rank*"))
    assert merge_shards(tmp_path, ["a"]) == 0
