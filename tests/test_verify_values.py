"""``pgshift verify`` on real data: identical copies pass, one changed cell of any type is
found and located (key, column, both canonical values)."""

from __future__ import annotations

import json
import math
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgshift.demo.seed import TABLES, seed
from pgshift.dsn import Dsn
from pgshift.embedded_pg import PostgresServer
from verify_helpers import (
    MigratedCopy,
    all_diffs,
    assert_identical,
    make_db,
    migrate_into,
    migrated_module,
    only_diff,
    pg_exec,
    run_verify,
    sqlite_exec,
)

pytestmark = pytest.mark.data

TYPED_DDL = """
CREATE TABLE typed (
  id INTEGER PRIMARY KEY,
  i BIGINT,
  f REAL,
  n NUMERIC,
  s TEXT,
  j JSON,
  b BLOB,
  ok BOOLEAN,
  ms TIMESTAMP,
  secs DATETIME,
  ts DATETIME,
  tz TIMESTAMPTZ,
  d DATE,
  tm TIME,
  u UUID
);
"""

TYPED_PG = {  # what the plan must choose, so each case below exercises the intended path
    "id": ("bigint", "int"), "i": ("bigint", "int"), "f": ("double precision", "float"),
    "n": ("numeric", "numeric"), "s": ("text", "text"), "j": ("jsonb", "json"),
    "b": ("bytea", "bytea"), "ok": ("boolean", "bool"), "ms": ("timestamptz", "epoch_ms"),
    "secs": ("timestamptz", "epoch_s"), "ts": ("timestamp", "ts_text"),
    "tz": ("timestamptz", "tstz_text"), "d": ("date", "date_text"),
    "tm": ("time", "time_text"), "u": ("uuid", "uuid"),
}


def typed_rows() -> list[tuple[Any, ...]]:
    return [(k, k * 1000003 - 2**40, k / 10, k + 0.25, f"text {k} é",
             json.dumps({"k": k, "nested": {"list": [k, k + 1], "s": "x"}}),
             bytes([k, 0, 255]), k % 2, 1_700_000_000_000 + k * 1001, 1_700_000_000 + k,
             f"2024-01-{k % 28 + 1:02d} 03:04:05.{k:06d}",
             f"2024-02-{k % 28 + 1:02d} 10:00:00+02:00", f"2024-03-{k % 28 + 1:02d}",
             f"03:04:{k % 60:02d}", str(uuid.UUID(int=k)))
            for k in range(1, 41)]


def fhex(x: float) -> str:
    return struct.pack(">d", x).hex()


