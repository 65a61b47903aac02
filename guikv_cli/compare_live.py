"""`guikv compare SCREENSHOT... --task TEXT`: one input run under every (method, budget) pair,
each output measured against the full cache (run once), rendered.

Fidelity (token agreement, exact match, KL of the first decoding step, oracle recall, same parsed
action) and costs tables, two figures, `compare.json` and an optional HTML report. Running the
pairs is `benchmarks.step_fidelity`'s job. Definitions of every column: docs/analysis.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.flags import compression_config, quiet_transformers
from guikv_cli.report import MIB, compact_table, mib, percent, write_html
from guikv_cli.screenshots import resolve_family


def _flops(value: float) -> str:
    """A FLOP count with a k/M/G/T suffix."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def fidelity_table(rows: Sequence[dict[str, Any]]) -> Table:
    """Fidelity of every pair to the full cache (first row): token agreement, exact match, KL of
    the first decoding step, oracle recall, and whether the first parsed action is the same."""
    headers = (
        "method",
        "budget",
        "token\nagreement",
        "exact\nmatch",
        "KL, 1st\ndecode step",
        "oracle\nrecall",
        "action",
    )
    table = compact_table("Fidelity to the full cache", headers)
    for row in rows:
        budget = f"{row['budget']:g}%"
        if not row["runnable"]:
            table.add_row(row["method"], budget, "[yellow]not runnable[/]", "—", "—", "—", "—")
            continue
        kl = row["kl_first_decode_step"]
        match = row["action_match"]
        table.add_row(
            row["method"],
            budget,
            percent(row["token_agreement"]),
            "yes" if row["exact_match"] else "no",
            "—" if kl is None else f"{kl:.2e}",
            percent(row["oracle_recall"]),
            row["action"] if match is None else ("same" if match else "differs"),
        )
    return table


def cost_table(rows: Sequence[dict[str, Any]]) -> Table:
    """What every pair kept and cost: tokens kept per layer (mean), KV memory, decode FLOPs, time."""
    headers = (
        "method",
        "budget",
        "kept",
        "KV\nMiB",
        "KV\nsaved",
        "decode\nFLOPs",
        "FLOPs\nsaved",
        "prefill\nms",
        "ms per\ntoken",
    )
    table = compact_table("Costs", headers)
    for row in rows:
        budget = f"{row['budget']:g}%"
        if not row["runnable"]:
            table.add_row(row["method"], budget, *["—"] * 7)
            continue
        kept = row["kept_per_layer"]
        table.add_row(
            row["method"],
            budget,
            f"{sum(kept) / len(kept):.0f}",
            mib(row["kv_mib"] * MIB),
            f"{row['kv_saved_percent']:.1f}%",
            _flops(row["decode_flops"]),
            f"{row['decode_flops_saved_percent']:.1f}%",
            f"{row['prefill_ms']:.0f}",
            f"{row['decode_ms_per_token']:.1f}",
        )
    return table


def fidelity_figure(rows: Sequence[dict[str, Any]], budgets: Sequence[float], output: Path) -> Path:
    """Token agreement and first-decode-step KL against budget, one line per method."""
    from guikv.viz.curves import Panel, Series, plot_panels

    methods = list(dict.fromkeys(row["method"] for row in rows if row["method"] != "full"))
    agreement, divergence = [], []
    for method in methods:
        mine = [row for row in rows if row["method"] == method and row["runnable"]]
        agreement.append(Series(method, [(r["budget"], 100 * r["token_agreement"]) for r in mine], method))
        divergence.append(Series(method, [(r["budget"], r["kl_first_decode_step"]) for r in mine], method))
    panels = [
        Panel(
            "Generated tokens equal to the full cache's",
            "KV budget (%)",
            "token agreement (%)",
            agreement,
            [("full cache", 100.0)],
            log_x=True,
            x_ticks=budgets,
        ),
        Panel(
            "KL(full || method), first decoding step",
            "KV budget (%)",
            "KL (nats)",
            divergence,
            log_x=True,
            log_y=True,
            x_ticks=budgets,
        ),
    ]
    return plot_panels(panels, output / "fidelity_vs_budget.png", "Fidelity to the full cache")


