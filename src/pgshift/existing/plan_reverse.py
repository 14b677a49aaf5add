"""Tables ``pgshift sync`` carries back to SQLite: their ``key:`` and ``reverse:``
checked before any row moves, and the reverse conversions that lose information.
"""

from __future__ import annotations

import psycopg

from pgshift.copy.convert import split_zone
from pgshift.existing.plan_model import (
    ErrorList,
    MappedPlan,
    MappedTable,
    find_name,
    plan_error,
    q,
)
from pgshift.schema.model import Note


def check_reverse(pg: psycopg.Connection, plan: MappedPlan) -> None:
    """Tables sync carries back: the key pairs and a compilable reverse for every column."""
    errors = ErrorList()
    for mt in plan.tables:
        errors.attempt(lambda mt=mt: check_reverse_table(pg, plan.schema, mt))  # type: ignore[misc]
    errors.raise_if_any()


def check_reverse_table(pg: psycopg.Connection, schema: str, mt: MappedTable) -> None:
    """One synced table's ``key:`` and ``reverse:`` (the first problem found)."""
    tm = mt.map
    if tm is None or not tm.sync:
        return
    if mt.source is None:
        raise plan_error(mt.name, None, "`sync: true` needs `from:` a SQLite table (rows of "
                         "a query cannot be carried back)")
    src_cols = [c.name for c in mt.source.columns if not c.generated]
    for s_key, t_key in tm.key.items():
        if find_name(mt.source.primary_key, s_key) is None:
            raise plan_error(mt.name, None, f"`key:` {s_key!r} is not in the primary key of "
                             f"{mt.source.name} ({', '.join(mt.source.primary_key)})")
        if mt.target.column(t_key) is None:
            raise plan_error(mt.name, t_key, "`key:` names no column of the target table")
    missing = [k for k in mt.source.primary_key if find_name(list(tm.key), k) is None]
    if missing:
        raise plan_error(mt.name, None, f"`key:` must pair every key column of "
                         f"{mt.source.name}; missing {', '.join(missing)}")
    for name in tm.reverse:
        if find_name(src_cols, name) is None:
            raise plan_error(mt.name, None, f"`reverse:` {name!r} is not a column of "
                             f"{mt.source.name}")
    lacking = [c for c in src_cols if find_name(list(tm.reverse), c) is None]
    if lacking:
        raise plan_error(mt.name, None, f"`reverse:` lacks source column(s) "
                         f"{', '.join(lacking)}", hint="give each source column a "
                         "PostgreSQL expression over the target row (docs/mapping.md)")
    rel = f'"{schema}".{q(mt.name)}'
    for name, expr in tm.reverse.items():
        try:
            with pg.transaction():
                pg.execute(f"SELECT ({expr}) FROM {rel} LIMIT 0")
        except psycopg.Error as exc:
            raise plan_error(mt.name, None, f"`reverse:` {name}: invalid PostgreSQL "
                             f"expression {expr!r}: {exc.diag.message_primary}") from exc


_LOSSY = {
    "epoch_s": "timestamptz keeps microseconds; reverse to epoch seconds drops sub-seconds",
    "epoch_ms": "timestamptz keeps microseconds; reverse to epoch milliseconds drops the rest",
    "numeric": "numeric -> REAL keeps about 15 significant digits",
    "json": "jsonb -> text normalizes spacing and key order; verify compares by value",
}


def reverse_notes(mt: MappedTable) -> list[Note]:
    """Warnings for reverse conversions that lose information (sync back to SQLite)."""
    notes = []
    for c in mt.columns:
        lossy = _LOSSY.get(split_zone(c.conversion)[0])
        if lossy:
            notes.append(Note("warning", f"{mt.name}.{c.target.name}",
                              f"reverse conversion may lose information: {lossy}"))
    return notes
