"""Canonical encodings: one text per value that means the same on both engines.

A row is encoded as the concatenation, for each column, of ``N0:`` (NULL) or
``V<bytes>:<text>`` — so NULL, '' and 'NULL' differ and no column boundary is
ambiguous; the length counts UTF-8 bytes, so a value cut short at a NUL byte
can never pass for the whole one — and hashed with md5. Both engines build
the encoding in SQL; where SQLite has no faithful built-in (float bits,
jsonb's key order, timestamp normalization) a Python function registered in
the SQLite session renders the canonical text.

Per conversion, the canonical text is:

    int             the integer
    epoch_*         microseconds since the epoch (the target's precision: a
                    timestamp keeps microseconds), from the source's exact integer
    float           the IEEE-754 bits, 16 hex digits
    numeric         plain decimal notation (no exponent)
    text            the text
    json            jsonb's output form (keys shortest-first, last duplicate wins)
    bytea           lower-case hex
    bool            t / f
    uuid            lower-case hyphenated
    ts/tstz/date/time  'YYYY-MM-DD HH:MM:SS.ffffff' (UTC for tstz) / 'YYYY-MM-DD' / time text
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
import sqlite3
import struct
import uuid
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

from pgshift.copy import convert as cv
from pgshift.schema.model import qident

_EPOCH_SCALE = {"epoch_s": 1, "epoch_ms": 1000, "epoch_us": 1000000}
_EPOCH_DATE = ("epoch_s_date", "epoch_ms_date", "epoch_us_date")


def pg_expr(conversion: str, column: str) -> str:
    """PostgreSQL SQL giving the canonical text of one column (NULL stays NULL)."""
    c = qident(column)
    conversion = conversion.partition("@")[0]  # zoned text timestamps compare in UTC
    if conversion in ("int", "text", "json", "numeric", "uuid"):
        return f"{c}::text"
    if conversion == "numeric_trim":
        return f"trim_scale({c})::text"
    if conversion in _EPOCH_DATE:
        return f"to_char({c}, 'YYYY-MM-DD')"
    if conversion == "float":
        return f"encode(float8send({c}), 'hex')"
    if conversion == "bytea":
        return f"encode({c}, 'hex')"
    if conversion == "bool":
        return f"CASE WHEN {c} THEN 't' WHEN NOT {c} THEN 'f' END"
    if conversion in _EPOCH_SCALE:
        # extract() is exact numeric (PostgreSQL 14+): every stored microsecond counts.
        return f"(extract(epoch FROM {c}) * 1000000)::bigint::text"
    if conversion == "ts_text":
        return f"to_char({c}, 'YYYY-MM-DD HH24:MI:SS.US')"
    if conversion == "tstz_text":
        return f"to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
    if conversion == "date_text":
        return f"to_char({c}, 'YYYY-MM-DD')"
    if conversion == "time_text":
        return f"to_char({c}, 'HH24:MI:SS.US')"
    raise ValueError(f"unknown conversion {conversion!r}")


def pg_row_text(parts: list[str]) -> str:
    """SQL concatenating canonical column texts with NULL markers and byte lengths."""
    pieces = [f"CASE WHEN ({p}) IS NULL THEN 'N0:' ELSE 'V' || octet_length({p}) || ':' || "
              f"({p}) END" for p in parts]
    return " || ".join(pieces) if pieces else "''"


# Conversions whose canonical text SQLite renders itself when the column holds
# only these storage classes (measured: a Python call per value costs ~1 us).
_SQL_NATIVE = {"int": {"integer"}, "text": {"text", "integer"}, "epoch_s": {"integer"},
               "epoch_ms": {"integer"}, "epoch_us": {"integer"}, "numeric": {"integer"},
               "bytea": {"blob", "text"}}
PIECE_FN = "pgshift_piece"
CANON_FN = "pgshift_canon"


def sqlite_canon(conversion: str, column: str, classes: frozenset[str]) -> str:
    """SQLite SQL giving the canonical text of one column."""
    c = '"' + column.replace('"', '""') + '"'
    if conversion in _SQL_NATIVE and classes <= _SQL_NATIVE[conversion]:
        if conversion in _EPOCH_SCALE:
            # The source's exact integer, in the microseconds the target keeps.
            scale = 1000000 // _EPOCH_SCALE[conversion]
            return c if scale == 1 else f"({c} * {scale})"
        # hex(NULL) is '', so NULL must stay NULL explicitly.
        return f"iif({c} IS NULL, NULL, lower(hex({c})))" if conversion == "bytea" else c
    return f"{CANON_FN}('{conversion}', {c})"


def sqlite_piece(conversion: str, column: str, classes: frozenset[str], *,
                 not_null: bool = False) -> tuple[str, list[str]]:
    """(printf format, args) rendering one column's piece of the row encoding.

    Every argument is work per row (measured: the row text is most of the SQLite
    side's time), so columns SQLite itself keeps NOT NULL skip the NULL test and
    integer columns skip the byte-length cast (their text is ASCII).
    """
    expr = sqlite_canon(conversion, column, classes)
    if expr.startswith(CANON_FN):
        # One Python call renders the whole piece, so the function runs once per value.
        return "%s", [expr.replace(CANON_FN, PIECE_FN, 1)]
    ascii_only = conversion in ("int", "epoch_s", "epoch_ms", "epoch_us", "numeric")
    length = f"length({expr})" if ascii_only else f"length(CAST({expr} AS BLOB))"
    if not_null:
        return "V%d:%s", [length, expr]
    # printf's %d of NULL is 0 and %s of NULL is empty: NULL renders as 'N0:'.
    return "%s%d:%s", [f"iif({expr} IS NULL, 'N', 'V')", length, expr]


def piece(text: str | None) -> str:
    """One column's piece of the row encoding, from its canonical text."""
    if text is None:
        return "N0:"
    return f"V{len(text.encode('utf-8', 'surrogateescape'))}:{text}"


def canon_value(conversion: str, value: object) -> str | None:
    """The canonical text of one raw SQLite value (the Python half of sqlite_canon)."""
    if value is None:
        return None
    try:
        return (CANON.get(conversion) or _zoned(conversion))(value)
    except Exception:  # a value no rule fits can never equal anything PostgreSQL holds
        return "!" + repr(value)


def register(con: sqlite3.Connection) -> None:
    """Register the canonical-text and row-hash functions in a SQLite session."""
    con.create_function(CANON_FN, 2, canon_value, deterministic=True)
    con.create_function(PIECE_FN, 2, lambda conv, v: piece(canon_value(conv, v)),
                        deterministic=True)
    con.create_aggregate(HASH_SUM_FN, 1, HashSum)  # type: ignore[arg-type]


HASH_SUM_FN = "pgshift_hash_sum"
MASK = (1 << 64) - 1


class HashSum:
    """SQLite aggregate: count and sum (mod 2^64) of 64-bit md5 prefixes of row texts."""

    def __init__(self) -> None:
        self.total = 0
        self.n = 0

    def step(self, row: bytes | str | None) -> None:
        raw = row.encode("utf-8", "surrogateescape") if isinstance(row, str) else (row or b"")
        self.total += int.from_bytes(hashlib.md5(raw).digest()[:8], "big", signed=True)
        self.n += 1

    def finalize(self) -> str:
        # SQLite integers are signed 64-bit: the unsigned sum travels as text.
        return f"{self.n}:{self.total & MASK}"


# ------------------------------------------------------------------ Python side


def _text(v: object) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    if isinstance(v, float):
        return cv.float_text(v)
    return str(v)


def _float(v: object) -> str:
    if isinstance(v, (int, float)):
        return struct.pack(">d", float(v)).hex()
    return "!" + _text(v)  # not a number in SQLite: can never equal a float8


def _numeric(v: object) -> str:
    if isinstance(v, float) and (v != v or abs(v) == float("inf")):
        return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, int):
        return str(v)
    try:
        d = Decimal(repr(v)) if isinstance(v, float) else Decimal(_text(v).strip())
    except ArithmeticError:
        return "!" + _text(v)
    return format(d.copy_abs() if d == 0 else d, "f")  # numeric has no negative zero