def recall_figure(rows: Sequence[dict[str, Any]], budgets: Sequence[float], output: Path) -> Path:
    """Oracle recall against budget, one line per method, with what keeping positions at random
    would recall on average (the budget itself) as a dotted diagonal."""
    from guikv.viz.curves import Panel, Series, plot_panels

    methods = list(dict.fromkeys(row["method"] for row in rows if row["method"] != "full"))
    series = [
        Series(
            method,
            [
                (r["budget"], 100 * r["oracle_recall"])
                for r in rows
                if r["method"] == method and r["runnable"]
            ],
            method,
        )
        for method in methods
    ]
    chance = Series("chance (keep at random)", [(budget, budget) for budget in budgets], guide=True)
    panel = Panel(
        "Full cache's top-C decode positions kept",
        "KV budget (%)",
        "oracle recall (%)",
        [*series, chance],
        [("full cache", 100.0)],
        log_x=True,
        x_ticks=budgets,
    )
    return plot_panels([panel], output / "oracle_recall_vs_budget.png", "Oracle recall vs KV budget")


def compare_step(
    screenshots: Sequence[Path],
    task: str,
    methods: Sequence[str],
    budgets: Sequence[float],
    *,
    options: dict[str, Any],
    output: Path,
    html_path: Path | None,
    console: Console,
) -> None:
    """The screenshot form: run every pair, print the table, write compare.json and the figure."""
    quiet_transformers()
    from benchmarks.step_fidelity import compare_pairs, method_pairs
    from guikv.models import load

    base = compression_config(
        window_size=options["window_size"], alpha=options["alpha"], temperature=options["temperature"]
    )
    with console.status(f"loading {options['model']}"):
        model, processor = load(options["model"], options["dtype"], options["attn"], options["device"])
    family = resolve_family(model, options["family"])
    messages = family.one_step_messages(task, screenshots)
    pairs = method_pairs(methods, budgets)
    with console.status("running the full cache") as status:
        rows = compare_pairs(
            model,
            processor,
            family,
            messages,
            screenshots[-1],
            pairs,
            base=base,
            max_new_tokens=options["max_new_tokens"],
            progress=lambda method, budget: status.update(f"running {method} at {budget:g}%"),
        )
    reference_row = rows[0]
    tables = [fidelity_table(rows), cost_table(rows)]
    for table in tables:
        console.print(table)
    notes = [
        f"full-cache output: {reference_row['text']!r} (action: {reference_row['action']})",
        "oracle recall: the share of the prompt positions the full cache's decode steps attended most "
        "(top C per layer and KV head, C = the method's kept count there) that the method kept",
    ]
    notes += [
        f"{row['method']} at {row['budget']:g}%: not runnable ({row['reason']})"
        for row in rows
        if not row["runnable"]
    ]
    for note in notes:
        console.print(note, highlight=False)
    output.mkdir(parents=True, exist_ok=True)
    compared = any(r["method"] != "full" for r in rows)
    figures = (
        [fidelity_figure(rows, budgets, output), recall_figure(rows, budgets, output)] if compared else []
    )
    document = {
        "format": "guikv-compare-step/1",
        "model": options["model"],
        "family": family.name,
        "task": task,
        "screenshots": [str(path) for path in screenshots],
        "prompt_tokens": reference_row["prompt_tokens"],
        "max_new_tokens": options["max_new_tokens"],
        "config": base.to_dict(),
        "reference": reference_row,
        "results": rows[1:],
        "figures": [path.name for path in figures],
    }
    (output / "compare.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if html_path is not None:
        write_html(html_path, f"guikv compare: {options['model']}", [*tables, *notes], figures)
    console.print(
        f"{reference_row['prompt_tokens']} prompt tokens, {len(pairs)} pairs; "
        f"wrote compare.json and {len(figures)} figure(s) to {output}",
        highlight=False,
    )
