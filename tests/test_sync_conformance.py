"""Every ChangeSource through the same contract (``tests/sync_conformance.py``):
SQLite's change log, PostgreSQL's trigger queue and a logical slot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgshift.dsn import Dsn
from pgshift.sync import ops
from pgshift.sync.apply import run
from pgshift.sync.apply_sqlite import run_to_sqlite
from pgshift.sync.common import SyncOptions, SyncResult, open_sqlite
from pgshift.sync.pg_logical import run_logical
from pgshift.sync.sqlite_sink import stored_record
from sync_conformance import (
    Harness,
    SourceConformance,
    pg_kv,
    pg_scalar,
    pg_upsert,
    sqlite_kv,
    sqlite_upsert,
)
from sync_helpers import small_synced

pytestmark = pytest.mark.data

TO_POSTGRES_APPLIED = ("select applied from pgshift.sync_state "
                       "where direction = 'to-postgres'")
TO_SQLITE_APPLIED = ("select coalesce(sum(applied_to_sqlite), 0) from pgshift.sync_tables "
                     "where table_name = 'kv'")


def _record(db: Path) -> dict[str, Any] | None:
    con = open_sqlite(db)
    try:
        return stored_record(con)
    finally:
        con.close()


def _opts(db: Path, dsn: Dsn, **kw: Any) -> SyncOptions:
    return SyncOptions(sqlite_path=db, dsn=dsn, **kw)


def _to_sqlite_harness(name: str, db: Path, dsn: Dsn, applier: Any) -> Harness:
    def apply(**kw: Any) -> SyncResult:
        result: SyncResult = applier(_opts(db, dsn, **kw))
        return result

    return Harness(
        name=name, db=db, dsn=dsn, direction="to-sqlite",
        write=lambda pairs: pg_upsert(dsn, pairs),
        write_other=lambda pairs: sqlite_upsert(db, pairs),
        source_kv=lambda: pg_kv(dsn), sink_kv=lambda: sqlite_kv(db),
        apply=apply, apply_other=lambda: run(_opts(db, dsn)),
        applied=lambda: pg_scalar(dsn, TO_SQLITE_APPLIED),
        last_record=lambda: _record(db),
        cli=["sync", "run", str(db), dsn.conninfo, "--mode", "to-sqlite"])


class TestSqliteLogSource(SourceConformance):
    @pytest.fixture
    def harness(self, tmp_path: Path, pg_dsn: Dsn) -> Harness:
        db = small_synced(tmp_path, pg_dsn, pg_capture=True)
        return Harness(
            name="sqlite-log", db=db, dsn=pg_dsn, direction="to-postgres",
            write=lambda pairs: sqlite_upsert(db, pairs),
            write_other=lambda pairs: pg_upsert(pg_dsn, pairs),
            source_kv=lambda: sqlite_kv(db), sink_kv=lambda: pg_kv(pg_dsn),
            apply=lambda **kw: run(_opts(db, pg_dsn, **kw)),
            apply_other=lambda: run_to_sqlite(_opts(db, pg_dsn)),
            applied=lambda: pg_scalar(pg_dsn, TO_POSTGRES_APPLIED),
            last_record=lambda: None,
            cli=["sync", "run", str(db), pg_dsn.conninfo])


class TestPgQueueSource(SourceConformance):
    @pytest.fixture
    def harness(self, tmp_path: Path, pg_dsn: Dsn) -> Harness:
        db = small_synced(tmp_path, pg_dsn, pg_capture=True)
        return _to_sqlite_harness("pg-queue", db, pg_dsn, run_to_sqlite)


class TestLogicalSource(SourceConformance):
    @pytest.fixture
    def harness(self, tmp_path: Path, pg_dsn: Dsn) -> Iterator[Harness]:
        db = small_synced(tmp_path, pg_dsn)
        ops.install(db, dsn=pg_dsn, pg_capture_mode="logical")
        try:
            yield _to_sqlite_harness("logical", db, pg_dsn, run_logical)
        finally:
            ops.uninstall(db, pg_dsn)  # the slot must go before the database is dropped
