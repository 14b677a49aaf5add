"""What a plan of a load into an existing schema is made of: per target table its
feed (a source table or query, a filter, per target column a SQLite expression
and a conversion), and the plan errors found while building it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pgshift.copy.pipeline import RowSource
from pgshift.errors import UsageError
from pgshift.existing.mapping import TableMap
from pgshift.existing.target import TargetColumn, TargetTable
from pgshift.schema.model import Column, Note, Table
from pgshift.schema.typemap import TypeDecision
from pgshift.source.catalog import SourceTable

SCRATCH = "scratch"  # the attached SQLite file holding materialized query sources
KEY_ALIAS = "_pgshift_k"


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
    by_name: bool = False  # fed implicitly from the source column of the same name
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
    # Source columns that feed no target column, and those the mapping's `drop:` names.
    unmapped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    # Query sources: the table their rows come from, its row count, and its rows the
    # query left out (counted by key when the query keeps the base table's key).
    base: str | None = None
    base_key: list[str] = field(default_factory=list)
    base_rows: int | None = None
    left_out: int | None = None
    left_out_keys: list[dict[str, Any]] = field(default_factory=list)
    # A query source already materialized into the scratch file: the plan's scans
    # read that table instead of running the query again.
    materialized: bool = False
    whole_base: bool = False  # a plain SELECT over its base alone: every row, once
    scratch_source: SourceTable | None = None  # the materialized table, profiled as a source

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def profiled(self) -> SourceTable | None:
        """The SQLite table the source profile reads: the source, or a query's scratch table."""
        return self.source if self.source is not None else self.scratch_source

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
        if materialized or self.materialized:
            return f"{SCRATCH}.{q(self.scratch_table)}"
        return f"({self.query}) AS src"

    def rows_sql(self, part: str = "1", cols: list[int] | None = None,
                 extra: Sequence[str] = ()) -> str:
        """The mapped rows as a subquery (columns c<i> of ``cols``), for the plan's scans.

        Only the columns a scan reads: the subquery is not flattened, so SQLite
        would compute (and copy) every listed expression for every row. ``extra``:
        more select-list items (a query's base key, counted in the same pass).
        """
        wanted = range(len(self.columns)) if cols is None else cols
        inner = ", ".join([*(f"({self.columns[i].expr}) AS c{i}" for i in wanted),
                           *extra]) or "1 AS c"
        where = f" AND ({self.where})" if self.where else ""
        # LIMIT -1: each expression is evaluated once per row, not once per aggregate.
        return (f"(SELECT {inner} FROM {self.from_sql(materialized=False)} "
                f"WHERE ({part}){where} LIMIT -1)")

    def row_source(self) -> RowSource:
        """The SELECT template the copy pipeline renders (query sources materialized)."""
        # Rejects name a row by its source's primary key (a query's base key when it
        # keeps it), not by the rowid chunks are cut on: that is the key users know.
        keys = self.report_key()
        aliases = [f"{KEY_ALIAS}{i}" for i in range(len(keys))]
        key_sql = ", ".join(("rowid" if k == "rowid" else q(k)) + f" AS {a}"
                            for k, a in zip(keys, aliases, strict=True))
        values = ", ".join(f"({c.expr}) AS {q(c.target.name)}" for c in self.columns)
        where = f" AND ({self.where})" if self.where else ""
        sql = (f"SELECT {key_sql}, {values} FROM {self.from_sql(materialized=True)} "
               f"WHERE ({{where}}){where}")
        labels = [k if k != "rowid" or self.source is not None else f"{self.source_label}.rowid"
                  for k in keys]
        return RowSource(sql, aliases, labels)

    def report_key(self) -> list[str]:
        """The columns a reject names its row by."""
        if self.source is not None:
            return list(self.source.primary_key) or ["rowid"]
        return list(self.base_key) or ["rowid"]

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
                "reverse": dict(self.map.reverse) if self.map else {},
                "base": self.base, "base_key": list(self.base_key),
                "relationships": dict(self.map.relationships) if self.map else {}}

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.name, "source": self.source_label, "query": self.query,
                "where": self.where, "rows": self.rows,
                "columns": [c.to_dict() for c in self.columns], "defaulted": self.defaulted,
                "unmapped": self.unmapped, "dropped": self.dropped, "base": self.base,
                "base_rows": self.base_rows, "left_out": self.left_out,
                "left_out_keys": self.left_out_keys}


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
    return UsageError(f"mapping {where}: {message}", hint=hint or _DEFAULT_HINT)


_DEFAULT_HINT = "fix the mapping file (docs/mapping.md) and run --dry-run"


class PlanErrors(UsageError):
    """Every plan error of one run, listed at once (exit 2)."""

    def __init__(self, errors: list[UsageError]) -> None:
        self.errors = errors
        if len(errors) == 1:
            super().__init__(errors[0].message, hint=errors[0].hint)
            return
        lines = [f"{len(errors)} plan errors:"]
        for e in errors:
            lines.append(f"  {e.message}" + (f"  [try: {e.hint}]" if e.hint and e.hint
                                              != _DEFAULT_HINT else ""))
        super().__init__("\n".join(lines), hint=_DEFAULT_HINT)


class ErrorList:
    """Collects plan errors so that one ``--dry-run`` shows all of them."""

    def __init__(self) -> None:
        self.errors: list[UsageError] = []

    def attempt(self, fn: Callable[[], Any]) -> bool:
        """Run ``fn``; a UsageError it raises is kept. True when it did not raise."""
        try:
            fn()
        except PlanErrors as exc:
            self.errors.extend(exc.errors)
            return False
        except UsageError as exc:
            self.errors.append(exc)
            return False
        return True

    def raise_if_any(self) -> None:
        """One PlanErrors naming every problem found, if any."""
        if self.errors:
            raise PlanErrors(self.errors)


def find_name(names: list[str], wanted: str) -> str | None:
    """``wanted`` among ``names``: exactly, else the one case-insensitive match."""
    if wanted in names:
        return wanted
    folded = [n for n in names if n.lower() == wanted.lower()]
    return folded[0] if len(folded) == 1 else None
