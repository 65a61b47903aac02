"""Showing that a command is working: a status line on a terminal, progress lines everywhere.

On a terminal, `status` is rich's spinner with a line of text (gone when done) and eval's progress
bars are rich's. When stderr is not a terminal (nohup, CI, `| tee`) a live display cannot redraw, so
`PlainProgress` prints plain progress lines instead, at a steady rate (the first and last item
always, otherwise at most one line every `interval` seconds), as lm-evaluation-harness does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from guikv.step import StepProgress

PLAIN_INTERVAL_SECONDS = 30.0
"""How often a long loop prints a progress line when stderr is not a terminal."""


@contextmanager
def status(console: Console, text: str) -> Iterator[Callable[[str], None]]:
    """For the duration of the block, a spinner showing `text` on a terminal (nothing elsewhere);
    yields the function that replaces the text."""
    if not console.is_terminal:
        yield lambda _text: None
        return
    with console.status(text) as spinner:
        yield lambda new: spinner.update(new)


def _clock_text(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    return str(timedelta(seconds=round(seconds)))


class PlainProgress:
    """Progress of one counted loop as plain lines: `LABEL: DONE/TOTAL (P%), T elapsed, ~R left`.

    `start` prints the first line (0 done); `advance` prints when the loop ends or when `interval`
    seconds have passed since the last line. `clock` is injectable for tests.
    """

    def __init__(
        self,
        write: Callable[[str], None],
        interval: float = PLAIN_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.write = write
        self.interval = interval
        self.clock = clock
        self.label = ""
        self.total = 0
        self.done = 0
        self.started = 0.0
        self.last_line = 0.0

    def start(self, label: str, total: int) -> None:
        """A new loop of `total` items; prints its first line."""
        self.label, self.total, self.done = label, total, 0
        self.started = self.last_line = self.clock()
        self._print(self.started)

    def advance(self, count: int = 1) -> None:
        """`count` more items done; prints a line if the loop ended or `interval` has passed."""
        self.done += count
        now = self.clock()
        if self.done >= self.total or now - self.last_line >= self.interval:
            self.last_line = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = now - self.started
        share = self.done / self.total if self.total else 1.0
        line = f"{self.label}: {self.done}/{self.total} ({100 * share:.0f}%), {_clock_text(elapsed)} elapsed"
        if 0 < self.done < self.total:
            line += f", ~{_clock_text(elapsed / self.done * (self.total - self.done))} left"
        self.write(line)


def step_status(progress: StepProgress) -> str:
    """A status line for one agent step's phase (`guikv.step.run_step`'s `progress`)."""
    if progress.phase == "encoding":
        return "encoding the screenshots and the task"
    if progress.phase == "prefilling":
        return "prefilling the prompt and compressing the KV cache"
    return f"decoding: {progress.generated} of at most {progress.max_new_tokens} tokens"
