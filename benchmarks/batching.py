"""Running many samples side by side, one batched model call for the next call of each.

A sample is played by a generator that yields the model calls it needs, one at a time (a Mind2Web
sample scrolls: its next call depends on its last answer), and a sequence of samples that must run
in order (an AgentNetBench trajectory: each step's prompt holds the model's own earlier outputs) is
one such generator, a *lane*. `drive` keeps up to `Batcher.size` lanes going: each round it takes
the pending call of each, answers them in one batch and sends each lane its answer, so a lane
advances one call per round and independent lanes share the forward.

`Batcher.answer` runs a batch and keeps trouble in a batch from becoming a failed sample: out of
memory halves the batch size for the rest of the run (said once through `note`) and retries the
calls in batches of that size; any other error splits the batch in two and retries each half, so
only the call that raises alone is answered with its exception (what it gives at batch size 1).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Generic, TypeVar

C = TypeVar("C")
A = TypeVar("A")

Lane = Generator[C, A | Exception, None]
"""A lane: yields its model calls one at a time and is sent each call's answer (or the exception
that call raised alone); it ends when its samples are done."""

CPU_OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "could not allocate memory")
"""What PyTorch's CPU allocator says when an allocation fails (a plain RuntimeError)."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure: `torch.OutOfMemoryError` (CUDA and other
    accelerators), or the RuntimeError of the CPU allocator (or an older CUDA build) saying it could
    not allocate memory. (torch is imported only here, on an error: the oracle runs without it.)"""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or any(phrase in message for phrase in CPU_OUT_OF_MEMORY)
    )


def detached(error: Exception) -> Exception:
    """`error` without its traceback and chained exceptions: those hold the frames of the failed
    forward, and with them its tensors, which a retry after running out of memory needs freed."""
    error.__context__ = error.__cause__ = None
    return error.with_traceback(None)


class Batcher(Generic[C, A]):
    """Answers calls in batches of at most `size` through `reply` (one answer per call, in order,
    or an exception for the whole batch), shrinking `size` when a batch runs out of memory."""

    def __init__(self, reply: Callable[[list[C]], list[A]], size: int, note: Callable[[str], None]) -> None:
        if size < 1:
            raise ValueError(f"batch size {size}: expected a positive integer")
        self.reply = reply
        self.size = size
        self.note = note
        self.shrunk = False

    def answer(self, calls: Sequence[C]) -> list[A | Exception]:
        """One answer per call, in order: its reply, or the exception it raised in a batch of its own.

        A batch of several that runs out of memory lowers `size` to half its length (said once per
        batcher) and is retried in batches of that size; one that raises anything else is split in
        two halves, each retried."""
        batch = list(calls)
        if len(batch) > self.size:
            return self._in_chunks(batch, self.size)
        try:
            return list(self.reply(batch))
        except Exception as error:
            failure = detached(error)
        if len(batch) == 1:
            return [failure]
        if is_out_of_memory(failure):
            self._shrink(len(batch), failure)
            return self._in_chunks(batch, self.size)
        return self._in_chunks(batch, (len(batch) + 1) // 2)

    def _in_chunks(self, batch: list[C], size: int) -> list[A | Exception]:
        """Answer `batch` in consecutive chunks of `size` calls."""
        answers: list[A | Exception] = []
        for start in range(0, len(batch), size):
            answers.extend(self.answer(batch[start : start + size]))
        return answers

    def _shrink(self, failed: int, error: Exception) -> None:
        """Halve the batch size after a batch of `failed` calls ran out of memory."""
        self.size = max(1, min(self.size, failed // 2))
        if not self.shrunk:
            self.shrunk = True
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            self.note(
                f"out of memory with {failed} samples in a batch ({first_line[:120]}); halving the batch "
                "and retrying, down to 1, and keeping the size that fits for the rest of this run"
            )


def drive(lanes: Iterable[Lane[C, A]], batcher: Batcher[C, A]) -> None:
    """Play `lanes` to their end, up to `batcher.size` at a time: each round answers the pending call
    of each running lane in one batch and sends every lane its answer; a finished lane's place goes
    to the next lane. At batch size 1 this is the lanes one after another, each to its end.
    Lanes left waiting in a round (the size shrank) go first in the next."""
    waiting = iter(lanes)
    running: list[tuple[Lane[C, A], C]] = []
    exhausted = False
    while True:
        while not exhausted and len(running) < batcher.size:
            lane = next(waiting, None)
            if lane is None:
                exhausted = True
                break
            call = next(lane, None)
            if call is not None:
                running.append((lane, call))
        if not running:
            return
        chosen, left = running[: batcher.size], running[batcher.size :]
        answers = batcher.answer([call for _, call in chosen])
        running = left
        for (lane, _), answer in zip(chosen, answers, strict=True):
            try:
                running.append((lane, lane.send(answer)))
            except StopIteration:
                continue
