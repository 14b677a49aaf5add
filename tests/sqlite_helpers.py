"""Small helpers shared by the migrate tests: real SQLite files and PostgreSQL read-back."""

from __future__ import annotations

import json
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from pgshift.dsn import Dsn
from pgshift.migrate import MigrateOptions, MigrateResult, migrate


def make_db(path: Path, script: str = "", rows: dict[str, Iterable[Sequence[Any]]] | None = None,
            *, wal: bool = False) -> Path:
    """Create the SQLite file ``path`` from a DDL script plus rows inserted as parameters."""
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    try:
        if wal:
            con.execute("PRAGMA journal_mode=WAL")
        con.executescript(script)
        for table, data in (rows or {}).items():
            data = list(data)
            if not data:
                continue
            marks = ", ".join("?" for _ in data[0])
            con.executemany(f"INSERT INTO {qi(table)} VALUES ({marks})", data)
        con.commit()
    finally:
        con.close()
    return path


def qi(name: str) -> str:
    """Quote an identifier (same rule in SQLite and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


def sqlite_rows(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def run_migrate(db: Path, dsn: Dsn, state: Path, **kw: Any) -> MigrateResult:
    """migrate() with the state directory kept in the test's tmp_path."""
    return migrate(MigrateOptions(sqlite_path=db, dsn=dsn, state_dir=state, **kw))


def pg_rows(conn: psycopg.Connection, sql: str, params: Sequence[Any] | None = None
            ) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def bits(x: float) -> bytes:
    """The IEEE-754 bytes of a double: equality of these is bit-exact equality."""
    return struct.pack(">d", x)


def note_messages(result: MigrateResult, level: str | None = None) -> list[tuple[str, str]]:
    return [(n.obj, n.message) for n in result.plan.notes if level is None or n.level == level]
