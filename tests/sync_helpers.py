"""Helpers for the sync tests: a seeded, captured, migrated SQLite file and its copy.

No tests here; the ``test_sync_`` name keeps it among the sync test files.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pgshift.demo.seed import seed
from pgshift.dsn import Dsn
from pgshift.migrate import MigrateOptions, MigrateResult, migrate
from pgshift.sync import ops
from pgshift.sync.apply import SyncOptions, SyncResult, run
from pgshift.verify.run import VerifyOptions, VerifyResult, verify


def app_con(path: Path) -> sqlite3.Connection:
    """A connection like the app's: autocommit off, foreign keys on."""
    con = sqlite3.connect(path, timeout=10)
    con.execute("pragma foreign_keys = on")
    return con


def write(path: Path, *statements: str | tuple[str, Sequence[Any]]) -> None:
    """Run statements in one SQLite transaction as the app would."""
    con = app_con(path)
    try:
        for s in statements:
            if isinstance(s, tuple):
                con.execute(s[0], s[1])
            else:
                con.execute(s)
        con.commit()
    finally:
        con.close()


def captured_seed(tmp: Path, scale: int = 300) -> Path:
    db = tmp / "app.db"
    seed(db, scale, seed=7)
    ops.install(db)
    return db


def migrate_to(db: Path, dsn: Dsn, tmp: Path) -> MigrateResult:
    result = migrate(MigrateOptions(sqlite_path=db, dsn=dsn, state_dir=tmp / "state"))
    assert result.rejects == 0 and not result.violations, result.to_dict()
    return result


def max_seq(db: Path) -> int:
    """The highest seq in the SQLite change log (0 when empty)."""
    con = sqlite3.connect(db)
    try:
        return int(con.execute("select coalesce(max(seq), 0) from _pgshift_changes"
                               ).fetchone()[0])
    finally:
        con.close()


def sync_once(db: Path, dsn: Dsn, **kw: Any) -> SyncResult:
    return run(SyncOptions(sqlite_path=db, dsn=dsn, **kw))


def check(db: Path, dsn: Dsn) -> VerifyResult:
    result = verify(VerifyOptions(sqlite_path=db, dsn=dsn))
    assert result.identical, result.to_dict()
    return result


def schema_of(path: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        return con.execute("select type, name, tbl_name, sql from sqlite_schema "
                           "order by type, name").fetchall()
    finally:
        con.close()


def pg_exec(dsn: Dsn, *statements: str) -> list[tuple[Any, ...]]:
    """Run statements in autocommit; the rows of the last one."""
    from pgshift.dsn import connect

    conn = connect(dsn, autocommit=True)
    try:
        rows: list[tuple[Any, ...]] = []
        for s in statements:
            cur = conn.execute(s)
            rows = cur.fetchall() if cur.description else []
        return rows
    finally:
        conn.close()


def flipped_seed(tmp: Path, dsn: Dsn, scale: int = 300) -> Path:
    """Seeded, captured on both sides, migrated and synced to PostgreSQL: the state at
    the flip (PostgreSQL capture installed, to-postgres drained)."""
    db = captured_seed(tmp, scale)
    migrate_to(db, dsn, tmp)
    ops.install(db, dsn=dsn)
    write(db, "update users set name = 'before flip' where id = 1")
    assert sync_once(db, dsn).applied == 1
    return db


SMALL_SCHEMA = """
CREATE TABLE kv (k TEXT PRIMARY KEY NOT NULL, v TEXT);
CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);
CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL);
"""


def small_synced(tmp: Path, dsn: Dsn, *, pg_capture: bool = False,
                 schema_sql: str = SMALL_SCHEMA) -> Path:
    """A small WAL file (kv, u with a unique email, jobs), captured, migrated, and a
    first empty sync so the to-postgres checkpoint exists; with ``pg_capture``, also
    PostgreSQL capture on every table."""
    db = tmp / "small.db"
    con = sqlite3.connect(db)
    con.executescript(schema_sql)
    con.execute("pragma journal_mode=wal")
    if "CREATE TABLE kv " in schema_sql:
        con.executemany("insert into kv values (?, ?)", [(k, "seed") for k in "abcdef"])
        con.executemany("insert into u values (?, ?, ?)",
                        [(i, f"s{i}@e", "seed") for i in range(1, 6)])
        con.executemany("insert into jobs values (?, 'new')", [(i,) for i in range(1, 4)])
    con.commit()
    con.close()
    ops.install(db)
    migrate_to(db, dsn, tmp)
    if pg_capture:
        ops.install(db, dsn=dsn)
    sync_once(db, dsn)
    return db


def conflicts_of(dsn: Dsn) -> list[dict[str, Any]]:
    """Every row of pgshift.sync_conflicts, oldest first, as dicts."""
    from pgshift.dsn import connect

    conn = connect(dsn, autocommit=True)
    try:
        cur = conn.execute("select * from pgshift.sync_conflicts order by id")
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        conn.close()


def sqlite_rows(db: Path, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(query, params).fetchall()
    finally:
        con.close()


@contextmanager
def green_role(dsn: Dsn, label: str) -> Iterator[tuple[str, Dsn]]:
    """A login role like green's app role (SELECT, INSERT, UPDATE on every table of
    public), and a DSN that connects as it; dropped afterwards."""
    from psycopg import conninfo

    role = f"{label}_{uuid.uuid4().hex[:8]}"
    pg_exec(dsn, f"create role {role} login password 'green-pw'",
            f"grant usage on schema public to {role}",
            f"grant select, insert, update on all tables in schema public to {role}")
    try:
        yield role, Dsn(conninfo.make_conninfo(dsn.conninfo, user=role, password="green-pw"))
    finally:
        pg_exec(dsn, f"drop owned by {role}", f"drop role {role}")
