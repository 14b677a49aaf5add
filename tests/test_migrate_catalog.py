"""migrate: every catalog feature of a real SQLite file, checked on the real PostgreSQL target.

One rich source is migrated once per module (its own database on the test server); tests that
write to the target do it inside a transaction that is rolled back. Option tests (--tables,
--schema, --drop, --schema-only, --dry-run) each get a fresh database.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pgshift.dsn import Dsn, connect
from pgshift.errors import ExitCode, UsageError
from pgshift.migrate import MigrateResult
from sqlite_helpers import make_db, note_messages, pg_rows, run_migrate, sqlite_rows

pytestmark = pytest.mark.data

RICH_SCHEMA = """
CREATE TABLE customers (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL COLLATE NOCASE,
  email TEXT UNIQUE,
  active BOOLEAN NOT NULL DEFAULT 0,
  created DATETIME DEFAULT CURRENT_TIMESTAMP,
  status TEXT NOT NULL DEFAULT 'new',
  score INTEGER DEFAULT 10 CHECK (score >= 0),
  CONSTRAINT name_not_blank CHECK (length(name) > 0)
);
CREATE TABLE orders (
  id INTEGER PRIMARY KEY,
  customer_id INTEGER REFERENCES customers(id) ON DELETE CASCADE,
  referrer_id INTEGER REFERENCES customers(id) ON DELETE SET NULL,
  region TEXT,
  seq INTEGER,
  UNIQUE (region, seq)
);
CREATE TABLE kv (
  bucket TEXT NOT NULL,
  k INTEGER NOT NULL,
  v TEXT,
  PRIMARY KEY (bucket, k)
) WITHOUT ROWID;
CREATE TABLE strict_t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, r REAL, s TEXT, b BLOB,
                       a ANY) STRICT;
CREATE TABLE gen (
  id INTEGER PRIMARY KEY,
  a INTEGER,
  b INTEGER,
  total INTEGER GENERATED ALWAYS AS (a + b) VIRTUAL,
  prod INTEGER GENERATED ALWAYS AS (a * b) STORED
);
CREATE TABLE "Order Items" (id INTEGER PRIMARY KEY, "select" TEXT CHECK ("select" <> ''),
                            "CamelCase" INTEGER CHECK (camelcase >= -10),
                            "we""ird" TEXT DEFAULT 'q');
CREATE TABLE "Child" ("Child No" INTEGER PRIMARY KEY,
                      item_id INTEGER REFERENCES "Order Items"(id) ON DELETE CASCADE);
CREATE INDEX "Ix Camel" ON "Order Items" ("CamelCase", "select");
CREATE INDEX ix_items_sel ON "Order Items" (lower("select")) WHERE camelcase > 1;
CREATE VIEW "V Items" AS SELECT "select", camelcase AS cc FROM "Order Items" WHERE "CamelCase" > 0;
CREATE UNIQUE INDEX ux_kv_v ON kv (v);
CREATE INDEX ix_customers_lower_name ON customers (lower(name));
CREATE INDEX ix_orders_big_seq ON orders (seq) WHERE seq > 100;
CREATE VIEW active_customers AS SELECT id, name FROM customers WHERE active = 1;
CREATE TRIGGER trg_touch AFTER UPDATE ON customers
BEGIN
  UPDATE customers SET status = 'touched' WHERE id = new.id;
END;
CREATE VIRTUAL TABLE docs USING fts5(body);

INSERT INTO customers (name, email, active, created, score) VALUES
  ('Ann', 'ann@example.com', 1, '2024-01-02 03:04:05', 5),
  ('bob', 'bob@example.com', 0, '2024-02-03 04:05:06', 7),
  ('Cy', NULL, 1, '2024-03-04 05:06:07', 0),
  ('Dee', 'dee@example.com', 0, '2024-04-05 06:07:08', 1),
  ('Eve', 'eve@example.com', 1, '2024-05-06 07:08:09', 2);
