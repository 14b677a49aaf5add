"""Per mapped column: the conversion chosen by the target's real type and what the
source expression yields, and the values that will not convert (anomalies).

Nothing is guessed: integers into a timestamp need a declared epoch unit,
offset-free texts into ``timestamptz`` a declared zone; a pair no value of which
can convert is a plan error before any row moves.
"""

from __future__ import annotations

import re
import sqlite3
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pgshift.copy.convert import (
    Reject,
    convert,
    fast_sql,
    is_clean,
    raw_for_report,
    split_zone,
    with_scale,
    with_zone,
)
from pgshift.existing.mapping import ColumnMap
from pgshift.existing.plan_model import MappedColumn, MappedTable, plan_error
from pgshift.schema.model import Note
from pgshift.schema.typemap import epoch_unit

ANOMALY_SCAN = 20_000  # suspect values converted per column to count plan anomalies

# The SQLite storage classes each conversion can take at least some values of.
_COMPATIBLE = {
    "int": {"integer"}, "float": {"integer", "real"}, "numeric": {"integer", "real", "text"},
    "text": {"text", "integer", "real"}, "bool": {"integer", "text"},
    "json": {"text", "integer", "real"}, "uuid": {"text", "blob"}, "bytea": {"blob", "text"},
    "epoch_s": {"integer"}, "epoch_ms": {"integer"}, "epoch_us": {"integer"},
    "ts_text": {"text"}, "tstz_text": {"text"}, "date_text": {"text"}, "time_text": {"text"},
}
BY_BASE = {
    "int2": "int", "int4": "int", "int8": "int", "float4": "float", "float8": "float",
    "numeric": "numeric", "text": "text", "varchar": "text", "bpchar": "text", "citext": "text",
    "name": "text", "bool": "bool", "json": "json", "jsonb": "json", "uuid": "uuid",
    "bytea": "bytea", "time": "time_text", "timetz": "time_text",
}
TEMPORAL = {"timestamptz", "timestamp", "date"}
CLASSES = ("integer", "real", "text", "blob")


def choose_conversion(mt: MappedTable, c: MappedColumn, spec: ColumnMap | None,
                      file_tz: str | None, declared: str | None) -> None:
    """Pick the conversion by target type and what the expression yields; refuse guesses."""
    base, p = c.target.base, c.profile
    present = set(p.classes)
    unit = spec.convert if spec else None
    tz = (spec.assume_tz if spec else None) or (mt.map.assume_tz if mt.map else None) or file_tz
    if unit and base not in TEMPORAL:
        raise plan_error(mt.name, c.target.name, f"`convert: {unit}` needs a timestamp or date "
                         f"target, not {c.target.type}")
    if base in TEMPORAL:
        if unit:
            c.conversion = unit + ("_date" if base == "date" else "")
            c.reason = f"integer {unit.replace('epoch_', 'epoch ')} -> {c.target.type}"
        elif "integer" in present or (not present and declared == "integer"):
            guess = epoch_unit(p.int_min, p.int_max)
            raise plan_error(mt.name, c.target.name,
                             f"integer values into {c.target.type}: the epoch unit is not "
                             "declared (pgshift does not guess)",
                             hint=f"add `convert: {guess or 'epoch_s|epoch_ms|epoch_us'}` to "
                                  f"the column" + (" (the values look like it)" if guess else ""))
        elif base == "date":
            c.conversion, c.reason = "date_text", f"text date -> {c.target.type}"
        elif base == "timestamp":
            c.conversion, c.reason = "ts_text", f"text date-time -> {c.target.type}"
        else:
            if p.no_offset and not tz:
                raise plan_error(mt.name, c.target.name,
                                 f"{p.no_offset} text timestamp(s) without a UTC offset into "
                                 f"{c.target.type}: the zone is not declared (pgshift does "
                                 "not guess)", hint="set `assume_tz: UTC` (or your zone) for "
                                 "the file, the table or the column; or --assume-tz UTC")
            c.conversion = "tstz_text"
            if tz and tz.upper() not in ("UTC", "Z", "ETC/UTC"):
                try:
                    ZoneInfo(tz)
                    c.conversion = with_zone("tstz_text", tz)
                except (ValueError, ZoneInfoNotFoundError) as exc:
                    raise plan_error(mt.name, c.target.name, f"assume_tz {tz!r} is not a "
                                     "time zone name", hint="e.g. UTC, Europe/Berlin, "
                                     "America/New_York (IANA names)") from exc
            c.reason = "text date-time -> timestamptz" + (
                f" (offset-free texts read in {tz})" if tz and p.no_offset else "")
    elif base in BY_BASE:
        c.conversion = BY_BASE[base]
        c.reason = f"{'/'.join(sorted(present)) or declared or 'any'} -> {c.target.type}"
        scale = re.fullmatch(r"numeric\(\d+,\s*(\d+)\)", c.target.type)
        if scale:
            c.conversion = with_scale(int(scale.group(1)))
            c.reason += " (more decimals than the scale: rejects, never rounded)"
    else:
        c.conversion = "text"
        c.reason = f"text -> {c.target.type} (PostgreSQL parses the text)"
        if c.target.category == "A":
            c.reason += "; SQLite has no arrays: values must be PostgreSQL array literals"
    compatible = _COMPATIBLE.get(split_zone(c.conversion)[0].removesuffix("_date"), set())
    good = sum(n for k, n in p.classes.items() if k in compatible)
    bad = {k: n for k, n in p.classes.items() if k not in compatible}
    if (p.classes and not good) or (not p.classes and declared == "blob"
                                    and c.conversion not in ("bytea", "uuid", "text")):
        kinds = "/".join(sorted(bad)) if bad else "blob"
        if c.by_name:
            # The user wrote nothing for this column: say where the feed came from.
            col = c.target.name
            fix = (f"`{col}: null` lets the {'identity' if c.target.sequence else 'default'} "
                   f"assign it: tables: {{{mt.name}: {{columns: {{{col}: null}}}}}}"
                   if c.target.has_default else f"map it to a SQLite expression yielding "
                   f"{c.target.type}: tables: {{{mt.name}: {{columns: {{{col}: ...}}}}}}")
            raise plan_error(mt.name, col, f"type mismatch: {kinds} values cannot become "
                             f"{c.target.type}: the mapping does not name this column, so it "
                             f"was matched by name to source column {c.origin!r}", hint=fix)
        raise plan_error(mt.name, c.target.name, f"type mismatch: {kinds} values cannot become "
                         f"{c.target.type} ({c.origin})",
                         hint="convert them in the mapping expression, or fix the target type")


