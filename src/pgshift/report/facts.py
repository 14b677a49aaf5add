"""What a rollout recorded, read back from its state directory into :class:`ReportFacts`.

The sources are the engine's own (``pgshift.rollout.journal``): ``journal.sqlite``
(``kv`` state such as ``shift_results``, ``drill``, ``last_rollback``, ``fence_hold_ms``,
``final_sync``; the ``steps``, ``decisions``, ``commands``, ``approvals`` and ``samples``
(the traffic time series, ``pgshift.rollout.series``) tables) and
``audit.jsonl`` (one event per line). Nothing here runs a rollout or writes to the state
directory: the journal is opened read-only, so a report can be made while the engine runs.
"""

from __future__ import annotations

import calendar
import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pgshift.dsn import redact, redact_all
from pgshift.errors import SourceError, UsageError
from pgshift.report.traffic import Traffic
from pgshift.state import StateDir


@dataclass(frozen=True)
class Event:
    """One line of ``audit.jsonl``."""

    ts: str
    step: str
    kind: str
    message: str
    figures: dict[str, Any]
    actor: str

    @property
    def epoch(self) -> float | None:
        return parse_ts(self.ts)


@dataclass(frozen=True)
class StepRun:
    """One row of the journal's ``steps`` table (a phase may run more than once)."""

    name: str
    status: str
    started_at: str
    finished_at: str | None
    figures: dict[str, Any]

    @property
    def seconds(self) -> float | None:
        if isinstance(self.figures.get("seconds"), (int, float)):
            return float(self.figures["seconds"])
        a, b = parse_ts(self.started_at), parse_ts(self.finished_at)
        return round(b - a, 3) if a is not None and b is not None else None


@dataclass(frozen=True)
class Decision:
    ts: str
    step: str
    decision: str
    reason: str


@dataclass(frozen=True)
class WeightPoint:
    """Green's traffic weight from ``ts`` on, and what set it."""

    ts: str
    weight: float
    why: str


@dataclass(frozen=True)
class Setup:
    """The few facts of the cutover file the report states (how, not what happened)."""

    cutover: str
    router: str
    fence_mode: str
    planned_weights: list[float]
    drill_configured: bool
    rollback_drain_deadline_s: float
    monitor_window_s: float
    monitor_interval_s: float
    approvals_required: list[str]
    # what the operational documents name (all from the cutover file, no secret in them:
    # the config refuses a target DSN with a password)
    sqlite: str = ""
    target_dsn: str = ""
    blue_url: str = ""
    green_url: str = ""
    stop_blue: str | None = None
    stop_blue_workers: str | None = None
    archive_dest: str | None = None
    remove_capture: bool = True


@dataclass(frozen=True)
class ReportFacts:
    """Everything the deployment report states, as recorded; ``None`` = not recorded."""

    name: str
    state_dir: str
    setup: Setup
    status: str | None
    phase: str | None
    run_started: float | None
    finished: float | None
    steps: list[StepRun]
    decisions: list[Decision]
    shift_results: list[dict[str, Any]]
    weights: list[WeightPoint]
    events: list[Event]
    approvals: dict[str, dict[str, str]]
    commands: list[dict[str, Any]]
    drill: dict[str, Any] | None
    last_rollback: dict[str, Any] | None
    fence_hold_ms: float | None
    final_sync: dict[str, Any] | None
    kv: dict[str, Any] = field(default_factory=dict)
    # the traffic time series: (epoch, row) with cumulative counters per backend
    samples: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- derived views -------------------------------------------------------------------

    def step(self, name: str) -> StepRun | None:
        """The last *done* run of a phase, else its last run of any status."""
        runs = [s for s in self.steps if s.name == name]
        done = [s for s in runs if s.status == "done"]
        pick = done or runs
        return pick[-1] if pick else None

    def finalize_figures(self) -> dict[str, Any] | None:
        """What finalize did: its figures once done; while it runs (the report it writes
        as its last act) what it recorded before writing it; None before it started."""
        s = self.step("finalize")
        if s is not None and s.status == "done":
            return s.figures
        if s is not None and s.status == "started":
            progress = self.kv.get("finalize_progress")
            return progress if isinstance(progress, dict) else None
        return None

    def of_kind(self, *kinds: str) -> list[Event]:
        return [e for e in self.events if e.kind in kinds]

    @property
    def notes(self) -> list[Event]:
        return self.of_kind("note")

    @property
    def traffic(self) -> Traffic:
        """The router's time series (empty when the engine recorded none)."""
        return Traffic(self.samples)

    def router_checks_until(self, until: float) -> int:
        """pgshift's own requests through the router up to ``until``: the ``GET /path``
        critical-path checks (the router counts them; the clients' totals do not)."""
        return sum(1 for e in self.of_kind("critical-path")
                   if e.figures.get("url") and (e.epoch or 0) <= until)

    @property
    def monitor_rounds(self) -> list[Event]:
        return [e for e in self.events if e.step == "monitor" and e.kind == "check"]

    @property
    def first_ts(self) -> float | None:
        times = [t for t in (parse_ts(s.started_at) for s in self.steps) if t is not None]
        return self.run_started or (min(times) if times else None)

    @property
    def last_ts(self) -> float | None:
        times = [t for t in (e.epoch for e in self.events) if t is not None]
        return self.finished or (max(times) if times else None)


