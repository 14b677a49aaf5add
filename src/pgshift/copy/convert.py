"""Value conversion into PostgreSQL's COPY CSV format, in two equivalent forms.

Fast form: a SQLite expression per column that renders the CSV field inside
SQLite (C speed, no Python object per value), plus a *suspect* predicate that
routes every value the expression cannot render faithfully to the slow form.
Slow form: a Python function per conversion that renders the same field or
raises Reject with a reason. The two must give PostgreSQL the same value for
every value the fast form accepts, though not always the same spelling
(``0.10000000000000001`` and ``0.1`` are one double; ``"5"`` and ``5`` one
text): tests/test_convert.py checks it with Hypothesis, bit-exact for floats.

PostgreSQL re-validates everything (UTF-8, NUL bytes, JSON, dates); a chunk
it refuses is re-run through the slow form and, failing that, bisected to
the offending rows (pgshift.copy.pipeline).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

# SQLite's printf('%!.17g') is exact (round-trips) for |x| below ~1e100; above
# that its long-double arithmetic loses the last digit (measured: 0 misses in
# 600k values below 1e100, 0.3% above). Larger magnitudes take the slow path.
FAST_FLOAT_MAX = 1e100
FAST_FLOAT_MIN = 1e-300
EPOCH_MAX_S = 253402300799  # 9999-12-31T23:59:59Z
_EPOCH_SCALE = {"epoch_s": 1, "epoch_ms": 1000, "epoch_us": 1000000}


class Reject(Exception):
    """A value that cannot be carried; the message is the reason the user reads."""


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _typeof_in(c: str, *classes: str) -> str:
    return f"typeof({c}) IN ({', '.join(repr(x) for x in classes)})"


@dataclass(frozen=True)
class FastField:
    """One CSV field rendered by SQLite's printf: a format piece and its argument.

    ``suspect`` selects the values this rendering may not handle (they take
    the slow form); None when the profile proves the column holds none.
    printf measured 2x faster than ``||`` chains (one output buffer instead of
    a copy per concatenation), and ``%w`` doubles double quotes: exactly
    CSV's escaping.
    """

    fmt: str
    arg: str
    suspect: str | None


# Conversions whose fast form is right for every value of these storage
# classes: when the profile shows nothing else, the per-row check is skipped
# (measured: the checks cost as much as rendering the row).
CLASS_SAFE = {
    "int": {"integer"}, "numeric": {"integer"}, "text": {"text", "integer"},
    "json": {"text", "integer"}, "bytea": {"blob", "text"},
}


# Epoch numbers into a `date` column: only midnights, or the time of day would be lost.
_EPOCH_DATE = {"epoch_s_date": "epoch_s", "epoch_ms_date": "epoch_ms",
               "epoch_us_date": "epoch_us"}
_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*")


def with_zone(conversion: str, zone: str) -> str:
    """``tstz_text`` reading offset-free texts as wall time in ``zone`` (``assume_tz``)."""
    if conversion != "tstz_text":
        raise ValueError(f"a zone applies to tstz_text only, not {conversion!r}")
    if not _ZONE_NAME.fullmatch(zone):
        raise ValueError(f"{zone!r} is not a time zone name")
    return f"{conversion}@{zone}"


def with_scale(scale: int) -> str:
    """``numeric`` into ``numeric(p, scale)``: more decimals would be rounded, so reject."""
    return f"numeric@{int(scale)}"


def split_zone(conversion: str) -> tuple[str, str | None]:
    """(base, parameter) of ``tstz_text@Zone`` or ``numeric@scale``; (conversion, None)."""
    base, sep, zone = conversion.partition("@")
    return (base, zone) if sep else (conversion, None)


def is_clean(conversion: str, classes: set[str], *, int_min: int | None = None,
             int_max: int | None = None, bool_ints: int = 0, integers: int = 0) -> bool:
    """True when the profile proves no value of the column needs the slow form."""
    classes = classes - {"null"}
    if conversion in CLASS_SAFE:
        return classes <= CLASS_SAFE[conversion]
    if conversion == "bool":
        return classes <= {"integer"} and bool_ints == integers
    if conversion in _EPOCH_SCALE and classes <= {"integer"}:
        if not classes:
            return True
        scale = _EPOCH_SCALE[conversion]
        return (int_min is not None and int_max is not None and int_min >= 0
                and int_max <= EPOCH_MAX_S * scale + scale - 1)
    return not classes


def fast_field(conversion: str, column: str, *, clean: bool = False,
               not_null: bool = False) -> FastField:
    """The fast rendering of one column; see FastField."""
    expr, suspect = fast_sql(conversion, column)
    c = q(column)
    check = None if clean else suspect
    if conversion in ("text", "json"):
        if not_null:
            return FastField('"%w"', c, check)
        return FastField("%s", f"""iif({c} IS NULL, NULL, printf('"%w"', {c}))""", check)
    return FastField("%s", expr, check)


def fast_sql(conversion: str, column: str) -> tuple[str, str]:
    """(field expression, suspect predicate) for one column in the fast form.

    The expression may assume the predicate is false; NULL renders as NULL,
    which printf's ``%s`` turns into the empty unquoted field (CSV's NULL).
    """
    c = q(column)
    base, zone = split_zone(conversion)
    if base == "numeric" and zone is not None:
        return fast_sql(base, column)  # reals and texts take the slow form, which checks scale
    if zone is not None:
        expr, suspect = fast_sql(base, column)
        # Offset-free shapes only (the suspect predicate): PostgreSQL reads the
        # appended zone name, daylight saving time included.
        return f"{expr} || ' {zone}'", suspect
    if conversion in _EPOCH_DATE:
        scale = _EPOCH_SCALE[_EPOCH_DATE[conversion]]
        ok = (f"({c} IS NULL OR (typeof({c}) = 'integer' AND {c} >= 0 AND "
              f"{c} <= {EPOCH_MAX_S * scale} AND {c} % {86400 * scale} = 0))")
        return f"date({c} / {scale}, 'unixepoch')", f"NOT {ok}"
    if conversion in ("int", "numeric"):
        return c, f"NOT {_typeof_in(c, 'integer', 'null')}"
    if conversion == "float":
        expr = f"CASE typeof({c}) WHEN 'real' THEN printf('%!.17g', {c}) ELSE {c} END"
        # No abs(): SQLite's abs(-2**63) raises "integer overflow" and would fail the
        # chunk. Zero takes the slow form too: printf drops the sign of -0.0.
        ok = (f"(typeof({c}) = 'null' OR (typeof({c}) = 'integer' AND "
              f"{c} BETWEEN -9007199254740992 AND 9007199254740992) OR (typeof({c}) = 'real' AND "
              f"{c} > -{FAST_FLOAT_MAX} AND {c} < {FAST_FLOAT_MAX} AND "
              f"({c} > {FAST_FLOAT_MIN} OR {c} < -{FAST_FLOAT_MIN})))")
        return expr, f"NOT {ok}"
    if conversion in ("text", "json"):
        return (f"""'"' || replace({c}, '"', '""') || '"'""",
                f"NOT {_typeof_in(c, 'text', 'integer', 'null')}")
    if conversion == "bytea":
        # hex(NULL) is '', so NULL must be caught before the prefix is added.
        return (f"CASE WHEN {c} IS NULL THEN NULL ELSE '\\x' || hex({c}) END",
                f"NOT {_typeof_in(c, 'blob', 'text', 'null')}")
    if conversion == "bool":
        return (f"CASE {c} WHEN 1 THEN 't' WHEN 0 THEN 'f' END",
                f"NOT ({c} IS NULL OR (typeof({c}) = 'integer' AND {c} IN (0, 1)))")
    if conversion == "uuid":
        shape = "-".join("[0-9a-f]" * n for n in (8, 4, 4, 4, 12))
        return c, f"NOT ({c} IS NULL OR (typeof({c}) = 'text' AND {c} GLOB '{shape}'))"
    if conversion in _EPOCH_SCALE:
        scale = _EPOCH_SCALE[conversion]
        base = (f"strftime('%Y-%m-%d %H:%M:%S', {c} / {scale}, 'unixepoch')" if scale > 1
                else f"strftime('%Y-%m-%d %H:%M:%S', {c}, 'unixepoch')")
        width = len(str(scale)) - 1
        frac = (f" || '.' || substr('{'0' * width}' || ({c} % {scale}), -{width}, {width})"
                if scale > 1 else "")
        ok = (f"({c} IS NULL OR (typeof({c}) = 'integer' AND {c} >= 0 AND "
              f"{c} <= {EPOCH_MAX_S * scale + scale - 1}))")
        return f"{base}{frac} || '+00'", f"NOT {ok}"
    if conversion in _TEXT_TEMPORAL_GLOBS:
        shapes = []
        for glob, frac_at, hour_at in _TEXT_TEMPORAL_GLOBS[conversion]:
            parts = [f"{c} GLOB '{glob}'"]
            if frac_at:  # the fraction must be all digits: no offset, no words
                parts.append(f"substr({c}, {frac_at}) NOT GLOB '*[^0-9]*'")
            if hour_at:  # hour 24 is next day's midnight to PostgreSQL, an error to us
                parts.append(f"substr({c}, {hour_at}, 2) < '24'")
            shapes.append("(" + " AND ".join(parts) + ")")
        ok = f"({c} IS NULL OR (typeof({c}) = 'text' AND ({' OR '.join(shapes)})))"
        return c, f"NOT {ok}"
    raise ValueError(f"unknown conversion {conversion!r}")


_D = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]"
_T = "[0-2][0-9]:[0-5][0-9]"
# Only exact, offset-free shapes go the fast way: for `timestamp` PostgreSQL
# would silently drop an offset, and words such as 'now' or 'PST' would be
# interpreted. Each entry: (GLOB, 1-based start of the fraction that must be
# all digits or 0, 1-based position of the hour or 0).
_TEXT_TEMPORAL_GLOBS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "ts_text": ((_D, 0, 0), (f"{_D} {_T}", 0, 12), (f"{_D} {_T}:[0-5][0-9]", 0, 12),
                (f"{_D} {_T}:[0-5][0-9].[0-9]*", 21, 12)),
    "date_text": ((_D, 0, 0),),
    "time_text": ((_T, 0, 1), (f"{_T}:[0-5][0-9]", 0, 1), (f"{_T}:[0-5][0-9].[0-9]*", 10, 1)),
}
_TEXT_TEMPORAL_GLOBS["tstz_text"] = _TEXT_TEMPORAL_GLOBS["ts_text"]


# ---------------------------------------------------------------- slow form


def csv_quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


class InvalidText(bytes):
    """A TEXT value that is not valid UTF-8, kept as its raw bytes (not a blob)."""


def _text_of(value: object, target: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, InvalidText):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Reject(f"invalid UTF-8 in text ({exc.reason} at byte {exc.start})") from exc
    raise Reject(f"{_kind(value)} value cannot become {target}")


def _check_text(text: str) -> str:
    if "\x00" in text:
        raise Reject("NUL byte (\\0) in text: PostgreSQL text cannot store it")
    return text


def float_text(x: float) -> str:
    """Shortest exact decimal of a double, with PostgreSQL's spelling of infinities."""
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if math.isnan(x):
        return "NaN"
    return repr(x)