# (case id, column, PostgreSQL SET clause for row 7, params, (SQLite value, PostgreSQL value))
PG_CHANGES: list[tuple[str, str, str, tuple[Any, ...], tuple[str | None, str | None]]] = [
    ("bigint", "i", "i = i + 1", (), ("-1099504627755", "-1099504627754")),
    ("double-last-bit", "f", "f = %s", (math.nextafter(0.7, 1.0),),
     (fhex(0.7), fhex(math.nextafter(0.7, 1.0)))),
    ("double-to-null", "f", "f = NULL", (), (fhex(0.7), None)),
    ("numeric", "n", "n = n + 0.01", (), ("7.25", "7.26")),
    ("text-one-char", "s", "s = 'text 7 e'", (), ("text 7 é", "text 7 e")),
    ("text-trailing-space", "s", "s = s || ' '", (), ("text 7 é", "text 7 é ")),
    ("text-nfd", "s", "s = %s", ("text 7 e\u0301",), ("text 7 é", "text 7 e\u0301")),
    ("text-to-null", "s", "s = NULL", (), ("text 7 é", None)),
    ("jsonb-nested", "j", "j = jsonb_set(j, '{nested,list,1}', '9')", (),
     ('{"k": 7, "nested": {"s": "x", "list": [7, 8]}}',
      '{"k": 7, "nested": {"s": "x", "list": [7, 9]}}')),
    ("jsonb-number-type", "j", "j = jsonb_set(j, '{k}', '\"7\"')", (),
     ('{"k": 7, "nested": {"s": "x", "list": [7, 8]}}',
      '{"k": "7", "nested": {"s": "x", "list": [7, 8]}}')),
    ("jsonb-sql-null-vs-json-null", "j", "j = 'null'::jsonb", (),
     ('{"k": 7, "nested": {"s": "x", "list": [7, 8]}}', "null")),
    ("bytea-one-byte", "b", "b = set_byte(b, 1, 1)", (), ("0700ff", "0701ff")),
    ("bytea-extra-zero", "b", "b = b || '\\x00'::bytea", (), ("0700ff", "0700ff00")),
    ("boolean", "ok", "ok = NOT ok", (), ("t", "f")),
    # Epoch sources compare at the target's precision (microseconds), from the exact integer.
    ("timestamptz-epoch-ms-1ms", "ms", "ms = ms + interval '1 millisecond'", (),
     ("1700000007007000", "1700000007008000")),
    ("timestamptz-epoch-ms-1us", "ms", "ms = ms + interval '1 microsecond'", (),
     ("1700000007007000", "1700000007007001")),
    ("timestamptz-epoch-ms-500us", "ms", "ms = ms + interval '500 microseconds'", (),
     ("1700000007007000", "1700000007007500")),
    ("timestamptz-epoch-s-1us", "secs", "secs = secs - interval '1 microsecond'", (),
     ("1700000007000000", "1700000006999999")),
    ("timestamp-text-1us", "ts", "ts = ts + interval '1 microsecond'", (),
     ("2024-01-08 03:04:05.000007", "2024-01-08 03:04:05.000008")),
    ("timestamptz-text-1s", "tz", "tz = tz + interval '1 second'", (),
     ("2024-02-08 08:00:00.000000", "2024-02-08 08:00:01.000000")),
    ("date-1day", "d", "d = d + 1", (), ("2024-03-08", "2024-03-09")),
    ("time-1s", "tm", "tm = tm + interval '1 second'", (),
     ("03:04:07.000000", "03:04:08.000000")),
    ("uuid", "u", "u = '00000000-0000-0000-0000-000000000017'", (),
     ("00000000-0000-0000-0000-000000000007", "00000000-0000-0000-0000-000000000017")),
]


@pytest.fixture(scope="module")
def typed_module(pg_server: PostgresServer,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedCopy]:
    """One migrated copy of ``typed`` for the whole module (a database costs ~1 s)."""
    with migrated_module(pg_server, tmp_path_factory.mktemp("typed"), "typed", TYPED_DDL,
                         {"typed": typed_rows()}) as copy:
        assert copy.result is not None
        chosen = {c.name: (c.pg_type, c.decision.conversion)
                  for c in copy.result.plan.table("typed").columns}
        assert chosen == TYPED_PG
        yield copy


@pytest.fixture
def typed_copy(typed_module: MigratedCopy, tmp_path: Path) -> Iterator[MigratedCopy]:
    """The module's copy with a private SQLite file; PostgreSQL restored after the test."""
    yield typed_module.for_test(tmp_path)
    typed_module.restore()


@pytest.mark.parametrize(("column", "set_sql", "params", "values"),
                         [c[1:] for c in PG_CHANGES], ids=[c[0] for c in PG_CHANGES])
def test_changed_cell_in_postgres_is_found_and_located(
        typed_copy: MigratedCopy, column: str, set_sql: str,
        params: tuple[Any, ...], values: tuple[str | None, str | None]) -> None:
    db, dsn, state = typed_copy.db, typed_copy.dsn, typed_copy.state
    pg_exec(dsn, f"UPDATE typed SET {set_sql} WHERE id = 7", params)
    result = run_verify(db, dsn, state)
    d = only_diff(result)
    assert d.table == "typed"
    assert d.kind == "changed"
    assert d.key == {"id": "7"}
    assert d.columns == {column: values}
    (verdict,) = result.tables
    assert verdict.differing_segments == 1
    assert verdict.sqlite_rows == verdict.postgres_rows == 40
    as_json = result.to_dict()["tables"][0]["differences"]
    assert as_json == [{"table": "typed", "key": {"id": "7"}, "kind": "changed",
                        "columns": {column: {"sqlite": values[0], "postgres": values[1]}}}]


