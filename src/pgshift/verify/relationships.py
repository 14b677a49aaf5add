"""Checks of a mapped load that do not trust the mapping (``verify`` after
``migrate --into-existing``).

The segment comparison proves PostgreSQL holds what the mapping's feeds yield;
a mapping's own mistake (a re-key ordered by the wrong column) is invisible to
it. Two checks look past the mapping, at the source's own structure:

- **links**: for each foreign key of the target whose child and parent tables
  were both loaded, every child row's mapped reference must equal the mapped key
  of the parent row its *source* row points at (through the source's foreign
  key, or the mapping's ``relationships:``). Since the rows are compared
  separately, this proves each loaded child points at the parent its source row
  pointed at.
- **source counts**: each feed's rows next to its base table's row count.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from pgshift.existing.target import TargetForeignKey, TargetTable
from pgshift.schema.model import qident as _q  # SQLite quotes identifiers the same way
from pgshift.source.catalog import Catalog, SourceTable
from pgshift.verify import canonical as cn

LINK_EXAMPLES = 5  # wrong links listed per foreign key


@dataclass
class LinkCheck:
    """One target foreign key checked against the source's own reference."""

    table: str
    constraint: str
    parent: str
    via: str  # the source reference used: "job_history.job_id -> jobs.id"
    rows: int = 0  # child rows checked
    wrong: int = 0  # child rows pointing elsewhere than their source row did
    orphans: int = 0  # child rows whose source parent was not loaded
    examples: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None  # why this key could not be checked

    @property
    def ok(self) -> bool:
        return not self.wrong

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "constraint": self.constraint, "parent": self.parent,
                "via": self.via, "rows": self.rows, "wrong": self.wrong,
                "orphans": self.orphans, "examples": self.examples, "skipped": self.skipped}


@dataclass
class SourceCount:
    """A feed's rows next to its base table's (the rows the mapping left out)."""

    table: str
    base: str | None
    base_rows: int | None
    rows: int

    def to_dict(self) -> dict[str, Any]:
        left = None if self.base_rows is None else self.base_rows - self.rows
        return {"table": self.table, "base": self.base, "base_rows": self.base_rows,
                "rows": self.rows, "left_out": left}


def _feed(t: dict[str, Any], sources: dict[str, SourceTable]
          ) -> tuple[str, str | None, list[str]]:
    """(FROM clause of the feed's own rows, its source table, the key linking them)."""
    if t["query"] is None:
        src = sources.get(t["source"])
        key = list(src.primary_key) if src is not None and src.without_rowid else ["rowid"]
        return f"main.{_q(t['source'])}", t["source"], key
    return f"temp.{_q('_pgshift_q_' + t['table'])}", t.get("base"), list(t.get("base_key") or [])


def _expr(t: dict[str, Any], column: str) -> str | None:
    return next((c["expr"] for c in t["columns"] if c["name"] == column), None)


def _conversion(t: dict[str, Any], column: str) -> str:
    return next(c["conversion"] for c in t["columns"] if c["name"] == column)


def _source_ref(child: dict[str, Any], fk: TargetForeignKey, src: SourceTable,
                parent_src: SourceTable) -> tuple[list[str], list[str]] | str:
    """(source child columns, source parent columns) of the reference, or why not."""
    declared = child.get("relationships") or {}
    spec = declared.get(", ".join(fk.columns)) or declared.get(",".join(fk.columns))
    if spec is not None:
        cols = [c.strip() for c in spec.split(",")]
        ref = next((f.ref_columns for f in src.foreign_keys
                    if f.ref_table.lower() == parent_src.name.lower()
                    and [c.lower() for c in f.columns] == [c.lower() for c in cols]), None)
        return cols, list(ref or parent_src.primary_key)
    found = [f for f in src.foreign_keys if f.ref_table.lower() == parent_src.name.lower()
             and len(f.columns) == len(fk.columns)]
    if len(found) != 1:
        return (f"{'no' if not found else 'several'} foreign key(s) of {src.name} reference "
                f"{parent_src.name}: declare `relationships: {{{', '.join(fk.columns)}: "
                "<source column>}` in the mapping")
    return list(found[0].columns), list(found[0].ref_columns or parent_src.primary_key)


def _rows_sql(t: dict[str, Any], frm: str, base: str, key: list[str], values: list[str],
              source_cols: list[str]) -> str:
    """A feed's rows: mapped ``values`` (v0..), their source row's ``source_cols`` (s0..).

    The mapped expressions read the feed's own rows (a table or the materialized
    query) in an inner select; the source columns come from the base table joined
    on its key, so a query's own output columns are never trusted for them.
    """
    where = f" WHERE ({t['where']})" if t["where"] else ""
    inner = ", ".join([*(f"({v}) AS v{i}" for i, v in enumerate(values)),
                       *(f"{_q(k) if k != 'rowid' else 'rowid'} AS k{i}"
                         for i, k in enumerate(key))])
    on = " AND ".join(f"b.{_q(k) if k != 'rowid' else 'rowid'} = f.k{i}"
                      for i, k in enumerate(key))
    cols = ", ".join([*(f"f.v{i} AS v{i}" for i in range(len(values))),
                      *(f"b.{_q(c) if c != 'rowid' else 'rowid'} AS s{i}"
                        for i, c in enumerate(source_cols)),
                      *(f"f.k{i} AS k{i}" for i in range(len(key)))])
    return (f"SELECT {cols} FROM (SELECT {inner} FROM {frm}{where}) AS f "
            f"JOIN main.{_q(str(base))} AS b ON {on}")


