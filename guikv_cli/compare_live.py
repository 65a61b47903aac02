"""`guikv compare SCREENSHOT... --task TEXT`: one input run under every (method, budget) pair,
each output measured against the full cache (run once), rendered.

Fidelity (token agreement, exact match, KL of the first decoding step, oracle recall, same parsed
action) and costs tables, two figures, `compare.json` and an optional HTML report. Running the
pairs is `benchmarks.step_fidelity`'s job. Definitions of every column: docs/analysis.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.flags import quiet_transformers
from guikv.config import changed_knobs
from guikv_cli.interrupt import saved_work
from guikv_cli.knobs import config_with_knobs
from guikv_cli.progress import PlainProgress, status
from guikv_cli.report import MIB, compact_table, knobs_text, mib, percent, print_tables, write_html
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


def fidelity_figure(
    rows: Sequence[dict[str, Any]], budgets: Sequence[float], output: Path, knobs: Mapping[str, Any]
) -> Path:
    """Token agreement and first-decode-step KL against budget, one line per method (spread a
    little along x so equal ones stay visible), the title naming the `knobs` set."""
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
            [("full cache", 100.0, None)],
            log_x=True,
            x_ticks=budgets,
            dodge=True,
            y_from_zero=True,
        ),
        Panel(
            "KL(full || method), first decoding step",
            "KV budget (%)",
            "KL (nats)",
            divergence,
            log_x=True,
            log_y=True,
            x_ticks=budgets,
            dodge=True,
        ),
    ]
    title = f"Fidelity to the full cache{knobs_text(knobs)}"
    return plot_panels(panels, output / "fidelity_vs_budget.png", title)


def recall_figure(
    rows: Sequence[dict[str, Any]], budgets: Sequence[float], output: Path, knobs: Mapping[str, Any]
) -> Path:
    """Oracle recall against budget from 0%, one line per method (spread a little along x, each
    with its own open marker and line style, so that equal ones stay visible), with what keeping
    positions at random would recall on average (the budget itself) as a dotted diagonal; the
    title names the `knobs` set."""
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
        [("full cache", 100.0, None)],
        log_x=True,
        x_ticks=budgets,
        dodge=True,
        y_from_zero=True,
    )
    title = f"Oracle recall vs KV budget{knobs_text(knobs)}"
    return plot_panels([panel], output / "oracle_recall_vs_budget.png", title)


class _PairProgress:
    """What the pairs are doing, on stderr: a status line naming the run and its pair count (i/N)
    on a terminal, plain progress lines otherwise."""

    def __init__(self, console: Console, update: Callable[[str], None], total: int, done: int) -> None:
        self.update = update
        self.total = total
        self.done = done
        self.plain = None if console.is_terminal else PlainProgress(partial(console.print, markup=False))
        if self.plain is not None:
            self.plain.start("compare pairs", total)
            self.plain.advance(done)

    def running(self, method: str, budget: float) -> None:
        """A run starts: the full cache (twice: timed, then for the oracle attention) or a pair."""
        if method.startswith("full"):
            self.update(f"running {method} cache (the reference for every pair)")
        else:
            self.update(f"pair {self.done + 1}/{self.total}: {method} at {budget:g}%")

    def finished(self) -> None:
        """A pair is done (and saved)."""
        self.done += 1
        if self.plain is not None:
            self.plain.advance()


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
    """The screenshot form: run every pair, writing compare.json after each one (a re-run of the
    same comparison resumes an unfinished one, running only the missing pairs), then print the
    tables and write the figures."""
    quiet_transformers()
    from benchmarks.rundir import write_json
    from benchmarks.step_fidelity import (
        StepComparison,
        comparison_document,
        iter_rows,
        method_pairs,
        resumable_rows,
    )
    from guikv.models import load

    base = config_with_knobs(
        options["knobs"],
        window_size=options["window_size"],
        alpha=options["alpha"],
        temperature=options["temperature"],
    )
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    with status(errors, f"loading {options['model']}"):
        model, processor = load(options["model"], options["dtype"], options["attn"], options["device"])
    family = resolve_family(model, options["family"])
    comparison = StepComparison(
        model=options["model"],
        family=family.name,
        dtype=options["dtype"],
        attn=options["attn"],
        task=task,
        screenshots=tuple(str(path) for path in screenshots),
        max_new_tokens=options["max_new_tokens"],
        config=base.to_dict(),
    )
    path = output / "compare.json"
    compared = [pair for pair in method_pairs(methods, budgets) if pair[0] != "full"]
    done = {pair: row for pair, row in resumable_rows(path, comparison).items() if pair in compared}
    pending = [pair for pair in compared if pair not in done]
    if done:
        errors.print(
            f"resuming {path}: {len(done)} of {len(compared)} pairs already done; the full cache runs "
            f"again, then the other {len(pending)}",
            style="yellow",
        )
    saved = [len(done)]
    saved_work.set(lambda: saved_pairs(path, saved[0], len(compared)))
    output.mkdir(parents=True, exist_ok=True)
    with status(errors, "running the full cache") as update:
        progress = _PairProgress(errors, update, len(compared), len(done))
        rows = iter_rows(
            model,
            processor,
            family,
            family.one_step_messages(task, screenshots),
            screenshots[-1],
            pending,
            base=base,
            max_new_tokens=options["max_new_tokens"],
            progress=progress.running,
        )
        reference = next(rows)

        def save() -> list[dict[str, Any]]:
            """Write every row so far (the pairs in their order) and return the pairs' rows."""
            results = [done[pair] for pair in compared if pair in done]
            write_json(path, comparison_document(comparison, reference, results, complete=False))
            saved[0] = len(results)
            return results

        results = save()
        for row in rows:
            done[(row["method"], row["budget"])] = row
            results = save()
            progress.finished()
    rows_shown = [reference, *results]
    tables = [fidelity_table(rows_shown), cost_table(rows_shown)]
    print_tables(console, tables)
    notes = [
        f"full-cache output: {reference['text']!r} (action: {reference['action']})",
        "oracle recall: the share of the prompt positions the full cache's decode steps attended most "
        "(top C per layer and KV head, C = the method's kept count there) that the method kept"
        + (f"; {reference['oracle_recall_reason']}" if reference.get("oracle_recall_reason") else ""),
    ]
    notes += [
        f"{row['method']} at {row['budget']:g}%: not runnable ({row['reason']})"
        for row in results
        if not row["runnable"]
    ]
    for note in notes:
        console.print(note, highlight=False)
    knobs = changed_knobs(base.to_dict())
    figures = []
    if results:
        figures = [fidelity_figure(rows_shown, budgets, output, knobs)]
        if reference["oracle_recall"] is not None:
            figures.append(recall_figure(rows_shown, budgets, output, knobs))
    write_json(
        path,
        comparison_document(
            comparison, reference, results, complete=True, figures=[figure.name for figure in figures]
        ),
    )
    if html_path is not None:
        write_html(html_path, f"guikv compare: {options['model']}", [*tables, *notes], figures)
    console.print(
        f"{reference['prompt_tokens']} prompt tokens, {len(compared)} pairs and the full cache; "
        f"wrote compare.json and {len(figures)} figure(s) to {output}",
        highlight=False,
    )


def saved_pairs(path: Path, saved: int, total: int) -> str | None:
    """What Ctrl-C leaves: how many pairs `compare.json` holds, and that the same command resumes."""
    if not saved:
        return None
    return (
        f"{path} holds {saved} of {total} pairs; re-run the same command to run the other "
        f"{total - saved} (the full cache runs again first)"
    )
