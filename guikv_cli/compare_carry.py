"""`guikv compare SCREENSHOT... --task TEXT --carry`: the screenshots as one trajectory's steps,
played carried (each step prefills only its new turn on the cache cut at earlier steps) and
re-prefilled (the whole step's prompt, the carried run's own answers as history) under every
(method, budget) pair, compared step by step, rendered.

Running the pairs is `benchmarks.carry_fidelity`'s job; definitions of every column:
docs/analysis.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.flags import quiet_transformers
from guikv.config import changed_knobs
from guikv.errors import UserInputError
from guikv_cli.compare_carry_figure import carry_figure
from guikv_cli.interrupt import saved_work
from guikv_cli.knobs import config_with_knobs
from guikv_cli.progress import PlainProgress, status
from guikv_cli.report import capacity, compact_table, mib, percent, print_tables, write_html
from guikv_cli.screenshots import resolve_family

Pair = tuple[str, float | None]


def _both(row: dict[str, Any], key: str, show: Callable[[Any], str]) -> str:
    """`carried / re-prefilled` values of one key, as one cell."""
    return f"{show(row['carried'][key])} / {show(row['reprefilled'][key])}"


def _kl(value: float | None) -> str:
    """A KL divergence in nats, in scientific notation; missing as an em dash."""
    return "—" if value is None else f"{value:.2e}"


def _action(row: dict[str, Any]) -> str:
    """`same` when the two paths take the same action, else both action types."""
    if row["action_match"]:
        return "same"
    return f"{row['carried']['action']} / {row['reprefilled']['action']}"


def steps_table(runs: Sequence[tuple[Pair, Sequence[dict[str, Any]]]], max_tokens: int | None) -> Table:
    """Carried against re-prefilled, per pair and step: same prompt, token agreement, exact match,
    first-decode-step KL, the action, and each path's oracle recall."""
    headers = (
        "method",
        "budget",
        "step",
        "same\nprompt",
        "token\nagreement",
        "exact\nmatch",
        "KL, 1st\ndecode step",
        "action",
        "oracle recall\ncarried /\nre-pf.",
    )
    table = compact_table("Carried vs re-prefilled, per step", headers)
    for pair, rows in runs:
        for row in rows:
            cells = [pair[0], capacity(pair[1], max_tokens), str(row["step"])]
            if not row["runnable"]:
                table.add_row(*cells, "[yellow]not runnable[/]", *["—"] * 5)
                continue
            table.add_row(
                *cells,
                "yes" if row["same_prompt"] else "no",
                percent(row["token_agreement"]),
                "yes" if row["exact_match"] else "no",
                _kl(row["kl_first_decode_step"]),
                _action(row),
                _both(row, "oracle_recall", percent),
            )
    return table


def full_cache_table(runs: Sequence[tuple[Pair, Sequence[dict[str, Any]]]], max_tokens: int | None) -> Table:
    """Each path against the full cache, per pair and step: token agreement, first-decode-step KL
    and same action, carried / re-prefilled."""
    headers = (
        "method",
        "budget",
        "step",
        "token agreement\ncarried / re-pf.",
        "KL, 1st decode step\ncarried / re-pf.",
        "same action\ncarried / re-pf.",
    )
    table = compact_table("Fidelity to the full cache (re-prefilled, full cache)", headers)
    for pair, rows in runs:
        for row in rows:
            if not row["runnable"]:
                continue
            table.add_row(
                pair[0],
                capacity(pair[1], max_tokens),
                str(row["step"]),
                _both(row, "token_agreement_vs_full", percent),
                _both(row, "kl_first_decode_step_vs_full", _kl),
                _both(row, "action_match_vs_full", lambda same: "yes" if same else "no"),
            )
    return table


def costs_table(runs: Sequence[tuple[Pair, Sequence[dict[str, Any]]]], max_tokens: int | None) -> Table:
    """What each path prefilled, kept (mean per layer) and cost per pair and step, carried /
    re-prefilled (prompt lengths and the rest are in compare.json)."""
    headers = (
        "method",
        "budget",
        "step",
        "prefilled",
        "kept",
        "KV MiB",
        "prefill ms",
        "ms per\ntoken",
    )
    table = compact_table("Costs per step, carried / re-prefilled", headers)
    for pair, rows in runs:
        for row in rows:
            if not row["runnable"]:
                continue
            table.add_row(
                pair[0],
                capacity(pair[1], max_tokens),
                str(row["step"]),
                _both(row, "prefilled_tokens", str),
                _both(row, "kept_tokens", lambda kept: f"{kept:.0f}"),
                _both(row, "kv_bytes_kept", mib),
                _both(row, "prefill_ms", lambda ms: f"{ms:.0f}"),
                _both(row, "decode_ms_per_token", lambda ms: f"{ms:.1f}"),
            )
    return table


