"""DEFAULT clauses by what the target column's type means, each checked by PostgreSQL.

SQLite's DEFAULT is a value of any class; PostgreSQL's must suit the column's
type. Literals are carried as the value SQLite would store (``""`` is the
empty string: SQLite reads a double-quoted word as a literal where no column
is in scope), ``now`` forms become PostgreSQL's clock at the precision SQLite
writes (seconds, or milliseconds for ``%f``), UTC or local as asked, in the
column's type (a text column keeps SQLite's text shape). Everything else goes
through the expression translator. ``check_defaults`` then lets PostgreSQL
evaluate each one (in a transaction that is rolled back) before any DDL runs;
what fails is listed with the column and the exact SQLite text, never dropped
silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import overload

import psycopg

from pgshift.schema.expr import ExprContext, Untranslatable, translate_default
from pgshift.schema.model import Column, Note, Table
from pgshift.source import sqltokens as tk

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_TIME_SHAPE = r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?"
_DATE_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}([ T]" + _TIME_SHAPE + r")?([+-]\d{2}(:?\d{2})?|Z)?")
_NOW_FN = re.compile(r"(datetime|date|time)\(\s*'now'\s*(?:,\s*'(localtime|utc)'\s*)?\)", re.I)
_STRFTIME = re.compile(r"strftime\(\s*'([^']*)'\s*,\s*'now'\s*(?:,\s*'(localtime|utc)'\s*)?\)",
                       re.I)
_CURRENT = re.compile(r"current_(timestamp|date|time)", re.I)
# strftime format -> (kind, precision, to_char format of SQLite's text shape)
_FORMATS = {
    "%Y-%m-%d %H:%M:%S": ("ts", "second", "YYYY-MM-DD HH24:MI:SS"),
    "%Y-%m-%d %H:%M:%f": ("ts", "milliseconds", "YYYY-MM-DD HH24:MI:SS.MS"),
    "%Y-%m-%dT%H:%M:%S": ("ts", "second", 'YYYY-MM-DD"T"HH24:MI:SS'),
    "%Y-%m-%dT%H:%M:%f": ("ts", "milliseconds", 'YYYY-MM-DD"T"HH24:MI:SS.MS'),
    "%Y-%m-%dT%H:%M:%SZ": ("ts", "second", 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
    "%Y-%m-%dT%H:%M:%fZ": ("ts", "milliseconds", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    "%Y-%m-%d": ("date", "day", "YYYY-MM-DD"),
    "%H:%M:%S": ("time", "second", "HH24:MI:SS"),
    "%s": ("epoch", "second", ""),
}
_FN_FORMAT = {"datetime": "%Y-%m-%d %H:%M:%S", "date": "%Y-%m-%d", "time": "%H:%M:%S",
              "timestamp": "%Y-%m-%d %H:%M:%S"}
_NUMERIC = ("bigint", "numeric", "double precision")
_TEMPORAL = ("timestamp", "timestamptz", "date", "time")


def plan_default(sql: str, col: Column, ctx: ExprContext | None = None) -> str:
    """The PostgreSQL DEFAULT for SQLite's ``sql`` on the planned column ``col``."""
    text = _unwrap(sql.strip())
    now = _now_form(text)
    if now is not None:
        return _now_sql(*now, col.pg_type)
    literal = _literal(text)
    if literal is not None:
        return _literal_sql(literal[0], literal[1], col)
    return translate_default(text, col.pg_type, ctx)


@overload
def now_sql_for(sql: str, pg_type: str) -> str: ...
@overload
def now_sql_for(sql: str, pg_type: str, *, probe: bool) -> str | None: ...
def now_sql_for(sql: str, pg_type: str, *, probe: bool = False) -> str | None:
    """A SQLite clock expression (``datetime('now')``, ``CURRENT_TIMESTAMP``, ...) as a
    value of ``pg_type``; with ``probe``, None when ``sql`` is no clock expression."""
    try:
        now = _now_form(_unwrap(sql.strip()))
    except Untranslatable:
        if probe:
            return None
        raise
    if now is None:
        if probe:
            return None
        raise Untranslatable(f"{sql!r} is not a clock value")
    return _now_sql(*now, pg_type)


