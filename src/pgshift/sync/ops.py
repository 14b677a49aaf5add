"""Install, uninstall and status: the library calls behind ``pgshift sync``."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import psycopg
from psycopg import sql as pgsql

from pgshift.dsn import Dsn, connect
from pgshift.errors import SourceError, UsageError
from pgshift.source.snapshot import CHANGELOG_TABLE
from pgshift.sync import identity, mapped, pg_capture, pg_logical, planning, privileges
from pgshift.sync import settings as cfg
from pgshift.sync import sqlite_capture as capture
from pgshift.sync import state as st
from pgshift.sync.apply import open_sqlite
from pgshift.sync.common import sqlite_write_hint
from pgshift.sync.results import SyncStatus, UninstallResult

TO_SQLITE = "to-sqlite"


GREEN_IDS = ("keep", "negative")
PG_CAPTURE = ("triggers", "logical")


def install(path: Path, tables: list[str] | None = None,
            exclude: list[str] | None = None, *, dsn: Dsn | None = None,
            schema: str = "public", green_ids: str = "keep",
            pg_capture_mode: str = "triggers",
            settings: dict[str, cfg.TableSettings] | None = None,
            app_role: str | None = None) -> capture.InstallResult:
    """Install capture on ``path`` and, with ``dsn``, on the migrated tables (idempotent).

    PostgreSQL capture (for the way back) needs the tables migrate created there.
    Installed before green takes traffic, it records green's incidental writes from
    the start; ``pgshift sync flip`` turns that early queue into current rows.
    ``green_ids="negative"`` makes PostgreSQL's identity/serial sequences count down
    from -1 until the flip (:mod:`pgshift.sync.identity`). ``pg_capture_mode``:
    ``triggers`` (any PostgreSQL, a queue table) or ``logical`` (a logical slot,
    nothing on the write path, needs ``wal_level = logical``: :mod:`pg_logical`).
    ``settings`` (per table; a table not captured is refused) are stored with ``dsn``
    and ``app_role`` loses its write privileges on ``green_writes: forbid`` tables
    (:mod:`pgshift.sync.privileges`).

    Nothing is left half done: PostgreSQL is connected to before SQLite is touched,
    and when a later step fails, a capture this call created in SQLite is removed
    again (PostgreSQL's steps are idempotent: install again after the fix).
    """
    if app_role and (dsn is None or settings is None):
        raise UsageError("--app-role needs the PostgreSQL DSN and --tables-config",
                         hint="pgshift sync install SQLITE PG --tables-config cutover.yaml "
                              "--app-role ROLE")
    if pg_capture_mode not in PG_CAPTURE:
        raise UsageError(f"--pg-capture {pg_capture_mode!r}: use triggers or logical",
                         hint="pgshift sync install SQLITE PG --pg-capture triggers")
    if green_ids not in GREEN_IDS:
        raise UsageError(f"--green-ids {green_ids!r}: use keep or negative",
                         hint="pgshift sync install SQLITE PG --green-ids negative")
    if green_ids != "keep" and dsn is None:
        raise UsageError("--green-ids needs the PostgreSQL DSN",
                         hint="pgshift sync install SQLITE PG --green-ids negative")
    # PostgreSQL first: an unreachable server must stop install before SQLite is touched
    conn = connect(dsn, application_name="pgshift-sync") if dsn is not None else None
    try:
        con = open_sqlite(path, readonly=False)
        try:
            fresh = capture.install_id(con) is None and not capture.installed(con)
            try:
                result = capture.install(con, tables or None, exclude=exclude)
            except sqlite3.OperationalError as exc:
                raise SourceError(f"installing capture on {path} failed: {exc}",
                                  hint="retry when the app is not holding a long write "
                                       "transaction") from exc
            try:
                if settings is not None:
                    chosen = planning.for_tables(settings, [t.name for t in result.tables],
                                             "settings")
                    result.settings = {n: s.model_dump() for n, s in chosen.items()}
                if conn is not None:
                    _install_postgres(conn, path, schema, result, green_ids, pg_capture_mode)
                    if settings is not None:
                        _store_settings(conn, schema, chosen, app_role, result)
            except BaseException:
                # never leave a half install: what this call added to SQLite goes again
                if fresh:
                    capture.uninstall(con)
                raise
            return result
        finally:
            con.close()
    finally:
        if conn is not None:
            conn.close()


def _install_postgres(conn: psycopg.Connection, path: Path, schema: str,
                      result: capture.InstallResult, green_ids: str,
                      pg_capture_mode: str) -> None:
    """PostgreSQL capture on the migrated tables, and ``--green-ids``."""
    try:
        feeds = mapped.stored_feeds(conn, schema)
        if feeds is not None:
            # loaded --into-existing: capture the target tables the captured source
            # tables feed, keyed by the target columns their `key:` maps to
            if pg_capture_mode == "logical":
                raise UsageError("--pg-capture logical is not supported yet for a "
                                 "schema loaded --into-existing",
                                 hint="pgshift sync install SQLITE PG --pg-capture "
                                      "triggers")
            keys = mapped.capture_targets(conn, schema, feeds, result.tables)
        else:
            keys = {t.name: list(t.key) for t in result.tables}
        missing = [name for name in keys if st.scalar(
            conn, "SELECT to_regclass(%s) IS NULL",
            (pgsql.Identifier(schema, name).as_string(),))]
        conn.commit()
        if missing:
            raise UsageError(f"tables missing in PostgreSQL schema {schema!r}: "
                             f"{', '.join(missing)}",
                             hint=f"pgshift migrate {path} PG, then install again")
        names = list(keys)
        if pg_capture_mode == "logical":
            result.postgres_capture = pg_logical.install(conn, schema, names)
        else:
            if pg_logical.installed(conn, schema):
                raise UsageError("logical capture is installed on this schema; one "
                                 "PostgreSQL capture at a time",
                                 hint="pgshift sync uninstall SQLITE PG, then install "
                                      "again")
            pg_capture.install(conn, schema, keys)
            result.postgres_capture = {"mode": "triggers", "tables": names}
        result.identities = identity.to_negative(conn, schema, names) \
            if green_ids == "negative" else [
                {"table": c.table, "column": c.column, "kind": c.kind,
                 "sequence": c.sequence, "restart": None,
                 "state": "counts down" if c.negative else "counts up"}
                for c in identity.find(conn, schema, names)]
        conn.commit()
    except psycopg.Error:
        conn.rollback()
        raise


def _store_settings(conn: psycopg.Connection, schema: str,
                    settings: dict[str, cfg.TableSettings], app_role: str | None,
                    result: capture.InstallResult) -> None:
    """Store the per-table settings; revoke ``app_role``'s writes on forbid tables."""
    st.ensure_schema(conn)
    st.store_settings(conn, schema, settings)
    forbid = [n for n, s in settings.items() if s.green_writes == "forbid"]
    if app_role and forbid:
        result.revoked = privileges.revoke(conn, schema, app_role, forbid)


def uninstall(path: Path, dsn: Dsn | None = None, schema: str = "public"
              ) -> UninstallResult:
    """Remove capture from SQLite and, with ``dsn``, sync's state from PostgreSQL
    (green's revoked privileges granted back first: their record goes with the state)."""
    con = open_sqlite(path, readonly=False)
    try:
        floors = identity.sqlite_floors(con)
        removed = capture.uninstall(con)
    except sqlite3.OperationalError as exc:
        raise SourceError(f"removing capture from {path} failed: {exc}",
                          hint=sqlite_write_hint(exc, path)) from exc
    finally:
        con.close()
    out = UninstallResult(sqlite_removed=removed)
    if dsn is not None:
        conn = connect(dsn, application_name="pgshift-sync")
        try:
            out.privileges_granted_back = privileges.restore(conn, schema)
            # sequences counting down (--green-ids negative) count up again, past max(id)
            out.identities_restored = identity.to_positive(conn, schema, floors)
            out.postgres_logical_removed = pg_logical.uninstall(conn, schema)
            out.postgres_capture_removed = pg_capture.uninstall(conn, schema)
            st.drop(conn, schema)
            out.postgres_state_removed = True
        finally:
            conn.close()
    return out


def status(path: Path | None, dsn: Dsn | None, schema: str = "public", *,
           con: sqlite3.Connection | None = None) -> SyncStatus:
    """Capture, checkpoint, pending changes and lag, from whichever sides are given.

    ``con``: an open connection to ``path`` to read SQLite with (left open), for a
    process that asks again and again (the metrics endpoint).
    """
    out = SyncStatus(schema)
    own = con is None
    if path is not None:
        if con is None:
            con = open_sqlite(path)
        try:
            out.captured_tables = capture.installed(con)
            out.capture_installed = con.execute(
                "select 1 from sqlite_schema where name = ?", (CHANGELOG_TABLE,)
            ).fetchone() is not None
            if out.capture_installed:
                # an empty log still has pending 0
                out.max_seq = con.execute(
                    f'select max(seq) from "{CHANGELOG_TABLE}"').fetchone()[0] or 0
        finally:
            if own:
                con.close()
    if dsn is not None:
        conn = connect(dsn, application_name="pgshift-sync")
        try:
            _postgres_status(conn, out)
        except psycopg.Error:
            conn.rollback()
            raise
        finally:
            conn.close()
        state = out.to_postgres
        if state is not None and path is not None and out.max_seq is not None:
            reader = open_sqlite(path) if own else con
            assert reader is not None
            try:
                row = reader.execute(
                    f'select count(*), min(ts) from "{CHANGELOG_TABLE}" where seq > ?',
                    (state.last_seq,)).fetchone()
            finally:
                if own:
                    reader.close()
            out.pending = row[0]
            out.lag_ms = (int(time.time() * 1000) - row[1]) if row[1] is not None else 0
    return out


def _postgres_status(conn: psycopg.Connection, out: SyncStatus) -> None:
    """The PostgreSQL side of :func:`status`, into ``out``."""
    schema = out.schema
    out.to_postgres = st.load(conn, schema, st.TO_POSTGRES)
    if out.to_postgres is not None:
        out.parked = st.parked_rows(conn, schema, limit=20)
    out.postgres_captured_tables = pg_capture.installed(conn, schema)
    out.to_sqlite_logical = pg_logical.lag(conn, schema)
    queued = conn.execute(
        "SELECT count(*), min(ts) FROM pgshift.pg_changes WHERE target_schema = %s "
        "AND op <> 'F' AND to_regclass('pgshift.pg_changes') IS NOT NULL", (schema,)
    ).fetchone() if out.postgres_captured_tables else None
    conn.commit()
    _counters(conn, out)
    if queued is not None:
        out.to_sqlite_pending = queued[0]
        out.to_sqlite_lag_ms = (int(time.time() * 1000) - queued[1]) \
            if queued[1] is not None else 0
    out.paused = st.is_paused(conn, schema)
    out.tables = {n: {k: v for k, v in row.items() if k != "table_name"}
                  for n, row in st.stored_settings(conn, schema).items()}


def _counters(conn: psycopg.Connection, out: SyncStatus) -> None:
    """Persistent counters by direction: conflicts, parked, applied to SQLite."""
    present = conn.execute(
        "SELECT to_regclass('pgshift.sync_conflicts') IS NOT NULL, "
        "to_regclass('pgshift.sync_parked') IS NOT NULL, "
        "to_regclass('pgshift.sync_tables') IS NOT NULL").fetchone()
    if present is None:
        return
    counts: list[dict[str, int] | None] = []
    for flag, table in ((present[0], "sync_conflicts"), (present[1], "sync_parked")):
        counts.append(dict(conn.execute(
            f"SELECT direction, count(*) FROM pgshift.{table} WHERE target_schema = %s "
            "GROUP BY direction", (out.schema,)).fetchall()) if flag else None)
    out.conflicts_by_direction, out.parked_by_direction = counts
    if present[2]:
        out.to_sqlite_applied = int(st.scalar(
            conn, "SELECT coalesce(sum(applied_to_sqlite), 0) FROM pgshift.sync_tables "
                  "WHERE target_schema = %s", (out.schema,)))
    conn.commit()


def set_paused(path: Path, dsn: Dsn, schema: str, paused: bool) -> None:
    """``pgshift sync pause|resume``: set or clear the flag every applier of ``schema``
    honours within one poll. ``path`` is checked to be a readable SQLite file (the
    flag lives in PostgreSQL, but a wrong SQLite argument is a mistake to report)."""
    con = open_sqlite(path)
    try:
        con.execute("select count(*) from sqlite_schema").fetchone()
    finally:
        con.close()
    conn = connect(dsn, application_name="pgshift-sync")
    try:
        st.set_paused(conn, schema, paused)
    finally:
        conn.close()
