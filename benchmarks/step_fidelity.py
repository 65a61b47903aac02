"""One agent step under every (method, budget) pair, each measured against the full cache: the
orchestration behind `guikv compare SCREENSHOT... --task`, for scripts as much as for the CLI.

`guikv.analysis.compare_methods` runs the pairs and measures fidelity; this module chooses the
pairs, compares parsed actions and turns each result into the JSON row `compare.json` holds.
Definitions of every field: docs/analysis.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from guikv.agents import AgentFamily, Message
from guikv.analysis import Fidelity, compare_methods
from guikv.config import CompressionConfig

MIB = 2**20


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
        action = family.parse(text, size)[0]
        fields = (action.point, action.end_point, action.text, action.keys, action.direction, action.amount)
        return (action.type.value, *fields)

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


def compare_pairs(
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
) -> list[dict[str, Any]]:
    """Run the step with the full cache and under every pair (with oracle recall, actions parsed
    from the `current` screenshot's frame); the rows, the full cache's first."""
    reference, runs = compare_methods(
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
    return [reference_row(reference), *(fidelity_row(run) for run in runs if run.method != "full")]
