"""The application's plain indexes, set aside during the load and rebuilt after it.

COPY into a table maintains every index row by row; building an index once
after the load is several times cheaper (measured in docs/benchmarks.md, as
pgloader and pgcopydb do too). Only plain, non-unique indexes are set aside:
indexes behind constraints (primary keys, UNIQUE, EXCLUDE) and unique indexes
stay, so duplicates are still refused row by row and foreign keys keep their
referenced keys.

Every definition is written to ``pgshift.existing_indexes`` in the same
transaction that drops the index, and deleted in the transaction that
recreates it: a crash, a ``--resume`` or a ``--restart`` cannot lose one. Any
later ``--into-existing`` run into the schema rebuilds what is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from pgshift.schema.ddl import qualified

_TABLE = """
CREATE TABLE IF NOT EXISTS pgshift.existing_indexes (
    target_schema text NOT NULL,
    index_name text NOT NULL,
    table_name text NOT NULL,
    definition text NOT NULL,
    dropped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, index_name)
)
"""

_PLAIN = """
SELECT ic.relname, c.relname, pg_get_indexdef(i.indexrelid)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = ANY(%s) AND NOT i.indisunique AND i.indisvalid
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = i.indexrelid
                  AND d.deptype = 'i')
ORDER BY c.relname, ic.relname
"""


@dataclass(frozen=True)
class SavedIndex:
    """One index set aside: its table and the exact statement that recreates it."""

    name: str
    table: str
    definition: str


def set_aside(conn: psycopg.Connection, schema: str, tables: list[str]) -> list[SavedIndex]:
    """Record and drop the plain indexes of ``tables`` (one transaction)."""
    conn.execute(_TABLE)
    with conn.transaction():
        found = [SavedIndex(*row) for row in conn.execute(_PLAIN, (schema, tables)).fetchall()]
        for ix in found:
            conn.execute("INSERT INTO pgshift.existing_indexes (target_schema, index_name, "
                         "table_name, definition) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT DO NOTHING", (schema, ix.name, ix.table, ix.definition))
            conn.execute(f"DROP INDEX {qualified(schema, ix.name)}")
    return found


def recorded(conn: psycopg.Connection, schema: str) -> list[SavedIndex]:
    """Indexes set aside in ``schema`` and not rebuilt yet."""
    conn.execute(_TABLE)
    rows = conn.execute("SELECT index_name, table_name, definition FROM pgshift.existing_indexes "
                        "WHERE target_schema = %s ORDER BY table_name, index_name",
                        (schema,)).fetchall()
    return [SavedIndex(*r) for r in rows]


def rebuild(schema: str, saved: list[SavedIndex],
            in_sessions: Callable[[list[SavedIndex], Callable[[psycopg.Connection, SavedIndex],
                                                              None]], object]) -> None:
    """Recreate every recorded index (in parallel sessions), forgetting each as it lands."""

    def build(conn: psycopg.Connection, ix: SavedIndex) -> None:
        statement = ix.definition.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
        with conn.transaction():
            conn.execute(statement)
            conn.execute("DELETE FROM pgshift.existing_indexes WHERE target_schema = %s AND "
                         "index_name = %s", (schema, ix.name))

    in_sessions(sorted(saved, key=lambda ix: ix.table), build)