def _suspect(conversion: str, column: str, *, json_check: bool = True) -> str:
    """Values of ``column`` that may not convert (JSON validity included if asked)."""
    _, suspect = fast_sql(conversion, column)
    if json_check and split_zone(conversion)[0] == "json":
        # The fast form leaves JSON validity to PostgreSQL; the plan counts it.
        suspect = f"({suspect}) OR (typeof({column}) = 'text' AND NOT json_valid({column}))"
    return suspect


def count_anomalies(con: sqlite3.Connection, mt: MappedTable, *, json_check: bool = True
                    ) -> None:
    """Count each column's suspect values and convert them to count future rejects.

    Columns the profile proves clean (copy.convert.is_clean: the storage classes
    and integer range every value of the conversion's fast form handles) need no
    scan; the others are counted in one pass, and only columns with suspects are
    read again for their values. ``json_check`` also validates JSON texts.
    """
    check: list[int] = []
    for i, c in enumerate(mt.columns):
        p, base = c.profile, split_zone(c.conversion)[0]
        json_texts = json_check and base == "json" and "text" in p.classes
        # bool is never proven clean here: the profile does not count 0/1 integers.
        clean = (c.conversion == base and base != "bool" and not p.nul_texts
                 and not json_texts
                 and is_clean(base, set(p.classes), int_min=p.int_min, int_max=p.int_max))
        if clean:
            c.suspects = 0
        else:
            check.append(i)
    if not check:
        return
    rows = mt.rows_sql(cols=check)
    preds = {i: _suspect(mt.columns[i].conversion, f"c{i}", json_check=json_check)
             for i in check}
    for i in check:
        if mt.columns[i].profile.nul_texts:  # texts PostgreSQL cannot store
            preds[i] = f"({preds[i]}) OR (typeof(c{i}) = 'text' AND instr(c{i}, char(0)) > 0)"
    try:
        counts = con.execute(f"SELECT {', '.join(f'sum({preds[i]})' for i in check)} "
                             f"FROM {rows}").fetchone()
    except sqlite3.Error as exc:
        raise plan_error(mt.name, None, f"reading the source failed: {exc}") from exc
    for i, n in zip(check, counts, strict=True):
        c = mt.columns[i]
        c.suspects = int(n or 0)
        if not c.suspects:
            continue
        try:
            values = con.execute(f"SELECT c{i} FROM {rows} WHERE {preds[i]} LIMIT ?",
                                 (ANOMALY_SCAN,)).fetchall()
        except sqlite3.Error as exc:
            raise plan_error(mt.name, c.target.name, f"reading the source failed: {exc}") from exc
        for (v,) in values:
            try:
                convert(c.conversion, v)
            except Reject as exc:
                c.rejects += 1
                if len(c.examples) < 3:
                    c.examples.append(f"{raw_for_report(v)[0]!s}: {exc}")


def anomaly_notes(mt: MappedTable) -> list[Note]:
    """Values that will be rejects, per column, with an example."""
    notes = []
    for c in mt.columns:
        if c.rejects:
            more = "" if c.suspects <= ANOMALY_SCAN else f" (of the first {ANOMALY_SCAN})"
            notes.append(Note("anomaly", f"{mt.name}.{c.target.name}",
                              f"{c.rejects} value(s){more} cannot become {c.target.type}: "
                              f"they will be rejects; e.g. {c.examples[0]}"))
        if c.profile.nulls and c.target.not_null:
            notes.append(Note("anomaly", f"{mt.name}.{c.target.name}",
                              f"{c.profile.nulls} NULL(s) into a NOT NULL column: those rows "
                              "will be rejects (use coalesce(...) in the mapping)"))
    return notes

