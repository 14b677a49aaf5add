"""Split tables into key ranges that every worker and every resume agree on.

Rowid tables are cut by rowid (the table b-tree's own order, so each chunk is
one contiguous range scan); WITHOUT ROWID tables by their primary key. Each
boundary is found by stepping ``batch`` keys past the previous one, so the
whole plan costs one pass over the key order, and the boundaries are stored
in the target so a resumed run reuses them exactly.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from pgshift.source.catalog import SourceTable


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def key_columns(table: SourceTable) -> list[str]:
    """The columns chunks are cut on."""
    return list(table.primary_key) if table.without_rowid else ["rowid"]


def _key_expr(cols: list[str]) -> str:
    return cols[0] if cols == ["rowid"] else ", ".join(q(c) for c in cols)


def _row(cols: list[str]) -> str:
    e = _key_expr(cols)
    return e if len(cols) == 1 else f"({e})"


def _params(cols: list[str]) -> str:
    return "?" if len(cols) == 1 else "(" + ", ".join("?" for _ in cols) + ")"


@dataclass(frozen=True)
class Chunk:
    """Rows with lo < key <= hi (None: unbounded)."""

    table: str
    no: int
    key: tuple[str, ...]
    lo: tuple[Any, ...] | None
    hi: tuple[Any, ...] | None

    def where(self) -> tuple[str, list[Any]]:
        """SQL predicate and parameters selecting this chunk's rows."""
        cols = list(self.key)
        parts: list[str] = []
        params: list[Any] = []
        if self.lo is not None:
            parts.append(f"{_row(cols)} > {_params(cols)}")
            params.extend(self.lo)
        if self.hi is not None:
            parts.append(f"{_row(cols)} <= {_params(cols)}")
            params.extend(self.hi)
        return (" AND ".join(parts) or "1"), params


def plan_chunks(con: sqlite3.Connection, table: SourceTable, batch: int,
                from_sql: str | None = None) -> list[Chunk]:
    """Boundaries every ``batch`` keys; the last chunk is open-ended.

    ``from_sql`` reads another relation than ``table.name`` (a materialized query).
    """
    cols = key_columns(table)
    expr = _key_expr(cols)
    bounds: list[tuple[Any, ...]] = []
    prev: tuple[Any, ...] | None = None
    while True:
        where = f"WHERE {_row(cols)} > {_params(cols)}" if prev is not None else ""
        row = con.execute(
            f"SELECT {expr} FROM {from_sql or q(table.name)} {where} ORDER BY {expr} "
            "LIMIT 1 OFFSET ?",
            [*(prev or ()), batch - 1],
        ).fetchone()
        if row is None:
            break
        prev = tuple(row)
        bounds.append(prev)
    chunks = []
    lo: tuple[Any, ...] | None = None
    for i, hi in enumerate(bounds):
        chunks.append(Chunk(table.name, i, tuple(cols), lo, hi))
        lo = hi
    chunks.append(Chunk(table.name, len(bounds), tuple(cols), lo, None))
    return chunks


def encode_bound(bound: tuple[Any, ...] | None) -> list[Any] | None:
    """JSON form of a boundary (blobs as {"$hex": ...})."""
    if bound is None:
        return None
    return [{"$hex": v.hex()} if isinstance(v, bytes) else v for v in bound]


def decode_bound(raw: list[Any] | None) -> tuple[Any, ...] | None:
    if raw is None:
        return None
    return tuple(bytes.fromhex(v["$hex"]) if isinstance(v, dict) else v for v in raw)
