"""Index proposals from real usage: the statistics views and pg_stat_statements.

Three sources, each with its reason:

- sequential scans on large tables, with the columns the workload's queries filter on
  (read from ``pg_stat_statements`` query texts with sqlglot);
- foreign keys without an index on the referencing side (a delete or key update on the
  parent scans the child; joins from the parent have nothing to use);
- indexes never scanned since the statistics were reset (reported, never dropped).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import psycopg
import sqlglot
from psycopg import sql
from sqlglot import exp

from pgshift.ops.server import Finding

# Statement texts read from pg_stat_statements, the most expensive first.
TOP_STATEMENTS = 200
# A table is "scanned sequentially" when this many full scans were seen since the reset.
MIN_SEQ_SCANS = 10
_RANGE_OPS = (exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Between)
# "col IS NOT NULL" as PostgreSQL prints it back: either spelling, any parentheses, ANDed.
_NOT_NULL_TERM = r'\(*(?:"?\w+"? IS NOT NULL|NOT \(*"?\w+"? IS NULL\)*)\)*'
_NOT_NULL_ONLY = re.compile(rf"{_NOT_NULL_TERM}(?: AND {_NOT_NULL_TERM})*")


@dataclass(frozen=True)
class QueryStat:
    """One normalized statement from pg_stat_statements."""

    query: str
    calls: int
    mean_ms: float
    total_ms: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class IndexProposal:
    """An index to build: where, on what, why, and the statements behind it."""

    name: str
    schema: str
    table: str
    columns: list[str]  # key columns or expressions, as written in the definition
    reason: str
    source: str  # "seq-scan", "foreign-key" or "planned"
    predicate: str | None = None
    unique: bool = False
    using: str | None = None
    tail: str = ""  # INCLUDE (...) / WITH (...) of a planned statement, verbatim
    queries: list[QueryStat] = field(default_factory=list)

    def definition(self) -> str:
        """The CREATE INDEX CONCURRENTLY statement that builds it (idempotent by name)."""
        parts = ["CREATE", "UNIQUE" if self.unique else "", "INDEX CONCURRENTLY IF NOT EXISTS",
                 _quote(self.name), "ON", f"{_quote(self.schema)}.{_quote(self.table)}",
                 f"USING {self.using}" if self.using else "",
                 f"({', '.join(self.columns)})", self.tail,
                 f"WHERE {self.predicate}" if self.predicate else ""]
        return " ".join(p for p in parts if p)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "schema": self.schema, "table": self.table,
                "columns": self.columns, "predicate": self.predicate, "unique": self.unique,
                "reason": self.reason, "source": self.source, "definition": self.definition(),
                "queries": [q.to_dict() for q in self.queries]}


def _quote(ident: str) -> str:
    return ident if re.fullmatch(r"[a-z_][a-z0-9_$]*", ident) else \
        '"' + ident.replace('"', '""') + '"'


def index_name(table: str, columns: list[str]) -> str:
    """``<table>_<col>_<col>_idx``, cut to PostgreSQL's 63-byte identifier limit."""
    base = "_".join([table, *[re.sub(r"\W+", "_", c).strip("_") for c in columns]])
    return (base[:59] + "_idx").lower()


def has_pg_stat_statements(conn: psycopg.Connection) -> bool:
    """True when the extension's view exists in this database (and so can be read)."""
    row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"
                       ).fetchone()
    return row is not None


def top_statements(conn: psycopg.Connection, limit: int = TOP_STATEMENTS) -> list[QueryStat]:
    """This database's statements from pg_stat_statements, by total execution time."""
    rows = conn.execute(
        "SELECT query, calls, mean_exec_time, total_exec_time FROM pg_stat_statements "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND query !~* '^\\s*(create|alter|drop|analyze|vacuum|explain|set|show|begin|commit"
        "|rollback|copy)\\M' "
        "ORDER BY total_exec_time DESC LIMIT %s", (limit,)).fetchall()
    return [QueryStat(str(r[0]), int(r[1]), round(float(r[2]), 3), round(float(r[3]), 3))
            for r in rows]


def filter_columns(query: str) -> dict[str, list[str]]:
    """{table: columns filtered on} in ``query``'s WHERE clauses: equalities, then one range.

    Only plain columns compared with a parameter or literal count (an expression on the
    column could not use a plain index). Unparsable statements yield nothing.
    """
    try:
        tree = sqlglot.parse_one(query, read="postgres")
    except sqlglot.errors.ParseError:
        return {}
    if tree is None:
        return {}
    aliases: dict[str, str] = {}
    for t in tree.find_all(exp.Table):
        aliases[t.alias_or_name] = t.name
        aliases[t.name] = t.name
    tables = set(aliases.values())
    eq: dict[str, list[str]] = defaultdict(list)
    rng: dict[str, list[str]] = defaultdict(list)
    for where in tree.find_all(exp.Where):
        for cond in where.find_all(exp.EQ, exp.In, *_RANGE_OPS):
            col = cond.this
            if not isinstance(col, exp.Column):
                continue
            other = [e for e in cond.args.values() if isinstance(e, exp.Expression)
                     and e is not col] + list(cond.args.get("expressions") or [])
            if not other or not all(_is_value(e) for e in other):
                continue
            table = aliases.get(col.table) if col.table else (
                next(iter(tables)) if len(tables) == 1 else None)
            if table is None:
                continue
            target = rng if isinstance(cond, _RANGE_OPS) else eq
            if col.name not in target[table]:
                target[table].append(col.name)
    out: dict[str, list[str]] = {}
    for table in set(eq) | set(rng):
        cols = list(eq.get(table, []))
        cols += [c for c in rng.get(table, [])[:1] if c not in cols]
        out[table] = cols
    return out


