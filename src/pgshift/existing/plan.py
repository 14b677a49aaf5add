"""The plan of a load into an existing schema: per target column, where its values
come from, how they convert, and what in the data will not fit.

Conversions are chosen by the target column's real type and the storage
classes the source expression actually yields (profiled in SQLite, one pass
per table; existing/plan_profile.py, existing/plan_convert.py). Every plan
error is collected, so one ``--dry-run`` lists all of them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from pgshift.errors import UsageError
from pgshift.existing.mapping import Mapping, TableMap
from pgshift.existing.plan_convert import (
    TEMPORAL,
    anomaly_notes,
    choose_conversion,
    count_anomalies,
)
from pgshift.existing.plan_model import (
    KEY_ALIAS,
    SCRATCH,
    ErrorList,
    MappedColumn,
    MappedPlan,
    MappedTable,
    PlanErrors,
    find_name,
    plan_error,
    q,
)
from pgshift.existing.plan_profile import (
    DISTINCT_KEYS,
    Figures,
    apply_profile,
    apply_source_profile,
    covered_by_source_profile,
    figures_of,
    inlined_expr,
    mapped_aggregates,
    profile_ranges,
    profile_scan,
)
from pgshift.existing.plan_reverse import check_reverse, check_reverse_table, reverse_notes
from pgshift.existing.plan_sources import (
    left_out_note,
    materialize,
    measure_left_out,
    resolve_base,
    scratch_name,
    unmapped_columns,
)
from pgshift.existing.target import TargetTable
from pgshift.schema.model import Note
from pgshift.source.catalog import Catalog, SourceTable
from pgshift.source.profile import declared_family, profile_tables_with


def pair_tables(catalog: Catalog, target: dict[str, TargetTable], mapping: Mapping,
                tables: list[str], exclude: list[str], notes: list[Note], errors: ErrorList,
                ) -> list[tuple[TargetTable, SourceTable | None, TableMap | None]]:
    """Which target table is fed from which source table (or query)."""
    sources = {t.name: t for t in catalog.tables}
    target_names = list(target)
    pairs: list[tuple[TargetTable, SourceTable | None, TableMap | None]] = []
    mapped: set[str] = set()
    fed_from: set[str] = set()
    for name, tm in mapping.tables.items():
        tname = find_name(target_names, name)
        if tname is None:
            errors.errors.append(plan_error(
                name, None, "no such table in the target schema",
                hint="create it with the application's migrations, or fix the name"))
            continue
        mapped.add(tname)
        if tm.skip:
            continue
        src: SourceTable | None = None
        if tm.query is None:
            sname = find_name(list(sources), tm.from_ or tname)
            if sname is None:
                errors.errors.append(plan_error(
                    name, None, f"no source table {tm.from_ or tname!r} in SQLite",
                    hint="set `from:` to a SQLite table or give a `query:`"))
                continue
            src = sources[sname]
            fed_from.add(sname)
        if tm.query is not None and tm.base:
            fed_from.add(find_name(list(sources), tm.base) or tm.base)
        pairs.append((target[tname], src, tm))
    for sname, src in sources.items():
        tname = find_name(target_names, sname)
        if tname is None:
            if sname not in fed_from:
                notes.append(Note("warning", sname, "not copied: no table of that name in the "
                                  "target schema (map it with `from:` in a mapping file)"))
            continue
        if tname in mapped:
            continue
        mapped.add(tname)
        pairs.append((target[tname], src, None))
    for tname in target_names:
        if tname not in mapped:
            notes.append(Note("info", tname, "target table has no source: left as it is"))

    def chosen(t: TargetTable, s: SourceTable | None) -> bool:
        names = {t.name.lower()} | ({s.name.lower()} if s else set())
        if tables and not names & {x.lower() for x in tables}:
            return False
        return not names & {x.lower() for x in exclude}

    return [p for p in pairs if chosen(p[0], p[1])]


def source_columns(con: sqlite3.Connection, src: SourceTable | None, tm: TableMap | None,
                   table: str) -> list[str]:
    """The columns a mapped expression may name."""
    if src is not None:
        return [c.name for c in src.columns]
    assert tm is not None and tm.query is not None
    try:
        cur = con.execute(f"SELECT * FROM ({tm.query}) LIMIT 0")
    except sqlite3.Error as exc:
        raise plan_error(table, None, f"invalid SQLite query: {exc}") from exc
    return [d[0] for d in cur.description]


def map_columns(t: TargetTable, src_cols: list[str], tm: TableMap | None, errors: ErrorList
                ) -> tuple[list[MappedColumn], list[str]]:
    """Each target column's source expression; columns left to their default."""
    specs = dict(tm.columns) if tm else {}
    out: list[MappedColumn] = []
    defaulted: list[str] = []
    used: set[str] = set()
    for name in list(specs):
        if t.column(name) is None:
            errors.errors.append(plan_error(t.name, name, "no such column in the target table"))
            del specs[name]
    spec_of = {t.column(n).name: s for n, s in specs.items()}  # type: ignore[union-attr]
    for col in t.columns:
        if col.generated:
            continue
        spec = spec_of.get(col.name)
        if spec is not None and spec.default:
            defaulted.append(col.name)
            continue
        if spec is not None and spec.expr is not None:
            ref = find_name(src_cols, spec.expr.strip().strip('"'))
            if ref is not None:
                used.add(ref)
                out.append(MappedColumn(col, q(ref), ref))
            else:
                out.append(MappedColumn(col, spec.expr, spec.expr))
            continue
        ref = find_name(src_cols, col.name)
        if ref is not None:
            used.add(ref)
            out.append(MappedColumn(col, q(ref), ref, by_name=True))
        elif col.has_default or not col.not_null:
            defaulted.append(col.name)
        else:
            errors.errors.append(plan_error(
                t.name, col.name, "NOT NULL, no default, and no source column of that name",
                hint=f"map it: tables: {{{t.name}: {{columns: {{{col.name}: <SQLite "
                     "expression>}}}"))
    return out, defaulted


