"""Storage-class profile: what each column really holds.

SQLite's declared types are hints (type affinity), not constraints, so the
type choice is made from the data: one pass per table counts each column's
``typeof`` classes plus the few figures the type map needs (integer range for
epoch-unit detection, date-text shapes, boolean spellings).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pgshift.errors import UsageError
from pgshift.source.catalog import SourceTable

# The shapes SQLite's date functions produce, plus ISO 8601 with 'T' and offsets.
# GLOB is used because it is in every SQLite and evaluates in C.
DATE_GLOB = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]"
DATETIME_GLOB = DATE_GLOB + "[ T][0-2][0-9]:[0-5][0-9]*"
OFFSET_GLOBS = ("*[+-][0-2][0-9]:[0-5][0-9]", "*[+-][0-2][0-9][0-5][0-9]", "*[+-][0-2][0-9]", "*Z")
BOOL_TEXTS = ("true", "false", "t", "f", "yes", "no", "y", "n", "on", "off", "0", "1")


@dataclass
class ColumnProfile:
    """Counts of each storage class and the extra figures of one column."""

    nulls: int = 0
    integers: int = 0
    reals: int = 0
    texts: int = 0
    blobs: int = 0
    int_min: int | None = None
    int_max: int | None = None
    date_texts: int = 0  # text matching a date or datetime shape
    datetime_texts: int = 0  # of those, with a time part
    offset_texts: int = 0  # of those, with a UTC offset or Z
    bool_texts: int = 0  # text spelled like a boolean
    bool_ints: int = 0  # integers 0 or 1
    nul_texts: int = 0  # text values holding a NUL byte (SQLite's printf would cut them short)

    @property
    def non_null(self) -> int:
        return self.integers + self.reals + self.texts + self.blobs

    @property
    def classes(self) -> dict[str, int]:
        """Non-zero storage-class counts, for plans and reports."""
        named = {"integer": self.integers, "real": self.reals, "text": self.texts,
                 "blob": self.blobs, "null": self.nulls}
        return {k: v for k, v in named.items() if v}


@dataclass
class TableProfile:
    table: str
    rows: int
    columns: dict[str, ColumnProfile] = field(default_factory=dict)


def profiles_to_json(profiles: dict[str, TableProfile]) -> dict[str, Any]:
    """A JSON-ready copy of the profiles (kept in the target so verify can reuse them)."""
    return {name: {"rows": p.rows, "columns": {c: asdict(cp) for c, cp in p.columns.items()}}
            for name, p in profiles.items()}


def profiles_from_json(data: dict[str, Any]) -> dict[str, TableProfile]:
    """The inverse of profiles_to_json.

    A schema loaded ``--into-existing`` stores its mapped feeds instead, read by
    verify (:mod:`pgshift.existing.verify_plan`) and sync (:mod:`pgshift.sync.mapped`)
    before they get here; any other type-map consumer refuses them.
    """
    if "into_existing" in data:
        raise UsageError("this schema was loaded with migrate --into-existing: its stored "
                         "profile holds mapped feeds, not per-column type-map profiles",
                         hint="see docs/mapping.md#reverse--tables-sync-carries-back")
    return {name: TableProfile(name, int(d["rows"]),
                               {c: ColumnProfile(**cp) for c, cp in d["columns"].items()})
            for name, d in data.items()}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def declared_family(declared: str) -> str:
    """Classify a declared type name by SQLite's affinity rules plus common names."""
    t = declared.upper().strip()
    if not t:
        return "none"
    if t.startswith("BOOL"):
        return "boolean"
    if t == "DATE":
        return "date"
    if t.startswith("TIME") and not t.startswith("TIMESTAMP"):
        return "time"
    if "TIMESTAMPTZ" in t or "WITH TIME ZONE" in t:
        return "timestamptz"
    if "DATETIME" in t or t.startswith("TIMESTAMP"):
        return "timestamp"
    if t.startswith("JSON"):
        return "json"
    if t == "UUID":
        return "uuid"
    if "INT" in t:
        return "integer"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "text"
    if "BLOB" in t:
        return "blob"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "real"
    if t.startswith(("NUMERIC", "DECIMAL", "NUMBER", "MONEY")):
        return "numeric"
    return "numeric_affinity"