def _is_value(e: exp.Expression) -> bool:
    return isinstance(e, exp.Parameter | exp.Placeholder | exp.Literal | exp.Null | exp.Boolean
                      | exp.Tuple) or (isinstance(e, exp.Cast) and _is_value(e.this))


def _index_leads(conn: psycopg.Connection, schema: str, table: str) -> list[list[str]]:
    """The column lists of the table's valid indexes (expressions as their text).

    A partial index counts only when its predicate is nothing but ``col IS NOT NULL``
    (as the seed's ``idx_jobs_user``): an equality on the column implies it, so the
    planner uses such an index for every query and foreign-key check we look at.
    """
    rows = conn.execute(
        "SELECT array(SELECT pg_get_indexdef(i.indexrelid, k, true) "
        "             FROM generate_series(1, i.indnkeyatts) k ORDER BY k)::text[], "
        "pg_get_expr(i.indpred, i.indrelid) "
        "FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND i.indisvalid",
        (schema, table)).fetchall()
    out = []
    for cols, predicate in rows:
        if predicate is None or _NOT_NULL_ONLY.fullmatch(str(predicate)):
            out.append([str(c).strip('"') for c in cols])
    return out


def _covered(leads: list[list[str]], columns: list[str]) -> bool:
    """True when an index already starts with ``columns`` (in any order of the equalities)."""
    return any(set(lead[:len(columns)]) == set(columns) for lead in leads)


def seq_scan_proposals(conn: psycopg.Connection, schema: str, min_rows: int,
                       statements: list[QueryStat]) -> tuple[list[IndexProposal], list[Finding]]:
    """Indexes for large tables read by full scans, from the columns their queries filter on."""
    rows = conn.execute(
        "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0), n_live_tup "
        "FROM pg_stat_user_tables WHERE schemaname = %s AND n_live_tup >= %s "
        "AND seq_scan >= %s ORDER BY seq_tup_read DESC", (schema, min_rows, MIN_SEQ_SCANS)
    ).fetchall()
    by_table: dict[str, dict[tuple[str, ...], list[QueryStat]]] = defaultdict(dict)
    for st in statements:
        for table, cols in filter_columns(st.query).items():
            if cols:
                by_table[table].setdefault(tuple(cols), []).append(st)
    proposals: list[IndexProposal] = []
    findings: list[Finding] = []
    for table, seq_scan, seq_read, idx_scan, live in rows:
        per_scan = int(seq_read) // max(int(seq_scan), 1)
        why = (f"{seq_scan} sequential scans reading {per_scan:,} rows each on average "
               f"({live:,} live rows; {idx_scan} index scans)")
        candidates = by_table.get(str(table), {})
        if not candidates:
            findings.append(Finding("index", f"{schema}.{table}", why + "; no recorded query "
                                    "says which columns to index",
                                    "enable pg_stat_statements and rerun after some traffic"
                                    if not statements else None))
            continue
        leads = _index_leads(conn, schema, str(table))
        for key, queries in sorted(candidates.items(), key=lambda kv: -sum(
                q.total_ms for q in kv[1])):
            cols = list(key)
            if _covered(leads, cols):
                continue
            proposals.append(IndexProposal(
                index_name(str(table), cols), schema, str(table),
                [_quote(c) for c in cols], why, "seq-scan", queries=queries))
            leads.append(cols)
    return proposals, findings


def foreign_key_proposals(conn: psycopg.Connection, schema: str,
                          min_rows: int) -> list[IndexProposal]:
    """An index per foreign key whose referencing columns no index starts with."""
    rows = conn.execute(
        "SELECT c.relname, con.conname, p.relname, "
        "array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(att, ord) "
        "      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.att "
        "      ORDER BY k.ord)::text[], coalesce(s.n_live_tup, 0) "
        "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_class p ON p.oid = con.confrelid "
        "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
        "WHERE con.contype = 'f' AND n.nspname = %s ORDER BY 1, 2", (schema,)).fetchall()
    out: list[IndexProposal] = []
    for table, conname, parent, cols, live in rows:
        if int(live) < min_rows:
            continue
        columns = [str(c) for c in cols]
        if _covered(_index_leads(conn, schema, str(table)), columns) or any(
                p.table == table and set(p.columns) == set(columns) for p in out):
            continue
        out.append(IndexProposal(
            index_name(str(table), columns), schema, str(table), [_quote(c) for c in columns],
            f"foreign key {conname} to {parent} has no index on {table} ({live:,} rows): a "
            f"delete or key update on {parent} scans {table}", "foreign-key"))
    return out


def unused_index_findings(conn: psycopg.Connection, schema: str) -> list[Finding]:
    """Indexes never scanned since the statistics were reset (unique ones excepted)."""
    rows = conn.execute(
        "SELECT s.indexrelname, s.relname, pg_relation_size(s.indexrelid) "
        "FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid "
        "WHERE s.schemaname = %s AND s.idx_scan = 0 AND NOT i.indisunique "
        "AND NOT i.indisprimary ORDER BY 3 DESC", (schema,)).fetchall()
    reset = conn.execute("SELECT stats_reset FROM pg_stat_database "
                         "WHERE datname = current_database()").fetchone()
    since = f"since {reset[0]:%Y-%m-%d %H:%M}" if reset and reset[0] else "since the server began"
    return [Finding("index", f"{schema}.{name}",
                    f"index on {table} ({size / 1024:,.0f} kB) never scanned {since}",
                    sql.SQL("DROP INDEX CONCURRENTLY {}.{}").format(
                        sql.Identifier(schema), sql.Identifier(str(name))).as_string(conn)
                    + " (only after a full business cycle, and if no replica uses it)")
            for name, table, size in rows]
