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
negative rows stay as they are and travel to SQLite like any other row. In
every mode the flip also moves a sequence that counts up but lags behind the
ids blue's rows brought (``--green-ids keep``), never backwards. The way back
(:func:`sqlite_past_green`) raises SQLite's AUTOINCREMENT marks past the ids
green's sequences handed out.

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

from pgshift.sync import locking


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
    columns = find(conn, schema, tables)
    conn.commit()
    for col in columns:
        if col.negative:
            out.append(_report(col, None, "already negative"))
            continue

        def down(c: psycopg.Connection, col: IdentityColumn = col) -> int:
            low = c.execute(pgsql.SQL("SELECT least(min({}), 0) FROM {}").format(
                pgsql.Identifier(col.column), pgsql.Identifier(schema, col.table))
            ).fetchone()
            start = int(low[0] if low and low[0] is not None else 0) - 1
            c.execute(pgsql.SQL(
                "ALTER SEQUENCE {} INCREMENT BY -1 NO MINVALUE MAXVALUE -1 START WITH {} "
                "RESTART").format(pgsql.SQL(col.sequence), pgsql.Literal(start)))
            return start

        # a sequence at a time (pgshift.sync.locking): the application may be writing
        out.append(_report(col, locking.briefly(conn, down), "counts down"))
    return out


def to_positive(conn: psycopg.Connection, schema: str,
                floors: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Leave every identity/serial sequence of ``schema`` counting up, past every key
    (the flip); the sequences it moved.

    A sequence that counts down (``--green-ids negative``) turns to count up; one
    that counts up but whose next value is not past ``max(id)`` is moved forward:
    with the default ``--green-ids keep`` the to-postgres applier carried blue's
    rows with SQLite's ids, and the sequence stayed where migrate left it, behind
    them: green's first default-id inserts after the flip would fail with duplicate
    keys. The next value becomes ``max(max(id), floor, 0) + 1``, where ``floors``
    (SQLite's ``sqlite_sequence``: AUTOINCREMENT never reuses an id, even one whose
    row is deleted) are respected too. A sequence is never moved backwards: one
    already past every key is left alone (so a second call moves nothing).

    (A positive id a sequence gave out before it turned negative and whose row is
    deleted since could be handed out again; migrate restarts the sequences at
    max(id) + 1 just before, so only green's inserts between migrate and
    ``sync install --green-ids negative`` are concerned.)
    Each table is locked against writes (``SHARE ROW EXCLUSIVE``) between reading
    max(id) and the restart, a table at a time, each in a transaction of its own
    (:func:`pgshift.sync.locking.briefly`): at uninstall the application writes, and
    all tables locked in one transaction deadlocked with it.
    """
    out = []
    columns = find(conn, schema)
    conn.commit()
    for col in columns:
        def up(c: psycopg.Connection, col: IdentityColumn = col) -> int | None:
            rel = pgsql.Identifier(schema, col.table)
            c.execute(pgsql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(rel))
            high = c.execute(pgsql.SQL("SELECT max({}) FROM {}").format(
                pgsql.Identifier(col.column), rel)).fetchone()
            start = max(0, int(high[0]) if high and high[0] is not None else 0,
                        (floors or {}).get(col.table, 0)) + 1
            if not col.negative:
                upcoming = next_value(c, col)
                if upcoming >= start:
                    return None  # already past every key: never backwards
                start = max(start, upcoming)
            c.execute(pgsql.SQL(
                "ALTER SEQUENCE {} INCREMENT BY 1 MINVALUE 1 NO MAXVALUE START WITH {} "
                "RESTART").format(pgsql.SQL(col.sequence), pgsql.Literal(start)))
            return start

        moved = locking.briefly(conn, up)
        if moved is not None:
            out.append(_report(col, moved, "counts up"))
    return out


def next_value(conn: psycopg.Connection, col: IdentityColumn) -> int:
    """The value the next ``nextval`` of ``col``'s sequence returns (read, not taken)."""
    row = conn.execute(pgsql.SQL("SELECT last_value, is_called FROM {}").format(
        pgsql.SQL(col.sequence))).fetchone()
    assert row is not None
    return int(row[0]) + (col.increment if row[1] else 0)


def sqlite_past_green(con: sqlite3.Connection, conn: psycopg.Connection,
                      schema: str) -> list[dict[str, Any]]:
    """Move SQLite's AUTOINCREMENT high marks past every id PostgreSQL handed out (the
    way back, while blue takes no writes); the tables whose mark moved.

    An ``INTEGER PRIMARY KEY`` table allocates ``max(rowid) + 1``: past every key green
    created that still exists (the drain brought them over). An AUTOINCREMENT table
    allocates past ``sqlite_sequence``, which never goes back: it is raised to the
    highest id green's sequence gave out (rows green inserted and deleted, or whose
    transaction rolled back, included), so blue never reuses an id green used.
    Only sequences counting up are read (negative ids are never allocated by SQLite).
    Tables are matched by name (a schema loaded ``--into-existing`` may name them
    differently: those are left alone).
    """
    auto = _autoincrement_tables(con)
    given: dict[str, int] = {}
    for col in find(conn, schema):
        if col.negative or col.table not in auto or auto[col.table] != col.column:
            continue
        given[col.table] = max(given.get(col.table, 0), next_value(conn, col) - 1)
    conn.commit()
    marks = sqlite_floors(con)
    out = []
    con.execute("BEGIN IMMEDIATE")
    try:
        for table, high in sorted(given.items()):
            rowid = con.execute(f'SELECT max("{auto[table]}") FROM "{table}"').fetchone()[0]
            want = max(high, int(rowid or 0))
            if want <= marks.get(table, 0):
                continue
            if table in marks:
                con.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (want, table))
            else:
                con.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)",
                            (table, want))
            out.append({"table": table, "column": auto[table], "seq": want,
                        "was": marks.get(table)})
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return out


def _autoincrement_tables(con: sqlite3.Connection) -> dict[str, str]:
    """{table: its INTEGER PRIMARY KEY column} for the AUTOINCREMENT tables."""
    out = {}
    for (name,) in con.execute("SELECT name FROM sqlite_schema WHERE type = 'table' "
                               "AND sql LIKE '%AUTOINCREMENT%'").fetchall():
        pk = [r for r in con.execute("SELECT name, type, pk FROM pragma_table_info(?)",
                                     (name,)) if r[2]]
        if len(pk) == 1 and str(pk[0][1]).upper() == "INTEGER":
            out[str(name)] = str(pk[0][0])
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
