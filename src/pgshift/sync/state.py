"""Sync's state in the target's ``pgshift`` schema.

- ``pgshift.sync_state``: one row per (target schema, direction): the last
  applied ``seq``, counts, the capture time of the last applied change;
- ``pgshift.sync_parked``: changes PostgreSQL refused (or values that cannot
  be converted), with the reason; never dropped;
- ``pgshift.sync_conflicts``: rows changed on both sides before the applier saw
  either, with both versions, both capture times, the policy and the rule that
  picked the winner, and the losing change's id when it was a captured change;
- ``pgshift.sync_tables``: the effective per-table settings (kind, writes,
  conflict policy, green_writes), the privileges ``--app-role`` revoked, and
  per-table applied counters (moved in the applier's transactions);
- ``pgshift.sync_control``: the ``paused`` flag per target schema.

The applier updates ``sync_state`` and inserts into ``sync_parked`` in the
same transaction as the data it applies: a crash (``kill -9``) leaves all of
a batch or none of it, so a restart neither skips nor repeats a change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import psycopg

from pgshift.errors import LockedError

TO_POSTGRES = "to-postgres"

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS pgshift;
CREATE TABLE IF NOT EXISTS pgshift.sync_state (
    target_schema text NOT NULL,
    direction text NOT NULL,
    source text NOT NULL,
    last_seq bigint NOT NULL,
    start_seq bigint NOT NULL,
    applied bigint NOT NULL DEFAULT 0,
    parked bigint NOT NULL DEFAULT 0,
    last_ts bigint,
    install_id text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, direction)
);
CREATE TABLE IF NOT EXISTS pgshift.sync_parked (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_schema text NOT NULL,
    direction text NOT NULL,
    seq bigint NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL,
    key_old text,
    key_new text,
    row_image text,
    reason text NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pgshift.sync_conflicts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_schema text NOT NULL,
    direction text NOT NULL,
    seq bigint NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL,
    key text,
    policy text NOT NULL,
    winner text NOT NULL,
    winner_image text,
    loser_image jsonb,
    detected_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pgshift.sync_tables (
    target_schema text NOT NULL,
    table_name text NOT NULL,
    kind text NOT NULL DEFAULT 'plain',
    writes text NOT NULL DEFAULT 'single-writer',
    conflict text NOT NULL DEFAULT 'sor-wins',
    green_writes text NOT NULL DEFAULT 'allow',
    revoked_role text,
    revoked text[],
    applied_to_postgres bigint NOT NULL DEFAULT 0,
    applied_to_sqlite bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, table_name)
);
CREATE TABLE IF NOT EXISTS pgshift.sync_control (
    target_schema text PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false,
    paused_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""


# Columns added with the conflict policies: tables made by an older pgshift are upgraded
# (run only when missing: ALTER TABLE takes an exclusive lock even when nothing changes).
UPGRADE_SQL = """ALTER TABLE pgshift.sync_conflicts
    ADD COLUMN IF NOT EXISTS reason text,
    ADD COLUMN IF NOT EXISTS rule text,
    ADD COLUMN IF NOT EXISTS sqlite_ts bigint,
    ADD COLUMN IF NOT EXISTS postgres_ts bigint,
    ADD COLUMN IF NOT EXISTS loser_origin text,
    ADD COLUMN IF NOT EXISTS loser_change bigint;
"""


@dataclass
class SyncState:
    target_schema: str
    direction: str
    source: str
    last_seq: int
    start_seq: int
    applied: int
    parked: int
    last_ts: int | None
    install_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def scalar(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row (None when there is no row)."""
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def ensure_schema(conn: psycopg.Connection) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgshift.schema'))")
        conn.execute(SCHEMA_SQL)
        if not conn.execute("SELECT 1 FROM pg_attribute WHERE attrelid = "
                            "'pgshift.sync_conflicts'::regclass AND attname = 'loser_change' "
                            "AND NOT attisdropped").fetchone():
            conn.execute(UPGRADE_SQL)


def lock_key(target_schema: str, direction: str) -> int:
    digest = hashlib.sha256(f"pgshift.sync:{target_schema}:{direction}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def acquire_lock(conn: psycopg.Connection, target_schema: str, direction: str) -> None:
    """One applier per target schema and direction: a session advisory lock."""
    got = conn.execute("SELECT pg_try_advisory_lock(%s)",
                       (lock_key(target_schema, direction),)).fetchone()
    conn.commit()
    if not got or not got[0]:
        raise LockedError(
            f"another pgshift sync {direction} is running into schema {target_schema!r}",
            hint="stop it first, or find it with: SELECT pid FROM pg_stat_activity "
                 "WHERE application_name = 'pgshift-sync'")


def load(conn: psycopg.Connection, target_schema: str, direction: str) -> SyncState | None:
    try:
        row = conn.execute(
            "SELECT target_schema, direction, source, last_seq, start_seq, applied, parked, "
            "last_ts, install_id FROM pgshift.sync_state "
            "WHERE target_schema = %s AND direction = %s",
            (target_schema, direction)).fetchone()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return None
    return SyncState(*row) if row else None


def create(conn: psycopg.Connection, st: SyncState) -> None:
    with conn.transaction():
        conn.execute(
            "INSERT INTO pgshift.sync_state (target_schema, direction, source, last_seq, "
            "start_seq, install_id) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (st.target_schema, st.direction, st.source, st.last_seq, st.start_seq,
             st.install_id))


