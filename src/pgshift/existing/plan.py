"""The plan of a load into an existing schema: per target column, where its values
come from, how they convert, and what in the data will not fit.

Conversions are chosen by the target column's real type and the storage
classes the source expression actually yields (profiled in SQLite, one pass
per table). Nothing is guessed: integers into a timestamp need a declared
epoch unit, offset-free texts into ``timestamptz`` a declared zone; a pair no
value of which can convert is a plan error before any row moves.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg

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
from pgshift.copy.pipeline import RowSource
from pgshift.errors import UsageError
from pgshift.existing.mapping import ColumnMap, Mapping, TableMap
from pgshift.existing.target import TargetColumn, TargetTable
from pgshift.schema.model import Column, Note, Table
from pgshift.schema.typemap import TypeDecision, epoch_unit
from pgshift.source.catalog import Catalog, SourceTable
from pgshift.source.profile import TableProfile, declared_family, profile_tables_with

SCRATCH = "scratch"  # the attached SQLite file holding materialized query sources
KEY_ALIAS = "_pgshift_k"
ANOMALY_SCAN = 20_000  # suspect values converted per column to count plan anomalies

# The SQLite storage classes each conversion can take at least some values of.
_COMPATIBLE = {
    "int": {"integer"}, "float": {"integer", "real"}, "numeric": {"integer", "real", "text"},
    "text": {"text", "integer", "real"}, "bool": {"integer", "text"},
    "json": {"text", "integer", "real"}, "uuid": {"text", "blob"}, "bytea": {"blob", "text"},
    "epoch_s": {"integer"}, "epoch_ms": {"integer"}, "epoch_us": {"integer"},
    "ts_text": {"text"}, "tstz_text": {"text"}, "date_text": {"text"}, "time_text": {"text"},
}
_BY_BASE = {
    "int2": "int", "int4": "int", "int8": "int", "float4": "float", "float8": "float",
    "numeric": "numeric", "text": "text", "varchar": "text", "bpchar": "text", "citext": "text",
    "name": "text", "bool": "bool", "json": "json", "jsonb": "json", "uuid": "uuid",
    "bytea": "bytea", "time": "time_text", "timetz": "time_text",
}
_TEMPORAL = {"timestamptz", "timestamp", "date"}
_CLASSES = ("integer", "real", "text", "blob")


def q(name: str) -> str:
    """A SQLite identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class ExprProfile:
    """What one mapped expression yields over the source rows."""

    nulls: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    int_min: int | None = None
    int_max: int | None = None
    no_offset: int = 0  # texts without a UTC offset (for timestamptz targets)
    nul_texts: int = 0


@dataclass
class MappedColumn:
    """One target column fed from the source."""

    target: TargetColumn
    expr: str  # SQLite expression over the source row (a quoted column for plain renames)
    origin: str  # what the user wrote: the source column or the expression
    conversion: str = "text"
    reason: str = ""
    profile: ExprProfile = field(default_factory=ExprProfile)
    suspects: int = 0
    rejects: int = 0  # values the converter refuses (counted up to ANOMALY_SCAN suspects)
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.target.name, "type": self.target.type, "source": self.origin,
                "conversion": self.conversion, "reason": self.reason,
                "nulls": self.profile.nulls, "classes": self.profile.classes,
                "rejects": self.rejects, "examples": self.examples}


