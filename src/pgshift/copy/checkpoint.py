"""Resume state kept in the target's ``pgshift`` schema.

Checkpoints live beside the data because they must commit with it: a chunk's
COPY, its rejects and its checkpoint row are one transaction, and so is each
post-load DDL statement with its step row. A crash leaves either both or
neither, so ``--resume`` neither skips nor repeats any work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgshift.errors import LockedError

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS pgshift;
CREATE TABLE IF NOT EXISTS pgshift.migrate_runs (
    target_schema text PRIMARY KEY,
    run_id text NOT NULL,
    source text NOT NULL,
    snapshot text NOT NULL,
    snapshot_hwm bigint,
    status text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    chunks jsonb NOT NULL
);
ALTER TABLE pgshift.migrate_runs ADD COLUMN IF NOT EXISTS profile jsonb;
ALTER TABLE pgshift.migrate_runs ADD COLUMN IF NOT EXISTS snapshot_capture_id text;
CREATE TABLE IF NOT EXISTS pgshift.migrate_chunks (
    run_id text NOT NULL,
    table_name text NOT NULL,
    chunk_no integer NOT NULL,
    rows bigint NOT NULL,
    bytes bigint NOT NULL,
    rejects integer NOT NULL,
    seconds double precision NOT NULL,
    done_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, table_name, chunk_no)
);
ALTER TABLE pgshift.migrate_chunks ADD COLUMN IF NOT EXISTS profile jsonb;
CREATE TABLE IF NOT EXISTS pgshift.migrate_steps (
    run_id text NOT NULL,
    step text NOT NULL,
    statement text NOT NULL,
    done_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS pgshift.rejects (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id text NOT NULL,
    table_name text NOT NULL,
    key jsonb,
    column_name text,
    raw_value text,
    storage_class text,
    reason text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass
class RunRecord:
    target_schema: str
    run_id: str
    source: str
    snapshot: str
    snapshot_hwm: int | None
    status: str
    chunks: dict[str, list[list[Any]]]
    snapshot_capture_id: str | None = None  # the change log's install_id in the snapshot


@dataclass
class RejectRecord:
    """One value that could not be carried."""

    table: str
    key: dict[str, Any]
    column: str | None
    raw: str | None
    storage_class: str
    reason: str
    # Which row of its chunk (the same for every bad column of one row): rows are counted
    # by it, since keys may repeat (NULL keys, keyless tables). Not in the rejects file.
    row: int | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "key": self.key, "column": self.column,
                "raw_value": self.raw, "storage_class": self.storage_class,
                "reason": self.reason}


def ensure_schema(conn: psycopg.Connection) -> None:
    with conn.transaction():
        # Serialize concurrent first runs: CREATE ... IF NOT EXISTS is not race-free.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgshift.schema'))")
        conn.execute(SCHEMA_SQL)


def lock_key(target_schema: str) -> int:
    """A stable 63-bit advisory-lock key for one target schema."""
    digest = hashlib.sha256(f"pgshift.migrate:{target_schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def acquire_lock(conn: psycopg.Connection, target_schema: str) -> None:
    """Hold a session advisory lock for the whole run; a second run fails at once."""
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(target_schema),)).fetchone()
    if not got or not got[0]:
        raise LockedError(
            f"another pgshift migrate is running into schema {target_schema!r} of this database",
            hint="wait for it to finish, or find it with: SELECT pid, query FROM pg_stat_activity "
                 "WHERE application_name = 'pgshift'",
        )


def load_run(conn: psycopg.Connection, target_schema: str) -> RunRecord | None:
    row = conn.execute(
        "SELECT target_schema, run_id, source, snapshot, snapshot_hwm, status, chunks, "
        "snapshot_capture_id FROM pgshift.migrate_runs WHERE target_schema = %s",
        (target_schema,)).fetchone()
    return RunRecord(*row) if row else None


def start_run(conn: psycopg.Connection, run: RunRecord) -> None:
    with conn.transaction():
        conn.execute("DELETE FROM pgshift.migrate_runs WHERE target_schema = %s",
                     (run.target_schema,))
        conn.execute(
            "INSERT INTO pgshift.migrate_runs (target_schema, run_id, source, snapshot, "
            "snapshot_hwm, status, chunks, snapshot_capture_id) VALUES (%s, %s, %s, %s, %s, "
            "%s, %s, %s)",
            (run.target_schema, run.run_id, run.source, run.snapshot, run.snapshot_hwm,
             run.status, Jsonb(run.chunks), run.snapshot_capture_id))


def save_profile(conn: psycopg.Connection, run_id: str, profile: dict[str, Any]) -> None:
    """Keep the source profile the type decisions came from (verify reuses it)."""
    with conn.transaction():
        conn.execute("UPDATE pgshift.migrate_runs SET profile = %s WHERE run_id = %s",
                     (Jsonb(profile), run_id))


def load_profile(conn: psycopg.Connection, target_schema: str) -> dict[str, Any] | None:
    """The profile of the last migrate into ``target_schema``, if it is known."""
    try:
        row = conn.execute("SELECT profile FROM pgshift.migrate_runs WHERE target_schema = %s",
                           (target_schema,)).fetchone()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return None
    return row[0] if row and row[0] else None


def forget_run(conn: psycopg.Connection, run_id: str) -> None:
    with conn.transaction():
        for table in ("migrate_chunks", "migrate_steps", "rejects"):
            conn.execute(f"DELETE FROM pgshift.{table} WHERE run_id = %s", (run_id,))
        conn.execute("DELETE FROM pgshift.migrate_runs WHERE run_id = %s", (run_id,))


def set_status(conn: psycopg.Connection, run_id: str, status: str) -> None:
    finished = "now()" if status == "done" else "NULL"
    with conn.transaction():
        conn.execute(f"UPDATE pgshift.migrate_runs SET status = %s, finished_at = {finished} "
                     "WHERE run_id = %s", (status, run_id))


def done_chunks(conn: psycopg.Connection, run_id: str) -> dict[tuple[str, int], tuple[int, int]]:
    """(table, chunk_no) -> (rows, rejects) of every committed chunk."""
    rows = conn.execute("SELECT table_name, chunk_no, rows, rejects FROM pgshift.migrate_chunks "
                        "WHERE run_id = %s", (run_id,)).fetchall()
    return {(t, n): (r, j) for t, n, r, j in rows}


def record_chunk(conn: psycopg.Connection, run_id: str, table: str, chunk_no: int, rows: int,
                 nbytes: int, rejects: list[RejectRecord], seconds: float,
                 profile: dict[str, Any] | None = None) -> None:
    """Insert the chunk's rejects and checkpoint; the caller's transaction commits them.

    ``profile`` is the chunk's own source profile when the copy scan computed it
    (the run's profile is the merge of its chunks').
    """
    if rejects:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO pgshift.rejects (run_id, table_name, key, column_name, raw_value, "
                "storage_class, reason) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [(run_id, r.table, Jsonb(r.key), r.column, _pg_safe(r.raw), r.storage_class,
                  r.reason) for r in rejects])
    conn.execute(
        "INSERT INTO pgshift.migrate_chunks (run_id, table_name, chunk_no, rows, bytes, rejects, "
        "seconds, profile) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (run_id, table, chunk_no, rows, nbytes, len({repr(sorted(r.key.items())) for r in rejects}),
         seconds, None if profile is None else Jsonb(profile)))


def chunk_profiles(conn: psycopg.Connection, run_id: str, table: str
                   ) -> dict[int, dict[str, Any] | None]:
    """chunk_no -> the profile recorded with each committed chunk of ``table`` (or None)."""
    rows = conn.execute("SELECT chunk_no, profile FROM pgshift.migrate_chunks "
                        "WHERE run_id = %s AND table_name = %s", (run_id, table)).fetchall()
    return {n: p for n, p in rows}


def forget_table(conn: psycopg.Connection, run_id: str, table: str) -> None:
    """Drop one table's chunk checkpoints and rejects (the caller's transaction)."""
    for bookkeeping in ("migrate_chunks", "rejects"):
        conn.execute(f"DELETE FROM pgshift.{bookkeeping} WHERE run_id = %s AND table_name = %s",
                     (run_id, table))


def save_table_profile(conn: psycopg.Connection, run_id: str, table: str,
                       profile: dict[str, Any]) -> None:
    """Replace one table's entry in the run's stored profile (the caller's transaction)."""
    conn.execute("UPDATE pgshift.migrate_runs SET profile = jsonb_set(coalesce(profile, '{}'), "
                 "ARRAY[%s], %s) WHERE run_id = %s", (table, Jsonb(profile), run_id))


def _pg_safe(text: str | None) -> str | None:
    # The raw value of a NUL-byte reject must itself be storable in a text column.
    return None if text is None else text.replace("\x00", "\\0")


def step_done(conn: psycopg.Connection, run_id: str) -> set[str]:
    rows = conn.execute("SELECT step FROM pgshift.migrate_steps WHERE run_id = %s",
                        (run_id,)).fetchall()
    return {r[0] for r in rows}


def step_key(statement: str) -> str:
    return hashlib.sha256(statement.encode()).hexdigest()[:24]


def record_step(conn: psycopg.Connection, run_id: str, statement: str) -> None:
    conn.execute("INSERT INTO pgshift.migrate_steps (run_id, step, statement) VALUES (%s, %s, %s)",
                 (run_id, step_key(statement), statement))


def all_rejects(conn: psycopg.Connection, run_id: str) -> Iterable[dict[str, Any]]:
    cur = conn.execute(
        "SELECT table_name, key, column_name, raw_value, storage_class, reason "
        "FROM pgshift.rejects WHERE run_id = %s ORDER BY id", (run_id,))
    for t, key, col, raw, cls, reason in cur:
        yield {"table": t, "key": key, "column": col, "raw_value": raw,
               "storage_class": cls, "reason": reason}


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)
