"""The logical replication slot behind ``--pg-capture logical``: install, uninstall,
fence, lag and advance (:mod:`pgshift.sync.pg_logical` reads changes from it).

``install`` creates a slot with the built-in ``test_decoding`` plugin (shipped with
every PostgreSQL; ``pgoutput`` is binary and needs a publication) and sets
``REPLICA IDENTITY FULL`` on the captured tables, so that updates and deletes carry
the whole before-image conflict detection compares (the previous setting is stored
and restored by ``uninstall``). Needs ``wal_level = logical`` and a free slot; the
slot keeps WAL from being recycled until it is consumed.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

from pgshift.errors import UsageError
from pgshift.sync import locking, pg_capture

PLUGIN = "test_decoding"
MESSAGE_PREFIX = "pgshift"
STATE_SQL = """
CREATE SCHEMA IF NOT EXISTS pgshift;
CREATE TABLE IF NOT EXISTS pgshift.logical_capture (
    target_schema text PRIMARY KEY,
    slot text NOT NULL,
    replica_identity jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    recorded_lsn bigint NOT NULL DEFAULT 0
);
"""
# recorded_lsn: the end LSN of the last batch whose records (conflicts, parked, counters)
# are written. The slot advance cannot share their transaction, so a crash between the
# two must not write them twice (slots installed before it get the column on first use).
RECORDED_SQL = ("ALTER TABLE pgshift.logical_capture ADD COLUMN IF NOT EXISTS "
                "recorded_lsn bigint NOT NULL DEFAULT 0")
PEEK_OPTIONS = ("'include-xids', '0', 'skip-empty-xacts', '1', 'include-timestamp', '1'")


def slot_name(conn: psycopg.Connection, schema: str) -> str:
    """One slot per database and target schema (slot names are cluster-wide)."""
    db = conn.execute("SELECT current_database()").fetchone()
    digest = hashlib.sha256(f"{db[0] if db else ''}:{schema}".encode()).hexdigest()[:16]
    return f"pgshift_{digest}"


def _true(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> bool:
    row = conn.execute(query, params).fetchone()
    return bool(row and row[0])


def installed(conn: psycopg.Connection, schema: str) -> str | None:
    """The slot of ``schema``'s logical capture, or None. Leaves no transaction open
    that was not open before."""
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    row = None
    if _true(conn, "SELECT to_regclass('pgshift.logical_capture') IS NOT NULL"):
        row = conn.execute("SELECT slot FROM pgshift.logical_capture "
                           "WHERE target_schema = %s", (schema,)).fetchone()
    if idle:
        conn.commit()
    return str(row[0]) if row else None


def install(conn: psycopg.Connection, schema: str, tables: list[str]) -> dict[str, Any]:
    """Create the slot and set REPLICA IDENTITY FULL on ``tables`` (idempotent)."""
    level = conn.execute("SHOW wal_level").fetchone()
    conn.commit()
    if not level or level[0] != "logical":
        raise UsageError(
            f"logical capture needs wal_level = logical (the server has "
            f"{level[0] if level else '?'})",
            hint="set wal_level = logical and restart PostgreSQL, or use --pg-capture "
                 "triggers (no restart)")
    if pg_capture.installed(conn, schema):
        raise UsageError("trigger capture is installed on this schema; one PostgreSQL "
                         "capture at a time",
                         hint="pgshift sync uninstall SQLITE PG, then install again")
    conn.commit()
    slot = slot_name(conn, schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgshift.schema'))")
        conn.execute(STATE_SQL)
        # the to-sqlite applier's batch bookkeeping deletes from the queue table by id
        conn.execute(pg_capture.SCHEMA_SQL)
        previous = dict(conn.execute(
            "SELECT c.relname, c.relreplident FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)",
            (schema, tables)).fetchall())
        stored = conn.execute("SELECT replica_identity FROM pgshift.logical_capture "
                              "WHERE target_schema = %s", (schema,)).fetchone()
        if stored is not None:  # reinstall: keep what was there before the first install
            previous.update({k: v for k, v in stored[0].items()})
        for table in tables:
            conn.execute(pgsql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(
                pgsql.Identifier(schema, table)))
        conn.execute(
            "INSERT INTO pgshift.logical_capture (target_schema, slot, replica_identity) "
            "VALUES (%s, %s, %s) ON CONFLICT (target_schema) DO UPDATE SET "
            "replica_identity = EXCLUDED.replica_identity", (schema, slot, Jsonb(previous)))
    exists = conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                          (slot,)).fetchone()
    conn.commit()
    created = False
    if exists is None:
        # a slot cannot be created in a transaction that wrote: autocommit, alone
        old = conn.autocommit
        conn.autocommit = True
        try:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (slot, PLUGIN))
            created = True
        finally:
            conn.autocommit = old
    return {"slot": slot, "plugin": PLUGIN, "created": created, "tables": tables}


def uninstall(conn: psycopg.Connection, schema: str) -> bool:
    """Drop the slot and restore the tables' replica identity; True when something went."""
    slot = installed(conn, schema)
    if slot is None:
        return False
    exists = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                          (slot,)).fetchone()
    conn.commit()
    if exists is not None:
        if exists[0] is not None:
            raise UsageError(f"replication slot {slot} is in use (pid {exists[0]})",
                             hint="stop pgshift sync run --mode to-sqlite first")
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.commit()
    names = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "DEFAULT"}
    row = conn.execute("SELECT replica_identity FROM pgshift.logical_capture "
                       "WHERE target_schema = %s", (schema,)).fetchone()
    idents: dict[str, str] = row[0] if row else {}
    tables = [t for t in idents
              if _true(conn, "SELECT to_regclass(%s) IS NOT NULL",
                       (pgsql.Identifier(schema, t).as_string(),))]
    conn.commit()
    # the application may be writing: one table's lock at a time (pgshift.sync.locking)
    locking.each_briefly(conn, (pgsql.SQL("ALTER TABLE {} REPLICA IDENTITY {}").format(
        pgsql.Identifier(schema, t), pgsql.SQL(names.get(idents[t], "DEFAULT")))
        for t in tables))

    def forget(c: psycopg.Connection) -> None:
        c.execute("DELETE FROM pgshift.logical_capture WHERE target_schema = %s", (schema,))
        if not _true(c, "SELECT EXISTS (SELECT 1 FROM pgshift.logical_capture)"):
            c.execute("DROP TABLE pgshift.logical_capture")
            if not _true(c, "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = %s)",
                         (pg_capture.TRIGGER,)):
                c.execute("DROP TABLE IF EXISTS pgshift.pg_changes")
                c.execute("DROP FUNCTION IF EXISTS pgshift.capture()")

    locking.briefly(conn, forget)
    return True