def conv_int(v: object) -> str:
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        raise Reject(f"real value {float_text(v)} in an integer column")
    raise Reject(f"{_kind(v)} value in an integer column")


def conv_float(v: object) -> str:
    if isinstance(v, float):
        return float_text(v)
    if isinstance(v, int):
        if abs(v) > 2**53 and float(v) != v:
            raise Reject(f"integer {v} is not exact as double precision")
        return str(v)
    raise Reject(f"{_kind(v)} value in a floating-point column")


def conv_numeric(v: object) -> str:
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"  # numeric accepts these since PG 14
        return float_text(v)
    if isinstance(v, str) and re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", v):
        return v.strip()
    raise Reject(f"{_kind(v)} value is not a number")


def conv_text(v: object) -> str:
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return csv_quote(float_text(v))
    return csv_quote(_check_text(_text_of(v, "text")))


def conv_json(v: object) -> str:
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise Reject(f"{v} is not valid JSON")
        return float_text(v)
    text = _check_text(_text_of(v, "jsonb"))

    def no_constants(name: str) -> object:
        raise ValueError(f"{name} is not valid JSON")

    try:
        json.loads(text, parse_constant=no_constants)
    except ValueError as exc:
        raise Reject(f"invalid JSON: {exc}") from exc
    if "\\u0000" in text:
        raise Reject("JSON contains \\u0000, which jsonb cannot store")
    return csv_quote(text)


