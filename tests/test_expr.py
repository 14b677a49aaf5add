"""pgshift.schema.expr: SQLite expressions (DEFAULT, CHECK, index, view) in PostgreSQL's terms.

Unit checks of the rewrites and refusals, then the semantic check that matters: each
translated expression, evaluated by the real PostgreSQL over sample rows, gives what SQLite
gives for the original.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgshift.dsn import connect
from pgshift.schema.expr import ExprContext, Untranslatable, translate, translate_default

# Stored spellings are mixed case: SQLite resolves `name` to "Name", PostgreSQL must be told.
CTX = ExprContext(
    column_types={"name": "text", "n": "bigint", "m": "bigint", "flag": "boolean"},
    names={"name": "Name", "n": "N", "m": "M", "flag": "Flag"},
)


# ------------------------------------------------------------------------- rewrites


@pytest.mark.parametrize("source, expected", [
    ("lower(name)", 'LOWER("Name")'),
    ("n >= 0", '"N" >= 0'),
    ("flag = 1", '"Flag" = TRUE'),
    ("0 = flag", 'FALSE = "Flag"'),
    ("flag IN (0, 1)", '"Flag" IN (FALSE, TRUE)'),
    ("name LIKE 'a%'", "\"Name\" ILIKE 'a%'"),
    ("name GLOB 'a*[0-9]?'", "\"Name\" ~ '^a.*[0-9].$'"),
    ("name GLOB 'x.y[^a]'", "\"Name\" ~ '^x\\.y[^a]$'"),
    ("CAST(n AS INTEGER)", 'CAST("N" AS BIGINT)'),
    ("CAST(n AS REAL)", 'CAST("N" AS DOUBLE PRECISION)'),
    ("x'00ff'", "CAST('\\x00ff' AS BYTEA)"),
    ("ifnull(name, 'a')", "COALESCE(\"Name\", 'a')"),
    ("iif(n > 1, 'a', 'b')", "CASE WHEN \"N\" > 1 THEN 'a' ELSE 'b' END"),
    ("\"NAME\" = 'x'", "\"Name\" = 'x'"),
    ("name COLLATE BINARY = 'x'", "\"Name\" = 'x'"),
])
def test_rewrites(source: str, expected: str) -> None:
    assert translate(source, CTX) == expected


@pytest.mark.parametrize("source", [
    "datetime('now')", "CURRENT_TIMESTAMP", "strftime('%Y-%m-%d %H:%M:%S', 'now')",
])
def test_now_as_text_has_sqlite_text_shape(source: str) -> None:
    assert translate(source) == ("TO_CHAR(CURRENT_TIMESTAMP AT TIME ZONE 'UTC', "
                                 "'YYYY-MM-DD HH24:MI:SS')")


@pytest.mark.parametrize("source", ["strftime('%s', 'now')", "unixepoch('now')"])
def test_epoch_now(source: str) -> None:
    assert translate(source) == "(CAST(FLOOR(EXTRACT(EPOCH FROM CURRENT_TIMESTAMP)) AS BIGINT))"


@pytest.mark.parametrize("source, why", [
    ("typeof(n) = 'integer'", "not on the translation list"),
    ("json_extract(name, '$.a')", "JSON path"),
    ("hex(name)", "hex"),
    ("my_func(n)", "my_func() has no PostgreSQL translation"),
    ("random()", "not on the translation list"),
    ("strftime('%Y', name)", "strftime()"),
    ("datetime(n, 'unixepoch')", "datetime() has no PostgreSQL translation"),
    ("datetime('now', 'localtime')", "datetime() has no PostgreSQL translation"),
    ("printf('%d', n)", "printf() has no PostgreSQL translation"),
    ("round(n, 2)", "not on the translation list"),
    ("name COLLATE NOCASE = 'x'", "COLLATE NOCASE"),
    ("(", "cannot parse"),
    ("name GLOB n", "non-constant pattern"),
])
def test_untranslatable(source: str, why: str) -> None:
    with pytest.raises(Untranslatable, match=None) as info:
        translate(source, CTX)
    assert why in str(info.value)


@pytest.mark.parametrize("source, pg_type, expected", [
    ("0", "boolean", "false"),
    ("1", "boolean", "true"),
    ("'0'", "boolean", "false"),
    ("TRUE", "boolean", "true"),
    ("false", "boolean", "false"),
    ("CURRENT_TIMESTAMP", "timestamp", "(CURRENT_TIMESTAMP AT TIME ZONE 'UTC')"),
    ("CURRENT_TIMESTAMP", "timestamptz", "CURRENT_TIMESTAMP"),
    ("CURRENT_TIMESTAMP", "text",
     "TO_CHAR(CURRENT_TIMESTAMP AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"),
    ("datetime('now')", "timestamp", "(CURRENT_TIMESTAMP AT TIME ZONE 'UTC')"),
    ("CURRENT_DATE", "date", "(CAST((CURRENT_TIMESTAMP AT TIME ZONE 'UTC') AS DATE))"),
    ("date('now')", "date", "(CAST((CURRENT_TIMESTAMP AT TIME ZONE 'UTC') AS DATE))"),
    ("CURRENT_TIME", "time", "(CAST((CURRENT_TIMESTAMP AT TIME ZONE 'UTC') AS TIME(0)))"),
    ("'pending'", "text", "'pending'"),
    ("-1", "bigint", "-1"),
    ("'{}'", "jsonb", "'{}'"),
    ("(strftime('%s', 'now') * 1000)", "bigint",
     "((CAST(FLOOR(EXTRACT(EPOCH FROM CURRENT_TIMESTAMP)) AS BIGINT)) * 1000)"),
])
def test_translate_default(source: str, pg_type: str, expected: str) -> None:
    assert translate_default(source, pg_type) == expected


def test_translate_default_refuses_what_translate_refuses() -> None:
    with pytest.raises(Untranslatable):
        translate_default("random()", "bigint")


# ------------------------------------------------------------------------- same meaning in PG


@pytest.fixture(scope="module")
def pg(pg_server: Any) -> Iterator[psycopg.Connection]:
    """Evaluation only (no table is written): the server's maintenance database."""
    conn = connect(pg_server.dsn(), autocommit=True, application_name="pgshift-tests")
    yield conn
    conn.close()