def fence(conn: psycopg.Connection, schema: str, content: str = "fence") -> int:
    """Write a fence message into the WAL; its LSN (as an integer).

    Committed with ``synchronous_commit = on``: decoding reads WAL only up to the
    flushed position, and a server running with ``synchronous_commit = off`` may
    not have flushed the commits before it yet; this commit flushes them all.
    """
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
        conn.commit()
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = on")
        row = conn.execute("SELECT pg_logical_emit_message(true, %s, %s)::text",
                           (MESSAGE_PREFIX, f"{content}:{schema}")).fetchone()
    assert row is not None
    return lsn_int(row[0])


def lsn_int(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def lag(conn: psycopg.Connection, schema: str) -> dict[str, Any] | None:
    """Bytes of WAL the slot has not consumed (None without logical capture)."""
    slot = installed(conn, schema)
    if slot is None:
        return None
    row = conn.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, "
        "confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot,)).fetchone()
    conn.commit()
    return {"slot": slot, "lag_bytes": int(row[0]) if row else None,
            "confirmed_flush_lsn": row[1] if row else None}


_snapshot_logged = [0.0]  # monotonic time of the last pg_log_standby_snapshot() call


def advance(pg: psycopg.Connection, slot: str, lsn: int) -> None:
    """Move the slot past ``lsn``; now and then log a running-transactions record.

    Every peek decodes from the slot's ``restart_lsn``, which only moves past a
    running-transactions record (the server logs one every 15 s): under load each
    peek would re-read up to 15 s of WAL. ``pg_log_standby_snapshot()`` (PostgreSQL
    16+, superuser unless granted) logs one at once; without it, the 15 s remain.
    """
    pg.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, lsn_text(lsn)))
    pg.commit()
    if time.monotonic() - _snapshot_logged[0] < 1.0:
        return
    _snapshot_logged[0] = time.monotonic()
    try:
        pg.execute("SELECT pg_log_standby_snapshot()")
        pg.commit()
    except (psycopg.errors.UndefinedFunction, psycopg.errors.InsufficientPrivilege):
        pg.rollback()


def recorded(conn: psycopg.Connection, schema: str) -> int:
    """The end LSN of the last batch whose records are written (0: none yet)."""
    if not _true(conn, "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = "
                       "'pgshift.logical_capture'::regclass AND attname = 'recorded_lsn' "
                       "AND NOT attisdropped)"):
        conn.execute(RECORDED_SQL)
    row = conn.execute("SELECT recorded_lsn FROM pgshift.logical_capture WHERE "
                       "target_schema = %s", (schema,)).fetchone()
    conn.commit()
    return int(row[0]) if row else 0


def mark_recorded(conn: psycopg.Connection, schema: str, lsn: int) -> None:
    """In the records' transaction: they are written up to ``lsn``."""
    conn.execute("UPDATE pgshift.logical_capture SET recorded_lsn = %s WHERE "
                 "target_schema = %s", (lsn, schema))