SQLITE_CHANGES = [
    ("bigint", "i = i + 1", "i", ("-1099504627754", "-1099504627755")),
    ("real-last-bit", f"f = {math.nextafter(0.7, 0.0)!r}", "f",
     (fhex(math.nextafter(0.7, 0.0)), fhex(0.7))),
    ("epoch-ms-1ms", "ms = ms - 1", "ms", ("1700000007006000", "1700000007007000")),
    ("json-nested", "j = json_set(j, '$.nested.s', 'y')", "j",
     ('{"k": 7, "nested": {"s": "y", "list": [7, 8]}}',
      '{"k": 7, "nested": {"s": "x", "list": [7, 8]}}')),
    ("json-reordered-is-equal", "j = '{\"nested\": {\"s\": \"x\", \"list\": [7, 8]}, \"k\": 7}'",
     "j", None),
    ("json-duplicate-key-last-wins", "j = '{\"k\": 1, \"nested\": {\"s\": \"x\", "
     "\"list\": [7, 8]}, \"k\": 7}'", "j", None),
    ("json-number-spelling-is-equal", "j = '{\"k\": 7E0, \"nested\": {\"s\": \"x\", "
     "\"list\": [7, 8]}}'", "j", None),
    ("blob-one-byte", "b = x'0700fe'", "b", ("0700fe", "0700ff")),
    ("bool-word-is-equal", "ok = 'true'", "ok", None),
    ("timestamp-text-1us", "ts = '2024-01-08 03:04:05.000006'", "ts",
     ("2024-01-08 03:04:05.000006", "2024-01-08 03:04:05.000007")),
    ("timestamptz-same-instant-is-equal", "tz = '2024-02-08T09:00:00+01:00'", "tz", None),
    ("uuid-braces-is-equal", "u = '{00000000-0000-0000-0000-000000000007}'", "u", None),
    ("uuid-changed", "u = '00000000-0000-0000-0000-00000000000A'", "u",
     ("00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-000000000007")),
]


@pytest.mark.parametrize(("set_sql", "column", "values"), [c[1:] for c in SQLITE_CHANGES],
                         ids=[c[0] for c in SQLITE_CHANGES])
def test_changed_cell_in_sqlite_is_found_or_equal_when_it_means_the_same(
        typed_copy: MigratedCopy, set_sql: str, column: str,
        values: tuple[str, str] | None) -> None:
    sqlite_exec(typed_copy.db, f"UPDATE typed SET {set_sql} WHERE id = 7")
    result = run_verify(typed_copy.db, typed_copy.dsn, typed_copy.state)
    if values is None:  # another spelling of the same value: no false alarm
        assert_identical(result)
        return
    d = only_diff(result)
    assert (d.kind, d.key, d.columns) == ("changed", {"id": "7"}, {column: values})


# ------------------------------------------------------------------ identical copies

ODD_DDL = """
CREATE TABLE odd (
  id INTEGER PRIMARY KEY,
  r REAL,
  t TEXT,
  b BLOB,
  j JSON,
  anything,
  big INTEGER,
  dec DECIMAL(30, 10)
);
CREATE TABLE odd_keyless (a, b TEXT, c REAL);
"""

ODD_REALS = [0.0, 0.1, -2.5, 1e-300, 5e-324, 1.7976931348623157e308, float("inf"),
             float("-inf"), 2.0**53, 1 / 3, None, 123456789.123456789]
