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
"""

from __future__ import annotations

import psycopg
from psycopg import sql as pgsql

TRIGGER = "_pgshift_capture"

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
CREATE OR REPLACE FUNCTION pgshift.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
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
    """Create the queue, the function and a trigger per table ``{name: primary key}``."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgshift.schema'))")
        conn.execute(SCHEMA_SQL)
        for table, key in tables.items():
            rel = pgsql.Identifier(schema, table)
            conn.execute(pgsql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                pgsql.Identifier(TRIGGER), rel))
            conn.execute(pgsql.SQL(
                "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW "
                "EXECUTE FUNCTION pgshift.capture({})").format(
                    pgsql.Identifier(TRIGGER), rel,
                    pgsql.SQL(", ").join(pgsql.Literal(k) for k in key)))


def installed(conn: psycopg.Connection, schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = %s AND n.nspname = %s "
        "ORDER BY 1", (TRIGGER, schema)).fetchall()
    return [r[0] for r in rows]


def uninstall(conn: psycopg.Connection, schema: str) -> bool:
    """Drop this schema's triggers and its queued changes; the queue and function go
    when no schema uses them any more. True when something was removed."""
    with conn.transaction():
        tables = installed(conn, schema)
        for table in tables:
            conn.execute(pgsql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                pgsql.Identifier(TRIGGER), pgsql.Identifier(schema, table)))
        exists = conn.execute("SELECT to_regclass('pgshift.pg_changes') IS NOT NULL"
                              ).fetchone()
        if exists and exists[0]:
            conn.execute("DELETE FROM pgshift.pg_changes WHERE target_schema = %s", (schema,))
            others = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = %s",
                                  (TRIGGER,)).fetchone()
            if others and not others[0]:
                conn.execute("DROP TABLE pgshift.pg_changes")
                conn.execute("DROP FUNCTION IF EXISTS pgshift.capture()")
            return True
        return bool(tables)
