"""Helpers for the reference-app, load and ledger tests (no tests here).

The app always runs for real: uvicorn on a free port in a thread, on a SQLite file made by the
one data generator, or on PostgreSQL holding the schema ``pgshift migrate`` created from it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pgshift.demo.app import AppConfig, AppServer
from pgshift.demo.app_faults import Faults
from pgshift.demo.seed import seed
from pgshift.dsn import Dsn
from pgshift.embedded_pg import PostgresServer
from pgshift.migrate import MigrateOptions, migrate

SCALE = 200  # jobs: ~12 pending, 10 users, 12 tools, 2 rate limits


def seeded_sqlite(tmp: Path, scale: int = SCALE) -> Path:
    path = tmp / "hyperpage.db"
    seed(path, scale, seed=7)
    return path


def migrated_postgres(tmp: Path, dsn: Dsn, scale: int = SCALE) -> Dsn:
    """Seed a SQLite file and migrate it into ``dsn``: the green schema the app must run on."""
    db = seeded_sqlite(tmp, scale)
    result = migrate(MigrateOptions(sqlite_path=db, dsn=dsn, state_dir=tmp / "state"))
    assert result.rejects == 0
    return dsn


def config_for(engine: str, tmp: Path, dsn: Dsn | None = None, *,
               faults: Faults | None = None) -> AppConfig:
    faults = faults or Faults()
    if engine == "sqlite":
        return AppConfig(engine="sqlite", database_path=seeded_sqlite(tmp), faults=faults)
    assert dsn is not None
    migrated_postgres(tmp, dsn)
    return AppConfig(engine="postgres", database_url=dsn.conninfo, faults=faults)


@contextmanager
def pg_database(server: PostgresServer, label: str) -> Iterator[Dsn]:
    """A fresh database for a module-scoped fixture (pg_dsn is per test)."""
    name = f"t_{label}_{uuid.uuid4().hex[:12]}"
    dsn = server.create_database(name)
    try:
        yield dsn
    finally:
        server.drop_database(name)


@contextmanager
def running_app(config: AppConfig) -> Iterator[AppServer]:
    with AppServer(config) as server:
        yield server