def conv_bytea(v: object) -> str:
    if isinstance(v, bytes):
        return "\\x" + v.hex().upper()
    if isinstance(v, str):
        return "\\x" + v.encode("utf-8", "surrogateescape").hex().upper()
    raise Reject(f"{_kind(v)} value in a binary column")


_BOOL_WORDS = {"1": True, "0": False, "true": True, "false": False, "t": True, "f": False,
               "yes": True, "no": False, "y": True, "n": False, "on": True, "off": False}


def conv_bool(v: object) -> str:
    if isinstance(v, int) and v in (0, 1):
        return "t" if v else "f"
    if isinstance(v, str) and v.strip().lower() in _BOOL_WORDS:
        return "t" if _BOOL_WORDS[v.strip().lower()] else "f"
    raise Reject(f"{_kind(v)} value {_short(v)} is not a boolean (0/1, true/false)")


def conv_uuid(v: object) -> str:
    if isinstance(v, bytes) and len(v) == 16:
        return str(uuid.UUID(bytes=v))
    text = _text_of(v, "uuid")
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError as exc:
        raise Reject(f"{_short(v)} is not a UUID") from exc


def _epoch(scale: int) -> Callable[[object], str]:
    def conv(v: object) -> str:
        if not isinstance(v, int):
            raise Reject(f"{_kind(v)} value in an epoch column")
        seconds, frac = divmod(v, scale)
        try:
            moment = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)
        except OverflowError as exc:
            raise Reject(f"epoch value {v} is out of the date range") from exc
        width = len(str(scale)) - 1
        text = moment.strftime("%Y-%m-%d %H:%M:%S").rjust(19, "0")
        if moment.year < 1000:
            text = f"{moment.year:04d}" + text[text.index("-"):]
        return text + (f".{frac:0{width}d}" if width else "") + "+00"

    return conv