_TEMPORAL = ("date", "time", "timestamp", "timestamptz", "none")
_NEEDS_RANGE = ("date", "time", "timestamp", "timestamptz", "none", "real", "numeric_affinity",
                "blob")
# The storage class a declared type normally holds (SQLite's affinity converts to it).
_NATURAL_CLASS = {"integer": "integer", "boolean": "integer", "text": "text", "json": "text",
                  "uuid": "text", "blob": "blob", "real": "real"}
_CLASS_FIELD = {"integer": "integers", "real": "reals", "text": "texts", "blob": "blobs"}
_MERGE_MIN = ("int_min", "class_min")
_MERGE_MAX = ("int_max", "class_max")
# column -> aggregate name -> its value: counts and integer bounds are ints, the typeof
# bounds (class_min, class_max) text, and an aggregate over no rows NULL.
Figures = dict[str, dict[str, int | str | None]]
_PROFILE_FIELDS = ("int_min", "int_max", "date_texts", "datetime_texts", "offset_texts",
                   "bool_texts", "bool_ints", "nul_texts")


def _column_aggregates(col: str, family: str, *, int_range: bool = False) -> dict[str, str]:
    """Only the figures the type map reads for this family.

    The profile is a full scan, so every aggregate costs: storage classes are
    first read as min/max of typeof (exact counts follow from count() when a
    column holds one class; mixed columns get a second, per-column pass), and
    GLOBs run only on columns declared as dates (measured at scale 1,000,000:
    80 s with every figure on every column, 6 s with five typeof counts, less
    with min/max).
    """
    c = _q(col)
    t = f"typeof({c})"
    aggs = {"non_null": f"count({c})"}
    natural = _NATURAL_CLASS.get(family)
    if natural:
        # One test per value: anything but the declared family's own class. A column
        # that has some gets exact per-class counts in a second pass.
        aggs["others"] = f"sum({c} IS NOT NULL AND {t} != '{natural}')"
    else:
        aggs["class_min"] = f"min(nullif({t}, 'null'))"
        aggs["class_max"] = f"max(nullif({t}, 'null'))"
    if family not in ("integer", "real", "numeric"):
        aggs["nul_texts"] = f"sum(instr({c}, char(0)) > 0)"
    if family in _NEEDS_RANGE or int_range:
        aggs["int_min"] = f"min(CASE WHEN {t} = 'integer' THEN {c} END)"
        aggs["int_max"] = f"max(CASE WHEN {t} = 'integer' THEN {c} END)"
    if family in _TEMPORAL:
        text = f"{t} = 'text'"
        # Offsets are looked for after the date, or '2024-01-02' would read as '-02'.
        offsets = " OR ".join(f"substr({c}, 11) GLOB '{g}'" for g in OFFSET_GLOBS)
        aggs["date_texts"] = f"sum({text} AND {c} GLOB '{DATE_GLOB}*')"
        aggs["datetime_texts"] = f"sum({text} AND {c} GLOB '{DATETIME_GLOB}')"
        aggs["offset_texts"] = f"sum({text} AND {c} GLOB '{DATE_GLOB}*' AND ({offsets}))"
    if family == "boolean":
        bools = ", ".join(f"'{b}'" for b in BOOL_TEXTS)
        aggs["bool_texts"] = f"sum({t} = 'text' AND lower({c}) IN ({bools}))"
        aggs["bool_ints"] = f"sum({t} = 'integer' AND {c} IN (0, 1))"
    return aggs


def _slots(table: SourceTable, int_range: frozenset[str] = frozenset()
           ) -> tuple[list[str], list[tuple[str, str]]]:
    """The profile's aggregate expressions over ``table``'s columns and what each one is."""
    exprs: list[str] = []
    slots: list[tuple[str, str]] = []
    for col in table.columns:
        for name, agg in _column_aggregates(col.name, declared_family(col.declared_type),
                                            int_range=col.name in int_range).items():
            exprs.append(agg)
            slots.append((col.name, name))
    return exprs, slots


def _figures(table: SourceTable, slots: list[tuple[str, str]], values: Sequence[Any]) -> Figures:
    figures: Figures = {c.name: {} for c in table.columns}
    for (col_name, name), value in zip(slots, values, strict=True):
        figures[col_name][name] = value
    return figures


