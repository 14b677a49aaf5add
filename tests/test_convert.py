"""The two forms of every conversion agree (pgshift.copy.convert), checked with Hypothesis.

Fast form: a SQLite printf expression renders the CSV field, with a *suspect* predicate that
sends values it cannot render to the slow form. Slow form: Python's ``convert``. Wherever the
predicate is false the fast output must be what the slow form produces (byte for byte where
both spell values the same way, value for value where the spelling legitimately differs:
shortest vs 17-digit floats, quoted vs bare integers in text, dates without a time part). Then
PostgreSQL itself: values the fast form lets through and the slow form rejects must be refused
by PostgreSQL (that refusal is what sends a chunk to the slow form). Last, a round trip of
random rows through a real migration.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from pgshift.copy.convert import (
    EPOCH_MAX_S,
    FAST_FLOAT_MAX,
    FAST_FLOAT_MIN,
    SLOW,
    Reject,
    convert,
    fast_field,
    fast_sql,
)
from pgshift.dsn import Dsn, connect
from pgshift.errors import ExitCode
from sqlite_helpers import bits, make_db, pg_rows, run_migrate, sqlite_rows

I64 = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=False)  # SQLite stores NaN as NULL
# Text SQLite can hold as a Python str. NUL is left out here: printf stops at a NUL, and the
# pipeline sends NUL-bearing text to the slow form itself (tests/test_migrate_values.py).
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))
BLOB = st.binary()
ANY_CLASS = st.none() | I64 | FLOATS | st.text(st.characters(codec="utf-8")) | BLOB
BOOL_WORDS = ["1", "0", "true", "false", "t", "f", "yes", "no", "y", "n", "on", "off", "TRUE",
              " f ", "maybe", ""]

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
JSON_TEXT = st.builds(
    lambda v, ascii_only, compact: json.dumps(
        v, ensure_ascii=ascii_only, separators=(",", ":") if compact else None),
    JSON_VALUES, st.booleans(), st.booleans())

# Date/time texts: exact shapes of valid moments, near-misses and fuzz.
DATETIMES = st.datetimes(min_value=dt.datetime(1000, 1, 1), max_value=dt.datetime(9999, 12, 31))
_SHAPES = ["%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f",
           "%Y-%m-%dT%H:%M:%S"]
VALID_TS_TEXT = st.builds(
    lambda d, shape, digits: d.strftime(shape)[: len(d.strftime(shape)) - (6 - digits)]
    if shape.endswith("%f") else d.strftime(shape),
    DATETIMES, st.sampled_from(_SHAPES), st.integers(1, 6))
NEAR_TS_TEXT = st.from_regex(
    r"\A[0-9]{4}-[0-1][0-9]-[0-3][0-9]( [0-2][0-9]:[0-5][0-9](:[0-5][0-9]"
    r"(\.[0-9]{1,9}[-+ 0-9:.T]{0,6})?)?)?\Z")
FUZZ_TS_TEXT = st.text(alphabet="0123456789-: .TZ+", max_size=26)
TS_TEXT = VALID_TS_TEXT | NEAR_TS_TEXT | FUZZ_TS_TEXT


@pytest.fixture(scope="module")
def sq() -> Iterator[sqlite3.Connection]:
    """An in-memory table whose column has no declared type: values keep their storage class."""
    con = sqlite3.connect(":memory:")
    con.text_factory = bytes  # the pipeline reads CSV as bytes too
    con.execute("CREATE TABLE t (c)")
    yield con
    con.close()


def fast(con: sqlite3.Connection, conversion: str, value: object, *,
         not_null: bool = False) -> tuple[bytes, bool]:
    """(fast CSV field, suspect?) of one value, rendered by SQLite as the pipeline does."""
    con.execute("DELETE FROM t")
    con.execute("INSERT INTO t VALUES (?)", (value,))
    f = fast_field(conversion, "c", not_null=not_null)
    fmt = f.fmt.replace("'", "''")
    out, suspect = con.execute(
        f"SELECT printf('{fmt}', {f.arg}), {f.suspect or '0'} FROM t").fetchone()
    return out, bool(suspect)


def slow(conversion: str, value: object) -> bytes | None:
    """The slow form's field, or None when it rejects the value."""
    try:
        return convert(conversion, value).encode()
    except Reject:
        return None


def csv_value(field: bytes) -> str | None:
    """What PostgreSQL's CSV reader makes of one field (NULL is the empty unquoted field)."""
    text = field.decode()
    if text == "":
        return None
    if text.startswith('"'):
        assert text.endswith('"') and len(text) >= 2
        return text[1:-1].replace('""', '"')
    return text


def is_negative_zero(v: object) -> bool:
    return isinstance(v, float) and v == 0 and math.copysign(1, v) < 0


# ------------------------------------------------------------------------- slow form is total


@pytest.mark.parametrize("conversion", sorted(SLOW))
@given(value=ANY_CLASS)
def test_slow_form_returns_a_field_or_rejects(conversion: str, value: object) -> None:
    try:
        out = convert(conversion, value)
    except Reject as exc:
        assert str(exc)  # a reason the user can read
    else:
        assert isinstance(out, str)
        assert "\x00" not in out


