"""A carried trajectory against re-prefilling every step, for every (method, budget) pair: the
orchestration behind `guikv compare SCREENSHOT... --task T --carry`, for scripts as much as for the
CLI.

`guikv.carry_fidelity.iter_carried_fidelity` plays one pair's trajectory both ways and measures each
step; this module runs the pairs, turns each step into the JSON row `compare.json` holds the moment
it is measured, and reads an unfinished `compare.json` back so that a re-run keeps the pairs whose
trajectories finished. A trajectory cannot be resumed half-way (its carried cache is gone), so an
unfinished one runs again from its first step. Definitions of every field: docs/analysis.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.rundir import read_unfinished
from benchmarks.step_fidelity import MIB, StepComparison
from guikv.carry_fidelity import Agreement, CarriedStepFidelity, iter_carried_fidelity
from guikv.config import CompressionConfig
from guikv.step import StepResult
from guikv.trajectory import CarriedStepResult

CARRY_FORMAT = "guikv-compare-carry/1"

Pair = tuple[str, float | None]
"""A method and its budget in percent; None when `max_tokens` sets every step's capacity."""


def carry_pairs(methods: Sequence[str], budgets: Sequence[float], max_tokens: int | None) -> list[Pair]:
    """Every (method, budget) trajectory to play: the full cache once, at 100%; with `max_tokens`
    one per method (the token count is the capacity, whatever the budget)."""
    if max_tokens is not None:
        return [(method, 100.0 if method == "full" else None) for method in methods]
    pairs: list[Pair] = []
    for method in methods:
        pairs.extend([("full", 100.0)] if method == "full" else [(method, budget) for budget in budgets])
    return pairs


@dataclass(frozen=True)
class CarryComparison:
    """What one carried comparison is of: the one-step comparison's fields (model, family, dtype,
    attention, task, screenshots in step order, token cap, settings), the screenshot window and
    the carried cache's fixed token count (None: each budget's share). Equal comparisons give
    the same rows, so an unfinished one can be resumed."""

    step: StepComparison
    screenshot_window: int
    max_tokens: int | None

    def header(self) -> dict[str, Any]:
        """The comparison as the leading fields of `compare.json`."""
        return {
            **self.step.header(),
            "format": CARRY_FORMAT,
            "screenshot_window": self.screenshot_window,
            "max_tokens": self.max_tokens,
        }


def _agreement_fields(agreement: Agreement, suffix: str = "") -> dict[str, Any]:
    """An `Agreement` as row fields, each name ending in `suffix`."""
    return {
        f"token_agreement{suffix}": agreement.tokens,
        f"exact_match{suffix}": agreement.exact_match,
        f"kl_first_decode_step{suffix}": agreement.kl,
        f"action_match{suffix}": agreement.action_match,
    }


def path_row(
    result: StepResult, vs_full: Agreement, recall: list[float] | None, action: str
) -> dict[str, Any]:
    """One path's step (carried or re-prefilled): its output, what it fed and kept, what that cost,
    its oracle recall and its fidelity to the full cache."""
    kept = result.kept_per_layer
    carried = result if isinstance(result, CarriedStepResult) else None
    row: dict[str, Any] = {
        "text": result.text,
        "generated_tokens": result.generated_tokens,
        "action": action,
        "prefilled_tokens": carried.prefilled_tokens if carried is not None else result.prompt_tokens,
        "prompt_tokens": result.prompt_tokens,
        "kept_tokens": statistics.fmean(kept),
        "kept_per_layer": kept,
        "kv_bytes_kept": result.kv_bytes_kept,
        "kv_bytes_stored": result.kv_bytes_stored,
        "kv_mib": result.kv_bytes_kept / MIB,
        "prefill_ms": 1000 * result.prefill_seconds,
        "scoring_ms": 1000 * result.scoring_seconds,
        "decode_ms": 1000 * result.decode_seconds,
        "decode_ms_per_token": result.decode_ms_per_token,
        "oracle_recall": statistics.fmean(recall) if recall else None,
        "oracle_recall_per_layer": recall,
        **_agreement_fields(vs_full, "_vs_full"),
    }
    if carried is not None:
        row.update(
            carried_tokens=carried.carried_tokens,
            evicted_screenshots=carried.evicted_screenshots,
            kept_by_origin=carried.kept_by_origin,
        )
    return row


