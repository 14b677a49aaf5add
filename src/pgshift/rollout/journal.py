"""The rollout journal: durable state, the controller's lease, operator commands, approvals.

``journal.sqlite`` in the cutover's state directory (``.pgshift/<name>/``), WAL mode with
``synchronous=FULL``: a transition is on disk before the engine acts on it. Tables:

- ``lease``: one row. ``epoch`` grows by one each time a controller takes over; every
  write of the engine's state is made *with* its epoch and refused when the lease moved
  on (a stale controller that wakes up cannot act: Argo Rollouts #2117).
- ``kv``: the engine's state (phase, step, weight, system of record, flip stage, ...),
  JSON values.
- ``steps`` / ``decisions``: what ran, with its figures; every decision with its reason.
- ``commands``: operator verbs (pause, resume, promote, abort, rollback) queued by other
  processes and handled by the engine, each recorded with who, when and the outcome.
- ``approvals``: who approved which role, and when (``pgshift approve --as ROLE``).
- ``samples``: the traffic time series (``pgshift.rollout.series``): one row per sample
  interval with cumulative per-backend counters, thinned to at most ``MAX_SAMPLES`` rows.

Every row is also an event in ``audit.jsonl`` (the report's raw material).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from pgshift.errors import LockedError, PgshiftError, SourceError
from pgshift.state import StateDir, _actor, _now_iso

LEASE_TTL = 30.0  # seconds without a heartbeat after which a lease counts as abandoned

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL,
    pid INTEGER,
    host TEXT,
    heartbeat REAL
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    verb TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '{}',
    actor TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    handled_at TEXT,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS approvals (
    role TEXT PRIMARY KEY,
    actor TEXT NOT NULL,
    ts TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    data TEXT NOT NULL
);
"""

# The samples table's cap: past it every other row (first and last kept) is dropped, so a
# 48 h monitoring window at one row a second ends near 64 s a row, ~2,900 rows (~2 MB).
MAX_SAMPLES = 2880

VERBS = ("pause", "resume", "promote", "abort", "rollback")


class StaleEpoch(PgshiftError):
    """Another controller took the lease: this one must not act any more."""

    exit_code = LockedError.exit_code


@dataclass(frozen=True)
class Command:
    id: int
    ts: str
    verb: str
    args: dict[str, Any]
    actor: str
    reason: str
    handled_at: str | None
    outcome: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


CHAOS_ENV = "PGSHIFT_CHAOS_KILL_AT"


def _chaos(values: dict[str, Any]) -> None:
    """Chaos testing of the controller: ``PGSHIFT_CHAOS_KILL_AT=flip_stage=held`` kills
    this process (SIGKILL, no cleanup) right after that state is journaled, so tests can
    kill the engine at any state boundary and prove ``--resume`` reconciles."""
    spec = os.environ.get(CHAOS_ENV)
    if not spec:
        return
    key, _, want = spec.partition("=")
    if key in values and str(values[key]) == want:
        os.kill(os.getpid(), signal.SIGKILL)