ROWS = [("hello", 7, 2, 1), ("Hello World", -7, None, 0), ("abc1x", 0, 3, None),
        ("", 12, 12, 1), (None, None, 5, 0), ("a%b_c", 3, -4, 1)]


def _sqlite_eval(expr: str) -> list[Any]:
    con = sqlite3.connect(":memory:")
    try:
        return [con.execute(f"SELECT {expr} FROM (SELECT ? AS Name, ? AS N, ? AS M, ? AS Flag)",
                            row).fetchone()[0] for row in ROWS]
    finally:
        con.close()


def _pg_eval(conn: psycopg.Connection, expr: str) -> list[Any]:
    out = []
    for name, n, m, flag in ROWS:
        lits = [sql.Literal(v).as_string(conn) for v in
                (name, n, m, None if flag is None else bool(flag))]
        # no parameters: '%' in the expression is sent as is
        query = (f'SELECT {expr} FROM (SELECT {lits[0]}::text AS "Name", {lits[1]}::bigint AS '
                 f'"N", {lits[2]}::bigint AS "M", {lits[3]}::boolean AS "Flag") AS t')
        out.append(conn.execute(query).fetchone()[0])
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, bool):
        b = int(b)
    return (a == b and type(a) is type(b)) or (isinstance(a, float) and a == b)


SAME_MEANING = [
    "lower(name)", "upper(name)", "length(name)", "name || '-' || n", "coalesce(name, 'x')",
    "ifnull(m, -1)", "nullif(n, 0)", "abs(n)", "n % 3", "n / 2", "n * m", "-n + m",
    "n BETWEEN 0 AND 10", "n IN (0, 7)", "name IS NULL", "name IS NOT NULL", "name LIKE 'h%'",
    "name LIKE '%l_o%'", "name GLOB 'h*'", "name GLOB '*[0-9]?'", "name GLOB '[a-c]*'",
    "trim(name)", "instr(name, 'l')", "substr(name, 2, 3)", "substr(name, 2)",
    "iif(n > 0, 'pos', 'neg')", "CASE WHEN n > 0 THEN 'p' WHEN n < 0 THEN 'n' ELSE 'z' END",
    "CAST(n AS REAL) / 4", "flag = 1", "flag IN (0)", "flag = 0 OR n > 5",
    "length(name) > 3 AND n <> 0", "NOT (n > 1)",
]


@pytest.mark.parametrize("expr", SAME_MEANING)
def test_translation_means_the_same_in_postgres(pg: psycopg.Connection, expr: str) -> None:
    expected = _sqlite_eval(expr)
    got = _pg_eval(pg, translate(expr, CTX))
    assert all(_same(a, b) for a, b in zip(expected, got, strict=True)), (expected, got)


@pytest.mark.parametrize("expr", [
    "substr(name, -3, 2)",
    "substr(name, -3)",
    "max(n, m)",
    "min(n, m)",
    "replace(name, 'l', 'L')",
])
def test_translation_changes_meaning(pg: psycopg.Connection, expr: str) -> None:
    expected = _sqlite_eval(expr)
    try:
        got = _pg_eval(pg, translate(expr, CTX))
    except Untranslatable:
        return  # refusing is fine: it is reported, never silently wrong
    assert all(_same(a, b) for a, b in zip(expected, got, strict=True)), (expected, got)


@pytest.mark.parametrize("stmt", ["DROP TABLE x", "n = 1; DROP TABLE users"])
def test_statements_are_not_expressions(stmt: str) -> None:
    with pytest.raises(Untranslatable):
        translate(stmt, CTX)
