"""The storage classes each chunk really holds, checked against the plan as it is rendered.

The plan of a fresh load is made from a sample of each table
(``source.profile.sample_tables``); the copy scan computes the exact profile of
every chunk in the same SQLite pass that renders it (``TableSql.scan``). The
plan's profile-derived shortcuts are only valid for a chunk whose values the
sample's figures cover: a column the plan proved *clean* renders without its
suspect predicate, a column without NULLs without its NULL test, a column
without NUL bytes without the NUL test. A chunk that holds anything else
**contradicts** the plan and is rendered again with every check on
(:func:`cautious`), so each value still goes the converting path or becomes a
reject, never a silently wrong field. Whether the whole table's decisions
(types, conversions) still hold is checked once all its chunks are in
(``migrate.fresh_copy``): a table whose merged profile chooses otherwise is
re-planned and copied again.
"""

from __future__ import annotations

from dataclasses import replace

from pgshift.copy.convert import is_clean
from pgshift.schema.model import Table
from pgshift.source.profile import ColumnProfile, TableProfile


def cautious(table: Table) -> Table:
    """``table`` with no profile shortcut: every per-row check of the fast form on."""
    columns = [replace(c, clean=False, nulls=max(c.nulls, 1), nul_texts=max(c.nul_texts, 1))
               for c in table.columns]
    return replace(table, columns=columns)


def contradicts(table: Table, chunk: TableProfile) -> list[str]:
    """The columns whose values in ``chunk`` break a shortcut the plan took ([] if none)."""
    out = []
    for c in table.copy_columns:
        cp = chunk.columns.get(c.name, ColumnProfile())
        shortcut_broken = (
            (c.clean and not is_clean(c.decision.conversion, set(cp.classes),
                                      int_min=cp.int_min, int_max=cp.int_max,
                                      bool_ints=cp.bool_ints, integers=cp.integers))
            or (c.nulls == 0 and cp.nulls > 0)
            or (c.nul_texts == 0 and cp.nul_texts > 0))
        if shortcut_broken:
            out.append(c.name)
    return out


__all__ = ["cautious", "contradicts"]
