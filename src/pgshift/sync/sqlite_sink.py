"""PostgreSQL's changes into SQLite: a :class:`~pgshift.sync.source.ChangeSink`.

For after the flip (PostgreSQL is the system of record and blue takes no
writes), so that a rollback loses nothing. A batch is applied in one short SQLite
``BEGIN IMMEDIATE`` transaction with the echo-suppression flag set (the capture
triggers skip it). SQLite cannot commit PostgreSQL's queue or slot position with
its data, so the same transaction stores a *batch record* (the batch's ids, its
conflict decisions, parked changes, per-table counts) in ``_pgshift_state``; the
source's ack writes the record to PostgreSQL with the position, and after a crash
between the two, the source's ``recover`` finishes it from the record instead of
re-deciding conflicts against rows the batch already changed.

The applier's connection runs with ``foreign_keys`` off: PostgreSQL already
enforced them, and its cascades are captured as changes. Row statements are
:class:`~pgshift.sync.sqlite_table.SqliteTable`'s (mapped tables:
:class:`~pgshift.sync.mapped.MappedSqliteTable`); conflict decisions are
:func:`pgshift.sync.conflicts.decide`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgshift.copy.checkpoint import load_profile
from pgshift.copy.convert import Reject
from pgshift.errors import PgshiftError, UsageError
from pgshift.existing.verify_plan import PROFILE_MARK, is_into_existing
from pgshift.schema.names import refuse_shortened
from pgshift.schema.plan import build_plan
from pgshift.source.catalog import read_catalog
from pgshift.source.profile import profile_table, profiles_from_json
from pgshift.sync import conflicts, mapped, trim
from pgshift.sync import settings as cfg
from pgshift.sync import sqlite_capture as capture
from pgshift.sync import state as st
from pgshift.sync.common import (
    FENCE_OP,
    TO_SQLITE,
    PgSession,
    SyncOptions,
    SyncResult,
    effective_settings,
    open_sqlite,
    q,
    to_postgres_checkpoint,
    to_sqlite_error,
)
from pgshift.sync.loop import run_loop
from pgshift.sync.source import ChangeSource, Outcome
from pgshift.sync.sqlite_table import Context, PgChange, SqliteTable

STORED_KEY = "to_sqlite_batch"
TRUNCATE_REASON = "TRUNCATE is not carried to SQLite: empty the table in SQLite by hand"


def sqlite_tables(con: sqlite3.Connection, pg: psycopg.Connection,
                  opts: SyncOptions) -> dict[str, SqliteTable]:
    """The SQLite writers, keyed by the PostgreSQL table their changes are queued under
    (a schema loaded ``--into-existing``: the mapped target tables, :mod:`.mapped`)."""
    names = set(capture.installed(con))
    catalog = read_catalog(con)
    chosen = [t for t in catalog.tables if t.name in names]
    stored = load_profile(pg, opts.schema)
    pg.commit()
    if is_into_existing(stored):
        assert stored is not None
        return mapped.sqlite_tables(con, pg, opts.dsn, opts.schema,
                                    list(stored[PROFILE_MARK]["tables"]),
                                    [t.name for t in chosen])
    profiles = profiles_from_json(stored) if stored else {}
    for t in chosen:
        if t.name not in profiles:
            profiles[t.name] = profile_table(con, t)
    plan = build_plan(catalog, profiles, schema=opts.schema, tables=chosen)
    refuse_shortened(plan.tables, "sync")
    return {t.name: SqliteTable(t) for t in plan.tables}


def apply_batch(con: sqlite3.Connection, tables: dict[str, SqliteTable],
                batch: Sequence[PgChange], ctx: Context | None = None) -> dict[str, Any]:
    """One short SQLite write transaction, echo flag set; the batch record it stored.

    Per change, in a savepoint: conflict candidates are decided by the table's policy
    (:func:`pgshift.sync.conflicts.decide`); a change SQLite refuses, or whose values
    have no reverse conversion, is parked.
    """
    ctx = ctx or Context({}, "postgres", None)
    parked: list[dict[str, Any]] = []
    found: list[dict[str, Any]] = []
    applied: dict[str, int] = {}
    con.execute("pragma foreign_keys = off")
    con.execute("BEGIN IMMEDIATE")
    try:
        con.execute(f"UPDATE {q(capture.STATE_TABLE)} SET v = '1' WHERE k = 'applying'")
        for ch in batch:
            if ch.op == FENCE_OP:
                continue  # a fence marker (pgshift sync drain): nothing to apply, only to pass
            if ch.op == "T":
                parked.append(parked_record(ch, TRUNCATE_REASON))
                continue
            t = tables.get(ch.table)
            if t is None:
                parked.append(parked_record(ch, f"table {ch.table} is not captured in SQLite"))
                continue
            try:
                t.check_shape(ch)
                con.execute("SAVEPOINT change")
                records, apply = conflicts.decide(con, t, ch, ctx)
                if apply:
                    t.apply(con, ch)
                    applied[t.table.name] = applied.get(t.table.name, 0) + 1
                con.execute("RELEASE change")
                found += records
            except (Reject, sqlite3.IntegrityError) as exc:
                con.execute("ROLLBACK TO change")
                con.execute("RELEASE change")
                parked.append(parked_record(ch, str(exc)))
        con.execute(f"UPDATE {q(capture.STATE_TABLE)} SET v = '0' WHERE k = 'applying'")
        stored = {"ids": [ch.id for ch in batch], "conflicts": found, "parked": parked,
                  "applied": applied}
        con.execute(f"INSERT OR REPLACE INTO {q(capture.STATE_TABLE)} VALUES (?, ?)",
                    (STORED_KEY, json.dumps(stored)))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return stored


def parked_record(ch: PgChange, reason: str) -> dict[str, Any]:
    return {"id": ch.id, "table": ch.table, "op": ch.op, "key_old": json.dumps(ch.key_old),
            "key_new": json.dumps(ch.key_new), "row": json.dumps(ch.row), "reason": reason}


def stored_record(con: sqlite3.Connection) -> dict[str, Any] | None:
    """The batch record the last SQLite batch committed (None before the first)."""
    row = con.execute(f"SELECT v FROM {q(capture.STATE_TABLE)} WHERE k = ?",
                      (STORED_KEY,)).fetchone()
    return json.loads(row[0]) if row is not None and row[0] else None


def outcome_of(stored: dict[str, Any]) -> Outcome:
    return Outcome(int(stored["ids"][-1]), sum(stored["applied"].values()),
                   len(stored["parked"]), len(stored["conflicts"]), stored)


def record_batch(pg: psycopg.Connection, schema: str, stored: dict[str, Any], *,
                 dequeue: bool = True) -> None:
    """The PostgreSQL step of a batch, one transaction: its conflicts, parked changes,
    per-table counters and (``dequeue``) the queue delete of its ids."""
    with pg.transaction():
        for rec in stored["conflicts"]:
            pg.execute(
                "INSERT INTO pgshift.sync_conflicts (target_schema, direction, seq, "
                "table_name, op, key, policy, winner, winner_image, loser_image, reason, "
                "rule, sqlite_ts, postgres_ts, loser_origin, loser_change) VALUES (%s, %s, "
                "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (schema, TO_SQLITE, rec["seq"], rec["table"], rec["op"], rec["key"],
                 rec["policy"], rec["winner"], rec["winner_image"],
                 Jsonb(rec["loser_image"]) if rec["loser_image"] is not None else None,
                 rec["reason"], rec["rule"], rec["sqlite_ts"], rec["postgres_ts"],
                 rec["loser_origin"], rec["loser_change"]))
        for p in stored["parked"]:
            pg.execute(
                "INSERT INTO pgshift.sync_parked (target_schema, direction, seq, "
                "table_name, op, key_old, key_new, row_image, reason) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (schema, TO_SQLITE, p["id"], p["table"], p["op"], p["key_old"],
                 p["key_new"], p["row"], p["reason"]))
        for table, n in sorted(stored["applied"].items()):  # sorted: no lock-order deadlock
            pg.execute("UPDATE pgshift.sync_tables SET applied_to_sqlite = applied_to_sqlite "
                       "+ %s WHERE target_schema = %s AND table_name = %s",
                       (n, schema, table))
        if dequeue:
            pg.execute("DELETE FROM pgshift.pg_changes WHERE id = ANY(%s)", (stored["ids"],))


class SqliteSink:
    """PostgreSQL's changes into SQLite (plain or mapped tables)."""

    def __init__(self, con: sqlite3.Connection, session: PgSession, opts: SyncOptions
                 ) -> None:
        self.con = con
        self.session = session
        self.opts = opts
        pg = session.conn
        self.tables = sqlite_tables(con, pg, opts)
        # settings are the SQLite table's (a mapped target table's source table)
        sources = {name: t.table.name for name, t in self.tables.items()}
        by_source = effective_settings(pg, opts.schema, sorted(set(sources.values())),
                                       opts.settings)
        self.settings = {name: by_source[src] for name, src in sources.items()}

    def ensure(self) -> None:
        self.session.conn  # noqa: B018 - opens the session again after a failure

    def position(self) -> int | None:
        return None  # the source keeps it (queue deletes, slot advance)

    def paused(self) -> bool:
        return st.is_paused(self.session.conn, self.opts.schema)

    def last_record(self) -> dict[str, Any] | None:
        return stored_record(self.con)

    def context(self, *, checkpoint: bool = True) -> Context:
        """What conflicts are decided with: settings, the system of record, and blue's
        changes not carried yet (above the to-postgres checkpoint)."""
        return Context(self.settings, self.opts.sor or cfg.POSTGRES,
                       to_postgres_checkpoint(self.session.conn, self.opts.schema)
                       if checkpoint else None, self.opts.schema)

    def apply(self, batch: Sequence[PgChange], *, final: bool = True) -> Outcome:
        if all(ch.op == FENCE_OP for ch in batch):
            # markers only (a fence, transactions of echoes): nothing to write to SQLite
            return outcome_of({"ids": [ch.id for ch in batch], "conflicts": [], "parked": [],
                               "applied": {}})
        return outcome_of(apply_batch(self.con, self.tables, batch, self.context()))

    def reset(self, exc: BaseException) -> None:
        self.session.reset()

    def failed(self, exc: BaseException) -> PgshiftError:
        return to_sqlite_error(self.opts, exc)

    def finish(self, result: SyncResult) -> None:
        pass

    def close(self) -> None:
        for t in self.tables.values():
            t.close()