def summary_table(runs: Sequence[tuple[Pair, Sequence[dict[str, Any]]]], max_tokens: int | None) -> Table:
    """One line per pair: its steps' means (`benchmarks.carry_fidelity.pair_summary`)."""
    from benchmarks.carry_fidelity import pair_summary

    headers = (
        "method",
        "budget",
        "steps",
        "token\nagreement",
        "exact\nmatch",
        "KL, 1st\ndecode step",
        "same\naction",
        "oracle recall\ncarried /\nre-pf.",
        "prefilled\nper step\ncarried /\nre-pf.",
    )
    table = compact_table("Per pair, mean over its steps: carried vs re-prefilled", headers)
    for pair, rows in runs:
        summary = pair_summary(rows)
        table.add_row(
            pair[0],
            capacity(pair[1], max_tokens),
            str(summary["steps"]),
            percent(summary["token_agreement"]),
            percent(summary["exact_match"]),
            _kl(summary["kl_first_decode_step"]),
            percent(summary["action_match"]),
            f"{percent(summary['oracle_recall_carried'])} / {percent(summary['oracle_recall_reprefilled'])}",
            _tokens(summary["prefilled_tokens_carried"], summary["prefilled_tokens_reprefilled"]),
        )
    return table


def _tokens(carried: float | None, reprefilled: float | None) -> str:
    """Mean tokens prefilled per step by both paths."""
    if carried is None or reprefilled is None:
        return "—"
    return f"{carried:.0f} / {reprefilled:.0f}"


def notes(runs: Sequence[tuple[Pair, Sequence[dict[str, Any]]]], max_tokens: int | None) -> list[str]:
    """The lines under the tables: what the paths are, why a step could not run, and at which steps
    an oracle recall is undefined and why (the first such step's reason)."""
    lines = [
        "carried: each step prefills only its new turn on the cache cut at earlier steps; re-prefilled: the "
        "step's whole prompt (screenshot window applied, the carried run's answers as generated) at the "
        "same capacity; full cache: that prompt uncompressed (the reference of oracle recall)"
    ]
    for pair, rows in runs:
        label = f"{pair[0]} at {capacity(pair[1], max_tokens)}"
        undefined = [row for row in rows if row["runnable"] and row["oracle_recall_reason"]]
        if undefined:
            steps = ", ".join(str(row["step"]) for row in undefined)
            lines.append(
                f"{label}: oracle recall undefined at step(s) {steps}: {undefined[0]['oracle_recall_reason']}"
            )
        lines += [
            f"{label}, step {row['step']}: not runnable ({row['reason']}); its trajectory stops there"
            for row in rows
            if not row["runnable"]
        ]
    return lines


class _StepProgress:
    """What the trajectories are doing, on stderr: a status line naming the pair, the step and the
    run on a terminal, plain progress lines (steps done of all) otherwise."""

    def __init__(
        self, console: Console, update: Callable[[str], None], pairs: int, steps: int, max_tokens: int | None
    ) -> None:
        self.update = update
        self.pairs = pairs
        self.steps = steps
        self.max_tokens = max_tokens
        self.pair_index = 0
        self.label = ""
        self.plain = None if console.is_terminal else PlainProgress(partial(console.print, markup=False))
        if self.plain is not None:
            self.plain.start("compare steps", pairs * steps)

    def start(self, pair: Pair) -> Callable[[int, str], None]:
        """A pair's trajectory starts; returns the callback its steps report their runs to."""
        self.pair_index += 1
        self.label = f"pair {self.pair_index}/{self.pairs}: {pair[0]} at {capacity(pair[1], self.max_tokens)}"
        return self.running

    def running(self, step: int, run: str) -> None:
        """A run of a step starts (carried, re-prefilled, full cache)."""
        self.update(f"{self.label}, step {step + 1}/{self.steps}: {run}")

    def finished(self, count: int = 1) -> None:
        """`count` steps are done (and saved), or skipped as their trajectory stopped."""
        if self.plain is not None:
            self.plain.advance(count)


