"""The embedded PostgreSQL and the test fixtures built on it, against a real server."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from pgshift.dsn import Dsn, connect
from pgshift.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError, PostgresServer
from pgshift.errors import ConnectError


@pytest.fixture
def embedded(pg_server: PostgresServer) -> EmbeddedPostgres:
    """The session server when it is ours (its configuration is what we test)."""
    if not isinstance(pg_server, EmbeddedPostgres):
        pytest.skip("PGSHIFT_TEST_DSN names an external server")
    return pg_server


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A private temporary directory (not under pytest's 0700 basetemp; see conftest)."""
    base = Path(tempfile.mkdtemp(prefix="pgshift-test-pg2-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _show(conn: psycopg.Connection, setting: str) -> str:
    row = conn.execute(f"SHOW {setting}").fetchone()
    assert row is not None
    return str(row[0])


def test_reachable_over_tcp_with_password(embedded: EmbeddedPostgres) -> None:
    dsn = embedded.dsn()
    params = conninfo.conninfo_to_dict(dsn.conninfo)
    assert params["host"] == "127.0.0.1"
    assert params["password"] == embedded.password
    assert embedded.password not in str(dsn)
    with connect(dsn, autocommit=True) as conn:
        assert conn.info.host == "127.0.0.1"
        assert conn.info.port == embedded.port
        assert conn.execute("SELECT inet_server_addr()::text").fetchone() == ("127.0.0.1/32",)
        assert _show(conn, "listen_addresses") == "127.0.0.1"
        assert _show(conn, "unix_socket_directories") == ""
        assert _show(conn, "server_encoding") == "UTF8"
    assert embedded.version.split()[0][:2].isdigit()


def test_wrong_password_is_a_clean_connect_error(embedded: EmbeddedPostgres) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    dsn = Dsn(conninfo.make_conninfo(embedded.dsn().conninfo, password=wrong))
    with pytest.raises(ConnectError) as info:
        connect(dsn, connect_timeout=5)
    message = str(info.value)
    assert "password authentication failed" in message
    assert wrong not in message
    assert embedded.password not in message
    assert info.value.hint is not None and wrong not in info.value.hint


def test_logical_replication_settings(
    embedded: EmbeddedPostgres, pg_conn: psycopg.Connection
) -> None:
    assert _show(pg_conn, "wal_level") == "logical"
    assert int(_show(pg_conn, "max_replication_slots")) >= 10
    assert int(_show(pg_conn, "max_wal_senders")) >= 10
    assert int(_show(pg_conn, "max_connections")) == 200
    assert _show(pg_conn, "password_encryption") == "scram-sha-256"
    assert _show(pg_conn, "fsync") == "off"  # the session server is not durable


def test_pg_stat_statements_is_preloaded(pg_conn: psycopg.Connection) -> None:
    assert "pg_stat_statements" in _show(pg_conn, "shared_preload_libraries")
    pg_conn.execute("CREATE EXTENSION pg_stat_statements")
    pg_conn.execute("SELECT 1")
    row = pg_conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
    assert row is not None and row[0] >= 1


def test_gen_random_uuid(pg_conn: psycopg.Connection) -> None:
    row = pg_conn.execute("SELECT gen_random_uuid(), gen_random_uuid()").fetchone()
    assert row is not None
    first, second = row
    assert isinstance(first, uuid.UUID) and first.version == 4
    assert first != second


def test_password_is_stored_as_scram(pg_conn: psycopg.Connection) -> None:
    assert _show(pg_conn, "password_encryption") == "scram-sha-256"
    row = pg_conn.execute(
        "SELECT rolpassword FROM pg_authid WHERE rolname = current_user"
    ).fetchone()
    assert row is not None and str(row[0]).startswith("SCRAM-SHA-256$")


_seen_databases: set[str] = set()


@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_gets_a_fresh_database(pg_conn: psycopg.Connection, round_: int) -> None:
    row = pg_conn.execute(
        "SELECT current_database(), d.datcollate, pg_encoding_to_char(d.encoding)"
        " FROM pg_database d WHERE d.datname = current_database()"
    ).fetchone()
    assert row is not None
    name, collate, encoding = row
    assert name.startswith("t_") and name not in _seen_databases
    assert (collate, encoding) == ("C", "UTF8")
    _seen_databases.add(name)
    user_tables = pg_conn.execute(
        "SELECT count(*) FROM pg_tables"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    ).fetchone()
    assert user_tables == (0,)
    pg_conn.execute("CREATE TABLE marker (round int)")  # would collide in a shared database
    pg_conn.execute("INSERT INTO marker VALUES (%s)", (round_,))


def test_databases_are_dropped_after_use(pg_server: PostgresServer) -> None:
    name = f"t_drop_{uuid.uuid4().hex[:8]}"
    dsn = pg_server.create_database(name)
    with connect(dsn) as conn:
        conn.execute("SELECT 1")
    pg_server.drop_database(name)
    pg_server.drop_database(name)  # idempotent
    with pytest.raises(ConnectError, match="does not exist"):
        connect(dsn, connect_timeout=5)


@pytest.mark.integration
def test_second_instance_start_stop_is_idempotent(scratch_dir: Path) -> None:
    bindir = os.environ.get("PGSHIFT_TEST_PG_BINDIR", "").strip()
    datadir = scratch_dir / "data"
    server = EmbeddedPostgres(datadir, bindir=Path(bindir) if bindir else None)
    try:
        server.start()
        port = server.port
        server.start()  # already running: nothing happens
        assert server.port == port and server.is_running()
        with connect(server.dsn(), autocommit=True) as conn:
            assert _show(conn, "port") == str(port)
        server.stop()
        server.stop()
        assert not server.is_running()
        with pytest.raises(ConnectError):
            connect(server.dsn(), connect_timeout=5)

        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Someone takes our port while we are stopped: an auto port moves on (one retry)...
            squatter.bind(("127.0.0.1", port or 0))
            squatter.listen()
            taken = squatter.getsockname()[1]
            server.start()
            assert server.port != taken
            server.stop()

            # ...a fixed port fails, quoting server.log. A new instance on the same data
            # directory (hence a new random password) gets its password set.
            fixed = EmbeddedPostgres(datadir, port=taken, bindir=server.bindir)
            with pytest.raises(EmbeddedPostgresError) as info:
                fixed.start()
            assert "server.log" in str(info.value)
            assert "already in use" in str(info.value).lower()
        with EmbeddedPostgres(datadir, bindir=server.bindir) as again:
            assert again.password != server.password
            with connect(again.dsn(), autocommit=True) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        assert not again.is_running()
    finally:
        server.stop()