def _unwrap(text: str) -> str:
    """``(expr)`` -> ``expr`` (PRAGMA keeps the parentheses of some defaults)."""
    while text.startswith("(") and text.endswith(")"):
        tokens = tk.tokenize(text)
        try:
            if tk.paren_group(tokens, 0) != len(tokens) - 1:
                break
        except ValueError:
            break
        text = text[1:-1].strip()
    return text


def _now_form(text: str) -> tuple[str, str, str, bool] | None:
    """(kind, precision, text shape, local) of a SQLite clock default, or None."""
    fmt, local = None, False
    if m := _NOW_FN.fullmatch(text):
        fmt, local = _FN_FORMAT[m.group(1).lower()], (m.group(2) or "").lower() == "localtime"
    elif m := _STRFTIME.fullmatch(text):
        fmt, local = m.group(1), (m.group(2) or "").lower() == "localtime"
        if fmt not in _FORMATS:
            raise Untranslatable(f"strftime format {fmt!r} has no PostgreSQL translation")
    elif m := _CURRENT.fullmatch(text):
        fmt = _FN_FORMAT[m.group(1).lower()]
    elif re.fullmatch(r"unixepoch\(\s*(?:'now')?\s*\)", text, re.I):
        fmt = "%s"
    if fmt is None:
        return None
    kind, precision, shape = _FORMATS[fmt]
    return kind, precision, shape, local


def _now_sql(kind: str, precision: str, shape: str, local: bool, pg_type: str) -> str:
    if kind == "epoch":
        if pg_type in _NUMERIC:
            return "floor(extract(epoch FROM now()))::bigint"
        if pg_type == "text":
            return "(floor(extract(epoch FROM now()))::bigint)::text"
        raise Untranslatable(f"an epoch number has no meaning in a {pg_type} column")
    # SQLite's 'now' is UTC unless 'localtime' asks for the host's zone; PostgreSQL's
    # LOCALTIMESTAMP is the session's TimeZone (set it on the app's role to match).
    wall = "LOCALTIMESTAMP" if local else "(now() AT TIME ZONE 'UTC')"
    if pg_type == "timestamptz":
        return f"date_trunc('{precision}', now())"
    if pg_type == "timestamp" and kind in ("ts", "date"):
        return f"date_trunc('{precision}', {wall})"
    if pg_type == "date" and kind in ("ts", "date"):
        return f"({wall})::date"
    if pg_type == "time" and kind in ("ts", "time"):
        return f"date_trunc('{precision}', {wall})::time"
    if pg_type == "text":
        return f"to_char(date_trunc('{precision}', {wall}), '{shape}')"
    raise Untranslatable(f"a {kind} clock value has no meaning in a {pg_type} column")