def check_links(con: sqlite3.Connection, feeds: list[dict[str, Any]],
                target: dict[str, TargetTable], catalog: Catalog) -> list[LinkCheck]:
    """Every target foreign key between two loaded tables, checked in SQLite."""
    by_table = {t["table"]: t for t in feeds}
    sources = {t.name: t for t in catalog.tables}
    cn.register(con)
    out: list[LinkCheck] = []
    for child in feeds:
        tt = target.get(child["table"])
        for fk in tt.foreign_keys if tt else []:
            parent = by_table.get(fk.parent)
            if parent is None:
                continue
            check = LinkCheck(child["table"], fk.name, fk.parent, "")
            out.append(check)
            c_from, c_base, c_key = _feed(child, sources)
            p_from, p_base, p_key = _feed(parent, sources)
            exprs = [_expr(child, c) for c in fk.columns]
            p_exprs = [_expr(parent, c) for c in fk.parent_columns]
            if not c_base or not p_base or not c_key or not p_key \
                    or c_base not in sources or p_base not in sources:
                check.skipped = ("a query source that does not keep its base table's key "
                                 "(set `base:` and select the key)")
                continue
            if None in exprs or None in p_exprs or not fk.parent_columns:
                check.skipped = "the reference or the parent key is not loaded from the source"
                continue
            ref = _source_ref(child, fk, sources[c_base], sources[p_base])
            if isinstance(ref, str):
                check.skipped = ref
                continue
            s_cols, p_cols = ref
            check.via = (f"{c_base}.{', '.join(s_cols)} -> {p_base}.{', '.join(p_cols)}")
            c_sql = _rows_sql(child, c_from, c_base, c_key, [str(e) for e in exprs],
                              [*s_cols, *_shown(sources[c_base])])
            p_sql = _rows_sql(parent, p_from, p_base, p_key, [str(e) for e in p_exprs], p_cols)
            _run_link(con, check, child, fk, c_sql, p_sql, _shown(sources[c_base]))
    return out


def _shown(src: SourceTable) -> list[str]:
    """The source key a wrong link is reported by."""
    return list(src.primary_key) or ["rowid"]


def _run_link(con: sqlite3.Connection, check: LinkCheck, child: dict[str, Any],
              fk: TargetForeignKey, c_sql: str, p_sql: str, shown: list[str]) -> None:
    """Count the child rows whose mapped reference differs from their source parent's key."""
    n = len(fk.columns)
    on = " AND ".join(f"p.s{i} = c.s{i}" for i in range(n))
    canon = [f"{cn.CANON_FN}('{_conversion(child, c)}', {{side}}.v{i})"
             for i, c in enumerate(fk.columns)]
    # Equal raw values need no Python call; others may still mean the same value
    # (an integer and its text) once converted the way the load converted them.
    same = " AND ".join(f"(c.v{i} IS p.v{i} OR {x.format(side='c')} IS {x.format(side='p')})"
                        for i, x in enumerate(canon))
    src_set = " AND ".join(f"c.s{i} IS NOT NULL" for i in range(n))
    base = f"FROM ({c_sql}) AS c LEFT JOIN ({p_sql}) AS p ON {on}"
    rows, wrong, orphans = con.execute(
        f"SELECT count(*), coalesce(sum(NOT ({same})), 0), "
        f"coalesce(sum(p.s0 IS NULL AND {src_set}), 0) {base}").fetchone()
    check.rows, check.wrong, check.orphans = int(rows), int(wrong), int(orphans)
    if not check.wrong:
        return
    shown_cols = ", ".join(f"c.s{n + i}" for i in range(len(shown)))
    got = ", ".join(f"c.v{i}" for i in range(n))
    want = ", ".join(f"p.v{i}" for i in range(n))
    for row in con.execute(f"SELECT {shown_cols}, {got}, {want} {base} WHERE NOT ({same}) "
                           f"LIMIT {LINK_EXAMPLES}"):
        k = len(shown)
        check.examples.append({
            "source_key": dict(zip(shown, row[:k], strict=True)),
            "loaded": dict(zip(fk.columns, row[k:k + n], strict=True)),
            "expected": dict(zip(fk.columns, row[k + n:], strict=True))})


def source_counts(con: sqlite3.Connection, feeds: list[dict[str, Any]]) -> list[SourceCount]:
    """Each feed's row count next to its base table's."""
    out = []
    for t in feeds:
        rows = int(con.execute(f"SELECT count(*) FROM temp.{_q(t['table'])}").fetchone()[0])
        base = t["source"] if t["query"] is None else t.get("base")
        base_rows = None if base is None else int(
            con.execute(f"SELECT count(*) FROM main.{_q(base)}").fetchone()[0])
        out.append(SourceCount(t["table"], base, base_rows, rows))
    return out