def _scan(con: sqlite3.Connection, table: SourceTable, where: str,
          params: list[object], int_range: frozenset[str] = frozenset(),
          extra: Sequence[str] = ()) -> tuple[int, Figures, list[Any]]:
    aggs, slots = _slots(table, int_range)
    exprs = ["count(*)", *aggs]
    row = con.execute(f"SELECT {', '.join([*exprs, *extra])} FROM {_q(table.name)} "
                      f"WHERE {where}", params).fetchone()
    figures = _figures(table, slots, row[1:len(exprs)])
    return int(row[0] or 0), figures, list(row[len(exprs):])


def _merge(parts: list[tuple[int, Figures]]) -> tuple[int, Figures]:
    rows = sum(p[0] for p in parts)
    merged: Figures = {}
    for _, figures in parts:
        for col, f in figures.items():
            m = merged.setdefault(col, {})
            for k, v in f.items():
                old = m.get(k)
                if v is None or old is None:
                    m[k] = v if old is None else old
                elif k in _MERGE_MIN:
                    m[k] = min(old, v)
                elif k in _MERGE_MAX:
                    m[k] = max(old, v)
                else:
                    m[k] = old + v  # type: ignore[operator]
    return rows, merged


def _ranges(con: sqlite3.Connection, table: SourceTable, parts: int) -> list[tuple[str, list]]:
    """Split a big rowid table into ``parts`` rowid ranges so it uses every core."""
    if table.without_rowid or parts < 2:
        return [("1", [])]
    lo, hi = con.execute(f"SELECT min(rowid), max(rowid) FROM {_q(table.name)}").fetchone()
    if lo is None or hi - lo < 100_000:
        return [("1", [])]
    step = (hi - lo) // parts + 1
    return [("rowid >= ? AND rowid < ?", [lo + i * step, lo + (i + 1) * step])
            for i in range(parts)]


def profile_tables(
    open_connection: Callable[[], sqlite3.Connection],
    tables: list[SourceTable],
    jobs: int = 2,
    int_ranges: dict[str, set[str]] | None = None,
) -> dict[str, TableProfile]:
    """Profile tables, large ones split by rowid range, on ``jobs`` threads.

    sqlite3 releases the GIL while it scans, so threads use every core.
    ``int_ranges`` asks for the integer range of more columns than the type map
    needs (``--into-existing`` checks epoch columns going into timestamps).
    """
    return profile_tables_with(open_connection, tables, jobs, int_ranges)[0]


def profile_tables_with(
    open_connection: Callable[[], sqlite3.Connection],
    tables: list[SourceTable],
    jobs: int = 2,
    int_ranges: dict[str, set[str]] | None = None,
    extra: dict[str, list[str]] | None = None,
) -> tuple[dict[str, TableProfile], dict[str, list[tuple[int, list[Any]]]]]:
    """:func:`profile_tables`, plus ``extra`` aggregates per table computed in the same pass.

    The second result gives, per table, each range's (rows, values of its ``extra``
    aggregates): ``--into-existing`` profiles its mapped expressions this way, since a
    second pass over a big table costs as much as the first.
    """
    con = open_connection()
    try:
        work = [(t, w, p) for t in tables for w, p in _ranges(con, t, jobs)]
    finally:
        con.close()

    def scan(item: tuple[SourceTable, str, list]) -> tuple[int, Figures, list[Any]]:
        c = open_connection()
        try:
            more = frozenset((int_ranges or {}).get(item[0].name, ()))
            return _scan(c, item[0], item[1], item[2], more, (extra or {}).get(item[0].name, ()))
        finally:
            c.close()

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(scan, work))
    out: dict[str, TableProfile] = {}
    extras: dict[str, list[tuple[int, list[Any]]]] = {}
    for t in tables:
        parts = [r for (tt, _, _), r in zip(work, results, strict=True) if tt is t]
        rows, merged = _merge([(n, f) for n, f, _ in parts])
        out[t.name] = _finish(open_connection, t, rows, merged)
        extras[t.name] = [(n, vals) for n, _, vals in parts]
    return out, extras


