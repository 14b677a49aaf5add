"""Progress reporting for long operations: Rich bars on a TTY, plain lines otherwise.

Library code reports through the small ``Progress`` protocol and never
prints; the CLI picks the implementation.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import (
    Progress as RichProgress,
)


class Progress(Protocol):
    """What long operations tell their caller."""

    def step(self, name: str) -> None:
        """A new phase starts (``STEP n name``)."""

    def task(self, key: str, total: int) -> None:
        """A unit of work with ``total`` items (rows) begins."""

    def advance(self, key: str, amount: int, seconds: float | None = None) -> None:
        """``amount`` more items of ``key`` are done; ``seconds``: how long that piece of
        work took, when known (a copy chunk's own time), so a key's time is its own."""

    def close(self) -> None:
        """All work is over; release the terminal."""


class NullProgress:
    """Reports nothing (``--json``, library use)."""

    def step(self, name: str) -> None:
        pass

    def task(self, key: str, total: int) -> None:
        pass

    def advance(self, key: str, amount: int, seconds: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """One line per step and per finished task, with rates: for logs and CI."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.started = time.perf_counter()
        self.steps = 0
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.t0: dict[str, float] = {}
        # The earliest start of a reported piece of work per key: a table's clock starts
        # when its first chunk started, not when the copy step did.
        self.began: dict[str, float] = {}
        self.lock = threading.Lock()

    def _print(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {text}", file=self.out, flush=True)

    def step(self, name: str) -> None:
        self.steps += 1
        self._print(f"STEP {self.steps} {name}")

    def task(self, key: str, total: int) -> None:
        with self.lock:
            self.totals[key], self.done[key], self.t0[key] = total, 0, time.perf_counter()

    def advance(self, key: str, amount: int, seconds: float | None = None) -> None:
        with self.lock:
            now = time.perf_counter()
            if seconds is not None:
                self.began[key] = min(self.began.get(key, now), now - seconds)
            self.done[key] = self.done.get(key, 0) + amount
            finished = self.done[key] >= self.totals.get(key, 0)
            if finished and key in self.t0:
                start = self.began.pop(key, self.t0[key])
                self.t0.pop(key)
                took = max(now - start, 1e-6)
                self._print(f"  {key}: {self.done[key]:,} rows in {took:.1f}s "
                            f"({self.done[key] / took:,.0f} rows/s)")

    def close(self) -> None:
        pass


class BarProgress:
    """Rich progress bars per table (rows/s, ETA) for interactive terminals."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.bars = RichProgress(
            TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.ids: dict[str, TaskID] = {}
        self.t0: dict[str, float] = {}
        self.steps = 0
        self.lock = threading.Lock()
        self.bars.start()

    def step(self, name: str) -> None:
        self.steps += 1
        self.console.print(f"[bold]STEP {self.steps}[/bold] {name}")

    def task(self, key: str, total: int) -> None:
        with self.lock:
            self.ids[key] = self.bars.add_task(key, total=max(total, 1), rate="")
            self.t0[key] = time.perf_counter()

    def advance(self, key: str, amount: int, seconds: float | None = None) -> None:
        with self.lock:
            tid = self.ids[key]
            self.bars.advance(tid, amount)
            done = self.bars.tasks[self.ids[key]].completed
            rate = done / max(time.perf_counter() - self.t0[key], 1e-6)
            self.bars.update(tid, rate=f"{rate:,.0f} rows/s")

    def close(self) -> None:
        self.bars.stop()


def for_terminal(json_output: bool, stream: TextIO | None = None) -> Progress:
    """The right reporter for where output goes."""
    if json_output:
        return NullProgress()
    stream = stream or sys.stderr
    if stream.isatty():
        return BarProgress()
    return LineProgress(stream)