_ISO = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[ T](?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?))?"
    r"(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?"
)
_TIME = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?")


def _parse_datetime(v: object, *, want_tz: bool) -> str:
    text = _text_of(v, "a timestamp").strip()
    m = _ISO.fullmatch(text)
    if not m:
        raise Reject(f"{_short(v)} is not a date/time SQLite or ISO 8601 writes")
    date, time_, tz = m.group("date"), m.group("time") or "00:00:00", m.group("tz")
    try:
        dt.date.fromisoformat(date)
        hh, mm = int(time_[:2]), int(time_[3:5])
        ss = float(time_[6:]) if len(time_) > 5 else 0.0
        if hh > 23 or mm > 59 or ss >= 60:
            raise ValueError("time out of range")
    except ValueError as exc:
        raise Reject(f"{_short(v)}: {exc}") from exc
    if not want_tz:
        if tz:
            raise Reject(f"{_short(v)} carries a UTC offset but the column is timestamp "
                         "without time zone")
        return f"{date} {time_}"
    if tz is None or tz == "Z":
        tz = "+00"
    return f"{date} {time_}{tz}"


def conv_ts(v: object) -> str:
    return _parse_datetime(v, want_tz=False)


def conv_tstz(v: object) -> str:
    return _parse_datetime(v, want_tz=True)


