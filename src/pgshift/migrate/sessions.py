"""PostgreSQL sessions for loading: their settings, and parallel post-load work."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import psycopg
from psycopg import sql as pgsql

from pgshift.dsn import connect
from pgshift.migrate.options import MigrateOptions
from pgshift.schema.model import qident

T = TypeVar("T")
R = TypeVar("R")


def session_sql(schema: str) -> list[str]:
    """Settings every loading session uses (why: see docs/architecture.md#sessions)."""
    return [
        "SET statement_timeout = 0",
        "SET lock_timeout = 0",
        "SET idle_in_transaction_session_timeout = 0",
        "SET synchronous_commit = off",
        "SET client_encoding = 'UTF8'",
        "SET datestyle = 'ISO, YMD'",
        "SET timezone = 'UTC'",
        "SET maintenance_work_mem = '256MB'",
        pgsql.SQL("SET search_path = {}, pg_catalog").format(pgsql.Identifier(schema)).as_string(),
    ]


def in_sessions(opts: MigrateOptions, items: list[T], fn: Callable[[psycopg.Connection, T], R],
                *, role: bool = True) -> list[R]:
    """Run ``fn(conn, item)`` for each item on ``opts.jobs`` threads, one session each.

    Post-load work is one statement per object, each run by its own backend:
    parallel sessions are how the index builds and validations use every core.
    """
    local = threading.local()
    opened: list[psycopg.Connection] = []
    lock = threading.Lock()

    def session() -> psycopg.Connection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = connect(opts.dsn, autocommit=True)
            for stmt in session_sql(opts.schema):
                conn.execute(stmt)
            if role and opts.owner:
                conn.execute(pgsql.SQL("SET ROLE {}").format(pgsql.Identifier(opts.owner)))
            local.conn = conn
            with lock:
                opened.append(conn)
        return conn

    try:
        with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
            return list(pool.map(lambda item: fn(session(), item), items))
    finally:
        for conn in opened:
            conn.close()


def violating_keys(conn: psycopg.Connection, rel: str, conname: str, contype: str) -> str:
    """Up to 10 keys of rows breaking a constraint, for the report."""
    row = conn.execute(
        "SELECT pg_get_constraintdef(c.oid), "
        "(SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(c.conkey) WITH ORDINALITY "
        " k(attnum, ord) JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum), "
        "c.confrelid::regclass::text, "
        "(SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(c.confkey) WITH ORDINALITY "
        " k(attnum, ord) JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum) "
        "FROM pg_constraint c WHERE c.conname = %s AND c.conrelid = %s::regclass",
        (conname, rel)).fetchone()
    if row is None:
        return "?"
    definition, cols, parent, pcols = row
    pk_row = conn.execute(
        "SELECT array_agg(a.attname ORDER BY array_position(i.indkey, a.attnum)) FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary", (rel,)).fetchone()
    # An aggregate always returns one row: NULL (no primary key) falls back to ctid.
    pk = (pk_row[0] if pk_row is not None else None) or ["ctid"]
    key_sql = ", ".join(qident(c) if c != "ctid" else "ctid::text" for c in pk)
    if contype == "f":
        match = " AND ".join(f"p.{qident(pc)} = t.{qident(c)}" for c, pc in zip(cols, pcols,
                                                                               strict=True))
        notnull = " AND ".join(f"t.{qident(c)} IS NOT NULL" for c in cols)
        keys = ", ".join("t." + k for k in key_sql.split(", "))
        query = (f"SELECT {keys}, "
                 f"{', '.join('t.' + qident(c) for c in cols)} FROM {rel} t WHERE {notnull} AND "
                 f"NOT EXISTS (SELECT 1 FROM {parent} p WHERE {match}) LIMIT 10")
    else:
        expr = definition[len("CHECK "):] if definition.startswith("CHECK ") else definition
        expr = expr.replace(" NOT VALID", "")
        query = f"SELECT {key_sql} FROM {rel} WHERE NOT {expr} LIMIT 10"
    try:
        found = conn.execute(query).fetchall()
    except psycopg.Error:
        return "(could not list)"
    return "; ".join(", ".join(str(v) for v in r) for r in found)
