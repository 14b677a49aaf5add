"""Install, uninstall and status: the library calls behind ``pgshift sync``."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql

from pgshift.dsn import Dsn, connect
from pgshift.errors import SourceError, UsageError
from pgshift.source.snapshot import CHANGELOG_TABLE
from pgshift.sync import pg_capture
from pgshift.sync import sqlite_capture as capture
from pgshift.sync import state as st
from pgshift.sync.apply import FENCE_OP, SyncOptions, open_sqlite, run


def install(path: Path, tables: list[str] | None = None,
            exclude: list[str] | None = None, *, dsn: Dsn | None = None,
            schema: str = "public") -> capture.InstallResult:
    """Install capture on ``path`` and, with ``dsn``, on the migrated tables (idempotent).

    PostgreSQL capture (for the way back) needs the tables migrate created there.
    """
    con = open_sqlite(path, readonly=False)
    try:
        result = capture.install(con, tables or None, exclude=exclude)
    except sqlite3.OperationalError as exc:
        raise SourceError(f"installing capture on {path} failed: {exc}",
                          hint="retry when the app is not holding a long write transaction"
                          ) from exc
    finally:
        con.close()
    if dsn is not None:
        conn = connect(dsn, application_name="pgshift-sync")
        try:
            missing = [t.name for t in result.tables if st.scalar(
                conn, "SELECT to_regclass(%s) IS NULL",
                (pgsql.Identifier(schema, t.name).as_string(),))]
            conn.commit()
            if missing:
                raise UsageError(f"tables missing in PostgreSQL schema {schema!r}: "
                                 f"{', '.join(missing)}",
                                 hint=f"pgshift migrate {path} PG, then install again")
            pg_capture.install(conn, schema, {t.name: list(t.key) for t in result.tables})
        finally:
            conn.close()
    return result


def uninstall(path: Path, dsn: Dsn | None = None, schema: str = "public") -> dict[str, Any]:
    """Remove capture from SQLite and, with ``dsn``, sync's state from PostgreSQL."""
    con = open_sqlite(path, readonly=False)
    try:
        removed = capture.uninstall(con)
    except sqlite3.OperationalError as exc:
        raise SourceError(f"removing capture from {path} failed: {exc}",
                          hint="retry when the app is not holding a long write transaction"
                          ) from exc
    finally:
        con.close()
    out: dict[str, Any] = {"sqlite_removed": removed, "postgres_state_removed": False}
    if dsn is not None:
        conn = connect(dsn, application_name="pgshift-sync")
        try:
            out["postgres_capture_removed"] = pg_capture.uninstall(conn, schema)
            st.drop(conn, schema)
            out["postgres_state_removed"] = True
        finally:
            conn.close()
    return out


def status(path: Path | None, dsn: Dsn | None, schema: str = "public") -> dict[str, Any]:
    """Capture, checkpoint, pending changes and lag, from whichever sides are given."""
    out: dict[str, Any] = {"schema": schema}
    max_seq = None
    oldest: dict[int, int] = {}
    if path is not None:
        con = open_sqlite(path)
        try:
            out["captured_tables"] = capture.installed(con)
            has_log = con.execute("select 1 from sqlite_schema where name = ?",
                                  (CHANGELOG_TABLE,)).fetchone() is not None
            out["capture_installed"] = has_log
            if has_log:
                max_seq = con.execute(f'select max(seq) from "{CHANGELOG_TABLE}"').fetchone()[0]
                out["max_seq"] = max_seq or 0
        finally:
            con.close()
    if dsn is not None:
        conn = connect(dsn, application_name="pgshift-sync")
        try:
            state = st.load(conn, schema, st.TO_POSTGRES)
            out["to_postgres"] = state.to_dict() if state else None
            if state is not None:
                out["parked"] = st.parked_rows(conn, schema, limit=20)
            out["postgres_captured_tables"] = pg_capture.installed(conn, schema)
            queued = conn.execute(
                "SELECT count(*), min(ts) FROM pgshift.pg_changes WHERE target_schema = %s "
                "AND to_regclass('pgshift.pg_changes') IS NOT NULL", (schema,)
            ).fetchone() if out["postgres_captured_tables"] else None
            conn.commit()
            if queued is not None:
                out["to_sqlite_pending"] = queued[0]
                out["to_sqlite_lag_ms"] = (int(time.time() * 1000) - queued[1]) \
                    if queued[1] is not None else 0
        except psycopg.Error:
            conn.rollback()
            raise
        finally:
            conn.close()
        if state is not None and path is not None and max_seq is not None:
            con = open_sqlite(path)
            try:
                row = con.execute(
                    f'select count(*), min(ts) from "{CHANGELOG_TABLE}" where seq > ?',
                    (state.last_seq,)).fetchone()
            finally:
                con.close()
            oldest = {0: row[1]} if row[1] is not None else {}
            out["pending"] = row[0]
            out["lag_ms"] = (int(time.time() * 1000) - oldest[0]) if oldest else 0
    return out


def fence(path: Path) -> int:
    """Write a fence marker into the SQLite change log; its seq.

    Every change committed before the marker has a lower seq, so an applier whose
    checkpoint reached it has applied all of them (the router holds writes meanwhile).
    """
    con = open_sqlite(path, readonly=False)
    try:
        con.execute("BEGIN IMMEDIATE")
        cur = con.execute(
            f'INSERT INTO "{CHANGELOG_TABLE}" (tbl, op, origin, schema_version, ts) '
            "VALUES ('', ?, 'pgshift', 0, ?)", (FENCE_OP, int(time.time() * 1000)))
        con.execute("COMMIT")
        return int(cur.lastrowid or 0)
    except sqlite3.OperationalError as exc:
        raise SourceError(f"writing the fence marker into {path} failed: {exc}",
                          hint="retry; the app may hold a long write transaction") from exc
    finally:
        con.close()


def drain(opts: SyncOptions, timeout: float = 30.0) -> dict[str, Any]:
    """Fence, then apply until the checkpoint passes the fence or ``timeout`` expires."""
    started = time.perf_counter()
    marker = fence(opts.sqlite_path)
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        result = run(replace(opts, until_seq=marker, follow=False), stop=stop)
    finally:
        timer.cancel()
    return {"fence_seq": marker, "drained": result.last_seq >= marker,
            "seconds": round(time.perf_counter() - started, 3), "applied": result.applied,
            "parked": result.parked, "last_seq": result.last_seq}
