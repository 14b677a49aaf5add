"""migrate: the SQLite oddities a peer's test suite carries (issue 14), each built here with
sqlite3 and migrated into the real test PostgreSQL.

1. identifiers past 63 bytes that collide once PostgreSQL cuts them;
2. DEFAULTs PostgreSQL refused, translated by the target column's type and checked;
3. a non-rowid integer primary key holding NULLs (--fill-null-keys, automatic for
   AUTO_INCREMENT);
4. a column without a declared type holding integers, reals, texts and blobs;
5. triggers (touch, counter, audit) translated; the rest in a reviewable file.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import struct
import time
from pathlib import Path

import psycopg
import pytest

from pgshift.dsn import Dsn
from pgshift.errors import ExitCode, UsageError
from pgshift.schema.names import assign, pg_truncate, refuse_shortened, shortened
from pgshift.schema.plan import Plan, build_plan
from pgshift.schema.triggers import REVIEW_FILE
from pgshift.source.catalog import read_catalog
from pgshift.source.profile import profile_tables
from pgshift.verify.run import VerifyOptions, verify
from sqlite_helpers import make_db, note_messages, pg_rows, read_jsonl, run_migrate

pytestmark = pytest.mark.data

LONG = "col_very_long_name_that_goes_past_the_postgresql_limit_of_63_bytes_aaa"
LONG_TABLE = "a_table_name_that_is_far_too_long_for_postgresql_identifiers_version_"


def _plan_of(db: Path, exclude: str = "") -> Plan:
    """The plan migrate would make (no PostgreSQL involved)."""
    con = sqlite3.connect(db)
    try:
        catalog = read_catalog(con)
    finally:
        con.close()
    tables = [t for t in catalog.tables if t.name != exclude]
    return build_plan(catalog, profile_tables(lambda: sqlite3.connect(db), tables),
                      tables=tables)


def _verify(db: Path, dsn: Dsn, schema: str = "public") -> None:
    result = verify(VerifyOptions(sqlite_path=db, dsn=dsn, schema=schema))
    assert result.schema_diffs == [], result.schema_diffs
    assert result.identical, [v.diffs for v in result.tables]


# ----------------------------------------------------------------- 1. long identifiers


def test_names_unit_rules() -> None:
    short = "x" * 63
    names = assign([LONG + "x", LONG + "y", short, "b" * 70])
    assert names[short] == short  # never renamed: the long ones are
    assert names["b" * 70] == "b" * 63  # unique once cut: PostgreSQL's own cut
    a, b = names[LONG + "x"], names[LONG + "y"]
    assert a != b and len(a.encode()) <= 63 and len(b.encode()) <= 63
    assert a == shortened(LONG + "x")  # deterministic: a pure function of the name
    # A multibyte character is never cut in half.
    assert pg_truncate("é" * 40).encode() == ("é" * 31).encode()


def test_colliding_long_names_migrate_and_verify(tmp_path: Path, pg_dsn: Dsn,
                                                 pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "long.db", f"""
        CREATE TABLE {LONG_TABLE}1 (id INTEGER PRIMARY KEY, {LONG}x TEXT, {LONG}y TEXT,
            CONSTRAINT {LONG}_check1 CHECK ({LONG}x <> 'bad'),
            CONSTRAINT {LONG}_check2 CHECK ({LONG}y <> 'bad'));
        CREATE TABLE {LONG_TABLE}2 (id INTEGER PRIMARY KEY,
            parent INTEGER REFERENCES {LONG_TABLE}1 (id), {LONG}x TEXT);
        CREATE INDEX {LONG}_index1 ON {LONG_TABLE}1 ({LONG}x);
        CREATE INDEX {LONG}_index2 ON {LONG_TABLE}1 ({LONG}y);
    """, {f"{LONG_TABLE}1": [(1, "x1", "y1"), (2, "x2", None)],
          f"{LONG_TABLE}2": [(1, 1, "child")]})
    dry = run_migrate(db, pg_dsn, tmp_path / "state", dry_run=True)
    plan = dry.to_dict()["plan"]
    by_name = {t["name"]: t for t in plan["tables"]}
    t1 = by_name[f"{LONG_TABLE}1"]
    assert t1["pg_name"] == shortened(f"{LONG_TABLE}1")
    pg_cols = {c["name"]: c["pg_name"] for c in t1["columns"]}
    assert pg_cols[LONG + "x"] == shortened(LONG + "x")
    assert pg_cols[LONG + "y"] == shortened(LONG + "y")
    warned = {obj for obj, m in note_messages(dry, "warning") if "equal to another" in m}
    assert {f"{LONG_TABLE}1", f"{LONG_TABLE}2", f"{LONG_TABLE}1.{LONG}x",
            f"{LONG_TABLE}1.{LONG}y", f"{LONG}_index1", f"{LONG}_index2"} <= warned

    result = run_migrate(db, pg_dsn, tmp_path / "state")
    assert result.exit_code == ExitCode.OK, result.plan.notes
    rel = f'"{shortened(LONG_TABLE + "1")}"'
    assert pg_rows(pg_conn, f'SELECT id, "{shortened(LONG + "x")}", "{shortened(LONG + "y")}" '
                            f"FROM {rel} ORDER BY id") == [(1, "x1", "y1"), (2, "x2", None)]
    indexes = {r[0] for r in pg_rows(pg_conn, "SELECT indexname FROM pg_indexes "
                                              "WHERE schemaname = 'public'")}
    assert {shortened(f"{LONG}_index1"), shortened(f"{LONG}_index2")} <= indexes
    checks = pg_rows(pg_conn, "SELECT count(*) FROM pg_constraint WHERE contype = 'c' "
                              f"AND conrelid = '{rel}'::regclass")
    assert checks == [(2,)]
    fks = pg_rows(pg_conn, "SELECT confrelid::regclass::text FROM pg_constraint "
                           "WHERE contype = 'f'")
    assert fks == [(shortened(LONG_TABLE + "1"),)]
    _verify(db, pg_dsn)
    # Sync addresses PostgreSQL by SQLite's spelling: it refuses, naming the rename.
    with pytest.raises(UsageError, match="sync cannot follow a shortened name") as info:
        refuse_shortened(result.plan.tables, "sync")  # type: ignore[arg-type]
    assert info.value.hint is not None and "rename it" in info.value.hint


def test_long_unique_name_keeps_postgresqls_cut(tmp_path: Path, pg_dsn: Dsn,
                                                pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "one.db", f"CREATE TABLE t (id INTEGER PRIMARY KEY, {LONG}x TEXT);",
                 {"t": [(1, "v")]})
    result = run_migrate(db, pg_dsn, tmp_path / "state")
    assert result.exit_code == ExitCode.OK
    # The application's queries spell the full name; PostgreSQL cuts it the same way.
    assert pg_rows(pg_conn, f'SELECT "{LONG}x" FROM t') == [("v",)]
    assert [m for obj, m in note_messages(result, "info") if obj == f"t.{LONG}x"]
    _verify(db, pg_dsn)


# ----------------------------------------------------------------------- 2. DEFAULTs


DEFAULTS_DDL = """
CREATE TABLE d (
    id INTEGER PRIMARY KEY,
    empty TEXT DEFAULT "",
    local_text TEXT DEFAULT (datetime('now','localtime')),
    ms TIMESTAMP DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')),
    zero DATETIME DEFAULT 0,
    quoted INTEGER DEFAULT '"0"',
    num_text INTEGER DEFAULT '42',
    local_ts DATETIME DEFAULT (datetime('now', 'localtime')),
    doc JSON DEFAULT '{broken',
    note TEXT DEFAULT 7
);
"""


def test_defaults_translated_by_target_type_and_checked(tmp_path: Path, pg_dsn: Dsn,
                                                        pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "defaults.db", DEFAULTS_DDL, {"d": [
        (1, "a", "2024-01-02 03:04:05", "2024-01-02 03:04:05.123", "2024-01-02 03:04:05", 5,
         6, "2024-01-02 03:04:05", '{"a": 1}', "n")]})
    dry = run_migrate(db, pg_dsn, tmp_path / "state", dry_run=True)
    untranslated = dict(note_messages(dry, "untranslated"))
    # What stays untranslatable is listed with the column and SQLite's exact text.
    assert untranslated["d.zero"].startswith("DEFAULT 0 not carried: the number 0 in a "
                                             "timestamp column")
    assert untranslated["d.quoted"].startswith("""DEFAULT '"0"' not carried: SQLite stores """
                                               """the text '"0"' here""")
    # Translated, but PostgreSQL refused it when the plan checked it.
    assert untranslated["d.doc"].startswith("DEFAULT '{broken' not carried: PostgreSQL "
                                            "refused")
    assert set(untranslated) == {"d.zero", "d.quoted", "d.doc"}

    result = run_migrate(db, pg_dsn, tmp_path / "state")
    assert result.exit_code == ExitCode.OK
    with pg_conn.transaction(force_rollback=True):
        pg_conn.execute("SET TIME ZONE 'UTC'")
        row = pg_conn.execute(
            "INSERT INTO d (id) VALUES (2) RETURNING empty, local_text, ms, zero, quoted, "
            "num_text, local_ts, doc, note, now() AT TIME ZONE 'UTC'").fetchone()
    assert row is not None
    empty, local_text, ms, zero, quoted, num_text, local_ts, doc, note, now = row
    assert empty == ""
    # datetime('now','localtime'): SQLite's text shape, whole seconds, the session's zone.
    assert local_text == now.strftime("%Y-%m-%d %H:%M:%S")
    assert isinstance(ms, dt.datetime) and ms == now.replace(microsecond=now.microsecond
                                                             // 1000 * 1000)
    assert zero is None and quoted is None and doc is None
    assert num_text == 42  # '42' in an INTEGER column is the number 42 to SQLite
    assert local_ts == now.replace(microsecond=0)
    assert note == "7"  # TEXT affinity stores the number's text
    _verify(db, pg_dsn)


# ---------------------------------------------------------------- 3. NULL primary keys


def test_auto_increment_null_keys_filled_past_the_maximum(tmp_path: Path, pg_dsn: Dsn,
                                                          pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "keys.db", """
        CREATE TABLE auto (id integer auto_increment primary key, name TEXT);
        CREATE TABLE whole (id int auto_increment primary key, name TEXT);
        INSERT INTO whole VALUES (3, 'three');
        INSERT INTO auto (name) VALUES ('a'), ('b'), ('c');
        INSERT INTO auto (id, name) VALUES (10, 'ten');
    """)
    dry = run_migrate(db, pg_dsn, tmp_path / "state", dry_run=True)
    assert [m for obj, m in note_messages(dry, "warning") if obj == "auto.id"] == [
        "3 row(s) with a NULL primary key get identity values past the maximum (declared "
        "'integer auto_increment'); the column becomes GENERATED BY DEFAULT AS IDENTITY"]
    result = run_migrate(db, pg_dsn, tmp_path / "state")
    assert result.exit_code == ExitCode.OK and result.rejects == 0
    assert pg_rows(pg_conn, "SELECT id, name FROM auto ORDER BY id") == [
        (10, "ten"), (11, "a"), (12, "b"), (13, "c")]
    assert pg_rows(pg_conn, "INSERT INTO auto (name) VALUES ('next') RETURNING id") == [(14,)]
    assert pg_rows(pg_conn, "SELECT attidentity, attnotnull FROM pg_attribute WHERE "
                            "attrelid = 'auto'::regclass AND attname = 'id'") == [("d", True)]
    # Declared auto-increment without NULLs: an identity too, past the maximum.
    assert pg_rows(pg_conn, "INSERT INTO whole (name) VALUES ('x') RETURNING id") == [(4,)]
    pg_conn.execute("DELETE FROM auto WHERE id = 14")
    pg_conn.execute("DELETE FROM whole WHERE id = 4")
    pg_conn.commit()
    # verify compares the NULL-key rows without their key against the rows PostgreSQL
    # numbered past SQLite's largest key (10): the same three
    _verify(db, pg_dsn)
    pg_conn.execute("UPDATE auto SET name = 'B' WHERE name = 'b'")
    pg_conn.commit()
    result = verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn, tables=["auto"]))
    (auto,) = result.tables
    assert auto.mode == "segments + NULL keys" and auto.sqlite_rows == auto.postgres_rows == 4
    assert sorted((d.kind, d.key["row"], d.columns["*"]) for d in auto.diffs) == [
        ("count_differs", "V1:B", ("0", "1")), ("count_differs", "V1:b", ("1", "0"))]


def test_null_keys_rejected_by_default_and_filled_when_asked(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "plain.db", """
        CREATE TABLE plain (id INT PRIMARY KEY, name TEXT);
        INSERT INTO plain VALUES (NULL, 'a'), (5, 'five'), (NULL, 'b');
    """)
    rejected = run_migrate(db, pg_dsn, tmp_path / "state")
    assert rejected.exit_code == ExitCode.REJECTS
    hint = [m for obj, m in note_messages(rejected, "anomaly") if obj == "plain.id"]
    assert hint and "--fill-null-keys" in hint[0]
    assert rejected.rejects_file is not None and len(read_jsonl(rejected.rejects_file)) == 2
    assert rejected.rejects == 2  # two rows, though both have the same (NULL) key
    # verify names both rejected rows (not one "NULL key" for the two)
    missing = verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn))
    (plain,) = missing.tables
    assert (plain.sqlite_rows, plain.postgres_rows) == (3, 1)
    assert sorted((d.key["row"], d.columns["*"]) for d in plain.diffs) == [
        ("V1:a", ("1", "0")), ("V1:b", ("1", "0"))]
    filled = run_migrate(db, pg_dsn, tmp_path / "state", restart=True, drop=True,
                         fill_null_keys=True)
    assert filled.exit_code == ExitCode.OK and filled.rejects == 0
    assert pg_rows(pg_conn, "SELECT id, name FROM plain ORDER BY id") in (
        [(5, "five"), (6, "a"), (7, "b")], [(5, "five"), (6, "b"), (7, "a")])
    _verify(db, pg_dsn)


# --------------------------------------------------------------- 4. mixed-class column


MIXED_REALS = [0.1, 1 / 3, 1e300, -0.0, 5e-324, 123456789.12345679, 2.0**60, -1.5e-310]


def test_mixed_classes_become_exact_text(tmp_path: Path, pg_dsn: Dsn,
                                         pg_conn: psycopg.Connection) -> None:
    values: list[object] = [1, -(2**63), 2**63 - 1, "text", "", *MIXED_REALS]
    db = make_db(tmp_path / "mixed.db", "CREATE TABLE m (id INTEGER PRIMARY KEY, v);",
                 {"m": list(enumerate(values, 1))})
    result = run_migrate(db, pg_dsn, tmp_path / "state")
    assert result.exit_code == ExitCode.OK
    col = result.plan.table("m").column("v")  # type: ignore[union-attr]
    assert col.pg_type == "text"
    got = dict(pg_rows(pg_conn, "SELECT id, v FROM m"))
    for i, v in enumerate(values, 1):
        if isinstance(v, float):
            # Each real's text parses back to the very same double.
            assert struct.pack(">d", float(got[i])) == struct.pack(">d", v), (v, got[i])
        else:
            assert got[i] == str(v)
    _verify(db, pg_dsn)


def test_mixed_with_blobs_rejects_only_what_no_type_keeps(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "blobs.db", "CREATE TABLE m (id INTEGER PRIMARY KEY, v);",
                 {"m": [(1, 1), (2, 0.1), (3, "t"), (4, b"\x00b")]})
    result = run_migrate(db, pg_dsn, tmp_path / "state", allow_rejects=True)
    assert result.rejects == 1
    assert pg_rows(pg_conn, "SELECT id, v FROM m ORDER BY id") == [(1, "1"), (2, "0.1"),
                                                                    (3, "t")]
    notes = [m for obj, m in note_messages(result, "anomaly") if obj == "m.v"]
    assert any("1 blob value(s) are rejects" in m for m in notes)
    # Mostly blobs: bytea keeps them (and the text), the numbers are the rejects.
    db2 = make_db(tmp_path / "blobs2.db", "CREATE TABLE m2 (id INTEGER PRIMARY KEY, v);",
                  {"m2": [(1, b"\x01"), (2, b"\x02"), (3, "t"), (4, 7)]})
    result2 = run_migrate(db2, pg_dsn, tmp_path / "state2", allow_rejects=True)
    assert result2.rejects == 1
    assert pg_rows(pg_conn, "SELECT id, v FROM m2 ORDER BY id") == [
        (1, b"\x01"), (2, b"\x02"), (3, b"t")]


# ----------------------------------------------------------------------- 5. triggers


TRIGGERS_DDL = """
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, updated_at TEXT,
                    changed TIMESTAMP);
