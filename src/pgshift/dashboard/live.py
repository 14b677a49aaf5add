"""The dashboard's view of a running rollout, sampled from the engine's own readers.

A :class:`Sampler` thread opens the journal read-only (``Journal.read_only``), calls
``pgshift.rollout.verbs.status`` (the same live view as ``pgshift status``) every
interval, adds a short-window reading of the router for the blue/green charts, the next
decision with its countdown, and the audit trail (``pgshift.report.facts.read_audit``),
and publishes the result as one JSON-ready dict. Nothing here writes to the state
directory; the operator verbs are the server's business (``server.py``).

No text reaches the page unredacted (decision reasons, notes and errors are stored as
written, and may quote a DSN): ``verbs.status`` and ``read_audit`` return their texts
through ``pgshift.dsn.redact``, and an error of the sampler's own is redacted here.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgshift.dsn import redact
from pgshift.errors import PgshiftError
from pgshift.report.facts import Event, parse_ts, read_audit
from pgshift.report.traffic import SIDES, Traffic, quantile
from pgshift.rollout import config as cfgmod
from pgshift.rollout.context import Context
from pgshift.rollout.journal import Journal
from pgshift.rollout.procs import Supervisor
from pgshift.rollout.verbs import status
from pgshift.state import StateDir
from pgshift.traffic.router import Side

CHART_POINTS = 600  # ten minutes at the default one-second interval
AUDIT_ROWS = 60
# What the audit trail on the page shows: decisions, operator commands, notes, approvals,
# and the events that explain a change of weight. Hooks, checks and step bookkeeping stay
# in audit.jsonl and the report.
AUDIT_KINDS = frozenset({
    "decision", "command", "command-handled", "note", "approval", "weight", "paused",
    "resumed", "promoted", "waiting", "extend", "aborted", "rollback-started", "rolled-back",
    "re-advanced", "takeover", "journal-broken", "late-blue-writes", "rehearsed"})
FINAL = {"done": "the rollout is complete", "rolled_back": "rolled back: traffic is on blue",
         "aborted": "aborted: traffic is on the system of record",
         "failed": "stopped on a failed step: `pgshift rollout CUTOVER --resume` retries it"}


@dataclass
class Snapshot:
    """One published reading; ``seq`` grows by one with every reading."""

    seq: int
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The reading as JSON-ready data, with its sequence number."""
        return {"seq": self.seq, **self.data}


def side_figures(side: dict[str, Any] | None) -> dict[str, Any] | None:
    """The few figures per side the page shows, from ``BackendFigures.to_dict()``."""
    if not side:
        return None
    return {k: side.get(k) for k in ("requests", "errors", "error_rate", "p50_ms", "p99_ms")}


def audit_rows(events: list[Event], limit: int = AUDIT_ROWS) -> list[dict[str, Any]]:
    """The page's audit trail, newest first (``read_audit`` redacted the texts)."""
    rows = [{"ts": e.ts, "step": e.step, "kind": e.kind, "message": e.message,
             "actor": e.actor} for e in events
            if e.kind in AUDIT_KINDS or (e.kind, e.step) == ("done", "rollout")]
    return rows[::-1][:limit]


def next_decision(st: dict[str, Any], journal: Journal | None, cfg: cfgmod.Cutover,
                  now: float) -> dict[str, Any]:
    """What the engine decides next and when (an estimate: a pause in the middle of a bake
    moves the real moment later by the time paused)."""
    state = st.get("status")
    phase = st.get("phase") or ""
    if state in FINAL:
        return {"what": FINAL[state], "at": None}
    if state in (None, "not started"):
        return {"what": "no rollout yet: `pgshift rollout CUTOVER` starts one", "at": None}
    if st.get("waiting_for"):
        return {"what": f"held for an operator ({st.get('waiting_reason')}): promote to go "
                        "on, rollback to go back", "at": None}
    if st.get("paused"):
        return {"what": f"paused at {st.get('weight')} %: the bake clock is stopped; "
                        "resume or promote", "at": None}
    if phase.startswith("shift-") and journal is not None:
        step = next((s for s in cfg.shift.steps if f"shift-{s.weight:g}" == phase), None)
        if step is None:
            return {"what": f"{phase} running", "at": None}
        started = [parse_ts(s["started_at"]) for s in journal.steps() if s["name"] == phase]
        decided = [parse_ts(d["ts"]) for d in journal.decisions() if d["step"] == phase]
        since = max([t for t in [*started[-1:], *decided] if t is not None], default=None)
        if since is None:
            return {"what": f"{phase} starting", "at": None}
        return {"what": f"analysis of the {step.weight:g} % step (pass, extend or roll back)",
                "at": since + cfg.seconds(step.bake)}
    if phase == "monitor" and st.get("monitor_started"):
        if st.get("rehearsal"):
            return {"what": "the rehearsal's monitoring ends; then the swap back to blue",
                    "at": float(st["monitor_started"]) + cfg.seconds(cfg.rehearsal.monitor)}
        return {"what": "the monitoring window ends; then approvals and finalize",
                "at": float(st["monitor_started"]) + cfg.seconds(cfg.monitor.window)}
    return {"what": f"{phase or 'the rollout'} running; traffic moves at the shift steps",
            "at": None}


