"""``pgshift sync`` of tables loaded ``migrate --into-existing --map`` (both directions).

The source keeps epoch-millisecond integers, 0/1 flags, JSON as TEXT and string
ids; the application's PostgreSQL schema has timestamptz, boolean, jsonb,
renamed tables and columns, a defaulted column and an identity key fed from the
source. Changes go through the stored mapping: to PostgreSQL by the column
expressions and conversions migrate used, back to SQLite by ``reverse:``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgshift.cli.main import main
from pgshift.dsn import Dsn
from pgshift.sync import ops
from pgshift.verify.run import VerifyOptions, verify
from sqlite_helpers import make_db, run_migrate
from sync_helpers import sqlite_rows, write

pytestmark = pytest.mark.data

UTC = dt.UTC
MS = 1_700_000_000_123  # 2023-11-14T22:13:20.123Z

SOURCE = """
CREATE TABLE flags (id TEXT PRIMARY KEY, enabled INTEGER NOT NULL, created_at INTEGER NOT NULL,
                    settings TEXT, label TEXT);
CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, at INTEGER NOT NULL,
                     done INTEGER NOT NULL);
CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT NOT NULL);
"""

TARGET = """
CREATE TABLE feature_flags (
    id text PRIMARY KEY, is_enabled boolean NOT NULL, created_at timestamptz NOT NULL,
    config jsonb, name text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE event_log (
    event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text NOT NULL,
    happened_at timestamptz NOT NULL, done boolean NOT NULL);
CREATE TABLE audit (id bigint PRIMARY KEY, what text NOT NULL);
"""

MAPPING = """
tables:
  feature_flags:
    from: flags
    sync: true
    key: {id: id}
    columns:
      is_enabled: enabled
      created_at: {expr: created_at, convert: epoch_ms}
      config: settings
      name: "coalesce(label, upper(id))"
    reverse:
      id: id
      enabled: "is_enabled::int"
      created_at: "(extract(epoch FROM created_at) * 1000)::bigint"
      settings: "config::text"
      label: name
  event_log:
    from: events
    sync: true
    key: {id: event_id}
    columns:
      event_id: id
      happened_at: {expr: at, convert: epoch_ms}
    reverse:
      id: event_id
      kind: kind
      at: "(extract(epoch FROM happened_at) * 1000)::bigint"
      done: "done::int"
"""

FLAG_REVERSE = ("SELECT id, is_enabled::int, (extract(epoch FROM created_at) * 1000)::bigint, "
                "config::text, name FROM feature_flags ORDER BY id")
EVENT_REVERSE = ("SELECT event_id, kind, (extract(epoch FROM happened_at) * 1000)::bigint, "
                 "done::int FROM event_log ORDER BY event_id")


def at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, UTC).replace(
        microsecond=(ms % 1000) * 1000)


def flag_rows(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT id, is_enabled, created_at, config, name FROM feature_flags "
                        "ORDER BY id").fetchall()


def event_rows(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT event_id, kind, happened_at, done FROM event_log "
                        "ORDER BY event_id").fetchall()


def loaded(tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection,
           mapping: str = MAPPING) -> Path:
    """The source captured (audit excluded), then loaded --into-existing with the mapping."""
    pg_conn.execute(TARGET)
    db = make_db(tmp_path / "app.db", SOURCE, {
        "flags": [("a", 1, MS, '{"x":1}', "Alpha"), ("b", 0, MS + 1, None, None),
                  ("c", 1, MS + 2, "[1,2]", "Gamma"), ("d", 0, MS + 3, '{"k":"v"}', "Delta")],
        "events": [(1, "start", MS, 0), (2, "stop", MS + 10, 1), (3, "tick", MS + 20, 0)],
        "audit": [(1, "seed")]}, wal=True)
    ops.install(db, exclude=["audit"])
    m = tmp_path / "mapping.yaml"
    m.write_text(mapping)
    result = run_migrate(db, pg_dsn, tmp_path / "state", into_existing=True, mapping=m)
    assert result.rejects == 0 and not result.violations, result.to_dict()
    return db


def identical(db: Path, pg_dsn: Dsn) -> None:
    """verify through the mapping: the synced tables are equal (audit is not captured)."""
    result = verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn, exclude=["audit"]))
    assert result.identical, [t.__dict__ for t in result.tables]
    assert sorted(t.table for t in result.tables) == ["event_log", "feature_flags"]


def test_mapped_tables_sync_both_ways(tmp_path: Path, pg_dsn: Dsn,
                                      pg_conn: psycopg.Connection) -> None:
    db = loaded(tmp_path, pg_dsn, pg_conn)
    assert flag_rows(pg_conn)[1] == ("b", False, at(MS + 1), None, "B")
    # PostgreSQL capture on the target tables, keyed by the target key columns
    # (--green-ids negative: the flip moves event_log's identity past the synced ids)
    assert main(["sync", "install", str(db), pg_dsn.conninfo, "--exclude", "audit",
                 "--green-ids", "negative"]) == 0
    assert sorted(r[0] for r in pg_conn.execute(
        "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE t.tgname = '_pgshift_capture'").fetchall()) == ["event_log", "feature_flags"]

    # --- the app writes SQLite; to-postgres carries it through the mapping
    write(db,
          ("INSERT INTO flags VALUES (?, ?, ?, ?, ?)", ("e", 1, MS + 999, '{"n": [1, 2]}', None)),
          "UPDATE flags SET enabled = 1, settings = '{\"x\":2}', created_at = created_at + 7 "
          "WHERE id = 'b'",
          "DELETE FROM flags WHERE id = 'c'",
          "UPDATE flags SET id = 'dd', label = NULL WHERE id = 'd'",  # a key update
          ("INSERT OR REPLACE INTO flags VALUES (?, ?, ?, ?, ?)",
           ("a", 0, MS + 5, None, "Alpha 2")),
          ("INSERT INTO events VALUES (?, ?, ?, ?)", (10, "new", MS + 123456, 1)),
          "UPDATE events SET done = 1, at = at + 1 WHERE id = 1",
          "DELETE FROM events WHERE id = 2",
          "UPDATE events SET id = 4 WHERE id = 3",  # a key update of an identity key
          "INSERT INTO audit VALUES (2, 'not captured')")
    assert main(["sync", "run", str(db), pg_dsn.conninfo]) == 0
    assert flag_rows(pg_conn) == [
        ("a", False, at(MS + 5), None, "Alpha 2"),
        ("b", True, at(MS + 8), {"x": 2}, "B"),
        ("dd", False, at(MS + 3), {"k": "v"}, "DD"),
        ("e", True, at(MS + 999), {"n": [1, 2]}, "E")]
    assert event_rows(pg_conn) == [(1, "start", at(MS + 1), True),
                                   (4, "tick", at(MS + 20), False),
                                   (10, "new", at(MS + 123456), True)]
    # the defaulted column keeps its default; milliseconds are kept exactly
    assert pg_conn.execute("SELECT count(*) FROM feature_flags WHERE updated_at IS NULL"
                           ).fetchone() == (0,)
    assert pg_conn.execute("SELECT (extract(epoch FROM happened_at) * 1000)::bigint FROM "
                           "event_log WHERE event_id = 10").fetchone() == (MS + 123456,)
    identical(db, pg_dsn)
    # audit's write was not captured: verify through the mapping sees it
    assert not verify(VerifyOptions(sqlite_path=db, dsn=pg_dsn, tables=["audit"])).identical

    # green's incidental writes before the flip: the flip rebases them (a delete is
    # queued with its key only, the key goes back through reverse:)
    pg_conn.execute("DELETE FROM event_log WHERE event_id = 10")
    pg_conn.execute("UPDATE feature_flags SET is_enabled = true WHERE id = 'dd'")

    # --- the flip; the app now writes PostgreSQL, to-sqlite carries it back
    assert main(["sync", "flip", str(db), pg_dsn.conninfo]) == 0
    assert pg_conn.execute("SELECT op, row IS NULL FROM pgshift.pg_changes ORDER BY id"
                           ).fetchall() == [("D", True), ("I", False)]
    pg_conn.execute("INSERT INTO feature_flags (id, is_enabled, created_at, config, name) "
                    "VALUES ('pg', true, '2024-01-02 03:04:05.678+00', '{\"b\": 2, \"a\": 1}', "
                    "'From PG')")
    pg_conn.execute("UPDATE feature_flags SET is_enabled = true, name = 'Alpha 3', "
                    "created_at = created_at + interval '2 ms' WHERE id = 'a'")
    pg_conn.execute("DELETE FROM feature_flags WHERE id = 'e'")
    pg_conn.execute("UPDATE feature_flags SET id = 'bb' WHERE id = 'b'")  # a key update
    pg_conn.execute("INSERT INTO event_log (kind, happened_at, done) VALUES "
                    "('green', '2024-05-06 07:08:09.010+00', false)")
    pg_conn.execute("UPDATE event_log SET kind = 'begin' WHERE event_id = 1")
    pg_conn.execute("DELETE FROM event_log WHERE event_id = 4")
    assert main(["sync", "run", str(db), pg_dsn.conninfo, "--mode", "to-sqlite"]) == 0
    # a lossy reverse (coalesce(label, ...), jsonb spacing) is no conflict: SQLite's row,
    # mapped forward, is PostgreSQL's before-image
    assert pg_conn.execute("SELECT count(*) FROM pgshift.sync_conflicts").fetchone() == (0,)
    assert pg_conn.execute("SELECT count(*) FROM pgshift.pg_changes").fetchone() == (0,)
    flags = sqlite_rows(db, "SELECT id, enabled, created_at, settings, label FROM flags "
                            "ORDER BY id")
    # every row was written on PostgreSQL: each is the reverse mapping of its target row
    assert flags == [tuple(r) for r in pg_conn.execute(FLAG_REVERSE).fetchall()]
    assert [f[0] for f in flags] == ["a", "bb", "dd", "pg"]
    assert flags[0] == ("a", 1, MS + 7, None, "Alpha 3")
    assert flags[1] == ("bb", 1, MS + 8, '{"x": 2}', "B")
    assert flags[2] == ("dd", 1, MS + 3, '{"k": "v"}', "DD")
    assert flags[3] == ("pg", 1, 1704164645678, '{"a": 1, "b": 2}', "From PG")
    events = sqlite_rows(db, "SELECT id, kind, at, done FROM events ORDER BY id")
    assert events == [tuple(r) for r in pg_conn.execute(EVENT_REVERSE).fetchall()]
    green = pg_conn.execute("SELECT event_id FROM event_log WHERE kind = 'green'").fetchone()
    assert events[0] == (1, "begin", MS + 1, 1) and green[0] > 4  # counts up past max(id)
    assert (green[0], "green", 1714979289010, 0) in events
    assert [e[0] for e in events] == [1, green[0]]  # 10: deleted by green before the flip
    identical(db, pg_dsn)
    # trim after the flip: the mapped tables are captured on PostgreSQL (as their targets)
    log = "SELECT count(*) FROM _pgshift_changes"
    assert sqlite_rows(db, log)[0][0] > 1
    assert main(["sync", "trim", str(db), pg_dsn.conninfo]) == 0
    assert sqlite_rows(db, log) == [(1,)]  # the last row is always kept


def test_mapped_sync_refuses_what_it_cannot_carry(tmp_path: Path, pg_dsn: Dsn,
                                                  pg_conn: psycopg.Connection,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # audit is loaded through the mapping without `sync: true`: capturing it is refused
    mapping = MAPPING + "  audit:\n    columns:\n      what: what\n"
    db = loaded(tmp_path, pg_dsn, pg_conn, mapping)
    write(db, "UPDATE flags SET enabled = 1 WHERE id = 'b'")
    assert main(["sync", "run", str(db), pg_dsn.conninfo]) == 0  # audit not captured
    assert pg_conn.execute("SELECT is_enabled FROM feature_flags WHERE id = 'b'"
                           ).fetchone() == (True,)
    capsys.readouterr()
    assert main(["sync", "install", str(db), "--tables", "audit"]) == 0
    assert main(["sync", "run", str(db), pg_dsn.conninfo]) == 2
    err = capsys.readouterr().err
    assert "audit" in err and "sync: true" in err
    assert main(["sync", "run", str(db), pg_dsn.conninfo, "--mode", "dual"]) == 2
    assert "--mode dual is not supported yet" in capsys.readouterr().err
    assert main(["sync", "install", str(db), pg_dsn.conninfo, "--pg-capture", "logical"]) == 2
    assert "logical is not supported yet" in capsys.readouterr().err


def test_mapped_sync_refuses_a_filtered_table(tmp_path: Path, pg_dsn: Dsn,
                                              pg_conn: psycopg.Connection,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    where = "    where: \"kind <> 'x'\"\n"
    mapping = MAPPING.replace("    from: events\n", "    from: events\n" + where)
    db = loaded(tmp_path, pg_dsn, pg_conn, mapping)
    capsys.readouterr()
    assert main(["sync", "run", str(db), pg_dsn.conninfo]) == 2
    err = capsys.readouterr().err
    assert "event_log" in err and "`where:` filter is not supported yet" in err


def test_mapped_sync_refuses_a_source_feeding_two_tables(tmp_path: Path, pg_dsn: Dsn,
                                                         pg_conn: psycopg.Connection,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    pg_conn.execute("CREATE TABLE flag_names (id text PRIMARY KEY, name text)")
    mapping = MAPPING + "  flag_names:\n    from: flags\n    columns:\n      name: label\n"
    db = loaded(tmp_path, pg_dsn, pg_conn, mapping)
    capsys.readouterr()
    assert main(["sync", "run", str(db), pg_dsn.conninfo]) == 2
    err = capsys.readouterr().err
    assert "flags feeds 2 target tables" in err and "not supported yet" in err
    assert main(["sync", "install", str(db), pg_dsn.conninfo]) == 2
    assert "not supported yet" in capsys.readouterr().err


def test_green_write_before_the_flip_is_a_conflict_on_the_target(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection) -> None:
    db = loaded(tmp_path, pg_dsn, pg_conn)
    assert main(["sync", "install", str(db), pg_dsn.conninfo, "--exclude", "audit"]) == 0
    assert main(["sync", "run", str(db), pg_dsn.conninfo]) == 0
    # green writes the target row, then blue (the system of record) writes the source row
    pg_conn.execute("UPDATE feature_flags SET name = 'green' WHERE id = 'a'")
    write(db, "UPDATE flags SET label = 'blue' WHERE id = 'a'")
    assert main(["sync", "run", str(db), pg_dsn.conninfo]) == 0
    assert pg_conn.execute("SELECT name FROM feature_flags WHERE id = 'a'").fetchone() == \
        ("blue",)
    conflicts = pg_conn.execute("SELECT table_name, winner, loser_image ->> 'name' FROM "
                                "pgshift.sync_conflicts").fetchall()
    assert conflicts == [("flags", "sqlite", "green")]
    # green's queued change of that key was superseded: nothing goes back to SQLite
    assert pg_conn.execute("SELECT count(*) FROM pgshift.pg_changes").fetchone() == (0,)
    identical(db, pg_dsn)


def test_mapped_sync_refuses_a_key_read_from_other_columns(
        tmp_path: Path, pg_dsn: Dsn, pg_conn: psycopg.Connection,
        capsys: pytest.CaptureFixture[str]) -> None:
    rekey = "      id: \"id || coalesce(label, '')\"\n"
    mapping = MAPPING.replace("      is_enabled: enabled\n", "      is_enabled: enabled\n" + rekey)
    db = loaded(tmp_path, pg_dsn, pg_conn, mapping)
    capsys.readouterr()
    assert main(["sync", "run", str(db), pg_dsn.conninfo]) == 2
    err = capsys.readouterr().err
    assert "feature_flags" in err and "reads more than the key of flags" in err
