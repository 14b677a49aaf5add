"""What each mapped expression yields over the source rows (storage classes, NULLs,
integer ranges, offset-free texts), measured in as few SQLite passes as possible.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from pgshift.existing.plan_convert import BY_BASE, CLASSES, TEMPORAL
from pgshift.existing.plan_model import MappedColumn, MappedTable, plan_error, q
from pgshift.source.profile import TableProfile, declared_family

Figures = dict[int, dict[str, Any]]
_SUMMED = ("count", "no_offset", "nul_texts")
DISTINCT_KEYS = -1  # figures slot of a query's distinct base keys (profile_scan)
SPLIT_ROWS = 100_000  # tables above this are profiled in rowid ranges on several threads


def profile_ranges(con: sqlite3.Connection, mt: MappedTable, parts: int
                   ) -> list[tuple[str, list[int]]]:
    """Rowid ranges that split a big table (or materialized query) across threads."""
    if (mt.source is None and not mt.materialized) or parts < 2 \
            or (mt.source is not None and mt.source.without_rowid):
        return [("1", [])]
    lo, hi = con.execute(f"SELECT min(rowid), max(rowid) FROM "
                         f"{mt.from_sql(materialized=False)}").fetchone()
    if lo is None or hi - lo < SPLIT_ROWS:
        return [("1", [])]
    step = (hi - lo) // parts + 1
    return [("rowid >= ? AND rowid < ?", [lo + i * step, lo + (i + 1) * step])
            for i in range(parts)]


def mapped_aggregates(mt: MappedTable, cols: list[int], ref: Callable[[int], str]
                      ) -> tuple[list[str], list[tuple[int, str]]]:
    """The aggregates the plan needs of ``cols`` (``ref(i)``: column i's value in SQL).

    Per value only what the target type asks for is computed (measured: nine
    aggregates per column cost 8x the copy's own scan): the class range always,
    the integer range for temporal and integer targets, texts without a UTC offset
    for timestamptz, NUL bytes where the copy renders text with printf.
    """
    parts: list[str] = []
    slots: list[tuple[int, str]] = []
    for i in cols:
        e, base = ref(i), mt.columns[i].target.base
        wanted = {"count": f"count({e})", "lo": f"min(iif({e} IS NULL, NULL, typeof({e})))",
                  "hi": f"max(iif({e} IS NULL, NULL, typeof({e})))"}
        if base in TEMPORAL:
            wanted["int_min"] = f"min(iif(typeof({e}) = 'integer', {e}, NULL))"
            wanted["int_max"] = f"max(iif(typeof({e}) = 'integer', {e}, NULL))"
        if base == "timestamptz":
            wanted["no_offset"] = (f"sum(typeof({e}) = 'text' AND NOT (substr({e}, 11) GLOB "
                                   f"'*[+-]*' OR {e} GLOB '*[Zz]'))")
        if BY_BASE.get(base, "text") in ("text", "json", "uuid"):
            wanted["nul_texts"] = f"sum(typeof({e}) = 'text' AND instr({e}, char(0)) > 0)"
        for k, agg in wanted.items():
            parts.append(agg)
            slots.append((i, k))
    return parts, slots


def figures_of(slots: list[tuple[int, str]], values: Sequence[Any]) -> Figures:
    got: Figures = {}
    for (i, k), v in zip(slots, values, strict=True):
        got.setdefault(i, {})[k] = v
    return got


def inlined_expr(mt: MappedTable) -> Callable[[int], str]:
    """Column i's value as its expression itself (aggregates over the source table)."""
    return lambda i: f"({mt.columns[i].expr})"


def profile_scan(con: sqlite3.Connection, mt: MappedTable, part: str, params: list[int],
                 cols: list[int]) -> tuple[int, Figures]:
    """One pass over (a range of) the mapped rows: :func:`mapped_aggregates` of ``cols``.

    A query source keeping its base table's one-column key also counts the distinct
    keys in this pass (figures[DISTINCT_KEYS]): the rows it left out are then known
    without running the query again (measured at 200k jobs: an EXCEPT over a JOIN
    query costs 1.7 s, the same query scanned 1.1 s).
    """
    aggs, slots = mapped_aggregates(mt, cols, lambda i: f"c{i}")
    parts = ["count(*)", *aggs]
    extra: list[str] = []
    if mt.source is None and len(mt.base_key) == 1 and part == "1":
        extra.append(f"{q(mt.base_key[0])} AS _pgshift_key")
        parts.append("count(DISTINCT _pgshift_key)")
        slots = [*slots, (DISTINCT_KEYS, "distinct")]
    try:
        row = con.execute(f"SELECT {', '.join(parts)} FROM {mt.rows_sql(part, cols, extra)}",
                          params).fetchone()
    except sqlite3.Error as exc:
        raise plan_error(mt.name, None, f"reading the source failed: {exc}") from exc
    return int(row[0] or 0), figures_of(slots, row[1:])


def covered_by_source_profile(mt: MappedTable, c: MappedColumn) -> bool:
    """True when the base command's profile of the source column is all the plan needs.

    That profile is tuned for full scans (one class test per value); temporal
    targets need figures it does not take for every family (integer range, offsets),
    and expressions or ``where:`` filters change the values.
    """
    src = mt.profiled
    if src is None or mt.where or c.expr != q(c.origin):
        return False
    if c.target.base in TEMPORAL:
        # Integers need their range (asked for), texts into timestamptz their offsets.
        family = declared_family(src.column(c.origin).declared_type)
        return family == "integer"
    # It skips the NUL-byte test on numeric families; a text target renders such
    # a column's odd texts with printf, which would cut them at a NUL.
    family = declared_family(src.column(c.origin).declared_type)
    return not (BY_BASE.get(c.target.base, "text") in ("text", "json", "uuid")
                and family in ("integer", "real", "numeric"))


def apply_source_profile(mt: MappedTable, prof: TableProfile) -> None:
    """Fill the covered columns' profiles from the source table's profile."""
    mt.rows = prof.rows
    for c in mt.columns:
        if not covered_by_source_profile(mt, c):
            continue
        cp = prof.columns[c.origin]
        c.profile.nulls = cp.nulls
        c.profile.classes = {k: v for k, v in cp.classes.items() if k != "null"}
        c.profile.int_min, c.profile.int_max = cp.int_min, cp.int_max
        c.profile.nul_texts = cp.nul_texts


def apply_profile(con: sqlite3.Connection, mt: MappedTable,
                  scans: list[tuple[int, Figures]], cols: list[int]) -> None:
    """Merge the range scans into the profiles of ``cols`` (exact class counts if mixed)."""
    if scans:
        mt.rows = sum(n for n, _ in scans)
    mixed = []
    for i in cols:
        c = mt.columns[i]
        f: dict[str, Any] = {}
        for _, figures in scans:
            for k, v in figures.get(i, {}).items():
                old = f.get(k)
                if v is None or old is None:
                    f[k] = v if old is None else old
                elif k in _SUMMED:
                    f[k] = old + v
                else:
                    f[k] = min(old, v) if k in ("lo", "int_min") else max(old, v)
        p = c.profile
        non_null = int(f.get("count") or 0)
        p.nulls = mt.rows - non_null
        p.int_min, p.int_max = f.get("int_min"), f.get("int_max")
        p.no_offset, p.nul_texts = int(f.get("no_offset") or 0), int(f.get("nul_texts") or 0)
        if f.get("lo") is not None and f["lo"] == f["hi"]:
            p.classes = {str(f["lo"]): non_null}
        elif f.get("lo") is not None:
            mixed.append(i)
    if mixed:
        # Rare: a column holding several storage classes gets exact counts per class.
        exprs = [f"sum(typeof(c{i}) = '{k}')" for i in mixed for k in CLASSES]
        counts = con.execute(f"SELECT {', '.join(exprs)} FROM {mt.rows_sql(cols=mixed)}"
                             ).fetchone()
        for n, i in enumerate(mixed):
            values = counts[n * len(CLASSES):(n + 1) * len(CLASSES)]
            mt.columns[i].profile.classes = {k: int(v) for k, v in zip(CLASSES, values,
                                                                        strict=True) if v}

