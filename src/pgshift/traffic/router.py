"""The seams between the rollout engine and whatever steers traffic.

``Router`` is what every router does (embedded proxy, HAProxy, ALB, Gateway API):
set the green weight, read it back, send everything to blue, and report traffic
figures per backend over a window. Two optional capabilities sit beside it:

- ``WriteRouting``: mutating requests go to the system of record's backend
  (DESIGN.md's single-writer topology); the flip switches it.
- ``WriteFence``: hold mutating requests (not fail them) while the flip runs.
  Routers that cannot hold requests do not implement it; the engine then uses a
  declared short write pause instead.

Contracts every implementation keeps (checked by ``tests/traffic_conformance.py``):

- ``set_weight(pct)`` accepts 0..100 (floats allowed, resolution 0.01) and
  raises ``UsageError`` outside it; it takes effect on the next request and never
  fails an in-flight one. ``weight()`` returns what was set.
- Cohorts are sticky and monotone: raising the weight only moves clients
  blue -> green.
- ``drain_to_blue()`` sends every new request, reads and writes, to blue
  (weight 0, system of record blue where supported). It is idempotent.
- ``figures(window)`` covers roughly the last ``window`` seconds; ``lag`` says how
  old the newest data point may be (CloudWatch: a minute or more).
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pgshift.errors import ExitCode, PgshiftError, UsageError

Side = Literal["blue", "green"]
SIDES: tuple[Side, Side] = ("blue", "green")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")

# Upper bounds (milliseconds) of the latency histogram buckets every router reports in.
# Fine below 10 ms because the proxy's own target is "adds <= 1 ms at p50".
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 40, 60, 100, 150, 250, 400, 600, 1000, 1500,
    2500, 5000, 10000, math.inf,
)


class RouterError(PgshiftError):
    """A router refused or failed a change (exit 6: the step stopped; nothing more was
    changed). Its API answering at all is assumed: see ``RouterUnreachable``."""

    exit_code = ExitCode.ABORTED


class StaleRouterEpoch(RouterError):
    """The router refused a change because a controller with a higher epoch has steered
    it since: the caller was superseded and must stop without acting (same exit code as
    a held lock)."""

    exit_code = ExitCode.USAGE


class RouterUnreachable(RouterError):
    """The router's API cannot be reached (wrong address, proxy not running, no socket):
    an input problem, exit 2, like an unreachable database."""

    exit_code = ExitCode.USAGE


def check_weight(pct: float, *, hint: str = "pgshift traffic set-weight 25") -> float:
    """Validate a green weight in percent (0..100, resolution 0.01) and return it as a float.

    Booleans and strings are refused (JSON ``true`` is not 1 %); ``hint`` names the way
    the caller's user gives a weight (a CLI option, a command, an API field)."""
    if isinstance(pct, bool) or not isinstance(pct, numbers.Real):
        raise UsageError(f"weight must be a number from 0 to 100, got {pct!r}", hint=hint)
    value = float(pct)
    if not 0.0 <= value <= 100.0 or math.isnan(value):
        raise UsageError(f"weight must be from 0 to 100 (percent of clients on green), got {pct}",
                         hint=hint)
    return round(value, 2)


def check_side(side: str) -> Side:
    """Validate a system-of-record name."""
    if side not in SIDES:
        raise UsageError(f"system of record must be 'blue' or 'green', got {side!r}",
                         hint="pgshift traffic set-system-of-record green")
    return side


def bucket_index(latency_ms: float) -> int:
    """Index of the histogram bucket ``latency_ms`` falls into (upper bounds inclusive)."""
    return bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)


