"""Change capture on PostgreSQL (the way back): a trigger per table, a queue table.

``install(conn, schema, tables)`` creates ``pgshift.pg_changes`` and one AFTER
INSERT/UPDATE/DELETE row trigger per table calling ``pgshift.capture(pk...)``,
which logs the table, the op, old and new key (JSON arrays), the after-image
and the before-image (``to_jsonb``), the transaction id and the capture time.

The log is consumed **as a queue**: the to-sqlite applier reads the committed
rows in id order, applies them and deletes them. A transaction that took a
lower id but commits after a higher one is simply read later; it is never
skipped (a high-water mark would skip it). Two changes of the same row are
serialized by the row lock, so their ids follow their commit order.

Echo suppression: the trigger does nothing in a transaction that set
``pgshift.applying = 'on'`` (the to-postgres applier does, with SET LOCAL).

Fence: :func:`fence` queues a marker row (``op = 'F'``) behind every change
committed before it (see there); the to-sqlite applier passes over it, and a
drain is done once the marker left the queue.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

from pgshift.errors import UsageError
from pgshift.sync import locking

TRIGGER = "_pgshift_capture"
FENCE_OP = "F"

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS pgshift;
CREATE TABLE IF NOT EXISTS pgshift.pg_changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_schema text NOT NULL,
    tbl text NOT NULL,
    op text NOT NULL,
    key_old jsonb,
    key_new jsonb,
    row jsonb,
    before jsonb,
    origin text NOT NULL DEFAULT 'postgres',
    txid bigint NOT NULL DEFAULT txid_current(),
    ts bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
);
-- The appliers look up a key's pending changes per change they apply (conflict checks,
-- the recheck after each batch): without these, each lookup scans the whole queue.
CREATE INDEX IF NOT EXISTS pg_changes_key_new ON pgshift.pg_changes (target_schema, tbl, key_new);
CREATE INDEX IF NOT EXISTS pg_changes_key_old ON pgshift.pg_changes (target_schema, tbl, key_old);
-- SECURITY DEFINER: green's app role writes the captured tables but has no privilege
-- on the pgshift schema; the trigger queues its changes as the installing role.
CREATE OR REPLACE FUNCTION pgshift.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n jsonb;
    o jsonb;
    kn jsonb;
    ko jsonb;
    col text;
BEGIN
    IF current_setting('pgshift.applying', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        n := to_jsonb(NEW);
        kn := '[]'::jsonb;
        FOREACH col IN ARRAY TG_ARGV LOOP
            kn := kn || jsonb_build_array(n -> col);
        END LOOP;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        o := to_jsonb(OLD);
        ko := '[]'::jsonb;
        FOREACH col IN ARRAY TG_ARGV LOOP
            ko := ko || jsonb_build_array(o -> col);
        END LOOP;
    END IF;
    INSERT INTO pgshift.pg_changes (target_schema, tbl, op, key_old, key_new, row, before)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, left(TG_OP, 1), ko, kn, n, o);
    RETURN NULL;
END
$$;
"""


def install(conn: psycopg.Connection, schema: str, tables: dict[str, list[str]]) -> None:
    """Create the queue, the function and a trigger per table ``{name: primary key}``.

    All or nothing, in one transaction (capture on half the tables would lose changes);
    should the application already write, a deadlock or a lock wait past 5 s rolls it
    back and it is tried again (:func:`pgshift.sync.locking.briefly`)."""

    def create(c: psycopg.Connection) -> None:
        c.execute("SELECT pg_advisory_xact_lock(hashtext('pgshift.schema'))")
        c.execute(SCHEMA_SQL)
        for table, key in tables.items():
            rel = pgsql.Identifier(schema, table)
            c.execute(pgsql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                pgsql.Identifier(TRIGGER), rel))
            c.execute(pgsql.SQL(
                "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW "
                "EXECUTE FUNCTION pgshift.capture({})").format(
                    pgsql.Identifier(TRIGGER), rel,
                    pgsql.SQL(", ").join(pgsql.Literal(k) for k in key)))

    conn.commit()
    locking.briefly(conn, create, lock_timeout=5.0)


def installed(conn: psycopg.Connection, schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = %s AND n.nspname = %s "
        "ORDER BY 1", (TRIGGER, schema)).fetchall()
    return [r[0] for r in rows]


