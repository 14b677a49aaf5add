"""Helpers shared by the ``pgshift verify`` tests: real SQLite files, migrate, verify, diffs."""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pgshift.dsn import Dsn, connect
from pgshift.embedded_pg import PostgresServer
from pgshift.migrate import MigrateOptions, MigrateResult, migrate
from pgshift.verify.run import VerifyOptions, VerifyResult, verify
from pgshift.verify.segments import RowDiff
from sqlite_helpers import make_db as make_db  # re-exported for the verify tests
from sqlite_helpers import qi


def sqlite_exec(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the SQLite file and commit; returns any fetched rows."""
    con = sqlite3.connect(path)
    try:
        rows = con.execute(sql, params).fetchall()
        con.commit()
        return rows
    finally:
        con.close()


def pg_exec(dsn: Dsn, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement on PostgreSQL in autocommit; returns any fetched rows."""
    conn = connect(dsn, autocommit=True, application_name="pgshift-tests")
    try:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def migrate_into(db: Path, dsn: Dsn, state: Path, **kw: Any) -> MigrateResult:
    """Migrate ``db`` into ``dsn``; the copy must be complete (no rejects)."""
    result = migrate(MigrateOptions(sqlite_path=db, dsn=dsn, state_dir=state, **kw))
    assert result.rejects == 0, result.to_dict()
    assert not result.violations, result.to_dict()
    return result


def verify_options(db: Path, dsn: Dsn, state: Path, **kw: Any) -> VerifyOptions:
    """VerifyOptions with the state directory in the test's tmp_path (when verify has one)."""
    if "state_dir" in {f.name for f in fields(VerifyOptions)}:
        kw.setdefault("state_dir", state)
    return VerifyOptions(sqlite_path=db, dsn=dsn, **kw)


def run_verify(db: Path, dsn: Dsn, state: Path, **kw: Any) -> VerifyResult:
    return verify(verify_options(db, dsn, state, **kw))


def all_diffs(result: VerifyResult) -> list[RowDiff]:
    return [d for t in result.tables for d in t.diffs]


def assert_identical(result: VerifyResult) -> None:
    """Identical data and schema, exit code 0 — with a readable message otherwise."""
    assert result.identical, result.to_dict()
    assert int(result.exit_code) == 0
    assert all_diffs(result) == []
    assert result.schema_diffs == []


def only_diff(result: VerifyResult) -> RowDiff:
    """The one row difference a single planted change must produce (exit 1, no schema diff)."""
    assert not result.identical
    assert int(result.exit_code) == 1
    assert result.schema_diffs == [], result.schema_diffs
    diffs = all_diffs(result)
    assert len(diffs) == 1, [d.to_dict() for d in diffs]
    return diffs[0]


def schema_diffs(result: VerifyResult) -> set[tuple[str, str, str, str]]:
    return {(d.obj, d.what, d.expected, d.actual) for d in result.schema_diffs}


@contextmanager
def fresh_database(server: PostgresServer, label: str) -> Iterator[Dsn]:
    """A database of its own for a module-scoped fixture (pg_dsn is per test)."""
    name = f"t_verify_{label}_{uuid.uuid4().hex[:12]}"
    dsn = server.create_database(name)
    try:
        yield dsn
    finally:
        server.drop_database(name)


@dataclass
class MigratedCopy:
    """A SQLite file and its migrated PostgreSQL copy, with a backup of the copy's rows."""

    db: Path
    dsn: Dsn
    state: Path
    tables: list[str]
    result: MigrateResult | None = None

    def backup(self) -> None:
        pg_exec(self.dsn, "CREATE SCHEMA IF NOT EXISTS verify_backup")
        for t in self.tables:
            pg_exec(self.dsn, f"CREATE TABLE verify_backup.{qi(t)} AS TABLE public.{qi(t)}")

    def restore(self) -> None:
        """Put the PostgreSQL rows back as migrated (undoes a test's planted changes)."""
        names = ", ".join(f"public.{qi(t)}" for t in self.tables)
        conn = connect(self.dsn, autocommit=False, application_name="pgshift-tests")
        try:
            conn.execute(f"TRUNCATE {names}")
            for t in self.tables:
                conn.execute(f"INSERT INTO public.{qi(t)} SELECT * FROM verify_backup.{qi(t)}")
            conn.commit()
        finally:
            conn.close()

    def for_test(self, tmp_path: Path) -> MigratedCopy:
        """This copy with a private SQLite file (so a test may change it) and state dir."""
        db = tmp_path / self.db.name
        shutil.copyfile(self.db, db)
        return MigratedCopy(db, self.dsn, tmp_path / "state", self.tables, self.result)

    def verify(self, **kw: Any) -> VerifyResult:
        return run_verify(self.db, self.dsn, self.state, **kw)


@contextmanager
def migrated_module(server: PostgresServer, base: Path, label: str, script: str,
                    rows: dict[str, Iterable[Sequence[Any]]]) -> Iterator[MigratedCopy]:
    """Build, migrate, check identical and back up once; for a module-scoped fixture."""
    db = make_db(base / f"{label}.db", script, rows)
    with fresh_database(server, label) as dsn:
        state = base / "state"
        result = migrate_into(db, dsn, state)
        copy = MigratedCopy(db, dsn, state, [t.name for t in result.plan.tables], result)
        assert_identical(copy.verify())
        copy.backup()
        yield copy
