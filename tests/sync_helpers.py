"""Helpers for the sync tests: a seeded, captured, migrated SQLite file and its copy.

No tests here; the ``test_sync_`` name keeps it among the sync test files.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
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