def profile_table(con: sqlite3.Connection, table: SourceTable) -> TableProfile:
    """Profile one table on an open connection (single scan, no threads)."""
    rows, figures, _ = _scan(con, table, "1", [])
    return _finish(lambda: con, table, rows, figures, close=False)


def _finish(open_connection: Callable[[], sqlite3.Connection], table: SourceTable, rows: int,
            merged: Figures, *, close: bool = True, where: str = "1",
            params: Sequence[Any] = ()) -> TableProfile:
    prof = TableProfile(table.name, rows)
    mixed = []
    for col in table.columns:
        f = merged.get(col.name, {})
        cp = ColumnProfile()
        for k, v in f.items():
            if v is not None and k in _PROFILE_FIELDS:
                setattr(cp, k, v)
        non_null = int(f.get("non_null") or 0)
        cp.nulls = rows - non_null
        if "others" in f:
            if not f["others"]:
                if non_null:
                    natural = _NATURAL_CLASS[declared_family(col.declared_type)]
                    setattr(cp, _CLASS_FIELD[natural], non_null)
            else:
                mixed.append(col.name)
        else:
            lo, hi = f.get("class_min"), f.get("class_max")
            if lo is not None and lo == hi:
                setattr(cp, _CLASS_FIELD[str(lo)], non_null)
            elif lo is not None:
                mixed.append(col.name)
        prof.columns[col.name] = cp
    if mixed:
        # Rare: a column holding several storage classes gets exact counts per class.
        exprs = [f"sum(typeof({_q(name)}) = '{k}')" for name in mixed for k in _CLASS_FIELD]
        con = open_connection()
        try:
            row = con.execute(f"SELECT {', '.join(exprs)} FROM {_q(table.name)} "
                              f"WHERE {where}", list(params)).fetchone()
        finally:
            if close:
                con.close()
        for i, name in enumerate(mixed):
            for j, field_name in enumerate(_CLASS_FIELD.values()):
                setattr(prof.columns[name], field_name, int(row[i * 4 + j] or 0))
    return prof


# ---------------------------------------------------------------- the profile folded into the copy

SAMPLE_ROWS = 20_000
"""Rows a sampled profile reads per table (in ``SAMPLE_SLICES`` slices spread over the rowids)."""
SAMPLE_SLICES = 8


@dataclass(frozen=True)
class ScanProfile:
    """The profile's aggregates of one table, to be computed by another scan (the copy's).

    ``exprs`` go into that scan's SELECT over the table's rows; :meth:`read` turns
    their values, for rows ``where``, into the same :class:`TableProfile` a
    profile scan of those rows gives. Columns with a natural storage class are
    checked by two combined tests (any value of another class, NULL in a NOT
    NULL column included; any text with a NUL byte) instead of a few aggregates
    each: in the copy scan every aggregate is paid per row, and the common
    answer is "none". When a test finds something, the rows are profiled again
    exactly (rare).
    """

    table: SourceTable
    exprs: tuple[str, ...]
    slots: tuple[tuple[str, str], ...]
    natural: tuple[tuple[str, bool, bool], ...]  # (column, declared NOT NULL, NUL-tested)

    @classmethod
    def of(cls, table: SourceTable) -> ScanProfile:
        """The aggregates the type map reads for ``table``."""
        exprs: list[str] = []
        slots: list[tuple[str, str]] = []
        natural: list[tuple[str, bool, bool]] = []
        other_class: list[str] = []
        nul: list[str] = []
        for col in table.columns:
            family = declared_family(col.declared_type)
            aggs = _column_aggregates(col.name, family)
            cls_name = _NATURAL_CLASS.get(family)
            if cls_name:
                c = _q(col.name)
                del aggs["others"]
                if col.notnull:  # typeof(NULL) is 'null': a NULL counts as another class
                    del aggs["non_null"]
                    other_class.append(f"typeof({c}) != '{cls_name}'")
                else:
                    other_class.append(f"({c} IS NOT NULL AND typeof({c}) != '{cls_name}')")
                tested = aggs.pop("nul_texts", None) is not None
                if tested:
                    nul.append(f"instr({c}, char(0)) > 0")
                natural.append((col.name, col.notnull, tested))
            for name, agg in aggs.items():
                exprs.append(agg)
                slots.append((col.name, name))
        exprs.append(f"sum({' OR '.join(other_class)})" if other_class else "0")
        exprs.append(f"sum({' OR '.join(nul)})" if nul else "0")
        return cls(table, tuple(exprs), tuple(slots), tuple(natural))

    def read(self, con: sqlite3.Connection, rows: int, values: Sequence[Any], where: str,
             params: Sequence[Any]) -> TableProfile:
        """The profile of the ``rows`` rows ``where`` selects, from the aggregates' values."""
        *own, other_class, nul = _decoded(values)
        if other_class or nul:
            _, exact, _ = _scan(con, self.table, where, list(params))
            figures = {col: dict(zip(f, _decoded(f.values()), strict=True))
                       for col, f in exact.items()}
        else:
            figures = _figures(self.table, list(self.slots), own)
            for name, notnull, tested in self.natural:
                figures[name]["others"] = 0
                if notnull:
                    figures[name]["non_null"] = rows
                if tested:
                    figures[name]["nul_texts"] = 0
        return _finish(lambda: con, self.table, rows, figures, close=False, where=where,
                       params=params)


