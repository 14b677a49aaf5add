"""The rollout's traffic time series: what the router saw, one journal row per interval.

The watcher (``watch.py``) offers every tick; a row is written when ``every`` seconds
passed since the last one (one a second at most, doubled each time the journal thins
the table past ``MAX_SAMPLES``). Migrate's start and finalize's start add a row too, so
the series spans the run. The report draws its time-series charts from these rows and
states the run's request and failure totals from them.

Each row holds *cumulative* counters per backend -- ``[requests, errors, *latency
buckets]`` over ``pgshift.traffic.router.LATENCY_BUCKETS_MS`` (errors: 5xx answers and
requests that got no answer) -- plus the router's own refusals, the weight, the system
of record, the phase and, every ``LAG_EVERY`` seconds, the sync lag both ways. Any two
rows give the exact figures of the span between them, so thinning loses resolution,
never counts.

Where the counters come from:

- ``counters``: the embedded proxy's cumulative counters (``/metrics``, and ``refused``
  of ``/status``): exact. A proxy restart (counters going down) is detected and the
  counts go on from the new proxy's; what the old one counted after the last row is lost.
  A proxy the engine started (``router.managed``) counts from the rollout's router step,
  so the first row holds everything since then; otherwise the first row is the baseline.
- ``window``: other routers' ``figures(window)`` for the time since the last row, added
  up: as exact as the router's windows (HAProxy's counter deltas; CloudWatch's minutes).
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

from pgshift.errors import PgshiftError
from pgshift.rollout.context import Context
from pgshift.traffic.router import LATENCY_BUCKETS_MS, SIDES, BackendFigures, Figures

ROW_EVERY = 1.0  # seconds between rows, at least (the table's cap doubles it)
LAG_EVERY = 2.0  # seconds between sync-lag readings (sync status reads both databases)
_NB = len(LATENCY_BUCKETS_MS)
_METRIC = re.compile(r'^(pgshift_proxy_\w+)\{backend="(blue|green)"(?:,(?:class|le)="[^"]*")?\}'
                     r" (\S+)$")

Counts = list[int]  # [requests, errors, *per-bucket latency counts]


def zero() -> Counts:
    return [0] * (2 + _NB)


def of_figures(b: BackendFigures) -> Counts:
    """A window's figures as counts (no histogram: zeros)."""
    hist = list(b.latency_buckets) if len(b.latency_buckets) == _NB else [0] * _NB
    return [b.requests, b.errors, *hist]


def proxy_counters(metrics: str) -> dict[str, Counts]:
    """The embedded proxy's cumulative counters per backend, from its Prometheus text."""
    out: dict[str, Counts] = {s: zero() for s in SIDES}
    cum: dict[str, list[int]] = {s: [] for s in SIDES}
    for line in metrics.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        name, side, value = m[1], m[2], int(float(m[3]))
        if name == "pgshift_proxy_requests_total":
            out[side][0] += value
            if 'class="5xx"' in line:
                out[side][1] += value
        elif name == "pgshift_proxy_connection_errors_total":
            out[side][0] += value
            out[side][1] += value
        elif name == "pgshift_proxy_request_duration_seconds_bucket":
            cum[side].append(value)  # emitted in bucket order, cumulative over le
    for side in SIDES:
        c = cum[side]
        if len(c) == _NB:
            out[side][2:] = [c[0], *(b - a for a, b in itertools.pairwise(c))]
    return out


def _add(a: Counts, b: Counts) -> Counts:
    return [x + y for x, y in zip(a, b, strict=True)]


def _delta(now: Counts, before: Counts) -> Counts:
    """``now - before``; a counter that went down was reset (a restarted proxy): its
    value now is what was counted since."""
    if any(x < y for x, y in zip(now, before, strict=True)):
        return list(now)
    return [x - y for x, y in zip(now, before, strict=True)]


class Recorder:
    """Appends rows to the journal's ``samples`` table; one per watcher (or step)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.every = max(ROW_EVERY, float(ctx.journal.get("series_every", ROW_EVERY)))
        last = ctx.journal.last_sample()
        self.last_ts = last[0] if last else None
        self.last = last[1] if last else None
        self.lag_ts = 0.0
        counters = getattr(ctx.router, "metrics", None)
        self.source = "counters" if callable(counters) else "window"

    def offer(self, now: float | None = None) -> None:
        """Record a row if one is due (called every tick; cheap when none is)."""
        now = time.time() if now is None else now
        if self.last_ts is None or now - self.last_ts >= self.every:
            self.record(now)

    def record(self, now: float | None = None) -> dict[str, Any] | None:
        """Read the router and append a row now; None when the router cannot be read (a
        hole in the series, not a failure of the step)."""
        now = time.time() if now is None else now
        started = time.perf_counter()
        try:
            raw, refused, window = self._read(now)
        except PgshiftError as exc:
            self.ctx.state.audit("series", "router-unreadable", exc.message)
            return None
        prev = self.last
        # a proxy the engine started counts from the rollout's router step: its first
        # row is everything since; any other source starts from a zero baseline
        since_start = self.ctx.cfg.router.kind == "embedded" and self.ctx.cfg.router.managed
        totals: dict[str, Any] = {}
        for side in SIDES:
            if prev is None:
                totals[side] = list(raw[side]) if window is None and since_start else zero()
            elif window is not None:
                totals[side] = _add(prev[side], of_figures(window.side(side)))
            else:
                totals[side] = _add(prev[side], _delta(raw[side], (prev.get("raw") or raw)[side]))
        if refused is not None:
            before = prev.get("raw_refused") if prev else None
            if prev is None:
                totals["refused"] = refused if since_start else 0
            else:
                step = refused if before is None or refused < before else refused - before
                totals["refused"] = int(prev.get("refused") or 0) + step
        j = self.ctx.journal
        row: dict[str, Any] = {
            "source": self.source, "weight": j.get("weight"), "sor": "green" if j.get(
                "flipped") else "blue", "phase": j.get("phase"), **totals,
            "raw": raw if window is None else None, "raw_refused": refused}
        if now - self.lag_ts >= LAG_EVERY:
            self.lag_ts = now
            from pgshift.rollout import syncing

            brief = syncing.brief(self.ctx)
            row["lag_ms"] = brief.get("lag_ms")
            row["to_sqlite_lag_ms"] = brief.get("to_sqlite_lag_ms")
        row["took_ms"] = round((time.perf_counter() - started) * 1000, 1)  # its own cost
        if j.add_sample(now, row):
            self.every *= 2
            j.set(series_every=self.every)
        self.last_ts, self.last = now, row
        return row

    def _read(self, now: float) -> tuple[dict[str, Counts], int | None, Figures | None]:
        router = self.ctx.router
        if self.source == "counters":
            raw = proxy_counters(str(router.metrics()))  # type: ignore[attr-defined]
            status = getattr(router, "status", None)
            refused = status().get("refused") if callable(status) else None
            return raw, int(refused) if isinstance(refused, int) else None, None
        span = min(3600.0, max(self.every, now - (self.last_ts or now)))
        return {}, None, router.figures(span)