class Sampler:
    """Reads the rollout's state every ``interval`` seconds in a thread of its own (the
    journal connection is not shared across threads) and keeps the latest snapshot."""

    def __init__(self, cutover: Path, *, interval: float = 1.0,
                 chart_window: float | None = None) -> None:
        self.cutover = cutover
        self.cfg, base = cfgmod.load(cutover)
        self.state = StateDir.for_name(base, self.cfg.name)
        self.interval = max(0.1, interval)
        # long enough for a few requests per side at low traffic, short enough to move
        self.chart_window = chart_window or max(5.0, 3 * self.interval)
        self.points: deque[dict[str, Any]] = deque(maxlen=CHART_POINTS)
        self._snapshot = Snapshot(0, {"cutover": self.cfg.name, "status": "not started"})
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._kick = threading.Event()  # sample now (``refresh``) or stop
        self._thread: threading.Thread | None = None
        self._ctx: Context | None = None
        self._audit: tuple[int, list[Event]] = (-1, [])
        self._seeded = False  # chart points taken from the journal's series

    # -- the thread ----------------------------------------------------------------------------

    def start(self, first_within: float = 30.0) -> Sampler:
        """Sample in a thread of its own; returns once the first reading is published
        (the first page already has data)."""
        self._thread = threading.Thread(target=self._run, name="pgshift-dashboard-sampler",
                                        daemon=True)
        self._thread.start()
        self.wait_newer(0, first_within)
        return self

    def stop(self) -> None:
        """Ask the thread to stop; it closes its own journal connection."""
        self._stop.set()
        self._kick.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def refresh(self, timeout: float) -> Snapshot:
        """Take a reading now (not at the next interval) and return it, or the latest one
        after ``timeout``."""
        seq = self.latest().seq
        self._kick.set()
        return self.wait_newer(seq, timeout)

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stop.is_set()

    def _run(self) -> None:
        try:
            self.sample()
            while True:
                self._kick.wait(self.interval)
                self._kick.clear()
                if self._stop.is_set():
                    break
                self.sample()
        finally:
            self._close()

    def _close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None

    def latest(self) -> Snapshot:
        """The newest published reading."""
        with self._cond:
            return self._snapshot

    def wait_newer(self, seq: int, timeout: float) -> Snapshot:
        """The first snapshot after ``seq`` (or the latest one after ``timeout``)."""
        with self._cond:
            self._cond.wait_for(lambda: self._snapshot.seq > seq or self._stop.is_set(),
                                timeout=timeout)
            return self._snapshot

    # -- one reading ---------------------------------------------------------------------------

    def _context(self) -> Context | None:
        if self._ctx is None and self.state.journal.exists():
            try:
                journal = Journal.read_only(self.state)
            except PgshiftError:
                return None  # the engine is creating it: next tick
            self._ctx = Context(self.cfg, self.cutover, self.state, journal,
                                Supervisor(self.state.root), say=lambda _: None)
        return self._ctx

    def sample(self) -> Snapshot:
        """Take one reading and publish it (in the sampler's thread: the journal connection
        belongs to it)."""
        now = time.time()
        try:
            data = self._read(now)
        except Exception as exc:  # a reading that fails is shown, never fatal to the page
            self._close()
            data = {"cutover": self.cfg.name, "status": "unreadable",
                    "error": redact(f"{type(exc).__name__}: {exc}")}
        data["updated"] = now
        with self._cond:
            self._snapshot = Snapshot(self._snapshot.seq + 1, data)
            self._cond.notify_all()
            return self._snapshot

    def _read(self, now: float) -> dict[str, Any]:
        ctx = self._context()
        base = {"cutover": self.cfg.name, "interval": self.interval,
                "chart_window_s": self.chart_window}
        if ctx is None:
            return {**base, "status": "not started", "points": list(self.points),
                    "audit": audit_rows(self._events()),
                    "next": _countdown(next_decision({}, None, self.cfg, now), now)}
        poll = getattr(ctx.router, "sample", None)
        if callable(poll):  # routers that count by polling (HAProxy) need a reading per tick
            with contextlib.suppress(PgshiftError):
                poll()
        if not self._seeded:
            # a page opened mid-rollout: the journal's series fills the charts' past (once;
            # a journal without a series, from an older version, leaves them to fill live)
            self._seeded = True
            with contextlib.suppress(PgshiftError, sqlite3.Error):
                self.points.extend(history_points(
                    ctx.journal.samples(), now - CHART_POINTS * self.interval,
                    self.chart_window)[-(CHART_POINTS - 1):])
        st = status(ctx)
        st["monitor_started"] = ctx.journal.get("monitor_started")
        point = self._point(ctx, st, now)
        self.points.append(point)
        router = st.get("router") or {}
        fig = router.get("figures") or {}
        rb = st.get("last_rollback") or {}
        nxt = next_decision(st, ctx.journal, self.cfg, now)
        lease = st.get("controller") or {}
        if "error" in router:
            # a fresh context next time: the router (and its token) is looked up again once
            # the engine has started it
            self._close()
        return {
            **base, "status": st["status"], "phase": st.get("phase"),
            "weight": st.get("weight"), "router_weight": router.get("weight"),
            "router_error": router.get("error"),
            "system_of_record": st.get("system_of_record"), "paused": st.get("paused"),
            "waiting_for": st.get("waiting_for"),
            "waiting_reason": st.get("waiting_reason") or None,
            "controller": {"alive": bool(lease.get("alive")), "pid": lease.get("pid")},
            "figures": {"window_s": fig.get("window"), "blue": side_figures(fig.get("blue")),
                        "green": side_figures(fig.get("green"))} if fig else None,
            "sync": _sync(st.get("sync")),
            "next": _countdown(nxt, now),
            "steps": st.get("steps") or [],
            "last_rollback": {k: rb.get(k) for k in ("traffic_back_ms", "seconds",
                                                     "after_flip", "drill")} if rb else None,
            "stranded": bool(rb.get("stranded")) if rb else False,
            "approvals": {role: {"actor": a["actor"], "ts": a["ts"]}
                          for role, a in (st.get("approvals") or {}).items()},
            "required_approvals": st.get("required_approvals") or [],
            "points": list(self.points), "audit": audit_rows(self._events()),
        }

    def _point(self, ctx: Context, st: dict[str, Any], now: float) -> dict[str, Any]:
        """One chart point: weight, error rate and latency per side over the chart window,
        sync lag."""
        point: dict[str, Any] = {"t": round(now, 3), "weight": st.get("weight")}
        try:
            f = ctx.router.figures(self.chart_window)
        except PgshiftError:
            f = None
        sides: tuple[Side, Side] = ("blue", "green")
        for side in sides:
            b = f.side(side) if f is not None else None
            point[f"{side}_err"] = b.error_rate if b is not None else None
            point[f"{side}_p50"] = b.p50 if b is not None else None
            point[f"{side}_p99"] = b.p99 if b is not None else None
            point[f"{side}_n"] = b.requests if b is not None else 0
        sync = st.get("sync") or {}
        point["lag_ms"] = sync.get("to_sqlite_lag_ms") if st.get("system_of_record") == \
            "green" else sync.get("lag_ms")
        return point

    def _events(self) -> list[Event]:
        """``audit.jsonl``, read again only when it grew (it is append-only)."""
        path = self.state.audit_log
        size = path.stat().st_size if path.exists() else 0
        if size != self._audit[0]:
            self._audit = (size, read_audit(path))
        return self._audit[1]


