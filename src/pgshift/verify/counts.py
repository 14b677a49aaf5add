"""Row counts on both sides: the first, cheapest check (full content comparison builds on it)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import psycopg

from pgshift.schema.ddl import qualified


@dataclass(frozen=True)
class CountRow:
    table: str
    sqlite: int
    postgres: int

    @property
    def equal(self) -> bool:
        return self.sqlite == self.postgres


def compare_counts(source: sqlite3.Connection, target: psycopg.Connection, tables: list[str],
                   schema: str = "public") -> list[CountRow]:
    """Count every table on both sides."""
    out = []
    for t in tables:
        quoted = '"' + t.replace('"', '""') + '"'
        s = source.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]
        p = target.execute(f"SELECT count(*) FROM {qualified(schema, t)}").fetchone()[0]
        out.append(CountRow(t, int(s), int(p)))
    return out
