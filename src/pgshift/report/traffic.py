"""The traffic time series the engine journaled (``pgshift.rollout.series``), as spans.

Each journal row holds cumulative counters per backend (``[requests, errors, *latency
buckets]``), so the figures of a span are the difference of its two rows: exact however
far apart the rows are (thinning keeps first and last). The first row holds what the
router counted before it (since the engine started the proxy), or zeros (a baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgshift.traffic.router import percentile

Counts = list[int]
SIDES = ("blue", "green")


@dataclass(frozen=True)
class Span:
    """What the router saw between two rows (``t0`` to ``t1``)."""

    t0: float
    t1: float
    phase: str | None
    weight: float | None
    blue: Counts
    green: Counts
    refused: int
    lag_ms: float | None = None
    to_sqlite_lag_ms: float | None = None

    def side(self, side: str) -> Counts:
        return self.blue if side == "blue" else self.green

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0

    @property
    def mid(self) -> float:
        return (self.t0 + self.t1) / 2

    def requests(self, side: str | None = None) -> int:
        return sum(self.side(s)[0] for s in ((side,) if side else SIDES))

    def errors(self, side: str | None = None) -> int:
        return sum(self.side(s)[1] for s in ((side,) if side else SIDES))

    def error_rate(self, side: str) -> float | None:
        n = self.requests(side)
        return self.errors(side) / n if n else None

    def quantile(self, side: str, q: float) -> float | None:
        return quantile(self.side(side), q)


def quantile(c: Counts, q: float) -> float | None:
    """The ``q``-quantile in ms of the counts' latency histogram; None without samples."""
    hist = c[2:]
    return percentile(hist, q) if sum(hist) else None


def _diff(a: Counts, b: Counts) -> Counts:
    return [x - y for x, y in zip(a, b, strict=True)]


def _counts(row: dict[str, Any], side: str, width: int) -> Counts:
    c = row.get(side)
    return [int(v) for v in c] if isinstance(c, list) and len(c) == width else [0] * width


@dataclass(frozen=True)
class Traffic:
    """The journaled series: totals, spans, and the views the report states."""

    rows: list[tuple[float, dict[str, Any]]]

    @property
    def recorded(self) -> bool:
        return bool(self.rows)

    @property
    def _width(self) -> int:
        for _, r in self.rows:
            if isinstance(r.get("blue"), list):
                return len(r["blue"])
        return 2

    def total(self, side: str) -> Counts:
        """Everything counted up to the last row (cumulative)."""
        return _counts(self.rows[-1][1], side, self._width) if self.rows else [0, 0]

    @property
    def refused(self) -> int:
        return int(self.rows[-1][1].get("refused") or 0) if self.rows else 0

    @property
    def source(self) -> str | None:
        return str(self.rows[-1][1].get("source")) if self.rows else None

    @property
    def first(self) -> Span | None:
        """What the first row holds: counted before it (a proxy the engine started), else
        None (a zero baseline)."""
        if not self.rows:
            return None
        ts, r = self.rows[0]
        w = self._width
        span = Span(ts, ts, r.get("phase"), r.get("weight"), _counts(r, "blue", w),
                    _counts(r, "green", w), int(r.get("refused") or 0))
        return span if span.requests() or span.refused else None

    def spans(self) -> list[Span]:
        w, out = self._width, []
        for (t0, a), (t1, b) in zip(self.rows, self.rows[1:], strict=False):
            out.append(Span(t0, t1, b.get("phase"), b.get("weight"),
                            _diff(_counts(b, "blue", w), _counts(a, "blue", w)),
                            _diff(_counts(b, "green", w), _counts(a, "green", w)),
                            int(b.get("refused") or 0) - int(a.get("refused") or 0),
                            b.get("lag_ms"), b.get("to_sqlite_lag_ms")))
        return out

    def by_phase(self) -> list[Span]:
        """Consecutive spans of one phase added up (the first row's counts as their own)."""
        out: list[Span] = []
        first = self.first
        if first is not None:
            out.append(first)
        for s in self.spans():
            last = out[-1] if out else None
            if last is not None and last.phase == s.phase and last.t1 == s.t0 and last.t0 != \
                    last.t1:
                out[-1] = Span(last.t0, s.t1, s.phase, s.weight,
                               [x + y for x, y in zip(last.blue, s.blue, strict=True)],
                               [x + y for x, y in zip(last.green, s.green, strict=True)],
                               last.refused + s.refused)
            else:
                out.append(s)
        return out

    def longest_outage(self) -> tuple[float, float] | None:
        """(seconds, start) of the longest run of spans in which requests failed (or were
        refused) and none was answered successfully; None when there was none."""
        best: tuple[float, float] | None = None
        run: tuple[float, float] | None = None
        for s in self.spans():
            failed = s.errors() + s.refused
            ok = s.requests() - s.errors()
            if failed and not ok:
                run = (run[0] + s.seconds, run[1]) if run else (s.seconds, s.t0)
                best = run if best is None or run[0] > best[0] else best
            else:
                run = None
        return best

    @property
    def resolution(self) -> float | None:
        """The median time between two rows, seconds (the series' usual resolution)."""
        gaps = sorted(s.seconds for s in self.spans())
        return gaps[len(gaps) // 2] if gaps else None
