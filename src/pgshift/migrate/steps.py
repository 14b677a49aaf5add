"""Timed, named steps: ``STEP n name`` on the progress reporter, a line in the audit log.

Migrate runs its phases through one ``Steps``; the rollout engine can run its
own (snapshot, migrate, verify, sync ...) through another, so every phase of
every command is reported, audited and timed the same way (pgcopydb's
``STEP n`` with timings is the model).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from pgshift.progress import Progress
from pgshift.state import StateDir

T = TypeVar("T")


class StepTiming(NamedTuple):
    """One finished step; unpacks as ``(name, seconds)``."""

    name: str
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {"step": self.name, "seconds": round(self.seconds, 3)}


class Steps:
    """Runs named steps, timing each: progress ``step``, audit start/done/failed.

    ``state`` is where the audit events go (none: not audited); ``phase`` is
    the audit event's ``step`` field (``migrate``, ``verify``, ``rollout``...).
    Only finished steps are in ``timings``: a step that raised is audited as
    ``step.failed`` with its error and the exception propagates unchanged.
    """

    def __init__(self, progress: Progress, state: StateDir | None = None,
                 phase: str = "migrate") -> None:
        self.progress, self.state, self.phase = progress, state, phase
        self.timings: list[StepTiming] = []

    def run(self, name: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` as the step ``name`` and return what it returns."""
        self.progress.step(name)
        self._audit("step.start", name)
        t0 = time.perf_counter()
        try:
            result = fn()
        except BaseException as exc:
            self._audit("step.failed", name, {"seconds": round(time.perf_counter() - t0, 3),
                                              "error": type(exc).__name__})
            raise
        took = time.perf_counter() - t0
        self.timings.append(StepTiming(name, took))
        self._audit("step.done", name, {"seconds": round(took, 3)})
        return result

    def to_list(self) -> list[dict[str, object]]:
        """The finished steps for ``--json``."""
        return [t.to_dict() for t in self.timings]

    def _audit(self, kind: str, name: str, figures: dict[str, object] | None = None) -> None:
        if self.state is not None:
            self.state.audit(self.phase, kind, name, figures)


__all__ = ["StepTiming", "Steps"]
