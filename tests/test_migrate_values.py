"""migrate: odd values are either carried exactly (read back from PostgreSQL and compared) or
rejected (row not loaded, reported in rejects.jsonl and pgshift.rejects with its key).

One source holds every case; it is migrated twice into one database: once plainly (exit 3)
and once with --drop --allow-rejects (exit 0). Bug reproductions migrate small sources into
their own schemas of a second database.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgshift.dsn import Dsn, connect
from pgshift.errors import ExitCode
from pgshift.migrate import MigrateResult
from sqlite_helpers import bits, make_db, note_messages, pg_rows, read_jsonl, run_migrate

pytestmark = pytest.mark.data

UTC = dt.UTC

AWKWARD_TEXTS = [
    'double "quotes" and \'single\'',
    "commas, in, text",
    "tab\there",
    "line\nbreak",
    "carriage\rreturn",
    "crlf\r\nline",
    "back\\slash \\N \\\\ end\\",
    "\\.",  # COPY's end-of-data marker when alone on a line
    "\\.\n",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦",
    "combining e\u0301 a\u0308 and precomposed \u00e9",
    "RTL שלום עולם and مرحبا بالعالم \u200f",
    "bom \ufeff zero-width\u200b nbsp\u00a0",
    "max BMP \uffff and astral \U0010ffff",
    "control \x01\x07\x1b\x7f chars",
    "  leading and trailing spaces  ",
    "",
    "NULL",
    "null",
    "\\N",
    ",",
    '"',
    "a" * 10_000,
]

REALS = [0.1, 1 / 3, 5e-324, 1.7976931348623157e308, 1e100 * 3, -0.0, 2.2250738585072014e-308,
         -1.5e-310, 123456789.12345679, 2.0**53, -(2.0**63), 1e22, 1e-7, math.pi, 1e16,
         float("inf"), float("-inf")]

INTS = [2**63 - 1, -(2**63), 0, -1, 2**53 + 1, 2**31, -(2**31) - 1]

BLOBS = [b"", bytes(range(256)), b"\x00", b"\x00\x00\xff", "é".encode(), b"\\x41", None]


def _source(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE t_nul (id INTEGER PRIMARY KEY, s TEXT);
        CREATE TABLE t_utf8 (id INTEGER PRIMARY KEY, s TEXT);
        CREATE TABLE t_int (id INTEGER PRIMARY KEY, n INTEGER);
        CREATE TABLE t_json (id INTEGER PRIMARY KEY, j JSON);
        CREATE TABLE t_dt_bad (id INTEGER PRIMARY KEY, d DATETIME);
        CREATE TABLE t_ts (id INTEGER PRIMARY KEY, d DATETIME);
        CREATE TABLE t_tz (id INTEGER PRIMARY KEY, d DATETIME);
        CREATE TABLE t_epoch (id INTEGER PRIMARY KEY, d DATETIME);
        CREATE TABLE t_real (id INTEGER PRIMARY KEY, x REAL);
        CREATE TABLE t_big (id INTEGER PRIMARY KEY, n INTEGER);
        CREATE TABLE t_bool (id INTEGER PRIMARY KEY, b BOOLEAN);
        CREATE TABLE t_blob (id INTEGER PRIMARY KEY, b BLOB);
        CREATE TABLE t_text (id INTEGER PRIMARY KEY, s TEXT);
        CREATE TABLE t_pk (k TEXT PRIMARY KEY, v TEXT);
    """)
    ins = con.executemany
    ins("INSERT INTO t_nul VALUES (?, ?)", [(1, "ok"), (2, "a\x00b"), (3, "fine")])
    con.execute("INSERT INTO t_utf8 VALUES (1, 'good'), (3, 'also good')")
    con.execute("INSERT INTO t_utf8 VALUES (2, CAST(? AS TEXT))", (b"\xffab",))
    # 250 rows so the bad one (id 150) sits in the middle chunk of three (batch_size 100)
    ins("INSERT INTO t_int VALUES (?, ?)", [(i, "abc" if i == 150 else i * 3 - 400)
                                            for i in range(1, 251)])
    ins("INSERT INTO t_json VALUES (?, ?)", [
        (1, '{"b": 1, "a": 2, "a": 3}'), (2, "{bad"), (3, '[1, {"z": null}, "x"]'),
        (4, '"just a string"'), (5, "12.5"), (6, '{"nested": {"k": [true, false]}}')])
    ins("INSERT INTO t_dt_bad VALUES (?, ?)", [
        (1, "2024-01-02 03:04:05"), (2, "2024-13-45 10:00:00"), (3, "garbage"),
        (4, "2024-02-30 00:00:00"), (5, "2024-06-07 08:09:10")])
    ins("INSERT INTO t_ts VALUES (?, ?)", [
        (1, "2024-01-02 03:04:05"), (2, "2024-01-02T03:04:05.123"), (3, None),
        (4, "1999-12-31 23:59:59.999999"), (5, "2024-02-29 00:00")])
    ins("INSERT INTO t_tz VALUES (?, ?)", [
        (1, "2024-01-02T03:04:05+02:00"), (2, "2024-01-02 03:04:05Z"),
        (3, "2024-01-02T03:04:05.5-05:30"), (4, "2024-01-02 03:04:05+0530"),
        (5, "2024-01-02 03:04:05")])
    ins("INSERT INTO t_epoch VALUES (?, ?)", [
        (1, 1704067200123), (2, 1704067200000), (3, 1700000000999), (4, None)])
    ins("INSERT INTO t_real VALUES (?, ?)", list(enumerate(REALS, 1)))
    ins("INSERT INTO t_big VALUES (?, ?)", list(enumerate(INTS, 1)))
    ins("INSERT INTO t_bool VALUES (?, ?)", [(1, 0), (2, 1), (3, "true"), (4, "f"), (5, 2),
                                             (6, None), (7, "FALSE"), (8, "yes")])
    ins("INSERT INTO t_blob VALUES (?, ?)", list(enumerate(BLOBS, 1)))
    ins("INSERT INTO t_text VALUES (?, ?)", list(enumerate([*AWKWARD_TEXTS, None], 1)))
    ins("INSERT INTO t_pk VALUES (?, ?)", [(None, "null key"), ("k", "b"), ("", "empty key")])
    con.commit()
    con.close()
    return path