ODD_TEXTS = ["", "NULL", "null", " ", "a ", " a", "é", "e\u0301", "日本語", "😀", "tab\there",
             "line\nbreak", "quote'\"", "back\\slash", "\u00a0", "\x7f", "N", "V1:x", None]
ODD_BLOBS = [b"", b"\x00", b"\x00\x00", b"\xff" * 3, bytes(range(256)), b"NULL", None]
ODD_JSON = ['{"a": 1, "a": 2}', '{"bb": 1, "a": {"y": [1, 2.50, 1e2, -0, 1E-3]}}', "[]",
            "{}", '"\\u00e9\\ud83d\\ude00"', "null", "true", "12345678901234567890123",
            '{"ccc": 1, "b": 2, "é": 3, "z": 4}', '[[[]], {"x": null}]', "0.5", None]
ODD_ANY = [1, 1.0, "1", 1.5, "1.50", "", "NULL", None, -0, 2**63 - 1, "x", "1e3"]
ODD_BIG = [2**63 - 1, -(2**63), 0, -1, 2**53 + 1, None]
ODD_DEC = [1, 1.5, 0.1, -7, 10**18, None]


def odd_rows() -> list[tuple[Any, ...]]:
    rows = []
    for k in range(120):
        rows.append((k + 1, ODD_REALS[k % len(ODD_REALS)], ODD_TEXTS[k % len(ODD_TEXTS)],
                     ODD_BLOBS[k % len(ODD_BLOBS)], ODD_JSON[k % len(ODD_JSON)],
                     ODD_ANY[k % len(ODD_ANY)], ODD_BIG[k % len(ODD_BIG)],
                     ODD_DEC[k % len(ODD_DEC)]))
    return rows


def keyless_rows() -> list[tuple[Any, ...]]:
    base = [(1, "x", 0.5), (1, "x", 0.5), ("1", "", None), (None, None, None), (None, None, None),
            (2.5, "NULL", -0.25), ("é", "日本", 1e300)]
    return base * 3


def test_identical_odd_values_pass(tmp_path: Path, pg_dsn: Dsn) -> None:
    db = make_db(tmp_path / "odd.db", ODD_DDL, {"odd": odd_rows(), "odd_keyless": keyless_rows()})
    state = tmp_path / "state"
    migrate_into(db, pg_dsn, state)
    result = run_verify(db, pg_dsn, state)
    assert_identical(result)
    modes = {t.table: (t.mode, t.sqlite_rows, t.postgres_rows) for t in result.tables}
    assert modes == {"odd": ("segments", 120, 120), "odd_keyless": ("multiset", 21, 21)}
    assert run_verify(db, pg_dsn, state).identical  # a second run: same verdict


def test_seeded_hyperpage_identical_then_planted_cell_and_missing_row(
        tmp_path: Path, pg_dsn: Dsn) -> None:
    db = tmp_path / "hyperpage.db"
    seed(db, 3000)
    state = tmp_path / "state"
    migrate_into(db, pg_dsn, state)
    result = run_verify(db, pg_dsn, state)
    assert_identical(result)
    assert {t.table for t in result.tables} == set(TABLES)
    assert all(t.sqlite_rows == t.postgres_rows for t in result.tables)
    assert sum(t.sqlite_rows for t in result.tables) > 3000

    job_id, = pg_exec(pg_dsn, "SELECT id FROM jobs ORDER BY id "
                                      "COLLATE \"C\" OFFSET 1234 LIMIT 1")[0]
    (hist_id,) = pg_exec(pg_dsn, "SELECT id FROM job_history ORDER BY id OFFSET 777 LIMIT 1")[0]
    pg_exec(pg_dsn, "UPDATE jobs SET updated_at = updated_at + 1 "
                    "WHERE id = %s", (job_id,))
    pg_exec(pg_dsn, "DELETE FROM job_history WHERE id = %s", (hist_id,))
    result = run_verify(db, pg_dsn, state)
    assert not result.identical
    by_table = {t.table: t.diffs for t in result.tables if t.diffs}
    assert set(by_table) == {"jobs", "job_history"}
    (changed,) = by_table["jobs"]
    assert changed.kind == "changed"
    assert changed.key == {"id": job_id}
    assert list(changed.columns) == ["updated_at"]
    before, after = changed.columns["updated_at"]
    assert before is not None and after is not None
    assert int(after) - int(before) == 1
    (missing,) = by_table["job_history"]
    assert (missing.kind, missing.key) == ("missing_in_postgres", {"id": str(hist_id)})
    assert len(all_diffs(result)) == 2


