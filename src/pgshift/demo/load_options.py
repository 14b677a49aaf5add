"""A load run's options and figures: :class:`LoadOptions` in, :class:`Window` per second out.

:class:`LoadSummary` is the whole run (``--json`` prints it).
Latencies go into a log-bucketed histogram (each bucket 5 % wider than the one before), so
windows from several worker processes add up exactly and percentiles stay within 5 %.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgshift.demo.load_http import parse_base_url
from pgshift.errors import UsageError

__all__ = ["LoadOptions", "LoadSummary", "Window", "rate_limit_keys"]

# One process of this generator sustains about this many requests/s on one core of the
# benchmark machine (see docs/reference-app.md); above it the rate is split across processes.
PER_PROCESS_RPS = 1500
# How many failed requests a run describes in full (the counts cover all of them).
FAILURES_KEPT = 20


_H_BASE = 1e-4  # seconds: the first bucket's upper bound
_H_GROWTH = 1.05  # each bucket 5 % wider: percentiles within 5 %
_H_N = 300  # up to ~0.2 ms * 1.05^300 > 200 s
_H_LOG = math.log(_H_GROWTH)


def _bucket(seconds: float) -> int:
    if seconds <= _H_BASE:
        return 0
    return min(_H_N - 1, int(math.log(seconds / _H_BASE) / _H_LOG) + 1)


@dataclass
class Window:
    """Figures of one period (a second, or the whole run)."""

    sent: int = 0
    done: int = 0
    errors: int = 0  # 5xx answers and transport failures
    transport_errors: int = 0
    dropped: int = 0  # due but not sent: too many in flight
    writes_acked: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    hist: list[int] = field(default_factory=lambda: [0] * _H_N)
    seconds: float = 0.0
    # The first few failed requests, whole enough to find the cause: when, what, which
    # answer (or transport error), which side served it and the start of the body.
    failures: list[dict[str, Any]] = field(default_factory=list)

    def observe(self, status: int | None, latency: float) -> None:
        self.done += 1
        self.hist[_bucket(latency)] += 1
        label = str(status) if status is not None else "transport"
        self.statuses[label] = self.statuses.get(label, 0) + 1
        if status is None:
            self.transport_errors += 1
            self.errors += 1
        elif status >= 500:
            self.errors += 1

    def note_failure(self, failure: dict[str, Any]) -> None:
        """Keep ``failure`` if fewer than :data:`FAILURES_KEPT` are kept already."""
        if len(self.failures) < FAILURES_KEPT:
            self.failures.append(failure)

    def merge(self, other: Window) -> None:
        for failure in other.failures:
            self.note_failure(failure)
        self.sent += other.sent
        self.done += other.done
        self.errors += other.errors
        self.transport_errors += other.transport_errors
        self.dropped += other.dropped
        self.writes_acked += other.writes_acked
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v
        self.hist = [a + b for a, b in zip(self.hist, other.hist, strict=True)]

    def percentile_ms(self, q: float) -> float:
        total = sum(self.hist)
        if not total:
            return 0.0
        target, seen = q * total, 0
        for i, n in enumerate(self.hist):
            seen += n
            if seen >= target and n:
                return round(_H_BASE * _H_GROWTH ** i * 1000, 3)
        return round(_H_BASE * _H_GROWTH ** (_H_N - 1) * 1000, 3)

    def to_msg(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_msg(cls, msg: dict[str, Any]) -> Window:
        return cls(**msg)


@dataclass
class LoadOptions:
    """What ``pgshift load run`` is told."""

    url: str
    rps: float
    duration: float | None = 30.0  # None: until stopped
    users: int = 50
    ledger: Path | None = None
    workers: int = 0  # 0: as many as the rate needs, at most one per core
    connections: int = 64  # per worker process
    timeout: float = 10.0
    max_inflight: int = 2000  # per worker process
    seed: int | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    rate_limit_keys: int = 8

    def validate(self) -> None:
        parse_base_url(self.url)
        if not self.rps > 0:
            raise UsageError("--rps must be positive", hint="--rps 100")
        if self.duration is not None and not self.duration > 0:
            raise UsageError("--duration must be positive", hint="--duration 30")
        if self.users < 1:
            raise UsageError("--users must be at least 1", hint="--users 50")
        if self.workers < 0 or self.connections < 1 or self.timeout <= 0:
            raise UsageError("workers >= 0, connections >= 1 and timeout > 0, please",
                             hint="--workers 0 picks a count from the rate")

    def worker_count(self) -> int:
        if self.workers:
            return max(1, min(self.workers, self.users))
        need = math.ceil(self.rps / PER_PROCESS_RPS)
        return max(1, min(need, os.cpu_count() or 1, self.users))


@dataclass
class LoadSummary:
    """The whole run's figures (``--json`` prints :meth:`to_dict`)."""

    url: str
    target_rps: float
    seconds: float
    workers: int
    users: int
    total: Window
    ledger: str | None
    run_id: str

    @property
    def achieved_rps(self) -> float:
        return self.total.done / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        t = self.total
        return {
            "url": self.url, "run_id": self.run_id, "target_rps": self.target_rps,
            "achieved_rps": round(self.achieved_rps, 1), "seconds": round(self.seconds, 3),
            "workers": self.workers, "users": self.users, "requests": t.done, "sent": t.sent,
            "errors": t.errors, "error_rate": round(t.errors / t.done, 5) if t.done else 0.0,
            "transport_errors": t.transport_errors, "dropped": t.dropped,
            "statuses": dict(sorted(t.statuses.items())),
            "latency_ms": {"p50": t.percentile_ms(0.5), "p90": t.percentile_ms(0.9),
                           "p99": t.percentile_ms(0.99), "max": t.percentile_ms(1.0)},
            "writes_acknowledged": t.writes_acked, "ledger": self.ledger,
            "failures": list(t.failures),
        }


def rate_limit_keys(opts: LoadOptions) -> list[str]:
    """The rate-limit keys the run owns: set up before the load, shared by its workers."""
    return [f"load:{opts.run_id}:{i}" for i in range(opts.rate_limit_keys)]
