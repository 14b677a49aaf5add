"""The canonical JSON encoding equals what PostgreSQL prints for ``'<doc>'::jsonb::text``.

Verify hashes SQLite's JSON text through ``jsonb_text`` and PostgreSQL's jsonb through
``::text``: any document where the two disagree is a false alarm (or, worse, a hidden one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgshift.dsn import Dsn, connect
from pgshift.embedded_pg import PostgresServer
from pgshift.verify.canonical import jsonb_text
from verify_helpers import assert_identical, fresh_database, make_db, migrate_into, run_verify

pytestmark = pytest.mark.data

DOCS = [
    # duplicate keys: the last one wins, at every depth
    '{"a": 1, "a": 2}',
    '{"a": {"x": 1, "x": [1]}, "b": 0, "a": {"y": 2, "y": 3}}',
    # key order: shorter first, then bytewise (not code point by code point in UTF-16)
    '{"bbb": 1, "cc": 2, "a": 3, "": 4}',
    '{"é": 1, "z": 2, "ab": 3, "日": 4, "zz": 5, "e": 6}',
    '{"B": 1, "a": 2, "_": 3, "Z": 4, "0": 5}',
    '{"\\u00e9": 1, "e\\u0301": 2}',
    '{"😀": 1, "日本": 2, "abcd": 3}',
    # unicode and escapes
    '"\\u00e9\\ud83d\\ude00"',
    '"a\\/b\\"c\\\\d\\ne\\tf\\rg\\bh\\fi"',
    '"\\u0001\\u001f\\u007f\\u0080\\u2028\\u2029"',
    '"日本語 ✓ 😀"',
    '"\\u00e9" ',
    # numbers: jsonb stores numeric
    "1e2", "1E2", "1.50", "-0", "0", "0.000", "1E-3", "1.0e1", "100e-2", "5E0", "1.0E+2",
    "-1.5e-7", "0.1", "12345678901234567890123456789", "-12345678901234567890.123456789",
    "1e40", "1e-40", "0e-5", "0E+2", "-0.00e2", "3.14159265358979323846264338327950288",
    "[1, 1.0, 1.00, 1e0, 10e-1]",
    # structure
    "[[[]], {}]", '[[1, [2, [3, [4]]]], {"a": [{}]}]', "[]", "{}", "null", "true", "false",
    '{"a": null, "b": [null, true, false]}',
    '  { "spaced" :\n[ 1 ,\t2 ] }  ',
    '{"nested": {"b": {"dup": 1, "dup": {"z": 1, "a": 2}}, "a": [1, {"y": 1, "x": 2}]}}',
]


@pytest.fixture(scope="module")
def json_conn(pg_server: PostgresServer) -> Iterator[psycopg.Connection]:
    with fresh_database(pg_server, "jsonb") as dsn:
        conn = connect(dsn, autocommit=True, application_name="pgshift-tests")
        try:
            yield conn
        finally:
            conn.close()


def pg_jsonb_text(conn: psycopg.Connection, doc: str) -> str:
    row = conn.execute("SELECT %s::jsonb::text", (doc,)).fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("doc", DOCS)
def test_jsonb_text_matches_postgres(json_conn: psycopg.Connection, doc: str) -> None:
    assert jsonb_text(doc) == pg_jsonb_text(json_conn, doc)


def test_jsonb_text_matches_postgres_through_pg_conn(pg_conn: psycopg.Connection) -> None:
    """The same check on the per-test database of the shared fixture (its settings)."""
    for doc in DOCS[:6]:
        assert jsonb_text(doc) == pg_jsonb_text(pg_conn, doc)


NEGATIVE_ZERO_DOCS = ["-0.0", "-0e-5", "[-0.00]", '{"a": -0.0}', "-0.000"]


@pytest.mark.parametrize("doc", NEGATIVE_ZERO_DOCS)
def test_jsonb_text_negative_zero_with_fraction(json_conn: psycopg.Connection, doc: str) -> None:
    assert jsonb_text(doc) == pg_jsonb_text(json_conn, doc)


def test_verify_json_negative_zero_no_false_alarm(tmp_path: Path, pg_dsn: Dsn) -> None:
    db = make_db(tmp_path / "j.db", "CREATE TABLE j (id INTEGER PRIMARY KEY, doc JSON);",
                 {"j": [(1, '{"a": -0.0}'), (2, '{"a": 0.0}'), (3, "[-0.00, 1]")]})
    state = tmp_path / "state"
    migrate_into(db, pg_dsn, state)
    assert_identical(run_verify(db, pg_dsn, state))


# ---------------------------------------------------------------- random documents

_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_keys = st.text(_chars, max_size=6)


def _number_text(d: Decimal) -> str:
    return str(d)


_numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != 0).map(repr),
    st.decimals(allow_nan=False, allow_infinity=False, places=None)
    .filter(lambda d: not (d.is_zero() and d.is_signed())).map(_number_text),
    st.sampled_from(["0", "0.0", "1e2", "1E-3", "1.50", "-1", "10e-1", "0e3"]),
)
_scalars = st.one_of(
    _numbers,
    st.text(_chars, max_size=8).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.text(_chars, max_size=8).map(json.dumps),
    st.sampled_from(["true", "false", "null"]),
)


def _render(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    arrays = st.lists(children, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]")
    objects = st.lists(st.tuples(_keys, children), max_size=4).map(
        lambda kv: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in kv) + "}")
    return arrays | objects


_documents = st.recursive(_scalars, _render, max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_documents)
def test_jsonb_text_matches_postgres_for_random_documents(
        json_conn: psycopg.Connection, doc: str) -> None:
    # Decimal's exponent forms (1E+3, 1.2E-7) and duplicate keys come up here on purpose.
    assert jsonb_text(doc) == pg_jsonb_text(json_conn, doc)