@dataclass
class MappedTable:
    """One target table and its feed."""

    target: TargetTable
    source: SourceTable | None  # None for a query source
    query: str | None
    where: str | None
    columns: list[MappedColumn]
    defaulted: list[str]  # target columns left to their DEFAULT / identity / NULL
    rows: int = 0
    map: TableMap | None = None

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def source_label(self) -> str:
        return self.source.name if self.source is not None else "query"

    @property
    def scratch_table(self) -> str:
        return f"q_{self.target.name}"

    def key_columns(self) -> list[str]:
        """What chunks are cut on in the row source (rowid, or a WITHOUT ROWID key)."""
        if self.source is not None and self.source.without_rowid:
            return list(self.source.primary_key)
        return ["rowid"]

    def from_sql(self, *, materialized: bool) -> str:
        """The FROM clause the mapped expressions read."""
        if self.source is not None:
            return q(self.source.name)
        if materialized:
            return f"{SCRATCH}.{q(self.scratch_table)}"
        return f"({self.query}) AS src"

    def rows_sql(self, part: str = "1", cols: list[int] | None = None) -> str:
        """The mapped rows as a subquery (columns c<i> of ``cols``), for the plan's scans.

        Only the columns a scan reads: the subquery is not flattened, so SQLite
        would compute (and copy) every listed expression for every row.
        """
        wanted = range(len(self.columns)) if cols is None else cols
        inner = ", ".join(f"({self.columns[i].expr}) AS c{i}" for i in wanted) or "1 AS c"
        where = f" AND ({self.where})" if self.where else ""
        # LIMIT -1: each expression is evaluated once per row, not once per aggregate.
        return (f"(SELECT {inner} FROM {self.from_sql(materialized=False)} "
                f"WHERE ({part}){where} LIMIT -1)")

    def row_source(self) -> RowSource:
        """The SELECT template the copy pipeline renders (query sources materialized)."""
        keys = self.key_columns()
        aliases = [f"{KEY_ALIAS}{i}" for i in range(len(keys))]
        key_sql = ", ".join(("rowid" if k == "rowid" else q(k)) + f" AS {a}"
                            for k, a in zip(keys, aliases, strict=True))
        values = ", ".join(f"({c.expr}) AS {q(c.target.name)}" for c in self.columns)
        where = f" AND ({self.where})" if self.where else ""
        sql = (f"SELECT {key_sql}, {values} FROM {self.from_sql(materialized=True)} "
               f"WHERE ({{where}}){where}")
        labels = [k if self.source is not None else f"{self.source_label}.rowid" for k in keys]
        return RowSource(sql, aliases, labels)

    def as_table(self) -> Table:
        """The load as the copy pipeline's Table (target names, chosen conversions)."""
        cols = [Column(c.target.name, c.target.type, c.target.not_null,
                       TypeDecision(c.target.type, c.conversion, c.reason),
                       clean=c.suspects == 0, nulls=c.profile.nulls,
                       nul_texts=c.profile.nul_texts,
                       classes=frozenset(c.profile.classes))
                for c in self.columns]
        source = self.source or SourceTable(self.scratch_table, "", [], [])
        return Table(self.target.name, cols, source, primary_key=list(self.target.primary_key),
                     rows=self.rows)

    def stored(self) -> dict[str, Any]:
        """What verify needs to rebuild this feed (kept in pgshift.migrate_runs)."""
        return {"table": self.name, "source": self.source.name if self.source else None,
                "query": self.query, "where": self.where, "rows": self.rows,
                "primary_key": list(self.target.primary_key),
                "columns": [{"name": c.target.name, "type": c.target.type,
                             "base": c.target.base, "expr": c.expr,
                             "conversion": c.conversion, "not_null": c.target.not_null,
                             "classes": sorted(c.profile.classes)} for c in self.columns],
                "sync": bool(self.map and self.map.sync),
                "key": dict(self.map.key) if self.map else {},
                "reverse": dict(self.map.reverse) if self.map else {}}

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.name, "source": self.source_label, "query": self.query,
                "where": self.where, "rows": self.rows,
                "columns": [c.to_dict() for c in self.columns], "defaulted": self.defaulted}


@dataclass
class MappedPlan:
    """Every target table's feed, plus what the user must read."""

    schema: str
    tables: list[MappedTable]
    notes: list[Note] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "tables": [t.to_dict() for t in self.tables],
                "notes": [n.to_dict() for n in self.notes]}


