"""Sync's state in the target's ``pgshift`` schema.

- ``pgshift.sync_state``: one row per (target schema, direction): the last
  applied ``seq``, counts, the capture time of the last applied change;
- ``pgshift.sync_parked``: changes PostgreSQL refused (or values that cannot
  be converted), with the reason; never dropped;
- ``pgshift.sync_conflicts``: rows the other side changed since the system of
  record's before-image, with the losing image (policy ``sor-wins``).

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


def migrate_hwm(conn: psycopg.Connection, target_schema: str) -> tuple[bool, int | None]:
    """(migrate ran into this schema, the change-log high-water mark of its snapshot)."""
    try:
        row = conn.execute("SELECT snapshot_hwm, status FROM pgshift.migrate_runs "
                           "WHERE target_schema = %s", (target_schema,)).fetchone()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return False, None
    conn.commit()
    return (row is not None and row[1] == "done"), (row[0] if row else None)


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
    with conn.transaction():
        present = conn.execute(
            "SELECT to_regclass('pgshift.sync_state') IS NOT NULL AND "
            "to_regclass('pgshift.sync_parked') IS NOT NULL AND "
            "to_regclass('pgshift.sync_conflicts') IS NOT NULL").fetchone()
        if not present or not present[0]:
            return
        for table in ("sync_state", "sync_parked", "sync_conflicts"):
            conn.execute(f"DELETE FROM pgshift.{table} WHERE target_schema = %s",
                         (target_schema,))
        left = conn.execute("SELECT EXISTS (SELECT 1 FROM pgshift.sync_state) OR "
                            "EXISTS (SELECT 1 FROM pgshift.sync_parked) OR "
                            "EXISTS (SELECT 1 FROM pgshift.sync_conflicts)").fetchone()
        if left is not None and not left[0]:
            conn.execute("DROP TABLE pgshift.sync_conflicts")
            conn.execute("DROP TABLE pgshift.sync_parked")
            conn.execute("DROP TABLE pgshift.sync_state")