SPELLINGS_DDL = """
CREATE TABLE spellings (
  id INTEGER PRIMARY KEY,
  ts DATETIME,
  tz TIMESTAMPTZ,
  d DATE,
  tm TIME,
  ok BOOLEAN,
  u UUID,
  j JSON
);
"""

SPELLINGS: list[tuple[Any, ...]] = [
    (1, "2024-01-02T03:04:05", "2024-01-02 03:04:05+05:30", "2024-01-02", "03:04", 0,
     "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "1.50"),
    (2, "2024-01-02 03:04", "2024-01-02T03:04:05Z", "0999-12-31", "03:04:05.5", 1,
     "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12}", "1e2"),
    (3, "0999-01-02 00:00:00", "2024-01-02 03:04:05.123-08", "2024-02-29", "23:59:59.999999",
     "TRUE", "a0eebc999c0b4ef8bb6d6bb9bd380a13", '{"b": 1, "a": [1.0]}'),
    (4, "2024-02-29 23:59:59.999999", "2024-12-31 23:30:00-01:00", None, "00:00:00", "off",
     uuid.UUID(int=5).bytes, 7),
    (5, "2024-01-02 03:04:05.5", "2024-01-02 03:04:05", "2024-01-03", None, " yes ",
     "urn:uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a14", 1.5),
    (6, None, None, "2024-01-04", "12:00", None, None, None),
]


def test_identical_temporal_boolean_uuid_and_json_spellings(tmp_path: Path,
                                                            pg_dsn: Dsn) -> None:
    """Every spelling migrate accepts compares equal to the value PostgreSQL stored."""
    db = make_db(tmp_path / "sp.db", SPELLINGS_DDL, {"spellings": SPELLINGS})
    state = tmp_path / "state"
    result = migrate_into(db, pg_dsn, state)
    convs = {c.name: c.decision.conversion for c in result.plan.table("spellings").columns}
    assert convs == {"id": "int", "ts": "ts_text", "tz": "tstz_text", "d": "date_text",
                     "tm": "time_text", "ok": "bool", "u": "uuid", "j": "json"}
    assert_identical(run_verify(db, pg_dsn, state))
    pg_exec(pg_dsn, "UPDATE spellings SET tz = tz - interval '1 microsecond' WHERE id = 3")
    d = only_diff(run_verify(db, pg_dsn, state))
    assert (d.key, d.columns) == ({"id": "3"}, {"tz": ("2024-01-02 11:04:05.123000",
                                                      "2024-01-02 11:04:05.122999")})


@pytest.mark.parametrize(("ddl", "value"), [
    ("ts DATETIME", "2024-01-02 03:04:05.1234567"),
    ("ts DATETIME", "2024-01-02 03:04:05.9999995"),
    ("ts TIMESTAMPTZ", "2024-01-02T03:04:05.1234567Z"),
    ("ts TIME", "03:04:05.1234567"),
], ids=["timestamp", "timestamp-carry", "timestamptz", "time"])
def test_seven_fraction_digits_no_false_alarm(tmp_path: Path, pg_dsn: Dsn, ddl: str,
                                              value: str) -> None:
    db = make_db(tmp_path / "f.db", f"CREATE TABLE f (id INTEGER PRIMARY KEY, {ddl});",
                 {"f": [(1, value)]})
    state = tmp_path / "state"
    migrate_into(db, pg_dsn, state)
    assert_identical(run_verify(db, pg_dsn, state))
