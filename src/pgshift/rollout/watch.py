"""Waiting that keeps watching: every wait of the engine (a bake, an approval, the
monitoring window, a pause) samples the router, checks green's health, evaluates the
emergency triggers and handles operator commands. Nothing waits blind: a failing green
during an approval wait still rolls back (Flagger #1801). Each tick also offers the
traffic time series a row (``series.py``: at most one a second, into the journal).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import httpx

from pgshift.errors import PgshiftError
from pgshift.health.gates import Sample, SustainedRule
from pgshift.rollout.context import Context
from pgshift.rollout.series import Recorder
from pgshift.traffic.router import Figures


class Interrupt(Exception):
    """Stop the current step: ``abort`` (traffic to the system of record, sync keeps
    running), ``rollback`` (operator) or ``emergency`` / ``failed`` (automatic rollback)."""

    def __init__(self, kind: str, reason: str, actor: str = "pgshift") -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.actor = actor


@dataclass
class Tick:
    ts: float
    figures: Figures | None
    green_healthy: bool | None


def probe(url: str, timeout: float = 2.0) -> bool:
    """GET a health URL: 2xx/3xx is healthy."""
    try:
        return httpx.get(url, timeout=timeout).status_code < 400
    except httpx.HTTPError:
        return False


class DbProbe:
    """PostgreSQL's round trip from the engine, against the baseline the sync step
    measured before any traffic moved (journal ``db_probe_baseline_ms``)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        e = ctx.cfg.emergency
        self.every = max(0.5, ctx.secs(e.db_probe_interval))
        self.baseline = ctx.journal.get("db_probe_baseline_ms")
        self.last = 0.0
        self.degraded_since: float | None = None
        self.latest_ms: float | None = None

    def check(self, now: float) -> None:
        if self.baseline is None or now - self.last < self.every:
            return
        self.last = now
        ms = probe_db_ms(self.ctx)
        self.latest_ms = ms
        e = self.ctx.cfg.emergency
        limit = max(e.db_probe_ratio * self.baseline, self.baseline + 5.0)
        if ms is not None and ms <= limit:
            self.degraded_since = None
            return
        self.degraded_since = self.degraded_since or now
        if now - self.degraded_since >= self.ctx.secs(e.db_probe_for):
            what = "unreachable" if ms is None else f"{ms:.1f} ms"
            raise Interrupt("emergency", f"emergency trigger: PostgreSQL probe {what} vs "
                                         f"baseline {self.baseline:.1f} ms for "
                                         f"{self.ctx.secs(e.db_probe_for):g}s")


def probe_db_ms(ctx: Context, samples: int = 3) -> float | None:
    """The best of ``samples`` ``SELECT 1`` round trips on one connection, in ms; None
    when PostgreSQL cannot be reached."""
    from pgshift.dsn import connect

    try:
        conn = connect(ctx.dsn(), autocommit=True, application_name="pgshift-probe")
    except PgshiftError:
        return None
    try:
        best = None
        for _ in range(samples):
            t0 = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            ms = (time.perf_counter() - t0) * 1000
            best = ms if best is None else min(best, ms)
        return best
    except Exception:  # a probe that fails is a failed probe, whatever the driver says
        return None
    finally:
        conn.close()


