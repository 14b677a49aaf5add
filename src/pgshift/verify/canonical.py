"""Canonical encodings: one text per value that means the same on both engines.

A row is encoded as the concatenation, for each column, of ``N`` (NULL) or
``V<length>:<text>`` — so NULL, '' and 'NULL' differ and no column boundary
is ambiguous — and hashed with md5. PostgreSQL computes the encoding in SQL
(expressions below); SQLite's side is computed in Python from the raw values
by the same rules (SQLite has no md5, and Python gives exact float bits,
jsonb's key order and timestamp normalization without guesswork).

Per conversion, the canonical text is:

    int, epoch_*    the integer (epoch_* compared at the source's unit)
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
import hashlib
import json
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal

from pgshift.copy import convert as cv
from pgshift.schema.model import qident

_EPOCH_SCALE = {"epoch_s": 1, "epoch_ms": 1000, "epoch_us": 1000000}


def pg_expr(conversion: str, column: str) -> str:
    """PostgreSQL SQL giving the canonical text of one column (NULL stays NULL)."""
    c = qident(column)
    if conversion in ("int", "text", "json", "numeric", "uuid"):
        return f"{c}::text"
    if conversion == "float":
        return f"encode(float8send({c}), 'hex')"
    if conversion == "bytea":
        return f"encode({c}, 'hex')"
    if conversion == "bool":
        return f"CASE WHEN {c} THEN 't' WHEN NOT {c} THEN 'f' END"
    if conversion in _EPOCH_SCALE:
        return f"(extract(epoch FROM {c}) * {_EPOCH_SCALE[conversion]})::bigint::text"
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
    """SQL concatenating canonical column texts with NULL markers and lengths."""
    pieces = [f"CASE WHEN ({p}) IS NULL THEN 'N' ELSE 'V' || length({p}) || ':' || ({p}) END"
              for p in parts]
    return " || ".join(pieces) if pieces else "''"


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
    if isinstance(v, float):
        return format(Decimal(repr(v)), "f") if v == v and abs(v) != float("inf") else \
            ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, int):
        return str(v)
    try:
        d = Decimal(_text(v).strip())
    except ArithmeticError:
        return "!" + _text(v)
    return format(d, "f") if d != 0 else ("0" + (format(d, "f")[1:] if "." in str(d) else ""))


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


def _json_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif o < 0x20:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


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


def _temporal(conversion: str) -> Callable[[object], str]:
    def canon(v: object) -> str:
        try:
            rendered = cv.convert(conversion, v)
        except cv.Reject:
            return "!" + _text(v)
        if conversion == "date_text":
            return rendered
        if conversion == "time_text":
            hh_mm_ss, _, frac = (rendered + ":00" if len(rendered) == 5 else rendered) \
                .partition(".")
            return f"{hh_mm_ss}.{(frac + '000000')[:6]}"
        text = rendered.replace("T", " ")
        moment = dt.datetime.fromisoformat(text.replace("+00", "+00:00")
                                           if text.endswith("+00") else text)
        if moment.tzinfo is not None:
            moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f").rjust(26, "0")

    return canon


CANON: dict[str, Callable[[object], str]] = {
    "int": _text, "text": _text, "float": _float, "numeric": _numeric, "json": _json,
    "bytea": _bytea, "bool": _bool, "uuid": _uuid,
    "epoch_s": _text, "epoch_ms": _text, "epoch_us": _text,
    "ts_text": _temporal("ts_text"), "tstz_text": _temporal("tstz_text"),
    "date_text": _temporal("date_text"), "time_text": _temporal("time_text"),
}


def row_text(conversions: list[str], values: tuple[object, ...]) -> str:
    """The canonical encoding of one SQLite row (must equal pg_row_text's output)."""
    out = []
    for conv, v in zip(conversions, values, strict=True):
        if v is None:
            out.append("N")
        else:
            s = CANON[conv](v)
            out.append(f"V{len(s)}:{s}")
    return "".join(out)


def row_hash(text: str) -> int:
    """Signed 64-bit prefix of the md5 of a row's canonical text."""
    return int.from_bytes(hashlib.md5(text.encode("utf-8", "surrogateescape")).digest()[:8],
                          "big", signed=True)
