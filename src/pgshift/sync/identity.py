"""Key allocation on PostgreSQL while both sides insert: negative ids before the flip.

SQLite always allocates ``max(rowid) + 1`` (``INTEGER PRIMARY KEY``), and
AUTOINCREMENT tables one more than the highest id ever used. An "offset" range
for PostgreSQL ids breaks as soon as one replicated row lands in SQLite: SQLite
then allocates right after it. So while green (PostgreSQL) may insert before
the flip, the identity and serial sequences of PostgreSQL count *down* from
-1 (:func:`to_negative`): SQLite never allocates a negative id by itself, so a
row green inserts never collides with one blue inserts, and the to-postgres
applier (which upserts SQLite's rows by key) never overwrites one.

At the switch (:func:`to_positive`, called by ``pgshift sync flip``) they move
to ``max(id) + 1`` (past SQLite's AUTOINCREMENT high mark, and past any
positive value the sequence already gave out) with ``INCREMENT BY 1``; the
negative rows stay as they are and travel to SQLite like any other row.

Risk: an app that assumes ids are positive (``id > 0`` checks, unsigned
columns in another system, ids parsed as unsigned, "newest = highest id"
ordering) misbehaves with the rows green creates before the flip. Opt-in:
``pgshift sync install SQLITE PG --green-ids negative``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql


@dataclass(frozen=True)
class IdentityColumn:
    """A sequence-backed integer column: an identity column or a serial."""

    table: str
    column: str
    sequence: str  # qualified, quoted (regclass text)
    kind: str  # "identity" or "serial"
    increment: int
    last_value: int | None

    @property
    def negative(self) -> bool:
        return self.increment < 0


def find(conn: psycopg.Connection, schema: str,
         tables: list[str] | None = None) -> list[IdentityColumn]:
    """The identity and serial columns of ``schema`` (of ``tables`` only, when given).

    Leaves no transaction open that was not open before (a later
    ``conn.transaction()`` would otherwise be a mere savepoint).
    """
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    rows = conn.execute(
        "SELECT c.relname, a.attname, s.oid::regclass::text, "
        "CASE d.deptype WHEN 'i' THEN 'identity' ELSE 'serial' END, "
        "q.increment_by, q.last_value "
        "FROM pg_class s JOIN pg_depend d ON d.objid = s.oid "
        "AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
        "JOIN pg_class c ON c.oid = d.refobjid "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.refobjsubid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_namespace sn ON sn.oid = s.relnamespace "
        "JOIN pg_sequences q ON q.schemaname = sn.nspname AND q.sequencename = s.relname "
        "WHERE s.relkind = 'S' AND d.deptype IN ('a', 'i') AND n.nspname = %s "
        "ORDER BY c.relname, a.attname", (schema,)).fetchall()
    if idle:
        conn.commit()
    wanted = set(tables) if tables is not None else None
    return [IdentityColumn(*r) for r in rows if wanted is None or r[0] in wanted]


def to_negative(conn: psycopg.Connection, schema: str,
                tables: list[str] | None = None) -> list[dict[str, Any]]:
    """Make every identity/serial sequence count down from below ``min(id, 0)``.

    Idempotent: a sequence that already counts down is left alone (restarting it
    would hand out ids green already used).
    """
    out = []
    with conn.transaction():
        for col in find(conn, schema, tables):
            if col.negative:
                out.append(_report(col, None, "already negative"))
                continue
            low = conn.execute(pgsql.SQL("SELECT least(min({}), 0) FROM {}").format(
                pgsql.Identifier(col.column), pgsql.Identifier(schema, col.table))
            ).fetchone()
            start = int(low[0] if low and low[0] is not None else 0) - 1
            conn.execute(pgsql.SQL(
                "ALTER SEQUENCE {} INCREMENT BY -1 NO MINVALUE MAXVALUE -1 START WITH {} "
                "RESTART").format(pgsql.SQL(col.sequence), pgsql.Literal(start)))
            out.append(_report(col, start, "counts down"))
    return out


def to_positive(conn: psycopg.Connection, schema: str,
                floors: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Move the sequences that count down to ``max(id) + 1``, counting up (the flip).

    ``floors`` (SQLite's ``sqlite_sequence``: AUTOINCREMENT never reuses an id) are
    respected too. (A positive id the sequence gave out before it turned negative and
    whose row is deleted since could be handed out again; migrate restarts the
    sequences at max(id) + 1 just before, so only green's inserts between migrate and
    ``sync install --green-ids negative`` are concerned.)
    Sequences already counting up are left alone. Each table is locked against
    writes (``SHARE ROW EXCLUSIVE``) between reading max(id) and the restart.
    """
    out = []
    with conn.transaction():
        for col in find(conn, schema):
            if not col.negative:
                continue
            rel = pgsql.Identifier(schema, col.table)
            conn.execute(pgsql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(rel))
            high = conn.execute(pgsql.SQL("SELECT max({}) FROM {}").format(
                pgsql.Identifier(col.column), rel)).fetchone()
            start = max(0, int(high[0]) if high and high[0] is not None else 0,
                        (floors or {}).get(col.table, 0)) + 1
            conn.execute(pgsql.SQL(
                "ALTER SEQUENCE {} INCREMENT BY 1 MINVALUE 1 NO MAXVALUE START WITH {} "
                "RESTART").format(pgsql.SQL(col.sequence), pgsql.Literal(start)))
            out.append(_report(col, start, "counts up"))
    return out


def sqlite_floors(con: sqlite3.Connection) -> dict[str, int]:
    """SQLite's AUTOINCREMENT high marks (``sqlite_sequence``), by table."""
    if con.execute("select 1 from sqlite_schema where name = 'sqlite_sequence'").fetchone() \
            is None:
        return {}
    return {str(r[0]): int(r[1]) for r in con.execute("select name, seq from sqlite_sequence")
            if r[1] is not None}


def _report(col: IdentityColumn, start: int | None, state: str) -> dict[str, Any]:
    return {"table": col.table, "column": col.column, "kind": col.kind,
            "sequence": col.sequence, "restart": start, "state": state}


def plan_note(col: IdentityColumn | None) -> list[str]:
    """What ``pgshift sync plan`` says about a table's identity column (if any)."""
    if col is None:
        return []
    if col.negative:
        return [f"{col.kind} {col.column} counts down from -1 until `pgshift sync flip` "
                "(--green-ids negative): rows green inserts before the flip get negative "
                "ids; an app that assumes positive ids misbehaves with them"]
    return [f"{col.kind} {col.column} allocates the ids SQLite allocates too: a row green "
            "inserts before the flip collides with one blue inserts and is overwritten "
            "(pgshift sync install SQLITE PG --green-ids negative avoids it; risky for apps "
            "that assume positive ids)"]