def step_row(pair: Pair, screenshot: str, fidelity: CarriedStepFidelity) -> dict[str, Any]:
    """One step of one pair's trajectory as JSON: carried against re-prefilled, each path's figures,
    the full cache's output. A step that could not be run has only the first six keys."""
    method, budget = pair
    row: dict[str, Any] = {
        "method": method,
        "budget": budget,
        "step": fidelity.step,
        "screenshot": screenshot,
        "runnable": fidelity.runnable,
        "reason": fidelity.reason,
    }
    carried, reprefilled, full = fidelity.carried, fidelity.reprefilled, fidelity.full
    if not fidelity.runnable:
        return row
    assert carried is not None and reprefilled is not None and full is not None
    assert fidelity.agreement is not None and fidelity.actions is not None
    assert fidelity.carried_vs_full is not None and fidelity.reprefilled_vs_full is not None
    actions = fidelity.actions
    return {
        **row,
        "reprefill_budget": fidelity.reprefill_budget,
        "same_prompt": fidelity.same_prompt,
        "prompt_difference": fidelity.prompt_difference,
        **_agreement_fields(fidelity.agreement),
        "oracle_recall_reason": fidelity.recall_reason,
        "carried": path_row(carried, fidelity.carried_vs_full, fidelity.recall_carried, actions["carried"]),
        "reprefilled": path_row(
            reprefilled, fidelity.reprefilled_vs_full, fidelity.recall_reprefilled, actions["reprefilled"]
        ),
        "full": {
            "text": full.text,
            "generated_tokens": full.generated_tokens,
            "prompt_tokens": full.prompt_tokens,
            "action": actions["full"],
        },
    }


def iter_pair_rows(
    model: Any,
    processor: Any,
    family: Any,
    task: str,
    screenshots: Sequence[Path],
    pair: Pair,
    *,
    base: CompressionConfig,
    max_tokens: int | None,
    screenshot_window: int,
    max_new_tokens: int,
    progress: Callable[[int, str], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Play one pair's trajectory over `screenshots` carried and re-prefilled, yielding each step's
    row as soon as it is measured (a step that cannot be run is the last)."""
    method, budget = pair
    config = CompressionConfig(**{**base.to_dict(), "method": method, "budget": budget or base.budget})
    steps = iter_carried_fidelity(
        model,
        processor,
        config,
        task,
        [str(path) for path in screenshots],
        family=family,
        max_tokens=max_tokens,
        screenshot_window=screenshot_window,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    for fidelity in steps:
        yield step_row(pair, str(screenshots[fidelity.step]), fidelity)


def pair_finished(rows: Sequence[dict[str, Any]], steps: int) -> bool:
    """Whether a pair's trajectory is over: every step measured, or stopped at one that could not be."""
    return len(rows) == steps or bool(rows and not rows[-1]["runnable"])


def carry_document(
    comparison: CarryComparison,
    runs: Sequence[tuple[Pair, Sequence[dict[str, Any]]]],
    *,
    complete: bool,
    figures: Sequence[str] = (),
) -> dict[str, Any]:
    """`compare.json` of the carried form: the comparison, then per pair whether its trajectory is
    over, its summary (`pair_summary`) and its steps so far, whether every pair's is over, and the
    names of the figures drawn from it (once complete)."""
    steps = len(comparison.step.screenshots)
    return {
        **comparison.header(),
        "complete": complete,
        "runs": [
            {
                "method": method,
                "budget": budget,
                "finished": pair_finished(rows, steps),
                "summary": pair_summary(rows),
                "steps": list(rows),
            }
            for (method, budget), rows in runs
        ],
        "figures": list(figures),
    }


def resumable_runs(path: Path, comparison: CarryComparison) -> dict[Pair, list[dict[str, Any]]]:
    """The finished pairs of an unfinished `compare.json` at `path` of the same comparison, with their
    rows; nothing when there is none, it is complete (a re-run then measures afresh), unreadable, or
    of another comparison. A pair whose trajectory did not finish is left out: it runs again."""
    document = read_unfinished(path, comparison.header())
    runs = document.get("runs") if document is not None else None
    if not isinstance(runs, list):
        return {}
    return {
        (run["method"], run["budget"]): run["steps"]
        for run in runs
        if isinstance(run, dict) and run.get("finished") is True and isinstance(run.get("steps"), list)
    }


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    present = [float(value) for value in values if value is not None]
    return statistics.fmean(present) if present else None


def pair_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One pair's steps in a few numbers, over the steps that ran: the means of the carried-vs-
    re-prefilled token agreement and KL, the shares of steps with equal texts and equal actions,
    the mean oracle recall of each path over the same steps (those where the carried one is
    defined, `oracle_recall_steps` of them) and the mean tokens each path prefilled per step."""
    ran = [row for row in rows if row["runnable"]]
    recalled = [row for row in ran if row["carried"]["oracle_recall"] is not None]
    return {
        "steps": len(ran),
        "token_agreement": _mean([row["token_agreement"] for row in ran]),
        "exact_match": _mean([float(row["exact_match"]) for row in ran]),
        "kl_first_decode_step": _mean([row["kl_first_decode_step"] for row in ran]),
        "action_match": _mean([float(row["action_match"]) for row in ran]),
        "oracle_recall_steps": len(recalled),
        "oracle_recall_carried": _mean([row["carried"]["oracle_recall"] for row in recalled]),
        "oracle_recall_reprefilled": _mean([row["reprefilled"]["oracle_recall"] for row in recalled]),
        "prefilled_tokens_carried": _mean([row["carried"]["prefilled_tokens"] for row in ran]),
        "prefilled_tokens_reprefilled": _mean([row["reprefilled"]["prefilled_tokens"] for row in ran]),
    }
