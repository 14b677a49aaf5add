"""Row images through a mapping, for ``pgshift sync`` of tables loaded ``--into-existing``.

Forward (to PostgreSQL): a SQLite change carries the source row's image; the
mapped target row is what the table's column expressions give over it,
evaluated by SQLite itself (the same expressions, helper functions and
conversions migrate used), so a synced row equals the row migrate would have
loaded.

Reverse (to SQLite, after the flip): a PostgreSQL change carries the target
row as JSON; each source column is the mapping's ``reverse:`` expression over
it, evaluated by PostgreSQL on ``jsonb_populate_record`` of the target type.
"""

from __future__ import annotations

import datetime as dt
import decimal
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pgshift.errors import UsageError
from pgshift.existing import sqlfuncs
from pgshift.schema.ddl import qualified


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class MappedSync:
    """What sync needs of one mapped table (from the feed migrate stored)."""

    table: str  # target table
    source: str  # source table
    source_columns: list[str]  # in the change log's image order
    columns: list[dict[str, Any]]  # target columns: name, type, expr, conversion
    key: dict[str, str]  # source key column -> target column
    reverse: dict[str, str]  # source column -> PostgreSQL expression

    @classmethod
    def from_stored(cls, stored: dict[str, Any], source_columns: list[str]) -> MappedSync:
        """From one table of the stored feed; refuses tables without a reverse mapping."""
        if not stored.get("sync"):
            raise UsageError(f"table {stored['table']} was loaded --into-existing without "
                             "`sync: true` in its mapping: sync cannot carry it",
                             hint="add sync: true, key: and reverse: to the mapping "
                                  "(docs/mapping.md), migrate again, or --exclude it")
        return cls(stored["table"], stored["source"], source_columns, stored["columns"],
                   stored["key"], stored["reverse"])

    @property
    def target_key(self) -> list[str]:
        """The target's key columns, in the source key's order."""
        return list(self.key.values())


class ForwardMapper:
    """Source images -> target values, in SQLite (one small query per image)."""

    def __init__(self, mapped: MappedSync) -> None:
        self.mapped = mapped
        self.con = sqlfuncs.register(sqlite3.connect(":memory:"))
        cols = ", ".join(f"? AS {q(c)}" for c in mapped.source_columns)
        exprs = ", ".join(f"({c['expr']})" for c in mapped.columns)
        self.sql = f"SELECT {exprs} FROM (SELECT {cols})"
        try:
            self.con.execute(self.sql, [None] * len(mapped.source_columns)).fetchone()
        except sqlite3.Error as exc:
            raise UsageError(f"mapping {mapped.table}: an expression does not evaluate over a "
                             f"single row of {mapped.source}: {exc}",
                             hint="sync evaluates expressions per changed row: subqueries over "
                                  "other tables are not supported for synced tables") from exc

    def target_row(self, image: Sequence[object]) -> list[object]:
        """The target column values of one source image (same order as ``columns``)."""
        return list(self.con.execute(self.sql, list(image)).fetchone())

    def target_key(self, row: Sequence[object]) -> list[object]:
        """The target key values out of a mapped row."""
        names = [c["name"] for c in self.mapped.columns]
        return [row[names.index(k)] for k in self.mapped.target_key]

    def close(self) -> None:
        self.con.close()


class ReverseMapper:
    """Target rows (PostgreSQL JSON images) -> source values, in PostgreSQL."""

    def __init__(self, pg: psycopg.Connection, schema: str, mapped: MappedSync) -> None:
        self.pg, self.mapped = pg, mapped
        exprs = ", ".join(f"({mapped.reverse[c]})" for c in mapped.source_columns)
        rel = qualified(schema, mapped.table)
        self.sql = f"SELECT {exprs} FROM jsonb_populate_record(NULL::{rel}, %s::jsonb) AS t"

    def source_row(self, image: str | dict[str, Any]) -> list[object]:
        """The source column values (SQLite storage types) of one target image."""
        import json

        text = image if isinstance(image, str) else json.dumps(image)
        row = self.pg.execute(self.sql, (text,)).fetchone()
        assert row is not None
        return [sqlite_value(v) for v in row]


def sqlite_value(v: object) -> object:
    """A PostgreSQL value as SQLite stores it (the reverse expression chose the form)."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() and v.as_tuple().exponent == 0 else float(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, memoryview):
        return bytes(v)
    if isinstance(v, dict | list):
        import json

        return json.dumps(v, separators=(",", ":"))
    return v