def plan_error(table: str, column: str | None, message: str, hint: str | None = None
               ) -> UsageError:
    """A plan error: one line naming the table and column."""
    where = f"{table}.{column}" if column else table
    return UsageError(f"mapping {where}: {message}",
                      hint=hint or "fix the mapping file (docs/mapping.md) and run --dry-run")


def _find(names: list[str], wanted: str) -> str | None:
    if wanted in names:
        return wanted
    folded = [n for n in names if n.lower() == wanted.lower()]
    return folded[0] if len(folded) == 1 else None


def pair_tables(catalog: Catalog, target: dict[str, TargetTable], mapping: Mapping,
                tables: list[str], exclude: list[str], notes: list[Note],
                ) -> list[tuple[TargetTable, SourceTable | None, TableMap | None]]:
    """Which target table is fed from which source table (or query)."""
    sources = {t.name: t for t in catalog.tables}
    target_names = list(target)
    pairs: list[tuple[TargetTable, SourceTable | None, TableMap | None]] = []
    mapped: set[str] = set()
    fed_from: set[str] = set()
    for name, tm in mapping.tables.items():
        tname = _find(target_names, name)
        if tname is None:
            raise plan_error(name, None, "no such table in the target schema",
                             hint="create it with the application's migrations, or fix the name")
        mapped.add(tname)
        if tm.skip:
            continue
        src: SourceTable | None = None
        if tm.query is None:
            sname = _find(list(sources), tm.from_ or tname)
            if sname is None:
                raise plan_error(name, None, f"no source table {tm.from_ or tname!r} in SQLite",
                                 hint="set `from:` to a SQLite table or give a `query:`")
            src = sources[sname]
            fed_from.add(sname)
        pairs.append((target[tname], src, tm))
    for sname, src in sources.items():
        tname = _find(target_names, sname)
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


def map_columns(t: TargetTable, src_cols: list[str], tm: TableMap | None, label: str,
                notes: list[Note]) -> tuple[list[MappedColumn], list[str]]:
    """Each target column's source expression; columns left to their default."""
    specs = dict(tm.columns) if tm else {}
    out: list[MappedColumn] = []
    defaulted: list[str] = []
    used: set[str] = set()
    for name in specs:
        if t.column(name) is None:
            raise plan_error(t.name, name, "no such column in the target table")
    spec_of = {t.column(n).name: s for n, s in specs.items()}  # type: ignore[union-attr]
    for col in t.columns:
        if col.generated:
            continue
        spec = spec_of.get(col.name)
        if spec is not None and spec.default:
            defaulted.append(col.name)
            continue
        if spec is not None and spec.expr is not None:
            ref = _find(src_cols, spec.expr.strip().strip('"'))
            if ref is not None:
                used.add(ref)
                out.append(MappedColumn(col, q(ref), ref))
            else:
                out.append(MappedColumn(col, spec.expr, spec.expr))
            continue
        ref = _find(src_cols, col.name)
        if ref is not None:
            used.add(ref)
            out.append(MappedColumn(col, q(ref), ref))
        elif col.has_default or not col.not_null:
            defaulted.append(col.name)
        else:
            raise plan_error(t.name, col.name, "NOT NULL, no default, and no source column of "
                             "that name", hint=f"map it: tables: {{{t.name}: {{columns: "
                             f"{{{col.name}: <SQLite expression>}}}}}}")
    explicit = {s.expr.strip().strip('"').lower() for s in specs.values() if s.expr}
    for c in src_cols:
        if c not in used and c.lower() not in explicit and tm is None:
            notes.append(Note("warning", f"{label}.{c}", f"not copied: {t.name} has no column "
                              "of that name (map it in a mapping file to keep it)"))
    return out, defaulted