# ------------------------------------------------------------------------- fast == slow


@given(value=ANY_CLASS)
def test_int(sq: sqlite3.Connection, value: object) -> None:
    out, suspect = fast(sq, "int", value)
    if value is None or isinstance(value, int):
        assert not suspect
    if not suspect:
        assert out == slow("int", value)


@given(value=st.none() | I64 | FLOATS | TEXT)
@example(0.1)
@example(1 / 3)
@example(5e-324)
@example(1.7976931348623157e308)
@example(1e100 * 3)
@example(9.999999999999999e99)
@example(2.0**53 + 2)
@example(2**53 + 1)
def test_float(sq: sqlite3.Connection, value: object) -> None:
    out, suspect = fast(sq, "float", value)
    if isinstance(value, float) and FAST_FLOAT_MIN < abs(value) < FAST_FLOAT_MAX:
        assert not suspect
    if suspect:
        return
    expected = slow("float", value)
    assert expected is not None
    if isinstance(value, float):
        # '%!.17g' spells 0.1 as 0.10000000000000001: the same double, bit for bit
        assert bits(float(out)) == bits(float(expected)) == bits(value)
    else:
        assert out == expected


def test_float_suspect_predicate_handles_int64_min(sq: sqlite3.Connection) -> None:
    out, suspect = fast(sq, "float", -(2**63))
    assert suspect or out == slow("float", -(2**63))


@pytest.mark.parametrize("not_null", [False, True])
@given(value=st.none() | TEXT | I64 | FLOATS | BLOB)
@example('say "hi", then\nleave\r\n\\.')
@example("")
def test_text(sq: sqlite3.Connection, not_null: bool, value: object) -> None:
    assume(value is not None or not not_null)
    out, suspect = fast(sq, "text", value, not_null=not_null)
    if value is None or isinstance(value, str | int):
        assert not suspect
    if suspect:
        return
    expected = slow("text", value)
    assert expected is not None
    if isinstance(value, int):  # quoted "5" vs bare 5: the same text to PostgreSQL
        assert csv_value(out) == csv_value(expected) == str(value)
    else:
        assert out == expected


@pytest.mark.parametrize("not_null", [False, True])
@given(value=st.none() | JSON_TEXT | I64)
def test_json(sq: sqlite3.Connection, not_null: bool, value: object) -> None:
    assume(value is not None or not not_null)
    out, suspect = fast(sq, "json", value, not_null=not_null)
    assert not suspect
    expected = slow("json", value)
    if expected is None:  # only jsonb's own limit: \u0000 (PostgreSQL refuses it too)
        assert isinstance(value, str) and "\\u0000" in value
        return
    if isinstance(value, int):
        assert csv_value(out) == csv_value(expected) == str(value)
    else:
        assert out == expected


@given(value=st.none() | BLOB | st.text(st.characters(codec="utf-8")) | I64 | FLOATS)
@example(bytes(range(256)))
@example(b"")
@example("a\x00b")
def test_bytea(sq: sqlite3.Connection, value: object) -> None:
    out, suspect = fast(sq, "bytea", value)
    if value is None or isinstance(value, bytes | str):
        assert not suspect
    if not suspect:
        assert out == slow("bytea", value)


@given(value=st.none() | I64 | st.sampled_from(BOOL_WORDS) | FLOATS | st.sampled_from([0, 1]))
def test_bool(sq: sqlite3.Connection, value: object) -> None:
    out, suspect = fast(sq, "bool", value)
    if value is None or (isinstance(value, int) and value in (0, 1)):
        assert not suspect
    if not suspect:
        assert out == slow("bool", value)


@pytest.mark.parametrize("conversion, scale", [("epoch_s", 1), ("epoch_ms", 1000),
                                                ("epoch_us", 1_000_000)])
@given(data=st.data())
def test_epoch(sq: sqlite3.Connection, conversion: str, scale: int, data: st.DataObject) -> None:
    top = EPOCH_MAX_S * scale + scale - 1
    value = data.draw(st.none() | st.integers(0, top) | I64 | FLOATS | TEXT
                      | st.sampled_from([0, top, top + 1, -1, 1704067200123]))
    out, suspect = fast(sq, conversion, value)
    if value is None or (isinstance(value, int) and 0 <= value <= top):
        assert not suspect
    if not suspect:
        assert out == slow(conversion, value)


def _ts_canonical(field: bytes) -> str:
    text = field.decode()
    return text + " 00:00:00" if len(text) == 10 else text


@given(value=st.none() | TS_TEXT | I64 | FLOATS)
@example("2024-01-02 03:04:05")
@example("2024-01-02")
@example("2024-01-02 03:04:05.123456")
def test_ts_text(sq: sqlite3.Connection, value: object) -> None:
    out, suspect = fast(sq, "ts_text", value)
    if suspect:
        return
    expected = slow("ts_text", value)
    if expected is None:
        return  # the fast form passes it on; PostgreSQL must refuse it (test_fast_form_leaks...)
    # a date alone gains its midnight in the slow form: the same timestamp
    assert _ts_canonical(out) == expected.decode()