def compare_trajectory(
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
    """The carried form: play every pair's trajectory both ways, writing compare.json after each
    step (a re-run of the same comparison keeps the pairs whose trajectories finished and plays the
    others from their first step), then print the tables."""
    quiet_transformers()
    from benchmarks.carry_fidelity import (
        CarryComparison,
        carry_document,
        carry_pairs,
        iter_pair_rows,
        resumable_runs,
    )
    from benchmarks.rundir import write_json
    from benchmarks.step_fidelity import StepComparison
    from guikv.models import load
    from guikv.models.adapters import adapter_for

    max_tokens, window = options["max_tokens"], options["screenshot_window"]
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
    adapter = adapter_for(model)
    if adapter.carrying is None:
        raise UserInputError(
            f"--carry: {options['model']} ({adapter.family}) cannot carry its cache from step to step (its "
            "forward expands its image placeholders itself); drop --carry to compare one step"
        )
    comparison = CarryComparison(
        StepComparison(
            model=options["model"],
            family=family.name,
            dtype=options["dtype"],
            attn=options["attn"],
            task=task,
            screenshots=tuple(str(path) for path in screenshots),
            max_new_tokens=options["max_new_tokens"],
            config=base.to_dict(),
        ),
        screenshot_window=window,
        max_tokens=max_tokens,
    )
    path = output / "compare.json"
    pairs = carry_pairs(methods, budgets, max_tokens)
    runs = {pair: rows for pair, rows in resumable_runs(path, comparison).items() if pair in pairs}
    pending = [pair for pair in pairs if pair not in runs]
    if runs:
        errors.print(
            f"resuming {path}: {len(runs)} of {len(pairs)} pairs' trajectories already done; playing the "
            f"other {len(pending)} from their first step",
            style="yellow",
        )

    def ordered() -> list[tuple[Pair, list[dict[str, Any]]]]:
        return [(pair, runs[pair]) for pair in pairs if pair in runs]

    def save(complete: bool = False, figures: Sequence[Path] = ()) -> None:
        document = carry_document(comparison, ordered(), complete=complete, figures=[f.name for f in figures])
        write_json(path, document)

    finished = [len(runs)]
    playing: list[Pair] = []
    saved_work.set(
        lambda: saved_steps(
            path, finished[0], len(pairs), len(screenshots), len(runs[playing[-1]]) if playing else 0
        )
    )
    output.mkdir(parents=True, exist_ok=True)
    save()
    with status(errors, "starting") as update:
        progress = _StepProgress(errors, update, len(pending), len(screenshots), max_tokens)
        for pair in pending:
            runs[pair] = []
            playing.append(pair)
            report = progress.start(pair)
            for row in iter_pair_rows(
                model,
                processor,
                family,
                task,
                screenshots,
                pair,
                base=base,
                max_tokens=max_tokens,
                screenshot_window=window,
                max_new_tokens=options["max_new_tokens"],
                progress=report,
            ):
                runs[pair].append(row)
                save()
                progress.finished()
            finished[0] += 1
            playing.clear()
            if len(runs[pair]) < len(screenshots):
                progress.finished(len(screenshots) - len(runs[pair]))
    shown = ordered()
    figure = carry_figure(shown, output, max_tokens, changed_knobs(base.to_dict()))
    figures = [] if figure is None else [figure]
    save(complete=True, figures=figures)
    tables = [
        summary_table(shown, max_tokens),
        steps_table(shown, max_tokens),
        full_cache_table(shown, max_tokens),
        costs_table(shown, max_tokens),
    ]
    print_tables(console, tables)
    lines = notes(shown, max_tokens)
    for line in lines:
        console.print(line, highlight=False)
    if html_path is not None:
        write_html(html_path, f"guikv compare --carry: {options['model']}", [*tables, *lines], figures)
    console.print(
        f"{len(screenshots)} steps x {len(pairs)} pairs, carried and re-prefilled; wrote compare.json and "
        f"{len(figures)} figure(s) to {output}",
        highlight=False,
    )


def saved_steps(path: Path, finished: int, total: int, steps: int, playing_steps: int) -> str | None:
    """What Ctrl-C leaves: how many pairs' trajectories `compare.json` holds finished, the steps of
    the one that was playing (it plays again from its first step), and that the same command
    resumes."""
    if not finished and not playing_steps:
        return None
    current = (
        f" and {playing_steps} of {steps} steps of an unfinished one (played again from its first step)"
        if playing_steps
        else ""
    )
    return (
        f"{path} holds {finished} of {total} pairs' trajectories{current}; re-run the same command to "
        f"play the other {total - finished}"
    )