def uninstall(conn: psycopg.Connection, schema: str) -> bool:
    """Drop this schema's triggers and its queued changes; the queue and function go
    when no schema uses them any more. True when something was removed.

    The application may be writing: each trigger is dropped alone, briefly, retried
    (:mod:`pgshift.sync.locking`), never all in one transaction (a deadlock)."""
    tables = installed(conn, schema)
    conn.commit()
    locking.each_briefly(conn, (pgsql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
        pgsql.Identifier(TRIGGER), pgsql.Identifier(schema, table)) for table in tables))

    def queue(c: psycopg.Connection) -> bool:
        exists = c.execute("SELECT to_regclass('pgshift.pg_changes') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            return False
        c.execute("DELETE FROM pgshift.pg_changes WHERE target_schema = %s", (schema,))
        others = c.execute("SELECT count(*) FROM pg_trigger WHERE tgname = %s",
                           (TRIGGER,)).fetchone()
        if others and not others[0]:
            c.execute("DROP TABLE pgshift.pg_changes")
            c.execute("DROP FUNCTION IF EXISTS pgshift.capture()")
        return True

    return locking.briefly(conn, queue) or bool(tables)


def fence(conn: psycopg.Connection, schema: str, *, lock_timeout: float = 10.0) -> int:
    """Queue a fence marker for ``schema``; its id.

    Ids are taken at insert time, not at commit: a transaction that committed just
    before the marker could hold a *higher* id than a marker taken naively. The
    marker is therefore inserted under ``SHARE ROW EXCLUSIVE`` on the queue, which
    waits for every transaction that has queued a change to end and holds new ones
    back for the instant of the insert: every change committed before the marker
    has a lower id, every later one a higher id. The router holds writes during a
    fence, so the wait is short; ``lock_timeout`` bounds it (a LockNotAvailable
    error then).
    """
    with conn.transaction():
        locking.set_lock_timeout(conn, lock_timeout)
        conn.execute("LOCK TABLE pgshift.pg_changes IN SHARE ROW EXCLUSIVE MODE")
        row = conn.execute(
            "INSERT INTO pgshift.pg_changes (target_schema, tbl, op, origin) "
            "VALUES (%s, '', %s, 'pgshift') RETURNING id", (schema, FENCE_OP)).fetchone()
    assert row is not None
    return int(row[0])


def queued(conn: psycopg.Connection, schema: str, change_id: int) -> bool:
    """True while the queue still holds the change ``change_id`` (e.g. a fence marker)."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pgshift.pg_changes WHERE id = %s "
                       "AND target_schema = %s)", (change_id, schema)).fetchone()
    conn.commit()
    return bool(row and row[0])


def stranded(conn: psycopg.Connection, schema: str, below: int | None = None
             ) -> dict[str, Any]:
    """The queued changes (fence markers aside) with id < ``below`` (all without it):
    ``count``, ``first``/``last`` id, ``oldest_age_ms`` and ``tables`` {name: count}."""
    limit = "AND id < %s" if below is not None else ""
    params: tuple[Any, ...] = (schema, FENCE_OP) + ((below,) if below is not None else ())
    rows = conn.execute(
        f"SELECT tbl, count(*), min(id), max(id), min(ts) FROM pgshift.pg_changes "
        f"WHERE target_schema = %s AND op <> %s {limit} GROUP BY tbl ORDER BY tbl",
        params).fetchall()
    conn.commit()
    return range_summary([(r[0], r[1], r[2], r[3], r[4]) for r in rows])


def range_summary(rows: list[tuple[str, int, int, int, int | None]]) -> dict[str, Any]:
    """Summarize per-table (table, count, first, last, oldest ts in ms) rows of a range."""
    if not rows:
        return {"count": 0, "first": None, "last": None, "oldest_age_ms": None, "tables": {}}
    oldest = min((r[4] for r in rows if r[4] is not None), default=None)
    return {"count": sum(int(r[1]) for r in rows), "first": min(int(r[2]) for r in rows),
            "last": max(int(r[3]) for r in rows),
            "oldest_age_ms": None if oldest is None else max(0, int(time.time() * 1000)
                                                             - int(oldest)),
            "tables": {r[0]: int(r[1]) for r in rows}}


def key_columns(conn: psycopg.Connection, schema: str, table: str) -> list[tuple[str, str]]:
    """(column, type) of the key the capture trigger of ``table`` logs, in its order."""
    row = conn.execute(
        "SELECT t.tgargs FROM pg_trigger t WHERE t.tgname = %s AND t.tgrelid = %s::regclass",
        (TRIGGER, pgsql.Identifier(schema, table).as_string())).fetchone()
    if row is None:
        return []
    names = [n.decode() for n in bytes(row[0]).split(b"\0") if n]
    types: dict[str, str] = dict(conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (pgsql.Identifier(schema, table).as_string(),)).fetchall())
    return [(n, types[n]) for n in names]


def rebase(conn: psycopg.Connection, schema: str, *, lock_timeout: float = 10.0
           ) -> dict[str, Any]:
    """Replace every queued change of ``schema`` by the *current* row of each key it
    touched (an ``I`` image, or a ``D`` when the row is gone): the flip's step for
    green's incidental writes captured before the flip.

    Why: before the flip the to-postgres applier's writes are not captured (echo
    suppression), so the queue of green's earlier writes is not a complete history
    of those rows: replayed as is into SQLite, a green update that SQLite's version
    later overwrote (sor-wins) would come back over it. The current PostgreSQL row
    is what SQLite must end with, whatever the history. Runs under the fence's lock
    (``SHARE ROW EXCLUSIVE``): a green change committing meanwhile is queued after
    the rebased rows, so it is applied after them.
    """
    with conn.transaction():
        locking.set_lock_timeout(conn, lock_timeout)
        conn.execute("LOCK TABLE pgshift.pg_changes IN SHARE ROW EXCLUSIVE MODE")
        rows = conn.execute(
            "SELECT id, tbl, key_old, key_new FROM pgshift.pg_changes "
            "WHERE target_schema = %s AND op <> %s ORDER BY id", (schema, FENCE_OP)
        ).fetchall()
        if not rows:
            return {"changes": 0, "keys": 0, "rows": 0, "deletes": 0}
        touched: dict[str, dict[str, Any]] = {}
        for _, tbl, key_old, key_new in rows:
            for key in (key_old, key_new):
                if key is not None:
                    touched.setdefault(tbl, {})[_key_text(key)] = key
        deletes: list[tuple[str, Any]] = []
        images: list[tuple[str, Any, Any]] = []
        for tbl, keys in touched.items():
            cols = key_columns(conn, schema, tbl)
            if not cols:
                raise UsageError(
                    f"table {schema}.{tbl} has queued changes but no capture trigger",
                    hint="pgshift sync install SQLITE PG, then flip again", table=tbl)
            match = pgsql.SQL(" AND ").join(
                pgsql.SQL("t.{} = (k.key ->> {})::{}").format(
                    pgsql.Identifier(name), pgsql.Literal(i), pgsql.SQL(typ))
                for i, (name, typ) in enumerate(cols))
            found = conn.execute(pgsql.SQL(
                "SELECT k.key, to_jsonb(t.*) FROM unnest(%s::jsonb[]) AS k(key) "
                "LEFT JOIN {} AS t ON {}").format(pgsql.Identifier(schema, tbl), match),
                ([Jsonb(k) for k in keys.values()],)).fetchall()
            for key, image in found:
                if image is None:
                    deletes.append((tbl, key))
                else:
                    images.append((tbl, key, image))
        conn.execute("DELETE FROM pgshift.pg_changes WHERE target_schema = %s AND op <> %s "
                     "AND id <= %s", (schema, FENCE_OP, rows[-1][0]))
        # deletes first: an image may take a unique value a deleted row held
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO pgshift.pg_changes (target_schema, tbl, op, key_old, origin) "
                "VALUES (%s, %s, 'D', %s, 'rebase')",
                [(schema, tbl, Jsonb(key)) for tbl, key in deletes])
            cur.executemany(
                "INSERT INTO pgshift.pg_changes (target_schema, tbl, op, key_new, row, "
                "origin) VALUES (%s, %s, 'I', %s, %s, 'rebase')",
                [(schema, tbl, Jsonb(key), Jsonb(image)) for tbl, key, image in images])
    return {"changes": len(rows), "keys": len(deletes) + len(images), "rows": len(images),
            "deletes": len(deletes)}


def _key_text(key: Any) -> str:
    return json.dumps(key, sort_keys=True)