def parse_ts(ts: str | None) -> float | None:
    """``2026-12-04T19:33:53.123Z`` (pgshift.state's format) to epoch seconds."""
    if not ts:
        return None
    try:
        whole, _, frac = ts.rstrip("Z").partition(".")
        base = calendar.timegm(_strptime(whole))
        return base + (int(frac) / 10 ** len(frac) if frac.isdigit() else 0.0)
    except ValueError:
        return None


def _strptime(text: str) -> Any:
    import time

    return time.strptime(text, "%Y-%m-%dT%H:%M:%S")


def read_audit(path: Path) -> list[Event]:
    """Every well-formed event of ``audit.jsonl``; a torn last line (a crash mid-write)
    is skipped, not fatal."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(e, dict):
            # messages, figures and actors are free text that may quote a DSN
            out.append(Event(str(e.get("ts", "")), str(e.get("step", "")),
                             str(e.get("kind", "")), redact(str(e.get("message", ""))),
                             redact_all(dict(e.get("figures") or {})),
                             redact(str(e.get("actor", "")))))
    return out


def _rows(con: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:  # a table the engine has not created yet
        return []


def weight_timeline(events: list[Event]) -> list[WeightPoint]:
    """Green's weight over time from the audit trail: set by each shift step, 0 when a
    rollback (or drill) moves traffic back, the step's weight again after a drill, the
    system of record's weight after an abort."""
    out: list[WeightPoint] = []
    last_step = 0.0  # the weight the last shift step set (a drill re-advances to it)
    for e in events:
        w: float | None = None
        if e.kind == "weight" and "weight" in e.figures:
            w = last_step = float(e.figures["weight"])
            why = e.step
        elif e.kind == "rollback-started":
            w, why = 0.0, "drill" if e.figures.get("drill") else "rollback"
        elif e.kind == "re-advanced":
            w, why = last_step, "re-advanced after the drill"
        elif e.kind == "aborted" and "weight" in e.figures:
            w, why = float(e.figures["weight"]), "abort"
        if w is not None:
            out.append(WeightPoint(e.ts, w, why))
    return out


def read_facts(state: StateDir, setup: Setup, name: str) -> ReportFacts:
    """Read a cutover's journal and audit trail. ``UsageError`` when there is no rollout."""
    if not state.journal.exists():
        raise UsageError(f"no rollout journal at {state.journal}",
                         hint=f"pgshift rollout {setup.cutover} (the report reads its journal)")
    try:
        con = sqlite3.connect(f"file:{state.journal}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        raise SourceError(f"cannot open the journal {state.journal}: {exc}") from exc
    # Every text read here may quote a DSN (a decision reason, a note, an error): the
    # report is a document people share, so each goes through redact on the way in.
    try:
        kv = {k: redact_all(json.loads(v)) for k, v in _rows(con, "SELECT key, value FROM kv")}
        steps = [StepRun(r[0], r[1], r[2], r[3], redact_all(json.loads(r[4] or "{}")))
                 for r in _rows(
            con, "SELECT name, status, started_at, finished_at, figures FROM steps ORDER BY id")]
        decisions = [Decision(r[0], r[1], r[2], redact(r[3] or "")) for r in _rows(
            con, "SELECT ts, step, decision, reason FROM decisions ORDER BY id")]
        approvals = {r[0]: redact_all({"actor": r[1], "ts": r[2], "note": r[3]}) for r in _rows(
            con, "SELECT role, actor, ts, note FROM approvals ORDER BY ts")}
        commands = [redact_all({"ts": r[0], "verb": r[1], "actor": r[2], "reason": r[3],
                                "handled_at": r[4], "outcome": r[5]}) for r in _rows(
            con, "SELECT ts, verb, actor, reason, handled_at, outcome FROM commands "
                 "ORDER BY id")]
        samples = [(float(r[0]), json.loads(r[1])) for r in _rows(
            con, "SELECT ts, data FROM samples ORDER BY id")]
    except sqlite3.DatabaseError as exc:
        raise SourceError(f"the journal {state.journal} is unreadable: {exc}") from exc
    finally:
        con.close()
    events = read_audit(state.audit_log)
    return ReportFacts(
        name=name, state_dir=str(state.root), setup=setup, status=kv.get("status"),
        phase=kv.get("phase"), run_started=kv.get("run_started"), finished=kv.get("finished"),
        steps=steps, decisions=decisions, shift_results=list(kv.get("shift_results") or []),
        weights=weight_timeline(events), events=events, approvals=approvals,
        commands=commands, drill=kv.get("drill"), last_rollback=kv.get("last_rollback"),
        fence_hold_ms=kv.get("fence_hold_ms"), final_sync=kv.get("final_sync"), kv=kv,
        samples=samples)
