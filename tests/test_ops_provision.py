"""pgshift provision against the real PostgreSQL: idempotence, the app role's reach, privileges."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo, sql

from pgshift.cli.main import main
from pgshift.dsn import Dsn, connect
from pgshift.embedded_pg import PostgresServer
from pgshift.errors import UsageError
from pgshift.ops.provision import provision

pytestmark = pytest.mark.integration
PASSWORD = "app-secret-7x!"


def _as(admin: Dsn, user: str, password: str, dbname: str) -> Dsn:
    params = conninfo.conninfo_to_dict(admin.conninfo)
    params.update(user=user, password=password, dbname=dbname)
    return Dsn(conninfo.make_conninfo("", **params))


@pytest.fixture
def admin(pg_server: PostgresServer) -> Dsn:
    return pg_server.dsn("postgres")


@pytest.fixture
def names(admin: Dsn) -> Iterator[dict[str, str]]:
    """Unique role and database names, dropped afterwards (roles are cluster-wide)."""
    tag = uuid.uuid4().hex[:8]
    made = {"app": f"app_{tag}", "db": f"appdb_{tag}", "other": f"other_{tag}",
            "weak": f"weak_{tag}"}
    yield made
    with connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(made["db"])))
        for role in ("other", "weak"):  # grants they hold in the server's own databases
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                            (made[role],)).fetchone():
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(made[role])))
        for role in ("app", "other", "weak"):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(made[role])))


def test_provision_twice_second_run_is_a_no_op(admin: Dsn, names: dict[str, str]) -> None:
    first = provision(admin, names["app"], names["db"], password=PASSWORD, connection_limit=20)
    assert first.changed and first.applied
    text = "\n".join(s.sql for s in first.statements)
    assert "CREATE ROLE" in text and "CREATE DATABASE" in text and "pg_trgm" in text
    assert PASSWORD not in text and "'***'" in text
    assert first.connectivity is not None and first.connectivity.ok
    assert first.connectivity.can_create_table
    assert first.connectivity.server is not None and first.connectivity.server.latency_ms > 0

    second = provision(admin, names["app"], names["db"], password=PASSWORD, connection_limit=20)
    assert second.statements == [] and not second.changed
    assert second.connectivity is not None and second.connectivity.ok

    with connect(admin, autocommit=True) as conn:
        row = conn.execute("SELECT rolconnlimit, rolsuper, rolcreaterole FROM pg_roles "
                           "WHERE rolname = %s", (names["app"],)).fetchone()
        assert row == (20, False, False)
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database "
                             "WHERE datname = %s", (names["db"],)).fetchone()
        assert owner == (names["app"],)
        config = conn.execute(
            "SELECT setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
            "WHERE r.rolname = %s", (names["app"],)).fetchone()
        assert config is not None
        assert {"statement_timeout=30s", "idle_in_transaction_session_timeout=60s"} <= set(
            config[0])
    with connect(admin.with_dbname(names["db"]), autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").fetchone()
    # A changed limit is the only statement of a third run.
    third = provision(admin, names["app"], names["db"], password=PASSWORD, connection_limit=30)
    assert [s.sql for s in third.statements] == [
        f'ALTER ROLE "{names["app"]}" CONNECTION LIMIT 30']


def test_app_role_creates_tables_but_cannot_touch_other_roles_objects(
        admin: Dsn, names: dict[str, str]) -> None:
    provision(admin, names["app"], names["db"], password=PASSWORD)
    in_db = admin.with_dbname(names["db"])
    with connect(in_db, autocommit=True) as conn:
        # A table pgshift migrate (the admin) creates later: default privileges cover it.
        conn.execute("CREATE TABLE migrated (id int primary key, v text)")
        conn.execute("INSERT INTO migrated VALUES (1, 'a')")
        # Another role's table, created by that role in its own schema (which the app may
        # see into): only the table's own privileges stand between the app and it.
        other = sql.Identifier(names["other"])
        conn.execute(sql.SQL("CREATE ROLE {}").format(other))
        conn.execute(sql.SQL("CREATE SCHEMA other_s AUTHORIZATION {}").format(other))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA other_s TO {}").format(
            sql.Identifier(names["app"])))
        conn.execute(sql.SQL("SET ROLE {}").format(other))
        conn.execute("CREATE TABLE other_s.private_t (secret text)")
        conn.execute("RESET ROLE")
    with connect(_as(admin, names["app"], PASSWORD, names["db"]), autocommit=True) as app:
        app.execute("CREATE TABLE notes (id bigserial primary key, body text)")
        app.execute("INSERT INTO notes (body) VALUES ('hello')")
        assert app.execute("SELECT count(*) FROM notes").fetchone() == (1,)
        app.execute("UPDATE migrated SET v = 'b' WHERE id = 1")
        assert app.execute("SELECT v FROM migrated").fetchone() == ("b",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT * FROM other_s.private_t")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("INSERT INTO other_s.private_t VALUES ('x')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("DROP TABLE other_s.private_t")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 1").format(
                sql.Identifier(names["other"])))
        assert app.execute("SHOW statement_timeout").fetchone() == ("30s",)


def test_print_sql_runs_nothing(admin: Dsn, names: dict[str, str]) -> None:
    plan = provision(admin, names["app"], names["db"], password=PASSWORD, print_sql=True)
    assert not plan.applied and plan.changed and plan.connectivity is None
    assert any(s.sql.startswith("CREATE DATABASE") for s in plan.statements)
    assert all(PASSWORD not in s.sql for s in plan.statements)
    with connect(admin, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                            (names["app"],)).fetchone() is None


def test_a_wrong_password_is_reset_and_never_shown(admin: Dsn, names: dict[str, str]) -> None:
    provision(admin, names["app"], names["db"], password=PASSWORD)
    again = provision(admin, names["app"], names["db"], password="another-one-9")
    assert [s.sql for s in again.statements] == [f'ALTER ROLE "{names["app"]}" PASSWORD \'***\'']
    with connect(_as(admin, names["app"], "another-one-9", names["db"])) as app:
        assert app.execute("SELECT current_user").fetchone() == (names["app"],)


def test_missing_createrole_is_named(admin: Dsn, names: dict[str, str],
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'weak-pw-1'").format(
            sql.Identifier(names["weak"])))
    weak = _as(admin, names["weak"], "weak-pw-1", "postgres")
    with pytest.raises(UsageError, match=f"role '{names['weak']}' lacks CREATEROLE"):
        provision(weak, names["app"], names["db"], password=PASSWORD)

    monkeypatch.setenv("WEAK_URL", weak.conninfo)
    monkeypatch.setenv("PGSHIFT_APP_PASSWORD", PASSWORD)
    code = main(["provision", "env:WEAK_URL", "--app-user", names["app"],
                 "--database", names["db"]])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("Error: insufficient privilege") and "CREATEROLE" in err
    assert "Try: " in err and "weak-pw-1" not in err and PASSWORD not in err


def test_createrole_createdb_admin_without_superuser(admin: Dsn, names: dict[str, str]) -> None:
    with connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB PASSWORD 'ops-pw-2'")
                     .format(sql.Identifier(names["weak"])))
    ops = _as(admin, names["weak"], "ops-pw-2", "postgres")
    first = provision(ops, names["app"], names["db"], password=PASSWORD)
    assert first.connectivity is not None and first.connectivity.can_create_table
    assert not provision(ops, names["app"], names["db"], password=PASSWORD).changed
    with connect(admin, autocommit=True) as conn:  # the admin's grant must not block cleanup
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(names["db"])))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(names["app"])))


def test_pgbouncer_config_and_pool_warning(admin: Dsn, names: dict[str, str],
                                           tmp_path: Path) -> None:
    ini = tmp_path / "pgbouncer.ini"
    result = provision(admin, names["app"], names["db"], password=PASSWORD, app_instances=40,
                       pool_size=10, pgbouncer_path=ini)
    text = ini.read_text()
    assert result.pgbouncer_written and PASSWORD not in text
    assert f"dbname={names['db']} user={names['app']}" in text
    assert "max_client_conn = 480" in text
    # 400 planned connections against the test server's max_connections=200.
    assert any(f.subject == "max_connections" for f in result.findings)
    again = provision(admin, names["app"], names["db"], password=PASSWORD, app_instances=40,
                      pool_size=10, pgbouncer_path=ini)
    assert not again.changed and not again.pgbouncer_written


def test_an_unavailable_extension_is_bad_input(admin: Dsn, names: dict[str, str]) -> None:
    with pytest.raises(UsageError, match="not available on the server: no_such_ext"):
        provision(admin, names["app"], names["db"], password=PASSWORD,
                  extensions=["no_such_ext"])


def test_json_output(admin: Dsn, names: dict[str, str], capsys: pytest.CaptureFixture[str],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_URL", admin.conninfo)
    monkeypatch.setenv("PGSHIFT_APP_PASSWORD", PASSWORD)
    argv = ["provision", "env:ADMIN_URL", "--app-user", names["app"], "--database",
            names["db"], "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["changed"] and first["connectivity"]["ok"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["statements"] == [] and PASSWORD not in out


def test_missing_createdb_is_named(admin: Dsn, names: dict[str, str]) -> None:
    with connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD 'weak-pw-4'").format(
            sql.Identifier(names["weak"])))
    weak = _as(admin, names["weak"], "weak-pw-4", "postgres")
    with pytest.raises(UsageError, match=f"role '{names['weak']}' lacks CREATEDB, needed to "
                                         f"create the database '{names['db']}'"):
        provision(weak, names["app"], names["db"], password=PASSWORD)