# (table, key) -> (column, raw_value, a piece of the reason)
EXPECTED_REJECTS: dict[tuple[str, str], tuple[str, Any, str]] = {
    ("t_nul", '{"id": 2}'): ("s", "a\\0b", "NUL"),
    ("t_utf8", '{"id": 2}'): ("s", "\\xff6162", "UTF-8"),
    ("t_int", '{"id": 150}'): ("n", "abc", "integer column"),
    ("t_json", '{"id": 2}'): ("j", "{bad", "invalid JSON"),
    ("t_dt_bad", '{"id": 2}'): ("d", "2024-13-45 10:00:00", "month"),
    ("t_dt_bad", '{"id": 3}'): ("d", "garbage", "not a date/time"),
    ("t_dt_bad", '{"id": 4}'): ("d", "2024-02-30 00:00:00", "day is out of range"),
    ("t_bool", '{"id": 5}'): ("b", "2", "not a boolean"),
    ("t_pk", '{"k": null}'): ("k", None, "NULL in a primary-key column"),
}


@dataclass
class Loaded:
    strict: MigrateResult  # without --allow-rejects
    lenient: MigrateResult  # --drop --allow-rejects, the data the tests read
    db: Path
    conn: psycopg.Connection


@pytest.fixture(scope="module")
def loaded(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    tmp = tmp_path_factory.mktemp("values")
    db = _source(tmp / "odd.db")
    name = f"t_values_{uuid.uuid4().hex[:12]}"
    dsn = pg_server.create_database(name)
    try:
        strict = run_migrate(db, dsn, tmp / "state1", batch_size=100)
        lenient = run_migrate(db, dsn, tmp / "state2", batch_size=100, drop=True,
                              allow_rejects=True)
        conn = connect(dsn, autocommit=True, application_name="pgshift-tests")
        try:
            yield Loaded(strict, lenient, db, conn)
        finally:
            conn.close()
    finally:
        pg_server.drop_database(name)


def _col(conn: psycopg.Connection, sql: str) -> list[Any]:
    return [r[0] for r in conn.execute(sql)]


def _data_type(conn: psycopg.Connection, table: str, column: str) -> str:
    return conn.execute("SELECT data_type FROM information_schema.columns WHERE table_schema = "
                        "'public' AND table_name = %s AND column_name = %s",
                        (table, column)).fetchone()[0]


# ------------------------------------------------------------------------- rejects


def test_exit_code_is_3_with_rejects_and_0_with_allow_rejects(loaded: Loaded) -> None:
    assert loaded.strict.exit_code == ExitCode.REJECTS == 3
    assert loaded.lenient.exit_code == ExitCode.OK
    assert loaded.strict.rejects == loaded.lenient.rejects == len(EXPECTED_REJECTS)
    per_table = {t.name: t.rejects for t in loaded.strict.tables if t.rejects}
    assert per_table == {"t_nul": 1, "t_utf8": 1, "t_int": 1, "t_json": 1, "t_dt_bad": 3,
                         "t_bool": 1, "t_pk": 1}


@pytest.mark.parametrize("which", ["strict", "lenient"])
def test_rejects_file_and_table_list_every_rejected_value(loaded: Loaded, which: str) -> None:
    result: MigrateResult = getattr(loaded, which)
    assert result.rejects_file is not None and result.rejects_file.name == "rejects.jsonl"
    lines = read_jsonl(result.rejects_file)
    got = {(r["table"], json.dumps(r["key"], sort_keys=True)): r for r in lines}
    assert len(got) == len(lines) == len(EXPECTED_REJECTS)
    assert set(got) == set(EXPECTED_REJECTS)
    for where, (column, raw, reason) in EXPECTED_REJECTS.items():
        line = got[where]
        assert line["column"] == column, where
        assert line["raw_value"] == raw, where
        assert reason in line["reason"], (where, line["reason"])
    table = pg_rows(loaded.conn, "SELECT table_name, key, column_name, raw_value, reason FROM "
                                 "pgshift.rejects WHERE run_id = %s ORDER BY id", (result.run_id,))
    assert [(t, k, c, v, why) for t, k, c, v, why in table] == [
        (r["table"], r["key"], r["column"], r["raw_value"], r["reason"]) for r in lines]


def test_rejected_rows_are_not_loaded_and_their_neighbours_are(loaded: Loaded) -> None:
    c = loaded.conn
    assert pg_rows(c, "SELECT id, s FROM t_nul ORDER BY id") == [(1, "ok"), (3, "fine")]
    assert pg_rows(c, "SELECT id, s FROM t_utf8 ORDER BY id") == [(1, "good"), (3, "also good")]
    assert pg_rows(c, "SELECT id, n FROM t_int ORDER BY id") == [
        (i, i * 3 - 400) for i in range(1, 251) if i != 150]
    assert _col(c, "SELECT id FROM t_dt_bad ORDER BY id") == [1, 5]
    assert pg_rows(c, "SELECT k, v FROM t_pk ORDER BY k") == [("", "empty key"), ("k", "b")]


def test_text_in_integer_column_is_a_plan_anomaly(loaded: Loaded) -> None:
    anomalies = [m for obj, m in note_messages(loaded.strict, "anomaly") if obj == "t_int.n"]
    assert anomalies == ["1 text value(s) cannot become bigint: they will be rejects"]
    assert _data_type(loaded.conn, "t_int", "n") == "bigint"


# ------------------------------------------------------------------------- exact carries


def test_json_carried_as_jsonb(loaded: Loaded) -> None:
    assert _data_type(loaded.conn, "t_json", "j") == "jsonb"
    assert pg_rows(loaded.conn, "SELECT id, j::text FROM t_json ORDER BY id") == [
        (1, '{"a": 3, "b": 1}'),  # jsonb: keys sorted, the last duplicate wins
        (3, '[1, {"z": null}, "x"]'),
        (4, '"just a string"'),
        (5, "12.5"),
        (6, '{"nested": {"k": [true, false]}}'),
    ]


def test_sqlite_datetime_text_shapes_become_timestamp_exactly(loaded: Loaded) -> None:
    assert _data_type(loaded.conn, "t_ts", "d") == "timestamp without time zone"
    assert pg_rows(loaded.conn, "SELECT id, d FROM t_ts ORDER BY id") == [
        (1, dt.datetime(2024, 1, 2, 3, 4, 5)),
        (2, dt.datetime(2024, 1, 2, 3, 4, 5, 123000)),
        (3, None),
        (4, dt.datetime(1999, 12, 31, 23, 59, 59, 999999)),
        (5, dt.datetime(2024, 2, 29, 0, 0)),
    ]


def test_iso_text_with_offsets_becomes_timestamptz_exactly(loaded: Loaded) -> None:
    assert _data_type(loaded.conn, "t_tz", "d") == "timestamp with time zone"
    assert pg_rows(loaded.conn, "SELECT id, d FROM t_tz ORDER BY id") == [
        (1, dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)),
        (2, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (3, dt.datetime(2024, 1, 2, 8, 34, 5, 500000, tzinfo=UTC)),
        (4, dt.datetime(2024, 1, 1, 21, 34, 5, tzinfo=UTC)),
        (5, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),  # no offset: read as UTC
    ]


def test_epoch_ms_integers_become_timestamptz_with_milliseconds(loaded: Loaded) -> None:
    assert _data_type(loaded.conn, "t_epoch", "d") == "timestamp with time zone"
    assert pg_rows(loaded.conn, "SELECT id, d FROM t_epoch ORDER BY id") == [
        (1, dt.datetime(2024, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)),
        (2, dt.datetime(2024, 1, 1, tzinfo=UTC)),
        (3, dt.datetime(2023, 11, 14, 22, 13, 20, 999000, tzinfo=UTC)),
        (4, None),
    ]
    with loaded.conn.transaction(force_rollback=True):
        loaded.conn.execute("SET LOCAL timezone = 'UTC'")
        assert _col(loaded.conn, "SELECT d::text FROM t_epoch WHERE id = 1") == [
            "2024-01-01 00:00:00.123+00"]
    notes = [m for obj, m in note_messages(loaded.strict) if obj == "t_epoch.d"]
    assert any("epoch_ms" in m for m in notes), notes
    [col] = [c for c in loaded.strict.plan.table("t_epoch").columns if c.name == "d"]
    assert col.decision.conversion == "epoch_ms"


def test_reals_round_trip_bit_exactly_including_infinities(loaded: Loaded) -> None:
    source = dict(sqlite3.connect(loaded.db).execute("SELECT id, x FROM t_real").fetchall())
    # SQLite's REAL affinity stores -0.0 as the integer 0: the source itself reads 0.0
    assert bits(source[REALS.index(-0.0) + 1]) == bits(0.0)
    target = dict(pg_rows(loaded.conn, "SELECT id, x FROM t_real"))
    assert set(target) == set(source)
    for i, value in source.items():
        assert bits(target[i]) == bits(value), (i, value, target[i])
    assert target[REALS.index(1e100 * 3) + 1] == 3.0000000000000002e100
    assert target[len(REALS) - 1] == math.inf and target[len(REALS)] == -math.inf


def test_64_bit_integers_exact(loaded: Loaded) -> None:
    assert _data_type(loaded.conn, "t_big", "n") == "bigint"
    assert pg_rows(loaded.conn, "SELECT id, n FROM t_big ORDER BY id") == list(
        enumerate(INTS, 1))


def test_booleans_from_integers_and_words(loaded: Loaded) -> None:
    assert _data_type(loaded.conn, "t_bool", "b") == "boolean"
    assert pg_rows(loaded.conn, "SELECT id, b FROM t_bool ORDER BY id") == [
        (1, False), (2, True), (3, True), (4, False), (6, None), (7, False), (8, True)]


def test_blobs_exact_including_empty_and_every_byte(loaded: Loaded) -> None:
    assert _data_type(loaded.conn, "t_blob", "b") == "bytea"
    got = pg_rows(loaded.conn, "SELECT id, b FROM t_blob ORDER BY id")
    assert got == list(enumerate(BLOBS, 1))
    assert got[0][1] == b"" and got[-1][1] is None  # empty blob and NULL stay distinct


def test_awkward_text_exact_and_null_empty_and_null_word_distinct(loaded: Loaded) -> None:
    got = pg_rows(loaded.conn, "SELECT id, s FROM t_text ORDER BY id")
    assert got == list(enumerate([*AWKWARD_TEXTS, None], 1))
    kinds = pg_rows(loaded.conn, "SELECT s IS NULL, s = '', s = 'NULL' FROM t_text WHERE id IN "
                                 "(%s, %s, %s) ORDER BY id",
                    (AWKWARD_TEXTS.index("") + 1, AWKWARD_TEXTS.index("NULL") + 1,
                     len(AWKWARD_TEXTS) + 1))
    assert kinds == [(False, True, False), (False, False, True), (True, None, None)]
    lengths = dict(pg_rows(loaded.conn, "SELECT id, length(s) FROM t_text"))
    assert lengths[AWKWARD_TEXTS.index("a" * 10_000) + 1] == 10_000


# ------------------------------------------------------------------------- bug reproductions


@pytest.fixture(scope="module")
def scratch(pg_server: Any) -> Iterator[Dsn]:
    """A database shared by the small reproductions below; each uses its own schema."""
    name = f"t_values_bugs_{uuid.uuid4().hex[:12]}"
    dsn = pg_server.create_database(name)
    try:
        yield dsn
    finally:
        pg_server.drop_database(name)


def _migrate_small(tmp_path: Path, dsn: Dsn, schema: str, script: str,
                   rows: dict[str, list[tuple[Any, ...]]]) -> tuple[MigrateResult,
                                                                    psycopg.Connection]:
    db = make_db(tmp_path / f"{schema}.db", script, rows)
    result = run_migrate(db, dsn, tmp_path / "state", schema=schema, allow_rejects=True)
    return result, connect(dsn, autocommit=True, application_name="pgshift-tests")


def test_date_only_text_in_datetime_column_keeps_timestamp(tmp_path: Path, scratch: Dsn) -> None:
    result, conn = _migrate_small(
        tmp_path, scratch, "date_only", "CREATE TABLE t (id INTEGER PRIMARY KEY, d DATETIME);",
        {"t": [(1, "2024-01-02 03:04:05"), (2, "2024-01-02T03:04:05.123"), (3, "2024-01-02")]})
    with conn:
        assert result.rejects == 0
        assert pg_rows(conn, "SELECT id, d FROM date_only.t ORDER BY id") == [
            (1, dt.datetime(2024, 1, 2, 3, 4, 5)), (2, dt.datetime(2024, 1, 2, 3, 4, 5, 123000)),
            (3, dt.datetime(2024, 1, 2))]


def test_hour_24_gets_the_same_verdict_whatever_its_neighbours(tmp_path: Path,
                                                               scratch: Dsn) -> None:
    script = ("CREATE TABLE clean (id INTEGER PRIMARY KEY, d DATETIME);"
              "CREATE TABLE mixed (id INTEGER PRIMARY KEY, d DATETIME);")
    _, conn = _migrate_small(tmp_path, scratch, "hour24", script, {
        "clean": [(1, "2024-01-02 24:00:00"), (2, "2024-01-02 03:04:05")],
        "mixed": [(1, "2024-01-02 24:00:00"), (2, "2024-02-30 00:00:00")]})
    with conn:
        clean = pg_rows(conn, "SELECT d FROM hour24.clean WHERE id = 1")
        mixed = pg_rows(conn, "SELECT d FROM hour24.mixed WHERE id = 1")
        assert clean == mixed


def test_one_digit_offset_is_not_silently_dropped(tmp_path: Path, scratch: Dsn) -> None:
    result, conn = _migrate_small(
        tmp_path, scratch, "offset1", "CREATE TABLE t (id INTEGER PRIMARY KEY, d DATETIME);",
        {"t": [(1, "2024-01-02 03:04:05.5-5"), (2, "2024-01-02 03:04:05")]})
    with conn:
        loaded = pg_rows(conn, "SELECT d::text FROM offset1.t WHERE id = 1")
        assert loaded != [("2024-01-02 03:04:05.5",)]  # the offset must not just vanish
        assert result.rejects == 1


def test_negative_zero_in_untyped_column_keeps_its_sign(tmp_path: Path, scratch: Dsn) -> None:
    _, conn = _migrate_small(
        tmp_path, scratch, "negzero", "CREATE TABLE t (id INTEGER PRIMARY KEY, x);",
        {"t": [(1, -0.0), (2, 1.5)]})
    with conn:
        assert pg_rows(conn, "SELECT data_type FROM information_schema.columns WHERE "
                             "table_schema = 'negzero' AND column_name = 'x'") == [
            ("double precision",)]
        [(x,)] = pg_rows(conn, "SELECT x FROM negzero.t WHERE id = 1")
        assert bits(x) == bits(-0.0)