def check_expressions(con: sqlite3.Connection, mt: MappedTable) -> None:
    """Let SQLite compile every expression; name the first column it refuses."""
    src = mt.from_sql(materialized=False)
    if mt.where:
        try:
            con.execute(f"SELECT 1 FROM {src} WHERE ({mt.where}) LIMIT 0")
        except sqlite3.Error as exc:
            raise plan_error(mt.name, None, f"invalid `where:`: {exc}") from exc
    for c in mt.columns:
        try:
            con.execute(f"SELECT ({c.expr}) FROM {src} LIMIT 0")
        except sqlite3.Error as exc:
            raise plan_error(mt.name, c.target.name,
                             f"invalid SQLite expression {c.origin!r}: {exc}") from exc


Figures = dict[int, dict[str, Any]]
_SUMMED = ("count", "no_offset", "nul_texts")
SPLIT_ROWS = 100_000  # tables above this are profiled in rowid ranges on several threads


def profile_ranges(con: sqlite3.Connection, mt: MappedTable, parts: int
                   ) -> list[tuple[str, list[int]]]:
    """Rowid ranges that split a big table source across threads (else the whole)."""
    if mt.source is None or mt.source.without_rowid or parts < 2:
        return [("1", [])]
    lo, hi = con.execute(f"SELECT min(rowid), max(rowid) FROM {q(mt.source.name)}").fetchone()
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
        if base in _TEMPORAL:
            wanted["int_min"] = f"min(iif(typeof({e}) = 'integer', {e}, NULL))"
            wanted["int_max"] = f"max(iif(typeof({e}) = 'integer', {e}, NULL))"
        if base == "timestamptz":
            wanted["no_offset"] = (f"sum(typeof({e}) = 'text' AND NOT (substr({e}, 11) GLOB "
                                   f"'*[+-]*' OR {e} GLOB '*[Zz]'))")
        if _BY_BASE.get(base, "text") in ("text", "json", "uuid"):
            wanted["nul_texts"] = f"sum(typeof({e}) = 'text' AND instr({e}, char(0)) > 0)"
        for k, agg in wanted.items():
            parts.append(agg)
            slots.append((i, k))
    return parts, slots


def _figures(slots: list[tuple[int, str]], values: Sequence[Any]) -> Figures:
    got: Figures = {}
    for (i, k), v in zip(slots, values, strict=True):
        got.setdefault(i, {})[k] = v
    return got


def _inlined(mt: MappedTable) -> Callable[[int], str]:
    """Column i's value as its expression itself (aggregates over the source table)."""
    return lambda i: f"({mt.columns[i].expr})"


def profile_scan(con: sqlite3.Connection, mt: MappedTable, part: str, params: list[int],
                 cols: list[int]) -> tuple[int, Figures]:
    """One pass over (a range of) the mapped rows: :func:`mapped_aggregates` of ``cols``."""
    aggs, slots = mapped_aggregates(mt, cols, lambda i: f"c{i}")
    parts = ["count(*)", *aggs]
    try:
        row = con.execute(f"SELECT {', '.join(parts)} FROM {mt.rows_sql(part, cols)}", params
                          ).fetchone()
    except sqlite3.Error as exc:
        raise plan_error(mt.name, None, f"reading the source failed: {exc}") from exc
    return int(row[0] or 0), _figures(slots, row[1:])