def _numeric_trim(v: object) -> str:
    """numeric's value without trailing fraction zeros (PostgreSQL's trim_scale)."""
    text = _numeric(v)
    if "." in text and not text.startswith("!"):
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def jsonb_text(text: str) -> str:
    """The text PostgreSQL's jsonb output gives for a JSON document."""

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        out: dict[str, object] = {}
        for k, val in items:  # the last duplicate key wins, as in jsonb
            out[k] = val
        return out

    return _jsonb_dump(json.loads(text, object_pairs_hook=pairs, parse_float=Decimal,
                                  parse_int=Decimal))


def _jsonb_dump(v: object) -> str:
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: (len(k.encode()), k.encode()))
        return "{" + ", ".join(f"{_json_str(k)}: {_jsonb_dump(v[k])}" for k in keys) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_jsonb_dump(x) for x in v) + "]"
    if isinstance(v, Decimal):
        return _numeric(v)
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    return _json_str(str(v))


# jsonb's string escapes: the short forms, \u00XX for other control characters.
_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)} | {
    ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r",
    ord("\t"): "\\t", ord("\b"): "\\b", ord("\f"): "\\f"}


def _json_str(s: str) -> str:
    return '"' + s.translate(_JSON_ESCAPES) + '"'


def _json(v: object) -> str:
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _numeric(v)
    try:
        return jsonb_text(_text(v))
    except ValueError:
        return "!" + _text(v)


