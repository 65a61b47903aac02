"""One agent step under every (method, budget) pair, each measured against the full cache: the
orchestration behind `guikv compare SCREENSHOT... --task`, for scripts as much as for the CLI.

`guikv.analysis.iter_compare_methods` runs the pairs and measures fidelity; this module chooses the
pairs, compares parsed actions, turns each result into the JSON row `compare.json` holds as it
finishes, and reads the rows of an unfinished `compare.json` back so that a re-run does only the
pairs still missing. Definitions of every field: docs/analysis.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.rundir import read_unfinished
from guikv.agents import AgentFamily, Message
from guikv.analysis import Fidelity, iter_compare_methods
from guikv.config import CompressionConfig

MIB = 2**20
STEP_FORMAT = "guikv-compare-step/1"


def method_pairs(methods: Sequence[str], budgets: Sequence[float]) -> list[tuple[str, float]]:
    """Every (method, budget) to run; the full cache once, at 100%."""
    pairs: list[tuple[str, float]] = []
    for method in methods:
        pairs.extend([("full", 100.0)] if method == "full" else [(method, budget) for budget in budgets])
    return pairs


def action_key_for(family: AgentFamily, screenshot: Path) -> Callable[[str], tuple[Any, ...]]:
    """A function turning an output into its first parsed action's comparable fields."""
    from PIL import Image

    with Image.open(screenshot) as image:
        size = image.size

    def key(text: str) -> tuple[Any, ...]:
        return family.parse(text, size)[0].comparable()

    return key


def fidelity_row(fidelity: Fidelity) -> dict[str, Any]:
    """One (method, budget) result as JSON: fidelity to the full cache and costs."""
    row: dict[str, Any] = {
        "method": fidelity.method,
        "budget": fidelity.budget,
        "runnable": fidelity.runnable,
        "reason": fidelity.reason,
    }
    result = fidelity.result
    if result is None:
        return row
    costs = result.to_dict()
    return {
        **row,
        "text": result.text,
        "prompt_tokens": result.prompt_tokens,
        "generated_tokens": result.generated_tokens,
        "token_agreement": fidelity.agreement,
        "exact_match": fidelity.exact_match,
        "kl_first_decode_step": fidelity.kl,
        "oracle_recall": fidelity.recall,
        "oracle_recall_per_layer": fidelity.recall_per_layer,
        "oracle_recall_reason": fidelity.recall_reason,
        "action": fidelity.action,
        "action_match": fidelity.action_match,
        "kept_per_layer": result.kept_per_layer,
        "kv_mib": result.kv_bytes_kept / MIB,
        "kv_saved_percent": costs["kv_saved_percent"],
        "decode_flops": costs["decode_flops_kept"],
        "decode_flops_saved_percent": costs["decode_flops_saved_percent"],
        "decode_attention_flops": costs["decode_attention_flops_kept"],
        "prefill_ms": 1000 * result.prefill_seconds,
        "decode_ms_per_token": result.decode_ms_per_token,
    }


def reference_row(reference: Fidelity) -> dict[str, Any]:
    """The full-cache run as a row, fully faithful to itself by definition."""
    row = fidelity_row(reference)
    row.update(token_agreement=1.0, exact_match=True, kl_first_decode_step=0.0, action_match=None)
    return row


def iter_rows(
    model: Any,
    processor: Any,
    family: AgentFamily,
    messages: Sequence[Message],
    current: Path,
    pairs: Sequence[tuple[str, float]],
    *,
    base: CompressionConfig,
    max_new_tokens: int,
    progress: Callable[[str, float], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Run the step with the full cache and under every pair (with oracle recall, actions parsed in
    the `current` screenshot's frame), yielding the full cache's row first and then each pair's as
    it finishes (`full` pairs are the reference itself and yield nothing)."""
    fidelities = iter_compare_methods(
        model,
        processor,
        messages,
        pairs,
        max_new_tokens=max_new_tokens,
        action_key=action_key_for(family, current),
        base=base,
        progress=progress,
        recall=True,
    )
    yield reference_row(next(fidelities))
    for fidelity in fidelities:
        if fidelity.method != "full":
            yield fidelity_row(fidelity)


@dataclass(frozen=True)
class StepComparison:
    """What one comparison is of: the model (as named, with its family, dtype and attention), the
    task, the screenshots, the token cap and the compression settings besides method and budget.
    Two runs with equal comparisons give the same rows, so an unfinished one can be resumed."""

    model: str
    family: str
    dtype: str
    attn: str
    task: str
    screenshots: tuple[str, ...]
    max_new_tokens: int
    config: dict[str, Any]

    def header(self) -> dict[str, Any]:
        """The comparison as the leading fields of `compare.json`."""
        return {
            "format": STEP_FORMAT,
            "model": self.model,
            "family": self.family,
            "dtype": self.dtype,
            "attn": self.attn,
            "task": self.task,
            "screenshots": list(self.screenshots),
            "max_new_tokens": self.max_new_tokens,
            "config": self.config,
        }


def comparison_document(
    comparison: StepComparison,
    reference: dict[str, Any],
    results: Sequence[dict[str, Any]],
    *,
    complete: bool,
    figures: Sequence[str] = (),
) -> dict[str, Any]:
    """`compare.json` of the screenshot form: the comparison, the full cache's row, one row per
    pair finished so far, whether every pair is in, and the figures' file names."""
    return {
        **comparison.header(),
        "prompt_tokens": reference["prompt_tokens"],
        "complete": complete,
        "reference": reference,
        "results": list(results),
        "figures": list(figures),
    }


def resumable_rows(path: Path, comparison: StepComparison) -> dict[tuple[str, float], dict[str, Any]]:
    """The rows of an unfinished `compare.json` at `path` of the same comparison, by (method,
    budget); nothing when there is none, it is complete (a re-run then measures afresh), it is
    unreadable, or it compared something else."""
    document = read_unfinished(path, comparison.header())
    results = document.get("results") if document is not None else None
    if not isinstance(results, list):
        return {}
    return {
        (row["method"], float(row["budget"])): row
        for row in results
        if isinstance(row, dict) and isinstance(row.get("method"), str) and "budget" in row
    }