CREATE TABLE counters (id INTEGER PRIMARY KEY, items INTEGER NOT NULL DEFAULT 0);
CREATE TABLE audit (id INTEGER PRIMARY KEY, item_id INTEGER, action TEXT, at TIMESTAMP);
CREATE TRIGGER items_touch AFTER UPDATE ON items FOR EACH ROW
BEGIN
  UPDATE items SET updated_at = datetime('now'), changed = CURRENT_TIMESTAMP
  WHERE id = NEW.id;
END;
CREATE TRIGGER items_count AFTER INSERT ON items
BEGIN
  UPDATE counters SET items = items + 1 WHERE id = 1;
END;
CREATE TRIGGER items_uncount AFTER DELETE ON items
BEGIN
  UPDATE counters SET items = items - 1 WHERE id = 1;
END;
CREATE TRIGGER items_audit AFTER DELETE ON items
BEGIN
  INSERT INTO audit (item_id, action, at) VALUES (OLD.id, 'delete', datetime('now'));
END;
CREATE TRIGGER items_renamed AFTER UPDATE OF name ON items WHEN NEW.name <> OLD.name
BEGIN
  INSERT INTO audit (item_id, action, at) VALUES (NEW.id, 'rename:' || OLD.name,
                                                  CURRENT_TIMESTAMP);