def percentile(counts: Sequence[int], q: float) -> float | None:
    """The ``q``-quantile (0..1) in ms of a histogram over ``LATENCY_BUCKETS_MS``.

    Interpolates linearly inside the bucket; the open last bucket answers with its
    lower bound. ``None`` without samples.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            lo = LATENCY_BUCKETS_MS[i - 1] if i else 0.0
            hi = LATENCY_BUCKETS_MS[i]
            if math.isinf(hi):
                return lo
            return lo + (hi - lo) * max(rank - seen, 0.0) / n
        seen += n
    return LATENCY_BUCKETS_MS[-2]  # pragma: no cover - rounding only


@dataclass(frozen=True)
class BackendFigures:
    """One backend's traffic over a window.

    ``requests`` counts every request sent to the backend, answered or not;
    ``status`` counts answers by class; ``connection_errors`` the requests that got
    no answer (refused, reset, timed out). ``latency_buckets`` are per-bucket (not
    cumulative) counts over ``LATENCY_BUCKETS_MS``, empty when the router has no
    distribution (HAProxy's ``show stat`` has averages only: ``mean_ms``).
    """

    requests: int = 0
    status: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(STATUS_CLASSES, 0))
    connection_errors: int = 0
    latency_buckets: tuple[int, ...] = ()
    mean_ms: float | None = None

    @property
    def errors(self) -> int:
        """Failed requests: 5xx answers plus connection errors."""
        return int(self.status.get("5xx", 0)) + self.connection_errors

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def samples(self) -> int:
        """Latency samples behind the percentiles."""
        return sum(self.latency_buckets)

    def quantile(self, q: float) -> float | None:
        return percentile(self.latency_buckets, q) if self.latency_buckets else None

    @property
    def p50(self) -> float | None:
        return self.quantile(0.50)

    @property
    def p90(self) -> float | None:
        return self.quantile(0.90)

    @property
    def p99(self) -> float | None:
        return self.quantile(0.99)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "status": dict(self.status),
            "connection_errors": self.connection_errors, "errors": self.errors,
            "error_rate": self.error_rate, "samples": self.samples,
            "p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99, "mean_ms": self.mean_ms,
            "latency_buckets": list(self.latency_buckets),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BackendFigures:
        return cls(
            requests=int(d.get("requests", 0)),
            status={k: int(d.get("status", {}).get(k, 0)) for k in STATUS_CLASSES},
            connection_errors=int(d.get("connection_errors", 0)),
            latency_buckets=tuple(int(n) for n in d.get("latency_buckets", ())),
            mean_ms=d.get("mean_ms"),
        )

    @classmethod
    def from_latencies(cls, latencies_ms: Iterable[float], *, errors5xx: int = 0,
                       connection_errors: int = 0, other: Mapping[str, int] | None = None,
                       ) -> BackendFigures:
        """Build figures from raw samples (tests, load generators): every sample is one answer,
        all 2xx except ``errors5xx`` of them."""
        counts = [0] * len(LATENCY_BUCKETS_MS)
        n = 0
        for ms in latencies_ms:
            counts[bucket_index(ms)] += 1
            n += 1
        status = dict.fromkeys(STATUS_CLASSES, 0)
        status.update(other or {})
        status["5xx"] += errors5xx
        status["2xx"] += n - sum(status.values())
        return cls(requests=n + connection_errors, status=status,
                   connection_errors=connection_errors, latency_buckets=tuple(counts))


@dataclass(frozen=True)
class Figures:
    """Both backends' figures over the same window, as one router saw them."""

    window: float
    blue: BackendFigures
    green: BackendFigures
    lag: float = 0.0  # how old the newest data may be, seconds
    source: str = ""

    def side(self, side: Side) -> BackendFigures:
        return self.blue if side == "blue" else self.green

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "lag": self.lag, "source": self.source,
                "latency_bucket_bounds_ms": [b if math.isfinite(b) else "+Inf"
                                             for b in LATENCY_BUCKETS_MS],
                "blue": self.blue.to_dict(), "green": self.green.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Figures:
        return cls(window=float(d["window"]), lag=float(d.get("lag", 0.0)),
                   source=str(d.get("source", "")),
                   blue=BackendFigures.from_dict(d["blue"]),
                   green=BackendFigures.from_dict(d["green"]))


@runtime_checkable
class Router(Protocol):
    """Steers reads between blue and green by a weight in percent."""

    def set_weight(self, pct: float) -> None:
        """Send ``pct`` % of clients (a sticky, monotone cohort) to green."""

    def weight(self) -> float:
        """The green weight in effect."""

    def figures(self, window: float) -> Figures:
        """Per-backend traffic over about the last ``window`` seconds."""

    def drain_to_blue(self) -> None:
        """Everything new to blue (weight 0; system of record blue where supported)."""


@runtime_checkable
class WriteRouting(Protocol):
    """Routes mutating requests to the system of record's backend."""

    def set_system_of_record(self, side: Side) -> None:
        """Switch where mutating requests go; takes effect on the next request."""

    def system_of_record(self) -> Side:
        """Where mutating requests go now."""


@runtime_checkable
class WriteFence(Protocol):
    """Holds mutating requests (without failing them) while the flip runs."""

    def hold(self) -> None:
        """From now on, hold new mutating requests; reads keep flowing. Returns once the
        mutating requests sent before are answered (none can still commit on the old
        system of record), or raises with the fence held."""

    def release(self) -> None:
        """Let held and new mutating requests go to the system of record in effect."""


@runtime_checkable
class WritePause(Protocol):
    """For routers that cannot hold requests: refuse new mutating requests for a moment
    (503 with ``Retry-After: 1``) -- the declared short write pause of a flip."""

    def pause_writes(self) -> None:
        """From now on, answer new mutating requests 503 Retry-After; reads keep flowing.
        Requests already forwarded are not waited for (the router cannot see them)."""

    def resume_writes(self) -> None:
        """Mutating requests go to the system of record again."""


__all__ = [
    "LATENCY_BUCKETS_MS",
    "SIDES",
    "STATUS_CLASSES",
    "BackendFigures",
    "Figures",
    "Router",
    "RouterError",
    "RouterUnreachable",
    "Side",
    "WriteFence",
    "WritePause",
    "WriteRouting",
    "bucket_index",
    "check_side",
    "check_weight",
    "percentile",
]