def covered_by_source_profile(mt: MappedTable, c: MappedColumn) -> bool:
    """True when the base command's profile of the source column is all the plan needs.

    That profile is tuned for full scans (one class test per value); temporal
    targets need figures it does not take for every family (integer range, offsets),
    and expressions or ``where:`` filters change the values.
    """
    if mt.source is None or mt.where or c.expr != q(c.origin):
        return False
    if c.target.base in _TEMPORAL:
        # Integers need their range (asked for), texts into timestamptz their offsets.
        family = declared_family(mt.source.column(c.origin).declared_type)
        return family == "integer"
    # It skips the NUL-byte test on numeric families; a text target renders such
    # a column's odd texts with printf, which would cut them at a NUL.
    family = declared_family(mt.source.column(c.origin).declared_type)
    return not (_BY_BASE.get(c.target.base, "text") in ("text", "json", "uuid")
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
        exprs = [f"sum(typeof(c{i}) = '{k}')" for i in mixed for k in _CLASSES]
        counts = con.execute(f"SELECT {', '.join(exprs)} FROM {mt.rows_sql(cols=mixed)}"
                             ).fetchone()
        for n, i in enumerate(mixed):
            values = counts[n * len(_CLASSES):(n + 1) * len(_CLASSES)]
            mt.columns[i].profile.classes = {k: int(v) for k, v in zip(_CLASSES, values,
                                                                        strict=True) if v}


def choose_conversion(mt: MappedTable, c: MappedColumn, spec: ColumnMap | None,
                      file_tz: str | None, declared: str | None) -> None:
    """Pick the conversion by target type and what the expression yields; refuse guesses."""
    base, p = c.target.base, c.profile
    present = set(p.classes)
    unit = spec.convert if spec else None
    tz = (spec.assume_tz if spec else None) or (mt.map.assume_tz if mt.map else None) or file_tz
    if unit and base not in _TEMPORAL:
        raise plan_error(mt.name, c.target.name, f"`convert: {unit}` needs a timestamp or date "
                         f"target, not {c.target.type}")
    if base in _TEMPORAL:
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
    elif base in _BY_BASE:
        c.conversion = _BY_BASE[base]
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


def build_mapped_plan(open_connection: Callable[[], sqlite3.Connection], catalog: Catalog,
                      target: dict[str, TargetTable], mapping: Mapping, *, schema: str,
                      tables: list[str], exclude: list[str], assume_tz: str | None,
                      jobs: int = 2, json_check: bool = True) -> MappedPlan:
    """The whole plan; raises a one-line UsageError for the first thing that cannot work.

    Mapping checks run first for every table (cheap, so a bad mapping fails before
    any scan); then tables are profiled on ``jobs`` threads, one connection each
    (sqlite3 releases the GIL while it scans). ``json_check`` validates every
    JSON text to count anomalies (``--dry-run``); a run leaves that to PostgreSQL,
    whose refusals become rejects during the copy.
    """
    notes: list[Note] = []
    file_tz = assume_tz or mapping.assume_tz
    out: list[MappedTable] = []
    con = open_connection()
    try:
        for tgt, src, tm in pair_tables(catalog, target, mapping, tables, exclude, notes):
            cols = source_columns(con, src, tm, tgt.name)
            label = src.name if src else "query"
            mapped, defaulted = map_columns(tgt, cols, tm, label, notes)
            mt = MappedTable(tgt, src, tm.query if tm else None, tm.where if tm else None,
                             mapped, defaulted, map=tm)
            check_expressions(con, mt)
            out.append(mt)
    finally:
        con.close()

    custom = {id(mt): [i for i, c in enumerate(mt.columns)
                       if not covered_by_source_profile(mt, c)] for mt in out}

    def scan(item: tuple[MappedTable, str, list[int]]) -> tuple[int, Figures]:
        conn = open_connection()
        try:
            return profile_scan(conn, *item, custom[id(item[0])])
        finally:
            conn.close()

    def decide(mt: MappedTable, scans: list[tuple[int, Figures]]) -> MappedTable:
        conn = open_connection()
        try:
            apply_profile(conn, mt, scans, custom[id(mt)])
            specs = {k.lower(): v for k, v in (mt.map.columns if mt.map else {}).items()}
            for c in mt.columns:
                declared = None
                if mt.source is not None and c.expr == q(c.origin):
                    declared = declared_family(mt.source.column(c.origin).declared_type)
                choose_conversion(mt, c, specs.get(c.target.name.lower()), file_tz, declared)
            count_anomalies(conn, mt, json_check=json_check)
            return mt
        finally:
            conn.close()

    # Plain columns: the base command's source profile (one class test per value,
    # big tables in rowid ranges). Expressions over a table that profile reads anyway
    # ride along in its pass (each aggregate inlines the expression): a second pass over
    # a big table costs as much as the first (measured: +8 s of plan at 1M jobs). The
    # rest (queries, `where:`, tables with no plain column): a scan of the mapped rows.
    sources = {mt.source.name: mt.source for mt in out if mt.source is not None
               and len(custom[id(mt)]) < len(mt.columns)}
    ranges: dict[str, set[str]] = {}
    for mt in out:
        for c in mt.columns:
            if mt.source is not None and c.target.base in _TEMPORAL \
                    and covered_by_source_profile(mt, c):
                ranges.setdefault(mt.source.name, set()).add(c.origin)
    extra: dict[str, list[str]] = {}
    inline: dict[int, tuple[str, int, list[tuple[int, str]]]] = {}
    for mt in out:
        own = custom[id(mt)]
        if own and mt.source is not None and not mt.where and mt.source.name in sources:
            aggs, slots = mapped_aggregates(mt, own, _inlined(mt))
            mine = extra.setdefault(mt.source.name, [])
            inline[id(mt)] = (mt.source.name, len(mine), slots)
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
        if mt.source is not None and mt.source.name in by_source:
            apply_source_profile(mt, by_source[mt.source.name])
        if id(mt) in inline:
            name, start, slots = inline[id(mt)]
            inlined[id(mt)] = [(n, _figures(slots, values[start:start + len(slots)]))
                               for n, values in extras[name]]
    con = open_connection()
    try:
        work = [(mt, part, params) for mt in out if id(mt) not in inlined
                and (custom[id(mt)] or mt.source is None or mt.source.name not in by_source)
                for part, params in profile_ranges(con, mt, jobs)]
    finally:
        con.close()
    # Table order keeps the first error deterministic.
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        scans = list(pool.map(scan, work))
        futures = [pool.submit(decide, mt, inlined.get(id(mt)) or [
            r for (m, _, _), r in zip(work, scans, strict=True) if m is mt]) for mt in out]
        for f in futures:
            notes.extend(_anomaly_notes(f.result()))
    return MappedPlan(schema, out, notes)


def _anomaly_notes(mt: MappedTable) -> list[Note]:
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
    if mt.map is not None and mt.map.sync:
        notes.extend(reverse_notes(mt))
    return notes


def check_reverse(pg: psycopg.Connection, plan: MappedPlan) -> None:
    """Tables sync carries back: the key pairs and a compilable reverse for every column."""
    for mt in plan.tables:
        tm = mt.map
        if tm is None or not tm.sync:
            continue
        if mt.source is None:
            raise plan_error(mt.name, None, "`sync: true` needs `from:` a SQLite table (rows of "
                             "a query cannot be carried back)")
        src_cols = [c.name for c in mt.source.columns if not c.generated]
        for s_key, t_key in tm.key.items():
            if _find(mt.source.primary_key, s_key) is None:
                raise plan_error(mt.name, None, f"`key:` {s_key!r} is not in the primary key of "
                                 f"{mt.source.name} ({', '.join(mt.source.primary_key)})")
            if mt.target.column(t_key) is None:
                raise plan_error(mt.name, t_key, "`key:` names no column of the target table")
        missing = [k for k in mt.source.primary_key if _find(list(tm.key), k) is None]
        if missing:
            raise plan_error(mt.name, None, f"`key:` must pair every key column of "
                             f"{mt.source.name}; missing {', '.join(missing)}")
        for name in tm.reverse:
            if _find(src_cols, name) is None:
                raise plan_error(mt.name, None, f"`reverse:` {name!r} is not a column of "
                                 f"{mt.source.name}")
        lacking = [c for c in src_cols if _find(list(tm.reverse), c) is None]
        if lacking:
            raise plan_error(mt.name, None, f"`reverse:` lacks source column(s) "
                             f"{', '.join(lacking)}", hint="give each source column a "
                             "PostgreSQL expression over the target row (docs/mapping.md)")
        rel = f'"{plan.schema}".{q(mt.name)}'
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