END;
CREATE TRIGGER items_guard BEFORE INSERT ON items WHEN NEW.name = ''
BEGIN
  SELECT RAISE(ABORT, 'empty name');
END;
INSERT INTO counters VALUES (1, 0);
INSERT INTO items (name, updated_at) VALUES ('a', '2024-01-01 00:00:00'),
                                          ('b', '2024-01-01 00:00:00');
"""


def test_triggers_translated_and_the_rest_written_for_review(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> None:
    db = make_db(tmp_path / "trig.db", TRIGGERS_DDL)
    state = tmp_path / "state"
    dry = run_migrate(db, pg_dsn, state, dry_run=True)
    forms = {t.name: t.form for t in dry.plan.triggers}  # type: ignore[union-attr]
    assert forms == {"items_touch": "touch", "items_count": "statements",
                     "items_uncount": "statements", "items_audit": "statements",
                     "items_renamed": "statements", "items_guard": None}
    review = (state / REVIEW_FILE).read_text()
    assert "-- trigger items_guard on items:" in review
    assert "--   SELECT RAISE(ABORT, 'empty name');" in review
    assert [obj for obj, m in note_messages(dry, "untranslated")] == ["items_guard"]

    result = run_migrate(db, pg_dsn, state)
    assert result.exit_code == ExitCode.OK
    # Created after the load: the copied rows and the counter are as SQLite had them.
    assert pg_rows(pg_conn, "SELECT items FROM counters") == [(2,)]
    assert pg_rows(pg_conn, "SELECT DISTINCT updated_at FROM items") == [
        ("2024-01-01 00:00:00",)]
    pg_conn.execute("SET TIME ZONE 'UTC'")
    pg_conn.execute("INSERT INTO items (name) VALUES ('c')")
    assert pg_rows(pg_conn, "SELECT items FROM counters") == [(3,)]
    pg_conn.execute("UPDATE items SET name = 'A' WHERE id = 1")
    touched = pg_rows(pg_conn, "SELECT updated_at, changed, now() AT TIME ZONE 'UTC' "
                               "FROM items WHERE id = 1")[0]
    assert touched[0] == touched[2].strftime("%Y-%m-%d %H:%M:%S")  # SQLite's text shape
    assert touched[1] == touched[2].replace(microsecond=0)  # typed by its column
    pg_conn.execute("UPDATE items SET name = 'A' WHERE id = 1")  # WHEN: no change, no row
    pg_conn.execute("UPDATE items SET updated_at = 'x' WHERE id = 2")  # UPDATE OF name only
    pg_conn.execute("DELETE FROM items WHERE id = 2")
    assert pg_rows(pg_conn, "SELECT items FROM counters") == [(2,)]
    audit = pg_rows(pg_conn, "SELECT item_id, action, at IS NOT NULL FROM audit ORDER BY id")
    assert audit == [(1, "rename:a", True), (2, "delete", True)]
    names = {r[0] for r in pg_rows(pg_conn, "SELECT tgname FROM pg_trigger "
                                            "WHERE NOT tgisinternal")}
    assert names == {"items_touch", "items_count", "items_uncount", "items_audit",
                     "items_renamed"}
    # Migrating again over the tables (--drop): the functions are replaced, not refused.
    again = run_migrate(db, pg_dsn, state, drop=True)
    assert again.exit_code == ExitCode.OK
    assert not [m for _, m in note_messages(again, "untranslated") if "refused" in m]
    assert len(pg_rows(pg_conn, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")) == 5


def test_translated_triggers_stay_quiet_for_syncs_replayed_writes(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pgshift.sync import apply, ops
    from pgshift.sync.apply import SyncOptions, run

    db = make_db(tmp_path / "trig.db", TRIGGERS_DDL)
    ops.install(db)
    assert run_migrate(db, pg_dsn, tmp_path / "state").exit_code == ExitCode.OK
    # blue writes; SQLite's own triggers count, touch and audit, and capture logs it all
    con = sqlite3.connect(db)
    with con:
        con.execute("INSERT INTO items (name) VALUES ('c')")
        con.execute("UPDATE items SET name = 'A' WHERE id = 1")
        con.execute("DELETE FROM items WHERE id = 2")
    con.close()
    # a role that may not set session_replication_role (a managed database's app role):
    # PostgreSQL's translated triggers would fire on every replayed row
    monkeypatch.setattr(apply, "_replica_role", lambda conn: False)
    # a second later, PostgreSQL's touch trigger would write another clock than SQLite's
    # (the counter and audit rows converge anyway: the replayed after-images win)
    time.sleep(1.1)
    result = run(SyncOptions(sqlite_path=db, dsn=pg_dsn))
    assert result.applied > 0
    assert pg_rows(pg_conn, "SELECT items FROM counters") == [(2,)]
    assert pg_rows(pg_conn, "SELECT item_id, action FROM audit ORDER BY id") == [
        (1, "rename:a"), (2, "delete")]
    _verify(db, pg_dsn)  # the clocks are SQLite's, not moved by PostgreSQL's touch
    # the application's own writes on green still fire them
    pg_conn.execute("INSERT INTO items (id, name) VALUES (10, 'd')")
    assert pg_rows(pg_conn, "SELECT items FROM counters") == [(3,)]


@pytest.mark.parametrize("body, why", [
    ("UPDATE counters SET items = NEW.nope WHERE id = 1", "NEW.nope: items has no such column"),
    ("UPDATE counters SET nope = 1 WHERE id = 1", "column nope is in no migrated table"),
    ("INSERT OR REPLACE INTO counters VALUES (1, 0)", "INSERT OR REPLACE"),
    ("UPDATE items SET name = upper(name) WHERE id = NEW.id", "own table"),
    ("DELETE FROM elsewhere", "elsewhere is not migrated"),
])
def test_trigger_forms_not_translated(tmp_path: Path, body: str, why: str) -> None:
    db = make_db(tmp_path / "t.db", f"""
        CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE counters (id INTEGER PRIMARY KEY, items INTEGER);
        CREATE TABLE elsewhere (id INTEGER PRIMARY KEY);
        CREATE TRIGGER t AFTER UPDATE ON items BEGIN {body}; END;
    """)
    (trig,) = _plan_of(db, exclude="elsewhere").triggers
    assert trig.form is None and trig.reason is not None and why in trig.reason


def test_touch_by_rowid_is_translated(tmp_path: Path) -> None:
    db = make_db(tmp_path / "t.db", """
        CREATE TABLE notes (body TEXT, touched TEXT);
        CREATE TRIGGER n AFTER INSERT ON notes
        BEGIN UPDATE notes SET touched = CURRENT_TIMESTAMP WHERE rowid = NEW.rowid; END;
    """)
    (trig,) = _plan_of(db).triggers
    assert trig.form == "touch"
    assert trig.trigger_sql is not None and " BEFORE INSERT " in trig.trigger_sql