def run_into_sqlite(opts: SyncOptions,
                    make_source: Callable[[PgSession, set[str]], ChangeSource], *,
                    stop: threading.Event | None = None,
                    batch_lock: threading.Lock | None = None,
                    on_batch: Callable[[SyncResult], None] | None = None,
                    trim_log: bool = False) -> SyncResult:
    """The to-sqlite run over any source: ``make_source(session, tables)`` builds it on
    the shared PostgreSQL session, for the tables the sink writes.

    A drain (``until_seq``) waits for a busy file in short steps (retried with backoff,
    which watches ``stop``) rather than in one 10 s busy wait. ``trim_log`` (after the
    flip: this applier is SQLite's only writer) deletes applied change-log rows, one
    short batch after each batch applied (:mod:`pgshift.sync.trim`).
    """
    con = open_sqlite(opts.sqlite_path, readonly=False)
    if opts.until_seq is not None:
        con.execute("pragma busy_timeout = 500")
    session = PgSession(opts)
    sink: SqliteSink | None = None
    try:
        session.conn  # noqa: B018 - the direction's lock first: one applier at a time
        if not capture.installed(con):
            raise UsageError(f"capture is not installed in {opts.sqlite_path}",
                             hint=f"pgshift sync install {opts.sqlite_path} PG")
        sink = SqliteSink(con, session, opts)
        source = make_source(session, set(sink.tables))
        plan = trim.plan(con, session.conn, opts.schema) \
            if trim_log and opts.only_tables is None else None
        return run_loop(
            source, sink, opts, SyncResult(TO_SQLITE, 0, 0), stop=stop or threading.Event(),
            batch_lock=batch_lock,
            on_batch=(lambda result, _batch: on_batch(result)) if on_batch else None,
            trim=(lambda: trim.trim_batch(con, plan)) if plan is not None else None)
    except (sqlite3.OperationalError, psycopg.OperationalError) as exc:
        raise to_sqlite_error(opts, exc) from exc
    finally:
        if sink is not None:
            sink.close()
        session.close()
        con.close()