-- AUTOINCREMENT's high mark (5) stays above max(id) (3): PostgreSQL must not reuse 4 or 5.
DELETE FROM customers WHERE id >= 4;
INSERT INTO orders VALUES
  (1, 1, 2, 'eu', 1), (2, 1, NULL, 'eu', 2), (3, 2, 1, 'us', 150), (4, 3, 3, 'us', 2),
  (7, 99, NULL, 'xx', 9);  -- an orphan: customer 99 does not exist (FKs are off in SQLite)
INSERT INTO kv VALUES ('b1', 2, 'two'), ('b1', 1, 'one'), ('b0', 7, 'seven');
INSERT INTO strict_t VALUES (1, 42, 2.5, 'txt', x'00ff10', 12), (2, -1, NULL, NULL, x'', 13);
INSERT INTO gen (id, a, b) VALUES (1, 2, 3), (2, 4, 5), (3, NULL, 1);
INSERT INTO "Order Items" VALUES (1, 'sel', 5, NULL), (10, 'ten', -3, 'w');
INSERT INTO "Child" VALUES (1, 10), (2, 1);
INSERT INTO docs VALUES ('hello world'), ('full text');
ANALYZE;
"""


@dataclass
class Migrated:
    result: MigrateResult
    dsn: Dsn
    db: Path
    conn: psycopg.Connection
    next_ids: dict[str, int]  # ids the first INSERT without id got, before any other test ran


@pytest.fixture(scope="module")
def rich(pg_server: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Migrated]:
    """The rich source migrated once into its own database."""
    tmp = tmp_path_factory.mktemp("rich")
    db = make_db(tmp / "rich.db", RICH_SCHEMA)
    name = f"t_catalog_{uuid.uuid4().hex[:12]}"
    dsn = pg_server.create_database(name)  # type: ignore[attr-defined]
    try:
        result = run_migrate(db, dsn, tmp / "state", allow_rejects=True)
        conn = connect(dsn, autocommit=True, application_name="pgshift-tests")
        try:
            # Sequences ignore rollbacks: read the next ids before any test inserts a row.
            next_ids = {}
            with conn.transaction(force_rollback=True):
                for table, col in (("customers", "name"), ("Order Items", "select")):
                    next_ids[table] = conn.execute(
                        f'INSERT INTO "{table}" ("{col}") VALUES (\'n\') RETURNING id'
                    ).fetchone()[0]
            yield Migrated(result, dsn, db, conn, next_ids)
        finally:
            conn.close()
    finally:
        pg_server.drop_database(name)  # type: ignore[attr-defined]


def _columns(conn: psycopg.Connection, table: str, schema: str = "public") -> dict[str, tuple]:
    """name -> (data_type, is_nullable, column_default, is_identity, is_generated, expr)."""
    rows = pg_rows(conn, "SELECT column_name, data_type, is_nullable, column_default, is_identity, "
                         "is_generated, generation_expression FROM information_schema.columns "
                         "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                   (schema, table))
    return {r[0]: tuple(r[1:]) for r in rows}


def _attnotnull(conn: psycopg.Connection, table: str) -> dict[str, bool]:
    rows = pg_rows(conn, "SELECT attname, attnotnull FROM pg_attribute WHERE attrelid = "
                         "%s::regclass AND attnum > 0 AND NOT attisdropped", (f'public."{table}"',))
    return dict(rows)


def _rollback(conn: psycopg.Connection) -> psycopg.Transaction:
    return conn.transaction(force_rollback=True)


# ------------------------------------------------------------------------- tables and columns


def test_rich_migration_completes_with_only_the_orphan_reported(rich: Migrated) -> None:
    r = rich.result
    assert r.rejects == 0
    assert {t.name: t.rows for t in r.tables} == {
        "customers": 3, "orders": 5, "kv": 3, "strict_t": 2, "gen": 3, "Order Items": 2,
        "Child": 2}
    assert r.exit_code == ExitCode.OK  # allow_rejects: the violation alone does not fail it
    assert len(r.violations) == 1


def test_without_rowid_table_keeps_rows_and_composite_primary_key(rich: Migrated) -> None:
    assert pg_rows(rich.conn, "SELECT bucket, k, v FROM kv ORDER BY bucket, k") == [
        ("b0", 7, "seven"), ("b1", 1, "one"), ("b1", 2, "two")]
    pk = pg_rows(rich.conn, "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON "
                            "a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                            "WHERE i.indrelid = 'public.kv'::regclass AND i.indisprimary "
                            "ORDER BY array_position(i.indkey, a.attnum)")
    assert [r[0] for r in pk] == ["bucket", "k"]
    with _rollback(rich.conn), pytest.raises(psycopg.errors.UniqueViolation):
        rich.conn.execute("INSERT INTO kv VALUES ('b1', 1, 'dup')")


def test_strict_table_types_and_values(rich: Migrated) -> None:
    cols = _columns(rich.conn, "strict_t")
    assert {k: v[0] for k, v in cols.items()} == {
        "id": "bigint", "n": "bigint", "r": "double precision", "s": "text", "b": "bytea",
        "a": "bigint"}
    assert pg_rows(rich.conn, "SELECT id, n, r, s, b, a FROM strict_t ORDER BY id") == [
        (1, 42, 2.5, "txt", b"\x00\xff\x10", 12), (2, -1, None, None, b"", 13)]


def test_generated_columns_become_stored_and_postgres_computes_sqlite_values(
        rich: Migrated) -> None:
    cols = _columns(rich.conn, "gen")
    assert cols["total"][4] == "ALWAYS" and cols["prod"][4] == "ALWAYS"
    assert cols["a"][4] == "NEVER"
    kinds = dict(pg_rows(rich.conn, "SELECT attname, attgenerated FROM pg_attribute WHERE "
                                    "attrelid = 'public.gen'::regclass AND attnum > 0"))
    assert kinds["total"] == "s" and kinds["prod"] == "s"  # STORED
    expected = sqlite_rows(rich.db, "SELECT id, a, b, total, prod FROM gen ORDER BY id")
    assert pg_rows(rich.conn, "SELECT id, a, b, total, prod FROM gen ORDER BY id") == expected
    with _rollback(rich.conn):
        row = rich.conn.execute("INSERT INTO gen (a, b) VALUES (6, 7) RETURNING total, prod"
                                ).fetchone()
        assert row == (13, 42)
        with pytest.raises(psycopg.errors.GeneratedAlways):
            rich.conn.execute("INSERT INTO gen (a, b, total) VALUES (1, 1, 5)")


def test_not_null_columns(rich: Migrated) -> None:
    notnull = _attnotnull(rich.conn, "customers")
    assert notnull["id"] is True
    assert notnull["name"] is True
    assert notnull["active"] is True
    assert notnull["status"] is True
    assert notnull["email"] is False
    assert notnull["score"] is False
    assert _attnotnull(rich.conn, "kv") == {"bucket": True, "k": True, "v": False}


def test_defaults_apply_to_rows_inserted_in_postgres(rich: Migrated) -> None:
    cols = _columns(rich.conn, "customers")
    assert cols["created"][0] == "timestamp without time zone"
    assert cols["active"][0] == "boolean"
    with _rollback(rich.conn):
        row = rich.conn.execute(
            "INSERT INTO customers (name) VALUES ('Zed') "
            "RETURNING active, status, score, email, created, now() AT TIME ZONE 'UTC'"
        ).fetchone()
    active, status, score, email, created, now_utc = row
    assert active is False  # BOOLEAN DEFAULT 0
    assert status == "new"
    assert score == 10
    assert email is None
    # DEFAULT CURRENT_TIMESTAMP: SQLite's is UTC, in whole seconds; now() is the
    # transaction's start.
    assert isinstance(created, dt.datetime) and created.tzinfo is None
    assert created == now_utc.replace(microsecond=0)


def test_existing_values_carried(rich: Migrated) -> None:
    rows = pg_rows(rich.conn, "SELECT id, name, email, active, created, status, score "
                              "FROM customers ORDER BY id")
    assert rows == [
        (1, "Ann", "ann@example.com", True, dt.datetime(2024, 1, 2, 3, 4, 5), "new", 5),
        (2, "bob", "bob@example.com", False, dt.datetime(2024, 2, 3, 4, 5, 6), "new", 7),
        (3, "Cy", None, True, dt.datetime(2024, 3, 4, 5, 6, 7), "new", 0),
    ]


# ------------------------------------------------------------------------- keys and constraints


def test_unique_single_and_multi_column(rich: Migrated) -> None:
    uniques = pg_rows(rich.conn, "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM "
                                 "pg_constraint WHERE contype = 'u' AND "
                                 "connamespace = 'public'::regnamespace ORDER BY 1, 2")
    assert ("customers", "UNIQUE (email)") in uniques
    assert ("orders", "UNIQUE (region, seq)") in uniques
    with _rollback(rich.conn), pytest.raises(psycopg.errors.UniqueViolation):
        rich.conn.execute("INSERT INTO customers (name, email) VALUES ('x', 'ann@example.com')")
    with _rollback(rich.conn), pytest.raises(psycopg.errors.UniqueViolation):
        rich.conn.execute("INSERT INTO orders (customer_id, region, seq) VALUES (1, 'eu', 1)")
    with _rollback(rich.conn):  # same region, other seq: allowed
        rich.conn.execute("INSERT INTO orders (customer_id, region, seq) VALUES (1, 'eu', 3)")


def test_check_constraints_translated_and_enforced(rich: Migrated) -> None:
    checks = dict(pg_rows(rich.conn, "SELECT conname, convalidated FROM pg_constraint WHERE "
                                     "contype = 'c' AND conrelid = 'public.customers'::regclass"))
    assert "name_not_blank" in checks  # the SQLite constraint name survives
    assert all(checks.values())  # validated: every source row satisfies them
    assert len(checks) == 2
    with _rollback(rich.conn), pytest.raises(psycopg.errors.CheckViolation):
        rich.conn.execute("INSERT INTO customers (name, score) VALUES ('neg', -1)")
    with _rollback(rich.conn), pytest.raises(psycopg.errors.CheckViolation) as info:
        rich.conn.execute("INSERT INTO customers (name) VALUES ('')")
    assert info.value.diag.constraint_name == "name_not_blank"


def test_foreign_keys_deferrable_with_on_delete_actions(rich: Migrated) -> None:
    fks = {r[0]: r[1:] for r in pg_rows(
        rich.conn, "SELECT pg_get_constraintdef(oid), condeferrable, confdeltype FROM "
                   "pg_constraint WHERE contype = 'f' AND conrelid = 'public.orders'::regclass")}
    assert len(fks) == 2
    deltypes = sorted(v[1] for v in fks.values())
    assert deltypes == ["c", "n"]  # CASCADE, SET NULL
    assert all(v[0] is True for v in fks.values())
    with _rollback(rich.conn):
        rich.conn.execute("DELETE FROM customers WHERE id = 1")
        left = pg_rows(rich.conn, "SELECT id, customer_id, referrer_id FROM orders ORDER BY id")
        # orders 1 and 2 belonged to customer 1 (cascade); order 3 was referred by 1 (set null)
        assert left == [(3, 2, None), (4, 3, 3), (7, 99, None)]


def test_orphan_row_loaded_and_reported_with_its_key(rich: Migrated) -> None:
    assert pg_rows(rich.conn, "SELECT id, customer_id FROM orders WHERE id = 7") == [(7, 99)]
    [violation] = rich.result.violations
    assert violation.obj == "orders"
    assert "foreign key" in violation.message and "NOT VALID" in violation.message
    assert "7, 99" in violation.message  # the row's key (id 7) and its dangling value
    state = dict(pg_rows(rich.conn, "SELECT pg_get_constraintdef(oid) LIKE '%customer_id%', "
                                    "convalidated FROM pg_constraint WHERE contype = 'f' AND "
                                    "conrelid = 'public.orders'::regclass"))
    assert state == {True: False, False: True}  # only the violated FK stays NOT VALID
    with _rollback(rich.conn), pytest.raises(psycopg.errors.ForeignKeyViolation):
        rich.conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        rich.conn.execute("INSERT INTO orders (customer_id) VALUES (12345)")


# ------------------------------------------------------------------------- indexes, views, triggers


def test_indexes_keep_names_uniqueness_predicates_and_expressions(rich: Migrated) -> None:
    defs = dict(pg_rows(rich.conn, "SELECT indexname, indexdef FROM pg_indexes "
                                   "WHERE schemaname = 'public'"))
    assert defs["ux_kv_v"].startswith("CREATE UNIQUE INDEX ux_kv_v ON public.kv ")
    assert defs["ux_kv_v"].endswith("(v)")
    assert defs["ix_orders_big_seq"].endswith("(seq) WHERE (seq > 100)")
    assert "UNIQUE" not in defs["ix_orders_big_seq"]
    assert defs["ix_customers_lower_name"].endswith("(lower(name))")
    plan = rich.conn.execute(
        "EXPLAIN (COSTS OFF) SELECT id FROM customers WHERE lower(name) = 'ann'").fetchall()
    assert plan  # the expression is a valid PostgreSQL expression over the real column


def test_view_created_and_queryable(rich: Migrated) -> None:
    assert pg_rows(rich.conn, "SELECT viewname FROM pg_views WHERE schemaname = 'public' "
                              "ORDER BY 1") == [("V Items",), ("active_customers",)]
    expected = sqlite_rows(rich.db, "SELECT id, name FROM active_customers ORDER BY id")
    assert pg_rows(rich.conn, "SELECT id, name FROM active_customers ORDER BY id") == expected
    assert expected == [(1, "Ann"), (3, "Cy")]


def test_touch_trigger_translated_and_created_after_the_load(rich: Migrated) -> None:
    notes = [m for obj, m in note_messages(rich.result) if obj == "trg_touch"]
    assert notes == ["trigger on customers translated (touch): created after the load as a "
                     "PL/pgSQL function and trigger"]
    assert pg_rows(rich.conn, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal") == [
        ("trg_touch",)]
    # Created after the load: the copied rows kept their status.
    assert ("touched",) not in pg_rows(rich.conn, "SELECT DISTINCT status FROM customers")
    with _rollback(rich.conn):
        rich.conn.execute("UPDATE customers SET name = 'Ann2' WHERE id = 1")
        assert pg_rows(rich.conn, "SELECT status FROM customers WHERE id = 1") == [("touched",)]


def test_identity_restarts_past_max_id_and_autoincrement_mark(rich: Migrated) -> None:
    seq = sqlite_rows(rich.db, "SELECT seq FROM sqlite_sequence WHERE name = 'customers'")
    assert seq == [(5,)]
    assert sqlite_rows(rich.db, "SELECT max(id) FROM customers") == [(3,)]
    assert _columns(rich.conn, "customers")["id"][3] == "YES"  # is_identity
    assert rich.next_ids["customers"] == 6  # past sqlite_sequence (5), not max(id) + 1 (4)
    assert rich.next_ids["Order Items"] == 11  # plain INTEGER PRIMARY KEY: past max(id) (10)
    with _rollback(rich.conn):  # BY DEFAULT: explicit ids are still accepted
        rich.conn.execute("INSERT INTO customers (id, name) VALUES (100, 'explicit')")


def test_sqlite_internals_and_fts_tables_skipped_with_notes(rich: Migrated) -> None:
    tables = {r[0] for r in pg_rows(rich.conn, "SELECT tablename FROM pg_tables "
                                               "WHERE schemaname = 'public'")}
    assert tables == {"customers", "orders", "kv", "strict_t", "gen", "Order Items", "Child"}
    skipped = {obj: m for obj, m in note_messages(rich.result) if m.startswith("skipped")}
    assert "virtual table" in skipped["docs"]
    shadows = {n for n in skipped if n.startswith("docs_")}
    expected_shadows = {r[0] for r in sqlite_rows(
        rich.db, "SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE 'docs_%'")}
    assert shadows == expected_shadows and len(shadows) >= 4
    assert all("shadow table" in skipped[s] for s in shadows)
    present = {r[0] for r in sqlite_rows(rich.db, "SELECT name FROM sqlite_schema "
                                                  "WHERE name LIKE 'sqlite_%' AND type = 'table'")}
    assert {"sqlite_sequence", "sqlite_stat1"} <= present  # they exist in the source...
    assert not {t for t in tables if t.startswith("sqlite_")}  # ...and never reach PostgreSQL


def test_identifiers_needing_quotes_keep_exact_names(rich: Migrated) -> None:
    cols = _columns(rich.conn, "Order Items")
    assert list(cols) == ["id", "select", "CamelCase", 'we"ird']
    assert cols['we"ird'][2] == "'q'::text"
    assert pg_rows(rich.conn, 'SELECT id, "select", "CamelCase", "we""ird" FROM "Order Items" '
                              "ORDER BY id") == [(1, "sel", 5, None), (10, "ten", -3, "w")]
    assert list(_columns(rich.conn, "Child")) == ["Child No", "item_id"]
    defs = dict(pg_rows(rich.conn, "SELECT indexname, indexdef FROM pg_indexes "
                                   "WHERE tablename = 'Order Items'"))
    assert defs["Ix Camel"].endswith('("CamelCase", "select")')
    # SQLite resolved the unquoted `camelcase`; PostgreSQL is given the stored spelling
    assert defs["ix_items_sel"].endswith('(lower("select")) WHERE ("CamelCase" > 1)')
    checks = {r[0] for r in pg_rows(rich.conn, "SELECT pg_get_constraintdef(oid) FROM "
                                               "pg_constraint WHERE contype = 'c' AND conrelid = "
                                               "'public.\"Order Items\"'::regclass")}
    assert checks == {"CHECK ((\"select\" <> ''::text))",
                      "CHECK ((\"CamelCase\" >= '-10'::integer))"}
    assert pg_rows(rich.conn, 'SELECT "select", cc FROM "V Items"') == [("sel", 5)]
    with _rollback(rich.conn):
        rich.conn.execute('DELETE FROM "Order Items" WHERE id = 10')
        assert pg_rows(rich.conn, 'SELECT "Child No", item_id FROM "Child"') == [(2, 1)]


def test_collate_nocase_reported_as_warning(rich: Migrated) -> None:
    warnings = [m for obj, m in note_messages(rich.result, "warning") if obj == "customers.name"]
    assert len(warnings) == 1 and "COLLATE NOCASE" in warnings[0]


def test_view_keeps_its_own_tables_column_spelling(tmp_path: Path, pg_dsn: Dsn,
                                                   pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "views.db", """
        CREATE TABLE a (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE b ("ID" INTEGER PRIMARY KEY, x TEXT);
        CREATE VIEW v AS SELECT id, name FROM a;
        INSERT INTO a VALUES (1, 'one');
        INSERT INTO b VALUES (1, 'x');
    """)
    r = run_migrate(db, pg_dsn, tmp_path / "state")
    assert note_messages(r, "untranslated") == []
    assert pg_rows(pg_conn, "SELECT id, name FROM v") == [(1, "one")]


# ------------------------------------------------------------------------- options


SIMPLE = """
CREATE TABLE app_users (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE app_orders (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES app_users(id),
                         log_id INTEGER REFERENCES audit_log(id));
CREATE TABLE audit_log (id INTEGER PRIMARY KEY, msg TEXT);
CREATE TABLE tmp_scratch (x TEXT);
CREATE INDEX ix_app_users_name ON app_users (name);
CREATE VIEW user_names AS SELECT name FROM app_users;
INSERT INTO app_users VALUES (1, 'a'), (2, 'b');
INSERT INTO app_orders VALUES (1, 1, 1), (2, 2, NULL);
INSERT INTO audit_log VALUES (1, 'hello');
INSERT INTO tmp_scratch VALUES ('junk');
"""


def _tables(conn: psycopg.Connection, schema: str = "public") -> set[str]:
    return {r[0] for r in pg_rows(conn, "SELECT tablename FROM pg_tables WHERE schemaname = %s",
                                  (schema,))}


def test_tables_and_exclude_patterns(tmp_path: Path, pg_dsn: Dsn,
                                     pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "simple.db", SIMPLE)
    r = run_migrate(db, pg_dsn, tmp_path / "state", tables=["app_*", "audit_*"],
                    exclude=["*_log"], allow_rejects=True)
    assert _tables(pg_conn) == {"app_users", "app_orders"}
    assert pg_rows(pg_conn, "SELECT id, user_id, log_id FROM app_orders ORDER BY id") == [
        (1, 1, 1), (2, 2, None)]
    fk_notes = [m for obj, m in note_messages(r, "warning") if obj == "app_orders"]
    assert any("audit_log is not migrated" in m for m in fk_notes)
    with pytest.raises(UsageError, match="matches no table") as info:
        run_migrate(db, pg_dsn, tmp_path / "state2", tables=["nothing_*"], drop=True)
    assert info.value.exit_code == ExitCode.USAGE


def test_schema_other_than_public(tmp_path: Path, pg_dsn: Dsn,
                                  pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "simple.db", SIMPLE)
    r = run_migrate(db, pg_dsn, tmp_path / "state", schema="app")
    assert r.exit_code == ExitCode.OK
    assert _tables(pg_conn, "app") == {"app_users", "app_orders", "audit_log", "tmp_scratch"}
    assert _tables(pg_conn, "public") == set()
    assert pg_rows(pg_conn, "SELECT id, name FROM app.app_users ORDER BY id") == [
        (1, "a"), (2, "b")]
    assert pg_rows(pg_conn, "SELECT name FROM app.user_names ORDER BY name") == [("a",), ("b",)]
    assert pg_rows(pg_conn, "SELECT schemaname FROM pg_indexes WHERE indexname = "
                            "'ix_app_users_name'") == [("app",)]
    fk_targets = {r[0] for r in pg_rows(pg_conn, "SELECT confrelid::regclass::text FROM "
                                                 "pg_constraint WHERE contype = 'f'")}
    assert fk_targets == {"app.app_users", "app.audit_log"}


def test_refuses_to_overwrite_existing_tables_without_drop(tmp_path: Path, pg_dsn: Dsn,
                                                           pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "simple.db", SIMPLE)
    pg_conn.execute("CREATE TABLE app_users (keep_me text)")
    pg_conn.execute("INSERT INTO app_users VALUES ('precious')")
    with pytest.raises(UsageError, match="already exist") as info:
        run_migrate(db, pg_dsn, tmp_path / "state")
    assert info.value.exit_code == ExitCode.USAGE
    assert "--drop" in (info.value.hint or "")
    assert pg_rows(pg_conn, "SELECT keep_me FROM app_users") == [("precious",)]

    r = run_migrate(db, pg_dsn, tmp_path / "state", drop=True)
    assert r.exit_code == ExitCode.OK
    assert pg_rows(pg_conn, "SELECT id, name FROM app_users ORDER BY id") == [(1, "a"), (2, "b")]


def test_second_run_needs_drop_and_drop_reloads_current_data(tmp_path: Path, pg_dsn: Dsn,
                                                             pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "simple.db", SIMPLE)
    assert run_migrate(db, pg_dsn, tmp_path / "state").exit_code == ExitCode.OK
    with pytest.raises(UsageError, match="already exist"):
        run_migrate(db, pg_dsn, tmp_path / "state")
    con = sqlite3.connect(db)
    con.execute("UPDATE app_users SET name = 'changed' WHERE id = 2")
    con.execute("INSERT INTO app_users VALUES (3, 'c')")
    con.commit()
    con.close()
    r = run_migrate(db, pg_dsn, tmp_path / "state", drop=True)
    assert r.exit_code == ExitCode.OK
    assert pg_rows(pg_conn, "SELECT id, name FROM app_users ORDER BY id") == [
        (1, "a"), (2, "changed"), (3, "c")]
    assert pg_rows(pg_conn, "SELECT name FROM user_names ORDER BY name") == [
        ("a",), ("c",), ("changed",)]


def test_schema_only_creates_tables_and_indexes_without_rows(tmp_path: Path, pg_dsn: Dsn,
                                                             pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "simple.db", SIMPLE)
    r = run_migrate(db, pg_dsn, tmp_path / "state", schema_only=True)
    assert r.exit_code == ExitCode.OK
    assert _tables(pg_conn) == {"app_users", "app_orders", "audit_log", "tmp_scratch"}
    for t in ("app_users", "app_orders", "audit_log", "tmp_scratch"):
        assert pg_rows(pg_conn, f"SELECT count(*) FROM {t}") == [(0,)]
    indexes = {r[0] for r in pg_rows(pg_conn, "SELECT indexname FROM pg_indexes "
                                              "WHERE schemaname = 'public'")}
    assert {"ix_app_users_name", "app_users_pkey", "app_orders_pkey"} <= indexes
    assert pg_rows(pg_conn, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'") == [(2,)]


def test_dry_run_creates_nothing_and_returns_the_ddl(tmp_path: Path, pg_dsn: Dsn,
                                                     pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "simple.db", SIMPLE)
    r = run_migrate(db, pg_dsn, tmp_path / "state", dry_run=True)
    assert r.dry_run
    assert pg_rows(pg_conn, "SELECT nspname FROM pg_namespace WHERE nspname IN "
                            "('pgshift', 'app')") == []
    assert _tables(pg_conn) == set()
    plan = r.plan.to_dict()
    ddl = {t["name"]: t["ddl"] for t in plan["tables"]}  # type: ignore[index]
    assert set(ddl) == {"app_users", "app_orders", "audit_log", "tmp_scratch"}
    assert ddl["app_users"].startswith('CREATE TABLE "public"."app_users" (')
    assert '"name" text' in ddl["app_users"]
    post = {t["name"]: t["post_load"] for t in plan["tables"]}  # type: ignore[index]
    assert any("CREATE INDEX \"ix_app_users_name\"" in s for s in post["app_users"])
    assert [v["name"] for v in plan["views"]] == ["user_names"]  # type: ignore[index]
    assert {t.name: t.source_rows for t in r.tables} == {
        "app_users": 2, "app_orders": 2, "audit_log": 1, "tmp_scratch": 1}
    # the snapshot taken for planning is not left behind
    assert list((tmp_path / "state" / "snapshots").glob("*.sqlite")) == []


def test_many_chunks_of_a_without_rowid_table_lose_and_repeat_nothing(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> None:
    rows = [(f"k{i % 7}", i, f"v{i}") for i in range(1, 351)]
    db = make_db(tmp_path / "wr.db", "CREATE TABLE w (a TEXT, b INTEGER, c TEXT, "
                                     "PRIMARY KEY (a, b)) WITHOUT ROWID;", {"w": rows})
    r = run_migrate(db, pg_dsn, tmp_path / "state", batch_size=100, jobs=3)
    assert r.exit_code == ExitCode.OK
    assert pg_rows(pg_conn, "SELECT count(*) FROM pgshift.migrate_chunks") == [(4,)]
    assert pg_rows(pg_conn, "SELECT a, b, c FROM w ORDER BY a, b") == sorted(rows)


def test_source_rows_breaking_check_or_unique_are_loaded_and_reported(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "viol.db", """
        CREATE TABLE c (id INTEGER PRIMARY KEY, n INTEGER CHECK (n > 0));
        PRAGMA ignore_check_constraints = 1;  -- how such rows get into SQLite
        INSERT INTO c VALUES (1, 5), (2, -3), (3, 7);
        -- no declared type: 1 and '1' are distinct in SQLite, both the text '1' in PostgreSQL
        CREATE TABLE u (id INTEGER PRIMARY KEY, x UNIQUE);
        INSERT INTO u VALUES (1, 1), (2, '1'), (3, 'a');
    """)
    r = run_migrate(db, pg_dsn, tmp_path / "state")
    assert r.exit_code == ExitCode.REJECTS and r.rejects == 0
    by_table = {v.obj: v.message for v in r.violations}
    assert set(by_table) == {"c", "u"}
    assert "check c_n_check left NOT VALID" in by_table["c"] and by_table["c"].endswith("rows: 2")
    assert "UNIQUE" in by_table["u"] and "Key (x)=(1) is duplicated" in by_table["u"]
    assert pg_rows(pg_conn, "SELECT id, n FROM c ORDER BY id") == [(1, 5), (2, -3), (3, 7)]
    assert pg_rows(pg_conn, "SELECT id, x FROM u ORDER BY id") == [(1, "1"), (2, "1"), (3, "a")]
    assert pg_rows(pg_conn, "SELECT convalidated FROM pg_constraint WHERE conname = "
                            "'c_n_check'") == [(False,)]
    with pg_conn.transaction(force_rollback=True), pytest.raises(psycopg.errors.CheckViolation):
        pg_conn.execute("INSERT INTO c (n) VALUES (0)")  # still enforced for new rows