def _bool(v: object) -> str:
    try:
        return cv.conv_bool(v)
    except cv.Reject:
        return "!" + _text(v)


def _uuid(v: object) -> str:
    try:
        return str(uuid.UUID(bytes=v)) if isinstance(v, bytes) and len(v) == 16 \
            else str(uuid.UUID(_text(v).strip()))
    except ValueError:
        return "!" + _text(v)


def _bytea(v: object) -> str:
    if isinstance(v, bytes):
        return v.hex()
    return _text(v).encode("utf-8", "surrogateescape").hex()


def _micros(scale: int) -> Callable[[object], str]:
    """An epoch integer as microseconds; anything else can never equal a timestamp."""

    def canon(v: object) -> str:
        return str(v * scale) if isinstance(v, int) else "!" + _text(v)

    return canon


def _temporal(conversion: str) -> Callable[[object], str]:
    def canon(v: object) -> str:
        try:
            rendered = cv.convert(conversion, v)
        except cv.Reject:
            return "!" + _text(v)
        if conversion == "date_text" or conversion in _EPOCH_DATE:
            return rendered
        zone = conversion.partition("@")[2]
        if zone and rendered.endswith(" " + zone):
            naive = dt.datetime.fromisoformat(_round_fraction(rendered[: -len(zone) - 1]))
            moment = naive.replace(tzinfo=ZoneInfo(zone)).astimezone(dt.UTC)
            return moment.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f").rjust(26, "0")
        if conversion == "time_text":
            full = rendered + ":00" if len(rendered) == 5 else rendered
            moment = dt.datetime.fromisoformat("2000-01-01 " + _round_fraction(full))
            return moment.strftime("%H:%M:%S.%f") if moment.day == 1 else "24:00:00.000000"
        text = _round_fraction(rendered.replace("T", " "))
        moment = dt.datetime.fromisoformat(text.replace("+00", "+00:00")
                                           if text.endswith("+00") else text)
        if moment.tzinfo is not None:
            moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f").rjust(26, "0")

    return canon


_FRACTION = re.compile(r"(\d{2}:\d{2}:\d{2})\.(\d{7,})")


def _round_fraction(text: str) -> str:
    """Round seconds beyond microseconds the way PostgreSQL stores them (half to even)."""
    m = _FRACTION.search(text)
    if not m:
        return text
    micros = (Decimal("0." + m.group(2)) * 1_000_000).quantize(Decimal(1), ROUND_HALF_EVEN)
    hh, mm, ss = (int(x) for x in m.group(1).split(":"))
    base = dt.datetime(2000, 1, 1, hh, mm, ss) + dt.timedelta(microseconds=int(micros))
    # Rounding may carry into the next second (or day): rebuild the whole timestamp.
    head = text[: m.start()]
    if head.strip():
        day = dt.datetime.fromisoformat(head.strip()[:10]) + (base - dt.datetime(2000, 1, 1))
        return day.strftime("%Y-%m-%d %H:%M:%S.%f") + text[m.end():]
    return base.strftime("%H:%M:%S.%f") + text[m.end():]


CANON: dict[str, Callable[[object], str]] = {
    "int": _text, "text": _text, "float": _float, "numeric": _numeric, "json": _json,
    "bytea": _bytea, "bool": _bool, "uuid": _uuid,
    "epoch_s": _micros(1000000), "epoch_ms": _micros(1000), "epoch_us": _micros(1),
    "ts_text": _temporal("ts_text"), "tstz_text": _temporal("tstz_text"),
    "date_text": _temporal("date_text"), "time_text": _temporal("time_text"),
    "epoch_s_date": _temporal("epoch_s_date"), "epoch_ms_date": _temporal("epoch_ms_date"),
    "epoch_us_date": _temporal("epoch_us_date"), "numeric_trim": _numeric_trim,
}


@functools.lru_cache(maxsize=32)
def _zoned(conversion: str) -> Callable[[object], str]:
    """Canonical text of ``tstz_text@Zone`` (offset-free texts read in that zone)."""
    return _temporal(conversion)


def row_text(canon: list[str | None] | tuple[str | None, ...]) -> str:
    """The row encoding from canonical column texts (equals pg_row_text's output)."""
    return "".join(piece(v) for v in canon)