def _literal(text: str) -> tuple[str, str] | None:
    """('str' | 'num', value) for one literal (``"x"`` counts as a string), else None."""
    tokens = tk.tokenize(text)
    neg = len(tokens) == 2 and tokens[0].text in ("-", "+")
    if len(tokens) != 1 and not neg:
        return None
    tok = tokens[-1]
    if tok.text[:1] in ("'", '"') and not neg:
        # In a DEFAULT no column is in scope: SQLite reads "x" as the string 'x'.
        return "str", tok.text[1:-1].replace(tok.text[0] * 2, tok.text[0])
    if _NUMBER.fullmatch(tok.text):
        return "num", (tokens[0].text if neg else "") + tok.text
    return None


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _literal_sql(kind: str, value: str, col: Column) -> str:
    pg_type, conv = col.pg_type, col.decision.conversion
    if kind == "str":
        if pg_type in _NUMERIC:
            if _NUMBER.fullmatch(value.strip()):  # SQLite's numeric affinity stores the number
                return value.strip()
            raise Untranslatable(f"SQLite stores the text {value!r} here; a {pg_type} column "
                                 "cannot hold it")
        if pg_type == "boolean":
            word = value.strip().lower()
            if word in ("1", "true", "t", "yes", "on", "0", "false", "f", "no", "off"):
                return "true" if word in ("1", "true", "t", "yes", "on") else "false"
            raise Untranslatable(f"{value!r} is not a boolean")
        if pg_type in _TEMPORAL and not _DATE_SHAPE.fullmatch(value.strip()) \
                and not (pg_type == "time" and re.fullmatch(_TIME_SHAPE, value)):
            # PostgreSQL would read words ('now', 'today') once, at CREATE time.
            raise Untranslatable(f"{value!r} is not a date/time value")
        if pg_type == "bytea":
            return f"convert_to({_quote(value)}, 'UTF8')"
        return _quote(value)
    if pg_type == "text":
        return _quote(value)  # SQLite's text affinity stores the number's text
    if pg_type in ("numeric", "double precision") or (pg_type == "bigint"
                                                      and re.fullmatch(r"[+-]?\d+", value)):
        return value
    if pg_type == "boolean" and value in ("0", "1"):
        return "true" if value == "1" else "false"
    if pg_type in ("timestamptz", "timestamp") and conv.startswith("epoch_"):
        scale = {"epoch_s": 1, "epoch_ms": 1000, "epoch_us": 1000000}[conv.split("@")[0]]
        moment = f"to_timestamp({value}::numeric / {scale})"
        return moment if pg_type == "timestamptz" else f"({moment} AT TIME ZONE 'UTC')"
    if pg_type in _TEMPORAL:
        raise Untranslatable(f"the number {value} in a {pg_type} column holding date texts: "
                             "SQLite's date functions read it as a Julian day number, an "
                             "epoch reading gives 1970; set the DEFAULT by hand")
    raise Untranslatable(f"the number {value} cannot be a {pg_type}")


def refused(conn: psycopg.Connection, pg_type: str, expr: str) -> str | None:
    """Why PostgreSQL refuses ``expr`` as a DEFAULT of a ``pg_type`` column, or None.

    Evaluated, never written (read-only transactions allow it, so verify asks the
    same question): the value must convert, and its type must be assignable to the
    column's (what ``SET DEFAULT`` requires: a text-typed clock on a timestamp
    column converts by an explicit cast but is refused as a default).
    """
    try:
        with conn.transaction(force_rollback=True):
            row = conn.execute(
                f"SELECT CAST(({expr}) AS {pg_type}) IS NULL, pg_typeof(({expr}))::text, "
                f"pg_typeof(({expr})) IN ('unknown'::regtype, '{pg_type}'::regtype) OR "
                f"EXISTS (SELECT 1 FROM pg_cast WHERE castsource = pg_typeof(({expr})) "
                f"AND casttarget = '{pg_type}'::regtype AND castcontext IN ('a', 'i'))"
            ).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        raise
    except psycopg.Error as exc:
        return exc.diag.message_primary or str(exc).splitlines()[0]
    if row is not None and not row[2]:
        return f"a {row[1]} value cannot be assigned to a {pg_type} column"
    return None


def check_defaults(conn: psycopg.Connection, tables: list[Table], notes: list[Note],
                   source_text: Callable[[Table, Column], str]) -> int:
    """Let PostgreSQL evaluate every planned DEFAULT; drop (and note) the ones it refuses.

    Returns how many were checked.
    """
    checked = 0
    for t in tables:
        for c in t.columns:
            if c.default is None or c.generated is not None or c.decision.identity:
                continue
            checked += 1
            why = refused(conn, c.pg_type, c.default)
            if why is not None:
                notes.append(Note("untranslated", f"{t.name}.{c.name}",
                                  f"DEFAULT {source_text(t, c)} not carried: PostgreSQL refused "
                                  f"{c.default}: {why}"))
                c.default = None
    return checked
