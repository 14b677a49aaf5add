"""Shared fixtures: the test PostgreSQL server and a fresh database per test.

The server is the embedded one (started once per session in a temporary directory) unless
``PGSHIFT_TEST_DSN`` names an existing server whose user may create databases.
``PGSHIFT_TEST_PG_BINDIR`` runs the embedded server from another bindir (CI's second pass
uses Debian's ``/usr/lib/postgresql/15/bin``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, settings

from pgshift.dsn import Dsn, connect, resolve
from pgshift.embedded_pg import EmbeddedPostgres, ExistingPostgres, PostgresServer

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

PG_FIXTURES = frozenset({"pg_server", "pg_dsn", "pg_conn"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses the test PostgreSQL as ``integration``."""
    for item in items:
        if PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL: ``PGSHIFT_TEST_DSN``'s server, or an embedded one."""
    external = os.environ.get("PGSHIFT_TEST_DSN", "").strip()
    if external:
        yield ExistingPostgres(resolve(external))
        return
    bindir = os.environ.get("PGSHIFT_TEST_PG_BINDIR", "").strip()
    # Not tmp_path_factory: pytest resets /tmp/pytest-of-root to 0700, which would lock the
    # server's system user out of the data directory (we run as root on CI).
    base = Path(tempfile.mkdtemp(prefix="pgshift-test-pg-"))
    server = EmbeddedPostgres(base / "data", bindir=Path(bindir) if bindir else None)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _db_name(node_name: str) -> str:
    stem = re.sub(r"[^a-z0-9]+", "_", node_name.lower()).strip("_")[:40]
    return f"t_{stem}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_dsn(pg_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[Dsn]:
    """The DSN of a fresh, empty database (from template0), dropped after the test."""
    name = _db_name(request.node.name)
    dsn = pg_server.create_database(name)
    try:
        yield dsn
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def pg_conn(pg_dsn: Dsn) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's fresh database, closed after the test."""
    conn = connect(pg_dsn, autocommit=True, application_name="pgshift-tests")
    try:
        yield conn
    finally:
        conn.close()
