"""Storage-class profile: what each column really holds.

SQLite's declared types are hints (type affinity), not constraints, so the
type choice is made from the data: one pass per table counts each column's
``typeof`` classes plus the few figures the type map needs (integer range for
epoch-unit detection, date-text shapes, boolean spellings).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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
    real_nonfinite: int = 0  # +-Infinity (SQLite stores NaN as NULL)
    real_abs_max: float | None = None
    date_texts: int = 0  # text matching a date or datetime shape
    datetime_texts: int = 0  # of those, with a time part
    offset_texts: int = 0  # of those, with a UTC offset or Z
    bool_texts: int = 0  # text spelled like a boolean
    bool_ints: int = 0  # integers 0 or 1

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


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column_aggregates(col: str) -> list[str]:
    c = _q(col)
    t = f"typeof({c})"
    text = f"{t} = 'text'"
    offsets = " OR ".join(f"{c} GLOB '{g}'" for g in OFFSET_GLOBS)
    bools = ", ".join(f"'{b}'" for b in BOOL_TEXTS)
    return [
        f"sum({t} = 'null')",
        f"sum({t} = 'integer')",
        f"sum({t} = 'real')",
        f"sum({text})",
        f"sum({t} = 'blob')",
        f"min(CASE WHEN {t} = 'integer' THEN {c} END)",
        f"max(CASE WHEN {t} = 'integer' THEN {c} END)",
        f"sum({t} = 'real' AND abs({c}) > 1.7976931348623157e308)",
        f"max(CASE WHEN {t} = 'real' THEN abs({c}) END)",
        f"sum({text} AND {c} GLOB '{DATE_GLOB}*')",
        f"sum({text} AND {c} GLOB '{DATETIME_GLOB}')",
        f"sum({text} AND {c} GLOB '{DATE_GLOB}*' AND ({offsets}))",
        f"sum({text} AND lower({c}) IN ({bools}))",
        f"sum({t} = 'integer' AND {c} IN (0, 1))",
    ]


_FIELDS = ("nulls", "integers", "reals", "texts", "blobs", "int_min", "int_max",
           "real_nonfinite", "real_abs_max", "date_texts", "datetime_texts", "offset_texts",
           "bool_texts", "bool_ints")


def profile_table(con: sqlite3.Connection, table: SourceTable) -> TableProfile:
    """Profile every column of ``table`` (generated ones too) in one scan."""
    cols = [c.name for c in table.columns]
    exprs = ["count(*)"]
    for col in cols:
        exprs.extend(_column_aggregates(col))
    row = con.execute(f"SELECT {', '.join(exprs)} FROM {_q(table.name)}").fetchone()
    prof = TableProfile(table.name, row[0] or 0)
    width = len(_FIELDS)
    for i, col in enumerate(cols):
        values = row[1 + i * width : 1 + (i + 1) * width]
        cp = ColumnProfile()
        for name, value in zip(_FIELDS, values, strict=True):
            if value is not None:
                setattr(cp, name, value)
        prof.columns[col] = cp
    return prof


def profile_tables(
    open_connection: Callable[[], sqlite3.Connection],
    tables: list[SourceTable],
    jobs: int = 2,
) -> dict[str, TableProfile]:
    """Profile tables in parallel; sqlite3 releases the GIL while it scans."""

    def work(table: SourceTable) -> TableProfile:
        con = open_connection()
        try:
            return profile_table(con, table)
        finally:
            con.close()

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return {p.table: p for p in pool.map(work, tables)}