class Journal:
    """One connection to a cutover's journal. Not shared across threads."""

    def __init__(self, state: StateDir) -> None:
        self.dir = state
        state.ensure()
        try:
            self._con = sqlite3.connect(state.journal, isolation_level=None, timeout=10.0)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            # the steps/decisions tables are the state directory's own (pgshift.state)
            with state.journal_db():
                pass
            self._con.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise SourceError(f"the journal {state.journal} is unreadable: {exc}",
                              hint="`pgshift rollback CUTOVER --force` works without it; move "
                                   "the file aside to start a new journal") from exc
        self.epoch: int | None = None

    @classmethod
    def read_only(cls, state: StateDir) -> Journal:
        """A reader's connection (``mode=ro``): watchers such as the dashboard read the
        engine's state while it runs without creating, migrating or locking anything. The
        readers work; every writer fails. ``SourceError`` when there is no readable journal."""
        from urllib.parse import quote

        self = cls.__new__(cls)
        self.dir, self.epoch = state, None
        con: sqlite3.Connection | None = None
        try:
            con = sqlite3.connect(f"file:{quote(str(state.journal))}?mode=ro", uri=True,
                                  isolation_level=None, timeout=10.0)
            con.execute("SELECT count(*) FROM kv").fetchone()
        except sqlite3.DatabaseError as exc:
            if con is not None:
                con.close()
            raise SourceError(f"the journal {state.journal} cannot be read: {exc}",
                              hint="pgshift status CUTOVER") from exc
        self._con = con
        return self

    def close(self) -> None:
        self._con.close()

    # -- the lease -------------------------------------------------------------------------

    def lease(self) -> dict[str, Any]:
        row = self._con.execute("SELECT epoch, pid, host, heartbeat FROM lease").fetchone()
        if row is None:
            return {"epoch": 0, "pid": None, "host": None, "heartbeat": None, "alive": False}
        epoch, pid, host, beat = row
        alive = (host == socket.gethostname() and _alive(pid) and beat is not None
                 and time.time() - beat < LEASE_TTL)
        return {"epoch": epoch, "pid": pid, "host": host, "heartbeat": beat, "alive": alive}

    def acquire(self, *, force: bool = False) -> int:
        """Take the lease (epoch + 1); ``LockedError`` while a live controller holds it,
        unless ``force`` (an emergency rollback past an engine that does not answer)."""
        self._con.execute("BEGIN IMMEDIATE")
        try:
            cur = self.lease()
            if cur["alive"] and cur["pid"] != os.getpid() and not force:
                raise LockedError(f"another rollout of this cutover is running (pid "
                                  f"{cur['pid']}, epoch {cur['epoch']})",
                                  hint="pgshift status CUTOVER; its verbs (pause, abort, "
                                       "rollback) reach the running engine")
            epoch = int(cur["epoch"]) + 1
            self._con.execute(
                "INSERT INTO lease (id, epoch, pid, host, heartbeat) VALUES (1, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, pid = excluded.pid, "
                "host = excluded.host, heartbeat = excluded.heartbeat",
                (epoch, os.getpid(), socket.gethostname(), time.time()))
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self.epoch = epoch
        return epoch

    def heartbeat(self) -> None:
        """Renew the lease; ``StaleEpoch`` when another controller took it."""
        cur = self._con.execute("UPDATE lease SET heartbeat = ? WHERE epoch = ? AND pid = ?",
                                (time.time(), self.epoch, os.getpid()))
        if cur.rowcount != 1:
            raise StaleEpoch(f"this controller's lease (epoch {self.epoch}) was taken over",
                             hint="pgshift status CUTOVER shows the controller in charge")

    def release(self) -> None:
        if self.epoch is not None:
            self._con.execute("UPDATE lease SET pid = NULL WHERE epoch = ?", (self.epoch,))

    # -- engine state ------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        row = self._con.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def dump(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._con.execute("SELECT key, value FROM kv")}

    def set(self, **values: Any) -> None:
        """Write state in one transaction, fenced by the epoch (``StaleEpoch`` if stale)."""
        self._con.execute("BEGIN IMMEDIATE")
        try:
            if self.epoch is not None:
                row = self._con.execute("SELECT epoch FROM lease").fetchone()
                if row is None or row[0] != self.epoch:
                    raise StaleEpoch(f"this controller's lease (epoch {self.epoch}) was "
                                     "taken over; it stops here")
            for key, value in values.items():
                self._con.execute(
                    "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                    "SET value = excluded.value", (key, json.dumps(value, default=str)))
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        _chaos(values)

    # -- steps and decisions -----------------------------------------------------------------

    def step_started(self, name: str) -> int:
        cur = self._con.execute("INSERT INTO steps (name, status, started_at) VALUES "
                                "(?, 'started', ?)", (name, _now_iso()))
        self.dir.audit(name, "step-started", f"{name} started", {"epoch": self.epoch})
        return int(cur.lastrowid or 0)

    def step_finished(self, step_id: int, name: str, status: str,
                      figures: dict[str, Any] | None = None, message: str = "") -> None:
        self._con.execute("UPDATE steps SET status = ?, finished_at = ?, figures = ? "
                          "WHERE id = ?", (status, _now_iso(),
                                           json.dumps(figures or {}, default=str), step_id))
        self.dir.audit(name, f"step-{status}", message or f"{name} {status}", figures or {})

    def steps(self) -> list[dict[str, Any]]:
        rows = self._con.execute("SELECT id, name, status, started_at, finished_at, figures "
                                 "FROM steps ORDER BY id").fetchall()
        return [{"id": r[0], "name": r[1], "status": r[2], "started_at": r[3],
                 "finished_at": r[4], "figures": json.loads(r[5])} for r in rows]

    def decide(self, step: str, decision: str, reason: str,
               figures: dict[str, Any] | None = None) -> None:
        self._con.execute("INSERT INTO decisions (ts, step, decision, reason) VALUES "
                          "(?, ?, ?, ?)", (_now_iso(), step, decision, reason))
        self.dir.audit(step, "decision", f"{decision}: {reason}",
                         {"decision": decision, **(figures or {})})

    def decisions(self) -> list[dict[str, Any]]:
        rows = self._con.execute("SELECT ts, step, decision, reason FROM decisions "
                                 "ORDER BY id").fetchall()
        return [{"ts": r[0], "step": r[1], "decision": r[2], "reason": r[3]} for r in rows]

    # -- operator commands -------------------------------------------------------------------

    def enqueue(self, verb: str, args: dict[str, Any] | None = None, *,
                actor: str | None = None, reason: str = "") -> int:
        cur = self._con.execute("INSERT INTO commands (ts, verb, args, actor, reason) VALUES "
                                "(?, ?, ?, ?, ?)", (_now_iso(), verb, json.dumps(args or {}),
                                                    actor or _actor(), reason))
        self.dir.audit("operator", "command", f"{verb} requested" +
                         (f": {reason}" if reason else ""), {"verb": verb, **(args or {})},
                         actor=actor)
        return int(cur.lastrowid or 0)

    def pending(self) -> list[Command]:
        rows = self._con.execute("SELECT id, ts, verb, args, actor, reason, handled_at, outcome "
                                 "FROM commands WHERE handled_at IS NULL ORDER BY id")
        return [Command(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7])
                for r in rows]

    def command(self, command_id: int) -> Command | None:
        r = self._con.execute("SELECT id, ts, verb, args, actor, reason, handled_at, outcome "
                              "FROM commands WHERE id = ?", (command_id,)).fetchone()
        return Command(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7]) if r else None

    def handled(self, cmd: Command, outcome: str) -> None:
        self._con.execute("UPDATE commands SET handled_at = ?, outcome = ? WHERE id = ?",
                          (_now_iso(), outcome, cmd.id))
        self.dir.audit("operator", "command-handled", f"{cmd.verb}: {outcome}",
                         {"verb": cmd.verb, "command": cmd.id}, actor=cmd.actor)

    # -- approvals -----------------------------------------------------------------------------

    def approve(self, role: str, *, actor: str | None = None, note: str = "") -> None:
        who = actor or _actor()
        self._con.execute("INSERT INTO approvals (role, actor, ts, note) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT (role) DO UPDATE SET actor = excluded.actor, "
                          "ts = excluded.ts, note = excluded.note",
                          (role, who, _now_iso(), note))
        self.dir.audit("approvals", "approval", f"{role} approved by {who}" +
                         (f": {note}" if note else ""), {"role": role}, actor=who)

    def approvals(self) -> dict[str, dict[str, str]]:
        return {r[0]: {"actor": r[1], "ts": r[2], "note": r[3]} for r in self._con.execute(
            "SELECT role, actor, ts, note FROM approvals ORDER BY role")}

    # -- the traffic time series ---------------------------------------------------------------

    def add_sample(self, ts: float, data: dict[str, Any]) -> bool:
        """Append one row of the time series; True when the table went past
        ``MAX_SAMPLES`` and was thinned (every other row dropped, first and last kept:
        the rows hold cumulative counters, so totals over any span stay exact)."""
        self._con.execute("INSERT INTO samples (ts, data) VALUES (?, ?)",
                          (ts, json.dumps(data, default=str)))
        (count,) = self._con.execute("SELECT count(*) FROM samples").fetchone()
        if count <= MAX_SAMPLES:
            return False
        ids = [r[0] for r in self._con.execute("SELECT id FROM samples ORDER BY id")]
        self._con.execute("BEGIN IMMEDIATE")  # one transaction (one fsync), not one per row
        try:
            self._con.executemany("DELETE FROM samples WHERE id = ?",
                                  [(i,) for i in ids[1:-1:2]])
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        return True

    def last_sample(self) -> tuple[float, dict[str, Any]] | None:
        row = self._con.execute("SELECT ts, data FROM samples ORDER BY id DESC LIMIT 1"
                                ).fetchone()
        return (float(row[0]), json.loads(row[1])) if row else None

    def samples(self) -> list[tuple[float, dict[str, Any]]]:
        return [(float(r[0]), json.loads(r[1])) for r in self._con.execute(
            "SELECT ts, data FROM samples ORDER BY id")]