def _decoded(values: Iterable[Any]) -> list[Any]:
    # A copy connection reads text as bytes (typeof's names included).
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def merge_profiles(name: str, parts: Sequence[TableProfile]) -> TableProfile:
    """One table's profile from the profiles of disjoint parts of it (e.g. its chunks)."""
    out = TableProfile(name, sum(p.rows for p in parts))
    for part in parts:
        for col, cp in part.columns.items():
            m = out.columns.setdefault(col, ColumnProfile())
            for f in fields(ColumnProfile):
                old, new = getattr(m, f.name), getattr(cp, f.name)
                if f.name == "int_min":
                    m.int_min = new if old is None else old if new is None else min(old, new)
                elif f.name == "int_max":
                    m.int_max = new if old is None else old if new is None else max(old, new)
                else:
                    setattr(m, f.name, old + new)
    return out


def sample_tables(open_connection: Callable[[], sqlite3.Connection], tables: list[SourceTable],
                  jobs: int = 2, rows: int = SAMPLE_ROWS) -> tuple[dict[str, TableProfile],
                                                                  dict[str, int]]:
    """A profile of a sample of each table, and each table's exact row count.

    The copy scan profiles every chunk it renders (:class:`ScanProfile`), so the
    plan made from these samples is checked against every row before the run
    ends; the sample only has to make the first guess right in the common case.
    Rowid tables are sampled in slices spread over their rowid span (index
    seeks, not a scan); WITHOUT ROWID tables by their first rows in key order.
    """

    def one(table: SourceTable) -> tuple[TableProfile, int]:
        con = open_connection()
        try:
            count = int(con.execute(f"SELECT count(*) FROM {_q(table.name)}").fetchone()[0])
            parts = []
            for where, params in _sample_ranges(con, table, count, rows):
                n, figures, _ = _scan(con, table, where, params)
                # Per slice, so a mixed column's second pass reads the slice, not the table.
                parts.append(_finish(lambda: con, table, n, figures, close=False, where=where,
                                     params=params))
            return merge_profiles(table.name, parts), count
        finally:
            con.close()

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, tables))
    return ({t.name: p for t, (p, _) in zip(tables, results, strict=True)},
            {t.name: n for t, (_, n) in zip(tables, results, strict=True)})


def _sample_ranges(con: sqlite3.Connection, table: SourceTable, count: int,
                   rows: int) -> list[tuple[str, list[Any]]]:
    if count <= rows:
        return [("1", [])]
    if table.without_rowid:
        keys = ", ".join(_q(k) for k in table.primary_key)
        key_row = f"({keys})" if len(table.primary_key) > 1 else keys
        return [(f"{key_row} IN (SELECT {keys} FROM {_q(table.name)} ORDER BY {keys} "
                 f"LIMIT {int(rows)})", [])]
    lo, hi = con.execute(f"SELECT min(rowid), max(rowid) FROM {_q(table.name)}").fetchone()
    width = max(1, rows // SAMPLE_SLICES)
    step = max(width, (hi - lo + 1) // SAMPLE_SLICES)
    return [("rowid >= ? AND rowid < ?", [lo + i * step, lo + i * step + width])
            for i in range(SAMPLE_SLICES)]
