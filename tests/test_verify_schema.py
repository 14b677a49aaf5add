"""Schema drift in the PostgreSQL copy is reported apart from data differences (exit 1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pgshift.demo.seed import seed
from pgshift.dsn import Dsn
from pgshift.embedded_pg import PostgresServer
from verify_helpers import (
    MigratedCopy,
    all_diffs,
    assert_identical,
    fresh_database,
    migrate_into,
    pg_exec,
    schema_diffs,
)

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def hyper_module(pg_server: PostgresServer,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedCopy]:
    base = tmp_path_factory.mktemp("schema")
    db = base / "hyperpage.db"
    seed(db, 200)
    with fresh_database(pg_server, "schema") as dsn:
        result = migrate_into(db, dsn, base / "state")
        copy = MigratedCopy(db, dsn, base / "state", [t.name for t in result.plan.tables],
                            result)
        assert_identical(copy.verify())
        yield copy


@pytest.fixture
def copy(hyper_module: MigratedCopy, tmp_path: Path) -> MigratedCopy:
    return hyper_module.for_test(tmp_path)


def assert_schema_only(copy: MigratedCopy, expected: set[tuple[str, str, str, str]]) -> None:
    result = copy.verify()
    assert schema_diffs(result) == expected
    assert not result.identical
    assert int(result.exit_code) == 1
    assert all_diffs(result) == []  # the data is untouched: no row differences
    assert all(t.equal for t in result.tables if t.mode != "missing")
    assert result.to_dict()["schema_differences"] == [
        {"object": o, "what": w, "expected": e, "actual": a} for o, w, e, a in
        [(d.obj, d.what, d.expected, d.actual) for d in result.schema_diffs]]


def test_dropped_not_null_is_reported(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "ALTER TABLE users ALTER COLUMN email DROP NOT NULL")
    try:
        assert_schema_only(copy, {("users.email", "not null", "True", "False")})
    finally:
        pg_exec(copy.dsn, "ALTER TABLE users ALTER COLUMN email SET NOT NULL")
    assert_identical(copy.verify())


def test_missing_index_is_reported(copy: MigratedCopy) -> None:
    (definition,) = pg_exec(copy.dsn, "SELECT indexdef FROM pg_indexes WHERE indexname = "
                                      "'idx_jobs_status_scheduled'")[0]
    pg_exec(copy.dsn, "DROP INDEX idx_jobs_status_scheduled")
    try:
        assert_schema_only(copy, {("idx_jobs_status_scheduled", "index", "present", "missing")})
    finally:
        pg_exec(copy.dsn, definition)
    assert_identical(copy.verify())


def test_changed_column_type_is_reported(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "ALTER TABLE jobs ALTER COLUMN priority TYPE numeric")
    try:
        assert_schema_only(copy, {("jobs.priority", "type", "bigint", "numeric")})
    finally:
        pg_exec(copy.dsn, "ALTER TABLE jobs ALTER COLUMN priority TYPE bigint")


def test_missing_table_is_reported(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "ALTER TABLE app_state RENAME TO app_state_elsewhere")
    try:
        result = copy.verify()
        assert ("app_state", "table", "present", "missing") in schema_diffs(result)
        assert int(result.exit_code) == 1
        (v,) = [t for t in result.tables if t.table == "app_state"]
        assert v.mode == "missing"
        assert v.postgres_rows == 0
        assert all(t.equal for t in result.tables if t.table != "app_state")
    finally:
        pg_exec(copy.dsn, "ALTER TABLE app_state_elsewhere RENAME TO app_state")


def test_dropped_unique_and_foreign_key_are_reported(copy: MigratedCopy) -> None:
    cons = pg_exec(copy.dsn, "SELECT conname, conrelid::regclass::text, "
                             "pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid IN "
                             "('users'::regclass, 'user_sessions'::regclass) "
                             "AND contype IN ('u', 'f')")
    uniq = [(n, t, d) for n, t, d in cons if d.startswith("UNIQUE") and t == "users"]
    fk = [(n, t, d) for n, t, d in cons if d.startswith("FOREIGN KEY") and t == "user_sessions"]
    assert len(uniq) == 1 and len(fk) == 1
    for name, table, _ in uniq + fk:
        pg_exec(copy.dsn, f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    try:
        assert_schema_only(copy, {("users", "unique", "email", "missing"),
                                  ("user_sessions", "foreign key", "(user_id) -> users",
                                   "missing")})
    finally:
        for name, table, definition in uniq + fk:
            pg_exec(copy.dsn, f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    assert_identical(copy.verify())


def test_dropped_default_and_check_are_reported(copy: MigratedCopy) -> None:
    checks = pg_exec(copy.dsn, "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                               "WHERE conrelid = 'jobs'::regclass AND contype = 'c'")
    (default,) = pg_exec(copy.dsn, "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d "
                                   "JOIN pg_attribute a ON a.attrelid = d.adrelid AND "
                                   "a.attnum = d.adnum WHERE d.adrelid = 'jobs'::regclass "
                                   "AND a.attname = 'status'")[0]
    pg_exec(copy.dsn, "ALTER TABLE jobs ALTER COLUMN status DROP DEFAULT")
    for name, _ in checks:
        pg_exec(copy.dsn, f'ALTER TABLE jobs DROP CONSTRAINT "{name}"')
    try:
        result = copy.verify()
        found = schema_diffs(result)
        assert {(o, w) for o, w, _, _ in found} == {("jobs.status", "default"),
                                                     ("jobs", "check constraints")}
        assert all_diffs(result) == []
        assert int(result.exit_code) == 1
    finally:
        pg_exec(copy.dsn, f"ALTER TABLE jobs ALTER COLUMN status SET DEFAULT {default}")
        for name, definition in checks:
            pg_exec(copy.dsn, f'ALTER TABLE jobs ADD CONSTRAINT "{name}" {definition}')
    assert_identical(copy.verify())


def test_extra_column_is_reported_and_data_still_compares(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "ALTER TABLE rate_limits ADD COLUMN surprise integer")
    try:
        assert_schema_only(copy, {("rate_limits.surprise", "column", "absent", "present")})
    finally:
        pg_exec(copy.dsn, "ALTER TABLE rate_limits DROP COLUMN surprise")


def test_schema_and_data_differences_are_reported_separately(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "ALTER TABLE users ALTER COLUMN created_at DROP NOT NULL")
    (uid,) = pg_exec(copy.dsn, "SELECT min(id) FROM users WHERE name IS NOT NULL")[0]
    pg_exec(copy.dsn, "UPDATE users SET name = name || '.' WHERE id = %s", (uid,))
    try:
        result = copy.verify()
        assert schema_diffs(result) == {("users.created_at", "not null", "True", "False")}
        diffs = all_diffs(result)
        assert [(d.table, d.kind, d.key, list(d.columns)) for d in diffs] == [
            ("users", "changed", {"id": str(uid)}, ["name"])]
        payload = result.to_dict()
        assert len(payload["schema_differences"]) == 1
        assert sum(len(t["differences"]) for t in payload["tables"]) == 1
    finally:
        pg_exec(copy.dsn, "UPDATE users SET name = left(name, -1) WHERE id = %s", (uid,))
        pg_exec(copy.dsn, "ALTER TABLE users ALTER COLUMN created_at SET NOT NULL")
    assert_identical(copy.verify())


def test_no_schema_check_option_skips_drift(copy: MigratedCopy) -> None:
    pg_exec(copy.dsn, "ALTER TABLE users ALTER COLUMN email DROP NOT NULL")
    try:
        assert_identical(copy.verify(check_schema=False))
    finally:
        pg_exec(copy.dsn, "ALTER TABLE users ALTER COLUMN email SET NOT NULL")


def test_dropped_column_is_reported_not_a_crash(tmp_path: Path, pg_dsn: Dsn) -> None:
    db = tmp_path / "hyperpage.db"
    seed(db, 50)
    migrate_into(db, pg_dsn, tmp_path / "state")
    pg_exec(pg_dsn, "ALTER TABLE rate_limits DROP COLUMN updated_at")
    result = MigratedCopy(db, pg_dsn, tmp_path / "state", []).verify()
    assert ("rate_limits.updated_at", "column", "present", "missing") in schema_diffs(result)
    assert int(result.exit_code) == 1