def conv_date(v: object) -> str:
    text = _text_of(v, "a date").strip()
    try:
        return dt.date.fromisoformat(text).isoformat() if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) \
            else _bad_date(v)
    except ValueError as exc:
        raise Reject(f"{_short(v)}: {exc}") from exc


def _bad_date(v: object) -> str:
    raise Reject(f"{_short(v)} is not a YYYY-MM-DD date")


def conv_time(v: object) -> str:
    text = _text_of(v, "a time").strip()
    if not _TIME.fullmatch(text):
        raise Reject(f"{_short(v)} is not a HH:MM[:SS[.fff]] time")
    return text


def _tstz_in(zone: str) -> Callable[[object], str]:
    def conv(v: object) -> str:
        text = conv_tstz(v)
        return text[:-3] + " " + zone if _parse_has_no_offset(v) else text

    return conv


def _numeric_in(scale: int) -> Callable[[object], str]:
    def conv(v: object) -> str:
        text = conv_numeric(v)
        mantissa, _, exp = text.lower().partition("e")
        decimals = len(mantissa.partition(".")[2].rstrip("0")) - (int(exp) if exp else 0)
        if decimals > scale and text not in ("Infinity", "-Infinity"):
            raise Reject(f"{_short(v)} has more than {scale} decimal(s): the column would "
                         "round it")
        return text

    return conv


def _parse_has_no_offset(v: object) -> bool:
    m = _ISO.fullmatch(_text_of(v, "a timestamp").strip())
    return m is not None and m.group("tz") is None


def _epoch_date(scale: int) -> Callable[[object], str]:
    def conv(v: object) -> str:
        if isinstance(v, int) and v % (86400 * scale):
            raise Reject(f"epoch value {v} has a time of day: a date column would drop it")
        return _epoch(scale)(v)[:10]

    return conv


SLOW: dict[str, Callable[[object], str]] = {
    "int": conv_int, "float": conv_float, "numeric": conv_numeric, "text": conv_text,
    "json": conv_json, "bytea": conv_bytea, "bool": conv_bool, "uuid": conv_uuid,
    "epoch_s": _epoch(1), "epoch_ms": _epoch(1000), "epoch_us": _epoch(1000000),
    "ts_text": conv_ts, "tstz_text": conv_tstz, "date_text": conv_date, "time_text": conv_time,
    "epoch_s_date": _epoch_date(1), "epoch_ms_date": _epoch_date(1000),
    "epoch_us_date": _epoch_date(1000000),
}


@functools.lru_cache(maxsize=64)
def converter(conversion: str) -> Callable[[object], str]:
    """The slow-form function of a conversion name (zoned names included)."""
    base, param = split_zone(conversion)
    if param is not None:
        return _numeric_in(int(param)) if base == "numeric" else _tstz_in(param)
    return SLOW[conversion]


def convert(conversion: str, value: object) -> str:
    """The CSV field for one value (slow form); raises Reject."""
    if value is None:
        return ""
    return converter(conversion)(value)


def _kind(v: object) -> str:
    names = {int: "integer", float: "real", str: "text", bytes: "blob"}
    return names.get(type(v), type(v).__name__)


def _short(v: object, limit: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def raw_for_report(value: object) -> tuple[str | None, str]:
    """(printable raw value, SQLite storage class) for rejects files and tables."""
    if value is None:
        return None, "null"
    if isinstance(value, InvalidText):
        return "\\x" + value.hex(), "text-invalid-utf8"
    if isinstance(value, bytes):
        return "\\x" + value.hex(), "blob"
    if isinstance(value, float):
        return float_text(value), "real"
    return str(value), _kind(value)