class Watcher:
    """Samples every ``sample_interval`` (scaled) and raises :class:`Interrupt`."""

    def __init__(self, ctx: Context, *, green_live: bool = True) -> None:
        self.ctx = ctx
        self.interval = max(0.05, ctx.secs(ctx.cfg.shift.sample_interval))
        e = ctx.cfg.emergency
        gap = max(self.interval * 5, 2.0)  # a longer hole in the samples breaks a streak
        self.rules = [
            SustainedRule("unavailable", ctx.secs(e.unavailable), max_gap=gap,
                          text=f"green unavailable for {ctx.secs(e.unavailable):g}s"),
            SustainedRule("error_rate", ctx.secs(e.error_rate_for), e.error_rate, max_gap=gap,
                          text=f"green error rate > {e.error_rate:.2%} for "
                               f"{ctx.secs(e.error_rate_for):g}s"),
        ]
        horizon = max(r.duration for r in self.rules) + self.interval * 4
        self.samples: deque[Sample] = deque(maxlen=max(16, math.ceil(horizon / self.interval)))
        self.slow_since: float | None = None
        self.green_live = green_live
        self.paused = bool(ctx.journal.get("paused", False))
        self.db = DbProbe(ctx)
        self.series = Recorder(ctx)

    # -- one tick ------------------------------------------------------------------------------

    def tick(self) -> str | None:
        """Heartbeat, commands, one sample, the triggers. ``"promote"`` when promoted."""
        ctx = self.ctx
        ctx.journal.heartbeat()
        promoted = self._commands()
        if not self.green_live:
            return promoted
        sample = getattr(ctx.router, "sample", None)
        if callable(sample):
            sample()  # routers that count by polling (HAProxy) need a reading per tick
        now = time.time()
        try:
            figures: Figures | None = ctx.router.figures(self.interval)
        except PgshiftError as exc:
            ctx.state.audit("watch", "router-unreadable", exc.message)
            figures = None
        healthy = probe(ctx.cfg.apps.green.url.rstrip("/") + ctx.cfg.apps.green.health)
        if figures is not None:
            self.samples.append(Sample.of(now, figures.green, healthy))
            self._latency(now, figures)
        else:
            self.samples.append(Sample(now, 0, 0, healthy))
        self.series.offer(now)
        for rule in self.rules:
            if rule.triggered(list(self.samples)):
                raise Interrupt("emergency", f"emergency trigger: {rule.text}")
        self.db.check(now)
        return promoted

    def _latency(self, now: float, f: Figures) -> None:
        e = self.ctx.cfg.emergency
        g, b = f.green.p99, f.blue.p99
        slow = (g is not None and b is not None and f.green.requests >= 20
                and f.blue.requests >= 20 and g > e.p99_ratio * max(b, 1.0))
        if not slow:
            self.slow_since = None
            return
        self.slow_since = self.slow_since or now
        if now - self.slow_since >= self.ctx.secs(e.p99_for):
            raise Interrupt("emergency", f"emergency trigger: green p99 {g:.0f} ms over "
                                         f"{e.p99_ratio:g}x blue's {b:.0f} ms for "
                                         f"{self.ctx.secs(e.p99_for):g}s")

    def _commands(self) -> str | None:
        j = self.ctx.journal
        promoted = None
        for cmd in j.pending():
            if cmd.verb == "pause":
                self.paused = True
                j.set(paused=True)
                j.handled(cmd, "paused: the weight holds, checks keep running")
                self.ctx.event("operator", "paused", f"paused by {cmd.actor}", notify=True)
            elif cmd.verb == "resume":
                self.paused = False
                j.set(paused=False)
                j.handled(cmd, "resumed")
                self.ctx.event("operator", "resumed", f"resumed by {cmd.actor}")
            elif cmd.verb == "promote":
                promoted = "promote"
                j.handled(cmd, "promoted")
                self.ctx.event("operator", "promoted", f"promoted by {cmd.actor}" +
                               (f": {cmd.reason}" if cmd.reason else ""))
            elif cmd.verb in ("abort", "rollback"):
                j.handled(cmd, f"{cmd.verb} started")
                raise Interrupt(cmd.verb, f"{cmd.verb} requested by {cmd.actor}" +
                                (f": {cmd.reason}" if cmd.reason else ""), cmd.actor)
            else:
                j.handled(cmd, f"unknown verb {cmd.verb!r} ignored")
        return promoted

    # -- waits ----------------------------------------------------------------------------------

    def wait(self, seconds: float, *, until_promoted: bool = False) -> str:
        """Wait ``seconds`` of unpaused time (forever with ``until_promoted``), ticking.

        ``"promoted"`` when an operator promoted, else ``"elapsed"``.
        """
        left = seconds
        last = time.monotonic()
        while until_promoted or left > 0 or self.paused:
            if self.tick() == "promote":
                if self.paused:
                    self.paused = False
                    self.ctx.journal.set(paused=False)
                return "promoted"
            time.sleep(self.interval if until_promoted else
                       min(self.interval, max(left, 0.0)) or self.interval)
            now = time.monotonic()
            if not self.paused:
                left -= now - last
            last = now
        return "elapsed"
