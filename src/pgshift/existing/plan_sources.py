"""What the mapping leaves behind: source columns that feed nothing, and the rows of a
source table that a ``query:`` (or a ``where:``) leaves out.

Nothing is dropped without a word (docs/mapping.md): every unmapped column is
listed per table (an error with ``--strict`` unless the table's ``drop:``
acknowledges it), and every query source is reported next to its base table's
row count, with the keys of the rows it left out when it keeps the base key.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

from pgshift.errors import UsageError
from pgshift.existing.mapping import Mapping
from pgshift.existing.plan_model import SCRATCH, MappedTable, find_name, plan_error, q
from pgshift.schema.model import Note
from pgshift.source.catalog import Catalog, SourceColumn, SourceTable

LEFT_OUT_SAMPLE = 10  # keys of left-out rows listed per table


def columns_read(con: sqlite3.Connection, sql: str) -> set[tuple[str, str]]:
    """(table, column) pairs SQLite reads to run ``sql`` (prepared, not run).

    SQLite's authorizer reports every column a statement reads as it compiles it:
    exact for any expression, with no parser of ours guessing at SQL.
    """
    seen: set[tuple[str, str]] = set()

    def auth(action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
        if action == sqlite3.SQLITE_READ and arg1 and arg2:
            seen.add((arg1, arg2))
        return sqlite3.SQLITE_OK

    con.set_authorizer(auth)
    try:
        con.execute(f"SELECT * FROM ({sql}) LIMIT 0").fetchall()
    finally:
        con.set_authorizer(None)
    return seen


def feed_columns(con: sqlite3.Connection, mt: MappedTable) -> tuple[str, list[str], set[str]]:
    """(label, columns, columns used) of one feed's source: a table or a query's output.

    For a query, its output columns (what the mapped expressions can name) are
    copied into an empty TEMP table so that the authorizer names them.
    """
    exprs = ", ".join(f"({c.expr})" for c in mt.columns) or "1"
    where = f" WHERE ({mt.where})" if mt.where else ""
    if mt.source is not None:
        name = mt.source.name
        cols = [c.name for c in mt.source.columns if not c.generated]
        read = columns_read(con, f"SELECT {exprs} FROM {q(name)}{where}")
        return name, cols, {c for t, c in read if t == name}
    shape = "_pgshift_shape"
    con.execute(f"DROP TABLE IF EXISTS temp.{shape}")
    con.execute(f"CREATE TEMP TABLE {shape} AS SELECT * FROM ({mt.query}) LIMIT 0")
    try:
        cols = [r[1] for r in con.execute(f"PRAGMA temp.table_info({shape})")]
        read = columns_read(con, f"SELECT {exprs} FROM temp.{shape}{where}")
    finally:
        con.execute(f"DROP TABLE IF EXISTS temp.{shape}")
    return f"{mt.name} (query)", cols, {c for t, c in read if t == shape}


def unmapped_columns(con: sqlite3.Connection, tables: list[MappedTable], *, strict: bool
                     ) -> tuple[list[Note], list[UsageError]]:
    """Every source column that feeds no target column, listed per source table.

    A source table feeding several targets counts the columns any of them uses;
    ``drop: [...]`` acknowledges columns. With ``strict``, an unacknowledged one is
    a plan error naming the target table whose mapping should say so.
    """
    feeds: dict[str, tuple[list[str], set[str], list[MappedTable]]] = {}
    errors: list[UsageError] = []
    for mt in tables:
        label, cols, used = feed_columns(con, mt)
        entry = feeds.setdefault(label, (cols, set(), []))
        entry[1].update(used)
        entry[2].append(mt)
    notes: list[Note] = []
    for label, (cols, used, mts) in feeds.items():
        dropped: set[str] = set()
        for mt in mts:
            for name in mt.map.drop if mt.map else []:
                found = find_name(cols, name)
                if found is None:
                    errors.append(plan_error(mt.name, None, f"`drop:` {name!r} is not a column "
                                             f"of {label}"))
                else:
                    dropped.add(found)
        left = [c for c in cols if c not in used and c not in dropped]
        for mt in mts:
            mt.unmapped = left
            mt.dropped = sorted(dropped, key=cols.index)
        if not left:
            continue
        owner = mts[0].name
        listed = ", ".join(left)
        message = (f"not copied: {len(left)} source column(s) feed no target column: {listed}"
                   f" (map them, or acknowledge with `drop: [{listed}]` under tables.{owner})")
        if strict:
            errors.append(plan_error(owner, None, f"source column(s) of {label} feed nothing "
                                     f"(--strict): {listed}", hint=f"map them, or acknowledge "
                                     f"with `drop: [{listed}]` under tables.{owner}"))
        notes.append(Note("warning", label, message))
    return notes, errors


def query_base(query: str, catalog: Catalog) -> tuple[str | None, set[str], bool]:
    """(base table, its columns the query passes through by name, all of them via ``*``).

    The base is the first table of the outermost FROM. A column passes through when
    the select list names it bare or qualified by the base (optionally aliased to
    its own name); ``*`` or ``base.*`` pass all of them.
    """
    base, passed, star, _ = _query_shape(query, catalog)
    return base, passed, star


def _query_shape(query: str, catalog: Catalog) -> tuple[str | None, set[str], bool, bool]:
    """:func:`query_base`, plus True when the query is a plain SELECT over its base
    alone (no join, filter, grouping, DISTINCT or LIMIT): it yields every base row once."""
    try:
        tree = sqlglot.parse_one(query, read="sqlite")
    except sqlglot.errors.ParseError:
        return None, set(), False, False
    while isinstance(tree, exp.Subquery):
        tree = tree.this
    if not isinstance(tree, exp.Select):
        return None, set(), False, False
    frm = tree.args.get("from_") or tree.args.get("from")
    table = frm.this if frm is not None else None
    if not isinstance(table, exp.Table):
        return None, set(), False, False
    names = [t.name for t in catalog.tables]
    base = find_name(names, table.name)
    if base is None:
        return None, set(), False, False
    whole = not any(tree.args.get(k) for k in ("joins", "where", "group", "having", "limit",
                                               "distinct", "qualify", "with", "with_",
                                               "offset"))
    # An aggregate outside a window (count(*) without GROUP BY) folds the rows into one.
    whole = whole and not any(a.find_ancestor(exp.Window) is None
                              for a in tree.find_all(exp.AggFunc))
    alias = table.alias_or_name
    single = not tree.args.get("joins")
    passed: set[str] = set()
    star = False
    for p in tree.expressions:
        inner = p.this if isinstance(p, exp.Alias) else p
        if isinstance(p, exp.Star) or (isinstance(inner, exp.Column) and inner.is_star
                                       and (inner.table or alias) == alias):
            star = star or single or isinstance(inner, exp.Column)
            continue
        if isinstance(inner, exp.Column) and inner.table in ("", alias) \
                and (single or inner.table == alias) and p.alias_or_name == inner.name:
            passed.add(inner.name)
    return base, passed, star, whole


def resolve_base(con: sqlite3.Connection, mt: MappedTable, catalog: Catalog) -> None:
    """A feed's base table, its row count and (a query's) base key kept in its output.

    Cheap (a parse, a LIMIT 0 and a count), so it runs before the profile, whose
    pass over a query then counts the distinct base keys too.
    """
    if mt.source is not None:
        if mt.where:  # the filter says which rows stay: counts only
            mt.base = mt.source.name
            mt.base_rows = int(con.execute(f"SELECT count(*) FROM {q(mt.base)}").fetchone()[0])
        return
    assert mt.query is not None
    declared = mt.map.base if mt.map else None
    base, passed, star, whole = _query_shape(mt.query, catalog)
    if declared is not None:
        found = find_name([t.name for t in catalog.tables], declared)
        if found is None:
            raise plan_error(mt.name, None, f"`base:` {declared!r} is not a SQLite table")
        if found != base:
            passed, star, whole = set(), False, False
        base = found
    if base is None:
        return
    src = next(t for t in catalog.tables if t.name == base)
    mt.base = base
    mt.whole_base = whole
    mt.base_rows = int(con.execute(f"SELECT count(*) FROM {q(base)}").fetchone()[0])
    out_cols = [d[0] for d in con.execute(f"SELECT * FROM ({mt.query}) LIMIT 0").description]
    key = list(src.primary_key)
    if key and all((star or k in passed) and out_cols.count(k) == 1 for k in key):
        mt.base_key = key


def scratch_name(snapshot: str, mapping: Mapping) -> str:
    """The scratch file of a snapshot's query sources (their text in the name's hash)."""
    queries = "\n".join(f"{name}\n{t.query}" for name, t in sorted(mapping.tables.items())
                        if t.query)
    return f"scratch-{snapshot}-{hashlib.sha256(queries.encode()).hexdigest()[:12]}.db"


def materialize(con: sqlite3.Connection, scratch: Path, tables: list[MappedTable]) -> None:
    """Run each query source once into the scratch file (``CREATE TABLE ... AS``).

    The plan's scans then read plain tables, and the copy's chunks the same ones
    (measured at 200k jobs: the re-keying JOIN 1.5 s per scan over the query, 0.5 s
    to materialize and 0.4 s per scan of the result). The file is written under a
    temporary name and renamed when complete, so an existing one (a resumed run:
    same snapshot, same queries) is whole and is reused: its rowids are the ones the
    run's chunks were cut on.
    """
    queries = [t for t in tables if t.source is None]
    if not queries:
        return
    names = {r[0].lower() for r in con.execute("SELECT name FROM main.sqlite_master")}
    attached = any(r[1] == SCRATCH for r in con.execute("PRAGMA database_list"))
    if attached:
        have = {r[0] for r in con.execute(f"SELECT name FROM {SCRATCH}.sqlite_master")}
        if all(t.scratch_table in have for t in queries):
            for t in queries:
                t.materialized = True
                t.scratch_source = _scratch_table(con, t, names)
            return
        con.execute(f"DETACH DATABASE {SCRATCH}")
    part = scratch.with_name(scratch.name + ".part")
    part.unlink(missing_ok=True)
    con.execute(f"ATTACH DATABASE 'file:{part}?mode=rwc' AS {SCRATCH}")
    try:
        con.execute(f"PRAGMA {SCRATCH}.journal_mode = OFF")
        con.execute(f"PRAGMA {SCRATCH}.synchronous = OFF")
        for t in queries:
            try:
                con.execute(f"CREATE TABLE {SCRATCH}.{q(t.scratch_table)} AS {t.query}")
            except sqlite3.Error as exc:
                raise plan_error(t.name, None, f"the query failed: {exc}") from exc
        con.commit()
        for t in queries:
            t.materialized = True
            t.scratch_source = _scratch_table(con, t, names)
    finally:
        con.execute(f"DETACH DATABASE {SCRATCH}")
    part.replace(scratch)


def _scratch_table(con: sqlite3.Connection, t: MappedTable, names: set[str]
                   ) -> SourceTable | None:
    """The materialized query as a table the source profile can read (by its bare
    name, so not when the source has a table of that name)."""
    if t.scratch_table.lower() in names:
        return None
    info = con.execute(f"PRAGMA {SCRATCH}.table_info({q(t.scratch_table)})").fetchall()
    # A computed column (row_number() ...) has no declared type, and the profile then
    # tests every storage class (measured: +0.4 s per 200k rows for one such column).
    # The first row's class is the likely one; the profile still counts every class.
    first = con.execute(f"SELECT {', '.join(f'typeof({q(r[1])})' for r in info) or '1'} "
                        f"FROM {SCRATCH}.{q(t.scratch_table)} LIMIT 1").fetchone()
    guess = {"integer": "INTEGER", "real": "REAL", "text": "TEXT", "blob": "BLOB"}
    cols = [SourceColumn(r[1], r[0], r[2] or (guess.get(first[i], "") if first else ""),
                         False, None, 0) for i, r in enumerate(info)]
    return SourceTable(t.scratch_table, "", cols, [])


def measure_left_out(con: sqlite3.Connection, mt: MappedTable, distinct: int | None) -> None:
    """The base table's rows the feed leaves out (keys when the query keeps them).

    ``distinct``: the distinct base keys the profile counted in the query's rows
    (one-column keys). None of them is outside the base table (the key passes
    through), so the base rows minus that count are the rows left out; only when
    some are does an EXCEPT run the query again, to name the first few.
    """
    if mt.base is None or mt.base_rows is None:
        return
    if mt.source is not None or not mt.base_key or mt.whole_base:
        mt.left_out = max(0, mt.base_rows - mt.rows)
        return
    assert mt.query is not None
    feed = mt.from_sql(materialized=False)
    if distinct is None and mt.materialized and len(mt.base_key) == 1:
        # Profiled in ranges: distinct keys per range do not add up; count them once.
        distinct = int(con.execute(f"SELECT count(DISTINCT {q(mt.base_key[0])}) FROM {feed}"
                                   ).fetchone()[0])
    if distinct is not None:
        mt.left_out = mt.base_rows - distinct
        if not mt.left_out:
            return
    cols = ", ".join(q(k) for k in mt.base_key)
    where = f" WHERE ({mt.where})" if mt.where else ""
    gone = f"SELECT {cols} FROM {q(mt.base)} EXCEPT SELECT {cols} FROM {feed}{where}"
    try:
        if distinct is None:
            mt.left_out = int(con.execute(f"SELECT count(*) FROM ({gone})").fetchone()[0])
        mt.left_out_keys = [dict(zip(mt.base_key, row, strict=True)) for row in con.execute(
            f"SELECT * FROM ({gone}) ORDER BY {cols} LIMIT {LEFT_OUT_SAMPLE}")]
    except sqlite3.Error as exc:
        raise plan_error(mt.name, None, f"reading the source failed: {exc}") from exc


def left_out_note(mt: MappedTable) -> Note | None:
    """The base table's count next to the feed's, and what was left out."""
    if mt.base is None or mt.base_rows is None:
        return None
    kind = "query" if mt.source is None else "where:"
    head = f"{kind} source: {mt.rows:,} row(s) from {mt.base}'s {mt.base_rows:,}"
    left = mt.left_out or 0
    extra = mt.rows - (mt.base_rows - left)
    if not left and not extra:
        return Note("info", mt.name, head + "; none left out")
    parts = [head]
    if left:
        keys = "; ".join(", ".join(f"{k}={v!r}" for k, v in d.items()) for d in mt.left_out_keys)
        parts.append(f"{left:,} of {mt.base}'s rows left out" + (
            f" ({keys}{' ...' if left > len(mt.left_out_keys) else ''})" if keys else
            " (the query does not keep the base key, so they cannot be named)"
            if mt.source is None else " by the filter"))
    if extra > 0:
        parts.append(f"{extra:,} more row(s) than the base rows it keeps (a join repeats some)")
    return Note("warning", mt.name, "; ".join(parts))