def migrate_hwm(conn: psycopg.Connection, target_schema: str
                ) -> tuple[bool, int | None, str | None]:
    """(migrate ran into this schema, the change-log high-water mark of its snapshot, the
    change log's install_id in that snapshot)."""
    try:
        row = conn.execute("SELECT snapshot_hwm, status, snapshot_capture_id FROM "
                           "pgshift.migrate_runs WHERE target_schema = %s",
                           (target_schema,)).fetchone()
    except psycopg.errors.UndefinedColumn:
        # migrated by a pgshift that did not record the install_id: hwm and status only
        conn.rollback()
        done, hwm, _ = _migrate_hwm_only(conn, target_schema)
        return done, hwm, None
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return False, None, None
    conn.commit()
    if row is None:
        return False, None, None
    return row[1] == "done", row[0], row[2]


def _migrate_hwm_only(conn: psycopg.Connection, target_schema: str
                      ) -> tuple[bool, int | None, None]:
    row = conn.execute("SELECT snapshot_hwm, status FROM pgshift.migrate_runs "
                       "WHERE target_schema = %s", (target_schema,)).fetchone()
    conn.commit()
    return (row is not None and row[1] == "done"), (row[0] if row else None), None


def parked_rows(conn: psycopg.Connection, target_schema: str,
                limit: int = 100) -> list[dict[str, Any]]:
    try:
        cur = conn.execute(
            "SELECT seq, table_name, op, key_old, key_new, reason, parked_at FROM "
            "pgshift.sync_parked WHERE target_schema = %s ORDER BY id LIMIT %s",
            (target_schema, limit))
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return []
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def drop(conn: psycopg.Connection, target_schema: str) -> None:
    """Forget sync's state for one target schema; drop the tables once no schema uses them."""
    tables = ("sync_state", "sync_parked", "sync_conflicts", "sync_tables", "sync_control")
    with conn.transaction():
        present = [t for t in tables if scalar(conn, "SELECT to_regclass(%s) IS NOT NULL",
                                                (f"pgshift.{t}",))]
        if not present:
            return
        for table in present:
            conn.execute(f"DELETE FROM pgshift.{table} WHERE target_schema = %s",
                         (target_schema,))
        if not any(scalar(conn, f"SELECT EXISTS (SELECT 1 FROM pgshift.{t})") for t in present):
            for table in reversed(present):
                conn.execute(f"DROP TABLE pgshift.{table}")


# ------------------------------------------------------------ per-table settings, pause


def store_settings(conn: psycopg.Connection, target_schema: str,
                   settings: dict[str, Any]) -> None:
    """Record the effective settings ({table: TableSettings}) sync runs with."""
    with conn.transaction():
        # the two appliers of --mode dual store them at the same moment
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgshift.sync_tables'))")
        for name, ts in sorted(settings.items()):
            conn.execute(
                "INSERT INTO pgshift.sync_tables (target_schema, table_name, kind, writes, "
                "conflict, green_writes) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT "
                "(target_schema, table_name) DO UPDATE SET kind = EXCLUDED.kind, writes = "
                "EXCLUDED.writes, conflict = EXCLUDED.conflict, green_writes = "
                "EXCLUDED.green_writes, updated_at = now() WHERE (sync_tables.kind, "
                "sync_tables.writes, sync_tables.conflict, sync_tables.green_writes) IS "
                "DISTINCT FROM (EXCLUDED.kind, EXCLUDED.writes, EXCLUDED.conflict, "
                "EXCLUDED.green_writes)",
                (target_schema, name, ts.kind, ts.writes, ts.conflict, ts.green_writes))


def stored_settings(conn: psycopg.Connection, target_schema: str) -> dict[str, dict[str, Any]]:
    """The per-table rows of ``pgshift.sync_tables`` ({} when none were stored)."""
    if not scalar(conn, "SELECT to_regclass('pgshift.sync_tables') IS NOT NULL"):
        conn.commit()
        return {}
    cur = conn.execute(
        "SELECT table_name, kind, writes, conflict, green_writes, revoked_role, revoked, "
        "applied_to_postgres, applied_to_sqlite FROM pgshift.sync_tables "
        "WHERE target_schema = %s ORDER BY table_name", (target_schema,))
    names = [d.name for d in cur.description or []]
    rows = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    conn.commit()
    return rows


def set_paused(conn: psycopg.Connection, target_schema: str, paused: bool) -> None:
    """Set or clear the paused flag a running applier honours within one poll."""
    ensure_schema(conn)
    with conn.transaction():
        conn.execute(
            "INSERT INTO pgshift.sync_control (target_schema, paused, paused_at) "
            "VALUES (%s, %s, CASE WHEN %s THEN now() END) ON CONFLICT (target_schema) DO "
            "UPDATE SET paused = EXCLUDED.paused, paused_at = EXCLUDED.paused_at, "
            "updated_at = now()", (target_schema, paused, paused))


def is_paused(conn: psycopg.Connection, target_schema: str) -> bool:
    """The paused flag (False when never set). Leaves no transaction open."""
    try:
        value = scalar(conn, "SELECT paused FROM pgshift.sync_control WHERE target_schema = %s",
                       (target_schema,))
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return False
    conn.commit()
    return bool(value)