@given(d=DATETIMES, shape=st.sampled_from(_SHAPES[:4]))
def test_ts_text_valid_sqlite_shapes_take_the_fast_form(sq: sqlite3.Connection, d: dt.datetime,
                                                        shape: str) -> None:
    value = d.strftime(shape)
    out, suspect = fast(sq, "ts_text", value)
    assert not suspect
    assert out == value.encode()


def test_fast_sql_and_fast_field_render_the_same_expression() -> None:
    for conversion in ("int", "float", "bytea", "bool", "epoch_ms", "ts_text"):
        expr, suspect = fast_sql(conversion, "c")
        field = fast_field(conversion, "c")
        assert (field.arg, field.suspect) == (expr, suspect)
        assert fast_field(conversion, "c", clean=True).suspect is None


# ------------------------------------------------------------------------- PostgreSQL judges


@pytest.fixture(scope="module")
def pg(pg_server: Any) -> Iterator[psycopg.Connection]:
    """A connection for casts only (nothing is written): the server's maintenance database."""
    conn = connect(pg_server.dsn(), autocommit=True, application_name="pgshift-tests")
    conn.execute("SET timezone = 'UTC'")
    conn.execute("SET datestyle = 'ISO, YMD'")
    yield conn
    conn.close()


def _pg_value(conn: psycopg.Connection, text: str | None, pg_type: str) -> tuple[bool, Any]:
    """(accepted?, PostgreSQL's canonical text of the value)."""
    try:
        return True, conn.execute(f"SELECT (%s::{pg_type})::text", (text,)).fetchone()[0]
    except psycopg.DataError:
        return False, None


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=TS_TEXT)
@example("2024-02-30 00:00:00")
@example("2024-01-02 03:04:05.5 T")
@example("2024-01-02 24:00:00")
@example("2024-01-02 03:04:05.5-5")
def test_fast_form_leaks_only_what_postgres_refuses_timestamp(
        sq: sqlite3.Connection, pg: psycopg.Connection, value: str) -> None:
    out, suspect = fast(sq, "ts_text", value)
    if suspect:
        return
    expected = slow("ts_text", value)
    accepted, got = _pg_value(pg, out.decode(), "timestamp")
    if expected is None:
        assert not accepted, f"{value!r} is rejected by the slow form but loaded as {got!r}"
    else:
        assert accepted and got == _pg_value(pg, expected.decode(), "timestamp")[1]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON_TEXT | st.text(alphabet='{}[]":,0123456789.eE+-tfrunlas \\u', max_size=20))
@example('{"a": 1, "a": 2}')
@example('"\\u0000"')
@example("1e400")
def test_fast_form_leaks_only_what_postgres_refuses_jsonb(
        sq: sqlite3.Connection, pg: psycopg.Connection, value: str) -> None:
    out, suspect = fast(sq, "json", value, not_null=True)
    assert not suspect
    expected = slow("json", value)
    accepted, got = _pg_value(pg, csv_value(out), "jsonb")
    if expected is None:
        assert not accepted, f"{value!r} is rejected by the slow form but loaded as {got!r}"
    elif accepted:
        assert got == _pg_value(pg, csv_value(expected), "jsonb")[1]
    # else: the slow form accepts what jsonb refuses (e.g. a lone \\ud800 escape): the row
    # then becomes a reject with PostgreSQL's reason after the bisection


# ------------------------------------------------------------------------- round trip


ROWS = st.lists(
    st.tuples(FLOATS | st.none(), I64 | st.none(), TEXT | st.none(), BLOB | st.none()),
    min_size=1, max_size=25)


@pytest.mark.data
@settings(max_examples=30 if os.environ.get("CI") else 15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=ROWS)
@example(rows=[(0.1, 2**63 - 1, "é\n\"x\",\\", b"\x00"), (-0.0, -(2**63), "", b""),
               (math.inf, 0, "NULL", None), (-math.inf, None, None, bytes(range(256)))])
def test_random_rows_round_trip_exactly(tmp_path: Path, pg_dsn: Dsn, rows: list[tuple]) -> None:
    db = make_db(tmp_path / "rt.db", "CREATE TABLE rt (id INTEGER PRIMARY KEY, f REAL, "
                                     "i INTEGER, s TEXT, b BLOB);",
                 {"rt": [(n, *r) for n, r in enumerate(rows, 1)]})
    result = run_migrate(db, pg_dsn, tmp_path / "state", drop=True)
    assert result.exit_code == ExitCode.OK and result.rejects == 0
    source = sqlite_rows(db, "SELECT id, f, i, s, b FROM rt ORDER BY id")
    with connect(pg_dsn, autocommit=True) as conn:
        target = pg_rows(conn, "SELECT id, f, i, s, b FROM rt ORDER BY id")
    assert len(target) == len(source) == len(rows)
    for (sid, sf, si, ss, sb), (tid, tf, ti, ts, tb) in zip(source, target, strict=True):
        assert tid == sid
        assert (sf is None and tf is None) or bits(tf) == bits(sf), (sid, sf, tf)
        assert ti == si and type(ti) is type(si)
        assert ts == ss
        assert tb == sb