def history_points(rows: list[tuple[float, dict[str, Any]]], since: float,
                   window: float) -> list[dict[str, Any]]:
    """Chart points from the journal's traffic series (``rollout.series``) after
    ``since``: what a page opened mid-rollout shows before its own readings. Each point
    holds the counts of the trailing ``window`` seconds, as a live point holds the
    router's figures over the chart window."""
    spans = Traffic(rows).spans()
    sor = {ts: r.get("sor") for ts, r in rows}
    out: list[dict[str, Any]] = []
    lo = 0  # the first span of the trailing window (spans are in time order)
    for i, sp in enumerate(spans):
        if sp.t1 < since:
            continue
        while lo < i and spans[lo].t1 <= sp.t1 - window:
            lo += 1
        trail = spans[lo:i + 1]
        point: dict[str, Any] = {"t": round(sp.t1, 3), "weight": sp.weight}
        for side in SIDES:
            counts = [sum(col) for col in zip(*(x.side(side) for x in trail), strict=True)]
            n = counts[0] if counts else 0
            point[f"{side}_err"] = counts[1] / n if n else None
            point[f"{side}_p50"] = quantile(counts, 0.5) if n else None
            point[f"{side}_p99"] = quantile(counts, 0.99) if n else None
            point[f"{side}_n"] = n
        point["lag_ms"] = sp.to_sqlite_lag_ms if sor.get(sp.t1) == "green" else sp.lag_ms
        out.append(point)
    return out


def _countdown(nxt: dict[str, Any], now: float) -> dict[str, Any]:
    at = nxt.get("at")
    return {**nxt, "seconds_left": None if at is None else round(max(0.0, at - now), 1)}


def _sync(s: dict[str, Any] | None) -> dict[str, Any] | None:
    if not s:
        return None
    if "error" in s:
        return {"error": str(s["error"])}
    return {k: s.get(k) for k in ("lag_ms", "pending", "to_sqlite_lag_ms",
                                  "to_sqlite_pending", "conflicts", "parked")}