def check_expressions(con: sqlite3.Connection, mt: MappedTable, errors: ErrorList) -> bool:
    """Let SQLite compile every expression; each it refuses is an error (and left out).

    False when the table cannot be read at all (its ``where:`` does not compile).
    """
    src = mt.from_sql(materialized=False)
    if mt.where:
        try:
            con.execute(f"SELECT 1 FROM {src} WHERE ({mt.where}) LIMIT 0")
        except sqlite3.Error as exc:
            errors.errors.append(plan_error(mt.name, None, f"invalid `where:`: {exc}"))
            return False
    good = []
    for c in mt.columns:
        try:
            con.execute(f"SELECT ({c.expr}) FROM {src} LIMIT 0")
            good.append(c)
        except sqlite3.Error as exc:
            errors.errors.append(plan_error(mt.name, c.target.name,
                                            f"invalid SQLite expression {c.origin!r}: {exc}"))
    mt.columns = good
    return True


def build_mapped_plan(open_connection: Callable[[], sqlite3.Connection], catalog: Catalog,
                      target: dict[str, TargetTable], mapping: Mapping, *, schema: str,
                      tables: list[str], exclude: list[str], assume_tz: str | None,
                      jobs: int = 2, json_check: bool = True, strict: bool = False,
                      pg: psycopg.Connection | None = None, scratch: Path | None = None,
                      ) -> MappedPlan:
    """The whole plan; raises PlanErrors listing everything that cannot work.

    Mapping checks run first for every table (cheap, so a bad mapping fails before
    any scan); then tables are profiled on ``jobs`` threads, one connection each
    (sqlite3 releases the GIL while it scans). ``json_check`` validates every
    JSON text to count anomalies (``--dry-run``); a run leaves that to PostgreSQL,
    whose refusals become rejects during the copy. ``strict`` (or the file's
    ``strict: true``) makes a source column that feeds nothing an error unless
    ``drop:`` names it; ``pg`` checks the ``reverse:`` expressions of synced tables.
    ``scratch``: query sources are materialized into this SQLite file first (and
    ``open_connection`` must attach it once it exists); the copy reads them there.
    """
    notes: list[Note] = []
    errors = ErrorList()
    file_tz = assume_tz or mapping.assume_tz
    out: list[MappedTable] = []
    con = open_connection()
    try:
        for tgt, src, tm in pair_tables(catalog, target, mapping, tables, exclude, notes,
                                        errors):
            try:
                cols = source_columns(con, src, tm, tgt.name)
            except UsageError as exc:
                errors.errors.append(exc)
                continue
            mapped, defaulted = map_columns(tgt, cols, tm, errors)
            mt = MappedTable(tgt, src, tm.query if tm else None, tm.where if tm else None,
                             mapped, defaulted, map=tm)
            if check_expressions(con, mt, errors) and errors.attempt(
                    lambda mt=mt: resolve_base(con, mt, catalog)):  # type: ignore[misc]
                out.append(mt)
        if not errors.errors:
            # Only for a sound mapping: a column left out by an error above would be
            # listed as feeding nothing.
            unmapped, strict_errors = unmapped_columns(con, out,
                                                       strict=strict or mapping.strict)
            notes.extend(unmapped)
            errors.errors.extend(strict_errors)
        if scratch is not None and not errors.errors:
            errors.attempt(lambda: materialize(con, scratch, out))
    finally:
        con.close()

    custom = {id(mt): [i for i, c in enumerate(mt.columns)
                       if not covered_by_source_profile(mt, c)] for mt in out}

    def scan(item: tuple[MappedTable, str, list[int]]) -> tuple[int, Figures] | UsageError:
        conn = open_connection()
        try:
            return profile_scan(conn, *item, custom[id(item[0])])
        except UsageError as exc:
            return exc
        finally:
            conn.close()

    def decide(mt: MappedTable, scans: list[tuple[int, Figures]]) -> list[Note]:
        conn = open_connection()
        mine = ErrorList()
        try:
            apply_profile(conn, mt, scans, custom[id(mt)])
            specs = {k.lower(): v for k, v in (mt.map.columns if mt.map else {}).items()}
            for c in mt.columns:
                declared = None
                if mt.profiled is not None and c.expr == q(c.origin):
                    declared = declared_family(mt.profiled.column(c.origin).declared_type)
                mine.attempt(lambda c=c, d=declared: choose_conversion(  # type: ignore[misc]
                    mt, c, specs.get(c.target.name.lower()), file_tz, d))
            if not mine.errors:
                mine.attempt(lambda: count_anomalies(conn, mt, json_check=json_check))
                distinct = next((f[DISTINCT_KEYS]["distinct"] for _, f in scans
                                 if DISTINCT_KEYS in f), None)
                mine.attempt(lambda: measure_left_out(conn, mt, distinct))
            mine.raise_if_any()
            found = anomaly_notes(mt)
            note = left_out_note(mt)
            return found + ([note] if note else [])
        finally:
            conn.close()

    # Plain columns: the base command's source profile (one class test per value,
    # big tables in rowid ranges). Expressions over a table that profile reads anyway
    # ride along in its pass (each aggregate inlines the expression): a second pass over
    # a big table costs as much as the first (measured: +8 s of plan at 1M jobs). The
    # rest (queries, `where:`, tables with no plain column): a scan of the mapped rows.
    # Materialized query sources are profiled like tables (their scratch tables).
    sources = {p.name: p for mt in out if (p := mt.profiled) is not None
               and len(custom[id(mt)]) < len(mt.columns)}
    ranges: dict[str, set[str]] = {}
    for mt in out:
        for c in mt.columns:
            if mt.profiled is not None and c.target.base in TEMPORAL \
                    and covered_by_source_profile(mt, c):
                ranges.setdefault(mt.profiled.name, set()).add(c.origin)
    extra: dict[str, list[str]] = {}
    inline: dict[int, tuple[str, int, list[tuple[int, str]]]] = {}
    for mt in out:
        own = custom[id(mt)]
        if own and mt.profiled is not None and not mt.where and mt.profiled.name in sources:
            aggs, slots = mapped_aggregates(mt, own, inlined_expr(mt))
            mine = extra.setdefault(mt.profiled.name, [])
            inline[id(mt)] = (mt.profiled.name, len(mine), slots)
            mine.extend(aggs)
    try:
        by_source, extras = profile_tables_with(open_connection, list(sources.values()), jobs,
                                                ranges, extra)
    except sqlite3.Error:
        # An expression SQLite refuses for some row: the separate scans name its table.
        inline.clear()
        by_source, extras = profile_tables_with(open_connection, list(sources.values()), jobs,
                                                ranges)
    inlined: dict[int, list[tuple[int, Figures]]] = {}
    for mt in out:
        if mt.profiled is not None and mt.profiled.name in by_source:
            apply_source_profile(mt, by_source[mt.profiled.name])
        if id(mt) in inline:
            name, start, slots = inline[id(mt)]
            inlined[id(mt)] = [(n, figures_of(slots, values[start:start + len(slots)]))
                               for n, values in extras[name]]
    con = open_connection()
    try:
        work = [(mt, part, params) for mt in out if id(mt) not in inlined
                and (custom[id(mt)] or mt.profiled is None or mt.profiled.name not in by_source)
                for part, params in profile_ranges(con, mt, jobs)]
    finally:
        con.close()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        scans = list(pool.map(scan, work))
        failed: set[int] = set()
        for (m, _, _), r in zip(work, scans, strict=True):
            if isinstance(r, UsageError) and id(m) not in failed:
                failed.add(id(m))
                errors.errors.append(r)
        readable = [mt for mt in out if id(mt) not in failed]
        futures = [pool.submit(decide, mt, inlined.get(id(mt)) or [
            r for (m, _, _), r in zip(work, scans, strict=True)
            if m is mt and not isinstance(r, UsageError)]) for mt in readable]
        # Table order keeps the list of errors deterministic.
        for f in futures:
            errors.attempt(lambda f=f: notes.extend(f.result()))  # type: ignore[misc]
    for mt in out:
        if mt.map is not None and mt.map.sync:
            notes.extend(reverse_notes(mt))
            if pg is not None:
                errors.attempt(lambda mt=mt: check_reverse_table(pg, schema, mt))  # type: ignore[misc]
    errors.raise_if_any()
    return MappedPlan(schema, out, notes)

__all__ = ["KEY_ALIAS", "SCRATCH", "MappedColumn", "MappedPlan", "MappedTable", "PlanErrors",
           "build_mapped_plan", "check_reverse", "plan_error", "q", "scratch_name"]
